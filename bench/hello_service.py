"""The floor's endpoint: a BentoML service that does nothing, same BentoML, one worker.

bentoml serve bench.hello_service:Hello --port 3100
"""

from __future__ import annotations

import bentoml


@bentoml.service(name="hello", workers=1, threads=8)
class Hello:
    @bentoml.api
    def hello(self, member_id: str = "M0") -> dict:
        return {"member_id": member_id, "degraded": False}
