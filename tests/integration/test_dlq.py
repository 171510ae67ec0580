"""Dead letters (engine.dlq) on the real stack: made by sync's TableApplier, listed, shown,
replayed through the same path, and copied to a Kafka DLQ topic.

The table lives in a scratch Cassandra keyspace (the applier reads its definition there);
records are Debezium JSON written by hand, so each test controls exactly what fails.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import psycopg2
import pytest

from engine import cql
from engine.config import TableConfig
from engine.dlq import (DeadLetterNotFound, list_dead_letters, publish_to_topic, replay, show)
from engine.pg_dialect import tombstone_table_name
from engine.pg_writer import DeadLetter
from engine.sync.apply import Record, TableApplier
from engine.target import ensure_state

KS = "c2pg_dlq_test"
PIPE = "dlq-test"
PG_SCHEMA = "dlq_test"


@pytest.fixture(scope="module")
def cass(stack, pipeline):
    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {KS} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    yield session
    cluster.shutdown()


@pytest.fixture()
def pg(stack, pipeline):  # per test: a test in the other process may restart PostgreSQL
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs(application_name="c2pg-dlq-test"))
    ensure_state(conn)
    yield conn
    conn.close()


@pytest.fixture()
def env(cass, pg, pipeline):
    """A fresh ``items`` table on both sides and a pipeline replicating only it."""
    cass.execute(f"DROP TABLE IF EXISTS {KS}.items")
    cass.execute(f"CREATE TABLE {KS}.items (id int PRIMARY KEY, name text)")
    with pg, pg.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = %s", (PG_SCHEMA,))
        cur.execute(f"DROP TABLE IF EXISTS _c2pg.{tombstone_table_name(PG_SCHEMA, 'items')}")
        cur.execute("DELETE FROM _c2pg.dead_letters WHERE pipeline = %s", (PIPE,))
        cur.execute("DELETE FROM _c2pg.offsets WHERE pipeline = %s", (PIPE,))
    table = TableConfig(keyspace=KS, table="items", target_schema=PG_SCHEMA, target_table="items")
    cfg = pipeline.model_copy(update={"pipeline": pipeline.pipeline.model_copy(update={"name": PIPE}),
                                      "tables": (table,)})
    return cfg, table


def now_us() -> int:
    return time.time_ns() // 1000


def event(id_: int, ts_us: int, op: str = "i", **cols) -> bytes:
    after = {"id": {"value": id_, "deletion_ts": None, "set": True}}
    after.update({k: {"value": v, "deletion_ts": None, "set": True} for k, v in cols.items()})
    return json.dumps({"ts_ms": ts_us // 1000, "op": op, "after": after,
                       "source": {"keyspace": KS, "table": "items", "ts_us": ts_us}}).encode()


def key(id_: int) -> bytes:
    return json.dumps({"id": id_}).encode()


def topic(cfg) -> str:
    return cfg.kafka.topic_for(KS, "items")


def pg_rows(pg) -> list[tuple]:
    with pg, pg.cursor() as cur:
        cur.execute(f"SELECT * FROM {PG_SCHEMA}.items ORDER BY id")
        names = [c.name for c in cur.description]
        return [{n: v for n, v in zip(names, row) if not n.startswith("_c2pg_")} for row in cur.fetchall()]


def dead_rows(pg) -> dict[int, tuple]:
    """kafka_offset → (error_class, replayed?) for every dead letter of the test pipeline."""
    with pg, pg.cursor() as cur:
        cur.execute("SELECT kafka_offset, error_class, replayed_at IS NOT NULL FROM _c2pg.dead_letters "
                    "WHERE pipeline = %s ORDER BY id", (PIPE,))
        rows = cur.fetchall()
    assert len({r[0] for r in rows}) == len(rows), f"duplicate dead letters: {rows}"
    return {off: (cls, done) for off, cls, done in rows}


def insert_dead_letter(pg, *, origin="sync", keyspace=KS, offset=100, raw_value=None, raw_key=None) -> int:
    """A dead letter of the test pipeline, written directly (as if an earlier sync made it)."""
    with pg, pg.cursor() as cur:
        cur.execute("INSERT INTO _c2pg.dead_letters (pipeline, origin, keyspace, source_table, topic, "
                    "kafka_partition, kafka_offset, raw_key, raw_value, error_class, error) "
                    "VALUES (%s, %s, %s, 'items', %s, 0, %s, %s, %s, 'DecodeError', 'made by the test') "
                    "RETURNING id", (PIPE, origin, keyspace, f"c2pg.{KS}.items", offset, raw_key, raw_value))
        return cur.fetchone()[0]


def pending(pg, offset: int, id_: int, ts_us: int, op: str = "i", **cols) -> int:
    """A dead letter holding a well-formed event of ``items``."""
    return insert_dead_letter(pg, offset=offset, raw_key=key(id_).decode(),
                              raw_value=event(id_, ts_us, op, **cols).decode())


def test_dead_letters_are_listed_shown_and_replayed_once_the_cause_is_fixed(cass, pg, env):
    cfg, table = env
    tp = topic(cfg)
    ts = now_us()
    records = [
        Record(tp, 0, 10, key(1), event(1, ts, name="fine")),
        Record(tp, 0, 11, key(2), b'{"op": "i", not json'),                       # malformed
        Record(tp, 0, 12, key(3), event(3, ts, name="nul\x00byte")),    # PostgreSQL text cannot hold NUL
        Record(tp, 0, 13, key(4), event(4, ts, name="four", extra="x")),  # a column Cassandra lacks (yet)
    ]
    result = TableApplier(cfg, table, pg, cass).apply(records, {(tp, 0): 14})
    assert result.dead_letters == 3
    assert pg_rows(pg) == [{"id": 1, "name": "fine"}]

    # list and show
    listed = list_dead_letters(pg, PIPE)
    assert [x["kafka_offset"] for x in listed] == [13, 12, 11], "newest first"
    assert {x["kafka_offset"]: x["error_class"] for x in listed} == {11: "DecodeError", 12: "DecodeError",
                                                                     13: "SchemaChanged"}
    assert "raw_value" not in listed[0]
    assert len(list_dead_letters(pg, cfg, origin="sync", table=f"{KS}.items", since=timedelta(hours=1))) == 3
    assert len(list_dead_letters(pg, PIPE, table="items", limit=1)) == 1
    assert list_dead_letters(pg, PIPE, origin="snapshot") == []
    assert list_dead_letters(pg, PIPE, table="other_ks.items") == []
    by_offset = {x["kafka_offset"]: x["id"] for x in listed}
    shown = show(pg, by_offset[12])
    assert shown["raw_key"] == '{"id": 3}' and "nul\\u0000byte" in shown["raw_value"]
    assert "NUL" in shown["error"] and shown["topic"] == tp and shown["replayed_at"] is None
    with pytest.raises(DeadLetterNotFound):
        show(pg, -1)

    # nothing is fixed yet: all fail again, stay unreplayed, and are not duplicated
    again = replay(pg, cfg, None, cql_session=cass)
    assert again.replayed == () and again.skipped == ()
    assert sorted(i for i, _ in again.failed) == sorted(by_offset.values())
    assert dead_rows(pg) == {11: ("DecodeError", False), 12: ("DecodeError", False),
                             13: ("SchemaChanged", False)}

    # the column now exists in Cassandra: the record that named it applies, the others still fail
    cass.execute(f"ALTER TABLE {KS}.items ADD extra text")
    fixed = replay(pg, cfg, None, cql_session=cass)
    assert fixed.replayed == (by_offset[13],)
    assert sorted(i for i, _ in fixed.failed) == sorted([by_offset[11], by_offset[12]])
    assert pg_rows(pg) == [{"id": 1, "name": "fine", "extra": None}, {"id": 4, "name": "four", "extra": "x"}]
    assert dead_rows(pg) == {11: ("DecodeError", False), 12: ("DecodeError", False),
                             13: ("SchemaChanged", True)}
    assert show(pg, by_offset[13])["replayed_at"] is not None
    assert [x["kafka_offset"] for x in list_dead_letters(pg, PIPE)] == [12, 11]
    assert len(list_dead_letters(pg, PIPE, include_replayed=True)) == 3

    # replay never moves offsets
    with pg, pg.cursor() as cur:
        cur.execute("SELECT topic, kafka_partition, next_offset FROM _c2pg.offsets WHERE pipeline = %s",
                    (PIPE,))
        assert cur.fetchall() == [(tp, 0, 14)]

    # a replayed one is not replayed twice; an unknown id is reported
    twice = replay(pg, cfg, [by_offset[13], 999_999_999], cql_session=cass)
    assert twice.replayed == () and twice.failed == ()
    assert dict(twice.skipped)[by_offset[13]].startswith("already replayed")
    assert dict(twice.skipped)[999_999_999] == "no dead letter with this id"


def test_replay_applies_old_deletions_but_holds_back_old_upserts_and_what_it_cannot_replay(cass, pg, env):
    cfg, table = env
    live = Record(topic(cfg), 0, 1, key(7), event(7, now_us(), name="live"))
    TableApplier(cfg, table, pg, cass).apply([live], {})
    month_ago = now_us() - 30 * 86_400 * 1_000_000
    old_upsert = pending(pg, 100, 8, month_ago, name="x")
    old_delete = pending(pg, 101, 7, now_us() + 1_000_000, op="d")
    fresh = pending(pg, 102, 9, now_us(), name="nine")
    snapshot = insert_dead_letter(pg, origin="snapshot", offset=103, raw_value="{}")
    other_table = insert_dead_letter(pg, keyspace="elsewhere", offset=104, raw_value="{}")
    avro = insert_dead_letter(pg, offset=105, raw_value="\\u0000\\u0000\\u0000\\u0000\\u0001\x02abc")

    result = replay(pg, cfg, [old_upsert, old_delete, fresh, snapshot, other_table, avro], cql_session=cass)
    assert result.replayed == tuple(sorted([old_delete, fresh])) and result.failed == ()
    skipped = dict(result.skipped)
    assert set(skipped) == {old_upsert, snapshot, other_table, avro}
    assert "older than sync.tombstone_retention" in skipped[old_upsert]
    assert "origin 'snapshot'" in skipped[snapshot]
    assert "elsewhere.items is not in the pipeline" in skipped[other_table]
    assert "Avro" in skipped[avro]
    assert pg_rows(pg) == [{"id": 9, "name": "nine"}], "7 deleted; the old upsert of 8 held back"
    assert show(pg, old_upsert)["replayed_at"] is None


def test_a_dead_letter_another_session_is_replaying_is_skipped(cass, pg, env, pipeline):
    cfg, _ = env
    dl = pending(pg, 200, 5, now_us(), name="five")
    other = psycopg2.connect(**pipeline.postgres.connect_kwargs(application_name="c2pg-dlq-test-lock"))
    try:
        with other.cursor() as cur:
            cur.execute("SELECT 1 FROM _c2pg.dead_letters WHERE id = %s FOR UPDATE", (dl,))
            result = replay(pg, cfg, [dl], cql_session=cass)
        other.rollback()
    finally:
        other.close()
    assert result.replayed == () and dict(result.skipped)[dl].startswith("replayed or being replayed")
    assert replay(pg, cfg, [dl], cql_session=cass).replayed == (dl,)
    assert pg_rows(pg) == [{"id": 5, "name": "five"}]


def test_dead_letters_reach_the_kafka_dlq_topic_with_their_headers(pg, env, pipeline):
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    cfg, _ = env
    conf = cfg.kafka.client_conf()
    dlq = f"c2pg-test-dlq-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(conf)
    admin.create_topics([NewTopic(dlq, num_partitions=1, replication_factor=1)])[dlq].result(30)
    try:
        publish_to_topic(conf, dlq, DeadLetter("c2pg.ks.t", 3, 42, '{"id": 1}', "{broken", "DecodeError",
                                               "cannot decode: malformed JSON", row_key="1"), pipeline=PIPE)
        stored = show(pg, insert_dead_letter(pg, offset=43, raw_value="{also broken"))
        publish_to_topic(conf, dlq, stored)

        consumer = Consumer({**conf, "group.id": f"c2pg-test-{uuid.uuid4()}", "enable.auto.commit": False})
        consumer.assign([TopicPartition(dlq, 0, 0)])
        got, deadline = [], time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is not None and not m.error():
                got.append(m)
        consumer.close()
    finally:
        admin.delete_topics([dlq])
    assert len(got) == 2
    first, second = got
    assert first.key() == b'{"id": 1}' and first.value() == b"{broken"
    assert {k: v.decode() for k, v in first.headers()} == {
        "c2pg.error.class": "DecodeError", "c2pg.error.message": "cannot decode: malformed JSON",
        "c2pg.source.topic": "c2pg.ks.t", "c2pg.source.partition": "3", "c2pg.source.offset": "42",
        "c2pg.row_key": "1", "c2pg.pipeline": PIPE}
    assert second.key() is None and second.value() == b"{also broken"
    headers = {k: v.decode() for k, v in second.headers()}
    assert headers["c2pg.source.offset"] == "43" and headers["c2pg.pipeline"] == PIPE
    assert headers["c2pg.source.topic"] == topic(cfg) and "c2pg.row_key" not in headers


def test_data_and_replayed_at_commit_together(cass, pg, env, monkeypatch):
    """If marking fails, the replayed data rolls back with it (one transaction); the chunk
    is retried one by one and the dead letter keeps the new error, unreplayed."""
    from psycopg2 import sql

    from engine import pg_dialect

    cfg, _ = env
    a = pending(pg, 300, 1, now_us(), name="one")
    b = pending(pg, 301, 2, now_us(), name="two")
    monkeypatch.setattr(pg_dialect, "MARK_REPLAYED",
                        sql.SQL("UPDATE _c2pg.dead_letters SET replayed_at = now() "
                                "WHERE id = ANY(%s) AND 1/0 = 1"))
    result = replay(pg, cfg, [a, b], cql_session=cass)
    assert result.replayed == () and [i for i, _ in result.failed] == [a, b]
    assert all(err.startswith("DivisionByZero") for _, err in result.failed)
    assert pg_rows(pg) == [], "nothing committed without its mark"
    assert dead_rows(pg) == {300: ("DivisionByZero", False), 301: ("DivisionByZero", False)}

    monkeypatch.undo()
    assert replay(pg, cfg, None, cql_session=cass).replayed == (a, b)
    assert pg_rows(pg) == [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]
