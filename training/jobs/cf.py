"""CF job: ALS, BPR and item-item (``implicit``) tuned with optuna, against popularity, untuned ALS and the oracle.

Splits in time: tuning fits on purchases before ``cutoff - window`` and scores the window
before the cutoff; the final fit uses everything before the cutoff and is tested on the
window after it. Tuning has a wall-clock budget and must beat the library's untuned defaults on
validation, or the defaults are kept. Metrics are reported for all items (repeat purchases count) and, with
the ``new_`` prefix, for items new to the member.
"""

from __future__ import annotations

import logging
import time

import mlflow
import numpy as np
import optuna
import pandas as pd
from tqdm import tqdm

from features.store import training_frame
from kernel.constants import ONLINE_FEATURE_SERVICE
from kernel.curated import load_curated
from kernel.settings import Settings
from models.cf import ALGORITHMS, BuyAgainRecommender, CFRecommender, PopularityRecommender, interaction_weights
from models.cf_rank import TwoStageRecommender
from training import plots
from training.datasets import context, sampled_members
from training.evaluation.metrics import KS, ranking_metrics
from training.jobs.common import JobNotApplicable, JobResult, finish, log_metrics
from training.tracking import job_run, log_figure, log_table

METRIC, MARGIN = "ndcg_at_10", 0.002
SEGMENT_FEATURE = "member_profile:tier"
MAX_EVAL_MEMBERS = 5000


def score_holdout(model, holdout: pd.DataFrame) -> float:
    members = holdout["member_id"].drop_duplicates().tolist()
    rel = holdout.groupby("member_id")["item_id"].agg(set)
    recs = model.recommend(members, k=10, exclude_owned=False)
    return ranking_metrics(recs["item_ids"].tolist(), [rel[m] for m in members], ks=(10,))[METRIC]


def search_space(trial: optuna.Trial, algorithm: str) -> dict:
    p = {"half_life_days": trial.suggest_categorical("half_life_days", [30, 90, 365])}
    if algorithm == "als":
        p |= {
            "factors": trial.suggest_categorical("factors", [16, 32, 64]),
            "regularization": trial.suggest_float("regularization", 1e-3, 1.0, log=True),
            "alpha": trial.suggest_float("alpha", 1.0, 50.0, log=True),
            "iterations": trial.suggest_categorical("iterations", [10, 20]),
        }
    elif algorithm == "bpr":
        p |= {
            "factors": trial.suggest_categorical("factors", [16, 32, 64]),
            "learning_rate": trial.suggest_float("learning_rate", 0.005, 0.1, log=True),
            "regularization": trial.suggest_float("regularization", 1e-4, 0.1, log=True),
            "iterations": trial.suggest_categorical("iterations", [50, 100, 200]),
        }
    else:
        p |= {
            "similarity": trial.suggest_categorical("similarity", ["bm25", "cosine"]),
            "neighbours": trial.suggest_categorical("neighbours", [20, 50, 100, 200]),
        }
    return p


# The library's defaults as a retailer would first try them (issue 14's untuned baseline): confidence
# log1p(quantity) without recency decay, implicit's own hyper-parameters. Tuning must beat these on
# validation or the defaults are kept.
NO_DECAY_DAYS = 1e9
UNTUNED = {
    "als": {"half_life_days": NO_DECAY_DAYS, "factors": 64, "regularization": 0.05, "alpha": 1.0, "iterations": 20},
    "bpr": {
        "half_life_days": NO_DECAY_DAYS,
        "factors": 100,
        "learning_rate": 0.01,
        "regularization": 0.01,
        "iterations": 100,
    },
    "item_item": {"half_life_days": NO_DECAY_DAYS, "similarity": "bm25", "neighbours": 20},
}


def fit_cf(algorithm: str, params: dict, lines: pd.DataFrame, as_of, items, segments, seed: int) -> CFRecommender:
    params = dict(params)
    weights = interaction_weights(lines, as_of, params.pop("half_life_days"))
    return CFRecommender(algorithm=algorithm, seed=seed, **params).fit(weights, items=items, segments=segments)


def evaluate(model, members: list, owned: dict, future: pd.Series, n_items: int) -> dict[str, float]:
    """All-items metrics, and ``new_``-prefixed metrics on items the member had not bought."""
    k = max(KS)
    rel_all = [future.get(m, set()) for m in members]
    rel_new = [r - owned.get(m, set()) for m, r in zip(members, rel_all, strict=True)]
    rec_all = model.recommend(members, k=k, exclude_owned=False)["item_ids"].tolist()
    rec_new = model.recommend(members, k=k, exclude_owned=True)["item_ids"].tolist()
    out = ranking_metrics(rec_all, rel_all, n_items=n_items)
    out |= {f"new_{key}": v for key, v in ranking_metrics(rec_new, rel_new, n_items=n_items).items()}
    return out


class OracleRanking:
    """Simulation: each member's true top items (ground-truth preference ranking)."""

    def __init__(self, truth: pd.DataFrame, owned: dict):
        self.top = truth.sort_values(["member_id", "rank"]).groupby("member_id")["item_id"].agg(list)
        self.owned = owned

    def recommend(self, members, k: int, exclude_owned: bool) -> pd.DataFrame:
        recs = []
        for m in members:
            ranked = self.top.get(m, [])
            if exclude_owned:
                ranked = [i for i in ranked if i not in self.owned.get(m, set())]
            recs.append(ranked[:k])
        return pd.DataFrame({"member_id": list(members), "item_ids": recs})


MIN_CATALOGUE = 10  # k of the headline metrics: with fewer items a top-k list is the catalogue


def labels_between(txn: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> dict:
    """member -> items bought in [start, end)."""
    window = txn[(txn["ts"] >= start) & (txn["ts"] < end)]
    return window.groupby("member_id")["item_id"].agg(set).to_dict()


def fit_two_stage(txn, cutoff, window, params, item_category, items, segments, seed, validation):
    """The re-ranker learns on the window before validation and is scored on validation (the
    same step as from validation to test); the registered one learns on the validation window
    and ranks generators refitted on everything before the cutoff. Returns (model, validation
    score, lists the final ranker learned from)."""
    val_cut = cutoff - window
    val_members, owned_val, future_val = validation
    model = TwoStageRecommender(params["als"], params["item_item"], seed=seed)
    model.fit_generators(txn, val_cut - window, item_category, items).fit_ranker(
        labels_between(txn, val_cut - window, val_cut)
    )
    on_val = model.refit(txn, val_cut, item_category, items)
    val_score = evaluate(on_val, val_members, owned_val, future_val, len(items))[METRIC]
    on_val.fit_ranker(labels_between(txn, val_cut, cutoff))
    return on_val.refit(txn, cutoff, item_category, items, segments), val_score, on_val.training_lists_


def run(
    settings: Settings,
    algorithms: tuple[str, ...] = ALGORITHMS,
    trials: int | None = None,
    register_model: bool = True,
    two_stage: bool = True,
) -> JobResult:
    optuna.logging.set_verbosity(logging.WARNING)
    trials = settings.tuning_trials if trials is None else trials
    ctx = context(settings)
    everyone = load_curated(settings, "transactions", columns=["member_id", "item_id", "quantity", "ts"])
    keep = sampled_members(everyone["member_id"], settings.cf_selection_members, settings.seed)
    txn = everyone if keep.all() else everyone[keep]  # the members every candidate is chosen on
    items = load_curated(settings, "items")["item_id"].tolist()
    sold = everyone["item_id"].nunique()
    if sold < MIN_CATALOGUE:
        raise JobNotApplicable(
            f"{sold} item(s) sold: a catalogue smaller than k={MIN_CATALOGUE} needs no recommender "
            "(every member would be shown every item); the other jobs do not depend on it"
        )
    val_cut = ctx.cutoff - ctx.window
    fit_val, val = txn[txn["ts"] < val_cut], txn[(txn["ts"] >= val_cut) & (txn["ts"] < ctx.cutoff)]
    fit_test, test = txn[txn["ts"] < ctx.cutoff], txn[(txn["ts"] >= ctx.cutoff) & (txn["ts"] < ctx.cutoff + ctx.window)]
    rng = np.random.default_rng(settings.seed)

    def eval_members(history: pd.DataFrame, future: pd.DataFrame) -> list:
        both = np.intersect1d(history["member_id"].unique(), future["member_id"].unique())
        return sorted(rng.choice(both, size=min(MAX_EVAL_MEMBERS, len(both)), replace=False).tolist())

    segments = _segments(ctx, fit_test["member_id"].unique())
    val_members, test_members = eval_members(fit_val, val), eval_members(fit_test, test)

    def item_sets(lines: pd.DataFrame, members: list) -> pd.Series:
        """member -> items bought, for the evaluated members only (a set per member of the
        whole programme would cost a gigabyte at a million members)."""
        return lines[lines["member_id"].isin(members)].groupby("member_id")["item_id"].agg(set)

    owned_val, future_val = item_sets(fit_val, val_members).to_dict(), item_sets(val, val_members)
    owned_test, future_test = item_sets(fit_test, test_members).to_dict(), item_sets(test, test_members)
    if not val_members or not test_members:
        window = "validation" if not val_members else "test"
        raise JobNotApplicable(
            f"no member bought both before and in the {window} window (label_window_days="
            f"{settings.label_window_days}): members with one purchase each leave CF nothing to learn or evaluate"
        )

    # the cold-start segment (tier) is the one feature CF reads from Feast, through the member service
    with job_run(settings, "cf", ONLINE_FEATURE_SERVICE, [SEGMENT_FEATURE], cutoff=ctx.cutoff.date()) as run:
        mlflow.log_params(
            {
                "algorithms": ",".join(algorithms),
                "trials_per_algorithm": trials,
                "tuning_budget_s": settings.cf_tuning_budget_s,
                "cutoff": ctx.cutoff.date(),
                "window_days": settings.label_window_days,
                "items": len(items),
                "train_members": everyone.loc[everyone["ts"] < ctx.cutoff, "member_id"].nunique(),
                "selection_members": fit_test["member_id"].nunique(),
                "test_members_evaluated": len(test_members),
            }
        )
        rows, best, notes = {}, {}, []
        budget_s = settings.cf_tuning_budget_s / len(algorithms)
        for algo in algorithms:
            started = time.perf_counter()
            untuned = fit_cf(algo, UNTUNED[algo], fit_val, val_cut, items, None, settings.seed)
            untuned_val = evaluate(untuned, val_members, owned_val, future_val, len(items))[METRIC]
            study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=settings.seed))

            def objective(trial: optuna.Trial, algo=algo) -> float:
                params = search_space(trial, algo)
                with mlflow.start_run(run_name=f"{algo} trial {trial.number}", nested=True):
                    mlflow.set_tags({"job": "cf-tuning", "algorithm": algo})
                    mlflow.log_params(params)
                    model = fit_cf(algo, params, fit_val, val_cut, items, None, settings.seed)
                    score = evaluate(model, val_members, owned_val, future_val, len(items))[METRIC]
                    mlflow.log_metric(f"val_{METRIC}", score)
                return score

            for _ in tqdm(range(trials), desc=f"tune {algo}", unit="trial", leave=False, disable=None):
                if time.perf_counter() - started > budget_s:
                    break  # the budget is spent: keep the best so far
                study.optimize(objective, n_trials=1)
            tuned = bool(study.trials) and study.best_value > untuned_val
            params, val_score = (study.best_params, study.best_value) if tuned else (UNTUNED[algo], untuned_val)
            tuning_s = time.perf_counter() - started
            model = fit_cf(algo, params, fit_test, ctx.cutoff, items, segments, settings.seed)
            rows[algo] = evaluate(model, test_members, owned_test, future_test, len(items)) | {
                f"val_{METRIC}": val_score
            }
            best[algo] = (val_score, params, model)
            mlflow.log_metrics({f"tuning_seconds_{algo}": tuning_s, f"tuning_trials_{algo}": len(study.trials)})
            mlflow.log_param(f"tuned_{algo}", tuned)
            if not tuned:
                notes.append(f"{algo}: tuning did not beat the untuned defaults on validation; the defaults are kept")
            with mlflow.start_run(run_name=f"cf-{algo}", nested=True):
                mlflow.set_tags({"job": "cf-candidate", "model_type": "cf", "algorithm": algo})
                mlflow.log_params(params | {"tuned": tuned})
                log_metrics(rows[algo])
        if two_stage:
            started = time.perf_counter()
            item_category = load_curated(settings, "items").set_index("item_id")["category_l1"]
            params = {a: best[a][1] if a in best else UNTUNED[a] for a in ("als", "item_item")}
            try:
                ranked, val_score, lists = fit_two_stage(
                    txn,
                    ctx.cutoff,
                    ctx.window,
                    params,
                    item_category,
                    items,
                    segments,
                    settings.seed,
                    (val_members, owned_val, future_val),
                )
            except ValueError as err:  # a history too short for a window before validation
                notes.append(f"two_stage skipped: {err}")
            else:
                rows["two_stage"] = evaluate(ranked, test_members, owned_test, future_test, len(items)) | {
                    f"val_{METRIC}": val_score
                }
                best["two_stage"] = (val_score, {"ranker_lists": lists}, ranked)
                mlflow.log_metric("two_stage_seconds", time.perf_counter() - started)
        # popularity is a candidate too: where CF cannot beat it on validation (very sparse
        # baskets), the registered model is the one that serves better, and the run says so
        pop_val = PopularityRecommender().fit(interaction_weights(fit_val, val_cut, 90), items=items)
        pop_val_score = evaluate(pop_val, val_members, owned_val, future_val, len(items))[METRIC]
        popularity = PopularityRecommender().fit(
            interaction_weights(fit_test, ctx.cutoff, 90), items=items, segments=segments
        )
        rows["popularity"] = evaluate(popularity, test_members, owned_test, future_test, len(items)) | {
            f"val_{METRIC}": pop_val_score
        }
        best["popularity"] = (pop_val_score, {}, popularity)
        if ctx.simulated:
            truth = ctx.truth("preferences")
            oracle = OracleRanking(truth[truth["member_id"].isin(test_members)], owned_test)
            rows["oracle"] = evaluate(oracle, test_members, owned_test, future_test, len(items))
        candidates = [a for a in (*algorithms, "two_stage", "popularity") if a in best]
        chosen = max(candidates, key=lambda a: best[a][0])  # on validation, never on test
        model = best[chosen][2]
        metrics = rows[chosen]
        fit_all = fit_test
        if not keep.all():  # the chosen one again on every member, scored on the same test members
            started = time.perf_counter()
            fit_all = everyone[everyone["ts"] < ctx.cutoff]
            del everyone  # its lines after the cutoff are not needed again: one copy of the history at a time
            everyone_segments = _segments(ctx, fit_all["member_id"].unique())
            model = refit_everyone(chosen, best[chosen], fit_all, ctx, items, everyone_segments)
            metrics = evaluate(model, test_members, owned_test, future_test, len(items)) | {
                f"val_{METRIC}": best[chosen][0]
            }
            rows[f"{chosen} (every member)"] = metrics
            mlflow.log_metric("refit_seconds", time.perf_counter() - started)
            sampled, total = fit_test["member_id"].nunique(), len(everyone_segments)
            notes.append(f"chosen on {sampled:,} sampled members, refitted on all {total:,}")
        mlflow.log_params({"chosen_algorithm": chosen, **{f"best_{k}": v for k, v in best[chosen][1].items()}})
        log_metrics(metrics)
        log_metrics(rows["popularity"], "popularity_")
        notes.insert(0, f"chosen: {chosen} (best validation {METRIC} of {', '.join(candidates)})")
        if chosen == "popularity":
            notes.append("no CF model beat popularity on validation: popularity is registered")
        # the untuned library baseline, as a row of its own on the test window (whatever was tuned)
        untuned_als = fit_cf("als", UNTUNED["als"], fit_test, ctx.cutoff, items, segments, settings.seed)
        rows["als_untuned"] = evaluate(untuned_als, test_members, owned_test, future_test, len(items))
        log_metrics(rows["als_untuned"], "baseline_als_untuned_")
        buy_again = BuyAgainRecommender().fit(interaction_weights(fit_test, ctx.cutoff, 90), items, segments)
        rows["buy_again"] = evaluate(buy_again, test_members, owned_test, future_test, len(items))
        if "oracle" in rows:
            log_metrics(rows["oracle"], "oracle_")
        comparison = pd.DataFrame(rows).T
        log_table(comparison.reset_index(names="model"), "comparison.json")
        for metric in ("precision", "recall", "ndcg", "new_recall"):
            log_figure(plots.at_k(comparison, metric), f"plots/{metric}_at_k.png")
        holdout = test[test["member_id"].isin(test_members)][["member_id", "item_id"]].drop_duplicates()
        example = pd.DataFrame({"member_id": test_members[:3]})
        decision = finish(
            settings,
            "cf",
            model,
            "cf",
            example,
            METRIC,
            metrics[METRIC],
            holdout.reset_index(drop=True),
            register_model,
            params={"k": 10, "exclude_owned": True},
            train=fit_all,
        )
        return JobResult("cf", run.info.run_id, metrics, comparison, decision, notes)


def refit_everyone(chosen: str, best: tuple, fit_all: pd.DataFrame, ctx, items: list, segments: pd.Series):
    """The chosen candidate (``best``: validation score, params, model) fitted on every member's
    history before the cutoff; a two-stage model keeps the ranker it learned on the sample."""
    _, params, model = best
    if chosen == "two_stage":
        item_category = load_curated(ctx.settings, "items").set_index("item_id")["category_l1"]
        return model.refit(fit_all, ctx.cutoff, item_category, items, segments)
    if chosen == "popularity":
        return PopularityRecommender().fit(interaction_weights(fit_all, ctx.cutoff, 90), items=items, segments=segments)
    return fit_cf(chosen, params, fit_all, ctx.cutoff, items, segments, ctx.settings.seed)


def _segments(ctx, members) -> pd.Series:
    """Each member's tier at the cutoff (the cold-start popularity segment), from Feast."""
    entity = pd.DataFrame({"member_id": members, "event_timestamp": ctx.cutoff.tz_localize("UTC")})
    tiers = training_frame(ctx.store, entity, [SEGMENT_FEATURE])
    return tiers.set_index("member_id")["tier"].fillna("unknown")
