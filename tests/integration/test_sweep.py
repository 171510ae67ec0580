"""TTL sweep and tombstone purge (engine.sweep) on real PostgreSQL.

Rows go in through the sync writer (``SyncWriter.apply``) with cells carrying
``expires_us``, as Debezium's ``deletion_ts`` would set them; the sweep runs at a chosen
``now_us``; later writes go through the writer again, so the tests check the sweep against
the same merge sync uses.
"""

from __future__ import annotations

import psycopg2
import pytest

from engine.events import Cell, ChangeEvent, Op
from engine.pg_dialect import tombstone_table_name
from engine.pg_writer import SyncWriter
from engine.sync.reduce import reduce_events
from engine.schema import Column, TableSchema
from engine.sweep import purge_cutoff_us, purge_tombstones, sweep_expired
from engine.target import ensure_state, ensure_target
from engine.types import parse_cql_type

INT, TEXT = parse_cql_type("int"), parse_cql_type("text")
SCHEMA = TableSchema("ks", "sweep_model", (Column("pk", "partition_key", 0, INT),),
                     (Column("ck", "clustering", 0, INT),),
                     tuple(Column(n, "regular", -1, TEXT) for n in ("a", "b", "c")), True)
PG_SCHEMA = "sweep_test"


@pytest.fixture()
def conn(stack, pipeline):  # per test: a test in the other process may restart PostgreSQL
    c = psycopg2.connect(**pipeline.postgres.connect_kwargs(application_name="c2pg-sweep-test"))
    ensure_state(c)
    yield c
    c.close()


@pytest.fixture()
def target(conn):
    with conn, conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = %s", (PG_SCHEMA,))
        cur.execute(f"DROP TABLE IF EXISTS _c2pg.{tombstone_table_name(PG_SCHEMA, 'model')}")
    return ensure_target(conn, SCHEMA, PG_SCHEMA, "model", defer_token_index=False)


def upsert(ck: int, ts: int, marker: bool = False, **cells: Cell) -> ChangeEvent:
    return ChangeEvent("ks", "sweep_model", Op.UPSERT, ts, ("1", str(ck)), tuple(cells.items()),
                       row_marker=marker)


def apply(conn, target, *events: ChangeEvent) -> None:
    # The batch's clock at the epoch: the tests' tiny expiries are then in its future, so cells
    # arrive live and the sweep is what expires them (a cell dead on arrival is a deletion).
    SyncWriter(conn, target, "sweep-test").apply(reduce_events(events, 1), {}, now_us=0)


def rows(conn) -> dict:
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT ck, a, b, c, _c2pg_wt, _c2pg_exp, _c2pg_row_ts FROM {PG_SCHEMA}.model "
                    "ORDER BY ck")
        return {ck: rest for ck, *rest in cur.fetchall()}


def tombstones(conn, target) -> list[tuple]:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pk, ck, _c2pg_kind, _c2pg_column, _c2pg_deleted_at "
                    f"FROM _c2pg.{target.tomb_table} "
                    "ORDER BY ck, _c2pg_column, _c2pg_deleted_at")
        return cur.fetchall()


def test_expired_cells_become_null_and_keep_their_write_time(conn, target):
    apply(conn, target,
          # row 1 (INSERT): a expires at 150, b at 300, c never
          upsert(1, 100, True, a=Cell("a1", 100, 150), b=Cell("b1", 100, 300), c=Cell("c1", 100)),
          # row 2 (UPDATE, no row marker): every cell expires at 150
          upsert(2, 110, a=Cell("a2", 110, 150), b=Cell("b2", 110, 150)),
          # row 3 (INSERT): its only cell expires, its row marker keeps it
          upsert(3, 120, True, a=Cell("a3", 120, 150)),
          # row 4: nothing expires yet
          upsert(4, 130, a=Cell("a4", 130, 10_000)))

    assert sweep_expired(conn, target, 149) == 0, "nothing is expired before its expiry"
    assert sweep_expired(conn, target, 150) == 4, "a cell is dead at its expiry time"
    got = rows(conn)
    assert got[1] == [None, "b1", "c1", [100, 100, 100], [None, 300, None], 100]
    assert 2 not in got, "a row whose only cells expired is gone"
    assert got[3] == [None, None, None, [120, None, None], [None, None, None], 120]
    assert got[4] == ["a4", None, None, [130, None, None], [10_000, None, None], None]
    # the removed row's cells are kept as cell deletions at their write times
    assert tombstones(conn, target) == [(1, 2, "cell", "a", 110), (1, 2, "cell", "b", 110)]

    assert sweep_expired(conn, target, 200) == 0, "sweeping again changes nothing"
    assert sweep_expired(conn, target, 300) == 1
    assert rows(conn)[1][:3] == [None, None, "c1"]


def test_a_late_older_write_to_an_expired_cell_loses_and_a_newer_one_wins(conn, target):
    apply(conn, target,
          upsert(1, 100, True, a=Cell("a1", 100, 150), c=Cell("c1", 100)),
          upsert(2, 110, a=Cell("a2", 110, 150), b=Cell("b2", 110, 150)))
    assert sweep_expired(conn, target, 1_000) == 3

    # older than the expired cells, and a replay of the very same writes: all lose
    apply(conn, target, upsert(1, 90, a=Cell("older", 90)), upsert(2, 100, a=Cell("older", 100)))
    apply(conn, target, upsert(1, 100, a=Cell("a1", 100, 150)), upsert(2, 110, b=Cell("b2", 110, 150)))
    got = rows(conn)
    assert got[1][:3] == [None, None, "c1"] and got[1][3] == [100, None, 100]
    assert 2 not in got, "the cell tombstones stop the older writes to the removed row"

    # newer writes win, on the surviving row and on the removed one
    apply(conn, target, upsert(1, 101, a=Cell("newer", 101)), upsert(2, 111, b=Cell("newer", 111)))
    got = rows(conn)
    assert got[1][:4] == ["newer", None, "c1", [101, None, 100]]
    assert got[2][:4] == [None, "newer", None, [None, 111, None]]


def test_a_sweep_leaves_rows_a_concurrent_batch_holds_for_the_next_sweep(conn, target, pipeline):
    apply(conn, target, upsert(1, 100, a=Cell("a1", 100, 150)), upsert(2, 100, a=Cell("a2", 100, 150)))
    other = psycopg2.connect(**pipeline.postgres.connect_kwargs(application_name="c2pg-sweep-test-lock"))
    try:
        with other.cursor() as cur:  # a sync batch in flight holds row 1
            cur.execute(f"SELECT 1 FROM {PG_SCHEMA}.model WHERE ck = 1 FOR UPDATE")
            assert sweep_expired(conn, target, 200) == 1
        other.rollback()
    finally:
        other.close()
    assert sweep_expired(conn, target, 200) == 1
    assert rows(conn) == {}


def test_purge_removes_only_tombstones_older_than_the_cutoff(conn, target, pipeline):
    apply(conn, target,
          upsert(1, 100, a=Cell("a1", 100, 150)),                               # → cell tombstone at 100
          ChangeEvent("ks", "sweep_model", Op.ROW_DELETE, 500, ("1", "5")),      # row tombstone at 500
          ChangeEvent("ks", "sweep_model", Op.PARTITION_DELETE, 50, ("2",)))     # partition tombstone at 50
    sweep_expired(conn, target, 1_000)
    assert [t[2:] for t in tombstones(conn, target)] == [("cell", "a", 100), ("row", None, 500),
                                                         ("partition", None, 50)]

    # Just recorded: kept whatever their deletion times, until the retention has passed
    # since they arrived (an old USING TIMESTAMP must not make a deletion short-lived).
    assert purge_tombstones(conn, target, 10**6) == 0
    with conn, conn.cursor() as cur:
        cur.execute(f"UPDATE _c2pg.{target.tomb_table} SET _c2pg_recorded_at = '1970-01-01 00:00:00+00'")
    assert purge_tombstones(conn, target, 100) == 1, "strictly older than the cutoff"
    assert [t[2:] for t in tombstones(conn, target)] == [("cell", "a", 100), ("row", None, 500)]
    assert purge_tombstones(conn, target, 501) == 2
    assert tombstones(conn, target) == []
    assert purge_tombstones(conn, target, 10**18) == 0

    # the cutoff is the retention before now (default 7 days)
    week_us = 7 * 86_400 * 1_000_000
    assert purge_cutoff_us(pipeline.sync, at_us=week_us + 5) == 5
