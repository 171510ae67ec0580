"""Snapshot round trip of a table with every CQL type and edge values.

The rows are those of the type-mapping tests (tests/integration/test_types_roundtrip.py);
here they travel the real snapshot path — the token-range Datasource, Ray Data, the COPY
Datasink — and every PostgreSQL cell must equal the Cassandra value under the comparison
documented in docs/types.md (``Codec.same``: the canonical text of both sides).
"""

from __future__ import annotations

import time

import psycopg2
import pytest

from engine import cql
from engine.config import TableConfig
from engine.snapshot import run_snapshot
from engine.types import register_pg_text_casts
from tests.integration import test_types_roundtrip as tr

KS = "c2pg_snapshot_types"


@pytest.fixture(scope="module")
def source(stack, pipeline):
    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    session.execute(f"CREATE KEYSPACE {KS} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    time.sleep(1)
    session.execute(f"CREATE TYPE {KS}.address (street text, zip int)")
    session.execute(f"CREATE TABLE {KS}.all_types ({tr.COLUMNS})")
    for row in tr.ROWS:
        cols = list(row)
        stmt = session.prepare(f"INSERT INTO {KS}.all_types ({', '.join(cols)}) "
                               f"VALUES ({', '.join(['?'] * len(cols))})")
        session.execute(stmt, [row[c] for c in cols])
    yield session
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    cluster.shutdown()


def test_every_type_and_edge_value_round_trips_through_snapshot(source, pipeline, ray_cluster):
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS snap_types CASCADE")
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = 'snap_types'")
    result = run_snapshot(pipeline, TableConfig(keyspace=KS, table="all_types", target_schema="snap_types",
                                                target_table="all_types"), splits=4)
    assert result.ok and result.rows == len(tr.ROWS)

    codecs = tr.schema_codecs(source, KS, "all_types")
    names = list(codecs)
    # Timestamps as epoch ms: the driver cannot build datetimes past year 9999.
    selectors = [f"toUnixTimestamp({n})" if codecs[n].cql_type.kind == "timestamp" else n for n in names]
    expected = {(r[0], r[1]): [codecs[n].from_driver(v) for n, v in zip(names, r)]
                for r in source.execute(f"SELECT {', '.join(selectors)} FROM {KS}.all_types")}
    with conn.cursor() as cur:
        register_pg_text_casts(cur)
        cur.execute(f"SELECT {', '.join(chr(34) + n + chr(34) for n in names)} FROM snap_types.all_types")
        got = {(r[0], r[1]): r for r in cur.fetchall()}
    conn.close()
    assert set(got) == set(expected)
    mismatches = [(key, name, want, row[i]) for key, row in got.items()
                  for i, (name, want) in enumerate(zip(names, expected[key]))
                  if not codecs[name].same(want, row[i])]
    assert mismatches == []
