"""Serving against its floor, measured in one run from outside the service (open loop).

    loyalty-ml demo                      # once: data, features, models
    python bench/serve_bench.py [--rates 10 25 50 100 150 200 300] [--seconds 20]

1. In-process floors: the Feast online read of the served features with the feature references
   resolved once (as the service does), and the numpy predict of each endpoint's served model.
2. A hello-world BentoML endpoint (same BentoML, one worker), driven by ``bench/open_loop.py``
   in its own process at fixed rates: p50 and the highest rate with p99 < 100 ms and no failure.
3. The decision service, one worker: each endpoint's p50 at a low rate against its floor
   (hello p50 + feature read p50 + model predict p50); ``next_best_offer`` at rising rates.
4. The same with ``LOYALTY_SERVING_WORKERS=2``.

A failure is an error, a status other than 200 (a shed 503 included) or a ``degraded`` answer.
Last line: ``SUMMARY serve_bench nbo_p50_over_floor=A nbo_rate_over_hello=B
workers2_over_workers1=C degraded=D``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from serving.launch import ServerProcess, free_port

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
ENDPOINTS = {  # endpoint -> (request body for a member, the served model whose predict is its floor)
    "/next_best_offer": (lambda m: {"member_id": m}, "uplift"),
    "/churn_risk": (lambda m: {"member_id": m}, "churn"),
    "/recommendations": (lambda m: {"member_id": m, "k": 10}, "cf"),
    "/personalized_benefits": (lambda m: {"member_id": m}, "cf"),
}


def _p50(fn, members: list[str], n: int = 400) -> float:
    for m in members[:10]:
        fn(m)
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(members[i % len(members)])
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50))


def floors(settings, members: list[str]) -> dict[str, float]:
    """p50 ms of the cached Feast read and of each served model's numpy predict, in process."""
    from features.store import get_store, serving_feature_refs, serving_rows
    from kernel.curated import load_curated
    from kernel.model_store import load_champions
    from models.uplift import PairEncoder

    store = get_store(settings, serving=True)
    refs = serving_feature_refs(store)
    ts = int(time.time())
    rows = {m: serving_rows(store, [m], ts, refs)[0] for m in members}
    models = load_champions(settings, ("uplift", "churn", "cf")).models
    encoder = PairEncoder(models["uplift"].features_, load_curated(settings, "offers"))
    churn = models["churn"]
    return {
        "read": _p50(
            lambda m: store.get_online_features(features=refs, entity_rows=[{"member_id": m}]).to_dict(), members
        ),
        "uplift": _p50(lambda m: models["uplift"].predict_matrix(encoder.encode(rows[m])), members),
        "churn": _p50(
            lambda m: churn.predict_raw_matrix(
                churn.features_.encode({c: [rows[m].get(c)] for c in churn.features_.columns_}, 1)
            ),
            members,
        ),
        "cf": _p50(lambda m: models["cf"].recommend([m], k=10), members),
    }


def load(url: str, path: str, rate: float, seconds: float, bodies: Path) -> dict:
    """One open-loop run from a separate generator process."""
    cmd = [sys.executable, str(ROOT / "bench" / "open_loop.py"), "--url", url, "--path", path]
    cmd += ["--rate", str(rate), "--seconds", str(seconds), "--bodies", str(bodies), "--key", KEY]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 120)
    return json.loads(out.stdout)


def passes(r: dict) -> bool:
    return r["errors"] == 0 and r["degraded"] == 0 and r["p99_ms"] < 100


def sweep(url: str, path: str, rates: list[float], seconds: float, bodies: Path, label: str) -> tuple[float, list]:
    """Rising rates until one fails; the highest passing rate and every run."""
    runs, best = [], 0.0
    for rate in rates:
        r = load(url, path, rate, seconds, bodies)
        runs.append(r)
        print(
            f"  {label:>12} {path:<24} {rate:>6.0f}/s  p50 {r['p50_ms']:6.1f}  p99 {r['p99_ms']:7.1f} ms  "
            f"ok {r['ok']}  degraded {r['degraded']}  errors {r['errors']} {r['outcomes']}",
            flush=True,
        )
        if not passes(r):
            break
        best = rate
    return best, runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--rates", type=float, nargs="+", default=[10, 25, 50, 100, 150, 200, 250, 300, 350, 400, 450, 500, 600]
    )
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--probe-rate", type=float, default=10)
    ap.add_argument("--members", type=int, default=200)
    args = ap.parse_args()

    from kernel.curated import load_curated
    from kernel.model_store import use_tracking_store
    from kernel.settings import Settings

    settings = Settings()
    use_tracking_store(settings)
    ids = load_curated(settings, "members")["member_id"]
    members = ids.sample(min(args.members, len(ids)), random_state=7).tolist()
    floor = floors(settings, members)
    print("in-process floors (p50 ms):", {k: round(v, 2) for k, v in floor.items()}, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    bodies = {}
    for path, (body, _) in ENDPOINTS.items():
        bodies[path] = tmp / f"{path.strip('/')}.json"
        bodies[path].write_text(json.dumps([body(m) for m in members]))
    hello_bodies = tmp / "hello.json"
    hello_bodies.write_text(json.dumps([{"member_id": m} for m in members]))

    hello_rates = {}
    for workers in (1, 2):
        port = free_port()
        hello = ServerProcess(
            [sys.executable, "-m", "bentoml", "serve", "bench.hello_service:Hello", "--port", str(port)],
            port,
            tmp / f"hello_w{workers}.log",
            ready_path="/readyz",
            env={"HELLO_WORKERS": str(workers)},
        )
        with hello:
            if workers == 1:
                hello_p50 = load(hello.url, "/hello", args.probe_rate, args.seconds / 2, hello_bodies)["p50_ms"]
            label = f"hello {workers}w"
            hello_rates[workers], _ = sweep(hello.url, "/hello", args.rates, args.seconds, hello_bodies, label)
    hello_rate = hello_rates[1]

    results, degraded = {}, 0
    for workers in (1, 2):
        env = {"LOYALTY_API_KEYS": KEY, "LOYALTY_SERVING_WORKERS": str(workers)}
        with ServerProcess.decision_service(tmp / f"service_w{workers}.log", env) as svc:
            if workers == 1:
                for path, (_, model) in ENDPOINTS.items():
                    r = load(svc.url, path, args.probe_rate, args.seconds / 2, bodies[path])
                    degraded += r["degraded"]
                    ep_floor = hello_p50 + floor["read"] + floor[model]
                    results[path] = {"p50": r["p50_ms"], "floor": ep_floor, "ratio": r["p50_ms"] / ep_floor}
                    print(
                        f"  {path:<24} p50 {r['p50_ms']:.1f} ms vs floor {ep_floor:.1f} ms "
                        f"({r['p50_ms'] / ep_floor:.2f}x); degraded {r['degraded']}, errors {r['errors']}",
                        flush=True,
                    )
            rate, runs = sweep(
                svc.url,
                "/next_best_offer",
                args.rates,
                args.seconds,
                bodies["/next_best_offer"],
                f"{workers} worker{'s' if workers > 1 else ''}",
            )
            degraded += sum(r["degraded"] for r in runs)
            results[f"nbo_rate_w{workers}"] = rate

    nbo = results["/next_best_offer"]
    print(
        f"hello-world: p50 {hello_p50:.1f} ms, highest passing rate 1 worker {hello_rate:.0f}/s, "
        f"2 workers {hello_rates[2]:.0f}/s"
    )
    for path in ENDPOINTS:
        r = results[path]
        print(f"{path:<24} p50 {r['p50']:.1f} ms, floor {r['floor']:.1f} ms, ratio {r['ratio']:.2f}")
    print(
        f"next_best_offer highest passing rate: 1 worker {results['nbo_rate_w1']:.0f}/s, "
        f"2 workers {results['nbo_rate_w2']:.0f}/s"
    )
    over_hello = results["nbo_rate_w1"] / hello_rate if hello_rate else float("nan")
    w2 = results["nbo_rate_w2"] / results["nbo_rate_w1"] if results["nbo_rate_w1"] else float("nan")
    # the same ratio for the endpoint that does nothing: what two workers can gain on this machine
    # at all, with the generator on the same cores
    hello_w2 = hello_rates[2] / hello_rate if hello_rate else float("nan")
    print(
        f"SUMMARY serve_bench nbo_p50_over_floor={nbo['ratio']:.2f} nbo_rate_over_hello={over_hello:.2f} "
        f"workers2_over_workers1={w2:.2f} hello_workers2_over_workers1={hello_w2:.2f} degraded={degraded} "
        + " ".join(f"{p.strip('/')}_p50_over_floor={results[p]['ratio']:.2f}" for p in list(ENDPOINTS)[1:])
    )


if __name__ == "__main__":
    main()
