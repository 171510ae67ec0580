"""Sync end to end: Cassandra → Debezium → Kafka → c2pg actors → PostgreSQL.

Each test makes its own table in a fresh keyspace and its own pipeline name (own offsets,
own supervisor), writes to Cassandra, and waits until the PostgreSQL table equals a full
read of the Cassandra table, every row and column.
"""

from __future__ import annotations

import time

import psycopg2
import pytest
import ray

from engine import cql
from engine.config import TableConfig
from engine.sync_supervisor import get_or_start
from tests.integration.cdc_scenarios import TopicTail
from tests.integration.equality import wait_equal

KS = "c2pg_sync_test"


@pytest.fixture(scope="module")
def cass(stack, pipeline):
    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    session.execute(f"CREATE KEYSPACE {KS} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    time.sleep(2)  # the connector misses tables created in their keyspace's refresh window
    yield session
    cluster.shutdown()


@pytest.fixture()
def pg(pipeline):
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    yield conn
    conn.close()




@pytest.fixture()
def sync_table(cass, pg, pipeline, ray_cluster, request):
    """A fresh CDC table and a pipeline syncing only it; the supervisor is removed after."""
    name = request.node.name.split("[")[0].replace("test_", "")[:30]
    cass.execute(f"DROP TABLE IF EXISTS {KS}.{name}")
    cass.execute(f"CREATE TABLE {KS}.{name} (pk int, ck int, a text, b bigint, s set<text>, "
                 f"PRIMARY KEY (pk, ck)) WITH cdc = true")
    with pg, pg.cursor() as cur:
        cur.execute("CREATE SCHEMA IF NOT EXISTS sync_test")
        cur.execute(f'DROP TABLE IF EXISTS sync_test."{name}"')
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = 'sync_test' AND target_table = %s", (name,))
        cur.execute("DELETE FROM _c2pg.offsets WHERE pipeline = %s", (f"t-{name}",))
    table = TableConfig(keyspace=KS, table=name, target_schema="sync_test", target_table=name)
    cfg = pipeline.model_copy(update={"pipeline": pipeline.pipeline.model_copy(update={"name": f"t-{name}"}),
                                      "tables": (table,)})
    # The connector must know the table before the test's writes count.
    tail = TopicTail(f"c2pg.{KS}.{name}", {"bootstrap.servers": "127.0.0.1:9092"})
    deadline = time.monotonic() + 60
    while not tail.read(1, 3.0):
        assert time.monotonic() < deadline, "the connector never captured the table"
        cass.execute(f"INSERT INTO {KS}.{name} (pk, ck, a) VALUES (-1, -1, 'sentinel')")
    tail.close()
    sup = get_or_start(cfg)
    yield cfg, name, sup
    try:
        ray.get(sup.stop.remote(), timeout=60)
    finally:
        ray.kill(sup, no_restart=True)


def test_every_kind_of_write_reaches_postgres_and_the_tables_end_equal(cass, pg, sync_table):
    cfg, t, sup = sync_table
    q = lambda stmt, *args: cass.execute(stmt.format(t=f"{KS}.{t}"), args)  # noqa: E731
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
    # A set append arrives as the added element only (Debezium cannot tell append from
    # overwrite): the documented limit that scheduled reconcile repairs.
    appended = lambda d: d[0] == "mismatch" and d[2] == "s" and d[1] == ("4", "0")  # noqa: E731
    assert wait_equal(cass, pg, KS, t, "sync_test", t, timeout_s=90, expected=appended) == []
    status = ray.get(sup.status.remote())
    assert all(w["state"] in ("running", "paused") for w in status["workers"])
    assert sum(p["events"] for w in status["workers"] for p in w["partitions"]) >= 20


def test_a_late_older_write_after_a_delete_does_not_resurrect_and_a_newer_one_does(cass, pg, sync_table):
    cfg, t, sup = sync_table
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
