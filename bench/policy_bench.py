"""Targeting policies on the simulator, same members, same eligible offers, same budget.

    loyalty-ml demo                      # once: simulated data, features, champion models
    python bench/policy_bench.py [--members 3000] [--budget-share 0.2] [--learners t,x,dr,r]

Random targeting, propensity-only ranking (highest P(redeem)), the service's NBO
(uplift x value - cost, with its eligibility/consent arbitration) and the oracle (true
incremental value), each sending at most one offer to at most budget-share x members,
within stock. Value = the simulator's true incremental margin of what each policy sent.
``--learners``: the uplift job retrained with each learner (not registered) and the NBO
policy's value with each, on the same members, offers and budget.
"""

from __future__ import annotations

import argparse
import warnings

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=3000)
    ap.add_argument("--budget-share", type=float, default=0.2)
    ap.add_argument("--learners", default="", help="comma-separated uplift learners to compare (t,x,dr,r)")
    args = ap.parse_args()
    learners = [x for x in args.learners.split(",") if x]
    from models.uplift import LEARNERS as UPLIFT_LEARNERS

    unknown = [x for x in learners if x not in UPLIFT_LEARNERS]
    if unknown:
        ap.error(f"--learners: unknown learner {unknown[0]!r} (choose from {', '.join(UPLIFT_LEARNERS)})")

    import pandas as pd

    from kernel.curated import load_curated
    from kernel.settings import Settings
    from serving.runtime import DecisionRuntime
    from training.evaluation.policy import compare_policies, true_value

    settings = Settings()
    runtime = DecisionRuntime(settings)
    ids = load_curated(settings, "members")["member_id"].head(args.members).tolist()
    pairs, skipped = runtime.score_batch(ids, None)
    truth = pd.read_parquet(settings.ground_truth_dir / "uplift.parquet")
    values = true_value(truth, runtime.offers, settings.margin_rate)
    budget = int(args.budget_share * len(ids))
    stock = runtime.stock_left().clip(lower=0).astype(int).to_dict()
    table = compare_policies(pairs, values, budget, stock, settings.seed)
    with pd.option_context("display.width", 200, "display.float_format", "{:,.2f}".format):
        print(table.to_string())
    print(f"eligible pairs {len(pairs)}, budget {budget} offers, skipped {skipped}")
    from training.evaluation.ope import validate_on_simulator

    ope = validate_on_simulator(pairs, truth, epsilon=0.3, seed=settings.seed).iloc[0]
    print(
        "off-policy evaluation of the NBO policy from epsilon-greedy (0.3) propensity-policy logs, conversion rate: "
        f"IPS {ope['ips']:.4f} ± {1.96 * ope['ips_se']:.4f}, SNIPS {ope['snips']:.4f}, "
        f"DR {ope['dr']:.4f} ± {1.96 * ope['dr_se']:.4f}; truth {ope['candidate_true']:.4f}; "
        f"logging policy observed {ope['logging_policy_observed']:.4f} (truth {ope['logging_true']:.4f})"
    )
    v = table["true_incremental_value"]
    ours = v["nbo (uplift x value - cost)"]
    by_learner = {}
    if learners:
        from serving.champions import ServedModels
        from training.jobs import uplift

        champion = runtime.served
        for learner in learners:
            model = uplift.run(settings, learner=learner, register_model=False).model
            candidate = champion.as_champions()
            candidate.models["uplift"] = model
            # the same swap the running service makes on a promotion
            runtime.served = ServedModels.build(candidate, runtime.offers, runtime.item_category)
            scored, _ = runtime.score_batch(ids, None)
            learner_table = compare_policies(scored, values, budget, stock, settings.seed)
            value = learner_table.loc["nbo (uplift x value - cost)", "true_incremental_value"]
            by_learner[learner] = value / v["oracle"]
            share = by_learner[learner]
            print(f"NBO with the {learner}-learner: true incremental value {value:,.0f} = {share:.2f} of the oracle")
        runtime.served = champion
    print(
        f"SUMMARY policy_bench members={len(ids)} budget={budget} nbo_over_oracle={ours / v['oracle']:.2f}"
        f" propensity_over_oracle={v['propensity_only'] / v['oracle']:.2f}"
        f" random_over_oracle={v['random'] / v['oracle']:.2f}"
        f" champion_learner={getattr(runtime.served.models['uplift'], 'learner', 'propensity')}"
        + "".join(f" nbo_over_oracle_{k}={x:.2f}" for k, x in by_learner.items())
    )


if __name__ == "__main__":
    main()
