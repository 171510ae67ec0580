"""/readyz against real outages: each required component of the stack is stopped in turn;
readiness turns 503 naming it, and 200 again once it is back.

This module STOPS stack services. Run it alone, under the exclusive stack lock, so no other
test uses the stack meanwhile:

    flock -x /tmp/c2pg-stack.lock .venv/bin/python -m pytest tests/integration/test_serve_readyz.py

Every stopped service is started again in a ``finally`` (``Stack.up()`` of the whole stack,
which also restarts the Debezium connector if it died with Cassandra or Kafka).
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from engine import cql
from tests.integration.serve_helpers import Api, pipeline_file, serve_app_running

# Deploys the control plane: runs with the other serve modules, in one process, on one Serve instance.
# exclusive: it stops and restarts servers every test uses.
pytestmark = [pytest.mark.serve, pytest.mark.exclusive]

# stack service → the component /readyz reports
OUTAGES = [("postgres", "postgres"), ("kafka", "kafka"), ("cassandra", "cassandra"),
           ("registry", "schema_registry"), ("vault", "vault")]


@pytest.fixture(scope="module")
def api(stack, serve_instance, tmp_path_factory):
    name = f"serve-readyz-{uuid.uuid4().hex[:8]}"
    path = pipeline_file(tmp_path_factory.mktemp("serve-readyz"), name, [f"t_{uuid.uuid4().hex[:8]}"],
                         api={"health_cache": "0s", "check_timeout": "2s"})
    with serve_app_running(path) as app:
        yield app


def _readyz(api: Api) -> tuple[int, dict]:
    r = requests.get(api.url("/readyz"), timeout=30)
    return r.status_code, r.json()


def _wait_readyz(api: Api, done, timeout_s: float) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        code, body = _readyz(api)
        if done(code, body):
            return code, body
        assert time.monotonic() < deadline, f"/readyz not as expected after {timeout_s}s: {code} {body}"
        time.sleep(0.25)  # /readyz answers from a cache refreshed every second or so


def test_readyz_is_200_with_every_component_checked(api: Api):
    _, body = _wait_readyz(api, lambda c, b: c == 200, 120)
    assert body["ready"] is True and body["failed"] == []
    names = {c["name"] for c in body["components"]}
    assert names == {"postgres", "cassandra", "kafka", "schema_registry", "vault", "capture", "sync"}
    for c in body["components"]:
        assert set(c) >= {"name", "status", "latency_ms", "error", "required"}
        if c["required"]:
            assert c["status"] == "up" and c["latency_ms"] > 0 and c["error"] is None
    sync = next(c for c in body["components"] if c["name"] == "sync")
    assert sync["required"] is False and "no sync supervisor" in sync["error"]  # reported, not required


@pytest.mark.parametrize(("service", "component"), OUTAGES, ids=[s for s, _ in OUTAGES])
def test_readyz_names_a_stopped_component_and_recovers(stack, pipeline, api: Api, service: str, component: str):
    _wait_readyz(api, lambda c, b: c == 200, 180)
    # A long-lived idle session, as the sync supervisor and workers hold: it must work again,
    # first query included, within RECOVERY_BOUND_S of the node's return (the driver's
    # defaults failed its first query, then waited up to minutes).
    cluster, session = cql.connect(pipeline.cassandra, metadata=False)
    try:
        stack.down([service], on_event=lambda m: None)
        _, body = _wait_readyz(api, lambda c, b: c == 503 and component in b["failed"], 60)
        assert body["ready"] is False
        assert body["failed"] == [component], body["failed"]  # only the stopped one is down
        down = next(c for c in body["components"] if c["name"] == component)
        assert down["status"] == "down" and down["error"]
        assert "Traceback" not in down["error"]
    finally:
        stack.up(on_event=lambda m: None)
        back_at = time.monotonic()
    _, body = _wait_readyz(api, lambda c, b: c == 200, 180)
    assert body["ready"] is True and body["failed"] == []
    try:
        if service == "cassandra":
            # Sessions that live across tests (the other test process's module fixtures, its
            # sync pipelines) are whole again within RECOVERY_BOUND_S: keep the exclusive
            # turn until then, so none meets NoHostAvailable.
            # (The bound counts from the node's return, which the wait for 200 above spent part of.)
            time.sleep(max(0.0, cql.RECOVERY_BOUND_S + 1 - (time.monotonic() - back_at)))
        assert session.execute("SELECT release_version FROM system.local").one() is not None
    finally:
        cluster.shutdown()
