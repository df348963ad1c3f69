"""Is the churn model a large programme trains worse? Two worlds' champions on the same members.

    python bench/paired_worlds_bench.py --small /tmp/sc/members-100000 --large /tmp/sc/members-1000000

The simulator draws members in 20,000-member chunks, each from its own seeded stream, so a
100k world's members are the first 100k members of the 1M world with the same seed: the same
records and purchases. Each world's holdout metric is measured on its own holdout (all members
at 100k, the training sample at 1M), so the two differ by which members are
scored as well as by the model. Here both worlds' churn champions score the small world's
holdout; the difference of their AUCs, with its bootstrap spread over members (200 draws), is
the model's share of the gap alone.

Last line: ``SUMMARY paired_worlds_bench small_auc=A large_auc=B large_minus_small=C sd=D``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
DRAWS = 200


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=Path, required=True, help="a simulated world with a churn champion")
    ap.add_argument("--large", type=Path, required=True, help="a larger world of the same seed, with one too")
    args = ap.parse_args()

    from churn_list_bench import champion  # this folder: run as ``python bench/...``
    from sklearn.metrics import roc_auc_score

    from kernel.constants import TRAINING_SNAPSHOTS
    from training.datasets import context, cutoff_labels, orders, with_features
    from training.evaluation.metrics import paired_bootstrap_gap
    from training.jobs.churn import SERVICE, features_only

    worlds, models = {}, {}
    for name, data_dir in (("small", args.small), ("large", args.large)):
        worlds[name], models[name] = champion(data_dir)
    ctx = context(worlds["small"])
    if context(worlds["large"]).cutoff != ctx.cutoff:
        raise SystemExit("the two worlds have different cutoffs: simulate them with the same seed and dates")
    small = worlds["small"]
    _, _, labels = cutoff_labels(ctx, TRAINING_SNAPSHOTS, orders(small, small.training_max_members))
    holdout = with_features(ctx, labels, SERVICE)
    y, X = holdout["churned"].to_numpy(), features_only(holdout)
    p = {name: model.predict_proba(X) for name, model in models.items()}
    auc = {name: roc_auc_score(y, p[name]) for name in p}
    _, sd = paired_bootstrap_gap(roc_auc_score, y, p["large"], p["small"], draws=DRAWS, seed=7)
    out = {
        "holdout_members": len(y),
        "small_auc": round(auc["small"], 4),
        "large_auc": round(auc["large"], 4),
        "small_brier": round(float(np.mean((p["small"] - y) ** 2)), 4),
        "large_brier": round(float(np.mean((p["large"] - y) ** 2)), 4),
        "large_minus_small": round(auc["large"] - auc["small"], 4),
        "sd": round(sd, 4),
    }
    for k, v in out.items():
        print(f"{k:<20} {v}")
    keys = ("small_auc", "large_auc", "large_minus_small", "sd", "holdout_members")
    print("SUMMARY paired_worlds_bench " + " ".join(f"{k}={out[k]}" for k in keys))


if __name__ == "__main__":
    main()
