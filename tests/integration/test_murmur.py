"""Partition tokens computed from c2pg's canonical values equal Cassandra's own token()."""

from __future__ import annotations

import time
import uuid
from datetime import date, datetime
from decimal import Decimal

import pytest

from engine import cql
from engine.murmur import token_function
from engine.schema import read_table

KS = "c2pg_murmur_test"
KEY_TYPES = ["int", "bigint", "smallint", "tinyint", "varint", "decimal", "text", "ascii", "uuid",
             "timeuuid", "boolean", "double", "float", "blob", "inet", "timestamp", "date"]
SAMPLES = {
    "int": [0, -1, 2147483647], "bigint": [-(2**63), 42], "smallint": [-5], "tinyint": [7],
    "varint": [0, -(10**30), 10**30, 255, -256], "decimal": [Decimal("1.50"), Decimal("-0.001"), Decimal("1E+3")],
    "text": ["héllo 🌍", "tab\there\\"], "ascii": ["plain"], "uuid": [uuid.UUID(int=5)],
    "timeuuid": [uuid.UUID("50554d6e-29bb-11e5-b345-feff819cdc9f")], "boolean": [True, False],
    "double": [1.5, -0.0], "float": [0.25], "blob": [b"\x00\xff", b"a"], "inet": ["10.0.0.1", "::1"],
    "timestamp": [datetime(1969, 7, 20, 20, 17, 40, 123000), datetime(2024, 1, 1)],
    "date": [date(1970, 1, 1), date(1900, 3, 1)],
}


@pytest.fixture(scope="module")
def session(stack, pipeline):
    cluster, s = cql.connect(pipeline.cassandra)
    s.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    s.execute(f"CREATE KEYSPACE {KS} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    time.sleep(1)
    yield s
    s.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    cluster.shutdown()


@pytest.mark.parametrize("kind", KEY_TYPES)
def test_single_column_partition_key(session, kind):
    session.execute(f"CREATE TABLE {KS}.t_{kind} (k {kind} PRIMARY KEY, v int)")
    schema = read_table(session, KS, f"t_{kind}")
    token = token_function(schema)
    codec = schema.codecs()[0]
    for value in SAMPLES[kind]:
        session.execute(f"INSERT INTO {KS}.t_{kind} (k, v) VALUES (%s, 1)", (value,))
    for row in session.execute(f"SELECT k, token(k) AS t FROM {KS}.t_{kind}"):
        assert token([codec.from_driver(row.k)]) == row.t, (kind, row.k)


def test_composite_partition_key(session):
    session.execute(f"CREATE TABLE {KS}.composite (a int, b text, c uuid, d int, PRIMARY KEY ((a, b, c), d))")
    schema = read_table(session, KS, "composite")
    token = token_function(schema)
    codecs = schema.codecs()
    for i in range(20):
        session.execute(f"INSERT INTO {KS}.composite (a, b, c, d) VALUES (%s, %s, %s, 0)",
                        (i, f"b{i}" * i, uuid.UUID(int=i)))
    for row in session.execute(f"SELECT a, b, c, token(a, b, c) AS t FROM {KS}.composite"):
        values = [codecs[0].from_driver(row.a), codecs[1].from_driver(row.b), codecs[2].from_driver(row.c)]
        assert token(values) == row.t
