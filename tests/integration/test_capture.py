"""Change capture that stops is noticed, named and healed: the heartbeat on the real path.

Each test runs a sync supervisor whose capture heartbeat is fast (one per second, stalled
after 6 s) and breaks capture for real:

- the Debezium connector is stopped (then started again): ``/readyz`` turns 503 naming
  ``capture`` and the node, ``c2pg health`` exits 1, ``ray_c2pg_capture_stalled`` is 1; and
  all three recover;
- a ``DELETE m['k']`` on a ``map<text, frozen<list<int>>>`` column, which the connector
  cannot decode: it skips the rest of the commit-log segment, so every write after it is
  lost (:func:`break_capture_with_a_map_element_delete`). The stall is detected with the
  connector's log as cause; a new segment (:func:`force_new_commitlog_segment`) brings
  capture back, and the heal-after-stall reconcile repairs the lost writes;
- a table with a ``vector`` column in another keyspace is named by ``c2pg config check`` and
  ``/readyz`` as the reason tables created later will not be captured.

This module STOPS the connector and makes it skip a segment: whatever another test writes
meanwhile is lost. Tests run one at a time, and every test puts capture back in a finally.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import urllib.request
import uuid
from datetime import timedelta

import psycopg2
import pytest
import ray
import requests

from engine import capture, cql
from engine.compare import wait_equal
from engine.config import load_config
from engine.sync_supervisor import find, get_or_start
from tests.integration.cdc_scenarios import fresh_sync_pipeline, wait_for_table_capture
from tests.integration.serve_helpers import Api, pipeline_file, serve_app_running, shutdown_serve

KS = "c2pg_capture_test"
FAST = {"heartbeat_interval": "1s", "stall_after": "6s"}


@pytest.fixture(scope="module")
def cass(stack, pipeline):
    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    session.execute(f"CREATE KEYSPACE {KS} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    time.sleep(2)  # the connector misses tables created in their keyspace's refresh window
    session.execute(f"CREATE TABLE {KS}.filler (k int PRIMARY KEY, b blob)")  # no CDC: forces segments
    yield session
    cluster.shutdown()


@pytest.fixture()
def pg(pipeline):
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def app(stack, ray_cluster, tmp_path_factory):
    """A control plane (readyz never cached) for a pipeline whose sync runs only the heartbeat
    (its one table does not exist: capture is judged by the heartbeat alone)."""
    name = f"capture-{uuid.uuid4().hex[:8]}"
    path = pipeline_file(tmp_path_factory.mktemp("capture"), name, [f"absent_{uuid.uuid4().hex[:6]}"],
                         api={"health_cache": "0s", "check_timeout": "3s"}, capture=FAST, sync={"workers": 1})
    cfg = load_config(path)
    get_or_start(cfg)
    try:
        with serve_app_running(path) as api:
            yield api, cfg, path
    finally:
        shutdown_serve()
        _stop(cfg.name)


def _stop(pipeline: str) -> None:
    sup = find(pipeline)
    if sup is not None:
        try:
            ray.get(sup.stop.remote(), timeout=60)
        finally:
            ray.kill(sup, no_restart=True)


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
        time.sleep(1)


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
        assert "no heartbeat from node 127.0.0.1 has arrived" in error and "(bound 6 s)" in error
        assert "connector /health" in error and "refused" in error  # the cause, from its health URL
        code, out = _health(path)
        assert code == 1 and "capture          DOWN" in out and "127.0.0.1" in out
        _wait_metric(cfg.name, 1.0)
    finally:
        stack.up(on_event=lambda m: None)
    _wait_readyz(api, lambda c, b: c == 200, 120)
    assert _health(path)[0] == 0
    _wait_metric(cfg.name, 0.0)


def test_a_vector_table_in_another_keyspace_is_named_by_config_check_and_readyz(cass, app):
    from engine.cli import main

    api, cfg, path = app
    table = f"vec_{uuid.uuid4().hex[:6]}"
    cass.execute(f"CREATE TABLE {KS}.{table} (k int PRIMARY KEY, e vector<float, 3>)")
    try:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            assert main(["config", "check", str(path)]) == 0  # a warning: capture works until a restart
        assert f"warning: {KS}.{table}: column e is a vector" in err.getvalue()
        assert "tables created or changed later are not captured" in err.getvalue()
        body = _wait_readyz(api, lambda c, b: f"{KS}.{table}" in (_component(b, "capture")["detail"] or ""), 60)
        assert body["ready"] is True and "column e is a vector" in _component(body, "capture")["detail"]
    finally:
        cass.execute(f"DROP TABLE {KS}.{table}")


def break_capture_with_a_map_element_delete(session, keyspace: str) -> str:
    """Make the connector skip the rest of its current commit-log segment: a map element
    delete on ``map<text, frozen<list<int>>>`` fails its decoding (``MarshalException: Not
    enough bytes to read a list``). Returns the table it used (captured first, so the
    connector does decode its events)."""
    table = f"frozen_lists_{uuid.uuid4().hex[:6]}"
    session.execute(f"CREATE TABLE {keyspace}.{table} (k int PRIMARY KEY, m map<text, frozen<list<int>>>) "
                    "WITH cdc = true")
    wait_for_table_capture(session, keyspace, table, f"INSERT INTO {keyspace}.{table} (k, m) VALUES (1, {{'k': [1]}})")
    session.execute(f"DELETE m['k'] FROM {keyspace}.{table} WHERE k = 1")
    return table


def force_new_commitlog_segment(session, keyspace: str, cdc_raw, max_mib: int = 96) -> int:
    """Write 1 MiB blobs into a table without CDC until Cassandra opens a new commit-log
    segment (a new file in ``cdc_raw``: Cassandra links each new segment there); returns
    the MiB written. The connector reads the new segment normally."""
    before = {p.name for p in cdc_raw.glob("*.log")}
    blob = os.urandom(1 << 20)
    insert = session.prepare(f"INSERT INTO {keyspace}.filler (k, b) VALUES (?, ?)")
    for n in range(1, max_mib + 1):
        session.execute(insert, (n, blob))
        if {p.name for p in cdc_raw.glob("*.log")} - before:
            return n
    raise AssertionError(f"no new commit-log segment after {max_mib} MiB")


def test_a_segment_the_connector_skips_is_a_stall_and_the_heal_repairs_the_lost_writes(stack, cass, pg, pipeline):
    name = f"healed_{uuid.uuid4().hex[:6]}"
    cass.execute(f"CREATE TABLE {KS}.{name} (pk int PRIMARY KEY, v text) WITH cdc = true")
    cfg = fresh_sync_pipeline(pg, pipeline, KS, "capture_test", name)
    cfg = cfg.model_copy(update={"capture": cfg.capture.model_copy(update={
        "heartbeat_interval": timedelta(seconds=1), "stall_after": timedelta(seconds=6), "heal_after_stall": True}),
        "sync": cfg.sync.model_copy(update={"workers": 1})})
    wait_for_table_capture(cass, KS, name, f"INSERT INTO {KS}.{name} (pk, v) VALUES (-1, 'sentinel')")
    sup = get_or_start(cfg)
    try:
        for pk in range(10):
            cass.execute(f"INSERT INTO {KS}.{name} (pk, v) VALUES (%s, %s)", (pk, f"before {pk}"))
        assert wait_equal(cass, pg, KS, name, "capture_test", name, timeout_s=90) == []
        _wait_capture(sup, lambda c: c["nodes"] and all(n["state"] == "ok" for n in c["nodes"]), 60)

        broken = break_capture_with_a_map_element_delete(cass, KS)
        for pk in range(10, 30):  # in the skipped segment: never delivered
            cass.execute(f"INSERT INTO {KS}.{name} (pk, v) VALUES (%s, %s)", (pk, f"lost {pk}"))
        stalled = _wait_capture(sup, lambda c: c["stalled"], 60)
        assert "MarshalException: Not enough bytes to read a list" in (stalled["cause"] or "")
        code, out = _health_cfg(cfg)
        assert code == 1 and "capture" in out and "MarshalException" in out

        cdc_raw = stack.services["cassandra"].cdc_raw
        force_new_commitlog_segment(cass, KS, cdc_raw)
        healed = _wait_capture(sup, lambda c: not c["stalled"] and any(h["finished_at"] for h in c["heals"]), 180)
        heal = next(h for h in healed["heals"] if h["finished_at"])
        assert heal["reason"].startswith("capture recovered on node(s) 127.0.0.1")
        run = next(r for r in heal["runs"] if r["table"] == f"{KS}.{name}")
        assert run["status"] == "completed" and run["drift"] >= 1 and run["not_repaired"] == 0, run
        assert wait_equal(cass, pg, KS, name, "capture_test", name, timeout_s=30) == []
        with pg, pg.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM capture_test."{name}" WHERE v LIKE %s', ("lost %",))
            assert cur.fetchone()[0] == 20
        cass.execute(f"DROP TABLE {KS}.{broken}")
    finally:
        _stop(cfg.name)


def _wait_capture(sup, done, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        c = ray.get(sup.status.remote(), timeout=30)["capture"]
        if done(c):
            return c
        assert time.monotonic() < deadline, f"capture not as expected after {timeout_s}s: {c}"
        time.sleep(0.5)


def _health_cfg(cfg) -> tuple[int, str]:
    try:
        detail = capture.check_capture(cfg)
    except RuntimeError as exc:
        return 1, f"capture DOWN {exc}"
    return 0, f"capture ok {detail}"
