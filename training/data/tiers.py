"""Tier rules shared by the simulator, the adapters and the feature builder."""

from __future__ import annotations

import numpy as np

from kernel.contracts import TIERS

# Trailing-365-day spend needed for each tier (currency units; 1 point per unit).
TIER_THRESHOLDS = {"Regular": 0.0, "Silver": 300.0, "Gold": 1000.0, "Platinum": 3000.0}
DOWNGRADE_AFTER_DAYS = 90  # 3 months without purchase = one level down


def tier_from_spend(spend_365: np.ndarray, recency_days: np.ndarray) -> np.ndarray:
    """Tier index (0=Regular..3=Platinum) from trailing spend and the inactivity downgrade."""
    level = np.zeros(len(spend_365), dtype=np.int64)
    for i, name in enumerate(TIERS[1:], start=1):
        level[np.asarray(spend_365) >= TIER_THRESHOLDS[name]] = i
    inactive = np.asarray(recency_days, dtype=float) >= DOWNGRADE_AFTER_DAYS
    level[inactive] = np.maximum(level[inactive] - 1, 0)
    return level


def tier_names(levels: np.ndarray) -> np.ndarray:
    return np.asarray(TIERS, dtype=object)[levels]
