"""The closed-loop bench's week-to-week statistics: the standard error of a week's share of the
oracle, and which week-over-week falls exceed their noise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("loop_bench", ROOT / "bench" / "loop_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_share_standard_error_matches_the_delta_method_and_shrinks_with_members():
    share_se = _bench().share_se
    rng = np.random.default_rng(0)
    oracle = rng.exponential(1.0, 4000)
    policy = oracle * rng.uniform(0.0, 1.0, 4000) - rng.exponential(0.2, 4000)  # sends can lose money
    ratio = policy.sum() / oracle.sum()
    # delta method for a ratio of sums: SE = sd(policy - ratio * oracle) / (sqrt(n) * mean(oracle))
    analytic = np.std(policy - ratio * oracle) / (np.sqrt(len(oracle)) * oracle.mean())
    assert share_se(policy, oracle, seed=1) == pytest.approx(analytic, rel=0.1)
    quarter = share_se(policy[:1000], oracle[:1000], seed=1)
    assert quarter == pytest.approx(2 * analytic, rel=0.2)  # a quarter of the members: twice the noise


def test_only_falls_beyond_their_noise_count_as_clear_drops():
    clear_drops = _bench().clear_drops
    se = np.full(4, 0.02)  # the SE of a difference is 0.028; 1.645 of it is 0.047
    assert clear_drops(np.array([0.20, 0.30, 0.26, 0.40]), se) == 0  # -0.04: within the noise
    assert clear_drops(np.array([0.20, 0.30, 0.24, 0.40]), se) == 1  # -0.06: beyond it
    assert clear_drops(np.array([0.50, 0.40, 0.30, 0.20]), se) == 3
    assert clear_drops(np.array([0.20, 0.30, 0.24]), np.array([0.05, 0.05, 0.05])) == 0  # noisier weeks
