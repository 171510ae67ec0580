"""Locust users of the control-plane benchmark (``benchmarks/api.py`` runs this file).

Each user is a dashboard or a probe: it asks ``/readyz`` and the pipeline's status route,
one request every ``C2PG_BENCH_WAIT`` seconds ("0.5-1.5": uniform between; "0": no pause).
The bearer token and the pipeline come from ``C2PG_BENCH_TOKEN`` and ``C2PG_BENCH_PIPELINE``.
"""

from __future__ import annotations

import os

from locust import HttpUser, between, constant, task

_low, _, _high = os.environ.get("C2PG_BENCH_WAIT", "0.5-1.5").partition("-")


class ControlPlaneUser(HttpUser):
    wait_time = between(float(_low), float(_high)) if _high else constant(float(_low))

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {os.environ['C2PG_BENCH_TOKEN']}"
        self.status_path = f"/v1/pipelines/{os.environ['C2PG_BENCH_PIPELINE']}/status"

    @task
    def readyz(self) -> None:
        # A 503 is an error of the run; its message names the components that failed and
        # why, so the error report says what made the control plane unready.
        with self.client.get("/readyz", name="readyz", catch_response=True) as response:
            if response.status_code == 503:
                try:
                    body = response.json()
                    why = "; ".join(f"{c['name']}: {c.get('error')}" for c in body.get("components", [])
                                    if c.get("name") in body.get("failed", []))
                except ValueError:
                    why = response.text[:200]
                response.failure(f"503 not ready: {why}")

    @task
    def status(self) -> None:
        self.client.get(self.status_path, name="status")
