"""Row digests that PostgreSQL computes in SQL and c2pg computes from Cassandra rows.

Reconcile (:mod:`engine.reconcile`) compares a token range by digest before it compares rows:
PostgreSQL hashes its rows where they are (one aggregate query, a few bytes per sub-range
come back) and the compare task hashes the Cassandra rows it streams. Only sub-ranges whose
digests differ are compared row by row, so the two sides must produce *identical* bytes for
equal data. The common form is PostgreSQL's own text output of the stored value; per column
a :class:`DigestForm` says how each side gets there:

- most types: the canonical COPY text c2pg writes is already PostgreSQL's output (checked
  for every CQL type against the real server in ``tests/integration/test_digest.py``);
  text-like outputs are COPY-escaped in SQL so the two sides agree without unescaping;
- ``boolean``: ``t``/``f`` on both sides (Arrow's cast says ``true``);
- ``inet``: the address without a host mask (``text(inet)`` would add ``/32``);
- ``float``/``double`` and arrays of them: the IEEE-754 bits as an integer (decimal
  spellings of the same value differ between Python, Arrow and PostgreSQL);
- top-level ``timestamp``: epoch microseconds (the reader selects epoch milliseconds);
- ``jsonb`` (maps, UDTs, tuples, nested collections): c2pg's compact canonical JSON is
  re-printed the way PostgreSQL prints jsonb (``", "``/``": "``, keys shorter-first).

A row's digest is the first 8 bytes of the MD5 of its columns' texts, each length-prefixed
(``len:text``, ``~`` for NULL) so no two rows can print the same; a sub-range's digest is the
row count and the sum of row digests modulo 2**64, so it does not depend on row order
(PostgreSQL and Cassandra order rows of a partition differently) and sub-ranges add up.

A digest never decides that rows differ: a digest mismatch only sends the sub-range to the
exact row comparison (``Codec.same``). A form that printed equal data differently would cost
time, not correctness; one that printed different data equally would hide drift, which is
why every form maps distinct PostgreSQL values to distinct texts.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import sql

from engine.schema import META_EXP, TableSchema
from engine.types import Codec, ValueConversionError, copy_unescape

MOD = 2**64
NULL_MARK = "~"
UNCONVERTIBLE = "\x00"  # a Cassandra value PostgreSQL cannot hold: matches no stored row


class DigestForm(Enum):
    TEXT = "text"          # output text, no escaping needed (numbers, uuid, dates, intervals)
    ESCAPED = "escaped"    # output text, COPY-escaped (text, bytea, arrays)
    BOOL = "bool"
    INET = "inet"
    FLOAT4 = "float4"
    FLOAT8 = "float8"
    FLOAT4_ARRAY = "float4[]"
    FLOAT8_ARRAY = "float8[]"
    TIMESTAMP = "timestamp"
    JSONB = "jsonb"


_BY_PG_TYPE = {
    "boolean": DigestForm.BOOL, "inet": DigestForm.INET, "real": DigestForm.FLOAT4,
    "double precision": DigestForm.FLOAT8, "real[]": DigestForm.FLOAT4_ARRAY,
    "double precision[]": DigestForm.FLOAT8_ARRAY, "timestamp with time zone": DigestForm.TIMESTAMP,
    "jsonb": DigestForm.JSONB, "text": DigestForm.ESCAPED, "bytea": DigestForm.ESCAPED,
}


def form_of(codec: Codec) -> DigestForm:
    if codec.pg.sql in _BY_PG_TYPE:
        return _BY_PG_TYPE[codec.pg.sql]
    return DigestForm.ESCAPED if codec.pg.is_array else DigestForm.TEXT


# --- the PostgreSQL side ---------------------------------------------------------------------

def _escaped(x: sql.Composable) -> sql.Composed:
    # COPY escaping, backslash first (the same order as engine.types._copy_escape).
    return sql.SQL(r"replace(replace(replace(replace({}, '\', '\\'), E'\t', '\t'), E'\n', '\n'), E'\r', '\r')"
                   ).format(x)


def _bits(element: sql.Composable, form: DigestForm) -> sql.Composed:
    send, width = ("float4send", 32) if form in (DigestForm.FLOAT4, DigestForm.FLOAT4_ARRAY) else ("float8send", 64)
    return sql.SQL("((('x' || encode({}({}), 'hex'))::bit({}))::{})::text").format(
        sql.SQL(send), element, sql.SQL(str(width)), sql.SQL("integer" if width == 32 else "bigint"))


def column_sql(form: DigestForm, col: sql.Composable) -> sql.Composed:
    """The digest text of one stored column, in SQL (NULL stays NULL)."""
    if form is DigestForm.TEXT:
        return sql.SQL("{}::text").format(col)
    if form is DigestForm.ESCAPED or form is DigestForm.JSONB:
        return _escaped(sql.SQL("{}::text").format(col))
    if form is DigestForm.BOOL:
        return sql.SQL("CASE WHEN {c} THEN 't' WHEN NOT {c} THEN 'f' END").format(c=col)
    if form is DigestForm.INET:
        # host() alone would print 10.0.0.0/8 and 10.0.0.0/32 alike: keep any other mask.
        return sql.SQL("CASE WHEN masklen({c}) = CASE family({c}) WHEN 4 THEN 32 ELSE 128 END "
                       "THEN host({c}) ELSE {c}::text END").format(c=col)
    if form in (DigestForm.FLOAT4, DigestForm.FLOAT8):
        return sql.SQL("CASE WHEN {c} = 'NaN' THEN 'NaN' ELSE {b} END").format(c=col, b=_bits(col, form))
    if form in (DigestForm.FLOAT4_ARRAY, DigestForm.FLOAT8_ARRAY):
        e = sql.Identifier("e")
        return sql.SQL("CASE WHEN {c} IS NOT NULL THEN array_to_string(ARRAY(SELECT CASE WHEN {e} = 'NaN' "
                       "THEN 'NaN' ELSE {b} END FROM unnest({c}) WITH ORDINALITY AS u({e}, o) ORDER BY o), ',') END"
                       ).format(c=col, e=e, b=_bits(e, form))
    if form is DigestForm.TIMESTAMP:
        return sql.SQL("CASE WHEN isfinite({c}) THEN ((extract(epoch FROM {c}) * 1000000)::bigint)::text "
                       "ELSE {c}::text END").format(c=col)
    raise AssertionError(form)


def row_digest_sql(schema: TableSchema, alias: str, now_us: sql.Composable) -> tuple[sql.Composed, sql.Composed]:
    """``(lateral, digest)``: a ``CROSS JOIN LATERAL`` computing each column's digest text
    once (a cell past its expiry counts as NULL: Cassandra no longer returns it, the sweep
    will remove it), and the row digest as a signed bigint."""
    t = sql.Identifier(alias)
    forms = [form_of(c) for c in schema.codecs()]
    n_key = len(schema.primary_key)
    items = []
    for i, (column, form) in enumerate(zip(schema.columns, forms, strict=True)):
        expr = column_sql(form, sql.SQL("{}.{}").format(t, sql.Identifier(column.name)))
        if i >= n_key:
            expr = sql.SQL("CASE WHEN {t}.{exp}[{pos}] <= {now} THEN NULL ELSE {e} END").format(
                t=t, exp=sql.Identifier(META_EXP), pos=sql.Literal(i - n_key + 1), now=now_us, e=expr)
        items.append(sql.SQL("{} AS {}").format(expr, sql.Identifier(f"x{i}")))
    lateral = sql.SQL("CROSS JOIN LATERAL (SELECT {}) AS dg").format(sql.SQL(", ").join(items))
    parts = [sql.SQL("CASE WHEN dg.{x} IS NULL THEN {null} ELSE length(dg.{x}) || ':' || dg.{x} END").format(
        x=sql.Identifier(f"x{i}"), null=sql.Literal(NULL_MARK)) for i in range(len(forms))]
    digest = sql.SQL("(('x' || substr(md5(concat({})), 1, 16))::bit(64))::bigint").format(
        sql.SQL(", ").join(parts))
    return lateral, digest


# --- the Cassandra side --------------------------------------------------------------------

def column_texts(form: DigestForm, codec: Codec, values: Sequence[Any],
                 canonical: Callable[[Sequence[Any]], tuple[pa.Array, dict]]) -> pa.Array:
    """Digest texts of one column of raw driver values (as the snapshot reader selects them).

    ``canonical`` is the snapshot reader's column converter (values → canonical COPY text);
    values it cannot convert get :data:`UNCONVERTIBLE`, which no stored row prints.
    """
    if form is DigestForm.BOOL:
        return pc.if_else(pa.array(values, pa.bool_()), "t", "f")
    if form is DigestForm.FLOAT8:
        return _float_bits(np.asarray(pa.array(values, pa.float64()).fill_null(0).to_numpy()), values, np.int64)
    if form is DigestForm.FLOAT4:
        return _float_bits(np.asarray(pa.array(values, pa.float64()).fill_null(0).to_numpy(), dtype=np.float32),
                           values, np.int32)
    if form is DigestForm.TIMESTAMP:
        return pc.multiply(pa.array(values, pa.int64()), 1000).cast(pa.string())
    if form is DigestForm.JSONB and _simple_map(codec):
        return _simple_map_texts(values)
    texts, errors = canonical(values)
    if form is DigestForm.TEXT or form is DigestForm.ESCAPED or form is DigestForm.INET:
        out = texts
    else:
        convert = {DigestForm.JSONB: jsonb_text, DigestForm.FLOAT4_ARRAY: _float_array_text(4),
                   DigestForm.FLOAT8_ARRAY: _float_array_text(8)}[form]
        out = pa.array([None if t is None else convert(t) for t in texts.to_pylist()], pa.string())
    if errors:
        mask = np.zeros(len(values), dtype=bool)
        mask[list(errors)] = True
        out = pc.if_else(pa.array(mask), UNCONVERTIBLE, out)
    return out


def _float_bits(floats: np.ndarray, values: Sequence[Any], int_type) -> pa.Array:
    nan = np.isnan(floats)
    bits = pa.array(floats.view(int_type)).cast(pa.string())
    if nan.any():  # PostgreSQL stores one NaN; whatever bits Cassandra held, they read 'NaN'
        bits = pc.if_else(pa.array(nan), "NaN", bits)
    nulls = pa.array([v is None for v in values])
    return pc.if_else(nulls, pa.scalar(None, pa.string()), bits)


def _float_array_text(width: int) -> Callable[[str], str]:
    fmt, int_fmt = (">f", ">i") if width == 4 else (">d", ">q")

    def convert(canonical: str) -> str:
        inner = canonical[1:-1]
        if not inner:
            return ""
        out = []
        for element in inner.split(","):
            x = float(element)
            out.append("NaN" if math.isnan(x) else str(struct.unpack(int_fmt, struct.pack(fmt, x))[0]))
        return ",".join(out)
    return convert


def jsonb_text(canonical: str) -> str:
    """c2pg's canonical JSON (compact, COPY-escaped) → PostgreSQL's jsonb output, escaped."""
    value = json.loads(copy_unescape(canonical), parse_float=_Number, parse_int=_Number,
                       parse_constant=_no_constant)
    out: list[str] = []
    _print_jsonb(value, out)
    text = "".join(out)
    return text.replace("\\", "\\\\") if "\\" in text else text


_SIMPLE_VALUES = {"tinyint", "smallint", "int", "bigint", "counter", "varint", "boolean", "text", "ascii"}


def _simple_map(codec: Codec) -> bool:
    t = codec.cql_type
    return t.kind == "map" and t.params[0].kind in ("text", "ascii") and t.params[1].kind in _SIMPLE_VALUES


def _simple_map_texts(values: Sequence[Any]) -> pa.Array:
    """Text-keyed maps of integers, booleans or text, printed as jsonb straight from the
    driver's dicts (the common case; :func:`jsonb_text` parses canonical JSON instead).
    Python's default separators are jsonb's; keys go shorter-first, then bytewise."""
    dumps = _dumps_jsonb
    out: list[str | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        text = dumps(dict(sorted(v.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))))
        if "\\" in text:  # an escape: maybe of a NUL, which jsonb cannot hold
            nul = any("\x00" in k or (isinstance(x, str) and "\x00" in x) for k, x in v.items())
            text = UNCONVERTIBLE if nul else text.replace("\\", "\\\\")
        out.append(text)
    return pa.array(out, pa.string())


_dumps_jsonb = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode


class _Number(str):
    """A JSON number kept as written (jsonb keeps numeric digits exactly)."""


def _no_constant(name: str) -> Any:
    raise ValueConversionError(f"{name} is not JSON")


_dumps = json.JSONEncoder(ensure_ascii=False).encode


def _print_jsonb(v: Any, out: list[str]) -> None:
    if isinstance(v, dict):
        out.append("{")
        for i, k in enumerate(sorted(v, key=lambda k: (len(k.encode()), k.encode()))):
            if i:
                out.append(", ")
            out.append(_dumps(k))
            out.append(": ")
            _print_jsonb(v[k], out)
        out.append("}")
    elif isinstance(v, list):
        out.append("[")
        for i, x in enumerate(v):
            if i:
                out.append(", ")
            _print_jsonb(x, out)
        out.append("]")
    elif isinstance(v, _Number):
        out.append(str.__str__(v))
    elif v is None:
        out.append("null")
    elif v is True or v is False:
        out.append("true" if v else "false")
    else:
        out.append(_dumps(v))


def row_text_array(columns: list[pa.Array]) -> pa.Array:
    """Per row, the length-prefixed concatenation of its columns' digest texts."""
    parts = []
    for texts in columns:
        prefixed = pc.binary_join_element_wise(pc.utf8_length(texts).cast(pa.string()), texts, ":")
        parts.append(pc.fill_null(prefixed, NULL_MARK))
    if not parts:
        return pa.array([], pa.string())
    return pc.binary_join_element_wise(*parts, "")


def row_digests(row_texts: pa.Array) -> np.ndarray:
    """The signed 64-bit digest of each row text (first 8 bytes of its MD5, big-endian)."""
    md5 = hashlib.md5
    raw = b"".join(md5(t).digest()[:8] for t in row_texts.cast(pa.binary()).to_pylist())
    return np.frombuffer(raw, dtype=">i8").astype(np.int64)
