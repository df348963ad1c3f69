"""The floor's endpoint: a BentoML service that does nothing, same BentoML, one worker
(``HELLO_WORKERS=2``: two, the machine's own scaling ceiling for the workers ratio).

bentoml serve bench.hello_service:Hello --port 3100
"""

from __future__ import annotations

import os

import bentoml


@bentoml.service(name="hello", workers=int(os.environ.get("HELLO_WORKERS", "1")), threads=8)
class Hello:
    @bentoml.api
    def hello(self, member_id: str = "M0") -> dict:
        return {"member_id": member_id, "degraded": False}
