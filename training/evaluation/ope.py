"""Off-policy evaluation: the value of a candidate policy from data logged by another one.

Logged rows carry the context (member), the action taken (offer), the logging policy's
propensity of that action and the reward. For a deterministic candidate policy ``pi``:

* IPS    = mean( 1[a = pi(x)] / p(a|x) * r )
* SNIPS  = sum( w * r ) / sum( w ),  w = 1[a = pi(x)] / p(a|x)
* DR     = mean( q(x, pi(x)) + w * (r - q(x, a)) ),  q = a reward model (here the uplift model's
           P(convert | treated)); unbiased if either the propensities or q are right.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def estimates(logged: pd.DataFrame, target_action: pd.Series, q_logged: np.ndarray, q_target: np.ndarray) -> dict:
    """``logged``: action, propensity, reward per row; ``target_action``: pi(x) per row."""
    match = (logged["action"].to_numpy() == target_action.to_numpy()).astype(float)
    w = match / logged["propensity"].to_numpy(dtype=float)
    r = logged["reward"].to_numpy(dtype=float)
    n = len(r)
    ips_terms = w * r
    dr_terms = q_target + w * (r - q_logged)
    se = lambda x: float(np.std(x, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")  # noqa: E731
    return {
        "ips": float(ips_terms.mean()),
        "ips_se": se(ips_terms),
        "snips": float(ips_terms.sum() / w.sum()) if w.sum() > 0 else float("nan"),
        "dr": float(dr_terms.mean()),
        "dr_se": se(dr_terms),
        "logging_policy_observed": float(r.mean()),
        "matched_rows": float(match.sum()),
    }


def simulate_logging(pairs: pd.DataFrame, truth: pd.DataFrame, epsilon: float, seed: int) -> pd.DataFrame:
    """Simulator: an epsilon-greedy logging policy over each member's eligible offers.

    Greedy action = highest ``p_redeem`` (a propensity-ranking policy, as many programmes run);
    with probability ``epsilon`` a uniformly random eligible offer. Rewards (conversion) are
    drawn from the true P(convert | treated) of the chosen offer.
    """
    rng = np.random.default_rng(seed)
    p_true = truth.set_index(["member_id", "offer_id"])["p_convert_treated"]
    rows = []
    for member, g in pairs.groupby("member_id", sort=False):
        offers = g["offer_id"].to_numpy()
        greedy = offers[int(np.argmax(g["p_redeem"].to_numpy()))]
        n = len(offers)
        action = offers[rng.integers(n)] if rng.random() < epsilon else greedy
        prop = epsilon / n + (1 - epsilon) * (action == greedy)
        rows.append((member, action, prop))
    logged = pd.DataFrame(rows, columns=["member_id", "action", "propensity"])
    pt = p_true.reindex(pd.MultiIndex.from_arrays([logged["member_id"], logged["action"]])).to_numpy()
    logged["reward"] = (rng.random(len(logged)) < pt).astype(float)
    logged["true_expected_reward"] = pt
    return logged


def validate_on_simulator(
    pairs: pd.DataFrame, truth: pd.DataFrame, epsilon: float = 0.3, seed: int = 7
) -> pd.DataFrame:
    """Estimate the NBO policy's conversion rate from epsilon-greedy logs; compare with the truth."""
    logged = simulate_logging(pairs, truth, epsilon, seed)
    best = pairs.sort_values("expected_incremental_value", ascending=False, kind="stable").drop_duplicates("member_id")
    target = best.set_index("member_id")["offer_id"].reindex(logged["member_id"]).reset_index(drop=True)
    q = pairs.set_index(["member_id", "offer_id"])["p_convert_treated"]
    q_logged = q.reindex(pd.MultiIndex.from_arrays([logged["member_id"], logged["action"]])).to_numpy()
    q_target = q.reindex(pd.MultiIndex.from_arrays([logged["member_id"], target])).to_numpy()
    est = estimates(logged, target, q_logged, q_target)
    p_true = truth.set_index(["member_id", "offer_id"])["p_convert_treated"]
    est["candidate_true"] = float(p_true.reindex(pd.MultiIndex.from_arrays([logged["member_id"], target])).mean())
    est["logging_true"] = float(logged["true_expected_reward"].mean())
    return pd.DataFrame([est])


def evaluate_logged(logged: pd.DataFrame, candidate_score: str) -> dict:
    """Value of the policy that picks, among each decision's logged candidates, the highest
    ``candidate_score`` (``value`` or ``p_redeem``); reward model q = the logged P(redeem)."""
    target, q_target, q_logged = [], [], []
    for cands, action in zip(logged["candidates"], logged["action"], strict=True):
        best = max(cands, key=lambda c: c[candidate_score])
        target.append(best["offer_id"])
        q_target.append(best["p_redeem"])
        q_logged.append(next((c["p_redeem"] for c in cands if c["offer_id"] == action), 0.0))
    return estimates(logged, pd.Series(target), np.array(q_logged), np.array(q_target)) | {"decisions": len(logged)}
