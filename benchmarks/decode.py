"""Decode benchmark (issue #14): a batch of Debezium Cassandra records → columns, four ways.

    .venv/bin/python -m benchmarks.decode [--events 200000] [--batch 5000] [--reps 5]

Input: the raw value bytes a Kafka consumer hands over, in two sets of ``--events`` records:

- ``bench``: :func:`benchmarks.sync.generate` for ``c2pg_bench.sync_events`` (id bigint key;
  name text, price double, qty int, updated bigint), ``orjson.dumps`` of each value, as
  :func:`benchmarks.sync.fill_topics` produces them;
- ``fixtures``: the recorded connector events of ``tests/fixtures/debezium`` (one table with
  every CQL type, collections, UDTs, row/partition/range deletions) repeated to ``--events``.

Output, per batch of ``--batch`` records (the sync worker's ``batch_max_events``): one Arrow
table (:data:`COLUMNS`, below) and the dead letters ``(position, reason)``. Candidates:

- ``A_per_event``: today's path, :meth:`engine.sync.decode.EventDecoder.decode` per record, giving
  :class:`~engine.events.ChangeEvent` objects (the oracle; its time excludes turning them into
  columns, since today's reducer takes the objects);
- ``B_msgspec``: ``msgspec.json.Decoder`` with Structs typed from the table's schema, then
  column builders;
- ``C_pyarrow_json``: ``pyarrow.json.read_json`` over the newline-joined batch with an
  explicit schema, then Arrow compute;
- ``D_orjson``: ``orjson.loads`` per record, then column builders.

B, C and D share everything after parsing (:func:`assemble`): the key, op, write time and
per column set flag / value / expiry, with type conversions as Arrow kernels for integers,
text and doubles and the column's codec per value for the other types (as the snapshot's
``_column_converter`` does). A record the columnar path does not take — a range deletion
(op ``r``, bounds are per-record work), anything malformed, a value that does not convert —
goes to the *slow lane*: ``EventDecoder.decode`` for that record alone, which returns its
event or raises the :class:`~engine.sync.decode.DecodeError` that makes it a dead letter, with
today's reason. A parse error that fails a whole batch (pyarrow.json fails the read for one
bad line) is found by bisection (:func:`decode_batch`).

Every candidate's columns must equal the oracle's for every record, and its dead letters
the oracle's (checked before timing; a difference fails the run). Then the columnar reduce
candidates of :mod:`benchmarks.reduce_columns` run on the ``bench`` columns. Every
repetition's figures are appended to ``benchmarks/results/decode.json`` (a ``runs`` list).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import re
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from benchmarks.sync import KS, TABLE, generate
from engine.sync.decode import DecodeError, EventDecoder, SchemaChanged
from engine.events import ChangeEvent, Op, Origin
from engine.schema import Column, TableSchema
from engine.sync.decode_columns import INT_BITS as _INT_RANGE
from engine.sync.decode_columns import convert
from engine.types import codec, parse_cql_type

RESULTS = Path(__file__).resolve().parent / "results"
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "debezium"

_FAST_OPS = ("i", "u", "d")


# ---------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------

def bench_schema() -> TableSchema:
    """``c2pg_bench.sync_events`` as :func:`engine.schema.read_table` returns it (regular
    columns by name, as ``system_schema`` lists them)."""
    regular = (("name", "text"), ("price", "double"), ("qty", "int"), ("updated", "bigint"))
    return TableSchema(KS, TABLE, (Column("id", "partition_key", 0, parse_cql_type("bigint")),), (),
                       tuple(Column(n, "regular", -1, parse_cql_type(t)) for n, t in regular), True)


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch in "<(") - (ch in ">)")
        if ch == "," and depth == 0:
            parts, cur = parts + [cur.strip()], ""
        else:
            cur += ch
    return parts + [cur.strip()] if cur.strip() else parts


def fixture_schema(statements: Sequence[str]) -> TableSchema:
    """The table of the fixtures' ``CREATE TYPE``/``CREATE TABLE`` statements (single-column
    partition key, as every fixture has)."""
    udts, table = {}, None
    for stmt in statements:
        if m := re.match(r"CREATE TYPE (?:IF NOT EXISTS )?\w+\.(\w+) \((.*)\)\s*\Z", stmt, re.S):
            udts[m[1]] = tuple(tuple(f.split(None, 1)) for f in _split_top(m[2]))
        elif m := re.match(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)\.(\w+) \((.*)\)", stmt, re.S):
            table = m
    assert table is not None, "no CREATE TABLE among the fixture's statements"
    defs, pk, ck = {}, [], []
    for item in _split_top(table[3]):
        if item.upper().startswith("PRIMARY KEY"):
            keys = _split_top(item[item.index("(") + 1:item.rindex(")")])
            pk, ck = [keys[0]], keys[1:]
        else:
            name, typ = item.split(None, 1)
            defs[name] = parse_cql_type(typ.strip(), udts)
    return TableSchema(table[1], table[2],
                       tuple(Column(c, "partition_key", i, defs[c]) for i, c in enumerate(pk)),
                       tuple(Column(c, "clustering", i, defs[c]) for i, c in enumerate(ck)),
                       tuple(Column(c, "regular", -1, defs[c]) for c in sorted(defs) if c not in pk + ck), True)


# ---------------------------------------------------------------------------------------
# The columns every candidate produces
# ---------------------------------------------------------------------------------------

def columns_schema(schema: TableSchema) -> pa.Schema:
    """What a decoded batch is, one row per record that is not a dead letter:

    ``pos`` (the record's position in the batch), ``op`` (:class:`~engine.events.Op` value),
    ``row_marker`` and ``marker_expires_us`` (an INSERT's), ``ts`` (``source.ts_us``),
    ``k.<col>`` per primary-key column (canonical text; the clustering part null for a
    partition or range deletion), per regular column ``s.<col>`` (the mutation wrote the
    cell), ``v.<col>`` (its canonical text, null for a deletion) and ``x.<col>`` (its TTL
    expiry, µs), and ``bounds`` (a range deletion's bounds as JSON, else null).
    """
    fields = [("pos", pa.int64()), ("op", pa.string()), ("row_marker", pa.bool_()),
              ("marker_expires_us", pa.int64()), ("ts", pa.int64())]
    fields += [(f"k.{c.name}", pa.string()) for c in schema.primary_key]
    for c in _regular(schema):
        fields += [(f"s.{c.name}", pa.bool_()), (f"v.{c.name}", pa.string()), (f"x.{c.name}", pa.int64())]
    return pa.schema(fields + [("bounds", pa.string())])


def _regular(schema: TableSchema) -> tuple[Column, ...]:
    return tuple(c for c in schema.regular if not c.dropped)


def _bounds_json(ev: ChangeEvent) -> str | None:
    if ev.op is not Op.RANGE_DELETE:
        return None
    side = [None if b is None else [list(b.values), b.inclusive] for b in (ev.range_start, ev.range_end)]
    return json.dumps(side)


def events_table(schema: TableSchema, events: Sequence[tuple[int, ChangeEvent]]) -> pa.Table:
    """``(position, event)`` pairs → the columns, in Python: the slow lane's rows and the
    oracle's whole output (for the equality check, untimed)."""
    n_key = len(schema.primary_key)
    cols: dict[str, list] = {f.name: [] for f in columns_schema(schema)}
    for pos, ev in events:
        cols["pos"].append(pos)
        cols["op"].append(ev.op.value)
        cols["row_marker"].append(ev.row_marker)
        cols["marker_expires_us"].append(ev.marker_expires_us)
        cols["ts"].append(ev.ts)
        key = ev.key + (None,) * (n_key - len(ev.key))
        for c, v in zip(schema.primary_key, key, strict=True):
            cols[f"k.{c.name}"].append(v)
        cells = dict(ev.cells)
        for c in _regular(schema):
            cell = cells.get(c.name)
            cols[f"s.{c.name}"].append(cell is not None)
            cols[f"v.{c.name}"].append(None if cell is None else cell.value)
            cols[f"x.{c.name}"].append(None if cell is None else cell.expires_us)
        cols["bounds"].append(_bounds_json(ev))
    return pa.table(cols, schema=columns_schema(schema))


# ---------------------------------------------------------------------------------------
# Column-wise conversions: Arrow kernels where c2pg's text is Arrow's, the codec elsewhere
# ---------------------------------------------------------------------------------------

# The conversions are the engine's (engine.sync.decode_columns.convert): these candidates
# were measured with the same code before it moved there.


# ---------------------------------------------------------------------------------------
# Shared by B, C and D: envelope columns → the columns
# ---------------------------------------------------------------------------------------

class Envelope:
    """The envelope of a batch as columns, before conversion (what a parser hands over).

    ``op``, ``keyspace``, ``table`` (strings), ``ts`` (integers): Python lists or Arrow
    arrays. ``cells[name]`` = ``(present, value, deletion_ts)``: the entry of ``after`` is a
    cell record (bool per record), its ``value`` and ``deletion_ts``. ``reject`` marks the
    records the parser already knows the columnar path cannot take.
    """

    __slots__ = ("cells", "keyspace", "n", "op", "reject", "table", "ts")

    def __init__(self, n: int, op, keyspace, table, ts, cells: dict, reject: np.ndarray):
        self.n, self.op, self.keyspace, self.table, self.ts = n, op, keyspace, table, ts
        self.cells, self.reject = cells, reject


def _np_bool(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (pa.Array, pa.ChunkedArray)):
        return x.fill_null(False).to_numpy(zero_copy_only=False)
    return np.asarray(x, dtype=bool)


class Assembler:
    """Everything that depends only on the schema, built once per table (like EventDecoder)."""

    def __init__(self, schema: TableSchema):
        self.schema = schema
        self.pk = [(c.name, codec(c.cql_type)) for c in schema.partition_key]
        self.ck = [(c.name, codec(c.cql_type)) for c in schema.clustering]
        self.regular = [(c.name, codec(c.cql_type), not c.cql_type.multi_cell) for c in _regular(schema)]
        self.out_schema = columns_schema(schema)

    def assemble(self, env: Envelope) -> tuple[pa.Table, np.ndarray]:
        """→ (the columns of the records taken, positions of the records for the slow lane)."""
        n = env.n
        op = _strs(env.op)
        reject = env.reject.copy()
        reject |= ~_np_bool(pc.is_in(op, pa.array(_FAST_OPS)))
        reject |= ~_np_bool(pc.equal(_strs(env.keyspace), self.schema.keyspace))
        reject |= ~_np_bool(pc.equal(_strs(env.table), self.schema.table))
        ts, bad_ts = _ints(env.ts)
        reject |= bad_ts | _np_bool(pc.is_null(ts))
        is_d = _np_bool(pc.equal(op, "d"))
        cols: dict[str, Any] = {}

        # Keys: every partition-key cell holds a value that converts to non-null text.
        for name, cd in self.pk:
            present, value, _ = env.cells[name]
            text, bad = convert(cd, value)
            reject |= ~_np_bool(present) | bad | _np_bool(pc.is_null(text))
            cols[f"k.{name}"] = text
        # Clustering: all set (a row), or, for a d, all null (a partition deletion).
        ck_set = np.ones(n, dtype=bool)
        ck_none = np.ones(n, dtype=bool)
        ck_texts = []
        for name, cd in self.ck:
            present, value, _ = env.cells[name]
            text, bad = convert(cd, value)
            has = _np_bool(present) & _not_null(value)
            reject |= bad
            ck_set &= has & ~_np_bool(pc.is_null(text))
            ck_none &= ~has
            ck_texts.append((name, text))
        partition = is_d & ck_none & (len(self.ck) > 0)
        reject |= ~ck_set & ~partition
        for name, text in ck_texts:
            cols[f"k.{name}"] = pc.if_else(pa.array(partition), pa.scalar(None, pa.string()), text)

        # Regular cells (an upsert's only: a d event's cells are its deletion, not writes).
        upsert = ~is_d
        live_exp: list[tuple[np.ndarray, pa.Array]] = []
        for name, cd, one_cell in self.regular:
            present, value, dts = env.cells[name]
            written = _np_bool(present) & upsert
            text, bad = convert(cd, value)
            dts, bad_dts = _ints(dts)
            live = written & ~_np_bool(pc.is_null(text))
            reject |= (bad & written) | (bad_dts & live)
            mask = pa.array(~written)
            cols[f"s.{name}"] = pa.array(written)
            cols[f"v.{name}"] = pc.if_else(mask, pa.scalar(None, pa.string()), text)
            cols[f"x.{name}"] = pc.if_else(pa.array(~live), pa.scalar(None, pa.int64()), dts)
            if one_cell:
                live_exp.append((live, cols[f"x.{name}"]))
        marker = _np_bool(pc.equal(op, "i"))
        cols["marker_expires_us"] = self._marker_expiry(marker, live_exp, n)
        cols["row_marker"] = pa.array(marker)
        cols["op"] = pa.array(np.where(is_d, np.where(partition, Op.PARTITION_DELETE.value, Op.ROW_DELETE.value),
                                       Op.UPSERT.value))
        cols["ts"] = ts
        cols["pos"] = pa.array(np.arange(n, dtype=np.int64))
        cols["bounds"] = pa.nulls(n, pa.string())
        keep = pa.array(~reject)
        table = pa.table([cols[f.name] for f in self.out_schema], schema=self.out_schema).filter(keep)
        return table, np.flatnonzero(reject)

    @staticmethod
    def _marker_expiry(marker: np.ndarray, live_exp, n: int) -> pa.Array:
        """An INSERT's marker expiry: the one expiry every live single-cell value shares
        (none if one of them has none, or they differ) — EventDecoder's rule, column-wise."""
        any_live = np.zeros(n, dtype=bool)
        all_exp = np.ones(n, dtype=bool)
        lo = np.full(n, np.iinfo(np.int64).max)
        hi = np.full(n, np.iinfo(np.int64).min)
        for live, exp in live_exp:
            has = _np_bool(pc.is_valid(exp))
            e = exp.fill_null(0).to_numpy(zero_copy_only=False)
            any_live |= live
            all_exp &= ~live | has
            lo = np.where(live & has, np.minimum(lo, e), lo)
            hi = np.where(live & has, np.maximum(hi, e), hi)
        ok = marker & any_live & all_exp & (lo == hi)
        return pa.array(np.where(ok, lo, 0), pa.int64(), mask=~ok)


def _strs(values: Any) -> pa.Array:
    """Strings as Arrow; a value that is not a string becomes null (it then compares unequal
    to the table's names and the op letters, so its record is rejected)."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    try:
        arr = pa.array(values)
        if pa.types.is_string(arr.type) or pa.types.is_null(arr.type):
            return arr.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    return pa.array([v if v.__class__ is str else None for v in values], pa.string())


def _ints(values: Any) -> tuple[pa.Array, np.ndarray]:
    """64-bit integers as Arrow, and the rows holding something else (not null, not an int:
    the decoder refuses a float, a bool or a string there). Inferred, then checked: a cast of
    Python values would truncate floats."""
    n = len(values)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values, np.zeros(n, dtype=bool)
    try:
        arr = pa.array(values)
        if arr.type == pa.int64() or pa.types.is_null(arr.type):
            return arr.cast(pa.int64()), np.zeros(n, dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    ok = [v is None or (v.__class__ is int and -(2 ** 63) <= v < 2 ** 63) for v in values]
    return (pa.array([v if k else None for v, k in zip(values, ok, strict=True)], pa.int64()),
            ~np.asarray(ok, dtype=bool))


def _not_null(values: Any) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return _np_bool(pc.is_valid(values))
    return np.asarray([v is not None for v in values], dtype=bool)


# ---------------------------------------------------------------------------------------
# The parsers
# ---------------------------------------------------------------------------------------

class OrjsonLane:
    """D: ``orjson.loads`` per record, then comprehensions per column."""

    name = "D_orjson"

    def __init__(self, schema: TableSchema):
        self.asm = Assembler(schema)
        self.names = [c.name for c in schema.columns]
        self.known = frozenset(self.names + ["_range_start", "_range_end"])

    def __call__(self, values: Sequence[bytes]) -> tuple[pa.Table, np.ndarray]:
        n = len(values)
        reject = np.zeros(n, dtype=bool)
        try:
            docs = [orjson.loads(v) for v in values]
        except orjson.JSONDecodeError:
            docs = []
            for i, v in enumerate(values):
                try:
                    docs.append(orjson.loads(v))
                except orjson.JSONDecodeError:
                    docs.append(None)
                    reject[i] = True
        # The shape: a dict with a dict source and a dict after naming known columns only.
        for i, d in enumerate(docs):
            if (d.__class__ is not dict or d.get("source").__class__ is not dict
                    or d.get("after").__class__ is not dict or not self.known.issuperset(d["after"])):
                reject[i] = True
        if reject.any():
            stub = {"op": None, "source": {}, "after": {}}
            docs = [stub if r else d for d, r in zip(docs, reject, strict=True)]
        srcs = [d["source"] for d in docs]
        afters = [d["after"] for d in docs]
        cells = {}
        for name in self.names:
            entries = [a.get(name) for a in afters]
            present = [e.__class__ is dict for e in entries]
            # A cell that is not a record, or lacks 'value': the slow lane says why.
            bad = [e is not None and (e.__class__ is not dict or "value" not in e) for e in entries]
            if any(bad):
                reject |= np.asarray(bad)
            value = [e.get("value") if p else None for e, p in zip(entries, present, strict=True)]
            dts = [e.get("deletion_ts") if p else None for e, p in zip(entries, present, strict=True)]
            cells[name] = (present, value, dts)
        env = Envelope(n, [d.get("op") for d in docs], [s.get("keyspace") for s in srcs],
                       [s.get("table") for s in srcs], [s.get("ts_us") for s in srcs], cells, reject)
        return self.asm.assemble(env)


class MsgspecLane:
    """B: ``msgspec.json.Decoder`` with Structs generated from the schema: the envelope's
    types are checked while parsing (a wrong type fails that record, which the slow lane
    then explains), unknown ``after`` fields included."""

    name = "B_msgspec"

    def __init__(self, schema: TableSchema):
        self.asm = Assembler(schema)
        self.names = [c.name for c in schema.columns]
        # gc=False: the Structs hold no cycles, and 5,000 records make ~40,000 of them per
        # batch, which would otherwise wake the cyclic garbage collector again and again.
        cell_types = {}
        for c in schema.columns:
            t = _msgspec_value_type(c.cql_type.kind)
            cell_types[c.name] = msgspec.defstruct(
                f"Cell_{c.name}", [("value", t), ("deletion_ts", int | None, None)], gc=False)
        after_fields = [(f"c{i}", cell_types[name] | None, msgspec.field(name=name, default=None))
                        for i, name in enumerate(self.names)]
        after_fields += [("range_start", Any, msgspec.field(name="_range_start", default=None)),
                         ("range_end", Any, msgspec.field(name="_range_end", default=None))]
        after = msgspec.defstruct("After", after_fields, forbid_unknown_fields=True, gc=False)
        source = msgspec.defstruct("Source", [("keyspace", str), ("table", str), ("ts_us", int)], gc=False)
        envelope = msgspec.defstruct("Value", [("op", str), ("source", source), ("after", after)], gc=False)
        self.decode = msgspec.json.Decoder(envelope).decode
        # The whole batch as one JSON array, in one call; a bad record fails it, and the
        # batch is parsed again record by record.
        self.decode_all = msgspec.json.Decoder(list[envelope]).decode
        self.attrs = [f"c{i}" for i in range(len(self.names))]

    def __call__(self, values: Sequence[bytes]) -> tuple[pa.Table, np.ndarray]:
        n = len(values)
        reject = np.zeros(n, dtype=bool)
        decode = self.decode
        try:
            recs = self.decode_all(b"[" + b",".join(values) + b"]")
            if len(recs) != n:                        # bad records that join into valid JSON
                raise msgspec.DecodeError(f"{len(recs)} records for {n} values")
        except msgspec.DecodeError:
            recs = []
            for i, v in enumerate(values):
                try:
                    recs.append(decode(v))
                except msgspec.DecodeError:
                    recs.append(None)
                    reject[i] = True
        if reject.any():
            stub = _stub_record(self.decode)
            recs = [stub if r else x for x, r in zip(recs, reject, strict=True)]
        afters = [r.after for r in recs]
        cells = {}
        for name, attr in zip(self.names, self.attrs, strict=True):
            entries = [getattr(a, attr) for a in afters]
            present = [e is not None for e in entries]
            cells[name] = (present, [None if e is None else e.value for e in entries],
                           [None if e is None else e.deletion_ts for e in entries])
        srcs = [r.source for r in recs]
        env = Envelope(n, [r.op for r in recs], [s.keyspace for s in srcs], [s.table for s in srcs],
                       [s.ts_us for s in srcs], cells, reject)
        return self.asm.assemble(env)


def _msgspec_value_type(kind: str) -> Any:
    if kind in _INT_RANGE:
        return int | None
    if kind == "double":
        return float | None                           # msgspec takes JSON integers for floats too
    if kind in ("text", "ascii"):
        return str | None
    return Any                                        # converted by the codec, which checks it


def _stub_record(decode: Callable[[bytes], Any]) -> Any:
    return decode(b'{"op":"?","source":{"keyspace":"","table":"","ts_us":0},"after":{}}')


class PyarrowJsonLane:
    """C: ``pyarrow.json.read_json`` over the batch's values joined by newlines, with an
    explicit schema for what is read (``source`` fields beyond it and unknown ``after``
    fields are inferred: the latter send their records to the slow lane, SchemaChanged).

    A line that is not valid JSON, or a value whose JSON type differs from the schema's,
    fails the whole read (``ArrowInvalid``); :func:`decode_batch` then bisects. A ``map``
    column cannot be read at all (``JSON conversion to map<…> is not supported``), and a
    UDT/tuple object is read as a struct: those tables are not covered here."""

    name = "C_pyarrow_json"

    def __init__(self, schema: TableSchema):
        self.asm = Assembler(schema)
        self.names = [c.name for c in schema.columns]
        fields = []
        for c in schema.columns:
            vt = _arrow_value_type(c.cql_type.kind)
            if vt is None:
                raise NotImplementedError(f"pyarrow.json cannot read column {c.name} of type {c.cql_type.cql()} "
                                          f"into a type the codec can take")
            fields.append(pa.field(c.name, pa.struct([("value", vt), ("deletion_ts", pa.int64())])))
        self.schema = pa.schema([
            ("op", pa.string()),
            ("source", pa.struct([("keyspace", pa.string()), ("table", pa.string()), ("ts_us", pa.int64())])),
            ("after", pa.struct(fields))])
        self.options = pj.ParseOptions(explicit_schema=self.schema, unexpected_field_behavior="infer")
        self.read_options = pj.ReadOptions(use_threads=False, block_size=1 << 26)
        self.known = {c.name for c in schema.columns} | {"_range_start", "_range_end"}

    def __call__(self, values: Sequence[bytes]) -> tuple[pa.Table, np.ndarray]:
        n = len(values)
        raw = pa.py_buffer(b"\n".join(values))
        t = pj.read_json(pa.BufferReader(raw), read_options=self.read_options, parse_options=self.options)
        if t.num_rows != n:                          # a value holding a newline, or not one object
            raise ValueError(f"{t.num_rows} JSON rows for {n} records")
        t = t.combine_chunks()
        reject = np.zeros(n, dtype=bool)
        after = t.column("after").chunk(0)
        for f in after.type:                          # inferred fields: columns the schema lacks
            if f.name not in self.known:
                reject |= _np_bool(pc.is_valid(after.field(f.name)))
        reject |= _np_bool(pc.is_null(after))
        src = t.column("source").chunk(0)
        cells = {}
        for name in self.names:
            cell = after.field(name)
            present = pc.is_valid(cell)
            cells[name] = (present, cell.field("value"), cell.field("deletion_ts"))
        env = Envelope(n, t.column("op").chunk(0), src.field("keyspace"), src.field("table"),
                       src.field("ts_us"), cells, reject)
        return self.asm.assemble(env)


def _arrow_value_type(kind: str) -> pa.DataType | None:
    if kind in _INT_RANGE:
        return pa.int64()
    if kind == "double":
        return pa.float64()
    if kind in ("text", "ascii"):
        return pa.string()
    return None


# Errors a fast lane may raise on a bad record it could not isolate itself: decode_batch
# bisects on them. Anything else is a bug and propagates.
_LANE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, pa.ArrowException, msgspec.MsgspecError)


def decode_batch(lane: Callable, decoder: EventDecoder, values: Sequence[bytes],
                 origins: Sequence[Origin]) -> tuple[pa.Table, list[tuple[int, str]]]:
    """One batch → (its columns, its dead letters ``(position, reason)``), by ``lane``.

    The lane takes what it can column-wise and names the records it did not take; those go
    through ``decoder`` one by one (the slow lane: an event, a Kafka tombstone, or a
    dead letter with the decoder's reason). If the lane fails on the whole slice (one bad line
    fails a pyarrow.json read), the slice is halved until the failing record is alone, which
    then goes to the slow lane: about 2·log2(batch) extra reads per bad record.
    """
    parts: list[pa.Table] = []
    slow: list[int] = []

    def run(lo: int, hi: int) -> None:
        try:
            table, rejected = lane(values[lo:hi])
        except _LANE_ERRORS:
            if hi - lo == 1:
                slow.append(lo)
                return
            mid = (lo + hi) // 2
            run(lo, mid)
            run(mid, hi)
            return
        if lo:
            table = table.set_column(0, "pos", pc.add(table.column("pos"), lo))
        parts.append(table)
        slow.extend(int(i) + lo for i in rejected)

    run(0, len(values))
    events, dead = [], []
    for i in slow:
        try:
            ev = decoder.decode(None, values[i], origins[i])
        except (DecodeError, SchemaChanged) as exc:
            dead.append((i, f"{type(exc).__name__}: {exc}"))
            continue
        if ev is not None:
            events.append((i, ev))
    if events:
        parts.append(events_table(decoder.schema, events))
    return pa.concat_tables(parts), dead


def decode_per_event(decoder: EventDecoder, values: Sequence[bytes], origins: Sequence[Origin]):
    """A: today's path. → ([(position, event)], dead letters)."""
    events, dead = [], []
    for i, (v, o) in enumerate(zip(values, origins, strict=True)):
        try:
            ev = decoder.decode(None, v, o)
        except (DecodeError, SchemaChanged) as exc:
            dead.append((i, f"{type(exc).__name__}: {exc}"))
            continue
        if ev is not None:
            events.append((i, ev))
    return events, dead


# ---------------------------------------------------------------------------------------
# Data sets and checks
# ---------------------------------------------------------------------------------------

def bench_values(n: int) -> list[bytes]:
    return [orjson.dumps(value) for _, value, _ in generate(n, max(1, n // 10))]


def fixture_values(n: int) -> tuple[TableSchema, list[bytes]]:
    docs = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]
    schema = fixture_schema(docs[0]["schema"])
    raw = [e["raw_value"].encode() for d in docs for e in d["events"] if e["raw_value"] is not None]
    return schema, [raw[i % len(raw)] for i in range(n)]


def with_bad_records(values: list[bytes], batch: int) -> tuple[list[bytes], list[int]]:
    """One bad record per batch, alternately a truncated JSON text and a value of the wrong
    type (a number where the schema has text, or text where it has a number)."""
    out, where = list(values), []
    for j, start in enumerate(range(0, len(values), batch)):
        i = start + (batch // 3 if j % 2 else batch // 2)
        if i >= len(values):
            break
        where.append(i)
        if j % 2 == 0:
            out[i] = values[i][: len(values[i]) // 2]
        else:
            doc = orjson.loads(values[i])
            for cell in doc["after"].values():
                if isinstance(cell, dict) and cell.get("value") is not None and cell is not doc["after"].get("id"):
                    v = cell["value"]
                    cell["value"] = "not a number" if isinstance(v, (int, float)) else 12345
                    break
            out[i] = orjson.dumps(doc)
    return out, where


def batches(values: Sequence[bytes], size: int):
    for start in range(0, len(values), size):
        chunk = values[start:start + size]
        yield start, chunk, [Origin("bench", 0, start + i) for i in range(len(chunk))]


def _rows(table: pa.Table) -> list[tuple]:
    t = table.sort_by("pos")
    return list(zip(*(t.column(i).to_pylist() for i in range(t.num_columns)), strict=True))


def check_equal(schema: TableSchema, decoder: EventDecoder, lane, values: list[bytes], size: int) -> int:
    """Raise AssertionError unless ``lane`` gives the oracle's columns and dead letters for
    every record; → the number of records compared."""
    for start, chunk, origins in batches(values, size):
        events, dead = decode_per_event(decoder, chunk, origins)
        table, lane_dead = decode_batch(lane, decoder, chunk, origins)
        want, got = _rows(events_table(schema, events)), _rows(table)
        if want != got:
            diff = next((w, g) for w, g in zip(want, got, strict=False) if w != g) if len(want) == len(got) \
                else (len(want), len(got))
            raise AssertionError(f"{lane.name}: batch at {start} differs from the oracle: {diff}")
        if sorted(dead) != sorted(lane_dead):
            raise AssertionError(f"{lane.name}: dead letters differ at batch {start}: {dead} vs {lane_dead}")
    return len(values)


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------

def timed(fn: Callable[[], Any], events: int) -> tuple[float, float]:
    """(wall, CPU) µs per event of one call. CPU time is the process's, all threads: on a
    shared machine it moves less than wall time when other work takes the cores."""
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - w0) / events * 1e6, (time.process_time() - c0) / events * 1e6


def time_decode(decoder: EventDecoder, lane, values: list[bytes], size: int) -> tuple[float, float]:
    """(wall, CPU) µs per event for one pass over ``values`` in batches of ``size``."""
    def run() -> None:
        for _, chunk, origins in batches(values, size):
            if lane is None:
                decode_per_event(decoder, chunk, origins)
            else:
                decode_batch(lane, decoder, chunk, origins)
    return timed(run, len(values))


def summary(reps: list[tuple[float, float]]) -> dict:
    wall, cpu = [w for w, _ in reps], [c for _, c in reps]
    return {"median_us": round(statistics.median(wall), 3), "min_us": round(min(wall), 3),
            "max_us": round(max(wall), 3), "reps_us": [round(r, 3) for r in wall],
            "cpu_median_us": round(statistics.median(cpu), 3), "cpu_min_us": round(min(cpu), 3),
            "cpu_max_us": round(max(cpu), 3), "cpu_reps_us": [round(r, 3) for r in cpu]}


def measure(name: str, schema: TableSchema, values: list[bytes], size: int, reps: int,
            lanes: dict[str, Any], rnd: random.Random) -> dict:
    """Every candidate ``reps`` times, interleaved in a shuffled order per repetition (the
    machine is shared: drift hits every candidate alike)."""
    decoder = EventDecoder(schema)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in lanes}
    for _ in range(reps):
        order = list(lanes)
        rnd.shuffle(order)
        for k in order:
            times[k].append(time_decode(decoder, lanes[k], values, size))
    out = {k: summary(v) for k, v in times.items()}
    print(f"{name}: " + ", ".join(f"{k} {v['median_us']:.2f} (CPU {v['cpu_median_us']:.2f}) µs/event"
                                  for k, v in out.items()), flush=True)
    return out


def make_lanes(schema: TableSchema) -> tuple[dict[str, Any], dict[str, str]]:
    lanes: dict[str, Any] = {"A_per_event": None}
    skipped = {}
    for cls in (MsgspecLane, PyarrowJsonLane, OrjsonLane):
        try:
            lanes[cls.name] = cls(schema)
        except NotImplementedError as exc:
            skipped[cls.name] = str(exc)
    return lanes, skipped


def main() -> None:
    from benchmarks import reduce_columns

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=5_000, help="records per batch (sync.batch_max_events)")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    rnd = random.Random(14)  # nosec B311 - reproducible benchmark data, not security
    run: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f".venv/bin/python -m benchmarks.decode --events {args.events} --batch {args.batch} "
                   f"--reps {args.reps}",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
                    "versions": {m.__name__: m.__version__ for m in (pa, np, msgspec, orjson)}},
        "events": args.events, "batch": args.batch, "reps": args.reps, "decode": {}, "checks": {}}
    try:
        import polars
        run["machine"]["versions"]["polars"] = polars.__version__
    except ImportError:  # pragma: no cover - polars is optional for the decode half
        pass

    schema_b = bench_schema()
    schema_f, fixtures = fixture_values(args.events)
    sets = {"bench": (schema_b, bench_values(args.events)), "fixtures": (schema_f, fixtures)}
    bad_values, bad_at = with_bad_records(sets["bench"][1], args.batch)
    sets["bench_1_bad_per_batch"] = (schema_b, bad_values)
    for name, (schema, values) in sets.items():
        lanes, skipped = make_lanes(schema)
        decoder = EventDecoder(schema)
        for k, lane in lanes.items():
            if lane is not None:
                check_equal(schema, decoder, lane, values, args.batch)
                run["checks"][f"{name}/{k}"] = "columns and dead letters equal the oracle's"
        res = measure(name, schema, values, args.batch, args.reps, lanes, rnd)
        for k, reason in skipped.items():
            res[k] = {"not_applicable": reason}
        run["decode"][name] = res
    run["bad_records"] = {"positions": len(bad_at), "kinds": "truncated JSON and a value of the wrong JSON type, "
                                                            "alternately, one per batch"}
    run["reduce"] = reduce_columns.measure(schema_b, sets["bench"][1], args.batch, args.reps, rnd, run["checks"])

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "decode.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    path.write_text(json.dumps({"runs": runs + [run]}, indent=2) + "\n")
    print(f"appended run {len(runs) + 1} to {path}")


if __name__ == "__main__":
    main()
