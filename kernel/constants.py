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
# churn: each training snapshot counts this times the next later one in the booster's fit (the
# CLI's --snapshot-decay default; 1: all alike). AUC lead over the best untuned baseline, seeds
# 7/0/1, alike -> 0.2: Online Retail +0.0068 -> +0.0104, Complete Journey +0.0079 -> +0.0105,
# CDNOW +0.0063 -> +0.0063, simulated +0.0009 -> +0.0007 (bench/RESULTS.md, issue 14)
CHURN_SNAPSHOT_DECAY = 0.2

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
