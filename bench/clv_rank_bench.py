"""CLV ordered by expected rank (the CLV job's model) against expected spend (its Tweedie predecessor).

    LOYALTY_DATA_DIR=/tmp/real/online_retail LOYALTY_DATASET=online_retail \\
        python bench/clv_rank_bench.py [--seeds 7 0]

Issue 14 scores CLV by the Spearman correlation of the predicted value with next-window spend.
Most members spend nothing in a window and Spearman gives them one tied rank; ``models/clv.py``
therefore orders members by their expected rank of spend (P(buy) and the expected quantile
among buyers) and maps that to currency, where its predecessor predicted expected spend with a
Tweedie booster. This bench builds the churn and CLV jobs' frames once (their code and
settings, as ``bench/churn_variants_bench.py`` does), then scores on the same holdout members,
for each seed (the seed moves the held-out fifth of members that picks tree size and count):

- ``clv_model``: ``CLVModel`` fitted as the job fits it (snapshots weighted as churn weighs them);
- ``tweedie``: the previous model: one LightGBM Tweedie booster (variance power 1.3), tree size
  and count chosen on the same held-out fifth, refitted on all rows;
- the untuned baselines of the job (``training.evaluation.baselines``).

It also prints each model's RMSE and mean value against the mean spend: the value is currency.

Last line: ``SUMMARY clv_rank DATASET: clv_lead=A clv_lead_sd=B tweedie_lead=C clv_rmse=D
tweedie_rmse=E`` (leads in Spearman over the best untuned baseline and RMSEs, means over the
seeds; ``clv_lead_sd``: the bootstrap spread of the lead on this holdout).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")

TWEEDIE = {"objective": "tweedie", "tweedie_variance_power": 1.3}


def tweedie_value(X, spend, groups, X_test, seed: int) -> np.ndarray:
    """The CLV job's model before the expected rank, refitted here from its settings."""
    import lightgbm as lgb
    from sklearn.model_selection import GroupShuffleSplit

    from models.clv import COMPLEXITY_GRID, EARLY_STOPPING_ROUNDS, HELD_OUT_SHARE, PARAMS
    from models.features import FeatureMatrix, fit_best_size

    features = FeatureMatrix().fit(X)
    M = features.transform(X)
    split = GroupShuffleSplit(n_splits=1, test_size=HELD_OUT_SHARE, random_state=seed)
    fit_idx, held_idx = next(split.split(M, spend, groups))
    params = PARAMS | TWEEDIE
    size, best = fit_best_size(
        lgb.LGBMRegressor,
        COMPLEXITY_GRID,
        params,
        {},
        seed,
        (M.iloc[fit_idx], spend[fit_idx]),
        (M.iloc[held_idx], spend[held_idx]),
        EARLY_STOPPING_ROUNDS,
    )
    params = params | size | {"n_estimators": int(best.best_iteration_ or params["n_estimators"])}
    model = lgb.LGBMRegressor(**params, random_state=seed).fit(M, spend)
    return np.clip(model.predict(features.transform(X_test)), 0, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 0])
    args = ap.parse_args()

    from scipy.stats import spearmanr

    from kernel.constants import CHURN_SNAPSHOT_DECAY, TRAINING_SNAPSHOTS
    from kernel.settings import Settings
    from models.clv import CLVModel
    from training.datasets import context, member_frames, snapshot_weights
    from training.evaluation.baselines import btyd_holdout, untuned_lightgbm
    from training.evaluation.metrics import paired_bootstrap_gap
    from training.jobs.churn import SERVICE, features_only

    def spearman(a, b):
        return spearmanr(a, b).statistic

    def rmse(a, b):
        return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))

    settings = Settings()
    ctx = context(settings)
    started = time.perf_counter()
    order_table, train, test = member_frames(ctx, TRAINING_SNAPSHOTS, SERVICE)
    X, X_test = features_only(train), features_only(test)
    spend, ids, actual = train["spend_next"].to_numpy(), train["member_id"].to_numpy(), test["spend_next"].to_numpy()
    snapshots = train["event_timestamp"].to_numpy()
    weights = snapshot_weights(train["event_timestamp"], CHURN_SNAPSHOT_DECAY)
    print(f"frames: {len(train)} training rows, {len(test)} holdout members ({time.perf_counter() - started:.0f} s)")

    results: dict[str, list[float]] = {"clv": [], "sd": [], "tweedie": [], "clv_rmse": [], "tweedie_rmse": []}
    for seed in args.seeds:
        started = time.perf_counter()
        model = CLVModel(seed=seed).fit(X, spend, ids, snapshots=snapshots, sample_weight=weights)
        fit_s = time.perf_counter() - started
        value = model.predict(X_test)
        started = time.perf_counter()
        tweedie = tweedie_value(X, spend, ids, X_test, seed)
        tweedie_s = time.perf_counter() - started
        if seed == args.seeds[0]:
            btyd = btyd_holdout(order_table, ctx.cutoff, settings.label_window_days, test["member_id"])
            plain = untuned_lightgbm(model.features_, X, spend, X_test, settings.seed, classifier=False)
            baselines = {
                "lightgbm_default": plain,
                "bg_nbd_gamma_gamma": btyd["expected_spend"].to_numpy(),
            }
            for name, p in baselines.items():
                print(f"baseline {name:20s} spearman={spearman(actual, p):.4f} rmse={rmse(actual, p):.2f}")
            best = max(baselines.values(), key=lambda p: spearman(actual, p))
        lead, sd = paired_bootstrap_gap(spearman, actual, value, best)
        for key, figure in (
            ("clv", lead),
            ("sd", sd),
            ("tweedie", spearman(actual, tweedie) - spearman(actual, best)),
            ("clv_rmse", rmse(actual, value)),
            ("tweedie_rmse", rmse(actual, tweedie)),
        ):
            results[key].append(figure)
        print(
            f"seed {seed}: expected rank {lead:+.4f} (sd {sd:.4f}, rmse {results['clv_rmse'][-1]:.2f},"
            f" mean {value.mean():.2f}, fit {fit_s:.0f} s), tweedie {results['tweedie'][-1]:+.4f}"
            f" (rmse {results['tweedie_rmse'][-1]:.2f}, mean {tweedie.mean():.2f}, fit {tweedie_s:.0f} s);"
            f" mean spend {actual.mean():.2f}",
            flush=True,
        )
    print(
        f"SUMMARY clv_rank {settings.dataset}: clv_lead={np.mean(results['clv']):.4f}"
        f" clv_lead_sd={np.mean(results['sd']):.4f} tweedie_lead={np.mean(results['tweedie']):.4f}"
        f" clv_rmse={np.mean(results['clv_rmse']):.2f} tweedie_rmse={np.mean(results['tweedie_rmse']):.2f}"
    )


if __name__ == "__main__":
    main()
