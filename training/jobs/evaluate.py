"""Evaluation jobs: read the data, compute with the pure functions of ``training.evaluation``,
report (HTML, MLflow). Campaigns against their control groups; policies from the service's log."""

from __future__ import annotations

import base64
import io
import json

import matplotlib

matplotlib.use("Agg")  # no display: figures are rendered to files
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from features.store import get_store, training_frame  # noqa: E402
from kernel.curated import exposures_with_responses, load_curated, read_meta  # noqa: E402
from kernel.settings import Settings  # noqa: E402
from training.data.simulator import read_truth
from training.evaluation.campaign import (  # noqa: E402
    ROI_ADJUST_BELOW,
    ROI_EXPAND_ABOVE,
    evaluate_groups,
    true_economics,
)
from training.tracking import job_run, log_table  # noqa: E402

SEGMENTS = {"tier": "member_profile:tier", "lifecycle_stage": "member_profile:lifecycle_stage"}


def evaluate_campaigns(settings: Settings, campaign: str | None = None, segments: tuple[str, ...] = ("tier",)) -> dict:
    """Tables per campaign, per offer and per segment; an HTML report logged to MLflow."""
    exp = exposures_with_responses(settings)
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
    truth_path = settings.ground_truth_dir / "exposures.parquet"
    if read_meta(settings).get("source") == "simulator" and truth_path.exists():
        truth = read_truth(settings.ground_truth_dir, "exposures").merge(exp[["exposure_id"]], on="exposure_id")
        for name, key in (("campaign", "campaign_id"), ("offer", "offer_id")):
            columns = ["true_roi", "true_decision"]
            tables[name] = tables[name].merge(true_economics(truth, [key])[[key, *columns]], on=key, how="left")
        notes.append(
            "true_roi is the simulator's ground truth (expected outcomes, no sampling noise); the measured roi"
            " should take the same decision wherever its interval is confident"
        )

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
        " ROI = (incremental revenue - cost) / cost, a ratio: ROI 19 means incremental revenue 20 times the"
        f" benefit's cost (19x its cost in net return). The programme's thresholds are ratios too: &lt;"
        f" {ROI_ADJUST_BELOW:g} adjust, {ROI_ADJUST_BELOW:g}-{ROI_EXPAND_ABOVE:g} keep, &gt; {ROI_EXPAND_ABOVE:g}"
        " expand.</p>"
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


def logged_from_service(state, reward_event: str = "redemption") -> pd.DataFrame:
    """Personalised next-best-offer decisions with their propensity, scored candidates and reward,
    from a :class:`serving.state.ServingState`.

    Reward = 1 when a ``reward_event`` feedback event names the decision and its first offer.
    """
    dec = state.decision_log("next_best_offer")
    fb = state.events(reward_event)
    rewarded = set(zip(fb["decision_id"], fb["offer_id"], strict=True))
    dec["reward"] = [float((d, a) in rewarded) for d, a in zip(dec["decision_id"], dec["action"], strict=True)]
    payload = dec.pop("payload").map(json.loads)
    dec["candidates"] = payload.map(lambda p: p.get("candidates", []))
    # the control group was shown nothing: its decisions are not the policy's actions
    shown = ~payload.map(lambda p: bool(p.get("control"))).astype(bool)
    return dec[shown & (dec["candidates"].map(len) > 0)].reset_index(drop=True)
