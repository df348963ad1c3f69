"""Campaign evaluation against the control group: lift with confidence intervals, p-values,
benefit ROI and the programme's decision rule, overall and per segment.

ROI = (incremental revenue - benefit cost) / benefit cost, where incremental revenue is
(revenue per treated member - revenue per control member) x treated members; never total
sales of the treated group. ROI < 10 -> adjust, 10-25 -> keep, > 25 -> expand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

ROI_ADJUST_BELOW, ROI_EXPAND_ABOVE = 10.0, 25.0
ALPHA = 0.05


def roi_decision(roi: float) -> str:
    if not np.isfinite(roi):
        return "n/a"
    if roi < ROI_ADJUST_BELOW:
        return "adjust"
    return "expand" if roi > ROI_EXPAND_ABOVE else "keep"


def decision_band(decision: str) -> tuple[float, float]:
    """The ROI interval in which the rule takes ``decision``."""
    return {
        "adjust": (-np.inf, ROI_ADJUST_BELOW),
        "keep": (ROI_ADJUST_BELOW, ROI_EXPAND_ABOVE),
        "expand": (ROI_EXPAND_ABOVE, np.inf),
    }.get(decision, (np.nan, np.nan))


def decision_reason(roi: float, low: float, high: float, spent: float, incremental: float) -> tuple[bool, str]:
    """Whether the 95% interval of the ROI supports the rule's decision, and why, in words."""
    if not np.isfinite(incremental):
        return False, "no control group or too few members: incremental revenue not identified"
    if not spent > 0:
        return False, f"no redemptions, so no cost: ROI undefined (incremental revenue {incremental:.4g})"
    decision = roi_decision(roi)
    why = {
        "adjust": "loses money: incremental revenue below its cost"
        if roi < 0
        else f"ROI {roi:.3g} < {ROI_ADJUST_BELOW:g}",
        "keep": f"ROI {roi:.3g} within {ROI_ADJUST_BELOW:g}-{ROI_EXPAND_ABOVE:g}",
        "expand": f"ROI {roi:.3g} > {ROI_EXPAND_ABOVE:g}",
    }[decision]
    lo, hi = decision_band(decision)
    confident = bool(lo <= low and high <= hi)
    interval = f"95% CI {low:.3g} to {high:.3g}"
    if confident:
        return True, f"{why} ({interval})"
    return False, f"{why}, but the {interval} crosses a threshold: gather more data before acting"


def two_proportion(x1: int, n1: int, x0: int, n0: int) -> tuple[float, float, float, float]:
    """Difference of proportions, 95% Wald interval and two-sided z-test p-value (pooled)."""
    if n1 == 0 or n0 == 0:
        return (np.nan,) * 4
    p1, p0 = x1 / n1, x0 / n0
    diff = p1 - p0
    se = np.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    pooled = (x1 + x0) / (n1 + n0)
    se0 = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    p = 2 * stats.norm.sf(abs(diff) / se0) if se0 > 0 else 1.0
    z = stats.norm.ppf(1 - ALPHA / 2)
    return diff, diff - z * se, diff + z * se, float(p)


def mean_difference(y1: np.ndarray, y0: np.ndarray) -> tuple[float, float, float, float]:
    """Difference of means, 95% Welch interval and Welch t-test p-value."""
    if len(y1) < 2 or len(y0) < 2:
        return (np.nan,) * 4
    diff = y1.mean() - y0.mean()
    v1, v0 = y1.var(ddof=1) / len(y1), y0.var(ddof=1) / len(y0)
    se = np.sqrt(v1 + v0)
    if se == 0:
        return diff, diff, diff, 1.0
    dof = (v1 + v0) ** 2 / (v1**2 / (len(y1) - 1) + v0**2 / (len(y0) - 1))
    t = stats.t.ppf(1 - ALPHA / 2, dof)
    p = 2 * stats.t.sf(abs(diff) / se, dof)
    return diff, diff - t * se, diff + t * se, float(p)


def evaluate_groups(exposures: pd.DataFrame, cost: pd.Series, by: list[str]) -> pd.DataFrame:
    """One row per group: sizes, conversion and revenue lift with CI and p, cost, ROI, decision.

    ``exposures``: treatment, converted, redeemed, revenue, offer_id and the ``by`` columns;
    ``cost``: offer_id -> cost per redemption.
    """
    rows = []
    for key, g in exposures.groupby(by, dropna=False, observed=True) if by else [("all", exposures)]:
        t, c = g[g["treatment"]], g[~g["treatment"]]
        conv = two_proportion(int(t["converted"].sum()), len(t), int(c["converted"].sum()), len(c))
        rev = mean_difference(t["revenue"].to_numpy(float), c["revenue"].to_numpy(float))
        spent = float((t["redeemed"] * t["offer_id"].map(cost).fillna(0)).sum())
        incremental = rev[0] * len(t) if np.isfinite(rev[0]) else np.nan
        roi = (incremental - spent) / spent if spent > 0 and np.isfinite(incremental) else np.nan
        # the cost is observed; the interval of the ROI is the one of the revenue lift, rescaled
        roi_low, roi_high = ((np.array(rev[1:3]) * len(t) - spent) / spent) if spent > 0 else (np.nan, np.nan)
        confident, reason = decision_reason(roi, roi_low, roi_high, spent, incremental)
        keys = key if isinstance(key, tuple) else (key,)
        rows.append(
            {
                **({b: k for b, k in zip(by, keys, strict=True)} if by else {"group": "all"}),
                "treated": len(t),
                "control": len(c),
                "redemption_rate": float(t["redeemed"].mean()) if len(t) else np.nan,
                "conversion_treated": float(t["converted"].mean()) if len(t) else np.nan,
                "conversion_control": float(c["converted"].mean()) if len(c) else np.nan,
                "conversion_lift": conv[0],
                "conversion_lift_ci_low": conv[1],
                "conversion_lift_ci_high": conv[2],
                "conversion_p_value": conv[3],
                "revenue_lift_per_member": rev[0],
                "revenue_lift_ci_low": rev[1],
                "revenue_lift_ci_high": rev[2],
                "revenue_p_value": rev[3],
                "incremental_revenue": incremental,
                "benefit_cost": spent,
                "roi": roi,
                "roi_ci_low": roi_low,
                "roi_ci_high": roi_high,
                "decision": roi_decision(roi),
                "decision_confident": confident,
                "reason": reason,
                "significant": bool(np.isfinite(conv[3]) and conv[3] < ALPHA),
            }
        )
    return pd.DataFrame(rows)


def true_economics(truth: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The ROI a group of exposures truly has, from the expected outcomes the simulator keeps.

    ``truth``: one row per exposure with treatment, p_convert_control, p_convert_treated,
    order_value and cost (the expected benefit cost, zero for control members) and the ``by``
    columns. Incremental revenue is counted on the treated members, as the measured ROI is.
    """
    treated = truth[truth["treatment"]]
    treated = treated.assign(
        incremental=(treated["p_convert_treated"] - treated["p_convert_control"]) * treated["order_value"]
    )
    g = treated.groupby(by, observed=True) if by else treated.assign(group="all").groupby("group")
    out = g.agg(true_incremental_revenue=("incremental", "sum"), true_benefit_cost=("cost", "sum")).reset_index()
    cost = out["true_benefit_cost"].where(out["true_benefit_cost"] > 0)
    out["true_roi"] = (out["true_incremental_revenue"] - cost) / cost
    out["true_decision"] = out["true_roi"].map(roi_decision)
    return out
