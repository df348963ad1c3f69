"""Wall time and peak memory of every step of the main job, at growing programme sizes.

    python bench/scale_bench.py [--members 10000 100000 1000000] [--data-dir DIR] [--engine local [dask]]
                                [--json OUT] [--include EARLIER.json ...]

Each step runs as its own ``loyalty-ml`` process on the embedded default (simulate, validate,
features build, apply, materialize, each training job, then the churn scores of every member),
so its peak RSS is its own: the largest resident set of the process tree, sampled every 0.2 s,
and never below the kernel's ``ru_maxrss`` of the step's main process. Holdout metrics come
from the runs the jobs logged.

Prints a table per size and, last,
``SUMMARY scale_bench m1_wall_s=A m1_peak_rss_gb=B train_time_growth_10x=C ...``: the wall time
and peak RSS of the largest size (named ``m1`` when it is 1M members) and the training time at
the largest size over the size ten times smaller (where both ran). ``--include`` adds the sizes an
earlier run wrote with ``--json`` (a million members takes an hour: the smaller sizes need not
wait for it, nor it for them); steps measured now replace the included ones of the same size
(``--steps``: rerun some steps of a size and keep the others). ``--steps demo`` times
``loyalty-ml demo --members N`` instead: the whole main job as one command, serving included.
``--engine local dask`` runs the steps that take an engine (feature build, churn training, the
churn list) on each, one after the other on the same world: the Dask rows are named
``STEP [dask]`` and the summary adds ``dask_over_local_wall`` (their time over the same steps'
in process) and ``dask_peak_rss_gb``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
JOBS = ("cf", "churn", "clv", "uplift", "fraud")
ENGINE_STEPS = ("features build", "train churn", "score churn")  # the steps that take --engine
PRIMARY = {"cf": "ndcg_at_10", "churn": "roc_auc", "clv": "spearman", "uplift": "qini", "fraud": "recall"}


def cli() -> list[str]:
    exe = Path(sys.executable).with_name("loyalty-ml")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cli.main"]


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants (Dask workers, joblib pools)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # ended between listing and reading
            pass
    return total


def run_step(args: list[str], env: dict, log: Path) -> dict:
    """One ``loyalty-ml`` call: seconds, peak RSS in bytes, exit code."""
    started = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen([*cli(), *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        peak, done = 0, threading.Event()

        def sample() -> None:
            nonlocal peak
            watched = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    peak = max(peak, tree_rss(watched))
                except psutil.Error:
                    return
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss": max(peak, usage.ru_maxrss * 1024),  # ru_maxrss: KiB on Linux
        "rc": proc.returncode,
    }


def holdout_metrics(data_dir: Path) -> dict[str, float]:
    """Each job's primary holdout metric from its latest MLflow run."""
    import mlflow

    os.environ["LOYALTY_DATA_DIR"] = str(data_dir)
    from kernel.settings import Settings

    settings = Settings(dataset="simulated", data_dir=data_dir)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    out = {}
    for job in JOBS:
        runs = mlflow.search_runs(
            experiment_names=[settings.experiment_name],
            filter_string=f"tags.job = '{job}'",
            order_by=["start_time DESC"],
            max_results=1,
        )
        col = f"metrics.{PRIMARY[job]}"
        if len(runs) and col in runs and runs[col].notna().any():
            out[job] = float(runs[col].iloc[0])
    return out


def run_size(
    members: int, data_dir: Path, engine: str, log: Path, only: list[str] | None = None, apart: bool = False
) -> dict:
    """Every step (or ``only`` these) at one size; ``apart``: a second engine, whose steps
    (those it changes) are named ``STEP [engine]``."""
    env = os.environ | {"LOYALTY_DATA_DIR": str(data_dir), "LOYALTY_DATASET": "simulated"}
    steps = [
        ("data", ["data", "simulate", "--members", str(members)]),
        ("validate", ["data", "validate"]),
        ("features build", ["features", "build"]),
        ("features apply", ["features", "apply"]),
        ("materialize", ["features", "materialize"]),
        *[(f"train {job}", ["train", job]) for job in JOBS],
        # batch scoring of every member with the champion (the CRM list), on the chosen engine
        ("score churn", ["score-churn", "--out", str(data_dir / "churn_scores.parquet")]),
    ]
    steps = [(name, [*args, "--engine", engine] if name in ENGINE_STEPS else args) for name, args in steps]
    if only and "demo" in only:  # the main job as the one command a user runs (its steps in child processes)
        steps.append(("demo", ["demo", "--members", str(members)]))
    if only:
        steps = [(name, args) for name, args in steps if name in only]
    if apart:
        steps = [(f"{name} [{engine}]", args) for name, args in steps if name in ENGINE_STEPS]
    rows = {}
    for name, args in steps:
        row = run_step(args, env, log)
        rows[name] = row
        print(f"  {members:>9,} {name:<22} {row['seconds']:8.1f} s {row['peak_rss'] / 2**30:6.2f} GB rc={row['rc']}")
        if row["rc"] != 0:
            raise SystemExit(f"step {name!r} at {members} members failed (exit {row['rc']}); see {log}")
    trained = any(name.startswith("train ") or name == "demo" for name in rows)
    return {"members": members, "steps": rows, "metrics": holdout_metrics(data_dir) if trained else {}}


def bytes_per_member(results: list[dict]) -> dict[str, list[float]]:
    """Per step, the peak memory each added member costs between consecutive sizes."""
    out = {}
    for name in common_steps(results):
        out[name] = [
            (b["steps"][name]["peak_rss"] - a["steps"][name]["peak_rss"]) / (b["members"] - a["members"])
            for a, b in zip(results, results[1:], strict=False)
        ]
    return out


def common_steps(results: list[dict]) -> list[str]:
    """The steps every size ran, in the order of the first."""
    return [name for name in results[0]["steps"] if all(name in r["steps"] for r in results)]


def totals(result: dict, names: list[str] | None = None) -> tuple[float, float, float]:
    """Wall seconds, peak RSS and training seconds of a size's steps (``names``: only these)."""
    steps = {n: s for n, s in result["steps"].items() if names is None or n in names}
    wall = sum(s["seconds"] for s in steps.values())
    train = sum(s["seconds"] for n, s in steps.items() if n.startswith("train "))
    return wall, max(s["peak_rss"] for s in steps.values()), train


def engine_ratio(result: dict, engine_rows: list[str]) -> dict[str, str]:
    """Another engine's time over the same steps' in process, and its peak (the process tree:
    client, scheduler and workers), where a size ran both."""
    pairs = [(row, row.rsplit(" [", 1)[0]) for row in engine_rows if row.rsplit(" [", 1)[0] in result["steps"]]
    if not pairs:
        return {}
    engine = pairs[0][0].rsplit(" [", 1)[1].rstrip("]")
    other = sum(result["steps"][row]["seconds"] for row, _ in pairs)
    local = sum(result["steps"][name]["seconds"] for _, name in pairs)
    peak = max(result["steps"][row]["peak_rss"] for row, _ in pairs)
    return {f"{engine}_over_local_wall": f"{other / local:.2f}", f"{engine}_peak_rss_gb": f"{peak / 2**30:.2f}"}


def size_name(members: int) -> str:
    if members % 1_000_000 == 0:
        return f"m{members // 1_000_000}"
    return f"k{members // 1000}" if members % 1000 == 0 else f"n{members}"


def included(paths: list[Path]) -> dict[int, dict]:
    """The sizes earlier runs measured (their ``--json`` files), by member count; a later file's
    steps replace an earlier one's."""
    out: dict[int, dict] = {}
    for path in paths:
        try:
            sizes = json.loads(path.read_text())["sizes"]
        except (OSError, ValueError, KeyError) as err:
            raise SystemExit(f"--include {path}: not a scale_bench --json file ({err})") from None
        for r in sizes:
            out[r["members"]] = merged(out.get(r["members"]), r)
    return out


def merged(earlier: dict | None, now: dict) -> dict:
    """``now``'s steps over ``earlier``'s (same size); metrics from ``now`` where it trained."""
    if earlier is None:
        return now
    return {
        "members": now["members"],
        "steps": earlier["steps"] | now["steps"],
        "metrics": earlier["metrics"] | now["metrics"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a temporary directory per size")
    ap.add_argument(
        "--engine",
        nargs="+",
        default=["local"],
        choices=["local", "dask"],
        help="local and/or dask for the steps that run on it (a LocalCluster unless LOYALTY_DASK_SCHEDULER)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    ap.add_argument("--steps", nargs="+", default=None, help="only these steps (names as in the table)")
    ap.add_argument("--include", type=Path, nargs="+", default=[], help="sizes measured by earlier --json runs")
    args = ap.parse_args()
    if len(set(args.engine)) != len(args.engine) or args.engine[0] != "local" and len(args.engine) > 1:
        ap.error("--engine: one engine, or local then dask (the second is compared with the first)")

    earlier = included(args.include)
    results = []
    for members in sorted(args.members):
        base = args.data_dir or Path(tempfile.mkdtemp(prefix="loyalty-scale-"))
        data_dir = base / f"members-{members}"
        if args.steps is None or {"data", "demo"} & set(args.steps):  # a new world; others reuse the one there
            shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        log = data_dir.parent / f"scale-{members}.log"
        print(f"{members:,} members (log {log})", flush=True)
        size = None
        for engine in args.engine:
            apart = engine != args.engine[0]
            size = merged(size, run_size(members, data_dir, engine, log, args.steps, apart))
        results.append(size)
        if args.data_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    for r in results:
        earlier[r["members"]] = merged(earlier.get(r["members"]), r)
    results = sorted(earlier.values(), key=lambda r: r["members"])

    print(f"\n{'step':<23}" + "".join(f"{r['members']:>22,}" for r in results))
    for name in common_steps(results):
        cells = "".join(
            f"{r['steps'][name]['seconds']:>11.0f} s {r['steps'][name]['peak_rss'] / 2**30:>6.2f} GB" for r in results
        )
        print(f"{name:<23}{cells}")
    for job in JOBS:
        print(
            f"{job + ' ' + PRIMARY[job]:<28}"
            + "".join(f"{r['metrics'].get(job, float('nan')):>10.4f}" for r in results)
        )
    per_member = bytes_per_member(results) if len(results) > 1 else {}
    for name, values in per_member.items():
        print(f"{name + ' bytes/member':<28}" + "".join(f"{v:>10.0f}" for v in values))
    if args.json:
        args.json.write_text(json.dumps({"sizes": results, "bytes_per_member": per_member}, indent=2))

    largest = results[-1]
    engine_rows = [n for n in largest["steps"] if n.endswith("]")]
    wall, rss, train = totals(largest, [n for n in largest["steps"] if n not in engine_rows])
    summary = {
        f"{size_name(largest['members'])}_wall_s": f"{wall:.0f}",
        f"{size_name(largest['members'])}_peak_rss_gb": f"{rss / 2**30:.2f}",
    }
    tenth = [r for r in results if r["members"] * 10 == largest["members"]]
    if tenth:  # over the steps both sizes ran
        names = common_steps([tenth[0], largest])
        (wall_l, rss_l, train_l), (wall_t, rss_t, train_t) = totals(largest, names), totals(tenth[0], names)
        if train_l and train_t:  # only where both sizes trained
            summary["train_time_growth_10x"] = f"{train_l / train_t:.2f}"
        summary["wall_growth_10x"] = f"{wall_l / wall_t:.2f}"
        summary["rss_growth_10x"] = f"{rss_l / rss_t:.2f}"
    if engine_rows:
        summary |= engine_ratio(largest, engine_rows)
    print("SUMMARY scale_bench " + " ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
