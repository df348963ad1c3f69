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


def test_a_demo_step_runs_in_its_own_process_with_the_demos_settings_and_stops_the_demo_where_it_fails(tmp_path, capfd):
    import pytest
    import typer

    from cli.main import _own_process
    from kernel.settings import Settings

    settings = Settings(dataset="simulated", data_dir=tmp_path / "elsewhere")  # not what the environment says
    with pytest.raises(typer.Exit) as stopped:
        _own_process(settings, "data", "validate")  # nothing simulated there: the step exits 2
    out = capfd.readouterr().out
    assert stopped.value.exit_code == 2
    assert str(tmp_path / "elsewhere" / "simulated") in out  # the child saw the demo's settings
    assert "stopped: `loyalty-ml data validate` exited 2" in out
