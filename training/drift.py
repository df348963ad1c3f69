"""Population stability: a compact reference profile of a model's training data, and the PSI of
today's served values against it.

The profile (bin edges and shares per feature, never rows) is logged with every champion's
training run as ``drift_reference.json``: no member's values leave the training job, and the
daily cycle compares without reading the training set again. Why not a drift library: the
maintained ones (Evidently, NannyML, alibi-detect) compare two row-level data sets, so the
reference rows would have to be stored; each also brings a large dependency tree (plotly, nltk,
tensorflow or torch) for what is here a binned sum.

PSI = sum over bins (actual - expected) x ln(actual / expected). Common reading: below 0.1 stable,
0.1 to 0.25 a moderate shift, above 0.25 a major one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BINS = 10
TOP_CATEGORIES = 20
REFERENCE_ROWS = 500_000  # a larger training frame is profiled on a random sample of this many rows
FLOOR = 1e-4  # share given to an empty bin, so that ln() stays finite
MISSING = "__missing__"
DRIFT_REFERENCE = "drift_reference.json"  # the artifact every training run with a training frame logs
SCORE_PREFIX = "score:"  # reference entries of a model's outputs, next to its input features


def reference_profile(frame: pd.DataFrame, columns: list[str] | None = None, bins: int = BINS) -> dict:
    """Per column: numeric (quantile edges and the share in each bin, missing values apart) or
    categorical (the most frequent values' shares, the rest as one bucket)."""
    if len(frame) > REFERENCE_ROWS:  # shares of ten bins need no more rows than this
        frame = frame.sample(REFERENCE_ROWS, random_state=0)
    out = {}
    for col in list(frame.columns) if columns is None else columns:
        s = frame[col]
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            values = s.astype("string").fillna(MISSING)
            counts = values.value_counts()
            # only values shared by 1% of rows: an identifier-like column stores no one's value
            top = counts[counts >= 0.01 * len(values)].head(TOP_CATEGORIES).index.tolist()
            out[col] = {"kind": "categorical", "categories": top, "shares": _categorical_shares(values, top)}
            continue
        x = _as_float(s)
        finite = x[np.isfinite(x)]
        if finite.empty:
            continue
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
        out[col] = {"kind": "numeric", "edges": edges.tolist(), "shares": _numeric_shares(x, edges)}
    return out


def _as_float(s: pd.Series) -> pd.Series:
    """Numbers as float64 with NaN for missing (nullable Int64/Float64 columns included)."""
    x = pd.to_numeric(s, errors="coerce")
    return pd.Series(np.asarray(x.astype("Float64").to_numpy(dtype=float, na_value=np.nan)), index=s.index)


def _numeric_shares(x: pd.Series, edges: np.ndarray) -> list[float]:
    """Shares of bins (-inf, e1], (e1, e2], ..., (ek, inf) and of missing values, last."""
    values = x.to_numpy(dtype=float)
    missing = ~np.isfinite(values)
    idx = np.searchsorted(np.asarray(edges, dtype=float), values[~missing], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(float)
    counts = np.append(counts, missing.sum())
    return (counts / max(len(values), 1)).tolist()


def _categorical_shares(values: pd.Series, categories: list[str]) -> list[float]:
    """Shares of each reference category and of everything else, last."""
    counts = values.value_counts()
    known = [float(counts.get(c, 0)) for c in categories]
    shares = np.array([*known, len(values) - sum(known)], dtype=float)
    return (shares / max(len(values), 1)).tolist()


def psi(expected: list[float] | np.ndarray, actual: list[float] | np.ndarray) -> float:
    e = np.clip(np.asarray(expected, dtype=float), FLOOR, None)
    a = np.clip(np.asarray(actual, dtype=float), FLOOR, None)
    return float(np.sum((a - e) * np.log(a / e)))


def feature_psi(profile: dict, values: pd.Series) -> float:
    """PSI of ``values`` against one column's reference profile."""
    if profile["kind"] == "categorical":
        actual = _categorical_shares(values.astype("string").fillna(MISSING), profile["categories"])
    else:
        actual = _numeric_shares(_as_float(values), np.asarray(profile["edges"]))
    return psi(profile["shares"], actual)


def drift_report(reference: dict, frame: pd.DataFrame, warning: float) -> pd.DataFrame:
    """PSI of every column of ``frame`` that the reference profiles; ``status``: ok / warning
    (PSI >= ``warning``). Sorted by PSI, largest first."""
    rows = [
        {"feature": col, "psi": round(feature_psi(prof, frame[col]), 4), "rows": int(frame[col].notna().sum())}
        for col, prof in reference.items()
        if col in frame.columns
    ]
    report = pd.DataFrame(rows, columns=["feature", "psi", "rows"])
    report["status"] = np.where(report["psi"] >= warning, "warning", "ok")
    return report.sort_values("psi", ascending=False, kind="stable").reset_index(drop=True)
