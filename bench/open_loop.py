"""Open-loop load generator: requests leave at a fixed rate whatever the server does.

A closed loop (N users, each waiting for its answer) slows down with the server and hides
queueing; here request i is due at ``start + i / rate`` and its latency counts from that
moment, so a server that falls behind shows it in the tail. Runs as its own process (the
"outside generator"); prints one JSON object, with the generator's own CPU seconds, since on
a small machine it shares the cores with the server it measures.

    python bench/open_loop.py --url http://127.0.0.1:3000 --path /next_best_offer \\
        --rate 50 --seconds 20 --bodies bodies.json [--key KEY]

A request fails on a transport error, a status other than 200, or an answer flagged
``degraded`` (a default answer is not a success). The client is aiohttp (already a BentoML
dependency): at a few hundred requests per second it costs about a third of httpx's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

import aiohttp
import numpy as np


async def run(url: str, path: str, rate: float, seconds: float, bodies: list[dict], key: str | None) -> dict:
    n = int(rate * seconds)
    latencies: list[float] = []
    outcomes: Counter = Counter()
    headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
    payloads = [json.dumps(b).encode() for b in bodies]
    connector = aiohttp.TCPConnector(limit=2000)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector, timeout=timeout) as client:

        async def one(i: int, due: float) -> None:
            try:
                async with client.post(path, data=payloads[i % len(payloads)]) as res:
                    body = await res.read()
                    if res.status != 200:
                        outcomes[f"http_{res.status}"] += 1
                    elif _degraded(json.loads(body)):
                        outcomes["degraded"] += 1
                    else:
                        outcomes["ok"] += 1
            except (TimeoutError, aiohttp.ClientError) as err:
                outcomes[type(err).__name__] += 1
            latencies.append((time.perf_counter() - due) * 1000)

        cpu = time.process_time()
        start = time.perf_counter() + 0.2
        tasks = []
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        late = time.perf_counter() - (start + n / rate)
        cpu = time.process_time() - cpu
    lat = np.array(latencies)
    return {
        "path": path,
        "rate": rate,
        "seconds": seconds,
        "requests": n,
        "ok": outcomes["ok"],
        "degraded": outcomes["degraded"],
        "errors": n - outcomes["ok"] - outcomes["degraded"],
        "outcomes": dict(outcomes),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "drain_s": round(late, 2),
        "generator_cpu_per_request_ms": round(cpu / max(n, 1) * 1000, 3),
    }


def _degraded(doc) -> bool:
    items = doc if isinstance(doc, list) else [doc]
    return any(isinstance(d, dict) and d.get("degraded") for d in items)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--bodies", required=True, help="JSON file: a list of request bodies, used in turn")
    ap.add_argument("--key", default=None)
    args = ap.parse_args()
    with open(args.bodies) as f:
        bodies = json.load(f)
    print(json.dumps(asyncio.run(run(args.url, args.path, args.rate, args.seconds, bodies, args.key))))


if __name__ == "__main__":
    main()
