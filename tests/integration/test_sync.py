"""Sync end to end: Cassandra → Debezium → Kafka → c2pg actors → PostgreSQL.

Each test makes its own table in a fresh keyspace, writes to Cassandra, and waits until the
PostgreSQL table equals a full read of the Cassandra table, every row and column. The tests
that break something (a worker, the supervisor, PostgreSQL, the topic's offsets) or need a
connector restart run their own pipeline (own offsets, own supervisor); the others share one
pipeline of a table each (``shared_sync``), so the supervisor and its workers start once.
"""

from __future__ import annotations

import os
import time
import uuid

import psycopg2
import pytest
import ray

from engine import cql, faults
from engine.compare import wait_equal
from engine.sync.supervisor import find, get_or_start
from tests.conftest import ROOT, alive_pg, exclusive_section
from tests.integration.cdc_scenarios import (
    TopicTail,
    capture_with_restart,
    fresh_sync_pipeline,
    stop_sync,
    type_is_new,
    wait_for_table_capture,
)

KS = "c2pg_sync_test"


@pytest.fixture(scope="module")
def cass(stack, pipeline, cdc_keyspaces):
    assert KS in cdc_keyspaces  # empty, and past the connector's schema-refresh window
    cluster, session = cql.connect(pipeline.cassandra)
    yield session
    cluster.shutdown()


@pytest.fixture()
def pg(pipeline):
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    yield conn
    conn.close()


def _fresh_target(pg, pipeline, name: str, *more: str):
    return fresh_sync_pipeline(pg, pipeline, KS, "sync_test", name, *more)


@pytest.fixture()
def sync_table(cass, pg, pipeline, ray_cluster, request):
    """A fresh CDC table and a pipeline syncing only it; the supervisor is removed after."""
    # A new name each run: the table's topic then holds only this run's events (an earlier
    # run's events would be replayed into a table Cassandra has since dropped).
    name = request.node.name.split("[")[0].replace("test_", "")[:30] + "_" + uuid.uuid4().hex[:6]
    cass.execute(f"DROP TABLE IF EXISTS {KS}.{name}")
    cass.execute(f"CREATE TABLE {KS}.{name} (pk int, ck int, a text, b bigint, s set<text>, "
                 f"PRIMARY KEY (pk, ck)) WITH cdc = true")
    cfg = _fresh_target(pg, pipeline, name)
    # The connector must know the table before the test's writes count.
    wait_for_table_capture(cass, KS, name, f"INSERT INTO {KS}.{name} (pk, ck, a) VALUES (-1, -1, 'sentinel')")
    sup = get_or_start(cfg)
    yield cfg, name, sup
    current = find(cfg.name)  # a test may have replaced the supervisor
    if current is not None:
        try:
            ray.get(current.stop.remote(), timeout=60)
        finally:
            ray.kill(current, no_restart=True)


# The tests on the shared pipeline, by the name of the table each one writes to.
SHARED = ("every_kind", "late_older", "consumer_group", "pause", "locked", "poison", "column_added")


@pytest.fixture(scope="class")
def shared_sync(cass, pipeline, ray_cluster):
    """One pipeline syncing a fresh CDC table per test in :data:`SHARED`, each captured by
    the connector before it is used; the supervisor is removed after the class.

    Starting a supervisor and its workers is most of a short sync test's time (~9 s on two
    cores); the tests below break nothing and pause only what they resume, so they share it.
    Each asserts on its own table only: its rows, its topic's offsets and partitions."""
    run = uuid.uuid4().hex[:6]
    names = {key: f"{key}_{run}" for key in SHARED}
    for name in names.values():
        cass.execute(f"CREATE TABLE {KS}.{name} (pk int, ck int, a text, b bigint, s set<text>, "
                     f"PRIMARY KEY (pk, ck)) WITH cdc = true")
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    try:
        cfg = _fresh_target(conn, pipeline, *names.values())
    finally:
        conn.close()
    for name in names.values():
        wait_for_table_capture(cass, KS, name, f"INSERT INTO {KS}.{name} (pk, ck, a) VALUES (-1, -1, 'sentinel')")
    sup = get_or_start(cfg)
    try:
        yield cfg, names, sup
    finally:
        stop_sync(cfg.name)


def _shared(shared_sync, key: str):
    cfg, names, sup = shared_sync
    return cfg, names[key], sup


class TestOnOnePipeline:
    """Tests that break nothing and pause only what they resume: they share one pipeline and
    its supervisor (:func:`shared_sync`, started once for the class and removed after its
    last test, before the fault tests below start theirs), each on a table of its own."""

    def test_every_kind_of_write_reaches_postgres_and_the_tables_end_equal(self, cass, pg, shared_sync):
        cfg, t, sup = _shared(shared_sync, "every_kind")
        def q(stmt, *args):
            return cass.execute(stmt.format(t=f"{KS}.{t}"), args)

        for pk in range(5):
            for ck in range(4):
                q("INSERT INTO {t} (pk, ck, a, b, s) VALUES (%s, %s, %s, %s, %s)", pk, ck, f"a{pk}.{ck}", pk * 10 + ck,
                  {f"x{ck}"})
        q("UPDATE {t} SET a = 'partial' WHERE pk = 0 AND ck = 0")                      # partial update
        q("DELETE b FROM {t} WHERE pk = 0 AND ck = 1")                                  # column delete
        q("UPDATE {t} SET a = null WHERE pk = 0 AND ck = 2")                            # set to null
        q("DELETE FROM {t} WHERE pk = 1 AND ck = 1")                                    # row delete
        q("DELETE FROM {t} WHERE pk = 2")                                               # partition delete
        q("DELETE FROM {t} WHERE pk = 3 AND ck > 0 AND ck <= 2")                        # range delete
        q("INSERT INTO {t} (pk, ck, a) VALUES (4, 9, 'ttl') USING TTL 3600")            # TTL write
        q("UPDATE {t} SET s = s + {{'added'}} WHERE pk = 4 AND ck = 0")                 # collection append
        q("UPDATE {t} SET s = {{'replaced'}} WHERE pk = 4 AND ck = 1")                  # collection overwrite
        q("UPDATE {t} SET a = 'upd-only' WHERE pk = 7 AND ck = 7")                      # a row born by UPDATE
        q("UPDATE {t} SET a = null WHERE pk = 7 AND ck = 7")                            # ... and emptied again
        # A set append arrives as the added element only; sync reads the whole set back.
        assert wait_equal(cass, pg, KS, t, "sync_test", t, timeout_s=90) == []
        status = ray.get(sup.status.remote())
        assert all(w["state"] in ("running", "paused") for w in status["workers"])
        assert sum(p["events"] for w in status["workers"] for p in w["partitions"] if p["table"] == f"{KS}.{t}") >= 20

    def test_a_late_older_write_after_a_delete_does_not_resurrect_and_a_newer_one_does(self, cass, pg, shared_sync):
        cfg, t, sup = _shared(shared_sync, "late_older")
        now = int(time.time() * 1_000_000)
        cass.execute(f"INSERT INTO {KS}.{t} (pk, ck, a) VALUES (1, 1, 'first') USING TIMESTAMP {now}")
        cass.execute(f"DELETE FROM {KS}.{t} USING TIMESTAMP {now + 10} WHERE pk = 1 AND ck = 1")
        cass.execute(f"INSERT INTO {KS}.{t} (pk, ck, a) VALUES (1, 1, 'late older') USING TIMESTAMP {now + 5}")
        assert wait_equal(cass, pg, KS, t, "sync_test", t) == []
        with pg, pg.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM sync_test."{t}" WHERE pk = 1')
            assert cur.fetchone()[0] == 0
        cass.execute(f"INSERT INTO {KS}.{t} (pk, ck, a) VALUES (1, 1, 'newer') USING TIMESTAMP {now + 20}")
        assert wait_equal(cass, pg, KS, t, "sync_test", t) == []
        with pg, pg.cursor() as cur:
            cur.execute(f'SELECT a FROM sync_test."{t}" WHERE pk = 1')
            assert cur.fetchall() == [("newer",)]

    def test_the_kafka_consumer_group_shows_the_offsets_postgresql_committed(self, cass, pg, shared_sync):
        """Kafka's tools (kafka-consumer-groups.sh, lag exporters) read the consumer group's
        committed offsets: after each PostgreSQL commit the workers commit the same offsets to
        ``c2pg-<pipeline>``, asynchronously (``_c2pg.offsets`` stays the truth)."""
        from confluent_kafka import Consumer, TopicPartition

        cfg, t, _sup = _shared(shared_sync, "consumer_group")
        cass.execute(f"INSERT INTO {KS}.{t} (pk, ck, a) VALUES (7, 1, 'seen by the Kafka tools')")
        assert wait_equal(cass, pg, KS, t, "sync_test", t) == []
        want = _offsets(pg, cfg.name, t)
        assert want and all(o > 0 for o in want.values()), want
        reader = Consumer({**cfg.kafka.client_conf(), "group.id": f"c2pg-{cfg.name}", "enable.auto.commit": False})
        try:
            deadline = time.monotonic() + 30
            while True:
                got = {(tp.topic, tp.partition): tp.offset
                       for tp in reader.committed([TopicPartition(topic, p) for topic, p in want], timeout=10)}
                if all(got[k] >= v for k, v in want.items()):
                    break
                assert time.monotonic() < deadline, f"Kafka's group offsets {got} never reached PostgreSQL's {want}"
                time.sleep(0.2)
        finally:
            reader.close()

    def test_pause_stops_applying_and_resume_catches_up(self, cass, pg, shared_sync):
        cfg, t, sup = _shared(shared_sync, "pause")
        cass.execute(f"INSERT INTO {KS}.{t} (pk, ck, a) VALUES (1, 1, 'before pause')")
        assert wait_equal(cass, pg, KS, t, "sync_test", t) == []
        ray.get(sup.pause.remote())
        try:
            # "paused" is set at the top of the worker's loop: a batch in flight has committed.
            status = _wait_status(sup, lambda st: {w["state"] for w in st["workers"]} == {"paused"},
                                  "all workers paused")
            before = _offsets(pg, cfg.name)
            batches = sum(w["batches"] for w in status["workers"])
            for i in range(20):
                cass.execute(f"INSERT INTO {KS}.{t} (pk, ck, a) VALUES (2, %s, 'while paused')", (i,))
            # The events are in Kafka and the workers know it (their lag counts them): a running
            # worker would apply them within one batch wait (200 ms); give it five times that.
            status = _wait_status(sup, lambda st: sum(p["lag"] or 0 for w in st["workers"] for p in w["partitions"]
                                                      if p["table"] == f"{KS}.{t}") >= 20,
                                  "the paused events counted as lag")
            time.sleep(1.0)
            assert _offsets(pg, cfg.name) == before, "offsets stay while paused"
            status = ray.get(sup.status.remote())
            assert {w["state"] for w in status["workers"]} == {"paused"}
            assert sum(w["batches"] for w in status["workers"]) == batches, "no batch applied while paused"
        finally:
            ray.get(sup.resume.remote())  # the shared pipeline runs on for the next tests
        assert wait_equal(cass, pg, KS, t, "sync_test", t) == []

    def test_a_batch_held_by_a_lock_on_its_target_shows_in_status_while_it_lasts(self, cass, pg, pipeline,
                                                                                   shared_sync):
        """A lock on a target table (an owner's ALTER, a long report) holds the worker's merge:
        the worker stays "running", so status says how long its batch has been in flight, and
        ``c2pg sync status`` prints it; once the lock goes, the batch commits and it clears."""
        import contextlib
        import io

        from engine.cli import SLOW_BATCH_S, _print_sync_status

        cfg, t, sup = _shared(shared_sync, "locked")
        cass.execute(f"INSERT INTO {KS}.{t} (pk, ck, a) VALUES (1, 1, 'before the lock')")
        assert wait_equal(cass, pg, KS, t, "sync_test", t) == []
        holder = psycopg2.connect(**pipeline.postgres.connect_kwargs(application_name="c2pg-test-lock"))
        try:
            with holder.cursor() as cur:
                cur.execute(f'LOCK TABLE sync_test."{t}" IN ACCESS EXCLUSIVE MODE')  # held until rollback
            cass.execute(f"INSERT INTO {KS}.{t} (pk, ck, a) VALUES (1, 2, 'behind the lock')")
            status = _wait_status(sup, lambda st: any((w["batch_in_flight_s"] or 0) >= SLOW_BATCH_S
                                                      for w in st["workers"]), "a batch in flight for 5 s")
            held = [w for w in status["workers"] if (w["batch_in_flight_s"] or 0) >= SLOW_BATCH_S]
            assert all(w["state"] == "running" for w in held), held
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                _print_sync_status(status, time.time())
            assert "writing one batch for" in out.getvalue() and "PostgreSQL has not finished it" in out.getvalue()
        finally:
            holder.rollback()
            holder.close()
        assert wait_equal(cass, pg, KS, t, "sync_test", t) == []
        _wait_status(sup, lambda st: all((w["batch_in_flight_s"] or 0) < SLOW_BATCH_S for w in st["workers"]),
                     "the held batch committed")

    def test_poison_events_go_to_dead_letters_and_the_good_ones_around_them_apply(self, cass, pg, shared_sync):
        import json as _json

        from confluent_kafka import Producer

        cfg, t, sup = _shared(shared_sync, "poison")
        topic = f"c2pg.{KS}.{t}"
        cass.execute(f"INSERT INTO {KS}.{t} (pk, ck, a, b) VALUES (5, 1, 'good before', 1)")
        assert wait_equal(cass, pg, KS, t, "sync_test", t) == []

        def event(after: dict, table: str = t) -> bytes:
            now = int(time.time() * 1_000_000)
            cells = {k: (None if v is None else {"value": v, "deletion_ts": None, "set": True})
                     for k, v in after.items()}
            return _json.dumps({"ts_ms": now // 1000, "op": "u", "source": {
                "version": "3.4.1.Final", "connector": "cassandra", "name": "c2pg", "ts_ms": now // 1000, "ts_us": now,
                "ts_ns": now * 1000, "snapshot": "false", "db": "NULL", "sequence": None, "cluster": "c2pg-dev",
                "file": "x", "pos": 0, "keyspace": KS, "table": table},
                "after": {**cells, "_range_start": None, "_range_end": None}}).encode()

        key = _json.dumps({"pk": 5, "ck": 2}).encode()
        poison = [
            b"{not json at all",                                                       # malformed JSON
            event({"pk": 5, "ck": 2, "b": "not a number"}),                            # wrong type
            event({"pk": 5, "ck": 2, "b": 2 ** 70}),                                   # does not fit bigint
            event({"pk": 5, "ck": 2, "a": "x"}, table='evil"; DROP TABLE sync_test.x; --'),  # table name injection
            event({"pk": 5, "ck": 2, 'a"; DROP TABLE _c2pg.offsets; --': "x"}),        # column name injection
            event({"pk": 5, "ck": 2, "a": "nul \x00 inside"}),                          # text PostgreSQL cannot hold
        ]
        producer = Producer({"bootstrap.servers": "127.0.0.1:9092"})
        for value in poison:
            producer.produce(topic, key=key, value=value, partition=0)
        producer.produce(topic, key=key, value=event({"pk": 5, "ck": 2, "a": "good after"}), partition=0)
        producer.flush(10)
        cass.execute(f"INSERT INTO {KS}.{t} (pk, ck, a, b) VALUES (5, 3, 'good via cassandra', 3)")

        deadline = time.monotonic() + 60
        while True:
            with pg, pg.cursor() as cur:
                cur.execute("SELECT error_class, error, raw_value FROM _c2pg.dead_letters WHERE pipeline = %s "
                            "AND topic = %s ORDER BY kafka_offset", (cfg.name, topic))
                dead = cur.fetchall()
                cur.execute(f'SELECT ck, a FROM sync_test."{t}" WHERE pk = 5 ORDER BY ck')
                rows = cur.fetchall()
            if len(dead) >= len(poison) and (2, "good after") in rows and (3, "good via cassandra") in rows:
                break
            assert time.monotonic() < deadline, (dead, rows)
            time.sleep(1)
        assert len(dead) == len(poison)
        assert {cls for cls, _, _ in dead} <= {"DecodeError", "SchemaChanged"}
        reasons = " | ".join(err for _, err, _ in dead)
        for fragment in ("JSON", "bigint", "NUL", "DROP TABLE _c2pg.offsets"):
            assert fragment in reasons, fragment
        assert any(raw == "{not json at all" for _, _, raw in dead)
        with pg, pg.cursor() as cur:  # the injections were values, never SQL
            cur.execute("SELECT to_regclass('_c2pg.offsets') IS NOT NULL")
            assert cur.fetchone()[0]

    def test_a_column_added_in_cassandra_is_added_in_postgres_by_its_first_event(self, cass, pg, shared_sync):
        cfg, t, sup = _shared(shared_sync, "column_added")
        cass.execute(f"INSERT INTO {KS}.{t} (pk, ck, a) VALUES (6, 1, 'before')")
        assert wait_equal(cass, pg, KS, t, "sync_test", t) == []
        log = ROOT / ".stack" / "logs" / "debezium.log"
        seen = log.stat().st_size
        cass.execute(f"ALTER TABLE {KS}.{t} ADD added_later text")
        # The connector learns the new column from the driver's schema event, seconds later on
        # a loaded machine; a write with the column read before that is dropped by the
        # connector ("Unknown column added_later during deserialization"), not by c2pg.
        deadline = time.monotonic() + 60
        with open(log, "rb") as f:
            f.seek(seen)
            read = b""
            while f"Updated the schema for {KS}.{t} ".encode() not in read:
                assert time.monotonic() < deadline, "the connector never learned the new column"
                time.sleep(0.2)
                read += f.read()
        cass.execute(f"INSERT INTO {KS}.{t} (pk, ck, a, added_later) VALUES (6, 2, 'after', 'new column')")
        assert wait_equal(cass, pg, KS, t, "sync_test", t, timeout_s=60) == []
        with pg, pg.cursor() as cur:
            cur.execute(f'SELECT added_later FROM sync_test."{t}" WHERE pk = 6 AND ck = 2')
            assert cur.fetchone() == ("new column",)


class _Writer:
    """Writes rows to the table in a background thread (a steady stream while we break things)."""

    def __init__(self, cass, table: str, rows: int, start: int = 100):
        import threading

        self.stmt = cass.prepare(f"INSERT INTO {KS}.{table} (pk, ck, a, b) VALUES (?, ?, ?, ?)")
        self.cass, self.rows, self.start = cass, rows, start
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for i in range(self.start, self.start + self.rows):
            self.cass.execute(self.stmt, (i % 50, i, f"v{i}", i))
            time.sleep(0.005)

    def join(self) -> None:
        self.thread.join(timeout=120)


def _offsets(pg, pipeline: str, table: str | None = None) -> dict:
    """The tables' committed offsets (the capture heartbeat's topic is never paused), or
    those of ``table``'s topic only."""
    with pg, pg.cursor() as cur:
        cur.execute("SELECT topic, kafka_partition, next_offset FROM _c2pg.offsets WHERE pipeline = %s "
                    "AND topic <> 'c2pg.c2pg.heartbeat' AND (%s::text IS NULL OR topic = %s)",
                    (pipeline, table and f"c2pg.{KS}.{table}", table and f"c2pg.{KS}.{table}"))
        return {(t, p): o for t, p, o in cur.fetchall()}


def _wait_status(sup, ready, what: str, timeout_s: float = 60) -> dict:
    """Poll the supervisor's status until ``ready(status)``; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = ray.get(sup.status.remote())
        if ready(status):
            return status
        assert time.monotonic() < deadline, f"not {what} within {timeout_s:.0f}s: {status['workers']}"
        time.sleep(0.1)


@pytest.fixture()
def held_commit(monkeypatch, tmp_path):
    """Arm the ``sync.commit`` fault point before the supervisor starts (request this fixture
    before ``sync_table``): the first batch after the first committed row stops inside its
    transaction — merged, offsets written, not committed — until the test releases it."""
    monkeypatch.setenv("C2PG_FAULTS", "sync.commit:after=1,action=hold,times=1")
    monkeypatch.setenv("C2PG_FAULTS_DIR", str(tmp_path / "faults"))
    yield tmp_path / "faults"
    faults.release("sync.commit", directory=tmp_path / "faults")


def _hold_a_batch_mid_stream(cass, pg, t: str, held_dir, rows: int) -> tuple[_Writer, dict]:
    """Start a write stream and return once a batch of it is provably in flight."""
    # The sentinel row committed: the worker runs, and the next batch is the stream's.
    assert wait_equal(cass, pg, KS, t, "sync_test", t) == []
    writer = _Writer(cass, t, rows=rows)
    held = faults.wait_held("sync.commit", timeout_s=120, directory=held_dir)
    assert held["table"] == f"{KS}.{t}"
    return writer, held


def _wait_gone(pid: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"process {pid} still alive {timeout_s:.0f}s after the kill"
        time.sleep(0.05)


def _write_more(cass, t: str, start: int, rows: int) -> None:
    """Writes after the fault: the stream goes on through it."""
    stmt = cass.prepare(f"INSERT INTO {KS}.{t} (pk, ck, a, b) VALUES (?, ?, ?, ?)")
    for i in range(start, start + rows):
        cass.execute(stmt, (i % 50, i, f"after{i}", i))


def test_killing_a_worker_mid_batch_loses_nothing(held_commit, cass, pg, sync_table):
    cfg, t, sup = sync_table
    writer, held = _hold_a_batch_mid_stream(cass, pg, t, held_commit, rows=400)
    victims = ray.get(sup.workers.remote())
    for actor in victims.values():
        ray.kill(actor, no_restart=True)
    _wait_gone(int(held["pid"]))  # the worker holding the uncommitted batch is among them
    _write_more(cass, t, 10_000, 100)
    writer.join()
    assert wait_equal(cass, pg, KS, t, "sync_test", t, timeout_s=120) == []
    status = ray.get(sup.status.remote())
    assert {w["worker"]: w["restarts"] for w in status["workers"]} == {slot: 1 for slot in victims}
    assert {w["state"] for w in status["workers"]} == {"running"}


def test_killing_the_supervisor_mid_batch_loses_nothing(held_commit, cass, pg, sync_table, stack):
    from ray.util.state import get_actor

    cfg, t, sup = sync_table
    first = ray.get(sup.status.remote())["started_at"]
    writer, held = _hold_a_batch_mid_stream(cass, pg, t, held_commit, rows=300)
    ray.kill(sup, no_restart=False)  # Ray restarts it (max_restarts=-1); its workers die with it
    _wait_gone(int(held["pid"]))
    _write_more(cass, t, 10_000, 100)
    writer.join()
    assert wait_equal(cass, pg, KS, t, "sync_test", t, timeout_s=120) == []
    status = ray.get(sup.status.remote())
    assert status["started_at"] > first, "a new incarnation of the supervisor runs the pipeline"
    # The stack's dashboard named: with no address Ray looks for "the" local instance and
    # fails while test_ray_nodes runs a cluster of its own beside it.
    assert get_actor(sup._actor_id.hex(), address=stack.services["ray"].dashboard_url).num_restarts == 1
    assert {w["state"] for w in status["workers"]} == {"running"}


def test_a_postgres_restart_mid_batch_loses_nothing(held_commit, cass, pg, sync_table, stack):
    cfg, t, sup = sync_table
    writer, held = _hold_a_batch_mid_stream(cass, pg, t, held_commit, rows=300)
    with exclusive_section("PostgreSQL goes down for every test"):
        stack.down(["postgres"], on_event=lambda m: None)
        try:
            faults.release("sync.commit", directory=held_commit)  # its commit meets a closed connection
            deadline = time.monotonic() + 60
            while not any(w.get("retries") for w in ray.get(sup.status.remote())["workers"]):
                assert time.monotonic() < deadline, "no worker recorded the failed batch"
                time.sleep(0.1)
        finally:
            stack.up(["postgres"], on_event=lambda m: None)
    _write_more(cass, t, 10_000, 100)
    writer.join()
    fresh = psycopg2.connect(**cfg.postgres.connect_kwargs())
    try:
        assert wait_equal(cass, fresh, KS, t, "sync_test", t, timeout_s=120) == []
    finally:
        fresh.close()
    workers = ray.get(sup.status.remote())["workers"]
    assert sum(w["retries"] for w in workers) >= 1 and sum(w["restarts"] for w in workers) == 0
    assert {(w["state"], w["error"]) for w in workers} == {("running", None)}


def test_replaying_the_topic_and_shuffled_duplicates_end_equal(cass, pg, sync_table, pipeline):
    import random

    from confluent_kafka import Consumer, Producer, TopicPartition

    cfg, t, sup = sync_table
    for i in range(60):
        cass.execute(f"INSERT INTO {KS}.{t} (pk, ck, a, b) VALUES (%s, %s, %s, %s)", (i % 7, i % 5, f"v{i}", i))
        if i % 4 == 0:
            cass.execute(f"DELETE a FROM {KS}.{t} WHERE pk = %s AND ck = %s", (i % 7, (i + 1) % 5))
        if i % 9 == 0:
            cass.execute(f"DELETE FROM {KS}.{t} WHERE pk = %s", ((i + 3) % 7,))
    assert wait_equal(cass, pg, KS, t, "sync_test", t, timeout_s=90) == []
    ray.get(sup.stop.remote(), timeout=60)
    ray.kill(sup, no_restart=True)

    topic = f"c2pg.{KS}.{t}"
    consumer = Consumer({"bootstrap.servers": "127.0.0.1:9092", "group.id": f"copy-{t}", "enable.auto.commit": False})
    parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    records = []
    while len(records) < sum(ends.values()):
        m = consumer.poll(5)
        assert m is not None, "could not read the topic back"
        if not m.error():
            records.append((m.partition(), m.key(), m.value()))
    consumer.close()

    # 1. Replay the whole topic from the start into an empty table: equal again.
    with pg, pg.cursor() as cur:
        cur.execute(f'TRUNCATE sync_test."{t}"')
        cur.execute("DELETE FROM _c2pg.offsets WHERE pipeline = %s", (cfg.name,))
    sup = get_or_start(cfg)
    assert wait_equal(cass, pg, KS, t, "sync_test", t, timeout_s=90) == []
    ray.get(sup.stop.remote(), timeout=60)
    ray.kill(sup, no_restart=True)

    # 2. The same records shuffled and duplicated, appended to the topic; sync reads only them.
    rnd = random.Random(4)
    copies = records + [rnd.choice(records) for _ in range(len(records) // 2)]
    rnd.shuffle(copies)
    producer = Producer({"bootstrap.servers": "127.0.0.1:9092"})
    for part, key, value in copies:
        producer.produce(topic, key=key, value=value, partition=part)
    producer.flush(30)
    with pg, pg.cursor() as cur:
        cur.execute(f'TRUNCATE sync_test."{t}"')
        cur.execute("DELETE FROM _c2pg.offsets WHERE pipeline = %s", (cfg.name,))
        cur.executemany("INSERT INTO _c2pg.offsets (pipeline, topic, kafka_partition, next_offset) "
                        "VALUES (%s, %s, %s, %s)", [(cfg.name, topic, p, ends[p]) for p in parts])
    sup = get_or_start(cfg)
    try:
        assert wait_equal(cass, pg, KS, t, "sync_test", t, timeout_s=90) == []
    finally:
        ray.get(sup.stop.remote(), timeout=60)


def test_udt_frozen_collections_maps_and_ttl_reach_postgres(cass, pg, pipeline, stack, ray_cluster):
    """A UDT table needs the connector restarted after the type exists (docs/local-stack.md):
    an exclusive section of ``capture_with_restart``."""
    name = "rich_types_" + uuid.uuid4().hex[:6]
    new_type = type_is_new(cass, KS, "addr")
    cass.execute(f"CREATE TYPE IF NOT EXISTS {KS}.addr (street text, zip int)")
    cass.execute(f"DROP TABLE IF EXISTS {KS}.{name}")
    cass.execute(f"CREATE TABLE {KS}.{name} (id int PRIMARY KEY, home frozen<addr>, tags frozen<list<text>>, "
                 f"scores map<text, int>, pair tuple<int, text>, note text) WITH cdc = true")
    cfg = _fresh_target(pg, pipeline, name)
    with TopicTail(f"c2pg.{KS}.{name}", {"bootstrap.servers": "127.0.0.1:9092"}) as tail:
        capture_with_restart(stack, tail, lambda: cass.execute(
            f"INSERT INTO {KS}.{name} (id, note) VALUES (-1, 'sentinel')"), f"{KS}.{name}", new_type=new_type)
    pg = alive_pg(pg, pipeline)  # capture_with_restart may have waited for an exclusive section
    sup = get_or_start(cfg)
    try:
        for i in range(10):
            cass.execute(f"INSERT INTO {KS}.{name} (id, home, tags, scores, pair, note) VALUES "
                         f"({i}, {{street: 'street {i}', zip: {1000 + i}}}, ['t{i}', 'x'], {{'a': {i}, 'b': {-i}}}, "
                         f"({i}, 'p{i}'), 'n{i}')")
        cass.execute(f"UPDATE {KS}.{name} SET home = {{street: 'moved', zip: 1}} WHERE id = 1")
        cass.execute(f"UPDATE {KS}.{name} SET tags = [] WHERE id = 2")
        cass.execute(f"UPDATE {KS}.{name} SET scores = {{'only': 7}} WHERE id = 3")   # map overwrite
        cass.execute(f"UPDATE {KS}.{name} USING TTL 3600 SET note = 'expires later' WHERE id = 4")
        cass.execute(f"DELETE home FROM {KS}.{name} WHERE id = 5")
        assert wait_equal(cass, pg, KS, name, "sync_test", name, timeout_s=90) == []
        with pg, pg.cursor() as cur:
            cur.execute(f'SELECT _c2pg_exp FROM sync_test."{name}" WHERE id = 4')
            assert any(e is not None and e > time.time() * 1e6 for e in cur.fetchone()[0]), "TTL expiry kept"
    finally:
        ray.get(sup.stop.remote(), timeout=60)
        ray.kill(sup, no_restart=True)
