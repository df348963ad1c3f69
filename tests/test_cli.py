import subprocess
import sys

import pandas as pd


def _cli(*args, env_dir):
    return subprocess.run(
        [sys.executable, "-m", "cli", "--data-dir", str(env_dir), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_validate_names_the_bad_field_and_exits_nonzero(settings, pipeline, tmp_path):
    raw = tmp_path / "simulated" / "raw"
    raw.mkdir(parents=True)
    for f in settings.raw_dir.glob("*.parquet"):
        df = pd.read_parquet(f)
        if f.stem == "transactions":
            df = df.drop(columns="amount")
        df.to_parquet(raw / f.name)
    out = _cli("data", "validate", env_dir=tmp_path)
    assert out.returncode == 2
    assert "transactions" in out.stdout and "amount" in out.stdout


def test_cli_features_show_reads_the_online_store(settings, pipeline):
    out = _cli("features", "show", "--n", "2", env_dir=settings.data_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "days_since_last_purchase" in out.stdout and "health_quadrant" in out.stdout
