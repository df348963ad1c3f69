"""Where the churn list's time goes as programmes grow: rows against model size, measured in one run.

    python bench/churn_list_bench.py --small /tmp/sc/members-100000 --large /tmp/sc/members-300000

Both folders are simulated worlds with a churn champion (``scale_bench.py --steps data validate
"features build" "features apply" materialize "train churn"``). On the large world's latest
features, every member, the list with top drivers (``ChurnModel.churn_list``, what
``score-churn`` runs per slice) is timed three ways:

* the small world's champion on as many members as the small world has, then on all of the large
  world's: the same model on more rows (``same_model_time_growth`` over ``rows_growth``);
* the large world's champion on all of them: the same rows, the model trained on more members
  (``large_over_small_model``, with each model's trees and leaves);
* a SHAP pass over every one of the small world's count of members (what the list ran before it
  skipped the lowest band) against the list of the same rows, with the large champion:
  ``all_rows_shap_over_list``.

Last line: ``SUMMARY churn_list_bench rows_growth=A same_model_time_growth=B large_over_small_model=C ...``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd

warnings.filterwarnings("ignore")


def champion(data_dir: Path):
    from kernel.constants import CHAMPION
    from kernel.model_store import load_estimator
    from kernel.settings import Settings
    from training.tracking import configure

    settings = Settings(dataset="simulated", data_dir=data_dir)
    configure(settings)
    return settings, load_estimator(settings.model_name("churn"), CHAMPION)


def latest(settings) -> pd.DataFrame:
    from features.store import latest_features
    from training.datasets import context

    ctx = context(settings)
    return latest_features(settings, ctx.store, "churn_v1", pd.Timestamp(ctx.end).tz_localize("UTC"))


def size(model) -> dict:
    dump = model.booster_.booster_.dump_model(num_iteration=-1)["tree_info"]
    return {"trees": len(dump), "leaves": sum(t["num_leaves"] for t in dump)}


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return round(time.perf_counter() - started, 1), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=Path, required=True)
    ap.add_argument("--large", type=Path, required=True)
    args = ap.parse_args()
    small_settings, small = champion(args.small)
    n_small = len(latest(small_settings))
    large_settings, large = champion(args.large)
    frame = latest(large_settings)
    n_large = len(frame)
    out = {"small_members": n_small, "large_members": n_large, "rows_growth": round(n_large / n_small, 2)}
    for name, model in (("small", small), ("large", large)):
        out |= {f"{name}_model_{k}": v for k, v in size(model).items()}
    few = frame.head(n_small)
    timed(lambda: small.churn_list(few.head(2000), drivers=True))  # imports and first-call costs
    out["small_model_small_rows_s"], _ = timed(lambda: small.churn_list(few, drivers=True))
    out["small_model_large_rows_s"], _ = timed(lambda: small.churn_list(frame, drivers=True))
    out["large_model_large_rows_s"], listed = timed(lambda: large.churn_list(frame, drivers=True))
    out["large_model_small_rows_s"], _ = timed(lambda: large.churn_list(few, drivers=True))
    M = large.features_.to_numpy(few)
    out["large_model_small_rows_all_shap_s"], _ = timed(lambda: large.contributions(M))
    bands = listed["risk_band"].value_counts(normalize=True)
    out["low_band_share"] = round(float(bands.get("low", 0.0)), 3)

    def ratio(a: str, b: str) -> float:
        return round(out[a] / out[b], 2)

    out["same_model_time_growth"] = ratio("small_model_large_rows_s", "small_model_small_rows_s")
    out["large_over_small_model"] = ratio("large_model_large_rows_s", "small_model_large_rows_s")
    out["all_rows_shap_over_list"] = ratio("large_model_small_rows_all_shap_s", "large_model_small_rows_s")
    for k, v in out.items():
        print(f"{k:<36} {v}")
    keys = ("rows_growth", "same_model_time_growth", "large_over_small_model", "all_rows_shap_over_list")
    keys += ("low_band_share", "small_model_leaves", "large_model_leaves")
    print("SUMMARY churn_list_bench " + " ".join(f"{k}={out[k]}" for k in keys))


if __name__ == "__main__":
    main()
