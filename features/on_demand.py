"""Request-time features."""

from __future__ import annotations

import types

import pandas as pd
from feast import FeatureView, Field, RequestSource
from feast.on_demand_feature_view import OnDemandFeatureView, on_demand_feature_view
from feast.types import Float64, Int64


def request_recency(inputs: pd.DataFrame) -> pd.DataFrame:
    """The on-demand transformation (Feast names the view after this function)."""
    # Feast runs this function from the registry without its module's globals: import inside
    import pandas as pd

    from features.on_demand import days_since_last_purchase

    return pd.DataFrame({"days_since_last_purchase": days_since_last_purchase(inputs)})


def request_recency_view(member_rfm: FeatureView, member_realtime: FeatureView) -> OnDemandFeatureView:
    request_time = RequestSource(name="request_time", schema=[Field(name="request_ts", dtype=Int64)])
    return on_demand_feature_view(
        sources=[member_rfm, member_realtime, request_time],
        schema=[Field(name="days_since_last_purchase", dtype=Float64)],
        mode="pandas",
        description="Days since the last purchase at request time, counting purchases pushed in real time.",
    )(_copy(request_recency))


def _copy(fn: types.FunctionType) -> types.FunctionType:
    """A fresh function object: Feast's decorator re-labels the function it wraps as ``__main__``
    (for dill), which would break the next view built from the same function."""
    return types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


NEVER_PURCHASED_DAYS = 9999.0  # no purchase ever: a large sentinel rather than time since the epoch


def days_since_last_purchase_one(last_purchase_ts, rt_last_purchase_ts, request_ts: int) -> float:
    """:func:`days_since_last_purchase` for one member, on plain values (the service's hot path)."""
    last = max(_unix(last_purchase_ts), _unix(rt_last_purchase_ts))
    return (int(request_ts) - last) / 86400.0 if last > 0 else NEVER_PURCHASED_DAYS


def _unix(value) -> int:
    try:
        return int(value) if value is not None and value == value else 0  # NaN != NaN
    except (TypeError, ValueError):
        return 0


def days_since_last_purchase(inputs: pd.DataFrame) -> pd.Series:
    """Days from the last purchase (batch snapshot or pushed in real time) to ``request_ts``.

    Shared by the on-demand view and the decision service, which computes it in process on
    its hot path (Feast's on-demand transformation costs more than the online read itself).
    """
    batch = pd.to_numeric(inputs["last_purchase_ts"], errors="coerce").fillna(0).astype("int64")
    live = pd.to_numeric(inputs["rt_last_purchase_ts"], errors="coerce").fillna(0).astype("int64")
    last = batch.where(batch >= live, live)
    days = (pd.to_numeric(inputs["request_ts"]).astype("int64") - last) / 86400.0
    return days.where(last > 0, NEVER_PURCHASED_DAYS)
