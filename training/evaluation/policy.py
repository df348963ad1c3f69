"""Policy value on the simulator: who gets which offer under the same contact budget, and the
true incremental margin that earns (from the simulator's per member x offer ground truth)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def true_value(truth: pd.DataFrame, offers: pd.DataFrame, margin_rate: float) -> pd.Series:
    """True incremental margin of sending an offer: uplift revenue x margin - expected cost."""
    margin = truth["offer_id"].map(offers.set_index("offer_id")["margin_impact"]).fillna(0) + margin_rate
    value = truth["incremental_revenue"] * margin - truth["expected_cost"]
    return pd.Series(value.to_numpy(), index=pd.MultiIndex.from_frame(truth[["member_id", "offer_id"]]))


def pick(pairs: pd.DataFrame, score: str, budget: int, stock: dict[str, int], positive_only: bool) -> pd.DataFrame:
    """Best offer per member by ``score``, then the ``budget`` best members, within stock."""
    cand = pairs[pairs[score] > 0] if positive_only else pairs
    cand = cand.sort_values(score, ascending=False, kind="stable")
    left, chosen, seen = dict(stock), [], set()
    for r in cand.itertuples():
        if len(chosen) >= budget:
            break
        if r.member_id in seen or left.get(r.offer_id, 0) <= 0:
            continue
        seen.add(r.member_id)
        left[r.offer_id] -= 1
        chosen.append(r.Index)
    return cand.loc[chosen]


def compare_policies(pairs: pd.DataFrame, values: pd.Series, budget: int, stock: dict[str, int], seed: int = 7):
    """Random, propensity-only, our NBO and the oracle on the same eligible pairs and budget."""
    pairs = pairs.copy()
    pairs["true_value"] = values.reindex(pd.MultiIndex.from_frame(pairs[["member_id", "offer_id"]])).to_numpy()
    pairs["random"] = np.random.default_rng(seed).random(len(pairs))
    policies = {
        "random": ("random", False),
        "propensity_only": ("p_redeem", False),
        "nbo (uplift x value - cost)": ("expected_incremental_value", True),
        "oracle": ("true_value", True),
    }
    rows = {}
    for name, (score, positive_only) in policies.items():
        chosen = pick(pairs, score, budget, stock, positive_only)
        rows[name] = {
            "offers_sent": len(chosen),
            "true_incremental_value": float(chosen["true_value"].sum()),
            "value_per_offer": float(chosen["true_value"].mean()) if len(chosen) else 0.0,
        }
    return pd.DataFrame(rows).T
