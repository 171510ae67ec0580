"""A commit-log segment the connector skips is a stall, and the heal repairs what it lost;
a table the connector never captures is kept by scheduled reconcile.

- a ``DELETE m['k']`` on a ``map<text, frozen<list<int>>>`` column, which the connector
  cannot decode: it skips the rest of the commit-log segment, so every write after it is
  lost (:func:`break_capture_with_a_map_element_delete`). The stall is detected with the
  connector's log as cause; a new segment (:func:`force_new_commitlog_segment`) brings
  capture back, and the heal-after-stall reconcile repairs the lost writes;
- a counter table configured ``capture: reconcile`` is named as such and reconciled on a
  schedule until PostgreSQL equals Cassandra.

This module makes the connector skip a segment: whatever another test wrote meanwhile would
be lost. Tests run one at a time; the segment ends inside the test.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta

import pytest
import ray

from engine import capture, cql
from engine.compare import wait_equal
from engine.sync.supervisor import get_or_start
from tests.conftest import alive_pg, exclusive_section
from tests.integration.cdc_scenarios import fresh_sync_pipeline, stop_sync, wait_for_table_capture

KS = "c2pg_capture_heal_test"


@pytest.fixture(scope="module")
def cass(stack, pipeline, cdc_keyspaces):
    assert KS in cdc_keyspaces
    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"CREATE TABLE {KS}.filler (k int PRIMARY KEY, b blob)")  # no CDC: forces segments
    yield session
    cluster.shutdown()


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


def test_a_segment_the_connector_skips_is_a_stall_and_the_heal_repairs_the_lost_writes(stack, cass, pg, pipeline,
                                                                                      ray_cluster):
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

        # From the break to the new segment the connector delivers nothing, and it skips the
        # whole broken segment, every table's writes in it included: no other test meanwhile.
        with exclusive_section("the connector skips a whole commit-log segment"):
            broken = break_capture_with_a_map_element_delete(cass, KS)
            for pk in range(10, 30):  # in the skipped segment: never delivered
                cass.execute(f"INSERT INTO {KS}.{name} (pk, v) VALUES (%s, %s)", (pk, f"lost {pk}"))
            stalled = _wait_capture(sup, lambda c: c["stalled"], 60)
            assert "MarshalException: Not enough bytes to read a list" in (stalled["cause"] or "")
            code, out = _health_cfg(cfg)
            assert code == 1 and "capture" in out and "MarshalException" in out

            cdc_raw = stack.services["cassandra"].cdc_raw
            force_new_commitlog_segment(cass, KS, cdc_raw)
            _wait_capture(sup, lambda c: not c["stalled"], 180)
        pg = alive_pg(pg, pipeline)
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
        stop_sync(cfg.name)


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


def test_a_counter_table_is_kept_equal_by_scheduled_reconcile_and_named_as_such(cass, pg, pipeline, ray_cluster):
    from engine.config import TableConfig

    name = f"counts_{uuid.uuid4().hex[:6]}"
    cass.execute(f"CREATE TABLE {KS}.{name} (pk int PRIMARY KEY, n counter)")
    cfg = fresh_sync_pipeline(pg, pipeline, KS, "capture_test", name)
    table = TableConfig(keyspace=KS, table=name, target_schema="capture_test", target_table=name,
                        capture="reconcile", reconcile_every=timedelta(seconds=3))
    cfg = cfg.model_copy(update={"tables": (table,), "sync": cfg.sync.model_copy(update={"workers": 1})})
    # As cdc (the default) the counter table is an error: its changes will never arrive.
    as_cdc = cfg.model_copy(update={"tables": (table.model_copy(update={"capture": "cdc"}),)})
    [error] = capture.find_uncapturable(cass, as_cdc)
    assert error.severity == "error" and "counter table" in error.reason and error.fix == "capture: reconcile"
    [info] = capture.find_uncapturable(cass, cfg)
    assert info.severity == "info" and "kept equal by reconcile every 3 s" in info.reason
    for pk in range(5):
        cass.execute(f"UPDATE {KS}.{name} SET n = n + %s WHERE pk = %s", (pk + 1, pk))
    sup = get_or_start(cfg)
    try:
        assert wait_equal(cass, pg, KS, name, "capture_test", name, timeout_s=120) == []
        cass.execute(f"UPDATE {KS}.{name} SET n = n + 100 WHERE pk = 0")  # a change no event carries
        assert wait_equal(cass, pg, KS, name, "capture_test", name, timeout_s=60) == []
        status = ray.get(sup.status.remote(), timeout=30)["capture"]
        runs = [r for h in status["heals"] for r in h["runs"]]
        assert runs and all(r["table"] == f"{KS}.{name}" and r["status"] == "completed" for r in runs), runs
        assert status["scheduled_reconcile"][f"{KS}.{name}"]
        assert [f["severity"] for f in status["findings"]] == ["info"]
    finally:
        stop_sync(cfg.name)
