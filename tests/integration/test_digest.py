"""The digest texts of ``engine.digest`` agree between PostgreSQL (SQL) and Python (driver
values), for every CQL type, and differ when a stored value differs.

If they did not agree, reconcile would still be right (a digest mismatch only sends a
sub-range to the exact comparison) but slow; if equal texts hid a different value, reconcile
would miss drift. Both are checked here against the real servers.
"""

from __future__ import annotations

import io
import math
import socket
import time

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg2 import sql

from engine import cql, digest
from engine import pg_dialect as d
from engine.cassandra_source import RowLayout, _column_converter, select_statement
from engine.config import TableConfig
from engine.reconcile import run_reconcile
from engine.schema import read_table
from engine.snapshot import run_snapshot
from engine.target import ensure_state
from engine.token_ranges import MAX_TOKEN, MIN_TOKEN
from engine.types import codec, copy_line, parse_cql_type
from tests.integration.test_types_roundtrip import COLUMNS, ROWS

KS = "c2pg_digest_test"
SCHEMA = "digest_test"


@pytest.fixture(autouse=True)
def _drift_pages_in_tmp(monkeypatch, tmp_path):
    """A reconcile that finds drift writes its page to the working directory: keep the
    tests' pages out of the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def cass(stack, pipeline):
    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    session.execute(f"CREATE KEYSPACE {KS} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    time.sleep(1)  # a UDT needs the keyspace to settle first
    session.execute(f"CREATE TYPE {KS}.address (street text, zip int)")
    session.execute(f"CREATE TABLE {KS}.all_types ({COLUMNS})")
    for row in ROWS:
        names = list(row)
        stmt = session.prepare(f"INSERT INTO {KS}.all_types ({', '.join(names)}) VALUES "
                               f"({', '.join('?' * len(names))})")
        session.execute(stmt, [row[n] for n in names])
    yield session
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    cluster.shutdown()


@pytest.fixture(scope="module")
def pg_schema(pipeline):
    """The module's PostgreSQL schema, made and dropped on connections of their own (a test
    in the other test process may restart PostgreSQL in between: no connection is held)."""
    def run(*statements: str) -> None:
        conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
        try:
            ensure_state(conn)  # a fresh database has no _c2pg yet when this module runs first
            conn.autocommit = True
            with conn.cursor() as cur:
                for stmt in statements:
                    cur.execute(stmt)
        finally:
            conn.close()

    run(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE", f"CREATE SCHEMA {SCHEMA}",
        f"DELETE FROM _c2pg.catalog WHERE target_schema = '{SCHEMA}'")
    yield SCHEMA
    run(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


@pytest.fixture()
def pg(pipeline, pg_schema):
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(d.RECONCILE_SESSION)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def loaded(cass, pg_schema, pipeline, ray_cluster):
    """``all_types`` snapshotted into PostgreSQL; per row key, the Python digest texts."""
    table = TableConfig(keyspace=KS, table="all_types", target_schema=SCHEMA, target_table="all_types")
    assert run_snapshot(pipeline, table).rows == len(ROWS)
    schema = read_table(cass, KS, "all_types")
    stmt = cass.prepare(select_statement(schema))
    raw = list(cass.execute(stmt, (MIN_TOKEN, MAX_TOKEN)))
    layout = RowLayout.of(schema)
    codecs = schema.codecs()
    columns = list(zip(*raw))
    arrays = [digest.column_texts(digest.form_of(c), c, columns[at] if at is not None else (None,) * len(raw),
                                  _column_converter(c)) for c, at in zip(codecs, layout.value_at, strict=True)]
    texts = [a.to_pylist() for a in arrays]
    by_key = {(r[1], r[2]): [col[i] for col in texts] for i, r in enumerate(raw)}
    hashes = digest.row_digests(digest.row_text_array(arrays))
    return table, schema, by_key, {(r[1], r[2]): int(h) for r, h in zip(raw, hashes, strict=True)}


def _pg_texts(pg, schema, where: str = "") -> dict[tuple, list]:
    lateral, row_digest = digest.row_digest_sql(schema, "t", sql.Literal(int(time.time() * 1e6)))
    n = len(schema.columns)
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT t.pk, t.ck, {}, {} FROM {} AS t {} {}").format(
            sql.SQL(", ").join(sql.SQL("dg.{}").format(sql.Identifier(f"x{i}")) for i in range(n)), row_digest,
            sql.Identifier(SCHEMA, "all_types"), lateral, sql.SQL(where)))
        return {(r[0], r[1]): list(r[2:]) for r in cur.fetchall()}


def test_every_type_prints_the_same_digest_text_on_both_sides(pg, loaded):
    _, schema, by_key, hashes = loaded
    stored = _pg_texts(pg, schema)
    assert stored.keys() == by_key.keys()
    names = [c.name for c in schema.columns]
    for key, texts in by_key.items():
        differing = {n: (a, b) for n, a, b in zip(names, texts, stored[key][:-1], strict=True) if a != b}
        assert differing == {}, f"row {key}"
        assert hashes[key] == stored[key][-1], f"row digest of {key}"


def test_reconcile_of_every_type_needs_no_exact_comparison(pipeline, loaded):
    table, *_ = loaded
    result = run_reconcile(pipeline, table)
    assert result.drift == 0 and result.rows_compared == len(ROWS)
    assert result.sub_ranges_differing == 0


def test_a_changed_value_in_any_column_changes_the_row_digest(pg, loaded):
    """Every regular column of row (1, 1) takes row (1, 2)'s value, one at a time."""
    _, schema, _, hashes = loaded
    t = sql.Identifier(SCHEMA, "all_types")
    checked = 0
    for column in schema.regular:
        c = sql.Identifier(column.name)
        with pg.cursor() as cur:
            cur.execute("BEGIN")
            try:
                cur.execute(sql.SQL("UPDATE {t} AS x SET {c} = y.{c} FROM {t} AS y WHERE x.pk = 1 AND x.ck = 1 "
                                    "AND y.pk = 1 AND y.ck = 2 AND x.{c} IS DISTINCT FROM y.{c}").format(t=t, c=c))
                if cur.rowcount == 0:
                    continue
                after = _pg_texts(pg, schema, "WHERE t.pk = 1 AND t.ck = 1")[(1, 1)][-1]
                assert after != hashes[(1, 1)], f"changing {column.name} left the row digest unchanged"
                checked += 1
            finally:
                cur.execute("ROLLBACK")
    assert checked >= 40


_TYPES = ["text", "double", "float", "boolean", "map<text, text>", "list<double>", "set<float>",
          "frozen<list<text>>", "tuple<int, text>", "inet", "decimal", "varint"]

_floats = st.floats(allow_nan=True, allow_infinity=True)
_f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20)
_VALUES = {
    "text": _text, "double": _floats, "float": _f32, "boolean": st.booleans(),
    # Non-frozen collections are never empty: the driver returns None for an empty one.
    "map<text, text>": st.dictionaries(_text, _text, min_size=1, max_size=4),
    "list<double>": st.lists(_floats.filter(lambda x: not math.isnan(x)), min_size=1, max_size=4),
    "set<float>": st.frozensets(_f32.filter(lambda x: not math.isnan(x)), min_size=1, max_size=4).map(
        lambda s: sorted(s)),
    "frozen<list<text>>": st.lists(_text, max_size=4),
    "tuple<int, text>": st.tuples(st.integers(-2**31, 2**31 - 1), _text),
    # The driver formats inet with the C library's inet_ntop.
    "inet": st.ip_addresses().map(lambda a: socket.inet_ntop(
        socket.AF_INET6 if a.version == 6 else socket.AF_INET, a.packed)),
    "decimal": st.integers(0, 12).flatmap(lambda p: st.decimals(-10**20, 10**20, allow_nan=False, places=p)),
    "varint": st.integers(-10**30, 10**30),
}


@pytest.fixture(scope="module")
def scratch(pipeline, pg_schema):
    codecs = [codec(parse_cql_type(t, {})) for t in _TYPES]
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(SCHEMA, "scratch"), sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(f"c{i}"), sql.SQL(c.pg.sql)) for i, c in enumerate(codecs))))
    finally:
        conn.close()
    return codecs


@settings(max_examples=int(__import__("os").environ.get("C2PG_PROPERTY_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({t: st.one_of(st.none(), _VALUES[t]) for t in _TYPES}), min_size=1, max_size=5))
def test_digest_texts_agree_for_arbitrary_values(pg, scratch, rows):
    codecs = scratch
    raw = [[row[t] for t in _TYPES] for row in rows]
    lines = [copy_line([c.from_driver(v) for c, v in zip(codecs, r, strict=True)]) for r in raw]
    with pg.cursor() as cur:
        cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(SCHEMA, "scratch")))
        cur.copy_expert(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(SCHEMA, "scratch")).as_string(cur),
                        io.StringIO("".join(lines)))
        cur.execute(sql.SQL("SELECT {} FROM {} AS t").format(sql.SQL(", ").join(
            digest.column_sql(digest.form_of(c), sql.SQL("t.{}").format(sql.Identifier(f"c{i}")))
            for i, c in enumerate(codecs)), sql.Identifier(SCHEMA, "scratch")))
        stored = cur.fetchall()
    columns = list(zip(*raw))
    python = [digest.column_texts(digest.form_of(c), c, columns[i], _column_converter(c)).to_pylist()
              for i, c in enumerate(codecs)]
    for r, got in enumerate(stored):
        for i, t in enumerate(_TYPES):
            assert python[i][r] == got[i], f"{t}: {raw[r][i]!r}"
