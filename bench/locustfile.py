"""Locust user for bench/serve_bench.py: closed-loop next-best-offer calls for random members."""

import os
import random

from locust import HttpUser, task

MEMBERS = os.environ.get("BENCH_MEMBERS", "M0000001").split(",")
KEY = os.environ.get("BENCH_API_KEY", "demo-key")


class DecisionClient(HttpUser):
    wait_time = staticmethod(lambda: 0)  # closed loop: the next request as soon as the last returns

    @task
    def next_best_offer(self):
        self.client.post(
            "/next_best_offer",
            json={"member_id": random.choice(MEMBERS), "channel": "app"},
            headers={"X-API-Key": KEY},
            name="/next_best_offer",
        )
