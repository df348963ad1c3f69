"""Serving latency and throughput, measured in one run against the trained demo store.

    loyalty-ml demo                      # once: data, features, models
    python bench/serve_bench.py [--users 1 4 16 32] [--seconds 20]

1. Floor: bare Feast online read (``member_online_v1``) + bare uplift-model predict for
   every offer, in process, for one member at a time: p50/p99.
2. The ``/next_best_offer`` endpoint of ``bentoml serve`` under locust (headless, closed
   loop) at increasing concurrency: p50/p99, throughput, errors; ratio endpoint p99 / floor p99.
3. Batch scoring (the ``score-batch`` code path) rows/s vs bare LightGBM predict rows/s on
   the same (member, offer) rows.
Prints a table and a one-line summary.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from serving.launch import ServerProcess

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]


def _pct(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def floor(settings, member_ids: list[str], n: int = 300) -> tuple[float, float]:
    """Bare Feast online read of the service's features + the uplift model over every offer."""

    from features.store import get_store, serving_feature_refs
    from kernel.curated import load_curated
    from kernel.model_store import load_estimator, use_tracking_store
    from models.uplift import pair_features

    use_tracking_store(settings)
    store = get_store(settings)
    refs = serving_feature_refs(store)
    offers = load_curated(settings, "offers")
    model = load_estimator(settings.model_name("uplift"), "champion")

    def once(m: str) -> None:
        feats = store.get_online_features(features=refs, entity_rows=[{"member_id": m}]).to_df()
        model.predict(pair_features(feats, offers))

    for m in member_ids[:5]:  # warm-up
        once(m)
    times = []
    for i in range(n):
        t = time.perf_counter()
        once(member_ids[i % len(member_ids)])
        times.append((time.perf_counter() - t) * 1000)
    return _pct(times)


def run_locust(url: str, users: int, seconds: int, members: list[str], key: str, out: Path) -> dict:
    env = {**os.environ, "BENCH_MEMBERS": ",".join(members), "BENCH_API_KEY": key}
    prefix = out / f"u{users}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "bench" / "locustfile.py"),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            f"{seconds}s",
            "--host",
            url,
            "--csv",
            str(prefix),
            "--only-summary",
        ],
        env=env,
        capture_output=True,
        check=True,
        timeout=seconds + 60,
    )
    with open(f"{prefix}_stats.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "/next_best_offer")
    return {
        "users": users,
        "requests": int(row["Request Count"]),
        "errors": int(row["Failure Count"]),
        "rps": float(row["Requests/s"]),
        "p50_ms": float(row["50%"]),
        "p99_ms": float(row["99%"]),
    }


def batch_throughput(settings, member_ids: list[str]) -> tuple[float, float]:
    from models.uplift import pair_features
    from serving.runtime import DecisionRuntime

    runtime = DecisionRuntime(settings)
    t = time.perf_counter()
    pairs, _ = runtime.score_batch(member_ids, None)
    ours = len(pairs) / (time.perf_counter() - t)
    from features.store import online_features

    feats = online_features(runtime.store, member_ids, runtime.now(None))
    feats = feats[feats["tier"].notna()]
    model = runtime.models["uplift"]
    M = model.features_.transform(pair_features(feats, runtime.offers))
    t = time.perf_counter()
    model.treated_model_.predict_proba(M)
    model.control_model_.predict_proba(M)
    bare = len(M) / (time.perf_counter() - t)
    return ours, bare


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--batch-members", type=int, default=2000)
    args = ap.parse_args()

    from kernel.curated import load_curated
    from kernel.settings import Settings

    settings = Settings()
    members = load_curated(settings, "members")["member_id"].tolist()
    rng = np.random.default_rng(7)
    sample = rng.choice(members, size=min(500, len(members)), replace=False).tolist()

    f50, f99 = floor(settings, sample)
    key = "bench-key"
    log = Path(tempfile.gettempdir()) / "serve_bench_service.log"
    with ServerProcess.decision_service(log, {"LOYALTY_API_KEYS": key}) as svc:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for users in args.users:
                rows.append(run_locust(svc.url, users, args.seconds, sample, key, Path(tmp)))
    ours, bare = batch_throughput(
        settings, sample[: args.batch_members] if len(sample) >= args.batch_members else members[: args.batch_members]
    )
    print(f"floor (bare Feast read + bare model predict, in process): p50 {f50:.1f} ms, p99 {f99:.1f} ms")
    print(f"{'users':>5} {'requests':>9} {'errors':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99/floor':>9}")
    for r in rows:
        print(
            f"{r['users']:>5} {r['requests']:>9} {r['errors']:>6} {r['rps']:>7.1f} {r['p50_ms']:>7.0f} "
            f"{r['p99_ms']:>7.0f} {r['p99_ms'] / f99:>9.2f}"
        )
    print(
        f"batch scoring: {ours:,.0f} (member, offer) rows/s vs bare LightGBM predict {bare:,.0f} rows/s "
        f"(ratio {ours / bare:.3f})"
    )
    ok = [r for r in rows if r["errors"] == 0 and r["p99_ms"] < 100]
    best = max(ok, key=lambda r: r["rps"]) if ok else None
    top = max(rows, key=lambda r: r["rps"])
    print(
        f"SUMMARY serve_bench: floor p99 {f99:.1f} ms; "
        + (
            f"highest rate with p99<100ms and 0 errors: {best['rps']:.0f} req/s at {best['users']} users "
            f"(p99 {best['p99_ms']:.0f} ms = {best['p99_ms'] / f99:.1f}x floor); "
            if best
            else "no level held p99<100ms; "
        )
        + f"peak {top['rps']:.0f} req/s (p99 {top['p99_ms']:.0f} ms, errors {top['errors']}); "
        + f"batch/bare predict throughput {ours / bare:.3f}"
    )


if __name__ == "__main__":
    main()
