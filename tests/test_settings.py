"""Settings: safe production defaults, secrets from files, and CLI errors that name the setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from kernel.settings import MIN_PSEUDONYM_KEY_BYTES, Profile, Settings, settings_error

ROOT = Path(__file__).resolve().parents[1]
GOOD_KEY = "k" * MIN_PSEUDONYM_KEY_BYTES


@pytest.mark.unit
@pytest.mark.parametrize(
    "keys,pseudonym,names",
    [
        ("demo-key", GOOD_KEY, "LOYALTY_API_KEYS"),
        ("", GOOD_KEY, "LOYALTY_API_KEYS"),
        ("real-key,demo-key", GOOD_KEY, "LOYALTY_API_KEYS"),
        ("real-key", "change-me", "LOYALTY_PSEUDONYM_KEY"),
        ("real-key", "k" * (MIN_PSEUDONYM_KEY_BYTES - 1), "LOYALTY_PSEUDONYM_KEY"),
    ],
)
def test_production_refuses_the_demo_secrets(keys, pseudonym, names):
    with pytest.raises(ValueError) as err:
        Settings(profile=Profile.production, api_keys=keys, pseudonym_key=pseudonym)
    assert names in settings_error(err.value) and "production profile refuses" in settings_error(err.value)
    # the embedded default keeps working with the demo's values
    assert Settings(profile=Profile.embedded, api_keys=keys, pseudonym_key=pseudonym).api_keys == keys


@pytest.mark.unit
def test_secrets_come_from_files_and_an_unreadable_one_is_named(tmp_path, monkeypatch):
    (tmp_path / "keys").write_text("key-a,key-b\n")
    (tmp_path / "pseudonym").write_text(GOOD_KEY + "\n")
    monkeypatch.setenv("LOYALTY_API_KEYS_FILE", str(tmp_path / "keys"))
    monkeypatch.setenv("LOYALTY_PSEUDONYM_KEY_FILE", str(tmp_path / "pseudonym"))
    monkeypatch.setenv("LOYALTY_API_KEYS", "demo-key")  # the file wins over the variable
    s = Settings(profile=Profile.production)
    assert s.api_keys == "key-a,key-b" and s.pseudonym_key == GOOD_KEY
    assert "LOYALTY_API_KEYS" not in s.to_env() and "LOYALTY_PSEUDONYM_KEY" not in s.to_env()  # no copies in env
    monkeypatch.setenv("LOYALTY_PSEUDONYM_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="LOYALTY_PSEUDONYM_KEY_FILE: cannot read"):
        Settings()


def _cli(tmp_path, *args, env=None):
    return CliRunner().invoke(app, ["--data-dir", str(tmp_path), *args], env=env)


@pytest.mark.unit
def test_cli_refuses_unsafe_production_settings_in_one_line(tmp_path):
    res = _cli(tmp_path, "models", "list", env={"LOYALTY_PROFILE": "production", "LOYALTY_API_KEYS": "demo-key"})
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and "LOYALTY_API_KEYS" in res.output and "Traceback" not in res.output
    res = _cli(tmp_path, "--dataset", "Shop-A", "models", "list")
    assert res.exit_code == 2 and "setting dataset" in res.output and "[a-z0-9_]+" in res.output
    res = _cli(tmp_path, "models", "list", env={"LOYALTY_DASK_WORKER_MEMORY": "lots"})  # not a size
    assert res.exit_code == 2 and "setting dask_worker_memory" in res.output and res.output.count("\n") == 1


@pytest.mark.unit
@pytest.mark.parametrize(
    "args",
    [("models", "list"), ("models", "history"), ("features", "show"), ("evaluate", "policy"), ("score-churn",)],
)
def test_read_only_commands_reject_an_unknown_dataset_and_create_nothing(tmp_path, args):
    res = _cli(tmp_path / "data", "--dataset", "foo", *args)
    assert res.exit_code == 2, res.output
    assert "dataset 'foo' not found" in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "data").exists()  # no data dir, no MLflow database, no experiment


def test_the_service_refuses_to_start_with_the_demo_secrets_in_production(tmp_path):
    env = {"LOYALTY_PROFILE": "production", "LOYALTY_DATA_DIR": str(tmp_path), "LOYALTY_API_KEYS": "demo-key"}
    proc = subprocess.run(
        [sys.executable, "-m", "bentoml", "serve", "serving.service:LoyaltyDecisionService", "--port", "0"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2
    assert "refusing to start" in proc.stderr and "LOYALTY_API_KEYS" in proc.stderr
