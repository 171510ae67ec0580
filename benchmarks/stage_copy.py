"""How the reduced batch gets into the stage table: today's COPY text against binary COPY
(psycopg 3) and ADBC's PostgreSQL ingest (issue #14, item 3; ADR 0012).

Usage::

    python -m benchmarks.stage_copy [--events 100000] [--batches 5000,20000] [--reps 5] [--budget 600]

Input: ``benchmarks.sync.generate`` events of ``c2pg_bench.sync_events`` (10 events per key,
as ``benchmarks.decode``), as ``orjson.dumps`` of each value, cut into batches; each batch
decoded and reduced exactly as sync's columnar path does it (:class:`ColumnDecoder`, the
per-record :class:`EventDecoder` for the slow lane's records, :class:`ColumnReducer`). The
reducer's arguments to ``_copy_text`` are captured: they are "the reduced columns" every
candidate starts from. Per batch and candidate, timed apart:

- **build**: reduced columns → what the driver takes. A: ``ColumnReducer._copy_text`` (the
  COPY text, exactly the bytes ``SyncWriter.apply`` sends). B and C: :func:`staged_table`
  (the same selection, keys, tokens and metadata as typed Arrow columns: the texts cast back
  to integers and doubles, text values COPY-unescaped, ``_c2pg_wt``/``_c2pg_exp`` as
  ``list<int64>``), then B1 Python rows, B2 one binary COPY buffer (:func:`binary_copy`,
  Arrow binary kernels, no Python per row), C nothing more;
- **send**: the COPY into ``_c2pg_stage`` (created ``LIKE`` the target as
  :func:`engine.pg_dialect.create_stage` does, in the same transaction; its creation is not
  timed), until PostgreSQL has the rows.

Candidates: A today (psycopg2 ``copy_expert`` of the text), A3 the same text through
psycopg 3 (the driver without the format), B1 psycopg 3 binary COPY with ``write_row`` per
row (the naive baseline), B2 psycopg 3 binary COPY of :func:`binary_copy`'s buffer, C ADBC
``adbc_ingest`` of the Arrow table (mode ``append``, ``temporary=True``: the created temp
table). Each has its own connection; the CPU of its PostgreSQL backend is read from
``/proc/<pid>/schedstat`` (ns on a CPU) around the send; the first run (2026-12-04 11:13)
read ``/proc/<pid>/stat``'s 10 ms clock ticks, too coarse for one batch's send.

Check: after every send, ``md5`` of the stage's rows as text in key order (and the count)
must equal what A staged; a difference fails the run. Interleaving: every repetition runs
the batches in order and, per batch, the candidates in a new shuffled order, so noise hits
all alike. Figures per staged row and per event, medians over repetitions; every run is
appended to ``benchmarks/results/stage_copy.json``.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import sql

from benchmarks.decode import bench_schema
from benchmarks.sync import generate
from engine import pg_dialect as d
from engine.cassandra_bytes import column_serializers
from engine.sync.decode import EventDecoder
from engine.events import ChangeEvent, Origin
from engine.murmur import token_function
from engine.sync.reduce import typed_compare
from engine.schema import TableSchema
from engine.sync.decode_columns import ColumnDecoder
from engine.sync.reduce_columns import _NONE, ColumnReducer

RESULTS = Path(__file__).parent / "results" / "stage_copy.json"
BENCH_SCHEMA = "bench_copy"
CANDIDATES = ("A", "A3", "B1", "B2", "C")
# Timed with them, send nothing: the typed Arrow table alone (the build step B1, B2 and C
# share), and the partition tokens alone (murmur3 per distinct partition, in every build).
CONTEXT = ("T", "K")
LABELS = {
    "A": "A, today: Arrow-built COPY text, psycopg2 copy_expert",
    "A3": "A3, the same text through psycopg 3 (copy.write)",
    "B1": "B1, psycopg 3 binary COPY, write_row per row",
    "B2": "B2, psycopg 3 binary COPY of one buffer built column-wise",
    "C": "C, ADBC adbc_ingest of the Arrow table",
    "T": "(B1, B2, C's shared build: staged_table alone, no send)",
    "K": "(every build's partition tokens alone, no send)",
}
# PostgreSQL type → Arrow type of the staged column (what the binary candidates send).
ARROW_TYPES = {"bigint": pa.int64(), "integer": pa.int32(), "smallint": pa.int16(),
               "double precision": pa.float64(), "text": pa.string()}
META_TYPES = {"bigint": pa.int64(), "bigint[]": pa.list_(pa.int64())}


# ---------------------------------------------------------------------------------------
# The reduced batches, as the engine makes them
# ---------------------------------------------------------------------------------------

class CapturingReducer(ColumnReducer):
    """The engine's reducer; keeps the arguments of its last ``_copy_text`` call (the
    reduced columns) so the candidates can start from them."""

    last: tuple = ()

    def _copy_text(self, *args) -> bytes:
        self.last = args
        return super()._copy_text(*args)


@dataclass(slots=True)
class Batch:
    events: int
    rows: int
    args: tuple                 # _copy_text's arguments
    text: bytes                 # the engine's COPY text (StagedRows.copy_text)
    reduce_s: float = 0.0       # CPU of decode-free reduce() (incl. the text), for context


def reducer_for(schema: TableSchema) -> CapturingReducer:
    return CapturingReducer(schema, typed_compare(schema), column_serializers(schema), token_function(schema))


def reduced_batches(schema: TableSchema, values: Sequence[bytes], size: int,
                    now_us: int | None = None) -> list[Batch]:
    """Decode and reduce ``values`` in batches of ``size`` as ``TableApplier._apply_columns``
    does (the slow lane's records through the per-record decoder)."""
    decoder, slow_decoder, reducer = ColumnDecoder(schema), EventDecoder(schema), reducer_for(schema)
    now_us = now_us if now_us is not None else time.time_ns() // 1000
    out = []
    for start in range(0, len(values), size):
        chunk = values[start:start + size]
        cols, slow = decoder.decode(chunk)
        events: list[tuple[int, ChangeEvent]] = []
        for i in slow:
            ev = slow_decoder.decode(None, chunk[i], Origin("bench", 0, start + i))
            if ev is not None:
                events.append((i, ev))
        c0 = time.process_time()
        staged = reducer.reduce(cols, events, now_us)
        spent = time.process_time() - c0
        if staged.rows:
            out.append(Batch(len(chunk), staged.rows, reducer.last, staged.copy_text, spent))
    return out


# ---------------------------------------------------------------------------------------
# Typed columns and the binary COPY format, column-wise
# ---------------------------------------------------------------------------------------

def copy_unescape_column(texts: pa.Array) -> pa.Array:
    """Undo the COPY escapes of canonical texts (``\\\\``, ``\\t``, ``\\n``, ``\\r``) column-wise.
    ``\\\\`` goes through NUL, which a text value never holds (the decoder refuses it), so an
    escaped backslash followed by ``t`` is not read as a tab."""
    if not pc.any(pc.match_substring(texts, "\\")).as_py():
        return texts
    texts = pc.replace_substring(texts, "\\\\", "\x00")
    for esc, raw in (("\\t", "\t"), ("\\n", "\n"), ("\\r", "\r")):
        texts = pc.replace_substring(texts, esc, raw)
    return pc.replace_substring(texts, "\x00", "\\")


def typed_column(pg_type: str, texts: pa.Array) -> pa.Array:
    """A canonical-text column (the reducer's) → its typed Arrow column."""
    to = ARROW_TYPES.get(pg_type)
    if to is None:
        raise NotImplementedError(f"the benchmark stages {sorted(ARROW_TYPES)}, not {pg_type}")
    if to == pa.string():
        return copy_unescape_column(texts)
    return pc.cast(texts, to)


def _int64_lists(matrix: np.ndarray, present: np.ndarray | None = None) -> pa.Array:
    """(rows, k) int64 with ``_NONE`` for NULL elements → ``list<int64>`` of k elements per row;
    rows where ``present`` is False are NULL lists."""
    n, k = matrix.shape
    flat = matrix.reshape(-1)
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    items = pa.array(flat, pa.int64(), mask=flat == _NONE)
    mask = None if present is None else pa.array(~present)
    return pa.ListArray.from_arrays(offsets, items, mask=mask)


def partition_tokens(reducer: ColumnReducer, keys: list[pa.Array]) -> np.ndarray:
    """Per staged row its partition's token, as ``ColumnReducer._copy_text`` computes it: the
    reducer's token function (murmur3 in Python) once per distinct partition."""
    partition = keys[: reducer.n_pk]
    part_text = partition[0] if reducer.n_pk == 1 else pc.binary_join_element_wise(*partition, "\t")
    penc = pc.dictionary_encode(part_text)
    tokens = np.array([reducer.token(tuple(p.split("\t")) if reducer.n_pk > 1 else (p,))
                       for p in penc.dictionary.to_pylist()], dtype=np.int64)
    return tokens[penc.indices.to_numpy(zero_copy_only=False)]


def _tokens_of(reducer: ColumnReducer, b: Batch) -> np.ndarray:
    keep, key_cols, first = b.args[:3]
    return partition_tokens(reducer, [k.take(pa.array(first[np.flatnonzero(keep)])) for k in key_cols])


def staged_table(reducer: ColumnReducer, keep, key_cols, first, values, wts, exps, row_ts, row_exp) -> pa.Table:
    """What ``ColumnReducer._copy_text`` stages, as typed Arrow columns named and ordered as
    :func:`engine.pg_dialect.target_columns` (the same rows, tokens and metadata)."""
    schema = reducer.schema
    rows = np.flatnonzero(keep)
    take = pa.array(rows)
    keys = [k.take(pa.array(first[rows])) for k in key_cols]
    token = partition_tokens(reducer, keys)
    by_name = dict(zip(reducer.regular, range(len(reducer.regular)), strict=True))
    types = {c.name: c.pg_sql_type for c in schema.columns}
    cols: list[pa.Array] = [typed_column(types[c.name], k) for c, k in zip(schema.primary_key, keys, strict=True)]
    wt = np.full((len(rows), len(reducer.staged)), _NONE, dtype=np.int64)
    ex = np.full((len(rows), len(reducer.staged)), _NONE, dtype=np.int64)
    for i, name in enumerate(reducer.staged):
        j = by_name.get(name)
        if j is None:                                       # a dropped column: always NULL
            cols.append(pa.nulls(len(rows), ARROW_TYPES[types[name]]))
            continue
        cols.append(typed_column(types[name], values[j].take(take)))
        wt[:, i] = wts[j][rows]
        ex[:, i] = exps[j][rows]
    if not reducer.staged:
        raise NotImplementedError("a table without regular columns stages '{}' arrays")
    cols.append(pa.array(token, pa.int64()))
    cols.append(_int64_lists(wt))
    cols.append(_int64_lists(ex, (ex != _NONE).any(axis=1)))
    for meta in (row_ts[rows], row_exp[rows]):
        cols.append(pa.array(meta, pa.int64(), mask=meta == _NONE))
    names = d.target_columns(schema)
    return pa.table(cols, names=names)


_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"   # + flags, extension
_TRAILER = b"\xff\xff"
_NULL_FIELD = pa.scalar(b"\xff\xff\xff\xff", pa.binary())          # length -1
_FIXED = {pa.int64(): ">i8", pa.int32(): ">i4", pa.int16(): ">i2", pa.float64(): ">f8"}
_OIDS = {pa.int64(): 20, pa.int32(): 23, pa.int16(): 21, pa.float64(): 701}


def _binary_rows(data: np.ndarray, width: int) -> pa.Array:
    """A contiguous (n × width bytes) numpy record array → a binary array of n values."""
    n = len(data)
    offsets = np.arange(0, n * width + 1, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])


def _fixed_items(arr: pa.Array) -> pa.Array:
    """Each value as a binary COPY field: 4-byte length, big-endian value; NULL: length -1."""
    fmt = _FIXED[arr.type]
    size = np.dtype(fmt).itemsize
    rec = np.empty(len(arr), dtype=[("len", ">i4"), ("v", fmt)])
    rec["len"] = size
    rec["v"] = arr.fill_null(0).to_numpy(zero_copy_only=False)
    out = _binary_rows(rec, 4 + size)
    return pc.if_else(arr.is_null(), _NULL_FIELD, out) if arr.null_count else out


def _length_prefixed(body: pa.Array) -> pa.Array:
    """Binary values → fields: 4-byte big-endian length, then the bytes; NULL: length -1."""
    lengths = pc.binary_length(body).fill_null(0).to_numpy(zero_copy_only=False).astype(">i4")
    out = pc.binary_join_element_wise(_binary_rows(lengths, 4), body, b"")
    return out.fill_null(_NULL_FIELD) if body.null_count else out


def binary_field(arr: pa.Array) -> pa.Array:
    """One column → its binary COPY fields, one binary value per row."""
    t = arr.type
    if t in _FIXED:
        return _fixed_items(arr)
    if t == pa.string():
        return _length_prefixed(arr.cast(pa.binary()))
    if pa.types.is_list(t) and t.value_type in _FIXED:
        # PostgreSQL's array_recv: ndim, has-nulls flag, element oid, then per dimension its
        # length and lower bound (1), then each element as a field.
        n = len(arr)
        offsets = arr.offsets.to_numpy()
        if offsets[0] != 0 or not (np.diff(offsets) > 0).all():
            raise NotImplementedError("empty arrays need ndim 0")
        items = arr.values.slice(offsets[0], offsets[-1] - offsets[0])
        parts = _fixed_items(items)
        joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets - offsets[0]), parts), b"")
        nulls = np.r_[0, np.cumsum(items.is_null().to_numpy(zero_copy_only=False))][offsets - offsets[0]]
        head = np.empty(n, dtype=[("ndim", ">i4"), ("flags", ">i4"), ("oid", ">i4"), ("dim", ">i4"), ("lb", ">i4")])
        head["ndim"], head["oid"], head["lb"] = 1, _OIDS[t.value_type], 1
        head["flags"] = np.diff(nulls) > 0
        head["dim"] = np.diff(offsets)
        body = pc.binary_join_element_wise(_binary_rows(head, 20), joined, b"")
        if arr.null_count:
            body = pc.if_else(arr.is_null(), pa.scalar(None, pa.binary()), body)
        return _length_prefixed(body)
    raise NotImplementedError(f"no binary COPY encoder for {t}")


def binary_copy(table: pa.Table) -> bytes:
    """The whole binary COPY stream of ``table`` (signature, one tuple per row, trailer), built
    column-wise: each column's fields as an Arrow binary array, the rows joined by one kernel."""
    fields = [binary_field(c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c) for c in table.columns]
    count = pa.scalar(np.array(table.num_columns, ">i2").tobytes(), pa.binary())
    line = pc.binary_join_element_wise(count, *fields, b"")
    offsets = np.frombuffer(line.buffers()[1], dtype=np.int32)[line.offset: line.offset + len(line) + 1]
    return _SIGNATURE + line.buffers()[2].to_pybytes()[offsets[0]: offsets[-1]] + _TRAILER


# ---------------------------------------------------------------------------------------
# The candidates
# ---------------------------------------------------------------------------------------

def _backend_cpu(pid: int) -> float:
    """CPU seconds of a local process: its time on a CPU in ns from ``/proc/<pid>/schedstat``
    (clock ticks of ``stat``, 10 ms, are coarser than one batch's send), else user + system
    ticks; 0 if neither is readable."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return _backend_ticks(pid)


def _backend_ticks(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Candidate:
    """One way into the stage: ``build`` (reduced columns → the driver's input) and ``send``
    (that input → rows in ``_c2pg_stage``), on its own connection."""

    name: str
    build: Callable[[Batch], Any]
    send: Callable[[Any], None] | None     # None: build only (a part of the others, timed apart)
    begin: Callable[[], None]                 # a transaction with the stage created
    digest: Callable[[], tuple[str, int]]     # the stage's rows: (md5 in key order, count)
    end: Callable[[], None]                   # roll back (the stage goes with it)
    backend_pid: int


@dataclass
class Stack:
    schema: TableSchema
    pg2: Any = None
    pg3: Any = None
    adbc: Any = None
    closers: list = field(default_factory=list)


def create_target(admin, schema: TableSchema, target_schema: str) -> None:
    """``<target_schema>.<table>`` as sync creates its target (an autocommit connection)."""
    drop_target(admin, target_schema)
    with admin.cursor() as cur:
        for stmt in d.create_target(schema, target_schema, schema.table, with_token_index=False):
            cur.execute(stmt)


def drop_target(admin, target_schema: str) -> None:
    with admin.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(target_schema)))


def _digest_sql(schema: TableSchema) -> sql.Composed:
    """The stage's rows as text, in key order: (md5, count)."""
    order = sql.SQL(", ").join(sql.Identifier("t", c.name) for c in schema.primary_key)
    return sql.SQL("SELECT md5(string_agg(t::text, E'\\n' ORDER BY {})), count(*) FROM {} t").format(
        order, sql.Identifier(d.STAGE))


def connect(kwargs: dict, reducer: ColumnReducer, target_schema: str) -> tuple[Stack, dict[str, Candidate]]:
    """Three connections (psycopg2, psycopg 3, ADBC) and the candidates on them. The target
    table (``<target_schema>.<table>``, :func:`create_target`) exists; the stage is made ``LIKE`` it."""
    import adbc_driver_postgresql.dbapi as adbc
    import psycopg
    import psycopg2

    schema = reducer.schema
    st = Stack(schema)
    st.pg2 = psycopg2.connect(**kwargs)
    st.closers.append(st.pg2.close)
    cols = d.target_columns(schema)
    create = d.create_stage(target_schema, schema.table).as_string(st.pg2)
    copy_text = d.copy_stage(cols).as_string(st.pg2)
    copy_binary = copy_text + " (FORMAT BINARY)"
    digest = _digest_sql(schema).as_string(st.pg2)
    pg_types = [c.pg_sql_type for c in schema.columns] + ["bigint", "bigint[]", "bigint[]", "bigint", "bigint"]
    cands: dict[str, Candidate] = {}

    # psycopg2 (today's driver)
    cur2 = st.pg2.cursor()

    def begin2() -> None:
        cur2.execute(create)

    def digest2() -> tuple[str, int]:
        cur2.execute(digest)
        md5, n = cur2.fetchone()
        return md5, n

    def send_a(text: bytes) -> None:
        cur2.copy_expert(copy_text, io.BytesIO(text))

    cur2.execute("SELECT pg_backend_pid()")
    pid2 = cur2.fetchone()[0]
    st.pg2.rollback()
    cands["A"] = Candidate("A", lambda b: reducer._copy_text(*b.args), send_a, begin2, digest2,
                           st.pg2.rollback, pid2)

    # psycopg 3
    conn3 = psycopg.connect(**kwargs)
    st.pg3 = conn3
    st.closers.append(conn3.close)
    cur3 = conn3.cursor()
    cur3.execute("SELECT pg_backend_pid()")
    pid3 = cur3.fetchone()[0]
    conn3.rollback()

    def begin3() -> None:
        cur3.execute(create)

    def digest3() -> tuple[str, int]:
        cur3.execute(digest)
        md5, n = cur3.fetchone()
        return md5, n

    def send_a3(text: bytes) -> None:
        with cur3.copy(copy_text) as cp:
            cp.write(text)

    def send_b1(rows: list[tuple]) -> None:
        with cur3.copy(copy_binary) as cp:
            cp.set_types(pg_types)
            for row in rows:
                cp.write_row(row)

    def send_b2(buf: bytes) -> None:
        with cur3.copy(copy_binary) as cp:
            cp.write(buf)

    cands["A3"] = Candidate("A3", lambda b: reducer._copy_text(*b.args), send_a3, begin3, digest3, conn3.rollback, pid3)
    cands["B1"] = Candidate("B1", lambda b: _py_rows(staged_table(reducer, *b.args)), send_b1, begin3, digest3,
                            conn3.rollback, pid3)
    cands["B2"] = Candidate("B2", lambda b: binary_copy(staged_table(reducer, *b.args)), send_b2, begin3, digest3,
                            conn3.rollback, pid3)

    # ADBC
    uri = (f"postgresql://{quote(kwargs['user'], safe='')}:{quote(kwargs['password'], safe='')}"
           f"@{kwargs['host']}:{kwargs['port']}/{kwargs['dbname']}")
    conna = adbc.connect(uri)
    st.adbc = conna
    st.closers.append(conna.close)
    cura = conna.cursor()
    st.closers.insert(0, cura.close)
    cura.execute("SELECT pg_backend_pid()")
    pida = cura.fetchone()[0]
    conna.rollback()

    def begina() -> None:
        cura.execute(create)

    def digesta() -> tuple[str, int]:
        cura.execute(digest)
        md5, n = cura.fetchone()
        return md5, n

    def send_c(table: pa.Table) -> None:
        # mode "append" into the stage created above; temporary=True names the temp schema
        # (without it the driver looks for public._c2pg_stage). Columns matched by name.
        cura.adbc_ingest(d.STAGE, table, mode="append", temporary=True)

    cands["C"] = Candidate("C", lambda b: staged_table(reducer, *b.args), send_c, begina, digesta, conna.rollback, pida)
    cands["T"] = Candidate("T", lambda b: staged_table(reducer, *b.args), None, begina, digesta, conna.rollback, pida)
    cands["K"] = Candidate("K", lambda b: _tokens_of(reducer, b), None, begina, digesta, conna.rollback, pida)
    return st, cands


def _py_rows(table: pa.Table) -> list[tuple]:
    return list(zip(*(c.to_pylist() for c in table.columns), strict=True))


def close(st: Stack) -> None:
    for fn in st.closers:
        fn()


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------

@dataclass
class Tally:
    build_wall: float = 0.0
    build_cpu: float = 0.0
    send_wall: float = 0.0
    send_cpu: float = 0.0
    backend_cpu: float = 0.0

    def as_dict(self, rows: int, events: int) -> dict[str, float]:
        out = {}
        for k, v in (("build_wall", self.build_wall), ("build_cpu", self.build_cpu), ("send_wall", self.send_wall),
                     ("send_cpu", self.send_cpu), ("backend_cpu", self.backend_cpu)):
            out[f"{k}_us_per_row"] = round(v / rows * 1e6, 3)
            out[f"{k}_us_per_event"] = round(v / events * 1e6, 3)
        return out


def run_once(c: Candidate, b: Batch, want: tuple[str, int], tally: Tally | None) -> None:
    """Build, begin (stage created), send, check against A's rows, roll back."""
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    data = c.build(b)
    w1, c1 = time.perf_counter(), time.process_time()
    if c.send is None:
        if tally is not None:
            tally.build_wall += w1 - w0
            tally.build_cpu += c1 - c0
        return
    c.begin()
    s0 = _backend_cpu(c.backend_pid)
    w2, c2 = time.perf_counter(), time.process_time()
    c.send(data)
    w3, c3 = time.perf_counter(), time.process_time()
    s1 = _backend_cpu(c.backend_pid)
    got = c.digest()
    c.end()
    if got != want:
        raise AssertionError(f"{c.name} staged other rows than A: {got} vs {want}")
    if tally is not None:
        tally.build_wall += w1 - w0
        tally.build_cpu += c1 - c0
        tally.send_wall += w3 - w2
        tally.send_cpu += c3 - c2
        tally.backend_cpu += s1 - s0


def reference(cands: dict[str, Candidate], b: Batch) -> tuple[str, int]:
    """What A stages for ``b`` (its text must be the engine's own bytes)."""
    a = cands["A"]
    if a.build(b) != b.text:
        raise AssertionError("A's text differs from the reducer's StagedRows.copy_text")
    a.begin()
    a.send(b.text)
    want = a.digest()
    a.end()
    if want[1] != b.rows:
        raise AssertionError(f"A staged {want[1]} rows, the reducer built {b.rows}")
    return want


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batches", default="5000,20000", help="batch sizes (records), comma-separated")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--budget", type=float, default=900.0, help="seconds; no repetition starts after it")
    p.add_argument("--config", default="examples/pipeline.local.yaml")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)

    from engine.config import load_config

    import psycopg2

    started = time.time()
    load_start = os.getloadavg()
    schema = bench_schema()
    values = [orjson.dumps(v) for _, v, _ in generate(args.events, max(1, args.events // 10))]
    sizes = [int(s) for s in args.batches.split(",")]
    sets = {size: reduced_batches(schema, values, size) for size in sizes}
    kwargs = load_config(Path(args.config)).postgres.connect_kwargs()
    admin = psycopg2.connect(**kwargs)
    admin.autocommit = True
    create_target(admin, schema, BENCH_SCHEMA)
    st, cands = connect(kwargs, reducer_for(schema), BENCH_SCHEMA)
    rnd = random.Random(args.seed)  # nosec B311 - shuffles the candidates' order, no secret
    result: dict[str, Any] = {"sets": {}}
    try:
        wants = {size: [reference(cands, b) for b in batches] for size, batches in sets.items()}
        for size, batches in sets.items():                   # warm-up, checked, not timed
            for b, want in zip(batches, wants[size], strict=True):
                for name in CANDIDATES + CONTEXT:
                    run_once(cands[name], b, want, None)
        tallies: dict[int, dict[str, list[Tally]]] = {s: {n: [] for n in CANDIDATES + CONTEXT} for s in sizes}
        reps_done = 0
        for _ in range(args.reps):
            if time.time() - started > args.budget:
                break
            for size, batches in sets.items():
                rep = {n: Tally() for n in CANDIDATES + CONTEXT}
                for b, want in zip(batches, wants[size], strict=True):
                    order = list(CANDIDATES + CONTEXT)
                    rnd.shuffle(order)
                    for name in order:
                        run_once(cands[name], b, want, rep[name])
                for n in CANDIDATES + CONTEXT:
                    tallies[size][n].append(rep[n])
            reps_done += 1
        for size, batches in sets.items():
            rows, events = sum(b.rows for b in batches), sum(b.events for b in batches)
            per = {}
            for n in CANDIDATES + CONTEXT:
                reps = [t.as_dict(rows, events) for t in tallies[size][n]]
                summary = {k: _median([r[k] for r in reps]) for k in reps[0]} if reps else {}
                if reps:
                    for unit in ("row", "event"):
                        for part in ("wall", "cpu"):
                            tot = [r[f"build_{part}_us_per_{unit}"] + r[f"send_{part}_us_per_{unit}"] for r in reps]
                            summary[f"total_{part}_us_per_{unit}"] = _median(tot)
                            summary[f"total_{part}_us_per_{unit}_range"] = [round(min(tot), 3), round(max(tot), 3)]
                per[n] = {"label": LABELS[n], "median": summary, "reps": reps}
            result["sets"][str(size)] = {
                "batch_records": size, "batches": len(batches), "events": events, "staged_rows": rows,
                "reduce_cpu_us_per_event": round(sum(b.reduce_s for b in batches) / events * 1e6, 3),
                "candidates": per}
        result["reps"] = reps_done
    finally:
        close(st)
        drop_target(admin, BENCH_SCHEMA)
        admin.close()

    import adbc_driver_postgresql
    import psycopg

    run = {
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "command": "python -m benchmarks.stage_copy " + " ".join(argv if argv is not None else sys.argv[1:]),
        "events": args.events, "keys": max(1, args.events // 10), "table": f"{schema.keyspace}.{schema.table}",
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "versions": {"pyarrow": pa.__version__, "numpy": np.__version__, "psycopg": psycopg.__version__,
                     "psycopg2": psycopg2.__version__.split()[0],
                     "adbc_driver_postgresql": adbc_driver_postgresql.__version__},
        **result,
    }
    report(run)
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
        doc["runs"].append(run)
        RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


def report(run: dict) -> None:
    print(f"stage_copy: {run['events']} events, {run['reps']} reps, load average "
          f"{run['load_average_start']} → {run['load_average_end']} ({run['cpus']} CPUs)")
    for size, s in run["sets"].items():
        print(f"\nbatches of {size} records: {s['batches']} batches, {s['events']} events → {s['staged_rows']} "
              f"staged rows; reduce() CPU {s['reduce_cpu_us_per_event']} µs/event (incl. A's text)")
        print(f"  {'candidate':60} {'µs/row: build cpu':>17} {'send cpu':>9} {'backend':>8} {'total cpu':>10} "
              f"{'total wall [min-max]':>22} {'µs/event: cpu':>14} {'wall':>7}")
        for c in s["candidates"].values():
            m = c["median"]
            lo, hi = m["total_wall_us_per_row_range"]
            print(f"  {c['label']:60} {m['build_cpu_us_per_row']:17.2f} {m['send_cpu_us_per_row']:9.2f} "
                  f"{m['backend_cpu_us_per_row']:8.2f} {m['total_cpu_us_per_row']:10.2f} "
                  f"{m['total_wall_us_per_row']:8.2f} [{lo:.2f}-{hi:.2f}] "
                  f"{m['total_cpu_us_per_event']:14.2f} {m['total_wall_us_per_event']:7.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
