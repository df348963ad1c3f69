"""Offer job: redemption propensity and treatment effect (uplift) from campaign exposures.

Temporal holdout: the latest campaign (and the service's latest logs) is the test set; earlier
ones train. The registered model is then refitted on every row, holdout included: a programme
runs few randomised tests, and the latest is the one it can least afford to leave out. The fit
without the holdout travels inside it as its holdout twin (:data:`TWIN`), and the promotion
gate scores twins, so a champion is never compared on rows it learned from. Member features
come from Feast as of each exposure. Where exposures have no control group (the Complete
Journey campaigns), only the propensity is learned and the run says so.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from kernel.constants import SERVICE_CAMPAIGN
from kernel.curated import exposures_with_responses, load_curated
from kernel.settings import Settings
from models.uplift import LEARNERS, PropensityModel, UpliftModel, pair_features
from training import plots
from training.datasets import context, feature_refs, sampled_members, with_features
from training.evaluation.metrics import classification_metrics, gap_standard_error, uplift_metrics
from training.jobs.common import JobNotApplicable, JobResult, finish, log_metrics, model_input
from training.tracking import job_run, log_figure, log_table

SERVICE = "offer_v1"
METRIC, MARGIN = "qini", 0.0
# A retrain on more of the service's own answers replaces the champion unless a one-sided test
# at p < 0.05 says it is worse: at 2,000 members the Qini gap of two models on the same holdout
# has a standard error of 0.002-0.005, as large as the gaps themselves (bench/RESULTS.md).
TOLERANCE_SE = 1.645
# ``auto`` keeps the T-learner unless another learner's validation lead is as clear (see choose_learner)
DEFAULT_LEARNER = "t"
MAX_WEIGHT = 20.0  # inverse-propensity weights are clipped: a few rare choices must not carry an arm
LOGGED_HOLDOUT_SHARE, MIN_LOGGED_FOR_HOLDOUT = 0.3, 300  # the service's latest logs join the holdout
OUTCOMES = ["treatment", "converted", "redeemed", "revenue", "propensity", "campaign_id", "exposure_id", "channel"]
ORDER = ["event_timestamp", "member_id", "offer_id", "campaign_id", "channel", "exposure_id"]  # training rows
TWIN = "holdout_twin_"  # attribute of a registered model: the same learner fitted without its holdout


def gate_view(model):
    """What the gate scores for ``model``: its holdout twin where it has one (a model refitted
    on its holdout would score its own training rows), else the model itself."""
    twin = getattr(model, TWIN, None)
    return model if twin is None else twin


def with_twin(refitted, twin):
    """``refitted`` (fitted on every row) carrying ``twin`` (fitted without the holdout)."""
    setattr(refitted, TWIN, twin)
    return refitted


def features_only(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in OUTCOMES if c in frame.columns])


def score_holdout(model, holdout: pd.DataFrame) -> float:
    return holdout_scorer(model, holdout)(np.arange(len(holdout)))


def holdout_scorer(model, holdout: pd.DataFrame):
    """row positions -> the gate's metric on those rows of ``holdout``, the model's predictions
    made once (the gate's bootstrap scores hundreds of resamples). A refitted model is scored
    through its holdout twin (:func:`gate_view`)."""
    model = gate_view(model)
    pred = model.predict(features_only(holdout))
    outcomes = holdout[[c for c in OUTCOMES if c in holdout]]

    def score(rows: np.ndarray) -> float:
        p, o = pred.iloc[rows], outcomes.iloc[rows]
        if isinstance(model, PropensityModel):
            return classification_metrics(o["redeemed"], p["p_redeem"])["roc_auc"]
        weight = ipw_weights(o) if "campaign_id" in o else None
        return uplift_metrics(p["uplift"], o["treatment"], o["converted"], weight=weight)[METRIC]

    return score


def split_by_campaign(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Train on earlier campaigns, test on the latest (falls back to members where only one exists)."""
    starts = frame.groupby("campaign_id")["event_timestamp"].min().sort_values()
    if len(starts) >= 2:
        test_ids = {starts.index[-1]}
        how = f"latest campaign ({starts.index[-1]})"
    else:
        members = frame["member_id"].drop_duplicates().sample(frac=0.25, random_state=7)
        test = frame["member_id"].isin(members)
        return frame[~test], frame[test], "25% of members"
    test = frame["campaign_id"].isin(test_ids)
    return frame[~test], frame[test], how


def split_holdout(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(train, holdout, how): the latest randomised campaign (an unbiased Qini of one offer) and
    the service's latest logs (its choices between offers, inverse-propensity weighted)."""
    is_logged = (frame["campaign_id"] == SERVICE_CAMPAIGN).to_numpy()
    if not (~is_logged).any():
        return split_by_campaign(frame)
    train, test, how = split_by_campaign(frame[~is_logged])
    logged_train, logged_test = split_logged(frame[is_logged])
    if len(logged_test):
        how += f" + the service's latest {len(logged_test)} logged exposures"
    return pd.concat([train, logged_train]), pd.concat([test, logged_test]), how


def split_logged(logged: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The service's own closed exposures -> (train, holdout): the latest
    :data:`LOGGED_HOLDOUT_SHARE` of them by time are held out once there are
    :data:`MIN_LOGGED_FOR_HOLDOUT`. A randomised campaign tests one offer; these test the choice
    between offers that the policy makes. Holdouts only move forward in time, so a champion's
    holdout twin (what the gate scores) never trained on the rows its challenger is compared on."""
    if len(logged) < MIN_LOGGED_FOR_HOLDOUT:
        return logged, logged.iloc[:0]
    ts = pd.to_datetime(logged["event_timestamp"])
    test = ts >= ts.quantile(1 - LOGGED_HOLDOUT_SHARE)
    return logged[~test], logged[test]


def ipw_weights(frame: pd.DataFrame, clip: float = MAX_WEIGHT) -> np.ndarray:
    """Sample weights: 1 for randomised campaigns; for the service's own logged exposures the
    inverse of the logged propensity (the probability that the policy chose that offer and arm),
    clipped at ``clip`` and scaled to mean 1 within each arm, so that the logs count as many rows
    as they are while the offers the policy favoured stop dominating each arm's model."""
    w = np.ones(len(frame))
    logged = (frame["campaign_id"] == SERVICE_CAMPAIGN).to_numpy()
    if not logged.any():
        return w
    p = pd.to_numeric(frame["propensity"], errors="coerce").to_numpy(dtype=float)
    inv = np.where(np.isfinite(p) & (p > 0), 1.0 / np.where(p > 0, p, 1.0), 1.0)
    inv = np.minimum(inv, clip)
    treated = frame["treatment"].to_numpy(bool)
    for arm in (treated, ~treated):
        rows = logged & arm
        if rows.any():
            w[rows] = inv[rows] / inv[rows].mean()
    return w


def treatment_propensity(frame: pd.DataFrame) -> np.ndarray:
    """Each row's P(treated) by design: its campaign's treated share. Campaigns and the service's
    control group draw the arm at random, independently of the member, so the share is exact."""
    share = frame.groupby("campaign_id")["treatment"].transform("mean").to_numpy(dtype=float)
    return np.clip(share, 0.01, 0.99)  # a campaign without a control arm carries no effect information


def fit_uplift(frame: pd.DataFrame, learner: str, params: dict | None, seed: int) -> UpliftModel:
    return UpliftModel(learner=learner, params=params, seed=seed).fit(
        features_only(frame),
        frame["treatment"],
        frame["converted"],
        frame["redeemed"],
        ipw_weights(frame),
        treatment_propensity(frame),
        frame["revenue"],  # always among the OUTCOMES the entity frame selects
    )


def fit_propensity(frame: pd.DataFrame, params: dict | None, seed: int) -> PropensityModel:
    """Where exposures have no control arm: P(redeem) and what a response is worth."""
    return PropensityModel(params=params, seed=seed).fit(features_only(frame), frame["redeemed"], frame["revenue"])


def choose_learner(
    train: pd.DataFrame, params: dict | None, seed: int, candidates: tuple[str, ...] = LEARNERS
) -> tuple[str, pd.DataFrame]:
    """The learner for ``auto``: each candidate is fitted on ``train`` less a validation split made
    like the holdout (its latest randomised campaign and logs) and scored there by weighted Qini.
    The T-learner (:data:`DEFAULT_LEARNER`) is kept unless another one leads it by more than
    :data:`TOLERANCE_SE` bootstrap standard errors of the gap; then the best such one.
    Returns (learner, one row per candidate)."""
    fit, valid, how = split_holdout(train)
    usable = len(fit) and len(valid) and fit["treatment"].nunique() == 2 and valid["treatment"].nunique() == 2
    if not usable or not valid["converted"].any():
        row = {"learner": DEFAULT_LEARNER, "validation_qini": np.nan, "note": "no validation split"}
        return DEFAULT_LEARNER, pd.DataFrame([row])
    scorers = {c: holdout_scorer(fit_uplift(fit, c, params, seed), valid) for c in candidates}
    everything = np.arange(len(valid))
    members = valid["member_id"].to_numpy()
    base = scorers.get(DEFAULT_LEARNER)
    base_qini = base(everything) if base is not None else np.nan
    rows = []
    for learner, score in scorers.items():
        row = {"learner": learner, "validation_qini": score(everything), "note": f"validation: {how}"}
        if base is not None and learner != DEFAULT_LEARNER:
            row["lead_over_default"] = row["validation_qini"] - base_qini
            row["lead_se"] = gap_standard_error(score, base, members, seed=seed)
        rows.append(row)
    table = pd.DataFrame(rows)
    if base is None:  # the default is not a candidate: the best validation Qini
        return str(table.loc[table["validation_qini"].idxmax(), "learner"]), table
    clear = table[table["lead_over_default"] > TOLERANCE_SE * table["lead_se"]]
    chosen = DEFAULT_LEARNER if clear.empty else str(clear.loc[clear["validation_qini"].idxmax(), "learner"])
    return chosen, table


def run(
    settings: Settings, learner: str = "auto", params: dict | None = None, register_model: bool = True
) -> JobResult:
    ctx = context(settings)
    exp = exposures_with_responses(settings)
    if exp.empty or exp["campaign_id"].nunique() == 0:
        raise JobNotApplicable(f"dataset {settings.dataset!r} has no campaign exposures: no offer model to train")
    offers = load_curated(settings, "offers")
    # a response can still come for exposures younger than the response window: not yet labels
    closed = (exp["campaign_id"] != SERVICE_CAMPAIGN) | (
        pd.to_datetime(exp["ts"]) <= ctx.end - pd.Timedelta(days=settings.response_window_days)
    )  # the service's own sends: their answers still arrive day by day
    exp = exp[closed]
    # the same hash sample of members as churn and value train on: whole members, every campaign
    keep = sampled_members(exp["member_id"], settings.training_max_members, settings.seed)
    exp = exp if keep.all() else exp[keep]
    entity = exp.rename(columns={"ts": "event_timestamp"})[["member_id", "event_timestamp", "offer_id", *OUTCOMES]]
    entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"]).dt.tz_localize("UTC")
    # rows in a fixed order, not the import's: the service's exposure ids are random, and the
    # trees depend on row order, so the same data must give the same model
    entity = entity.sort_values(ORDER, kind="stable").reset_index(drop=True)
    has_control = entity["treatment"].nunique() == 2
    logged = entity["campaign_id"] == SERVICE_CAMPAIGN
    with job_run(settings, "uplift", SERVICE, feature_refs(ctx, SERVICE), has_control=has_control) as run:
        frame = pair_features(None, offers, pairs=with_features(ctx, entity, SERVICE))
        train, test, split = split_holdout(frame)
        data_used = (
            f"randomised campaigns: {int((~logged).sum())} exposures"
            f"; the service's own logged exposures: {int(logged.sum())}"
            + (f" (inverse-propensity weighted, weights clipped at {MAX_WEIGHT:g})" if logged.any() else "")
            + f"; left out, response window still open: {int((~closed).sum())}"
            + ("" if keep.all() else f"; exposures of a hash sample of {exp['member_id'].nunique():,} members")
        )
        mlflow.set_tag("data_used", data_used)
        chosen = learner
        if has_control and learner == "auto":
            chosen, validation = choose_learner(train, params, settings.seed)
            log_table(validation, "learner_validation.json")
        mlflow.log_params(
            {
                "learner": chosen if has_control else "propensity_only",
                "learner_requested": learner,
                "split": split,
                "train_rows": len(train),
                "test_rows": len(test),
                "treated_share": round(float(entity["treatment"].mean()), 4),
                "offers": offers["offer_id"].nunique(),
                "randomised_rows": int((~logged).sum()),
                "service_logged_rows": int(logged.sum()),
                "open_window_rows": int((~closed).sum()),
                "training_members": int(exp["member_id"].nunique()),
                "training_max_members": settings.training_max_members,
            }
        )
        rows: dict[str, dict] = {}
        notes: list[str] = [f"data used: {data_used}"]
        if not has_control:
            notes.append(
                "no control group in these exposures: uplift is not identified, so only the propensity is learned"
            )
            mlflow.set_tag("note", notes[-1])
            model = fit_propensity(train, params, settings.seed)
            served = fit_propensity(frame, params, settings.seed)
            pred = model.predict(features_only(test))
            metrics = classification_metrics(test["redeemed"], pred["p_redeem"])
            offer_rate = train.groupby("offer_id")["redeemed"].mean()
            base = test["offer_id"].map(offer_rate).fillna(train["redeemed"].mean())
            rows = {"propensity": metrics, "offer_rate": classification_metrics(test["redeemed"], base)}
            log_metrics(metrics, "redeem_")
            log_metrics(rows["offer_rate"], "baseline_offer_rate_redeem_")
            metric_value = metrics["roc_auc"]
            metric_name = "redeem_roc_auc"
        else:
            model = fit_uplift(train, chosen, params, settings.seed)
            served = fit_uplift(frame, chosen, params, settings.seed)
            pred = model.predict(features_only(test))
            t, y = test["treatment"].to_numpy(), test["converted"].to_numpy()
            true_uplift = _true_uplift(ctx, test) if ctx.simulated else None
            scores = {f"{chosen}-learner uplift": pred["uplift"], "propensity only": pred["p_convert_treated"]}
            if true_uplift is not None:
                scores["oracle (true uplift)"] = true_uplift
            rng = np.random.default_rng(settings.seed)
            scores["random"] = rng.random(len(test))
            weight = ipw_weights(test)
            for label, score in scores.items():
                rows[label] = uplift_metrics(score, t, y, true_uplift, weight=weight)
            metrics = rows[f"{chosen}-learner uplift"]
            treated = t.astype(bool)
            metrics |= {
                f"redeem_{k}": v
                for k, v in classification_metrics(
                    test["redeemed"].to_numpy()[treated], pred["p_redeem"].to_numpy()[treated]
                ).items()
                if k in ("roc_auc", "pr_auc", "brier")
            }
            log_metrics(metrics)
            log_metrics(rows["propensity only"], "propensity_")
            log_metrics(rows["random"], "random_")
            if true_uplift is not None:
                log_metrics(rows["oracle (true uplift)"], "oracle_")
            log_figure(plots.qini({k: v for k, v in scores.items() if k != "random"}, t, y, weight), "plots/qini.png")
            metric_value, metric_name = metrics[METRIC], METRIC
            oracle = rows.get("oracle (true uplift)")
            if oracle is not None and oracle["qini"] < metrics["qini"]:
                notes.append(
                    "the oracle's observed Qini is below the model's: observed outcomes are noisy draws on few"
                    " campaigns; the true_* rows (true effects) are the fair comparison"
                )
        mlflow.log_param("order_value", _order_value_note(model, pred))
        mlflow.log_param("refit_rows", len(frame))
        notes.append(
            f"holdout metrics are those of the fit on {len(train)} training rows (the holdout twin, which the"
            f" gate scores); the registered model is the same learner refitted on all {len(frame)} rows"
        )
        comparison = pd.DataFrame(rows).T
        log_table(comparison.reset_index(names="model"), "comparison.json")
        served = with_twin(served, model)
        cols = served.features_.columns_ + ["offer_id"]
        decision = finish(
            settings,
            "uplift",
            served,
            "uplift",
            model_input(test.head(5), cols),
            metric_name,
            metric_value,
            test,
            register_model,
            train=frame,
        )
        return JobResult("uplift", run.info.run_id, metrics, comparison, decision, notes, served)


def _order_value_note(model, pred: pd.DataFrame) -> str:
    """What the offer values rest on: a learned response value, or the members' average order."""
    if getattr(model, "value_model_", None) is None:
        return "members' 365-day average order (too few responses with revenue to learn one)"
    return f"learned from the responses' revenue; mean on the test set {pred['order_value'].mean():.2f}"


def _true_uplift(ctx, test: pd.DataFrame) -> np.ndarray:
    """Simulation: the true effect of the exposure's offer on conversion (zero for members already gone)."""
    truth = ctx.truth("uplift").set_index(["member_id", "offer_id"])["uplift"]
    alive = ctx.truth("members").set_index("member_id")["alive_at_cutoff"]
    keys = pd.MultiIndex.from_frame(test[["member_id", "offer_id"]])
    return truth.reindex(keys).fillna(0).to_numpy() * alive.reindex(test["member_id"]).fillna(False).to_numpy()
