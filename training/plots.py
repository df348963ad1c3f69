"""Matplotlib figures logged as MLflow artifacts (``mlflow.log_figure``)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # jobs run headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from training.evaluation.metrics import calibration_table, lift_table, qini_curve  # noqa: E402


def roc(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> plt.Figure:
    """``curves``: label -> (y, score); e.g. model and oracle on the same rows."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, (y, p) in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    return fig


def calibration(y: np.ndarray, p: np.ndarray, p_raw: np.ndarray | None = None) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, probs in (("calibrated", p), ("uncalibrated", p_raw)):
        if probs is None:
            continue
        t = calibration_table(y, probs)
        ax.plot(t["mean_predicted"], t["observed_rate"], "o-", label=label)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title="Calibration")
    ax.legend()
    return fig


def lift_gain(y: np.ndarray, p: np.ndarray) -> plt.Figure:
    t = lift_table(y, p)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.bar(t["decile"], t["lift"])
    a1.axhline(1, color="k", ls=":")
    a1.set(xlabel="decile (1 = highest score)", ylabel="lift", title="Lift by decile")
    a2.plot(np.r_[0, t["decile"] / 10], np.r_[0, t["cumulative_gain"]], "o-")
    a2.plot([0, 1], [0, 1], "k:")
    a2.set(xlabel="share targeted", ylabel="share of positives captured", title="Cumulative gain")
    return fig


def qini(
    curves: dict[str, np.ndarray], treatment: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None
) -> plt.Figure:
    """``curves``: label -> score on the same rows (model, propensity-only, oracle, ...)."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for label, score in curves.items():
        x, q = qini_curve(score, treatment, y, weight)
        ax.plot(x, q, label=label)
    x, q = qini_curve(np.zeros(len(y)), treatment, y, weight)
    ax.plot([0, 1], [0, q[-1]], "k:", label="random")
    ax.set(xlabel="share targeted", ylabel="incremental responders / rows", title="Qini")
    ax.legend()
    return fig


def at_k(table: pd.DataFrame, metric: str) -> plt.Figure:
    """``table``: rows = models, columns = '<metric>_at_<k>' (precision@k curves etc.)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    cols = sorted((c for c in table.columns if c.startswith(f"{metric}_at_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    ks = [int(c.rsplit("_", 1)[1]) for c in cols]
    for name, row in table.iterrows():
        ax.plot(ks, row[cols].to_numpy(dtype=float), "o-", label=str(name))
    ax.set(xlabel="k", ylabel=f"{metric}@k", title=f"{metric}@k")
    ax.legend()
    return fig


def importance(names: list[str], values: np.ndarray, top: int = 20) -> plt.Figure:
    order = np.argsort(values)[-top:]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(order) + 1))
    ax.barh(np.array(names)[order], np.asarray(values)[order])
    ax.set(xlabel="gain", title="Feature importance")
    fig.tight_layout()
    return fig


def histogram(values: dict[str, np.ndarray], threshold: float | None = None, title: str = "") -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, v in values.items():
        ax.hist(v, bins=50, alpha=0.6, label=label, log=True)
    if threshold is not None:
        ax.axvline(threshold, color="r", ls="--", label="threshold")
    ax.set(title=title)
    ax.legend()
    return fig


def drift(report: pd.DataFrame, warning: float, top: int = 20) -> plt.Figure:
    """The largest PSIs of a daily drift report (model: feature), with the warning line."""
    shown = report.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(shown) + 1.5))
    colours = np.where(shown["psi"] >= warning, "tab:red", "tab:blue")
    ax.barh(shown["model"] + ": " + shown["feature"], shown["psi"], color=colours)
    ax.axvline(warning, color="k", ls=":", lw=1, label=f"warning (PSI {warning})")
    ax.set(xlabel="population stability index vs the champion's training data", title="Drift")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def learning_curve(table: pd.DataFrame, column: str = "share_of_oracle") -> plt.Figure:
    """Per week: each policy's true incremental margin as a share of the oracle's."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for policy, rows in table.groupby("policy", sort=False):
        ax.plot(rows["week"], rows[column], "o-", label=policy)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="week", ylabel="true incremental margin / oracle's", title="The loop learning")
    ax.legend()
    return fig
