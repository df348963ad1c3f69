"""bench/scale_bench.py at a size the suite can afford: every step it names runs as its own
process, is timed and measured, and the summary compares the two sizes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["data", "validate", "features build", "features apply", "train fraud"]


def _bench():
    spec = importlib.util.spec_from_file_location("scale_bench", ROOT / "bench" / "scale_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _size(members: int, seconds: float, rss_gb: float, steps=("data", "train fraud")) -> dict:
    return {
        "members": members,
        "steps": {name: {"seconds": seconds, "peak_rss": rss_gb * 2**30, "rc": 0} for name in steps},
        "metrics": {},
    }


@pytest.mark.unit
def test_included_sizes_join_the_table_and_steps_measured_now_replace_theirs(tmp_path):
    bench = _bench()
    earlier = tmp_path / "m1.json"
    earlier.write_text(json.dumps({"sizes": [_size(1_000_000, 100.0, 4.0), _size(100_000, 50.0, 2.0)]}))
    sizes = bench.included([earlier])
    assert sorted(sizes) == [100_000, 1_000_000]
    rerun = _size(1_000_000, 30.0, 3.0, steps=("train fraud",))  # one step of 1M measured again
    both = bench.merged(sizes[1_000_000], rerun)
    assert both["steps"]["data"]["seconds"] == 100.0 and both["steps"]["train fraud"]["seconds"] == 30.0
    assert bench.totals(both) == (130.0, 4.0 * 2**30, 30.0)
    assert bench.common_steps([_size(10, 1, 1), _size(100, 1, 1, steps=("data",))]) == ["data"]
    assert [bench.size_name(n) for n in (1_000_000, 100_000, 500)] == ["m1", "k100", "n500"]
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="bad.json"):
        bench.included([bad])


def test_scale_bench_measures_every_step_at_two_sizes(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "bench/scale_bench.py", "--members", "500", "5000", "--data-dir", str(tmp_path)]
        + ["--json", str(out), "--steps", *STEPS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("SUMMARY scale_bench k5_wall_s="), summary
    values = dict(kv.split("=") for kv in summary.split()[2:])
    assert float(values["train_time_growth_10x"]) > 0
    sizes = {r["members"]: r for r in json.loads(out.read_text())["sizes"]}
    assert set(sizes) == {500, 5000}
    for r in sizes.values():
        assert list(r["steps"]) == STEPS
        for name, step in r["steps"].items():
            # a Python process with the project's imports is hundreds of MB: a sampler that missed
            # the process (or read the parent) would report far less
            assert step["rc"] == 0 and step["seconds"] > 0 and step["peak_rss"] > 100 * 2**20, (name, step)
        assert 0.0 <= r["metrics"]["fraud"] <= 1.0  # the holdout metric came from the job's MLflow run
    for name in STEPS:  # ten times the members, far less than ten times the memory
        assert sizes[5000]["steps"][name]["peak_rss"] < 3 * sizes[500]["steps"][name]["peak_rss"], name


@pytest.mark.unit
def test_a_second_engine_is_compared_on_the_steps_it_ran_and_kept_out_of_the_sizes_totals():
    bench = _bench()
    size = _size(1_000_000, 100.0, 4.0, steps=("data", "features build", "score churn"))
    size["steps"] |= {
        "features build [dask]": {"seconds": 80.0, "peak_rss": 6.0 * 2**30, "rc": 0},
        "score churn [dask]": {"seconds": 140.0, "peak_rss": 5.0 * 2**30, "rc": 0},
    }
    ratio = bench.engine_ratio(size, ["features build [dask]", "score churn [dask]"])
    assert ratio == {"dask_over_local_wall": "1.10", "dask_peak_rss_gb": "6.00"}  # 220 s over 200 s
    assert bench.engine_ratio(size, ["train churn [dask]"]) == {}  # no in-process row to compare with
