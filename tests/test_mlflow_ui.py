"""The MLflow UI shows the training runs and their key metrics, checked in headless Chromium."""

from __future__ import annotations

import re
import sys

import mlflow
import pytest

from serving.launch import ServerProcess, free_port
from tests.conftest import CHROMIUM, page_text

KEY_METRICS = {"cf": "ndcg_at_10", "churn": "roc_auc", "uplift": "qini", "clv": "spearman", "fraud": "recall"}


@pytest.fixture(scope="module")
def mlflow_ui(settings, trained, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium not installed (Debian package `chromium`; `make test` installs it where it can)")
    port = free_port()
    log = tmp_path_factory.mktemp("ui") / "mlflow-ui.log"
    ui = ServerProcess(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", settings.mlflow_tracking_uri]
        + ["--host", "127.0.0.1", "--port", str(port)],
        port,
        log,
        ready_path="/",
    )
    try:
        ui.start(timeout=120)
    except (RuntimeError, TimeoutError) as err:
        pytest.fail(f"mlflow ui did not start: {err}")
    yield ui.url
    ui.stop()


def test_runs_and_key_metrics_are_shown_in_the_ui(settings, trained, mlflow_ui):
    from training.tracking import configure

    exp_id = configure(settings)
    listing = page_text(f"{mlflow_ui}/#/experiments/{exp_id}/runs")
    assert "Training runs" in listing and settings.experiment_name in listing
    for job in KEY_METRICS:
        assert re.search(rf"\b{job}\b", listing), f"run {job} not listed"
    for job, metric in KEY_METRICS.items():
        run = trained[job]
        page = page_text(f"{mlflow_ui}/#/experiments/{exp_id}/runs/{run.run_id}")
        value = mlflow.get_run(run.run_id).data.metrics[metric]
        assert f"{metric} {value:.6g}"[: len(metric) + 6] in page or f"{metric} {value}" in page, (job, metric)
