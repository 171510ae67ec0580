"""Cassandra's tie rule, with Cassandra itself as the oracle.

For every CQL type: two different values written to one cell with the same ``USING
TIMESTAMP``; Cassandra keeps one (``Cells.resolveRegular``: the greater serialized value,
as unsigned bytes). The same two writes then go through c2pg — in one batch through the
reducer, and in two batches through the sync writer's merge into PostgreSQL, in both
orders — and c2pg must keep the value Cassandra kept. One more column checks the TTL step
of the rule: at an equal time a value written with a TTL beats one without.

Non-frozen collections are left out: Cassandra resolves them per element (two writes can
merge), while c2pg keeps one whole value (docs/types.md, "Cassandra's tie rule").
"""

from __future__ import annotations

import datetime
import time
import uuid
from decimal import Decimal

import psycopg2
import pytest
from cassandra.util import Date, Duration, Time

from engine import cql
from engine.cassandra_bytes import column_serializers
from engine.events import Cell, ChangeEvent, Op
from engine.pg_dialect import tombstone_table_name
from engine.pg_writer import SyncWriter
from engine.sync.reduce import reduce_events
from engine.schema import read_table
from engine.target import ensure_state, ensure_target
from engine.types import codec, register_pg_text_casts

# exclusive (the whole module, so the turn is kept from its first test to its last): it
# creates a Cassandra table with a vector column, and while one exists anywhere the
# connector's schema refresh fails, so other tests' new tables are not captured.
pytestmark = pytest.mark.exclusive

KS, TABLE = "c2pg_tie_test", "tie"
TS = 1_000_000  # the USING TIMESTAMP of both writes (µs)

U1 = uuid.UUID("00000000-0000-1000-8000-000000000001")   # version 1, oldest time
U1_LATER = uuid.UUID("00000001-0000-1000-0000-000000000000")
U4 = uuid.UUID("f0000000-0000-4000-8000-000000000000")
# Sets whose bytes depend on Cassandra's element order (the set's tie goes the other way
# if the elements are packed in a different order):
# - timeuuids of one time, ordered by their low half as *signed* bytes: 80 < ff < 00;
T_80, T_FF, T_00 = (uuid.UUID(f"00000000-0000-1000-{clock}-000000000000") for clock in ("8000", "ff00", "0001"))
# - uuids, ordered by version first (1 before 4), then within version 1 by time.
V1_A, V1_B = uuid.UUID("10000000-0000-1000-8000-000000000000"), uuid.UUID("20000000-0000-1000-8000-000000000000")
V4_A, V4_B = uuid.UUID("00000000-0000-4000-8000-000000000002"), uuid.UUID("00000000-0000-4000-8000-000000000001")

# column → (CQL type, value A, value B): pairs where text order and byte order disagree
# wherever the type allows it (10/9, -1/1, negative times, jsonb's key order ...).
CASES = {
    "c_int": ("int", 9, 10),
    "c_int_sign": ("int", 1, -1),
    "c_bigint": ("bigint", 1, -1),
    "c_smallint": ("smallint", 1, -1),
    "c_tinyint": ("tinyint", 1, -1),
    "c_varint": ("varint", 127, 128),
    "c_varint_sign": ("varint", 1, -1),
    "c_decimal": ("decimal", Decimal("1.5"), Decimal("-1.5")),
    "c_decimal_scale": ("decimal", Decimal("10"), Decimal("9.99")),
    "c_float": ("float", 1.5, -1.5),
    "c_double": ("double", 0.1, -0.0),
    "c_boolean": ("boolean", True, False),
    "c_text": ("text", "b", "ab"),
    "c_text_utf8": ("text", "é", "z"),
    "c_ascii": ("ascii", "b", "ab"),
    "c_blob": ("blob", b"\x01", b"\x00\xff"),
    "c_uuid": ("uuid", U4, U1),
    "c_timeuuid": ("timeuuid", U1, U1_LATER),
    "c_timestamp": ("timestamp", datetime.datetime(1969, 7, 20, 20, 17, 40, 123000), datetime.datetime(2000, 1, 1)),
    "c_date": ("date", Date(-1), Date(1)),
    "c_time": ("time", Time(1_000), Time(2_000)),
    "c_inet": ("inet", "10.0.0.1", "::1"),
    "c_inet4": ("inet", "9.0.0.0", "10.0.0.0"),
    "c_duration": ("duration", Duration(1, 0, 0), Duration(0, 40, 0)),
    "c_duration_sign": ("duration", Duration(0, 0, -1000), Duration(0, 0, 1000)),
    "c_list": ("frozen<list<int>>", [2], [1, 5]),
    "c_set": ("frozen<set<int>>", {-1}, {1, 2}),
    "c_set_text": ("frozen<set<text>>", {"b"}, {"a", "c"}),
    "c_set_timeuuid": ("frozen<set<timeuuid>>", {T_80, T_FF}, {T_FF, T_00}),
    "c_set_uuid": ("frozen<set<uuid>>", {V1_A, V4_A}, {V1_B, V4_B}),
    "c_map": ("frozen<map<int, text>>", {1: "a"}, {-1: "a"}),
    # Frozen lists as set elements compare element by element ([1, 2] before [3]), not by their
    # bytes ([3] has the smaller count): packed by bytes the tie would go to the other set.
    "c_set_lists": ("frozen<set<frozen<list<int>>>>", {(1, 2), (3,)}, {(4,), (5,)}),
    # jsonb lists keys shorter first ("b" before "aa"); Cassandra by bytes ("aa" before "b").
    "c_map_text": ("frozen<map<text, int>>", {"b": 0, "aa": 1}, {"aa": 0, "c": 0}),
    "c_udt": ("frozen<addr>", ("Main", 7), ("Elm", -7)),
    "c_tuple": ("tuple<int, text>", (1, "x"), (-1, "x")),
    "c_vector": ("vector<float, 3>", [1.0, 2.0, 3.0], [-1.0, 2.0, 3.0]),
}
TTL_COLUMN = "c_ttl"  # "b" without a TTL, "a" with one: the TTL wins whatever the values


@pytest.fixture(scope="module")
def cass(stack, pipeline):
    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    session.execute(f"CREATE KEYSPACE {KS} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(f"CREATE TYPE {KS}.addr (street text, zip int)")
    columns = ", ".join(f"{name} {cql_type}" for name, (cql_type, _, _) in CASES.items())
    session.execute(f"CREATE TABLE {KS}.{TABLE} (pk int PRIMARY KEY, {columns}, {TTL_COLUMN} text)")
    yield session
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    cluster.shutdown()


@pytest.fixture(scope="module")
def kept(cass) -> dict[str, object]:
    """What Cassandra kept, per column, after writing A then B at the same timestamp (row 1)
    and B then A (row 2); both rows must agree, or Cassandra's rule is not what we think."""
    for pk, order in ((1, (1, 2)), (2, (2, 1))):
        for name, case in CASES.items():
            insert = cass.prepare(f"INSERT INTO {KS}.{TABLE} (pk, {name}) VALUES (?, ?) USING TIMESTAMP {TS}")
            for i in order:
                cass.execute(insert, (pk, case[i]))
        into = f"INSERT INTO {KS}.{TABLE} (pk, {TTL_COLUMN}) VALUES ({pk}"
        ttl_writes = [f"{into}, 'b') USING TIMESTAMP {TS}", f"{into}, 'a') USING TIMESTAMP {TS} AND TTL 86400"]
        for stmt in ttl_writes if order == (1, 2) else reversed(ttl_writes):
            cass.execute(stmt)
    names = [*CASES, TTL_COLUMN]
    rows = {r.pk: r for r in cass.execute(f"SELECT pk, {', '.join(names)} FROM {KS}.{TABLE}")}
    for name in names:
        assert getattr(rows[1], name) == getattr(rows[2], name), f"Cassandra kept different values of {name}"
    return {name: getattr(rows[1], name) for name in names}


@pytest.fixture(scope="module")
def pg(pipeline):
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs(application_name="c2pg-tie-test"))
    ensure_state(conn)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def target(cass, pg):
    schema = read_table(cass, KS, TABLE)
    with pg, pg.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS tie_test CASCADE")
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = 'tie_test'")
        cur.execute(f"DROP TABLE IF EXISTS _c2pg.{tombstone_table_name('tie_test', TABLE)}")
    return ensure_target(pg, schema, "tie_test", TABLE, defer_token_index=False)


def _texts(target) -> dict[str, tuple[Cell, Cell]]:
    """Per column, the two writes as c2pg's sync sees them (canonical text, same time)."""
    codecs = {c.name: codec(c.cql_type) for c in target.schema.regular}
    out = {name: (Cell(codecs[name].from_driver(a), TS), Cell(codecs[name].from_driver(b), TS))
           for name, (_, a, b) in CASES.items()}
    expires = (int(time.time()) + 86_400) * 1_000_000
    out[TTL_COLUMN] = (Cell("b", TS), Cell("a", TS, expires_us=expires))
    return out


def _event(pk: int, cells) -> ChangeEvent:
    return ChangeEvent(KS, TABLE, Op.UPSERT, TS, (str(pk),), tuple(cells))


def test_cassandra_keeps_the_greater_unsigned_bytes_as_the_issue_reports(kept):
    assert kept["c_int"] == 10 and kept["c_int_sign"] == -1
    assert kept[TTL_COLUMN] == "a"


def test_the_reducer_keeps_what_cassandra_kept(kept, target):
    serializers = column_serializers(target.schema)
    writes = _texts(target)
    types = {c.name: c.cql_type for c in target.schema.regular}
    for order in ((0, 1), (1, 0)):
        events = [_event(1, [(name, pair[i]) for name, pair in writes.items()]) for i in order]
        row = reduce_events(events, 1, None, serializers).rows[("1",)]
        for name in writes:
            assert row.cells[name].value == codec(types[name]).from_driver(kept[name]), (name, order)


def test_the_merge_keeps_what_cassandra_kept_in_either_order(kept, target, pg):
    serializers = column_serializers(target.schema)
    writer = SyncWriter(pg, target, "tie-test")
    writes = _texts(target)
    for pk, order in ((1, (0, 1)), (2, (1, 0))):
        for i in order:  # one batch per write: the tie is decided by the merge, in SQL
            batch = _event(pk, [(name, pair[i]) for name, pair in writes.items()])
            writer.apply(reduce_events([batch], 1, None, serializers), {})
    names = list(writes)
    types = {c.name: c.cql_type for c in target.schema.regular}
    with pg, pg.cursor() as cur:
        register_pg_text_casts(cur)
        cur.execute(f"SELECT pk, {', '.join(names)} FROM tie_test.{TABLE} ORDER BY pk")
        rows = cur.fetchall()
    assert [r[0] for r in rows] == [1, 2]
    for row in rows:
        for name, value in zip(names, row[1:], strict=True):
            expected = codec(types[name]).from_driver(kept[name])
            assert codec(types[name]).from_pg(value) == expected, (name, row[0])


def test_postgresql_computes_the_same_bytes_as_python(target, pg):
    """The merge's SQL (``pg_dialect.cassandra_bytes``) and the reducer's Python
    (``engine.cassandra_bytes``) must agree byte for byte, or a tie could go one way within a
    batch and the other way across batches."""
    from psycopg2 import sql

    from engine.pg_dialect import cassandra_bytes
    from engine.types import copy_unescape

    serializers = column_serializers(target.schema)
    columns = {c.name: c for c in target.schema.regular}
    with pg, pg.cursor() as cur:
        for name, pair in _texts(target).items():
            column = columns[name]
            for cell in pair:
                cur.execute(sql.SQL("SELECT {} FROM (SELECT %s::{} AS v) AS s").format(
                    cassandra_bytes(sql.SQL("s.v"), column.cql_type), sql.SQL(column.pg_sql_type)),
                    (copy_unescape(cell.value),))
                assert bytes(cur.fetchone()[0]) == serializers[name](cell.value), (name, cell.value)
