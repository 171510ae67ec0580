"""The staging candidates of ``benchmarks/stage_copy.py`` (ADR 0012) stage the same rows as
today's COPY text: checked against the stack's PostgreSQL on a few hundred events whose
texts need every COPY escape and whose cells carry TTLs (so ``_c2pg_exp`` and the row
marker's expiry are not all NULL). The column-wise unescape is checked without the stack."""

from __future__ import annotations

import time

import orjson
import pyarrow as pa
import pytest

from benchmarks.decode import bench_schema
from benchmarks.stage_copy import (CANDIDATES, close, connect, copy_unescape_column, create_target, drop_target,
                                   reduced_batches, reducer_for, reference, run_once)
from benchmarks.sync import generate
from engine.sync.reduce_columns import _NONE
from engine.types import codec, parse_cql_type

TARGET_SCHEMA = "bench_copy_test"
ODD_NAMES = ["tab\there", "back\\slash", "a\\tb not a tab", "new\nline\r\n", "\\\\", "ünï cödé ✓", ""]


def _values(events: int = 400, keys: int = 40) -> list[bytes]:
    """The sync benchmark's events with odd texts in ``name`` and a TTL on every third upsert
    (every cell of an INSERT, so its row marker expires too)."""
    expires = (int(time.time()) + 3600) * 1_000_000
    out = []
    for i, (_, value, _) in enumerate(generate(events, keys)):
        after = value["after"]
        if value["op"] != "d":
            if after.get("name") is not None and i % 3 == 0:
                after["name"]["value"] = ODD_NAMES[i % len(ODD_NAMES)]
            if i % 3 == 1:
                for c in ("name", "price", "qty", "updated"):
                    if after.get(c) is not None and after[c]["value"] is not None:
                        after[c]["deletion_ts"] = expires
        out.append(orjson.dumps(value))
    return out


def test_unescape_column_inverts_the_codec():
    text = codec(parse_cql_type("text"))
    raw = ODD_NAMES + ["\\t\\n", "x\\\\ty", "\t\\"]
    escaped = pa.array([text.from_debezium(s) for s in raw] + [None], pa.string())
    assert copy_unescape_column(escaped).to_pylist() == raw + [None]


@pytest.mark.stack
def test_every_candidate_stages_todays_rows(pipeline):
    pytest.importorskip("psycopg")                                # the test extra's; ADR 0012
    pytest.importorskip("adbc_driver_postgresql")
    import psycopg2

    schema = bench_schema()
    kwargs = pipeline.postgres.connect_kwargs()
    batches = reduced_batches(schema, _values(), 150)
    assert len(batches) == 3 and all(b.rows for b in batches)
    assert any(b"\\t" in b.text for b in batches)                 # the odd texts reached the stage
    _, _, _, _, _, exps, _, row_exp = batches[0].args               # ColumnReducer._copy_text's arguments
    assert any((x != _NONE).any() for x in exps) and (row_exp != _NONE).any()    # TTLs too
    admin = psycopg2.connect(**kwargs)
    admin.autocommit = True
    try:
        create_target(admin, schema, TARGET_SCHEMA)
        st, cands = connect(kwargs, reducer_for(schema), TARGET_SCHEMA)
        try:
            for b in batches:
                want = reference(cands, b)                        # A: today's bytes, b.rows rows
                for name in CANDIDATES:
                    run_once(cands[name], b, want, None)          # raises unless equal to A's rows
        finally:
            close(st)
    finally:
        drop_target(admin, TARGET_SCHEMA)
        admin.close()
