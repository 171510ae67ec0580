"""Snapshot, then sync from the beginning of the topic: expired TTL cells stay dead.

The documented workflow (docs/sync.md, "Running it") replays a table's whole topic onto a
fresh snapshot. Cells whose TTL ran out before the replay arrive as live values with an
expiry in the past; they must be applied as what Cassandra reads them as — a deletion of
the cell at its write time — not as live values waiting for the next TTL sweep (the
"Exact under replay" issue; docs/architecture.md, "The replication contract", rule 5).

The pipeline's TTL sweep runs once when the supervisor starts and then only after an hour,
so the equality checked here is the reducer's and the merge's doing, not the sweep's (with
both judging no expiry, this test fails: checked when it was written).
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import psycopg2
import pytest
import ray
from confluent_kafka import Consumer, TopicPartition

from engine import cql
from engine.compare import differences
from engine.snapshot import run_snapshot
from engine.sync.supervisor import get_or_start
from tests.integration.cdc_scenarios import TopicTail, fresh_sync_pipeline, wait_for_table_capture

KS = "c2pg_ttl_replay"
PG_SCHEMA = "ttl_replay"
KAFKA = {"bootstrap.servers": "127.0.0.1:9092"}


@pytest.fixture(scope="module")
def cass(stack, pipeline, cdc_keyspaces):
    assert KS in cdc_keyspaces  # empty, and past the connector's schema-refresh window
    cluster, session = cql.connect(pipeline.cassandra)
    yield session
    cluster.shutdown()


@pytest.fixture()
def pg(pipeline):
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs(application_name="c2pg-ttl-replay-test"))
    yield conn
    conn.close()


def _poll(what: str, done, timeout_s: float = 60, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        got = done()
        if got:
            return got
        assert time.monotonic() < deadline, f"not {what} within {timeout_s:.0f}s"
        time.sleep(every_s)


def _kafka_ends(topic: str) -> dict[int, int]:
    """The topic's end offsets by partition (the high watermarks)."""
    consumer = Consumer({**KAFKA, "group.id": f"c2pg-ttl-replay-{uuid.uuid4()}"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        consumer.close()


def _committed(pg, pipeline_name: str, topic: str) -> dict[int, int]:
    with pg, pg.cursor() as cur:
        cur.execute("SELECT kafka_partition, next_offset FROM _c2pg.offsets WHERE pipeline = %s AND topic = %s",
                    (pipeline_name, topic))
        return dict(cur.fetchall())


def test_expired_cells_replayed_onto_a_snapshot_are_deletions_and_the_tables_end_equal(cass, pg, pipeline,
                                                                                     ray_cluster):
    name = "ttl_" + uuid.uuid4().hex[:8]  # a new table and topic each run: the replay starts at offset 0
    t = f"{KS}.{name}"
    topic = f"c2pg.{KS}.{name}"
    cass.execute(f"CREATE TABLE {t} (pk int, ck int, a text, b text, c bigint, PRIMARY KEY (pk, ck)) WITH cdc = true")
    cfg = fresh_sync_pipeline(pg, pipeline, KS, PG_SCHEMA, name)
    # The TTL sweep then runs when the supervisor starts (before its workers have applied
    # anything, in practice) and not again for an hour: it cannot hide an expired cell here.
    cfg = cfg.model_copy(update={"sync": cfg.sync.model_copy(update={"ttl_sweep_interval": timedelta(hours=1)})})
    wait_for_table_capture(cass, KS, name, f"INSERT INTO {t} (pk, ck, a) VALUES (-1, 0, 'sentinel')")

    def q(stmt: str) -> None:
        cass.execute(stmt.format(t=t))

    base = int(time.time() * 1_000_000)
    for pk in range(4):
        for ck in range(3):
            q(f"INSERT INTO {{t}} (pk, ck, a, b, c) VALUES ({pk}, {ck}, 'a{pk}.{ck}', 'b{pk}.{ck}', {pk * 10 + ck})")
    # An expired cell shadows the older live value (the row lives on by its marker and b, c).
    q("UPDATE {t} USING TTL 2 SET a = 'short' WHERE pk = 0 AND ck IN (0, 1, 2)")
    # ... and loses to a newer write without TTL, and to a newer deletion.
    q("UPDATE {t} USING TTL 2 SET b = 'short', c = -1 WHERE pk = 1 AND ck IN (0, 1)")
    q("UPDATE {t} SET b = 'newer' WHERE pk = 1 AND ck = 0")
    q("DELETE c FROM {t} WHERE pk = 1 AND ck = 1")
    # A row born by UPDATE with a TTL only: gone in Cassandra, so gone in PostgreSQL.
    q("UPDATE {t} USING TTL 2 SET a = 'gone', b = 'gone' WHERE pk = 5 AND ck = 0")
    # A row born by UPDATE, one cell expired, one live: it stays with the live one.
    q("UPDATE {t} USING TTL 2 SET a = 'gone' WHERE pk = 5 AND ck = 1")
    q("UPDATE {t} SET b = 'stays' WHERE pk = 5 AND ck = 1")
    # At an equal write time an expired cell beats a live value (Cassandra: an expiring cell
    # beats a non-expiring one; once expired it reads as null).
    q(f"INSERT INTO {{t}} (pk, ck, a, b) VALUES (6, 0, 'live', 'kept') USING TIMESTAMP {base}")
    q(f"UPDATE {{t}} USING TIMESTAMP {base} AND TTL 2 SET a = 'dead' WHERE pk = 6 AND ck = 0")
    # An older write arriving after the expired one (USING TIMESTAMP) still loses.
    q(f"UPDATE {{t}} USING TIMESTAMP {base + 2} AND TTL 2 SET a = 'dead' WHERE pk = 6 AND ck = 1")
    q(f"INSERT INTO {{t}} (pk, ck, a, b) VALUES (6, 1, 'older', 'kept') USING TIMESTAMP {base + 1}")
    # The marker of an INSERT … USING TTL expires with its cells: replayed, the row is dead on
    # arrival, whole (the decoder gives the marker its cells' expiry).
    q("INSERT INTO {t} (pk, ck, a) VALUES (8, 0, 'row with a ttl') USING TTL 2")
    # ... and an expired INSERT at a newer time still hides an older INSERT's row marker.
    q(f"INSERT INTO {{t}} (pk, ck) VALUES (8, 1) USING TIMESTAMP {base}")
    q(f"INSERT INTO {{t}} (pk, ck, a) VALUES (8, 1, 'newer, expiring') USING TIMESTAMP {base + 1} AND TTL 2")
    # A TTL that has not run out: live, with its expiry.
    q("UPDATE {t} USING TTL 3600 SET a = 'long' WHERE pk = 2 AND ck = 0")

    # Every write above is on Kafka once the event of a write made after them is.
    with TopicTail(topic, KAFKA) as tail:
        q("INSERT INTO {t} (pk, ck, a) VALUES (-2, 0, 'end of the writes')")
        assert tail.read(1, 60, key_filter=lambda k: isinstance(k, dict) and k.get("pk") == -2), \
            "the last write's event never reached Kafka"

    # Wait (by reading Cassandra, not by sleeping) until the short TTLs have run out.
    def expired() -> bool:
        short = [r for r in cass.execute(f"SELECT pk, ck, a, b, c FROM {t} WHERE pk IN (0, 1, 5, 6, 8)")
                 if "short" in (r.a, r.b) or r.a in ("gone", "dead") or r.c == -1]
        return not short and not list(cass.execute(f"SELECT pk FROM {t} WHERE pk = 8")) \
            and not list(cass.execute(f"SELECT pk FROM {t} WHERE pk = 5 AND ck = 0"))
    _poll("the 2 s TTLs expired in Cassandra", expired, timeout_s=30)

    result = run_snapshot(cfg, cfg.tables[0], splits=2)
    assert result.ok, result
    assert differences(cass, pg, KS, name, PG_SCHEMA, name) == [], "the snapshot alone is exact"

    sup = get_or_start(cfg)
    try:
        ends = _kafka_ends(topic)
        assert sum(ends.values()) >= 25, ends
        _poll("every event applied (offsets at the topic's end)",
              lambda: all(_committed(pg, cfg.name, topic).get(p, 0) >= end for p, end in ends.items() if end),
              timeout_s=120, every_s=0.5)

        def lag_zero() -> bool:
            st = ray.get(sup.status.remote())
            parts = [p for w in st["workers"] for p in w["partitions"] if p["topic"] == topic]
            return bool(parts) and all(p["lag"] == 0 for p in parts)
        _poll("the supervisor reporting lag 0", lag_zero, timeout_s=30, every_s=0.5)

        assert differences(cass, pg, KS, name, PG_SCHEMA, name) == [], \
            "equal: the expired INSERTs' rows are gone with their markers"
        with pg, pg.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM {PG_SCHEMA}."{name}" WHERE pk = 8')
            assert cur.fetchone() == (0,)
            # The expired cells are deletions at their write times, not values, and not unknown.
            cur.execute(f'SELECT a, _c2pg_wt[1] > 0 FROM {PG_SCHEMA}."{name}" WHERE pk = 0 ORDER BY ck')
            assert cur.fetchall() == [(None, True)] * 3
            cur.execute(f'SELECT count(*) FROM {PG_SCHEMA}."{name}" WHERE pk = 5')
            assert cur.fetchone() == (1,)
            cur.execute(f'SELECT a, _c2pg_wt[1] FROM {PG_SCHEMA}."{name}" WHERE pk = 6 ORDER BY ck')
            assert cur.fetchall() == [(None, base), (None, base + 2)]
            cur.execute(f'SELECT a, _c2pg_exp[1] > %s FROM {PG_SCHEMA}."{name}" WHERE pk = 2 AND ck = 0',
                        (time.time() * 1e6,))
            assert cur.fetchone() == ("long", True)
    finally:
        ray.get(sup.stop.remote(), timeout=60)
        ray.kill(sup, no_restart=True)
