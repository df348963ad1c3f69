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
                "decision": roi_decision(roi),
                "significant": bool(np.isfinite(conv[3]) and conv[3] < ALPHA),
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- report
SEGMENTS = {"tier": "member_profile:tier", "lifecycle_stage": "member_profile:lifecycle_stage"}


def evaluate_campaigns(settings, campaign: str | None = None, segments: tuple[str, ...] = ("tier",)) -> dict:
    """Tables per campaign, per offer and per segment; an HTML report logged to MLflow."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    from features.store import get_store, training_frame
    from training.data.ingest import load_curated
    from training.datasets import exposures as load_exposures
    from training.tracking import job_run, log_table

    exp = load_exposures(settings)
    if campaign is not None:
        if campaign not in set(exp["campaign_id"]):
            raise ValueError(f"campaign {campaign!r} not found; known: {sorted(exp['campaign_id'].unique())[:20]}")
        exp = exp[exp["campaign_id"] == campaign]
    if exp.empty:
        raise ValueError(f"dataset {settings.dataset!r} has no campaign exposures to evaluate")
    unknown = [s for s in segments if s not in SEGMENTS]
    if unknown:
        raise ValueError(f"unknown segment {unknown}; expected some of {sorted(SEGMENTS)}")
    cost = load_curated(settings, "offers").set_index("offer_id")["cost"]
    entity = exp.assign(event_timestamp=pd.to_datetime(exp["ts"]).dt.tz_localize("UTC"))[
        ["member_id", "event_timestamp", "exposure_id"]
    ]
    seg = training_frame(get_store(settings), entity, [SEGMENTS[s] for s in segments])
    exp = exp.merge(seg[["exposure_id", *segments]], on="exposure_id", how="left")
    for s in segments:
        exp[s] = exp[s].fillna("unknown")
    has_control = bool((~exp["treatment"]).any())
    tables = {
        "campaign": evaluate_groups(exp, cost, ["campaign_id"]),
        "offer": evaluate_groups(exp, cost, ["offer_id"]),
    }
    for s in segments:
        tables[s] = evaluate_groups(exp, cost, [s])
    notes = [] if has_control else ["no control group: lift, incremental revenue and ROI are not identified"]

    figs = {}
    camp = tables["campaign"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.errorbar(
        camp["campaign_id"],
        camp["conversion_lift"],
        yerr=[
            camp["conversion_lift"] - camp["conversion_lift_ci_low"],
            camp["conversion_lift_ci_high"] - camp["conversion_lift"],
        ],
        fmt="o",
        capsize=4,
    )
    ax.axhline(0, color="k", ls=":")
    ax.set(title="Conversion lift vs control (95% CI)", ylabel="treated - control")
    figs["lift_by_campaign"] = fig
    fig, ax = plt.subplots(figsize=(7, 4))
    off = tables["offer"].sort_values("roi")
    ax.barh(off["offer_id"], off["roi"].fillna(0))
    for x, label in ((ROI_ADJUST_BELOW, "adjust <"), (ROI_EXPAND_ABOVE, "> expand")):
        ax.axvline(x, color="r", ls="--")
        ax.text(x, 0, label, color="r")
    ax.set(title="Benefit ROI by offer", xlabel="(incremental revenue - cost) / cost")
    figs["roi_by_offer"] = fig

    html = [f"<h1>Campaign evaluation: {settings.dataset} {campaign or 'all campaigns'}</h1>"]
    html += [f"<p><b>Note:</b> {n}</p>" for n in notes]
    html.append(
        "<p>Lift = treated - control; 95% Wald (conversion) and Welch (revenue) intervals; two-sided p-values."
        f" ROI = (incremental revenue - cost) / cost; &lt; {ROI_ADJUST_BELOW:g} adjust, {ROI_ADJUST_BELOW:g}-"
        f"{ROI_EXPAND_ABOVE:g} keep, &gt; {ROI_EXPAND_ABOVE:g} expand.</p>"
    )
    for name, fig in figs.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        plt.close(fig)
        html.append(
            f"<h2>{name.replace('_', ' ')}</h2><img src='data:image/png;base64,"
            f"{base64.b64encode(buf.getvalue()).decode()}'/>"
        )
    for name, table in tables.items():
        html.append(f"<h2>by {name}</h2>" + table.to_html(index=False, float_format=lambda v: f"{v:.4g}"))
    report = "\n".join(html)
    with job_run(settings, "campaign-eval", campaign=campaign or "all", has_control=has_control) as run:
        overall = evaluate_groups(exp, cost, [])
        mlflow.log_metrics(
            {
                k: float(v)
                for k, v in overall.iloc[0].items()
                if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and np.isfinite(v)
            }
        )
        for name, table in tables.items():
            log_table(table, f"by_{name}.json")
        mlflow.log_text(report, "campaign_report.html")
        run_id = run.info.run_id
    path = settings.dataset_dir / "reports" / f"campaign_{campaign or 'all'}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
    return {"tables": tables, "overall": overall, "notes": notes, "report": path, "run_id": run_id}
