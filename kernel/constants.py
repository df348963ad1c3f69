"""Names every layer shares: jobs, served models, feature services, id rules, channels."""

from __future__ import annotations

# training jobs, in the order ``train all`` runs them; each registers ``loyalty-<dataset>-<job>``
JOB_NAMES = ("cf", "churn", "uplift", "clv", "fraud")
# the champions the decision service loads (the others are batch models)
SERVED_JOBS = ("cf", "churn", "uplift")

# registry aliases
CHAMPION, CHALLENGER = "champion", "challenger"
# training cutoffs before the holdout for the churn and value jobs (the CLI's --snapshots default)
TRAINING_SNAPSHOTS = 6

# member ids: what the service, the CLI and the state store accept
MEMBER_ID_PATTERN = r"^[A-Za-z0-9_\-.:]+$"
MEMBER_ID_MAX_LENGTH = 64

# outbound channels that need the member's channel consent; app/web/store are member-initiated
CONTACT_CHANNELS = ("push", "sms", "email")

# column names of the entity and the snapshot tables
MEMBER_ID = "member_id"
EVENT_TIMESTAMP = "event_timestamp"
REALTIME_VIEW = "member_realtime"  # fed by the service's pushes: its newest values live online only

# the feature service the decision service reads for one member
ONLINE_FEATURE_SERVICE = "member_online_v1"
# the campaign id under which the decision service's own sends (and its control group) come back
# as exposures: the uplift job learns from them with their logged propensities
SERVICE_CAMPAIGN = "nbo-service"
