"""Evaluation metrics: ranking (CF), classification (churn, propensity), uplift, regression (value)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

KS = (5, 10, 20)


# --------------------------------------------------------------------------- ranking
def ranking_metrics(recommended: list, relevant: list[set], ks=KS, n_items: int | None = None) -> dict[str, float]:
    """precision/recall/NDCG/MAP@k averaged over members with at least one relevant item; coverage@k."""
    keep = [i for i, rel in enumerate(relevant) if rel]
    out: dict[str, float] = {"members_evaluated": float(len(keep))}
    for k in ks:
        prec, rec, ndcg, ap, seen = [], [], [], [], set()
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        for i in keep:
            recs = list(dict.fromkeys(recommended[i]))[:k]  # a repeated item is one recommendation
            rel = relevant[i]
            seen.update(recs)
            hits = np.array([r in rel for r in recs], dtype=float)
            prec.append(hits.sum() / k)
            rec.append(hits.sum() / len(rel))
            ideal = discounts[: min(len(rel), k)].sum()
            ndcg.append(float((hits * discounts[: len(hits)]).sum() / ideal))
            cum = np.cumsum(hits)
            ap.append(float((hits * cum / np.arange(1, len(hits) + 1)).sum() / min(len(rel), k)))
        out[f"precision_at_{k}"] = float(np.mean(prec)) if keep else 0.0
        out[f"recall_at_{k}"] = float(np.mean(rec)) if keep else 0.0
        out[f"ndcg_at_{k}"] = float(np.mean(ndcg)) if keep else 0.0
        out[f"map_at_{k}"] = float(np.mean(ap)) if keep else 0.0
        if n_items:
            out[f"coverage_at_{k}"] = len(seen) / n_items
    return out


# --------------------------------------------------------------------------- classification
def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y, p = np.asarray(y, dtype=int), np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    both = 0 < y.sum() < len(y)
    top = np.argsort(-p, kind="stable")[: max(1, len(p) // 10)]
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "base_rate": float(y.mean()),
        "mean_prediction": float(p.mean()),
        "lift_top_decile": float(y[top].mean() / y.mean()) if y.mean() > 0 else float("nan"),
        "n": float(len(y)),
    }


def paired_bootstrap_gap(
    metric, y: np.ndarray, p: np.ndarray, q: np.ndarray, draws: int = 300, seed: int = 0
) -> tuple[float, float]:
    """``metric(y, p) - metric(y, q)`` on all rows and its standard deviation over ``draws``
    bootstrap resamples of the rows, both scores on the same resample: how far a model's lead
    over a baseline on one holdout could move on another holdout of the same size."""
    y, p, q = np.asarray(y), np.asarray(p), np.asarray(q)
    spread = gap_standard_error(
        lambda i: metric(y[i], p[i]), lambda i: metric(y[i], q[i]), np.arange(len(y)), draws, seed
    )
    return float(metric(y, p) - metric(y, q)), spread


def gap_standard_error(
    score_a: Callable[[np.ndarray], float],
    score_b: Callable[[np.ndarray], float],
    members: np.ndarray,
    draws: int = 200,
    seed: int = 0,
) -> float:
    """Standard deviation of ``score_a(rows) - score_b(rows)`` over bootstrap resamples of a
    holdout's rows, both scorers (row positions -> metric) on the same resample: how far one
    model's lead over another could move on another holdout of the same size. Members
    (``members``: each row's member) are resampled whole, with all their rows: one member's
    exposures are not independent draws."""
    codes, _ = pd.factorize(np.asarray(members))
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rng = np.random.default_rng(seed)
    gaps = []
    for _ in range(draws):
        pick = rng.integers(0, len(counts), len(counts))
        lens = counts[pick]
        rows = order[np.repeat(starts[pick] - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(lens.sum())]
        gaps.append(score_a(rows) - score_b(rows))
    return float(np.std(gaps))


def lift_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Deciles by predicted score (1 = highest): rate, lift and cumulative gain."""
    df = pd.DataFrame({"y": np.asarray(y, dtype=float), "p": np.asarray(p, dtype=float)})
    df = df.sort_values("p", ascending=False, kind="stable").reset_index(drop=True)
    df["decile"] = np.minimum(df.index * bins // len(df), bins - 1) + 1
    t = df.groupby("decile").agg(n=("y", "size"), positives=("y", "sum"), mean_score=("p", "mean"))
    t["rate"] = t["positives"] / t["n"]
    t["lift"] = t["rate"] / df["y"].mean() if df["y"].mean() > 0 else np.nan
    t["cumulative_gain"] = t["positives"].cumsum() / max(df["y"].sum(), 1)
    return t.reset_index()


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    df = pd.DataFrame({"bin": idx, "y": y, "p": p})
    return (
        df.groupby("bin").agg(mean_predicted=("p", "mean"), observed_rate=("y", "mean"), n=("y", "size")).reset_index()
    )


# --------------------------------------------------------------------------- uplift
def qini_curve(
    score: np.ndarray, treatment: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve: incremental responders when targeting the top share of rows by ``score``.

    Q(k) = Y_t(k) - Y_c(k) * N_t(k) / N_c(k), for the first k rows in descending score order.
    Returns (share targeted, Q / number of rows) from 0 to 1. ``weight``: each row counts that
    many times (e.g. inverse propensities of rows a policy chose, so they stand for the population).
    """
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
    t = np.asarray(treatment, dtype=bool)[order]
    y = np.asarray(y, dtype=float)[order]
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=float)[order]
    nt, nc = np.cumsum(w * t), np.cumsum(w * ~t)
    yt, yc = np.cumsum(w * y * t), np.cumsum(w * y * ~t)
    q = yt - np.divide(yc * nt, nc, out=np.zeros_like(yc), where=nc > 0)
    n = w.sum()
    return np.r_[0.0, np.cumsum(w) / n], np.r_[0.0, q / n]


def qini_coefficient(
    score: np.ndarray, treatment: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None
) -> float:
    """Area between the Qini curve and the random-targeting line (per row; 0 = random)."""
    x, q = qini_curve(score, treatment, y, weight)
    return float(np.trapezoid(q, x) - q[-1] / 2.0)


def uplift_at_k(score: np.ndarray, treatment: np.ndarray, y: np.ndarray, frac: float) -> float:
    """Observed treated-minus-control response rate among the top ``frac`` of rows."""
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")[: max(1, int(len(score) * frac))]
    t, yy = np.asarray(treatment, dtype=bool)[order], np.asarray(y, dtype=float)[order]
    if t.all() or (~t).all():
        return float("nan")
    return float(yy[t].mean() - yy[~t].mean())


def true_uplift_capture(score: np.ndarray, true_uplift: np.ndarray, frac: float) -> float:
    """Simulation only: mean true uplift of the top ``frac`` by ``score`` (oracle: by true uplift)."""
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")[: max(1, int(len(score) * frac))]
    return float(np.asarray(true_uplift, dtype=float)[order].mean())


def true_qini(score: np.ndarray, true_uplift: np.ndarray) -> float:
    """Simulation only: the Qini coefficient with each row's true uplift as its outcome (no sampling noise)."""
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
    u = np.asarray(true_uplift, dtype=float)[order]
    n = len(u)
    q = np.r_[0.0, np.cumsum(u) / n]
    return float(np.trapezoid(q, np.r_[0.0, np.arange(1, n + 1) / n]) - q[-1] / 2.0)


def uplift_metrics(score, treatment, y, true_uplift=None, fracs=(0.1, 0.3), weight=None) -> dict[str, float]:
    """Qini (weighted by ``weight`` where given), observed uplift in the top shares and, in
    simulation, the same against the true effects."""
    out = {"qini": qini_coefficient(score, treatment, y, weight)}
    if true_uplift is not None:
        out["true_qini"] = true_qini(score, true_uplift)
    for f in fracs:
        out[f"uplift_at_{int(f * 100)}pct"] = uplift_at_k(score, treatment, y, f)
        if true_uplift is not None:
            out[f"true_uplift_at_{int(f * 100)}pct"] = true_uplift_capture(score, true_uplift, f)
    if true_uplift is not None:
        out["true_uplift_spearman"] = float(spearmanr(score, true_uplift).statistic)
    return out


# --------------------------------------------------------------------------- regression
def value_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    a, p = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    top = np.argsort(-p, kind="stable")[: max(1, len(p) // 10)]
    return {
        "spearman": float(spearmanr(a, p).statistic),
        "rmse": float(np.sqrt(np.mean((a - p) ** 2))),
        "mae": float(np.mean(np.abs(a - p))),
        "top_decile_value_share": float(a[top].sum() / a.sum()) if a.sum() > 0 else float("nan"),
        "mean_actual": float(a.mean()),
        "mean_predicted": float(p.mean()),
    }


# --------------------------------------------------------------------------- anomaly
def alert_metrics(is_fraud: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    f, a = np.asarray(is_fraud, dtype=bool), np.asarray(flagged, dtype=bool)
    tp, fp = int((f & a).sum()), int((~f & a).sum())
    return {
        "precision": tp / max(int(a.sum()), 1),
        "recall": tp / max(int(f.sum()), 1),
        "false_positive_rate": fp / max(int((~f).sum()), 1),
        "flagged": float(a.sum()),
        "fraud_members": float(f.sum()),
    }
