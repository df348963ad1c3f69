"""Request-time features."""

import pandas as pd
from feast import Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64

from features.views import member_realtime, member_rfm

request_time = RequestSource(name="request_time", schema=[Field(name="request_ts", dtype=Int64)])


@on_demand_feature_view(
    sources=[member_rfm, member_realtime, request_time],
    schema=[Field(name="days_since_last_purchase", dtype=Float64)],
    mode="pandas",
    description="Days since the last purchase at request time, counting purchases pushed in real time.",
)
def request_recency(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast runs this function from the registry without its module's globals: import inside
    import pandas as pd

    from features.on_demand import days_since_last_purchase

    return pd.DataFrame({"days_since_last_purchase": days_since_last_purchase(inputs)})


def days_since_last_purchase(inputs: pd.DataFrame) -> pd.Series:
    """Days from the last purchase (batch snapshot or pushed in real time) to ``request_ts``.

    Shared by the on-demand view and the decision service, which computes it in process on
    its hot path (Feast's on-demand transformation costs more than the online read itself).
    """
    batch = pd.to_numeric(inputs["last_purchase_ts"], errors="coerce").fillna(0).astype("int64")
    live = pd.to_numeric(inputs["rt_last_purchase_ts"], errors="coerce").fillna(0).astype("int64")
    last = batch.where(batch >= live, live)
    days = (pd.to_numeric(inputs["request_ts"]).astype("int64") - last) / 86400.0
    # no purchase ever: report a large sentinel rather than time since the epoch
    return days.where(last > 0, 9999.0)
