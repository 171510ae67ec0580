"""Compare a PostgreSQL target with a full read of its Cassandra table, cell by cell.

For small tables: the demo and the integration tests use it to prove two sides equal
without going through the code under test. (Reconcile does the same at scale, by token
range with digests.) The comparison is docs/types.md's: the canonical text of each
Cassandra value (``Codec.from_driver``) against the PostgreSQL value (``Codec.same``).

:func:`differences` returns ``("missing", key)``, ``("extra", key)`` and
``("mismatch", key, column, cassandra_text, postgres_value)`` entries, or one
``("target not there yet", ...)`` when the table or a column is still missing.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg2
from psycopg2 import sql

from engine.schema import read_table
from engine.types import register_pg_text_casts


def differences(session, conn, keyspace: str, table: str, target_schema: str, target_table: str) -> list:
    schema = read_table(session, keyspace, table)
    cols = list(schema.columns)
    codecs = schema.codecs()
    selectors = [f'toUnixTimestamp("{c.name}")' if c.cql_type.kind == "timestamp" else f'"{c.name}"' for c in cols]
    n_key = len(schema.primary_key)
    want = {}
    for row in session.execute(f'SELECT {", ".join(selectors)} FROM "{keyspace}"."{table}"'):
        texts = [codec.from_driver(v) for codec, v in zip(codecs, row)]
        want[tuple(texts[:n_key])] = texts
    try:
        with conn, conn.cursor() as cur:
            register_pg_text_casts(cur)
            cur.execute(sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(sql.Identifier(c.name) for c in cols), sql.Identifier(target_schema, target_table)))
            got_rows = cur.fetchall()
    except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn) as exc:
        return [("target not there yet", type(exc).__name__)]
    got = {}
    for row in got_rows:
        key = tuple(codec.from_pg(v) for codec, v in zip(codecs[:n_key], row[:n_key]))
        got[key] = row
    # ("missing" | "extra", key) or ("mismatch", key, column, wanted, got)
    diffs: list[tuple[Any, ...]] = [("missing", k) for k in want.keys() - got.keys()]
    diffs += [("extra", k) for k in got.keys() - want.keys()]
    for k in want.keys() & got.keys():
        for c, codec, w, g in zip(cols, codecs, want[k], got[k]):
            if not codec.same(w, g):
                diffs.append(("mismatch", k, c.name, w, g))
    return diffs


def wait_equal(session, conn, keyspace, table, target_schema, target_table, timeout_s: float = 60,
               expected=lambda d: False) -> list:
    """Differences after waiting up to ``timeout_s`` for them to vanish (sync catching up);
    ``expected(diff)`` marks differences that are known and documented, not waited for."""
    deadline = time.monotonic() + timeout_s
    while True:
        diffs = [d for d in differences(session, conn, keyspace, table, target_schema, target_table)
                 if not expected(d)]
        if not diffs or time.monotonic() > deadline:
            return diffs
        time.sleep(0.5)
