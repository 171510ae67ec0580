"""The pieces that keep the control plane's cost independent of its size (issue #18),
without servers: answers rendered once (:class:`serve_app.control.Rendered`) and sent gzipped
or plain by content negotiation, and a check that hangs is never started twice
(:class:`engine.health.SingleFlight`). Against the real stack:
``tests/integration/test_control_plane_size.py``."""

from __future__ import annotations

import gzip
import json
import threading
import time

import pytest
from starlette.testclient import TestClient

from engine.health import SingleFlight, run_checks
from serve_app.api import create_api
from serve_app.control import GZIP_FROM_BYTES, Rendered

TOKEN = "t0ken"


class _Cfg:
    name = "unit"


class _Rendering:
    """A backend whose caches are warm: it answers with what a refresh rendered."""

    cfg = _Cfg()

    def __init__(self, status: dict, ready: dict):
        self.rendered_status = Rendered.of(status)
        self.rendered_ready = Rendered.of(ready, 200 if ready["ready"] else 503)

    def readiness_cached(self):
        return self.rendered_ready

    def status_cached(self, name):
        return self.rendered_status


def _status(tables: int) -> dict:
    return {"pipeline": "unit", "tables": [{"table": f"ks.t{i:04d}", "partitions": [{"partition": p, "lag": 0}
                                                                                   for p in range(3)]}
                                           for i in range(tables)]}


def test_rendered_is_the_compact_json_and_its_gzip_only_when_long():
    small = Rendered.of({"ready": True})
    assert small.body == b'{"ready":true}' and small.gzipped == b"" and small.status == 200
    big = Rendered.of(_status(200))
    assert len(big.body) > GZIP_FROM_BYTES
    assert gzip.decompress(big.gzipped) == big.body
    assert json.loads(big.body) == _status(200)
    assert Rendered.of(_status(200)).gzipped == big.gzipped  # the same answer, the same bytes


@pytest.mark.parametrize("tables", [1, 200])
def test_routes_send_the_rendered_bytes_gzipped_or_plain(tables):
    ready = {"ready": False, "failed": ["kafka"], "components": [{"name": "kafka", "detail": "x" * 2000}]}
    backend = _Rendering(_status(tables), ready)
    client = TestClient(create_api(backend, token=TOKEN, rate_limit_per_minute=1000))
    auth = {"Authorization": f"Bearer {TOKEN}"}

    plain = client.get("/v1/pipelines/unit/status", headers={**auth, "Accept-Encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert plain.content == backend.rendered_status.body
    zipped = client.get("/v1/pipelines/unit/status", headers={**auth, "Accept-Encoding": "gzip, deflate"})
    assert zipped.json() == _status(tables)  # the client decompressed it
    if backend.rendered_status.gzipped:
        assert zipped.headers["content-encoding"] == "gzip" and zipped.headers["vary"] == "Accept-Encoding"

    r = client.get("/readyz", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 503 and r.headers["content-encoding"] == "gzip" and r.json() == ready
    assert client.get("/healthz").json() == {"status": "alive"}


def test_a_hung_check_is_not_started_again_and_the_others_still_answer():
    entered, release = threading.Event(), threading.Event()
    calls = []

    def hangs():
        calls.append(1)
        entered.set()
        release.wait(30)
        return "answered late"

    hung = SingleFlight("postgres", hangs)
    checks = {"postgres": hung, "vault": SingleFlight("vault", lambda: "version 2")}
    try:
        first = {r.name: r for r in run_checks(checks, timeout_s=0.2)}
        assert entered.is_set()
        assert first["postgres"].ok is False and "timed out" in first["postgres"].error
        assert first["vault"].ok is True
        second = {r.name: r for r in run_checks(checks, timeout_s=0.2)}
        assert "previous check has not returned" in second["postgres"].error
        assert second["vault"].ok is True
        assert len(calls) == 1  # one thread hangs, however many rounds ask
    finally:
        release.set()
    # once it returned, the next round runs it again
    deadline = time.monotonic() + 10
    while True:
        third = {r.name: r for r in run_checks(checks, timeout_s=1.0)}
        if third["postgres"].ok or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert third["postgres"].ok and len(calls) == 2
