"""The snapshot's ``SELECT JSON`` read path (engine.json_read) against the row-tuple path it
replaces for most tables: the same blocks, value for value, from a real Cassandra, including
the values whose JSON form is not exact (NaN, exponents, out-of-range timestamps, NUL), and
a read resumed mid-partition after timeouts emitting every row exactly once.

The oracle is the driver's row tuples through the column codecs (engine.types), code the
JSON path does not use for these values; the end-to-end copy into PostgreSQL is checked by
tests/integration/test_snapshot.py, which runs on this path too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from engine import cql, json_read
from engine.cassandra_source import ReadSettings, RowLayout, SplitReader, selectors
from engine.schema import read_table
from engine.token_ranges import TokenSplit

KS = "c2pg_snapshot_json"
WHOLE_RING = TokenSplit(0, -2**63, 2**63 - 1)
COLUMNS = ("pk int, ck bigint, s text static, i int, t tinyint, sm smallint, b boolean, d double, f float, "
           "m decimal, v varint, ts timestamp, u uuid, tu timeuuid, a ascii, tx text, "
           "mp map<text, int>, mt frozen<map<text, text>>, mb map<ascii, boolean>, PRIMARY KEY (pk, ck)")


@pytest.fixture(scope="module")
def cass(stack, pipeline):
    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    session.execute(f"CREATE KEYSPACE {KS} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    yield session
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    cluster.shutdown()


def _settings(pipeline, cass, table: str, **kw) -> ReadSettings:
    schema = read_table(cass, KS, table)
    return ReadSettings(pipeline.cassandra, schema, "ONE", kw.pop("page_size", 5000), 5, 1_700_000_000_000_000,
                        **kw)


def _read(settings: ReadSettings, json_rows: bool) -> pa.Table:
    return pa.concat_tables(SplitReader(dataclasses.replace(settings, json_rows=json_rows), WHOLE_RING)())


def _same_blocks(by_tuples: pa.Table, by_json: pa.Table, json_columns: set[str]) -> None:
    assert by_json.schema == by_tuples.schema
    for name in by_tuples.column_names:
        want, got = by_tuples[name].to_pylist(), by_json[name].to_pylist()
        if name in json_columns:  # jsonb: the same document, spaced differently
            want = [None if x is None else json.loads(x.replace("\\\\", "\\")) for x in want]
            got = [None if x is None else json.loads(x.replace("\\\\", "\\")) for x in got]
        assert got == want, f"column {name} differs: " + str(
            [(i, w, g) for i, (w, g) in enumerate(zip(want, got, strict=True)) if w != g][:3])


def test_every_supported_type_reads_the_same_as_json_as_by_row_tuples(cass, pipeline):
    cass.execute(f"CREATE TABLE {KS}.kinds ({COLUMNS})")
    ins = cass.prepare(f"INSERT INTO {KS}.kinds (pk, ck, i, t, sm, b, d, f, m, v, ts, u, tu, a, tx, mp, mt, mb) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    edge = [
        (1, 1, 2**31 - 1, -128, 32767, True, math.nan, math.inf, Decimal("1E+3"), 10**40,
         datetime(1, 1, 1, tzinfo=UTC), uuid.UUID(int=1), uuid.uuid1(), "plain", 'tab\there "q" \\ é\n',
         {"k\"ey": -5, "é": 0}, {"a": "b\tc\\d"}, {"x": True}),
        (1, 2, -2**31, 0, -1, False, -math.inf, -0.0, Decimal("-0.000001234"), -(10**30), None,
         None, None, "", "", {}, {}, None),
        (2, -(2**63), 0, 1, 2, None, 2e23, 1.1, Decimal("0E-10"), 0, datetime(2020, 2, 29, 12, 0, 0, 123000),
         uuid.UUID("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"), None, None, None, None, None, None),
        (3, 2**63 - 1, None, None, None, None, 5e-324, 3.4028234663852886e38, Decimal("-0.00"), None, None, None,
         None, None, "ünïcödé ✓ \U0001F600", {"z": 2**31 - 1}, None, None),
        (4, 0, 7, 7, 7, True, -1.5, -2.5, Decimal("123456789012345678901234567890.123456789"), 7,
         datetime(9999, 12, 31, 23, 59, 59, 999000), None, None, None, None, None, None, None),
    ]
    for row in edge:
        cass.execute(ins, row)
    # Before year 1 (PostgreSQL has BC dates; the codec spells it), and values PostgreSQL
    # cannot store: dead letters either way.
    cass.execute(f"INSERT INTO {KS}.kinds (pk, ck, ts) VALUES (5, 1, -62135596800001)")
    cass.execute(f"INSERT INTO {KS}.kinds (pk, ck, tx) VALUES (6, 1, 'nul \u0000 inside')")
    cass.execute(f"INSERT INTO {KS}.kinds (pk, ck, mp) VALUES (7, 1, {{'nul \u0000': 1}})")
    big = cass.prepare(f"INSERT INTO {KS}.kinds (pk, ck, m) VALUES (8, 1, ?)")
    cass.execute(big, (Decimal("1E+200000"),))  # beyond PostgreSQL numeric's range
    cass.execute(f"INSERT INTO {KS}.kinds (pk, s) VALUES (9, 'a partition with only its static')")
    cass.execute(f"INSERT INTO {KS}.kinds (pk, ck, s) VALUES (1, 3, 'static of pk 1')")
    cass.execute(f"INSERT INTO {KS}.kinds (pk, ck) VALUES (10, 1)")  # a row that lives by its marker

    settings = _settings(pipeline, cass, "kinds", ttls=False)
    layout = RowLayout.of(settings.schema, True, False)
    assert json_read.plan(settings.schema, selectors(settings.schema, True, False), layout.value_at) is not None
    by_tuples, by_json = _read(settings, False), _read(settings, True)
    assert by_tuples.num_rows == 12
    assert by_json["_c2pg_dead_error"].drop_null().to_pylist() == by_tuples["_c2pg_dead_error"].drop_null().to_pylist()
    assert len(by_json["_c2pg_dead_error"].drop_null()) == 3, "NUL text, NUL map key, numeric's range"
    _same_blocks(by_tuples, by_json, {"mp", "mt", "mb"})


def test_a_table_with_a_type_json_cannot_carry_exactly_is_read_as_row_tuples(cass, pipeline):
    cass.execute(f"CREATE TABLE {KS}.mixed (id int PRIMARY KEY, l list<double>, bl blob)")
    cass.execute(f"INSERT INTO {KS}.mixed (id, l, bl) VALUES (1, [1.5, NaN], 0xCAFE)")
    settings = _settings(pipeline, cass, "mixed", ttls=True)
    layout = RowLayout.of(settings.schema, True, True)
    assert json_read.plan(settings.schema, selectors(settings.schema, True, True), layout.value_at) is None
    table = _read(settings, True)
    assert table["l"].to_pylist() == ["{1.5,NaN}"] and table["bl"].to_pylist() == ["\\\\xcafe"]


def test_a_json_read_resumed_mid_partition_after_timeouts_emits_every_row_once(cass, pipeline, monkeypatch, tmp_path):
    cass.execute(f"CREATE TABLE {KS}.wide (pk int, ck int, v text, PRIMARY KEY (pk, ck))")
    ins = cass.prepare(f"INSERT INTO {KS}.wide (pk, ck, v) VALUES (?, ?, ?)")
    for p in range(12):
        for c in range(37):
            cass.execute(ins, (p, c, f"{p}/{c}"))
    settings = _settings(pipeline, cass, "wide", ttls=False, page_size=10)
    clean = _read(settings, True)
    assert clean.num_rows == 12 * 37
    # A timeout at the 45th row of each of the first three reads: each time inside a
    # partition (37 rows each) and inside a page (10 rows), so the resumed read begins with
    # rows already emitted, spread over more than one page.
    monkeypatch.setenv("C2PG_FAULTS", "snapshot.read:after=45,action=timeout,times=3")
    monkeypatch.setenv("C2PG_FAULTS_DIR", str(tmp_path / "faults"))
    reader = SplitReader(dataclasses.replace(settings, json_rows=True), WHOLE_RING)
    resumed = pa.concat_tables(reader())
    assert reader.retries == 3
    keys = list(zip(resumed["pk"].to_pylist(), resumed["ck"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == 12 * 37, "no row twice, none missing"
    assert keys == list(zip(clean["pk"].to_pylist(), clean["ck"].to_pylist(), strict=True))
    assert resumed["v"].to_pylist() == clean["v"].to_pylist()
