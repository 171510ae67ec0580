"""Collection elements (UDT fields) with their own TTL leave PostgreSQL when they expire.

Cassandra keeps a TTL per element of a non-frozen collection and per field of a non-frozen
UDT; when one runs out the collection simply lacks it, and no event says so. The read-back
reads the soonest element TTL with the value, the writer registers the cell in
``_c2pg.rechecks``, and the sweep's :func:`engine.recheck.recheck` reads it again then
(docs/sync.md, "Read-back").

The writes here are real Cassandra writes; each batch is what sync does with a change event
of them (the event's fragment is replaced by the read-back, so only its key, column and
write time matter): reduce, read back, apply. The expiry is waited for by reading Cassandra,
the recheck and the sweep are called as the supervisor calls them, and PostgreSQL is then
compared with a full read of Cassandra (``engine.compare``).
"""

from __future__ import annotations

import time

import psycopg2
import pytest

from engine import cql
from engine.compare import differences
from engine.events import Cell, ChangeEvent, Op
from engine.pg_writer import SyncWriter
from engine.readback import ReadBack
from engine.recheck import recheck
from engine.sync.reduce import reduce_events, typed_compare
from engine.schema import read_table
from engine.sweep import sweep_expired, wall_clock_us
from engine.target import ensure_state, ensure_target

KS, TABLE, PG_SCHEMA = "c2pg_element_ttl", "t", "element_ttl"
COLUMNS = ("l", "s", "m", "u")


@pytest.fixture(scope="module")
def cass(stack, pipeline, cdc_keyspaces):
    assert KS in cdc_keyspaces
    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"CREATE TYPE {KS}.pt (x int, y text)")
    session.execute(f"CREATE TABLE {KS}.{TABLE} (pk int, ck int, l list<int>, s set<text>, m map<text, int>, "
                    "u pt, a text, sl list<int> static, PRIMARY KEY (pk, ck))")
    yield session
    cluster.shutdown()


@pytest.fixture()
def pg(pipeline):
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs(application_name="c2pg-element-ttl-test"))
    ensure_state(conn)
    with conn, conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = %s", (PG_SCHEMA,))
        cur.execute("DELETE FROM _c2pg.rechecks WHERE target_schema = %s", (PG_SCHEMA,))
    yield conn
    conn.close()


def _poll(what: str, done, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"not {what} within {timeout_s:.0f}s"
        time.sleep(0.2)


def test_expired_elements_and_fields_leave_postgresql_and_the_tables_end_equal(cass, pg, pipeline):
    base = wall_clock_us()
    t = f"{KS}.{TABLE}"
    schema = read_table(cass, KS, TABLE)
    target = ensure_target(pg, schema, PG_SCHEMA, TABLE, defer_token_index=False)
    writer = SyncWriter(pg, target, "element-ttl-test")
    reader = ReadBack(schema, cass, "ONE", writer.token)

    def sync(*writes: tuple) -> None:
        """Apply what sync would for these writes: (pk, ck, write time, collections written)
        and, for an INSERT, the value of ``a``."""
        events = [ChangeEvent(KS, TABLE, Op.UPSERT, ts, (str(pk), str(ck)),
                              tuple((c, Cell("{}", ts)) for c in cols) + tuple(("a", Cell(a, ts)) for a in inserted),
                              row_marker=bool(inserted))
                  for pk, ck, ts, cols, *inserted in writes]
        reduced = reduce_events(events, 1, typed_compare(schema), now_us=wall_clock_us())
        reader.apply(reduced)
        writer.apply(reduced, {})

    def q(stmt: str, ts: int, ttl: int | None = None) -> None:
        using = f"USING TIMESTAMP {ts}" + (f" AND TTL {ttl}" if ttl else "")
        cass.execute(stmt.format(t=t, using=using))

    # 1: elements and a field with a TTL beside ones without: the elements go, the rest stays.
    q("INSERT INTO {t} (pk, ck, l, s, m, u, a) VALUES (1, 0, [1, 2], {{'a'}}, {{'k': 1}}, {{x: 1, y: 'a'}}, 'x') "
      "{using}", base)
    q("UPDATE {t} {using} SET l = l + [3], s = s + {{'b'}}, m['j'] = 2, u.y = 'b' WHERE pk = 1 AND ck = 0",
      base + 1, ttl=2)
    # 2: a row born by an UPDATE of a collection with a TTL: the row goes with its elements.
    q("UPDATE {t} {using} SET l = [7] WHERE pk = 1 AND ck = 1", base + 1, ttl=2)
    # 3: two TTLs in one list: after the first, the list is read again and waits for the second.
    q("INSERT INTO {t} (pk, ck, a, l) VALUES (1, 2, 'keep', [5]) {using}", base)
    q("UPDATE {t} {using} SET l = l + [6] WHERE pk = 1 AND ck = 2", base + 1, ttl=2)
    q("UPDATE {t} {using} SET l = l + [8] WHERE pk = 1 AND ck = 2", base + 2, ttl=3600)
    # 4: an element with a TTL, then a newer overwrite without: the registration is stale.
    q("INSERT INTO {t} (pk, ck, a, l) VALUES (1, 3, 'keep', [4]) {using}", base)
    q("UPDATE {t} {using} SET l = l + [9] WHERE pk = 1 AND ck = 3", base + 1, ttl=2)
    # 5: a static list with an element that expires: every row of the partition holds it.
    q("UPDATE {t} {using} SET sl = [1] WHERE pk = 1", base)
    q("UPDATE {t} {using} SET sl = sl + [99] WHERE pk = 1", base + 1, ttl=2)
    sync((1, 0, base, COLUMNS, "x"), (1, 0, base + 1, COLUMNS), (1, 1, base + 1, ("l",)),
         (1, 2, base, ("l",), "keep"), (1, 2, base + 1, ("l",)), (1, 2, base + 2, ("l",)),
         (1, 3, base, ("l",), "keep"), (1, 3, base + 1, ("l",)))
    assert differences(cass, pg, KS, TABLE, PG_SCHEMA, TABLE) == [], "equal before anything expired"
    q("UPDATE {t} {using} SET l = [10] WHERE pk = 1 AND ck = 3", base + 3)
    sync((1, 3, base + 3, ("l",)))
    with pg, pg.cursor() as cur:
        cur.execute("SELECT key, col FROM _c2pg.rechecks WHERE target_schema = %s ORDER BY key, col", (PG_SCHEMA,))
        assert cur.fetchall() == [(["1", "0"], "l"), (["1", "0"], "m"), (["1", "0"], "s"), (["1", "0"], "sl"),
                                  (["1", "0"], "u"), (["1", "1"], "l"), (["1", "1"], "sl"), (["1", "2"], "l"),
                                  (["1", "2"], "sl"), (["1", "3"], "l"), (["1", "3"], "sl")]

    def expired() -> bool:
        # Every 2 s TTL, the last written included: Cassandra counts a TTL from when the
        # statement ran, so on a slow machine the later statements' elements outlive the first.
        row = cass.execute(f"SELECT l, sl FROM {t} WHERE pk = 1 AND ck = 0").one()
        gone = cass.execute(f"SELECT * FROM {t} WHERE pk = 1 AND ck = 1").one() is None
        two = cass.execute(f"SELECT l FROM {t} WHERE pk = 1 AND ck = 2").one()
        return (row is not None and row.l == [1, 2] and row.sl == [1] and gone
                and two is not None and two.l == [5, 8])
    _poll("the 2 s element TTLs expired in Cassandra", expired)
    assert differences(cass, pg, KS, TABLE, PG_SCHEMA, TABLE) != [], "PostgreSQL still holds the expired elements"

    # The recheck: row 0's five cells and row 3's static get Cassandra's values, row 1's list
    # and static are left to expire, row 3's list entry is stale (overwritten since). Row 2
    # is held by a sync batch: its two entries are kept for later.
    other = psycopg2.connect(**pipeline.postgres.connect_kwargs(application_name="c2pg-element-ttl-lock"))
    try:
        with other, other.cursor() as cur:
            cur.execute(f"SELECT 1 FROM {PG_SCHEMA}.{TABLE} WHERE pk = 1 AND ck = 2 FOR UPDATE")
            first = recheck(pg, target, cass, "ONE", wall_clock_us())
        assert (first.updated, first.emptied, first.stale, first.held) == (6, 2, 1, 2), first
    finally:
        other.close()
    now = wall_clock_us()
    second = recheck(pg, target, cass, "ONE", now)
    assert (second.updated, second.emptied, second.stale, second.held) == (2, 0, 0, 0), second
    sweep_expired(pg, target, now)
    assert differences(cass, pg, KS, TABLE, PG_SCHEMA, TABLE) == []
    with pg, pg.cursor() as cur:
        cur.execute(f"SELECT ck, l, a, sl FROM {PG_SCHEMA}.{TABLE} WHERE pk = 1 ORDER BY ck")
        assert cur.fetchall() == [(0, [1, 2], "x", [1]), (2, [5, 8], "keep", [1]), (3, [10], "keep", [1])]
        cur.execute("SELECT key, col, at_us > %s FROM _c2pg.rechecks WHERE target_schema = %s",
                    (now + 3_000_000_000, PG_SCHEMA))
        assert cur.fetchall() == [(["1", "2"], "l", True)], "only the hour-long TTL is left to recheck"


def test_a_repaired_collection_is_registered_for_its_element_expiry(cass, pg, pipeline, ray_cluster):
    """Reconcile's repair writes Cassandra's collection through the same writer: a value
    whose elements carry TTLs is registered for its recheck like sync's."""
    from datetime import timedelta

    from engine.config import TableConfig
    from engine.reconcile import run_reconcile

    t = f"{KS}.{TABLE}"
    schema = read_table(cass, KS, TABLE)
    ensure_target(pg, schema, PG_SCHEMA, TABLE, defer_token_index=False)
    cass.execute(f"TRUNCATE {t}")
    cass.execute(f"INSERT INTO {t} (pk, ck, l, a) VALUES (2, 0, [1], 'r')")
    cass.execute(f"UPDATE {t} USING TTL 3600 SET l = l + [2] WHERE pk = 2 AND ck = 0")
    table = TableConfig(keyspace=KS, table=TABLE, target_schema=PG_SCHEMA, target_table=TABLE)
    cfg = pipeline.model_copy(update={
        "tables": (table,),
        "reconcile": pipeline.reconcile.model_copy(update={"recheck_delay": timedelta(seconds=0)})})
    result = run_reconcile(cfg, table, repair=True, splits=1, progress=False)
    assert (result.drift, result.unrepaired) == (1, 0), result.stats()
    assert differences(cass, pg, KS, TABLE, PG_SCHEMA, TABLE) == []
    with pg, pg.cursor() as cur:
        cur.execute("SELECT key, col, at_us - %s FROM _c2pg.rechecks WHERE target_schema = %s",
                    (wall_clock_us(), PG_SCHEMA))
        (key, col, left_us), = cur.fetchall()
    assert (key, col) == (["2", "0"], "l") and 3_590_000_000 < left_us <= 3_600_000_000, left_us
