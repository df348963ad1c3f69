"""Does a model trained on more members do better on the same holdout? Training size in one world.

    python bench/training_size_bench.py --data-dir /tmp/sc/members-1000000 [--sizes 100000 200000]

The churn and CLV jobs train on at most ``training_max_members`` members (200,000 when this
bench first ran; its result set today's 100,000), drawn by a seeded hash of the id, so a
smaller sample is a subset of a larger one. This bench
builds the jobs' training and holdout frames once for the largest size, then fits ``ChurnModel``
and ``CLVModel`` (the jobs' estimators and defaults) on each size's members and scores them all
on the same holdout members. With a 200k cap, a 100k programme trained on all of its
100k members and a 1M programme on 200k, so on a 1M world this is the comparison of those two
models without the difference between two worlds. It also prints how far the largest model's holdout metric moves
between bootstrap holdouts of the smallest size (``holdout_sd_*``, 20 draws with replacement):
the noise between two worlds' holdouts of that many members.

Last line: ``SUMMARY training_size_bench churn_auc_N=... clv_spearman_N=... holdout_sd_churn_auc=...``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
DRAWS = 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="a simulated world after `features apply`")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 200_000])
    args = ap.parse_args()

    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from kernel.constants import TRAINING_SNAPSHOTS
    from kernel.settings import Settings
    from models.churn import ChurnModel
    from models.clv import CLVModel
    from training.datasets import context, cutoff_labels, orders, with_features
    from training.jobs.churn import SERVICE, features_only

    sizes = sorted(args.sizes)
    settings = Settings(dataset="simulated", data_dir=args.data_dir, training_max_members=sizes[-1])
    ctx = context(settings)
    started = time.perf_counter()
    _, train_labels, test_labels = cutoff_labels(ctx, TRAINING_SNAPSHOTS, orders(settings, sizes[-1]))
    train, test = with_features(ctx, train_labels, SERVICE), with_features(ctx, test_labels, SERVICE)
    out = {"holdout_members": len(test), "frames_s": round(time.perf_counter() - started, 1)}
    X_test, churned, spend = features_only(test), test["churned"].to_numpy(), test["spend_next"].to_numpy()
    for n in sizes:
        members = orders(settings, n)["member_id"].unique()
        rows = train[train["member_id"].isin(members)]
        X, ids = features_only(rows), rows["member_id"].to_numpy()
        started = time.perf_counter()
        churn = ChurnModel(seed=settings.seed).fit(X, rows["churned"].to_numpy(), ids)
        clv = CLVModel(horizon_days=settings.label_window_days, seed=settings.seed).fit(X, rows["spend_next"], ids)
        p, value = churn.predict_proba(X_test), clv.predict(X_test)
        out |= {
            f"members_{n}": int(rows["member_id"].nunique()),
            f"fit_s_{n}": round(time.perf_counter() - started, 1),
            f"churn_auc_{n}": round(float(roc_auc_score(churned, p)), 4),
            f"churn_brier_{n}": round(float(np.mean((p - churned) ** 2)), 4),
            f"clv_spearman_{n}": round(float(spearmanr(spend, value).statistic), 4),
        }
    # the largest model's metric on bootstrap holdouts as large as the smallest training sample
    rng = np.random.default_rng(settings.seed)
    draws = [rng.choice(len(test), size=sizes[0], replace=True) for _ in range(DRAWS)]
    out["holdout_sd_churn_auc"] = round(float(np.std([roc_auc_score(churned[d], p[d]) for d in draws])), 4)
    out["holdout_sd_clv_spearman"] = round(float(np.std([spearmanr(spend[d], value[d]).statistic for d in draws])), 4)
    for k, v in out.items():
        print(f"{k:<28} {v}")
    keys = [f"{m}_{n}" for n in sizes for m in ("churn_auc", "clv_spearman")]
    keys += ["holdout_sd_churn_auc", "holdout_sd_clv_spearman"]
    print("SUMMARY training_size_bench " + " ".join(f"{k}={out[k]}" for k in keys))


if __name__ == "__main__":
    main()
