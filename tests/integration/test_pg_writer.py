"""The sync writer's SQL against the Python model of the target, on real PostgreSQL.

tests/unit/test_reduce.py proves the model (``lww_model.Target``) equal to Cassandra's
semantics for any events; here random event batches go through ``SyncWriter.apply`` into a
real table and must leave exactly what the model (and so the Cassandra reference) holds.
"""

from __future__ import annotations

import os

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import Cell, ChangeEvent, Op
from engine.reduce import reduce_events
from engine.schema import Column, TableSchema
from engine.target import ensure_state, ensure_target
from engine.pg_writer import DeadLetter, SyncWriter
from engine.types import parse_cql_type
from tests.unit.lww_model import _desc_compare, _int_compare
from tests.unit.test_reduce import events, reference

# Each example rebuilds a real table: 60 in the suite; C2PG_PROPERTY_EXAMPLES=500 for a deep run.
EXAMPLES = int(os.environ.get("C2PG_PROPERTY_EXAMPLES", "60"))
INT, TEXT = parse_cql_type("int"), parse_cql_type("text")
SCHEMA = TableSchema("ks", "writer_model", (Column("pk", "partition_key", 0, INT),),
                     (Column("ck", "clustering", 0, INT),),
                     tuple(Column(n, "regular", -1, TEXT) for n in ("a", "b", "c")), True)
# The same with a DESC clustering column: range bounds arrive in clustering order.
DESC = TableSchema("ks", "writer_model", SCHEMA.partition_key, (Column("ck", "clustering", 0, INT, descending=True),),
                   SCHEMA.regular, True)


@pytest.fixture(scope="module")
def conn(stack, pipeline):
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
    from engine.reduce import Reduced, RowWrite, Tombstone

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
