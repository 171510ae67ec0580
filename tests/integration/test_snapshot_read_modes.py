"""What the snapshot selects besides values: TTLs only when the table may have them, and no
write times with ``--no-writetime``. Real Cassandra → Ray Data → real PostgreSQL.
"""

from __future__ import annotations

import time

import psycopg2
import pytest

from engine import cql
from engine.config import TableConfig
from engine.snapshot import SnapshotUsageError, run_snapshot

KS = "c2pg_snapshot_i17"
SCHEMA = "snap_i17"
ROWS = 200


@pytest.fixture(scope="module")
def cass(stack, pipeline):
    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    session.execute(f"CREATE KEYSPACE {KS} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    yield session
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    cluster.shutdown()


@pytest.fixture()
def pg(pipeline):
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    yield conn
    conn.close()


def _table(cass, pg, name: str, options: str = "") -> TableConfig:
    """A fresh table of ROWS rows (``a`` null in every tenth) and no target yet."""
    cass.execute(f"DROP TABLE IF EXISTS {KS}.{name}")
    cass.execute(f"CREATE TABLE {KS}.{name} (id int PRIMARY KEY, a text, b bigint, c map<text, int>) {options}")
    stmt = cass.prepare(f"INSERT INTO {KS}.{name} (id, a, b, c) VALUES (?, ?, ?, ?)")
    for i in range(ROWS):
        cass.execute(stmt, (i, None if i % 10 == 0 else f"a{i}", i, {"k": i}))
    with pg.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.{name}")
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = %s AND target_table = %s", (SCHEMA, name))
    return TableConfig(keyspace=KS, table=name, target_schema=SCHEMA, target_table=name)


def _copied(pg, name: str) -> dict[int, tuple]:
    with pg.cursor() as cur:
        cur.execute(f"SELECT id, a, b, c, _c2pg_wt, _c2pg_exp FROM {SCHEMA}.{name}")
        return {r[0]: r[1:] for r in cur.fetchall()}


def _write_times(cass, name: str) -> dict[int, list]:
    # Regular columns in Cassandra's order (by name): the order of _c2pg_wt.
    return {r.id: [r.wa, r.wb, r.wc] for r in
            cass.execute(f"SELECT id, WRITETIME(a) AS wa, WRITETIME(b) AS wb, MAXWRITETIME(c) AS wc FROM {KS}.{name}")}


def test_a_table_that_never_had_ttls_is_read_without_ttl_selectors(cass, pg, pipeline, ray_cluster):
    target = _table(cass, pg, "no_ttls")
    result = run_snapshot(pipeline, target, splits=4)
    assert result.ok and result.rows == ROWS
    assert result.ttls is False and result.write_times is True
    copied = _copied(pg, "no_ttls")
    want = _write_times(cass, "no_ttls")
    for i in range(ROWS):
        a, b, c, wt, exp = copied[i]
        assert (a, b, c) == (None if i % 10 == 0 else f"a{i}", i, {"k": i})
        assert wt == want[i] and exp is None


def test_a_ttl_found_in_the_sample_brings_the_ttl_selectors_back(cass, pg, pipeline, ray_cluster):
    target = _table(cass, pg, "one_ttl")
    cass.execute(f"UPDATE {KS}.one_ttl USING TTL 3600 SET b = -1 WHERE id = 7")
    before = int(time.time() * 1_000_000)
    result = run_snapshot(pipeline, target, splits=4)
    assert result.ok and result.ttls is True
    copied = _copied(pg, "one_ttl")
    exp = copied[7][4]
    assert exp[0] is None and exp[2] is None, "only b has a TTL"
    assert before + 3500 * 1_000_000 < exp[1] <= int(time.time() * 1_000_000) + 3600 * 1_000_000
    assert all(copied[i][4] is None for i in range(ROWS) if i != 7)


def test_a_table_default_ttl_keeps_the_ttl_selectors(cass, pg, pipeline, ray_cluster):
    target = _table(cass, pg, "default_ttl", "WITH default_time_to_live = 86400")
    result = run_snapshot(pipeline, target, splits=4)
    assert result.ok and result.ttls is True
    assert all(exp is not None and exp[1] is not None for *_, exp in _copied(pg, "default_ttl").values())


def test_no_writetime_stamps_live_cells_with_the_read_start_and_loads_new_targets_only(cass, pg, pipeline,
                                                                                     ray_cluster):
    target = _table(cass, pg, "no_wt")
    before = int(time.time() * 1_000_000)
    result = run_snapshot(pipeline, target, splits=4, write_times=False)
    assert result.ok and result.rows == ROWS and result.write_times is False
    copied = _copied(pg, "no_wt")
    stamps = {w for *_, wt, _ in copied.values() for w in wt if w is not None}
    assert len(stamps) == 1 and before <= stamps.pop() <= int(time.time() * 1_000_000)
    for i in range(ROWS):
        a, b, c, wt, _ = copied[i]
        assert (a, b, c) == (None if i % 10 == 0 else f"a{i}", i, {"k": i})
        assert (wt[0] is None) == (a is None) and wt[1] is not None and wt[2] is not None
    # Stand-in times must never compete with real ones: an existing target is refused.
    with pytest.raises(SnapshotUsageError, match="new target only"):
        run_snapshot(pipeline, target, splits=4, write_times=False)
