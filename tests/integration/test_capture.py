"""Change capture that stops is noticed, named and healed: the heartbeat on the real path.

Each test runs a sync supervisor whose capture heartbeat is fast (one per second, stalled
after 6 s) and breaks capture for real:

- the Debezium connector is stopped (then started again): ``/readyz`` turns 503 naming
  ``capture`` and the node, ``c2pg health`` exits 1, ``ray_c2pg_capture_stalled`` is 1; and
  all three recover;
- a table with a ``vector`` column in another keyspace is named by ``c2pg config check`` and
  ``/readyz`` as the reason tables created later will not be captured; after a connector
  restart nothing is captured, and the stall names it.

The segment the connector skips and the heal are in ``test_capture_heal.py`` (a module of
its own, with no control plane or supervisor of this one beside it: its reconciles need the
cluster's CPUs).
This module STOPS the connector: tests run one at a time, and every test puts it back in a
finally.
"""

from __future__ import annotations

import contextlib
import io
import time
import urllib.request
import uuid

import pytest
import ray
import requests

from engine import cql
from engine.config import load_config
from engine.sync.supervisor import get_or_start
from tests.integration.cdc_scenarios import stop_sync
from tests.integration.serve_helpers import Api, pipeline_file, serve_app_running

# Deploys the control plane: runs with the other serve modules, in one process, on one Serve instance.
# exclusive: it stops and restarts the Debezium connector every CDC test depends on.
pytestmark = [pytest.mark.serve, pytest.mark.exclusive]

KS = "c2pg_capture_test"
FAST = {"heartbeat_interval": "1s", "stall_after": "6s"}


@pytest.fixture(scope="module")
def cass(stack, pipeline, cdc_keyspaces):
    assert KS in cdc_keyspaces
    cluster, session = cql.connect(pipeline.cassandra)
    yield session
    cluster.shutdown()


@pytest.fixture(scope="module")
def app(stack, serve_instance, tmp_path_factory):
    """A control plane (readyz never cached) for a pipeline whose sync runs only the heartbeat
    (its one table does not exist: capture is judged by the heartbeat alone). The supervisor's
    schema round, whose findings /readyz shows, runs every 2 s instead of every minute."""
    name = f"capture-{uuid.uuid4().hex[:8]}"
    path = pipeline_file(tmp_path_factory.mktemp("capture"), name, [f"absent_{uuid.uuid4().hex[:6]}"],
                         api={"health_cache": "0s", "check_timeout": "3s"}, capture=FAST,
                         sync={"workers": 1, "schema_check_interval": "2s"})
    cfg = load_config(path)
    get_or_start(cfg)
    try:
        with serve_app_running(path) as api:
            yield api, cfg, path
    finally:
        stop_sync(cfg.name)


def _wait_readyz(api: Api, done, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        r = requests.get(api.url("/readyz"), timeout=30)
        body = r.json()
        if done(r.status_code, body):
            return body
        assert time.monotonic() < deadline, f"/readyz not as expected after {timeout_s}s: {r.status_code} {body}"
        time.sleep(0.5)


def _component(body: dict, name: str) -> dict:
    return next(c for c in body["components"] if c["name"] == name)


def _stalled_metric(pipeline: str) -> float | None:
    port = ray.nodes()[0]["MetricsExportPort"]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
              if line.startswith("ray_c2pg_capture_stalled{") and f'pipeline="{pipeline}"' in line]
    return max(values) if values else None


def _wait_metric(pipeline: str, want: float, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while _stalled_metric(pipeline) != want:
        assert time.monotonic() < deadline, f"ray_c2pg_capture_stalled never {want} for {pipeline}"
        time.sleep(0.25)


def _health(path) -> tuple[int, str]:
    from engine.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["health", "--config", str(path)])
    return code, out.getvalue()


def test_a_stopped_connector_is_a_stall_in_readyz_health_and_metrics_and_recovers(stack, app):
    api, cfg, path = app
    body = _wait_readyz(api, lambda c, b: c == 200 and "delivering" in (_component(b, "capture")["detail"] or ""),
                        120)
    assert _component(body, "capture")["required"] is True
    _wait_metric(cfg.name, 0.0)
    try:
        stack.down(["debezium"], on_event=lambda m: None)
        body = _wait_readyz(api, lambda c, b: c == 503 and "capture" in b["failed"], 60)
        assert body["failed"] == ["capture"]  # the connector is not a component: its heartbeat is
        error = _component(body, "capture")["error"]
        assert "no heartbeat from node 127.0.0.1 has arrived" in error and "(bound 6 s after" in error
        assert "connector /health" in error and "refused" in error  # the cause, from its health URL
        code, out = _health(path)
        assert code == 1 and "capture          DOWN" in out and "127.0.0.1" in out
        _wait_metric(cfg.name, 1.0)
    finally:
        stack.up(on_event=lambda m: None)
    _wait_readyz(api, lambda c, b: c == 200, 120)
    assert _health(path)[0] == 0
    _wait_metric(cfg.name, 0.0)


def test_a_vector_table_in_another_keyspace_is_named_and_after_a_connector_restart_stalls_capture(stack, cass, app):
    from engine.cli import main

    api, cfg, path = app
    table = f"vec_{uuid.uuid4().hex[:6]}"
    # (While it exists, tables created anywhere are not captured: nothing else runs meanwhile.)
    cass.execute(f"CREATE TABLE {KS}.{table} (k int PRIMARY KEY, e vector<float, 3>)")
    try:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            assert main(["config", "check", str(path)]) == 0  # a warning: capture works until a restart
        assert f"warning: {KS}.{table}: column e is a vector" in err.getvalue()
        assert "tables created or changed later are not captured" in err.getvalue()
        body = _wait_readyz(api, lambda c, b: f"{KS}.{table}" in (_component(b, "capture")["detail"] or ""), 60)
        assert body["ready"] is True and "column e is a vector" in _component(body, "capture")["detail"]
        # A connector started while the vector table exists captures nothing at all: the
        # heartbeat stalls, and the failure names the vector table beside the stall.
        stack.down(["debezium"], on_event=lambda m: None)
        stack.up(on_event=lambda m: None)
        body = _wait_readyz(api, lambda c, b: c == 503 and "capture" in b["failed"], 90)
        error = _component(body, "capture")["error"]
        assert "no heartbeat from node 127.0.0.1" in error and f"{KS}.{table}: column e is a vector" in error
    finally:
        cass.execute(f"DROP TABLE IF EXISTS {KS}.{table}")
        stack.down(["debezium"], on_event=lambda m: None)
        stack.up(on_event=lambda m: None)
    _wait_readyz(api, lambda c, b: c == 200, 120)


def test_a_postgres_restart_does_not_stall_capture_the_worker_records_heartbeats_again(stack, app):
    """A worker with no table events writes only heartbeats; after PostgreSQL restarted they
    failed for ever on the closed connection (its status said ``running``) and capture was
    reported stalled, blaming the connector. Now: ``retrying`` with the reason while the
    server is down, a new connection when it is back, and capture delivering again."""
    api, cfg, _ = app
    _wait_readyz(api, lambda c, b: c == 200 and "delivering" in (_component(b, "capture")["detail"] or ""), 120)
    sup = get_or_start(cfg)

    def worker() -> dict:
        (w,) = ray.get(sup.status.remote())["workers"]
        return w

    try:
        stack.down(["postgres"], on_event=lambda m: None)
        deadline = time.monotonic() + 60
        while not (worker()["state"] == "retrying" and "capture heartbeats not recorded" in (worker()["error"] or "")):
            assert time.monotonic() < deadline, f"the worker never said its heartbeats fail: {worker()}"
            time.sleep(0.5)
    finally:
        stack.up(on_event=lambda m: None)
    body = _wait_readyz(api, lambda c, b: c == 200 and "delivering" in (_component(b, "capture")["detail"] or ""),
                        120)
    assert body["failed"] == []
    deadline = time.monotonic() + 30
    while worker()["state"] != "running" or worker()["error"] is not None:
        assert time.monotonic() < deadline, f"the worker never recovered: {worker()}"
        time.sleep(0.5)
