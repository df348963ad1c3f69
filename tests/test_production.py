"""The production profile over real connections to the machine's Redis (:6379) and PostgreSQL
(:5432): the same CLI, training and service code, selected by ``LOYALTY_PROFILE=production``.

One fresh PostgreSQL database and Feast project per run (dropped afterwards), so runs never
see each other's registry, runs or serving state.
"""

from __future__ import annotations

import uuid

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa

from kernel.settings import Profile, Settings
from serving.launch import ServerProcess
from tests.conftest import reachable, run_cli

pytestmark = [
    pytest.mark.production,
    pytest.mark.skipif(
        not (reachable("127.0.0.1", 6379) and reachable("127.0.0.1", 5432)),
        reason="production profile needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (not reachable)",
    ),
]
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MEMBERS = 1500
KEY = "prod-key"


def _admin(sql: str) -> None:
    engine = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    """simulate -> validate -> snapshots into PostgreSQL -> feast apply (SQL registry) ->
    materialise into Redis -> train cf/churn/uplift (MLflow on PostgreSQL), all by the CLI."""
    tag = uuid.uuid4().hex[:8]
    db = f"loyalty_test_{tag}"
    _admin(f"CREATE DATABASE {db}")
    env = {
        "LOYALTY_PROFILE": "production",
        "LOYALTY_DATA_DIR": str(tmp_path_factory.mktemp("prod")),
        "LOYALTY_POSTGRES_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
        "LOYALTY_REDIS_URL": "127.0.0.1:6379",
        "LOYALTY_FEAST_PROJECT": f"t{tag}",
        "LOYALTY_TUNING_TRIALS": "2",
        "LOYALTY_API_KEYS": KEY,
        "LOYALTY_PSEUDONYM_KEY": uuid.uuid4().hex,  # 32 bytes: the production profile refuses less
    }
    settings = Settings(
        profile=Profile.production,
        data_dir=env["LOYALTY_DATA_DIR"],
        postgres_url=env["LOYALTY_POSTGRES_URL"],
        feast_project=env["LOYALTY_FEAST_PROJECT"],
        api_keys=KEY,
        pseudonym_key=env["LOYALTY_PSEUDONYM_KEY"],
    )
    try:
        run_cli(env, "data", "simulate", "--members", str(MEMBERS))
        run_cli(env, "data", "validate")
        run_cli(env, "features", "build")
        run_cli(env, "features", "apply")
        run_cli(env, "features", "materialize")
        for job in ("cf", "churn", "uplift"):
            run_cli(env, "train", job)
        yield {"env": env, "settings": settings, "db": db}
    finally:
        from features.store import get_store

        try:
            get_store(settings).teardown()  # the project's keys in the shared Redis
        except Exception as err:  # cleanup must not hide the test's own failure
            print(f"feast teardown failed: {err}")
        _admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def test_every_store_is_the_production_one(prod):
    from features.store import get_store

    engine = sa.create_engine(prod["settings"].postgres_url)
    tables = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    # Feast offline tables and SQL registry, MLflow tracking/registry: all in PostgreSQL
    assert {"simulated_member_rfm", "simulated_member_consent", "simulated_member_realtime"} <= tables
    assert {"feature_views", "entities"} <= tables
    assert {"runs", "metrics", "registered_models", "model_versions", "registered_model_aliases"} <= tables
    store = get_store(prod["settings"])
    assert store.config.online_store.type == "redis" and store.config.offline_store.type == "postgres"
    assert store.config.registry.registry_type == "sql"
    sources = {fv.batch_source.__class__.__name__ for fv in store.list_feature_views()}
    assert sources == {"PostgreSQLSource"}
    assert not (prod["settings"].dataset_dir / "online_store.db").exists()
    assert not (prod["settings"].data_dir / "mlflow.db").exists()


def test_point_in_time_features_from_postgresql_equal_the_parquet_ones(prod):
    """The same snapshots through Feast's PostgreSQL and file offline stores: same training set."""
    from features.store import get_store, training_frame

    settings = prod["settings"]
    embedded = settings.model_copy(update={"profile": Profile.embedded})
    # a file registry on the same data dir (its FileSources point at this run's parquet files)
    run_cli({**prod["env"], "LOYALTY_PROFILE": "embedded"}, "features", "apply")
    snaps = pd.read_parquet(settings.offline_dir / "member_rfm.parquet")[["member_id", "event_timestamp"]]
    entity = snaps.sample(300, random_state=3).reset_index(drop=True)
    # between snapshots, and before a member's first one: as-of joins and nulls both exercised
    entity["event_timestamp"] = entity["event_timestamp"] + pd.to_timedelta(
        [(-40 if i % 5 == 0 else 3) for i in range(len(entity))], unit="D"
    )
    pg = training_frame(get_store(settings), entity, "churn_v1")
    files = training_frame(get_store(embedded), entity, "churn_v1")
    assert len(pg) == len(files) == len(entity)
    cols = sorted(set(files.columns) - {"member_id", "event_timestamp"})
    assert pg[cols].notna().sum().sum() > 0.5 * pg[cols].size  # mostly found, not all nulls
    for c in cols:
        a, b = pg[c], files[c]
        if pd.api.types.is_numeric_dtype(b) or pd.api.types.is_bool_dtype(b):
            a, b = pd.to_numeric(a, errors="coerce").astype(float), pd.to_numeric(b, errors="coerce").astype(float)
        else:
            a, b = a.astype(object).where(a.notna(), None), b.astype(object).where(b.notna(), None)
        pd.testing.assert_series_equal(a, b, check_names=False, obj=c, rtol=1e-6)


def test_models_logged_and_loaded_through_the_postgresql_tracking_store(prod):
    from mlflow.tracking import MlflowClient

    from kernel.constants import CHAMPION
    from kernel.model_store import load_estimator
    from training.tracking import configure

    settings = prod["settings"]
    configure(settings)
    import mlflow

    assert mlflow.get_tracking_uri().startswith("postgresql")
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(settings.experiment_name).experiment_id])
    assert {r.data.tags.get("job") for r in runs} >= {"cf", "churn", "uplift"}
    churn = load_estimator(settings.model_name("churn"), CHAMPION)
    version = client.get_model_version_by_alias(settings.model_name("churn"), CHAMPION)
    run = client.get_run(version.run_id)
    assert run.data.metrics["roc_auc"] > 0.8
    assert hasattr(churn, "predict_proba")
    run_cli(prod["env"], "models", "list")


def test_service_serves_from_redis_and_keeps_state_in_postgresql(prod, tmp_path):
    settings = prod["settings"]
    members = pd.read_parquet(settings.curated_dir / "members.parquet")
    ids = members.loc[members["consent_personalisation"].astype(bool), "member_id"].head(40).tolist()
    with ServerProcess.decision_service(tmp_path / "svc.log", prod["env"]) as svc:
        h = {"X-API-Key": KEY}
        ready = httpx.get(svc.url + "/readyz", timeout=10)
        assert ready.status_code == 200
        answers = [
            httpx.post(svc.url + "/next_best_offer", json={"member_id": m}, headers=h, timeout=30).json() for m in ids
        ]
        assert not any(a["degraded"] for a in answers)
        assert sum(a["personalised"] and bool(a["offers"]) for a in answers) >= 10
        target = next(a for a in answers if a["offers"])
        member = target["member_id"]
        events = [
            {"event_id": f"prod-{uuid.uuid4().hex}", "member_id": member, "event": "opt_out", "ts": 1_750_000_000}
        ]
        ack = httpx.post(svc.url + "/feedback", json={"events": events}, headers=h, timeout=30).json()
        assert ack["stored"] == 1 and ack["pushed_to_feature_store"]
        after = httpx.post(svc.url + "/next_best_offer", json={"member_id": member}, headers=h, timeout=30).json()
        assert not after["personalised"]  # opt-out honoured at once, read back from PostgreSQL
        churn = httpx.post(svc.url + "/churn_risk", json={"member_id": ids[0]}, headers=h, timeout=30).json()
        assert churn["churn_probability"] is not None and not churn["degraded"]
    engine = sa.create_engine(settings.postgres_url)
    with engine.connect() as conn:
        n_dec = conn.exec_driver_sql("SELECT COUNT(*) FROM serving_simulated_decisions").scalar()
        keys = conn.exec_driver_sql("SELECT member_key FROM serving_simulated_feedback").scalars().all()
    engine.dispose()
    assert n_dec >= len(ids) + 1
    assert keys and member not in keys  # pseudonymised in PostgreSQL too
    assert member not in svc.tail(10**7)  # and in the logs
