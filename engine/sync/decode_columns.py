"""Decode a batch of one table's Debezium JSON records into columns (ADR 0010).

Called by :class:`engine.sync.apply.TableApplier` for each batch of a table on the columnar
path; :meth:`ColumnDecoder.decode` returns a :class:`Columns` of the upserts (ops ``i`` and
``u``) it took, and the positions of every other record: deletions (``d``, ``r``: their
keys and bounds are per-record work, and they are few), Kafka tombstones, and anything it
cannot take exactly — malformed JSON, a value of the wrong JSON type, an unknown column, a
value its kernel cannot convert. Those go through :class:`engine.sync.decode.EventDecoder` one
by one (the *slow lane*), which returns the event or raises the ``DecodeError`` /
``SchemaChanged`` a dead letter (or a schema refresh) needs, word for word as on the
per-event path.

How: one ``msgspec`` Struct type per table, generated from its schema (the cell ``value``
typed ``int``, ``float`` or ``str`` for the kernel types, any JSON for the others; unknown
``after`` fields refused; of ``source`` only ``keyspace``, ``table`` and ``ts_us`` read),
the whole batch parsed in one call as one JSON array (record by record if that fails), one
list per column, then the conversion to canonical COPY text column-wise: Arrow kernels for
integers (range-checked), text (COPY escapes, NUL refused) and doubles; the column's codec
per value for every other type. Nothing here decides last-write-wins: that is
:mod:`engine.sync.reduce_columns`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.schema import TableSchema
from engine.types import Codec, ValueConversionError, codec

INT_BITS = {"tinyint": 8, "smallint": 16, "int": 32, "bigint": 64}
COPY_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))
# Arrow's float → string and Python's repr (the codec's text) print the same shortest digits,
# but Arrow drops ".0" from integral values and picks exponents differently (0.00001 vs
# 1e-05, 9.99999999999999e+14 vs 999999999999999.0). Where repr writes no exponent
# (1e-4 <= |x| < 1e16, and 0) and Arrow wrote none either, only the ".0" differs; every
# other value goes through the codec.
F64_PLAIN_LO, F64_PLAIN_HI = 1e-4, 1e16


@dataclass(slots=True)
class Columns:
    """The upserts of a batch the columnar path took, one entry per record, in batch order.

    ``pos``: the record's position in the batch (for offsets of dead letters and for the
    reducer's tie rule, which keeps the earlier of two equal writes). ``keys``: per
    primary-key column its canonical text (never null). ``ts``: write time (µs).
    ``marker``: an INSERT (op ``i``, a row marker); ``marker_exp``: its expiry (µs), or 0
    when it has none (``marker_has_exp``). ``cells``: per live regular column (schema order)
    ``(written, value, expires)``: the record wrote the cell (bool), its canonical text
    (null: a deletion of the cell), its TTL expiry (µs; null: none).
    """

    pos: np.ndarray
    keys: list[pa.Array]
    ts: np.ndarray
    marker: np.ndarray
    marker_has_exp: np.ndarray
    marker_exp: np.ndarray
    cells: list[tuple[np.ndarray, pa.Array, pa.Array]]

    def __len__(self) -> int:
        return len(self.pos)

    def take(self, rows: np.ndarray) -> Columns:
        """The records at ``rows`` (positions in this object), in that order."""
        idx = pa.array(rows, pa.int64())
        return Columns(self.pos[rows], [k.take(idx) for k in self.keys], self.ts[rows], self.marker[rows],
                       self.marker_has_exp[rows], self.marker_exp[rows],
                       [(w[rows], v.take(idx), x.take(idx)) for w, v, x in self.cells])


# ---------------------------------------------------------------------------------------
# Column-wise conversions: Arrow kernels where c2pg's text is Arrow's, the codec elsewhere
# ---------------------------------------------------------------------------------------

def _per_value(cd: Codec, values: Sequence[Any]) -> tuple[pa.Array, np.ndarray]:
    """The codec on every value: (texts, rows whose value does not convert)."""
    out, bad = [], np.zeros(len(values), dtype=bool)
    conv = cd.from_debezium
    for i, v in enumerate(values):
        try:
            out.append(conv(v))
        except ValueConversionError:
            out.append(None)
            bad[i] = True
    return pa.array(out, pa.string()), bad


def _typed(kind: str, values: Sequence[Any] | pa.Array) -> pa.Array | None:
    """Python values → an Arrow array of the kernel's input type, or None when some value is
    not of the JSON type the codec expects (the caller then goes per value). Inferred, not
    cast: ``pa.array([1.5], pa.int64())`` would truncate."""
    if isinstance(values, pa.Array):
        arr = values                                  # already typed by its reader (a benchmark's)
    else:
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            return None
    t = arr.type
    if pa.types.is_null(t):
        return arr
    if kind in INT_BITS:
        return arr if t == pa.int64() else None
    if kind == "double":
        try:
            return arr.cast(pa.float64()) if t in (pa.float64(), pa.int64()) else None
        except pa.ArrowInvalid:                       # an integer a double cannot hold exactly
            return None
    return arr if t == pa.string() else None


def convert(cd: Codec, values: Sequence[Any] | pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """One column's Debezium values (null = no value) → (canonical COPY texts, rows whose
    value does not convert). The rows marked bad go to the slow lane, which raises the
    codec's own error for them. Equal to ``cd.from_debezium`` per value (tested) for the
    values the decoder's Structs let through: ``int`` for the integer kinds, ``float`` or
    ``int`` for ``double``, ``str`` for text (a bool would be read as a number by Arrow's
    inference; msgspec refuses it, and its record goes to the slow lane)."""
    kind = cd.cql_type.kind
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if kind not in INT_BITS and kind not in ("text", "ascii", "double"):
        return _per_value(cd, values.to_pylist() if isinstance(values, pa.Array) else values)
    arr = _typed(kind, values)
    if arr is None:
        return _per_value(cd, values.to_pylist() if isinstance(values, pa.Array) else values)
    n = len(arr)
    if pa.types.is_null(arr.type):
        return pa.nulls(n, pa.string()), np.zeros(n, dtype=bool)
    if kind in INT_BITS:
        bits = INT_BITS[kind]
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        bad = pc.or_(pc.less(arr, lo), pc.greater(arr, hi)).fill_null(False)
        return arr.cast(pa.string()), bad.to_numpy(zero_copy_only=False)
    if kind == "double":
        return _doubles(cd, arr), np.zeros(n, dtype=bool)
    bad = pc.match_substring(arr, "\x00").fill_null(False).to_numpy(zero_copy_only=False)
    for old, new in COPY_ESCAPES:
        arr = pc.replace_substring(arr, old, new)
    return arr, bad


def _doubles(cd: Codec, arr: pa.Array) -> pa.Array:
    text = arr.cast(pa.string())
    mag = pc.abs(arr)
    plain = pc.or_(pc.equal(arr, 0.0), pc.and_(pc.greater_equal(mag, F64_PLAIN_LO), pc.less(mag, F64_PLAIN_HI)))
    plain = pc.and_(plain, pc.invert(pc.match_substring(text, "e"))).fill_null(True)
    integral = pc.invert(pc.match_substring_regex(text, r"[.e]")).fill_null(False)
    text = pc.if_else(integral, pc.binary_join_element_wise(text, ".0", ""), text)
    if pc.all(plain).as_py():
        return text
    out = text.to_pylist()
    for i in np.flatnonzero(~plain.to_numpy(zero_copy_only=False)):
        out[i] = cd.from_debezium(arr[i].as_py())
    return pa.array(out, pa.string())


def _ints(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """64-bit integers: (values with 0 for null, is null, is not an integer). The decoder
    refuses a float, a bool or a string where it wants an integer; so does this."""
    n = len(values)
    try:
        arr = pa.array(values)
        if arr.type == pa.int64() or pa.types.is_null(arr.type):
            arr = arr.cast(pa.int64())
            return (arr.fill_null(0).to_numpy(zero_copy_only=False), arr.is_null().to_numpy(zero_copy_only=False),
                    np.zeros(n, dtype=bool))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    ok = np.array([v is None or (v.__class__ is int and -(2 ** 63) <= v < 2 ** 63) for v in values], dtype=bool)
    clean = [v if k and v is not None else 0 for v, k in zip(values, ok, strict=True)]
    return np.array(clean, dtype=np.int64), np.array([v is None for v in values], dtype=bool), ~ok


# ---------------------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------------------

def _value_type(kind: str) -> Any:
    if kind in INT_BITS:
        return int | None
    if kind == "double":
        return float | None                           # msgspec takes JSON integers for floats too
    if kind in ("text", "ascii"):
        return str | None
    return Any                                        # converted by the codec, which checks it


class ColumnDecoder:
    """The columnar decoder of one table (JSON values); built once per schema, like
    :class:`engine.sync.decode.EventDecoder` (a new schema, a new decoder)."""

    def __init__(self, schema: TableSchema):
        self.schema = schema
        self._keyspace, self._table = schema.keyspace, schema.table
        names = [c.name for c in schema.columns]
        # gc=False: the Structs hold no cycles, and a batch makes tens of thousands of them,
        # which would otherwise wake the cyclic garbage collector again and again.
        cell_types = {c.name: msgspec.defstruct(f"Cell_{i}", [("value", _value_type(c.cql_type.kind)),
                                                               ("deletion_ts", int | None, None)], gc=False)
                      for i, c in enumerate(schema.columns)}
        fields: list[Any] = [(f"c{i}", cell_types[name] | None, msgspec.field(name=name, default=None))
                             for i, name in enumerate(names)]
        fields += [("range_start", Any, msgspec.field(name="_range_start", default=None)),
                   ("range_end", Any, msgspec.field(name="_range_end", default=None))]
        after = msgspec.defstruct("After", fields, forbid_unknown_fields=True, gc=False)
        source = msgspec.defstruct("Source", [("keyspace", str), ("table", str), ("ts_us", int)], gc=False)
        envelope = msgspec.defstruct("Value", [("op", str), ("source", source), ("after", after)], gc=False)
        self._decode_one = msgspec.json.Decoder(envelope).decode
        self._decode_all = msgspec.json.Decoder(list[envelope]).decode  # type: ignore[valid-type]
        attr = {name: f"c{i}" for i, name in enumerate(names)}
        self._keys = [(attr[c.name], codec(c.cql_type)) for c in schema.primary_key]
        live = [c for c in schema.regular if not c.dropped]
        self._regular = [(attr[c.name], codec(c.cql_type)) for c in live]
        # Columns whose event cell carries the statement's TTL (a non-frozen collection's
        # carries none): an INSERT's marker expiry is read from them (EventDecoder's rule).
        self._one_cell = [not c.cql_type.multi_cell for c in live]

    def decode(self, values: Sequence[bytes | None]) -> tuple[Columns, list[int]]:
        """The value bytes of one batch → (the upserts taken, positions for the slow lane)."""
        n = len(values)
        recs: list[Any] = [None] * n
        whole = [v for v in values if v is not None]
        try:
            parsed = self._decode_all(b"[" + b",".join(whole) + b"]") if whole else []
            if len(parsed) != len(whole):             # bad records that join into valid JSON
                raise msgspec.DecodeError("record count")
            it = iter(parsed)
            recs = [None if v is None else next(it) for v in values]
        except msgspec.DecodeError:
            for i, v in enumerate(values):
                if v is not None:
                    try:
                        recs[i] = self._decode_one(v)
                    except msgspec.DecodeError:
                        pass
        ks, tb = self._keyspace, self._table
        take = [i for i, r in enumerate(recs)
                if r is not None and (r.op == "i" or r.op == "u") and r.source.keyspace == ks and r.source.table == tb]
        taken = [recs[i] for i in take]
        reject = np.zeros(len(taken), dtype=bool)
        afters = [r.after for r in taken]
        ts = np.array([r.source.ts_us for r in taken], dtype=np.int64)
        marker = np.array([r.op == "i" for r in taken], dtype=bool)
        keys = []
        for attr, cd in self._keys:
            cells = [getattr(a, attr) for a in afters]
            vals = [None if c is None else c.value for c in cells]
            text, bad = convert(cd, vals)
            reject |= bad | text.is_null().to_numpy(zero_copy_only=False)
            keys.append(text)
        out_cells = []
        any_live = np.zeros(len(taken), dtype=bool)
        all_exp = np.ones(len(taken), dtype=bool)
        lo = np.full(len(taken), np.iinfo(np.int64).max)
        hi = np.full(len(taken), np.iinfo(np.int64).min)
        for (attr, cd), one_cell in zip(self._regular, self._one_cell, strict=True):
            cells = [getattr(a, attr) for a in afters]
            written = np.array([c is not None for c in cells], dtype=bool)
            vals = [None if c is None else c.value for c in cells]
            text, bad = convert(cd, vals)
            exp, no_exp, bad_exp = _ints([None if c is None else c.deletion_ts for c in cells])
            live = written & ~text.is_null().to_numpy(zero_copy_only=False)
            reject |= (bad & written) | (bad_exp & live)
            has_exp = live & ~no_exp
            out_cells.append((written, text, pa.array(exp, pa.int64(), mask=~has_exp)))
            if one_cell:
                any_live |= live
                all_exp &= ~live | has_exp
                lo = np.where(has_exp, np.minimum(lo, exp), lo)
                hi = np.where(has_exp, np.maximum(hi, exp), hi)
        # An INSERT's marker expiry: the one expiry every live single-cell value shares (none
        # if one of them has none, or they differ).
        marker_has_exp = marker & any_live & all_exp & (lo == hi)
        slow = sorted((set(range(n)) - set(take)) | {take[i] for i in np.flatnonzero(reject)})
        cols = Columns(pos=np.asarray(take, dtype=np.int64), keys=keys, ts=ts, marker=marker,
                       marker_has_exp=marker_has_exp, marker_exp=np.where(marker_has_exp, lo, 0), cells=out_cells)
        return (cols.take(np.flatnonzero(~reject)) if reject.any() else cols), slow
