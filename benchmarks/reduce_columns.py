"""Columnar reduce candidates (issue #14), run by ``benchmarks.decode`` on the decoded columns.

Input: one batch as the columns of :func:`benchmarks.decode.columns_schema`. Output: per key
and regular column the winning write (value, write time, expiry), per key the winning row
marker, and the row deletions — what :func:`engine.sync.reduce.reduce_events` returns, which is
the oracle every candidate is checked against (:func:`check`).

The rule, per cell (``engine.sync.reduce.wins``) as one sort and one "last per group":
sort the cell writes by (key, column, write time, is a deletion, has a TTL, expiry in whole
seconds, Cassandra's serialized value) and keep the last of each (key, column). A cell whose
TTL ran out by ``now_us`` is a deletion at its write time. The row marker is the last by
(key, write time, has a TTL, expiry seconds). A row deletion kills the cells and the marker
of its key written at or before it. Serialized order, column-wise: integers as their
two's-complement bits read unsigned, doubles as their IEEE bits read unsigned (both what
Cassandra's big-endian bytes compare as), text by the UTF-8 bytes of the raw value (a dense
rank); other types through :func:`engine.cassandra_bytes.serializer` per value.

Partition and range deletions are not vectorised here (the bench table has no clustering
columns); :func:`prepare` refuses a batch that holds them. Candidates differ in the sort
and the group-by: numpy ``lexsort`` + group boundaries, pyarrow ``sort_indices`` +
``group_by(..).aggregate(last)``, polars ``sort`` + ``group_by(..).last()``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.cassandra_bytes import column_serializers, serializer
from engine.events import Cell, ChangeEvent, Op
from engine.sync.reduce import Reduced, reduce_events
from engine.schema import TableSchema
from engine.types import copy_unescape

_INT_BITS = {"tinyint": 8, "smallint": 16, "int": 32, "bigint": 64, "counter": 64}
_MIN = np.iinfo(np.int64).min


@dataclass(slots=True)
class Long:
    """A batch's cell writes, one row per (event, written column), and what the sort needs.

    ``value`` indexes ``values`` (the texts of all columns, concatenated) for the winners.
    """

    key: np.ndarray          # key id (dictionary index of the key text)
    col: np.ndarray          # regular column index
    ts: np.ndarray
    is_del: np.ndarray       # null value, or dead on arrival
    has_exp: np.ndarray      # live with a TTL
    exp_s: np.ndarray        # expiry in whole seconds (0 when none)
    exp_us: np.ndarray
    order: np.ndarray        # uint64: Cassandra's serialized order within the column
    value: np.ndarray        # index into ``values``
    values: pa.Array
    keys: pa.Array           # key id → key text
    m_key: np.ndarray        # the row markers: key id, ts, has a TTL, expiry
    m_ts: np.ndarray
    m_has_exp: np.ndarray
    m_exp: np.ndarray
    kill: np.ndarray         # per key id: the newest row deletion's time (_MIN: none)
    upserted: np.ndarray     # key ids with an upsert (an empty one too: the oracle keeps its row)


def _np(a: Any) -> np.ndarray:
    return a.to_numpy(zero_copy_only=False)


def _order(kind: str, texts: pa.Array, cql_type) -> np.ndarray:
    """uint64 per value, ordered as Cassandra's serialized bytes compare (nulls: 0)."""
    if kind in _INT_BITS:
        v = _np(pc.cast(texts, pa.int64()).fill_null(0))
        bits = _INT_BITS[kind]
        return v.view(np.uint64) if bits == 64 else (v & ((1 << bits) - 1)).astype(np.uint64)
    if kind == "double":
        try:
            return _np(pc.cast(texts, pa.float64()).fill_null(0.0)).view(np.uint64)
        except pa.ArrowInvalid:
            pass                                      # "Infinity" and friends: per value below
    if kind in ("text", "ascii"):
        if pc.any(pc.match_substring(texts, "\\")).as_py():
            texts = pa.array([None if t is None else copy_unescape(t) for t in texts.to_pylist()], pa.string())
        raw = texts.cast(pa.binary())
    else:
        ser = serializer(cql_type)
        raw = pa.array([None if t is None else ser(t) for t in texts.to_pylist()], pa.binary())
    return _np(pc.rank(raw, sort_keys="ascending", tiebreaker="dense")).astype(np.uint64)


def prepare(schema: TableSchema, table: pa.Table, now_us: int) -> Long:
    """The decoded columns → the long form every candidate sorts."""
    op = table.column("op")
    kinds = set(_np(pc.unique(op)).tolist()) if table.num_rows else set()
    if kinds & {Op.PARTITION_DELETE.value, Op.RANGE_DELETE.value}:
        raise NotImplementedError("partition and range deletions are not vectorised in this measurement")
    key_cols = [table.column(f"k.{c.name}") for c in schema.primary_key]
    # Canonical texts are COPY-escaped: a raw tab never occurs, so it joins key parts unambiguously.
    key_text = key_cols[0] if len(key_cols) == 1 else pc.binary_join_element_wise(*key_cols, "\t")
    enc = pc.dictionary_encode(key_text).combine_chunks()
    key_id = _np(enc.indices).astype(np.int64)
    ts = _np(table.column("ts"))
    upsert = _np(pc.equal(op, Op.UPSERT.value))
    parts: dict[str, list] = {k: [] for k in ("key", "col", "ts", "is_del", "has_exp", "exp_s", "exp_us", "order",
                                               "value")}
    texts, offset = [], 0
    regular = [c for c in schema.regular if not c.dropped]
    for j, c in enumerate(regular):
        written = _np(table.column(f"s.{c.name}")) & upsert
        idx = np.flatnonzero(written)
        vals = table.column(f"v.{c.name}").take(idx).combine_chunks()
        exp_arr = table.column(f"x.{c.name}").take(idx)
        has = _np(pc.is_valid(exp_arr))
        exp = _np(exp_arr.fill_null(0))
        dead = has & (exp <= now_us)                  # dead on arrival: a deletion at its ts
        is_del = _np(pc.is_null(vals)) | dead
        has &= ~is_del
        exp = np.where(has, exp, 0)
        order = np.where(is_del, np.uint64(0), _order(c.cql_type.kind, vals, c.cql_type))
        parts["key"].append(key_id[idx])
        parts["col"].append(np.full(len(idx), j, dtype=np.int64))
        parts["ts"].append(ts[idx])
        parts["is_del"].append(is_del)
        parts["has_exp"].append(has)
        parts["exp_s"].append(exp // 1_000_000)
        parts["exp_us"].append(exp)
        parts["order"].append(order)
        parts["value"].append(np.arange(offset, offset + len(idx), dtype=np.int64))
        texts.append(pc.if_else(pa.array(dead), pa.scalar(None, pa.string()), vals))
        offset += len(idx)
    marker = np.flatnonzero(_np(table.column("row_marker")) & upsert)
    m_exp_arr = table.column("marker_expires_us").take(marker)
    kill = np.full(len(enc.dictionary), _MIN, dtype=np.int64)
    deleted = np.flatnonzero(_np(pc.equal(op, Op.ROW_DELETE.value)))
    np.maximum.at(kill, key_id[deleted], ts[deleted])
    cat = {k: (np.concatenate(v) if v else np.zeros(0, dtype=np.int64)) for k, v in parts.items()}
    return Long(**cat, values=pa.concat_arrays(texts) if texts else pa.array([], pa.string()),
                keys=enc.dictionary, m_key=key_id[marker], m_ts=ts[marker], m_has_exp=_np(pc.is_valid(m_exp_arr)),
                m_exp=_np(m_exp_arr.fill_null(0)), kill=kill, upserted=np.unique(key_id[upsert]))


@dataclass(slots=True)
class Winners:
    """Positions (into the :class:`Long` arrays) of the winning cell writes and markers."""

    cells: np.ndarray
    markers: np.ndarray


def _survivors(long: Long, cells: np.ndarray, markers: np.ndarray) -> Winners:
    # A row deletion at T kills what was written at or before T.
    cells = cells[long.ts[cells] > long.kill[long.key[cells]]]
    markers = markers[long.m_ts[markers] > long.kill[long.m_key[markers]]]
    return Winners(cells, markers)


def _last_of_groups(group: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[group[1:] != group[:-1], True]) if len(group) else np.zeros(0, dtype=np.int64)


def reduce_numpy(long: Long) -> Winners:
    """lexsort (last key is primary) + the last row of each (key, column) run."""
    # Fewer, packed keys sort faster: (key, column) as one integer, the two flags as one.
    ncols = int(long.col.max()) + 1 if len(long.col) else 1
    group = long.key * ncols + long.col
    flags = long.is_del.astype(np.int8) * 2 + long.has_exp
    o = np.lexsort((long.exp_us, long.order, long.exp_s, flags, long.ts, group))
    cells = o[_last_of_groups(group[o])]
    m_exp_s = np.where(long.m_has_exp, long.m_exp // 1_000_000, 0)
    mo = np.lexsort((m_exp_s, long.m_has_exp, long.m_ts, long.m_key))
    markers = mo[_last_of_groups(long.m_key[mo])]
    return _survivors(long, cells, markers)


_CELL_SORT = ("key", "col", "ts", "is_del", "has_exp", "exp_s", "order", "exp_us")


def reduce_pyarrow(long: Long) -> Winners:
    """``Table.sort_by`` then ``group_by(use_threads=False).aggregate(last)`` (ordered)."""
    t = pa.table({k: getattr(long, k) for k in _CELL_SORT} | {"i": np.arange(len(long.key))})
    t = t.sort_by([(k, "ascending") for k in _CELL_SORT])
    cells = _np(t.group_by(["key", "col"], use_threads=False).aggregate([("i", "last")]).column("i_last"))
    m = pa.table({"key": long.m_key, "ts": long.m_ts, "has_exp": long.m_has_exp,
                  "exp_s": np.where(long.m_has_exp, long.m_exp // 1_000_000, 0), "i": np.arange(len(long.m_key))})
    m = m.sort_by([(k, "ascending") for k in ("key", "ts", "has_exp", "exp_s")])
    markers = _np(m.group_by(["key"], use_threads=False).aggregate([("i", "last")]).column("i_last"))
    return _survivors(long, cells, markers)


def reduce_polars(long: Long) -> Winners:
    """``DataFrame.sort`` then ``group_by(..).agg(last)`` (polars keeps the order within a group)."""
    import polars as pl

    df = pl.DataFrame({k: getattr(long, k) for k in _CELL_SORT} | {"i": np.arange(len(long.key))})
    cells = df.sort(list(_CELL_SORT)).group_by(["key", "col"]).agg(pl.col("i").last())["i"].to_numpy()
    m = pl.DataFrame({"key": long.m_key, "ts": long.m_ts, "has_exp": long.m_has_exp,
                      "exp_s": np.where(long.m_has_exp, long.m_exp // 1_000_000, 0), "i": np.arange(len(long.m_key))})
    markers = m.sort(["key", "ts", "has_exp", "exp_s"]).group_by("key").agg(pl.col("i").last())["i"].to_numpy()
    return _survivors(long, cells, markers)


CANDIDATES: dict[str, Callable[[Long], Winners]] = {
    "numpy_lexsort": reduce_numpy, "pyarrow_sort_group_by": reduce_pyarrow, "polars_sort_group_by": reduce_polars}


# ---------------------------------------------------------------------------------------
# Checking against engine.sync.reduce.reduce_events
# ---------------------------------------------------------------------------------------

def as_oracle_form(schema: TableSchema, long: Long, won: Winners) -> tuple[dict, set]:
    """The winners → ({key: (cells, row_ts, row_exp)}, {row tombstones}) as :func:`oracle_form`
    makes of a :class:`Reduced`."""
    names = [c.name for c in schema.regular if not c.dropped]
    keys = long.keys.to_pylist()
    n_key = len(schema.primary_key)

    def key_of(i: int) -> tuple:
        return tuple(keys[i].split("\t")) if n_key > 1 else (keys[i],)

    rows: dict[tuple, list] = {}
    values = long.values.take(pa.array(long.value[won.cells])).to_pylist()
    for p, v in zip(won.cells.tolist(), values, strict=True):
        exp = int(long.exp_us[p]) if long.has_exp[p] else None
        rows.setdefault(key_of(int(long.key[p])), [{}, None, None])[0][names[int(long.col[p])]] = \
            (v, int(long.ts[p]), exp)
    for p in won.markers.tolist():
        row = rows.setdefault(key_of(int(long.m_key[p])), [{}, None, None])
        row[1] = int(long.m_ts[p])
        row[2] = int(long.m_exp[p]) if long.m_has_exp[p] else None
    for i in long.upserted.tolist():
        if long.kill[i] == _MIN:                      # written, never deleted: a row even if empty
            rows.setdefault(key_of(i), [{}, None, None])
    tombs = {("row", key_of(i), int(t)) for i, t in enumerate(long.kill.tolist()) if t != _MIN}
    return {k: (v[0], v[1], v[2]) for k, v in rows.items()}, tombs


def oracle_form(reduced: Reduced) -> tuple[dict, set]:
    rows = {k: ({n: (c.value, c.ts, c.expires_us) for n, c in r.cells.items()}, r.row_ts, r.row_exp)
            for k, r in reduced.rows.items()}
    return rows, {(t.kind, t.key, t.ts) for t in reduced.tombstones}


def check(schema: TableSchema, table: pa.Table, events: list[ChangeEvent], now_us: int) -> None:
    """Raise AssertionError unless every candidate reduces ``table`` as the oracle reduces
    ``events`` (the same batch)."""
    want = oracle_form(reduce_events(events, len(schema.partition_key), None, column_serializers(schema),
                                     now_us=now_us))
    long = prepare(schema, table, now_us)
    for name, fn in CANDIDATES.items():
        got = as_oracle_form(schema, long, fn(long))
        if got != want:
            bad = [k for k in set(want[0]) | set(got[0]) if want[0].get(k) != got[0].get(k)][:3]
            rows = [(k, want[0].get(k), got[0].get(k)) for k in bad]
            raise AssertionError(f"{name} differs from reduce_events: rows {rows}, "
                                 f"tombstones equal: {want[1] == got[1]}")


def tie_events(schema: TableSchema, n: int, now_us: int, seed: int = 3) -> list[ChangeEvent]:
    """Events on few keys and few write times, so ties of every kind happen: equal-time
    values, deletions, TTLs (some already expired at ``now_us``), markers, row deletions,
    duplicates (the RF copies of a mutation)."""
    rnd = random.Random(seed)  # nosec B311 - reproducible test data, not security
    pools = {"bigint": ["0", "1", "-1", "9223372036854775807", "-9223372036854775808", "42"],
             "int": ["0", "7", "-7", "2147483647", "-2147483648"],
             "double": ["0.0", "-0.0", "1.5", "-1.5", "1e+300", "0.14285714285714285"],
             "text": ["", "a", "b", "é", "z\\\\z", "a\\tb", "ab"]}
    regular = [c for c in schema.regular if not c.dropped]
    out: list[ChangeEvent] = []
    for _ in range(n):
        key = (str(rnd.randrange(6)),)
        ts = rnd.randrange(1, 5)
        if rnd.random() < 0.15:
            out.append(ChangeEvent(schema.keyspace, schema.table, Op.ROW_DELETE, ts, key))
            continue
        cells = []
        for c in regular:
            if rnd.random() < 0.6:
                v = None if rnd.random() < 0.2 else rnd.choice(pools[c.cql_type.kind])
                exp = None
                if v is not None and rnd.random() < 0.3:
                    exp = now_us + rnd.choice([-2, 0, 1, 2]) * 1_000_000
                cells.append((c.name, Cell(v, ts, exp)))
        marker = rnd.random() < 0.5
        m_exp = rnd.choice([None, now_us + 1_000_000, now_us + 3_000_000]) if marker else None
        ev = ChangeEvent(schema.keyspace, schema.table, Op.UPSERT, ts, key, tuple(cells),
                         row_marker=marker, marker_expires_us=m_exp)
        out += [ev] * rnd.choice([1, 1, 3])
    rnd.shuffle(out)
    return out


# ---------------------------------------------------------------------------------------
# Timing (called by benchmarks.decode.main)
# ---------------------------------------------------------------------------------------

def measure(schema: TableSchema, values: list[bytes], size: int, reps: int, rnd: random.Random,
            checks: dict) -> dict:
    """µs per event to reduce the bench set batch by batch: today's ``reduce_events`` on the
    events, the shared preparation alone, and each candidate including the preparation."""
    from benchmarks.decode import batches, decode_per_event, events_table, summary, timed
    from engine.sync.decode import EventDecoder

    decoder = EventDecoder(schema)
    now_us = int(time.time() * 1_000_000)
    work = []
    for _, chunk, origins in batches(values, size):
        events, _ = decode_per_event(decoder, chunk, origins)
        evs = [e for _, e in events]
        table = events_table(schema, events)
        check(schema, table, evs, now_us)
        work.append((evs, table))
    checks["reduce/bench"] = "every candidate equals reduce_events on every batch"
    for seed in range(20):
        evs = tie_events(schema, 300, now_us, seed)
        check(schema, events_table(schema, list(enumerate(evs))), evs, now_us)
    checks["reduce/ties"] = "every candidate equals reduce_events on 20 tie-heavy batches of 300 events"
    serializers = column_serializers(schema)
    n_pk = len(schema.partition_key)

    def per_event() -> None:
        for evs, _ in work:
            reduce_events(evs, n_pk, None, serializers, now_us=now_us)

    def prep_only() -> None:
        for _, table in work:
            prepare(schema, table, now_us)

    def candidate(fn):
        def go() -> None:
            for _, table in work:
                fn(prepare(schema, table, now_us))
        return go

    runs = {"per_event_reduce_events": per_event, "prepare_only": prep_only}
    runs |= {k: candidate(fn) for k, fn in CANDIDATES.items()}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for _ in range(reps):
        order = list(runs)
        rnd.shuffle(order)
        for k in order:
            times[k].append(timed(runs[k], len(values)))
    out = {k: summary(v) for k, v in times.items()}
    print("reduce: " + ", ".join(f"{k} {v['median_us']:.2f} (CPU {v['cpu_median_us']:.2f}) µs/event"
                                 for k, v in out.items()), flush=True)
    return out
