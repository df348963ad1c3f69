"""The closed loop on the simulator: does the next-best-offer learn from what it sends?

    python bench/loop_bench.py [--members 2000] [--weeks 8] [--cohort-share 0.15] [--data-dir DIR]
                               [--randomised-campaigns K] [--seed 7]

A fresh world (its own data dir), churn and offer champions trained once. Then every day: the
service decides for a random cohort of consenting members (exploration 0.1, control group 0.1),
the marketing system sends what it answers, the world answers from its true response model
(`loyalty-ml data simulate --advance 1`), and `loyalty-ml daily` imports the day, snapshots,
materialises and, weekly, retrains and promotes through the gate.

Per week: the true incremental margin of what the NBO sent, and of the oracle (best true value),
propensity-only (highest predicted redemption) and random policies on the same cohort members
(those not held out), the same eligible offers and the same number of sends. The learning curve
(each policy's share of the oracle) goes to MLflow (experiment ``loyalty-loop-bench``) as a table
and a plot. Each week's NBO share carries its bootstrap standard error (the week's (day, cohort
member) units resampled, :data:`DRAWS` times): how far two weeks must differ to differ at all.
Last line: ``SUMMARY loop_bench weeks=8 nbo_over_oracle_week1=X nbo_over_oracle_week8=Y
clear_drops=N`` (weeks whose share fell from the week before by more than 1.645 standard
errors of the difference).

A run is reproducible: the same arguments give the same table (``--seed`` sets the world, the
models, the service's exploration and the cohorts; another seed is another independent run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DRAWS = 500  # bootstrap resamples of a week's (day, cohort member) units for the share's standard error


def main() -> None:
    warnings.filterwarnings("ignore")  # here, not at import: the tests import this module
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=2000)
    ap.add_argument("--weeks", type=int, default=8)
    ap.add_argument("--cohort-share", type=float, default=0.15)
    ap.add_argument("--data-dir", type=Path, default=ROOT / ".loyalty-loop")
    ap.add_argument(
        "--randomised-campaigns",
        type=int,
        default=None,
        help="randomised campaigns the programme ran before the service (the latest K of the simulator's six;"
        " default all): fewer is a programme that starts the service with little experimental data",
    )
    ap.add_argument("--seed", type=int, default=None, help="the programme's seed (default: the settings' seed)")
    args = ap.parse_args()
    from training.data.simulator import SimConfig

    campaigns = len(SimConfig().campaign_offsets)
    if args.randomised_campaigns is not None and not 1 <= args.randomised_campaigns <= campaigns:
        ap.error(f"--randomised-campaigns must be 1-{campaigns} (the simulator's campaigns)")
    if args.data_dir.exists() and any(args.data_dir.iterdir()):
        ap.error(f"--data-dir {args.data_dir} is not empty: the loop starts from a fresh world (and its own registry)")

    import pandas as pd

    from kernel.curated import load_curated
    from kernel.settings import Settings
    from serving.marketing import send_cohort
    from serving.runtime import DecisionRuntime
    from training.data.advance import world_end
    from training.evaluation.policy import pick, true_value
    from training.world import simulated_world

    env = {"LOYALTY_DATA_DIR": str(args.data_dir), "LOYALTY_CONTROL_SHARE": "0.1", "LOYALTY_EXPLORATION_RATE": "0.1"}
    if args.seed is not None:
        env["LOYALTY_SEED"] = str(args.seed)
    os.environ.update(env)
    settings = Settings()
    started = time.perf_counter()
    offsets = SimConfig().campaign_offsets[-(args.randomised_campaigns or campaigns) :]
    simulated_world(settings, args.members, jobs=("churn", "uplift"), campaign_offsets=offsets)
    print(f"world of {args.members} members ready in {time.perf_counter() - started:.0f} s", flush=True)

    runtime = DecisionRuntime(settings)
    members = load_curated(settings, "members")
    audience = members.loc[members["consent_personalisation"], "member_id"].to_numpy()
    truth = pd.read_parquet(settings.ground_truth_dir / "uplift.parquet")
    values = true_value(truth, runtime.offers, settings.margin_rate)
    rng = np.random.default_rng(settings.seed)
    rows = []
    for week in range(1, args.weeks + 1):
        totals = dict.fromkeys(("nbo", "oracle", "propensity_only", "random"), 0.0)
        sends, units = 0, []
        for _ in range(7):
            day = world_end(settings.ground_truth_dir)
            ts = int((day + pd.Timedelta(hours=10)).timestamp())
            alive = pd.read_parquet(settings.ground_truth_dir / "state.parquet").set_index("member_id")["alive"]
            cohort = rng.choice(audience, int(args.cohort_share * len(audience)), replace=False).tolist()
            pairs, _ = runtime.score_batch(cohort, ts)  # the eligible offers, before anything is sent
            result = send_cohort(runtime, cohort, ts)
            keys = pd.MultiIndex.from_frame(pairs[["member_id", "offer_id"]])
            pairs["true_value"] = values.reindex(keys).to_numpy() * alive.reindex(pairs["member_id"]).to_numpy()
            pairs["random"] = rng.random(len(pairs))
            sent = pd.MultiIndex.from_tuples(list(result.offers.items()), names=["member_id", "offer_id"])
            sent_value = values.reindex(sent).fillna(0).to_numpy()
            sent_value = sent_value * alive.reindex(sent.get_level_values(0)).to_numpy()
            totals["nbo"] += float(sent_value.sum())
            per_member = {"nbo": pd.Series(sent_value, index=sent.get_level_values(0)).groupby(level=0).sum()}
            reached = pairs[~pairs["member_id"].isin(result.control)]  # the control group gets nothing
            stock = runtime.stock_left().clip(lower=0).astype(int).to_dict()
            for policy, score, positive in (
                ("oracle", "true_value", True),
                ("propensity_only", "p_redeem", False),
                ("random", "random", False),
            ):
                chosen = pick(reached, score, result.sent, stock, positive)
                totals[policy] += float(chosen["true_value"].sum())
                per_member[policy] = chosen.groupby("member_id")["true_value"].sum()
            units.append(pd.DataFrame({k: v.reindex(cohort).fillna(0.0).to_numpy() for k, v in per_member.items()}))
            sends += result.sent
            _cli(env, "data", "simulate", "--advance", "1")
            daily = ["daily", "--as-of", str((day + pd.Timedelta(days=1)).date()), "--retrain-every", "7d"]
            _cli(env, *daily, "--job", "uplift", "--job", "churn")
            runtime.refresh_models()
        oracle = totals["oracle"]
        week_units = pd.concat(units, ignore_index=True)  # one row per (day, cohort member)
        se = share_se(week_units["nbo"].to_numpy(), week_units["oracle"].to_numpy(), week)
        for policy, value in totals.items():
            rows.append(
                {
                    "week": week,
                    "policy": policy,
                    "true_incremental_margin": round(value, 2),
                    "share_of_oracle": round(value / oracle, 3) if oracle > 0 else float("nan"),
                    "share_se": round(se, 3) if policy == "nbo" else float("nan"),
                    "sends": sends,
                    "uplift_version": runtime.served.versions.get("uplift"),
                }
            )
        week_rows = pd.DataFrame(rows[-4:])
        print(week_rows.to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    _log(settings, table, args)
    nbo = table[table["policy"] == "nbo"].set_index("week")
    curve, se = nbo["share_of_oracle"], nbo["share_se"]
    drops = clear_drops(curve.to_numpy(), se.to_numpy())
    with pd.option_context("display.width", 200):
        print(table.pivot(index="week", columns="policy", values="share_of_oracle").assign(nbo_se=se).to_string())
    print(f"loop took {time.perf_counter() - started:.0f} s")
    print(
        f"SUMMARY loop_bench weeks={args.weeks} nbo_over_oracle_week1={curve.iloc[0]:.2f}"
        f" nbo_over_oracle_week{args.weeks}={curve.iloc[-1]:.2f} clear_drops={drops}"
    )


def share_se(policy: np.ndarray, oracle: np.ndarray, seed: int) -> float:
    """Bootstrap standard error of sum(policy) / sum(oracle) over units resampled whole."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(policy), (DRAWS, len(policy)))
    ratios = policy[idx].sum(axis=1) / oracle[idx].sum(axis=1)
    return float(np.std(ratios))


def clear_drops(curve: np.ndarray, se: np.ndarray, z: float = 1.645) -> int:
    """Weeks whose share fell below the week before by more than ``z`` standard errors of the
    difference (the weeks' cohorts are independent draws)."""
    diff, sd = np.diff(curve), np.sqrt(se[1:] ** 2 + se[:-1] ** 2)
    return int((diff < -z * sd).sum())


def _cli(env: dict, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *args], env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"loyalty-ml {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def _log(settings, table, args) -> None:
    import mlflow

    from training import plots
    from training.tracking import configure, log_table

    configure(settings, "loyalty-loop-bench")
    with mlflow.start_run(run_name=f"loop {args.weeks} weeks, {args.members} members"):
        mlflow.log_params(
            {
                "members": args.members,
                "weeks": args.weeks,
                "cohort_share": args.cohort_share,
                "randomised_campaigns": args.randomised_campaigns or "all",
                "seed": settings.seed,
            }
        )
        for r in table[table["policy"] == "nbo"].itertuples():
            mlflow.log_metric("nbo_over_oracle", r.share_of_oracle, step=r.week)
            mlflow.log_metric("nbo_share_se", r.share_se, step=r.week)
        log_table(table, "learning_curve.json")
        mlflow.log_figure(plots.learning_curve(table), "plots/learning_curve.png")


if __name__ == "__main__":
    main()
