"""The sync writer's SQL against the Python model of the target, on real PostgreSQL.

tests/unit/test_reduce.py proves the model (``lww_model.Target``) equal to Cassandra's
semantics for any events; here random event batches go through ``SyncWriter.apply`` into a
real table and must leave exactly what the model (and so the Cassandra reference) holds.
"""

from __future__ import annotations

import io
import os
import time

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import Cell, ChangeEvent, Op
from engine.sync.reduce import reduce_events
from engine.schema import Column, TableSchema
from engine.target import ensure_state, ensure_target
from engine.pg_writer import DeadLetter, SyncWriter
from engine.types import parse_cql_type
from tests.unit.lww_model import _desc_compare, _int_compare
from tests.unit.test_reduce import NOW as UNIT_NOW
from tests.unit.test_reduce import as_deletions, events, reference, ttl_events

# Each example rebuilds a real table: 60 in the suite; C2PG_PROPERTY_EXAMPLES=500 for a deep run.
EXAMPLES = int(os.environ.get("C2PG_PROPERTY_EXAMPLES", "60"))
INT, TEXT = parse_cql_type("int"), parse_cql_type("text")
SCHEMA = TableSchema("ks", "writer_model", (Column("pk", "partition_key", 0, INT),),
                     (Column("ck", "clustering", 0, INT),),
                     tuple(Column(n, "regular", -1, TEXT) for n in ("a", "b", "c")), True)
# The same with a DESC clustering column: range bounds arrive in clustering order.
DESC = TableSchema("ks", "writer_model", SCHEMA.partition_key, (Column("ck", "clustering", 0, INT, descending=True),),
                   SCHEMA.regular, True)


@pytest.fixture()
def conn(stack, pipeline):  # per test: a test in the other process may restart PostgreSQL
    c = psycopg2.connect(**pipeline.postgres.connect_kwargs(application_name="c2pg-writer-test"))
    ensure_state(c)
    yield c
    c.close()


def _fresh_target(conn, schema=SCHEMA):
    with conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS writer_test CASCADE")
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = 'writer_test'")
        from engine.pg_dialect import tombstone_table_name
        cur.execute(f"DROP TABLE IF EXISTS _c2pg.{tombstone_table_name('writer_test', 'model')}")
    return ensure_target(conn, schema, "writer_test", "model", defer_token_index=False)


def _materialize(conn) -> dict:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pk, ck, a, b, c FROM writer_test.model")
        out = {}
        for pk, ck, *vals in cur.fetchall():
            out[(str(pk), str(ck))] = {n: v for n, v in zip("abc", vals) if v is not None}
        return out


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(events(), max_size=20), st.randoms(use_true_random=False),
       st.lists(st.integers(min_value=0, max_value=25), max_size=5), st.booleans())
def test_sql_writer_equals_the_reference_for_any_batches(conn, evs, rnd, cuts, descending):
    schema, compare = (DESC, _desc_compare) if descending else (SCHEMA, _int_compare)
    target = _fresh_target(conn, schema)
    writer = SyncWriter(conn, target, "test")
    shuffled = list(evs)
    rnd.shuffle(shuffled)
    bounds = [0, *sorted({c % (len(shuffled) + 1) for c in cuts}), len(shuffled)]
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            writer.apply(reduce_events(shuffled[a:b], 1, compare), {("t", 0): b})
    assert _materialize(conn) == reference(evs, compare)


def test_offsets_move_with_the_data_and_dead_letters_are_kept(conn):
    target = _fresh_target(conn)
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM _c2pg.offsets WHERE pipeline = 'test-offsets'")
        cur.execute("DELETE FROM _c2pg.dead_letters WHERE pipeline = 'test-offsets'")
    writer = SyncWriter(conn, target, "test-offsets")
    ev = ChangeEvent("ks", "writer_model", Op.UPSERT, 5, ("1", "1"), (("a", Cell("x", 5)),), row_marker=True)
    dead = DeadLetter("t", 0, 41, '{"pk":1}', "{not json", "DecodeError", "malformed JSON")
    writer.apply(reduce_events([ev], 1), {("t", 0): 42, ("t", 1): 7}, [dead])
    with conn, conn.cursor() as cur:
        cur.execute("SELECT topic, kafka_partition, next_offset FROM _c2pg.offsets WHERE pipeline = 'test-offsets' "
                    "ORDER BY 2")
        assert cur.fetchall() == [("t", 0, 42), ("t", 1, 7)]
        cur.execute("SELECT kafka_offset, raw_value, error FROM _c2pg.dead_letters WHERE pipeline = 'test-offsets'")
        assert cur.fetchall() == [(41, "{not json", "malformed JSON")]
        cur.execute("SELECT _c2pg_token, _c2pg_wt, _c2pg_row_ts FROM writer_test.model")
        token, wt, row_ts = cur.fetchone()
    from cassandra.murmur3 import murmur3
    import struct
    assert token == murmur3(struct.pack(">i", 1)) and wt == [5, None, None] and row_ts == 5
    # offsets never move back (a replayed older batch)
    writer.apply(reduce_events([ev], 1), {("t", 0): 10})
    with conn, conn.cursor() as cur:
        cur.execute("SELECT next_offset FROM _c2pg.offsets WHERE pipeline = 'test-offsets' AND kafka_partition = 0")
        assert cur.fetchone()[0] == 42


U1 = "0000ffff-0000-1000-8000-000000000000"  # time 0x00000000000ffff
U2 = "00000000-0001-1000-8000-000000000000"  # time 0x000000100000000: later than U1, smaller bytes
U3 = "00000005-0001-1000-8000-000000000000"  # time 0x000000100000005


@pytest.mark.parametrize("kind, values, start, end, deleted", [
    # Cassandra orders text by UTF-8 bytes (B < Z < a < b); an ICU collation would not.
    ("text", ["B", "Z", "a", "b"], ("C", True), ("b", False), {"Z", "a"}),
    # A timeuuid by its time (U1 < U2 < U3); PostgreSQL's uuid order is by bytes (U2 < U3 < U1).
    ("timeuuid", [U1, U2, U3], (U1, False), (U3, True), {U2, U3}),
])
def test_range_deletions_follow_cassandra_clustering_order(conn, kind, values, start, end, deleted):
    from engine.events import Bound
    from engine.sync.reduce import Reduced, RowWrite, Tombstone

    schema = TableSchema("ks", "writer_model", SCHEMA.partition_key,
                         (Column("ck", "clustering", 0, parse_cql_type(kind)),), SCHEMA.regular, True)
    target = _fresh_target(conn, schema)
    if kind == "text":  # as in a database whose default collation is not C
        with conn, conn.cursor() as cur:
            cur.execute('ALTER TABLE writer_test.model ALTER COLUMN ck TYPE text COLLATE "en-x-icu"')
    writer = SyncWriter(conn, target, "test")
    writer.apply(Reduced({("1", v): RowWrite(("1", v), {"a": Cell(f"row {v}", 10)}) for v in values}, []), {})
    writer.apply(Reduced({}, [Tombstone("range", ("1",), 20, Bound((start[0],), start[1]),
                                        Bound((end[0],), end[1]))]), {})
    # A write older than the deletion, arriving late, stays deleted too.
    writer.apply(Reduced({("1", v): RowWrite(("1", v), {"b": Cell("late", 15)}) for v in values}, []), {})
    with conn, conn.cursor() as cur:
        cur.execute("SELECT ck::text, b FROM writer_test.model")
        rows = dict(cur.fetchall())
    assert set(rows) == set(values) - deleted
    assert all(b == "late" for b in rows.values())


# --- A cell dead on arrival is a deletion at its write time, in the merge too -------------

NOW = 1_700_000_000_000_000  # the batch clock the writer passes to the merge (µs)
PAST, FUTURE = NOW - 60_000_000, NOW + 3_600_000_000


def _rows(conn) -> dict:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT ck, a, b, c, _c2pg_wt, _c2pg_row_ts FROM writer_test.model ORDER BY ck")
        return {ck: rest for ck, *rest in cur.fetchall()}


def _stage(writer, rows: dict, now_us: int | None = NOW, marker: set = frozenset()) -> None:
    """Apply rows as staged, bypassing the reducer's judgment: the merge alone decides."""
    from engine.sync.reduce import Reduced, RowWrite

    writer.apply(Reduced({("1", str(ck)): RowWrite(("1", str(ck)), cells, 1 if ck in marker else None)
                          for ck, cells in rows.items()}, []), {}, now_us=now_us)


def _dead(t: int) -> Cell:
    return Cell("dead", t, PAST)


def test_the_merge_applies_a_staged_cell_expired_at_its_clock_as_a_deletion_at_its_time(conn):
    target = _fresh_target(conn)
    writer = SyncWriter(conn, target, "test")
    # Stored: a, b, c live at time 10, without TTL (c with a TTL still running).
    _stage(writer, {ck: {"a": Cell("stored", 10), "b": Cell("stored", 10), "c": Cell("stored", 10, FUTURE)}
                    for ck in (1, 2)}, marker={1, 2})
    _stage(writer, {1: {"a": _dead(15), "b": _dead(5), "c": _dead(10)},  # newer, older, equal time
                    2: {"a": Cell("live", 10, FUTURE + 1), "b": _dead(10)},  # equal time: live; dead
                    3: {"a": _dead(20), "b": _dead(20)},                   # a new key: only dead cells
                    4: {"a": _dead(20), "b": Cell("live", 20)}})           # a new key: one live cell
    got = _rows(conn)
    assert got[1] == [None, "stored", None, [15, 10, 10], 1], "newer and equal-time dead cells delete"
    assert got[2][:4] == ["live", None, "stored", [10, 10, 10]], \
        "at an equal time a dead cell beats a live one; a live one of later expiry still wins its tie"
    assert 3 not in got, "a row of dead cells only is not kept ..."
    assert got[4] == [None, "live", None, [20, 20, None], None]
    # ... but its cell deletions are: older writes arriving later lose, newer ones win.
    _stage(writer, {3: {"a": Cell("older", 19)}, 1: {"a": Cell("older", 14), "c": Cell("same", 10)}})
    assert 3 not in _rows(conn) and _rows(conn)[1][:3] == [None, "stored", None]
    _stage(writer, {3: {"b": Cell("newer", 21)}})
    assert _rows(conn)[3][:3] == [None, "newer", None]


def test_a_stored_cell_expired_but_not_swept_is_a_deletion_for_a_live_tie(conn):
    from engine.sweep import sweep_expired

    target = _fresh_target(conn)
    writer = SyncWriter(conn, target, "test")
    _stage(writer, {1: {"a": Cell("short", 10, NOW + 1_000_000)}}, now_us=NOW, marker={1})  # live when written
    later = NOW + 2_000_000                                                                 # ... expired now
    _stage(writer, {1: {"a": Cell("long", 10, NOW + 3_600_000_000)}}, now_us=later)
    assert _rows(conn)[1][0] == "short", "not replaced by a live value of the same time"
    assert sweep_expired(conn, target, later) == 1
    assert _rows(conn)[1][:4] == [None, None, None, [10, None, None]]


def test_without_a_batch_clock_the_merge_judges_by_postgres_time(conn):
    target = _fresh_target(conn)
    writer = SyncWriter(conn, target, "test")
    wall = time.time_ns() // 1000
    _stage(writer, {1: {"a": Cell("expired", 10, wall - 10_000_000), "b": Cell("live", 10, wall + 3_600_000_000)}},
           now_us=None, marker={1})
    assert _rows(conn)[1][:4] == [None, "live", None, [10, 10, None]]


@settings(max_examples=max(EXAMPLES // 2, 10), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ttl_events(), max_size=20), st.randoms(use_true_random=False),
       st.lists(st.integers(min_value=0, max_value=25), max_size=5))
def test_sql_writer_with_expired_cells_equals_the_reference_read_as_deletions(conn, evs, rnd, cuts):
    """Sync's path: the reducer and the merge judge expiry by one clock (``UNIT_NOW``)."""
    target = _fresh_target(conn)
    writer = SyncWriter(conn, target, "test")
    shuffled = list(evs)
    rnd.shuffle(shuffled)
    bounds = [0, *sorted({c % (len(shuffled) + 1) for c in cuts}), len(shuffled)]
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            # As sync does: the reducer and the merge judge expiry by the same clock. (The
            # reducer must judge too: two cells of one time inside a batch, one expired and one
            # live with a later expiry, must reduce to the deletion, not the later expiry.)
            batch = reduce_events(shuffled[a:b], 1, _int_compare, now_us=UNIT_NOW)
            writer.apply(batch, {("t", 0): b}, now_us=UNIT_NOW)
    assert _materialize(conn) == reference(as_deletions(evs, UNIT_NOW), _int_compare, now_us=UNIT_NOW)


def _markers(writer, markers: dict, now_us: int) -> None:
    """Apply bare row markers (ck → (time, expiry)), as INSERTs without cells."""
    from engine.sync.reduce import Reduced, RowWrite

    writer.apply(Reduced({("1", str(ck)): RowWrite(("1", str(ck)), {}, t, exp) for ck, (t, exp) in markers.items()},
                         []), {}, now_us=now_us)


def _marker_rows(conn) -> dict:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT ck, a, _c2pg_row_ts, _c2pg_row_exp FROM writer_test.model ORDER BY ck")
        return {ck: rest for ck, *rest in cur.fetchall()}


def test_a_row_marker_follows_cassandra_liveness_and_dies_at_its_expiry(conn):
    from engine.sweep import sweep_expired

    target = _fresh_target(conn)
    writer = SyncWriter(conn, target, "test")
    # 1: dead on arrival → no row; its marker still shadows an older INSERT, not a newer one.
    _markers(writer, {1: (10, PAST)}, NOW)
    assert 1 not in _marker_rows(conn)
    _markers(writer, {1: (9, None)}, NOW)
    assert 1 not in _marker_rows(conn), "an older INSERT loses to the expired newer one"
    _markers(writer, {1: (11, None)}, NOW)
    assert _marker_rows(conn)[1] == [None, 11, None]
    # 2: equal time: a marker with a TTL beats one without; of two, the later expiry.
    _markers(writer, {2: (10, None)}, NOW)
    _markers(writer, {2: (10, FUTURE)}, NOW)
    assert _marker_rows(conn)[2] == [None, 10, FUTURE]
    _markers(writer, {2: (10, None)}, NOW)
    assert _marker_rows(conn)[2] == [None, 10, FUTURE], "no TTL loses the tie"
    # 3: live when written, with a cell without TTL written later (an UPDATE): when the
    # marker expires the cell keeps the row, the marker goes (and is remembered).
    _markers(writer, {3: (10, NOW + 1_000_000), 4: (10, NOW + 1_000_000)}, NOW)
    _stage(writer, {3: {"a": Cell("update", 12)}})
    later = NOW + 2_000_000
    sweep_expired(conn, target, later)
    rows = _marker_rows(conn)
    assert rows[3] == ["update", None, None] and 4 not in rows
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT ck, _c2pg_deleted_at FROM _c2pg.{target.tomb_table} "
                    "WHERE _c2pg_kind = 'cell' AND _c2pg_column = '_c2pg_row_ts' ORDER BY ck")
        assert cur.fetchall() == [(1, 10), (3, 10), (4, 10)]
    # A replayed older INSERT does not bring back either row; the sweep finds nothing more.
    _markers(writer, {3: (9, None), 4: (9, None)}, later)
    rows = _marker_rows(conn)
    assert rows[3] == ["update", None, None] and 4 not in rows
    assert sweep_expired(conn, target, later) == 0


def test_a_target_made_before_the_marker_expiry_column_gains_it(conn):
    target = _fresh_target(conn)
    with conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE writer_test.model DROP COLUMN _c2pg_row_exp")
    ensure_target(conn, target.schema, "writer_test", "model")
    _markers(SyncWriter(conn, target, "test"), {1: (10, FUTURE)}, NOW)
    assert _marker_rows(conn)[1] == [None, 10, FUTURE]


STATIC = TableSchema("ks", "writer_model", SCHEMA.partition_key, SCHEMA.clustering,
                     (Column("a", "regular", -1, TEXT), Column("st", "static", -1, TEXT)), True)


def test_a_partition_holding_only_statics_is_its_static_row_and_only_then(conn):
    """ADR 0007: the static row (clustering NULL) lives by its statics and exists only while
    its partition has no clustering row."""
    from engine.sync.reduce import Reduced, RowWrite, Tombstone
    from engine.sweep import sweep_expired

    target = _fresh_target(conn, STATIC)
    writer = SyncWriter(conn, target, "test")

    def apply(rows: dict, tombs=(), now_us=NOW):
        writer.apply(Reduced({k: RowWrite(k, cells) for k, cells in rows.items()}, list(tombs)), {}, now_us=now_us)

    def stored():
        with conn, conn.cursor() as cur:
            cur.execute("SELECT ck, a, st, _c2pg_row_ts FROM writer_test.model WHERE pk = 1 ORDER BY ck")
            return cur.fetchall()

    static_row = ("1", None)
    apply({static_row: {"st": Cell("s", 10)}})                       # as read back: statics, no rows
    assert stored() == [(None, None, "s", None)]
    apply({("1", "1"): {"a": Cell("r", 11), "st": Cell("s", 10)}})   # a row arrives, with the statics
    assert stored() == [(1, "r", "s", None)], "the static row goes once the partition has a row"
    apply({static_row: {"st": Cell("s", 10)}}, [Tombstone("row", ("1", "1"), 12)])  # its last row deleted
    assert stored() == [(None, None, "s", None)]
    apply({}, [Tombstone("range", ("1",), 13)])                      # range and row deletions leave statics
    assert stored() == [(None, None, "s", None)]
    apply({}, [Tombstone("partition", ("1",), 14)])                  # a partition deletion does not
    assert stored() == []
    apply({static_row: {"st": Cell("ttl", 15, NOW + 1_000_000)}})    # statics with a TTL: gone at expiry
    assert stored() == [(None, None, "ttl", None)]
    sweep_expired(conn, target, NOW + 2_000_000)
    assert stored() == []


INET = TableSchema("ks", "writer_model", SCHEMA.partition_key, (Column("ck", "clustering", 0, parse_cql_type("inet")),),
                   (Column("a", "regular", -1, TEXT),), True)
ADDRESSES = ["::1", "10.0.0.1", "10.0.0.9", "10.0.0.10", "192.168.0.1", "fe80::1"]


def test_a_range_deletion_over_inet_follows_cassandra_order_in_the_reducer_and_the_merge(conn, pipeline):
    """Cassandra orders inet by its address bytes (InetAddressType is BYTE_ORDER): ``::1``
    before ``10.0.0.1``, ``10.0.0.9`` before ``10.0.0.10``. PostgreSQL puts every IPv4 address
    first, and text order puts ``10.0.0.10`` before ``10.0.0.9``. The truth is read from a
    real Cassandra table given the same writes."""
    from engine import cql
    from engine.events import Bound
    from engine.sync.reduce import typed_compare

    cluster, session = cql.connect(pipeline.cassandra)
    try:
        session.execute("CREATE KEYSPACE IF NOT EXISTS c2pg_writer_test WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        session.execute("DROP TABLE IF EXISTS c2pg_writer_test.inet_order")
        session.execute("CREATE TABLE c2pg_writer_test.inet_order (pk int, ck inet, a text, PRIMARY KEY (pk, ck))")
        for address in ADDRESSES:
            session.execute("INSERT INTO c2pg_writer_test.inet_order (pk, ck, a) VALUES (1, %s, 'x') "
                            "USING TIMESTAMP 10", (address,))
        session.execute("DELETE FROM c2pg_writer_test.inet_order USING TIMESTAMP 20 WHERE pk = 1 "
                        "AND ck > '::1' AND ck <= '10.0.0.10'")
        kept = {str(r.ck) for r in session.execute("SELECT ck FROM c2pg_writer_test.inet_order WHERE pk = 1")}
    finally:
        cluster.shutdown()
    assert kept == {"::1", "192.168.0.1", "fe80::1"}  # Cassandra's byte order, as documented

    def upserts(t: int):
        return [ChangeEvent("ks", "writer_model", Op.UPSERT, t, ("1", a), (("a", Cell("x", t)),), row_marker=True)
                for a in ADDRESSES]
    delete = ChangeEvent("ks", "writer_model", Op.RANGE_DELETE, 20, ("1",),
                         range_start=Bound(("::1",), False), range_end=Bound(("10.0.0.10",), True))
    compare = typed_compare(INET)
    # The reducer (deletion and writes in one batch), and the merge (stored rows, then the deletion; and a
    # deletion recorded before older writes arrive).
    for batches in ([upserts(10) + [delete]], [upserts(10), [delete]], [[delete], upserts(10)]):
        target = _fresh_target(conn, INET)
        writer = SyncWriter(conn, target, "test")
        for batch in batches:
            writer.apply(reduce_events(batch, 1, compare), {})
        with conn, conn.cursor() as cur:
            cur.execute("SELECT host(ck) FROM writer_test.model")
            assert {r[0] for r in cur.fetchall()} == kept, batches


# Clustering types whose Cassandra order is not PostgreSQL's order of the mapped type, with
# values chosen to hit each rule: a float's -0.0 before 0.0 and NaN last; uuid by version, then
# a version 1 by its time; timeuuid by time, then its low half as signed bytes; frozen lists
# element by element, then the shorter first (PostgreSQL's jsonb puts the shorter array first);
# sets and maps by elements in their own order; tuples and UDTs field by field, null first.
_U1 = ["00000005-0000-1000-8000-000000000000", "00000001-0000-1001-0000-000000000000",
       "00000000-0000-1000-ff00-000000000000", "00000000-0000-1000-8000-000000000081",
       "00000000-0000-1000-8000-000000000001"]
ORDER_CASES = {
    "double": "-1.5, -0.0, 0.0, 2.0, NaN, -Infinity, Infinity, 10.0, 9.0",
    "float": "-0.0, 0.0, NaN, -2.5, 3.25",
    "uuid": ", ".join(_U1[:3] + ["f0000000-0000-4000-8000-000000000000", "00000000-0000-4000-0000-000000000001",
                                 "ffffffff-ffff-2fff-8fff-ffffffffffff"]),
    "timeuuid": ", ".join(_U1),
    "frozen<list<int>>": "[1, 2], [5], [1], [1, 2, 3], [-1], [10], [9]",
    "frozen<set<text>>": "{'b'}, {'a', 'z'}, {'a'}, {'B'}, {'é'}",
    "frozen<map<int, text>>": "{1: 'b'}, {1: 'a', 2: 'a'}, {1: 'a'}, {-5: 'x'}, {10: ''}",
    "tuple<int, text>": "(1, 'b'), (1, 'a'), (-1, 'z'), (null, 'a'), (1, null), (2, '')",
    "frozen<list<frozen<list<int>>>>": "[[1, 2]], [[5]], [[1], [0]], [[1, 2], []], [[-3]]",
    "decimal": "1.10, 1.01, -0.5, 0, 12E3, 0.0012, -12.5, 100",
    "frozen<order_pt>": "{x: 1, y: 'b'}, {x: 1, y: 'a'}, {x: null, y: 'z'}, {x: -4, y: null}, {x: 1}",
}


def _order_table(session, i: int, cql_type: str, literals: str) -> tuple[TableSchema, list[tuple[str, str]]]:
    """Write each literal as a clustering value of a real table; return the table's schema
    and the rows as Cassandra returns them — in Cassandra's clustering order — as
    (canonical text of the value, its number in ``literals``)."""
    from engine.schema import read_table

    table = f"order_{i}"
    session.execute(f"DROP TABLE IF EXISTS c2pg_writer_test.{table}")
    session.execute(f"CREATE TABLE c2pg_writer_test.{table} (pk int, ck {cql_type}, a text, PRIMARY KEY (pk, ck))")
    parts = [p.strip() for p in _split_literals(literals)]
    for n, literal in enumerate(parts):
        session.execute(f"INSERT INTO c2pg_writer_test.{table} (pk, ck, a) VALUES (1, {literal}, '{n}') "
                        "USING TIMESTAMP 10")
    schema = read_table(session, "c2pg_writer_test", table)
    ck_codec = schema.codecs()[1]
    rows = session.execute(f"SELECT ck, a FROM c2pg_writer_test.{table} WHERE pk = 1")
    return schema, [(ck_codec.from_driver(r.ck), r.a) for r in rows]


def _split_literals(text: str) -> list[str]:
    """Split a comma-separated list of CQL literals at top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [*out, cur]


def test_clustering_values_of_every_type_order_as_in_cassandra_in_the_reducer_and_the_merge(conn, pipeline):
    """The reducer's comparison and the merge's SQL order every value exactly as a real
    Cassandra table orders its clustering column; a range deletion over each type removes
    what Cassandra removed, in one batch and against stored rows."""
    from functools import cmp_to_key

    from engine import cql
    from engine.events import Bound
    from engine.pg_dialect import clustering_order_key
    from engine.sync.reduce import typed_compare
    from psycopg2 import sql

    cluster, session = cql.connect(pipeline.cassandra)
    try:
        session.execute("CREATE KEYSPACE IF NOT EXISTS c2pg_writer_test WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        session.execute("CREATE TYPE IF NOT EXISTS c2pg_writer_test.order_pt (x int, y text)")
        cases = []
        for i, (cql_type, literals) in enumerate(ORDER_CASES.items()):
            schema, rows = _order_table(session, i, cql_type, literals)
            lo, hi = rows[1], rows[-2]
            session.execute(f"DELETE FROM c2pg_writer_test.order_{i} USING TIMESTAMP 20 WHERE pk = 1 "
                            f"AND ck > {_split_literals(literals)[int(lo[1])].strip()} "
                            f"AND ck <= {_split_literals(literals)[int(hi[1])].strip()}")
            kept = {r.a for r in session.execute(f"SELECT a FROM c2pg_writer_test.order_{i} WHERE pk = 1")}
            cases.append((cql_type, schema, rows, kept))
    finally:
        cluster.shutdown()

    for cql_type, schema, rows, kept in cases:
        texts = [t for t, _ in rows]
        assert kept == {rows[0][1], rows[1][1], rows[-1][1]}, cql_type  # (lo, hi]: the first two and the last stay
        # The reducer's order.
        compare = typed_compare(schema)
        shuffled = list(reversed(texts))
        assert sorted(shuffled, key=cmp_to_key(lambda a, b, f=compare: f(0, a, b))) == texts, cql_type
        # The merge's order, on values stored in their mapped PostgreSQL type.
        ck = schema.clustering[0]
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE TEMP TABLE order_check (n int, ck {}) ON COMMIT DROP").format(
                sql.SQL(ck.pg_sql_type)))
            cur.copy_expert("COPY order_check (n, ck) FROM STDIN",
                            io.StringIO("".join(f"{n}\t{t}\n" for n, t in reversed(list(enumerate(texts))))))
            cur.execute(sql.SQL("SELECT n FROM order_check ORDER BY {}").format(
                clustering_order_key(sql.SQL("ck"), ck.cql_type)))
            assert [r[0] for r in cur.fetchall()] == list(range(len(texts))), cql_type
        # A range deletion: in one batch, against stored rows, and recorded before the rows arrive.
        # (-0.0 and 0.0 are two clustering values in Cassandra but one key in PostgreSQL: the
        # writer gets 0.0 alone, docs/types.md.)
        bounds = (rows[1][0], rows[-2][0])
        rows = [(t, n) for t, n in rows if t not in ("-0", "-0.0")]
        kept = kept & {n for _, n in rows}
        model = TableSchema("ks", "writer_model", SCHEMA.partition_key, (Column("ck", "clustering", 0, ck.cql_type),),
                            (Column("a", "regular", -1, TEXT),), True)
        upserts = [ChangeEvent("ks", "writer_model", Op.UPSERT, 10, ("1", t), (("a", Cell(n, 10)),), row_marker=True)
                   for t, n in rows]
        delete = ChangeEvent("ks", "writer_model", Op.RANGE_DELETE, 20, ("1",),
                             range_start=Bound((bounds[0],), False), range_end=Bound((bounds[1],), True))
        for batches in ([upserts + [delete]], [upserts, [delete]], [[delete], upserts]):
            target = _fresh_target(conn, model)
            writer = SyncWriter(conn, target, "test")
            for batch in batches:
                writer.apply(reduce_events(batch, 1, typed_compare(model)), {})
            with conn, conn.cursor() as cur:
                cur.execute("SELECT a FROM writer_test.model")
                assert {r[0] for r in cur.fetchall()} == kept, (cql_type, [len(b) for b in batches])


def test_a_target_dropped_by_its_owner_starts_again_without_its_old_deletions_or_key(conn):
    """A target table dropped in PostgreSQL leaves c2pg's state of it in _c2pg (catalog row,
    tombstone table, rechecks). A new target of the same name — here for a table recreated in
    Cassandra with another key — must start clean: the old tombstone table's index named the
    old key, and creating the new one failed (``UndefinedColumn``), crash-looping the workers."""
    target = _fresh_target(conn)
    writer = SyncWriter(conn, target, "test")
    writer.apply(reduce_events([ChangeEvent("ks", "writer_model", Op.ROW_DELETE, 50, ("1", "1"))], 1), {})
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM _c2pg.{target.tomb_table}")
        assert cur.fetchone() == (1,)
        cur.execute("INSERT INTO _c2pg.rechecks (target_schema, target_table, key, col, at_us, wt) "
                    "VALUES ('writer_test', 'model', '{1,1}', 'a', 1, 1)")
        cur.execute("DROP TABLE writer_test.model")  # the owner drops it
    other_key = TableSchema("ks", "writer_model", (Column("id", "partition_key", 0, TEXT),), (),
                            (Column("a", "regular", -1, TEXT),), True)
    again = ensure_target(conn, other_key, "writer_test", "model", defer_token_index=False)
    assert again.created
    writer = SyncWriter(conn, again, "test")
    writer.apply(reduce_events([ChangeEvent("ks", "writer_model", Op.UPSERT, 10, ("x",), (("a", Cell("new", 10)),),
                                            row_marker=True)], 1), {})
    with conn, conn.cursor() as cur:
        cur.execute("SELECT id, a FROM writer_test.model")
        assert cur.fetchall() == [("x", "new")], "an old deletion at time 50 must not hide the new table's write"
        cur.execute(f"SELECT count(*) FROM _c2pg.{again.tomb_table}")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT count(*) FROM _c2pg.rechecks WHERE target_schema = 'writer_test'")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT columns->0->>'name' FROM _c2pg.catalog WHERE target_schema = 'writer_test'")
        assert cur.fetchone() == ("id",)
