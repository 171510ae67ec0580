"""Cassandra's serialized bytes of a cell value, computed from c2pg's canonical COPY text.

Why: Cassandra breaks a tie between two live cells of the same write time by their bytes.
``org.apache.cassandra.db.rows.Cells`` (Cassandra 5.0), ``resolveRegular``: at equal
timestamps a tombstone beats an expiring (TTL) cell, an expiring cell beats a plain live
one, of two expiring cells the later local deletion time wins, and only then are the values
compared — through ``ValueAccessor.compare``, which for buffers ends in
``ByteBufferUtil.compareUnsigned``: lexicographic over **unsigned** bytes, a proper prefix
first. So ``10`` beats ``9`` as an ``int`` (``…0a`` > ``…09``) and ``-1`` beats ``1``
(``ff…`` > ``00…``), where c2pg's text comparison gave the opposite.

Callers: :func:`engine.sync.reduce.wins` (within one batch, through :func:`column_serializers`)
and the tests. The merge computes the same bytes in PostgreSQL
(``engine.pg_dialect.cassandra_bytes``); docs/types.md, "Cassandra's tie rule", has the
table of both and what c2pg's text cannot carry.

The bytes are Cassandra's own value encoding (the native protocol's value form, also what
Cassandra stores in a cell): big-endian fixed-width integers and IEEE floats, minimal two's
complement for ``varint``, scale + unscaled for ``decimal``, UTF-8 for text, days + 2^31 for
``date``, epoch milliseconds for ``timestamp``, nanoseconds of the day for ``time``, three
zig-zag vints for ``duration``, and for frozen collections, UDTs and tuples the int32-sized
layout (a set sorted and a map sorted by key in Cassandra's order of the element type).

Where the canonical text has less than Cassandra had, the bytes are those of what c2pg
stores: ``time`` and ``duration`` nanoseconds are truncated to microseconds, a ``decimal``
with a negative scale has scale 0, a NaN is the canonical NaN, a ``-0.0`` inside ``jsonb``
is ``0.0``. A non-frozen collection or
UDT (one cell per element in Cassandra) is serialized as if frozen: one whole value, which
keeps the comparison deterministic but is not what Cassandra does element by element.

Failure: a text that is not the canonical form of its type raises ``ValueError``; c2pg's
codecs only produce canonical texts, so it means a bug upstream, not bad data.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

# The private parsers of PostgreSQL's output texts: one definition of each text form.
from engine.types import (
    CqlType,
    _date_core_pg,
    _days_from_civil,
    _duration_core_pg,
    _time_core_pg,
    parse_pg_array,
    _ts_core_pg,
    _varint_core_str,
    copy_unescape,
    pg_type,
)

__all__ = ["FIXED_SIZE_KINDS", "column_serializers", "order_bytes", "serializer", "uvint", "vint"]

Serializer = Callable[[str], bytes]

_NULL_ELEMENT = b"\xff\xff\xff\xff"  # int32 length -1: a null element or field

# vector<T, n> with a fixed-size T packs its elements without lengths (the driver's
# ``serial_size`` list, which matches Cassandra 5.0's ``valueLengthIfFixed``).
FIXED_SIZE_KINDS = frozenset({"int", "bigint", "counter", "float", "double", "boolean", "uuid", "timeuuid",
                              "timestamp"})
_INT_WIDTH = {"tinyint": 1, "smallint": 2, "int": 4, "bigint": 8, "counter": 8}


# -- encodings --------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    """Minimal big-endian two's complement (Java's ``BigInteger.toByteArray``; 0 is one byte)."""
    return n.to_bytes(((n if n >= 0 else ~n).bit_length() // 8) + 1, "big", signed=True)


def uvint(u: int) -> bytes:
    """Cassandra's unsigned vint: the count of extra bytes as leading one bits of the first
    byte, then the value big-endian (1 to 9 bytes)."""
    if u < 0 or u >= 1 << 64:
        raise ValueError(f"{u} does not fit an unsigned vint")
    extra = 0
    while extra < 8 and u >= 1 << (7 * (extra + 1)):
        extra += 1
    body = bytearray(u.to_bytes(extra + 1, "big"))
    body[0] |= (0xFF << (8 - extra)) & 0xFF
    return bytes(body)


def vint(n: int) -> bytes:
    """Cassandra's signed vint: zig-zag, then :func:`uvint`."""
    return uvint(2 * n if n >= 0 else -2 * n - 1)


def _decimal(d: Decimal) -> bytes:
    if not d.is_finite():
        # Cassandra's BigDecimal has no NaN/Infinity; c2pg never stores one from Cassandra.
        # PostgreSQL's output text of the value, like the SQL side.
        return (b"NaN" if d.is_nan() else b"-Infinity" if d < 0 else b"Infinity")
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    unscaled = int("".join(map(str, digits)) or "0")
    return struct.pack(">i", -exponent) + _varint(-unscaled if sign else unscaled)


_ISO_TS = re.compile(r"([+-]?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z\Z")
_ISO_DATE = re.compile(r"([+-]?\d{4,})-(\d\d)-(\d\d)\Z")
_ISO_DURATION = re.compile(r"P(?:(-?\d+)M)?(?:(-?\d+)D)?"
                           r"(?:T(?:(-?\d+)H)?(?:(-?\d+)M)?(?:(-?)(\d+)(?:\.(\d{1,9}))?S)?)?\Z")


def _iso_ts_ms(s: str) -> int:
    m = _ISO_TS.match(s)
    if not m:
        raise ValueError(f"not c2pg's ISO timestamp: {s[:60]!r}")
    y, mo, d, h, mi, sec, frac = m.groups()
    us = ((((_days_from_civil(int(y), int(mo), int(d)) * 24 + int(h)) * 60 + int(mi)) * 60 + int(sec))
          * 1_000_000 + int((frac or "0")[:6].ljust(6, "0")))
    return us // 1000


def _iso_date_days(s: str) -> int:
    m = _ISO_DATE.match(s)
    if not m:
        raise ValueError(f"not c2pg's ISO date: {s[:60]!r}")
    return _days_from_civil(int(m.group(1)), int(m.group(2)), int(m.group(3)))


def _iso_duration(s: str) -> tuple[int, int, int]:
    m = _ISO_DURATION.match(s)
    if not m:
        raise ValueError(f"not c2pg's ISO duration: {s[:60]!r}")
    months, days, h, mi, sign, sec, frac = m.groups()
    ns = int(sec or 0) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))
    ns = (-ns if sign == "-" else ns) + (int(h or 0) * 60 + int(mi or 0)) * 60_000_000_000
    return int(months or 0), int(days or 0), ns


def _duration(core: tuple[int, int, int]) -> bytes:
    return vint(core[0]) + vint(core[1]) + vint(core[2])


def _inet(s: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in s else socket.AF_INET, s)


def _date(days: int) -> bytes:
    return struct.pack(">I", days + (1 << 31))


# -- scalars: from the canonical text (COPY-unescaped) and from the value inside jsonb ---------
#
# Inside jsonb a scalar is its JSON form (docs/types.md, "jsonb"); as a map key, the key's
# text. Numbers arrive as Decimal (exact), so one function serves a number and its text.

def _scalar_from_text(kind: str) -> Callable[[str], bytes]:
    if kind in _INT_WIDTH:
        width = _INT_WIDTH[kind]
        return lambda s: int(s).to_bytes(width, "big", signed=True)
    if kind == "varint":
        return lambda s: _varint(_varint_core_str(s))
    if kind == "decimal":
        return lambda s: _decimal(Decimal(s))
    if kind == "float":
        return lambda s: struct.pack(">f", float(s))
    if kind == "double":
        return lambda s: struct.pack(">d", float(s))
    if kind == "boolean":
        return lambda s: b"\x01" if s in ("t", "true") else b"\x00"
    if kind in ("text", "ascii"):
        return lambda s: s.encode("utf-8")
    if kind == "blob":
        return lambda s: bytes.fromhex(s[2:])
    if kind in ("uuid", "timeuuid"):
        return lambda s: uuid.UUID(s).bytes
    if kind == "inet":
        return _inet
    if kind == "timestamp":
        return lambda s: struct.pack(">q", _ts_core_pg(s) // 1000)
    if kind == "date":
        return lambda s: _date(_date_core_pg(s))
    if kind == "time":
        return lambda s: struct.pack(">q", _time_core_pg(s))
    if kind == "duration":
        return lambda s: _duration(_duration_core_pg(s))
    raise ValueError(f"no serializer for CQL type {kind!r}")


def _json_float(v: Any) -> float:
    """A float inside jsonb: a JSON number is stored as ``numeric``, which has no negative
    zero, so ``-0.0`` is held (and serialized) as ``0.0``; a string (NaN, ±Infinity, a map
    key) keeps its sign."""
    x = float(v)
    return 0.0 if x == 0.0 and isinstance(v, Decimal) else x


def _scalar_from_json(kind: str) -> Callable[[Any], bytes]:
    if kind in _INT_WIDTH:
        width = _INT_WIDTH[kind]
        return lambda v: int(Decimal(v)).to_bytes(width, "big", signed=True)
    if kind == "varint":
        return lambda v: _varint(int(Decimal(v)))
    if kind == "decimal":
        return lambda v: _decimal(Decimal(v))
    if kind == "float":
        return lambda v: struct.pack(">f", _json_float(v))
    if kind == "double":
        return lambda v: struct.pack(">d", _json_float(v))
    if kind == "boolean":
        return lambda v: b"\x01" if v is True or v == "true" else b"\x00"
    if kind == "timestamp":
        return lambda v: struct.pack(">q", _iso_ts_ms(v))
    if kind == "date":
        return lambda v: _date(_iso_date_days(v))
    if kind == "time":
        return lambda v: struct.pack(">q", _time_core_pg(v))
    if kind == "duration":
        return lambda v: _duration(_iso_duration(v))
    return _scalar_from_text(kind)  # text, ascii, blob, uuid, timeuuid, inet: same string


# -- Cassandra's order of set elements and map keys -----------------------------------------

def _signed(b: bytes) -> int:
    return int.from_bytes(b, "big", signed=True)


def _uuid_order(b: bytes) -> bytes:
    """``UUIDType``'s order as bytes: a version-1 uuid by its time fields (high, mid, low),
    any other by its version nibble then the rest of its high half; then the low half."""
    h = b.hex()
    if h[12] == "1":
        return bytes.fromhex(h[12:16] + h[8:12] + h[0:8]) + b[8:]
    return bytes.fromhex(h[12] + h[0:12] + h[13:16]) + b[8:]


def _timeuuid_order(b: bytes) -> bytes:
    """``TimeUUIDType``'s order: the time fields, then the low half as signed bytes."""
    return _uuid_order(b)[:8] + bytes(x ^ 0x80 for x in b[8:])


_FIXED_SIGNED = frozenset({"tinyint", "smallint", "int", "bigint", "counter", "timestamp", "time"})


def _escaped(b: bytes) -> bytes:
    """A variable-length byte string, prefix-free and in unsigned-bytes order (a proper
    prefix first): every ``00`` becomes ``00 ff``, and ``00 00`` ends it."""
    return b.replace(b"\x00", b"\x00\xff") + b"\x00\x00"


def _varint_order(b: bytes) -> bytes:
    """Minimal two's complement → a 4-byte header that orders by sign then length (a longer
    positive is larger, a longer negative smaller), then the bytes themselves (same sign and
    length: two's complement bytes are in value order)."""
    n = len(b)
    return struct.pack(">I", 0x80000000 + n if b[0] < 0x80 else 0x7FFFFFFF - n) + b


def _decimal_order(b: bytes) -> bytes:
    """``DecimalType`` compares by value (``BigDecimal.compareTo``: ``1.0`` equals ``1.00``):
    a sign byte, then for a value ``0.d1d2… × 10^e`` the exponent and the digits without
    trailing zeros (each digit + 1, ended by ``00``); a negative value has both inverted."""
    scale, unscaled = _signed(b[:4]), _signed(b[4:])
    if unscaled == 0:
        return b"\x01"
    digits = str(abs(unscaled))
    e = len(digits) - scale
    digits = digits.rstrip("0")
    if unscaled > 0:
        return b"\x02" + (e + (1 << 63)).to_bytes(8, "big") + bytes(int(c) + 1 for c in digits) + b"\x00"
    return b"\x00" + ((1 << 63) - e).to_bytes(8, "big") + bytes(0xFE - int(c) for c in digits) + b"\xff"


def _float_order(b: bytes) -> bytes:
    """``Float.compare``/``Double.compare`` on the IEEE bits: a negative number's bits all
    inverted, a positive one's sign bit set (``-0.0`` before ``0.0``, the canonical NaN last)."""
    return bytes(x ^ 0xFF for x in b) if b[0] & 0x80 else bytes([b[0] | 0x80]) + b[1:]


def _elements(b: bytes, at: int, count: int) -> tuple[list[bytes | None], int]:
    out: list[bytes | None] = []
    for _ in range(count):
        (n,) = struct.unpack_from(">i", b, at)
        at += 4
        out.append(None if n < 0 else b[at:at + n])
        at += max(n, 0)
    return out, at


def order_bytes(t: CqlType) -> Callable[[bytes], bytes]:
    """``f(serialized) -> key``: keys whose unsigned byte order (``memcmp``, a proper prefix
    first) is the order Cassandra 5.0's comparator of ``t`` gives the values — the order of
    a clustering column, of a set's elements and of a map's keys.

    The comparators (``org.apache.cassandra.db.marshal``): numbers by value (``IntegerType``,
    ``DecimalType``; ``FloatType``/``DoubleType`` as ``Float.compare``: ``-0.0`` before
    ``0.0``, NaN last), ``UUIDType`` (version, then a version 1 by its time, any other by its
    high half, then the low half unsigned), ``TimeUUIDType`` (time, then the low half as
    *signed* bytes), text, blob, inet, date and boolean by unsigned bytes. A frozen list or
    set compares element by element, then the shorter first (``ListType.compareListOrSet``);
    a frozen map entry by entry, key then value (``MapType.compareMaps``); a tuple or UDT
    field by field with a null before any value, trailing nulls equal to absent fields
    (``TupleType.compareCustom``).

    The encoding is prefix-free per type, so composites concatenate their parts: an element
    is ``01`` + its key and a collection ends with ``00``; a field is ``01`` (null) or ``02`` +
    its key, trailing nulls dropped, ended by ``00``. ``engine.pg_dialect``'s
    ``_c2pg.cass_order_key`` computes the same bytes in PostgreSQL; tests check both against
    the order a real Cassandra table returns."""
    k = t.kind
    if k in _FIXED_SIGNED:
        return lambda b: bytes([b[0] ^ 0x80]) + b[1:]
    if k == "varint":
        return _varint_order
    if k == "decimal":
        return _decimal_order
    if k in ("float", "double"):
        return _float_order
    if k == "uuid":
        return _uuid_order
    if k == "timeuuid":
        return _timeuuid_order
    if k in ("boolean", "date"):
        return lambda b: b
    if t.is_scalar:  # text, ascii, blob, inet (4 or 16 bytes)
        return _escaped
    if k in ("list", "set"):
        elem = order_bytes(t.params[0])

        def collection(b: bytes) -> bytes:
            (count,) = struct.unpack_from(">i", b, 0)
            items, _ = _elements(b, 4, count)
            return b"".join(b"\x01" + elem(x or b"") for x in items) + b"\x00"
        return collection
    if k == "map":
        key, value = order_bytes(t.params[0]), order_bytes(t.params[1])

        def mapping(b: bytes) -> bytes:
            (count,) = struct.unpack_from(">i", b, 0)
            items, _ = _elements(b, 4, 2 * count)
            return b"".join(b"\x01" + key(items[i] or b"") + value(items[i + 1] or b"")
                            for i in range(0, len(items), 2)) + b"\x00"
        return mapping
    if k in ("tuple", "udt"):
        fields = [order_bytes(p) for p in t.params]

        def composite(b: bytes) -> bytes:
            parts: list[bytes] = []
            at = 0
            for f in fields:
                if at >= len(b):
                    break
                (items, at) = _elements(b, at, 1)
                parts.append(b"\x01" if items[0] is None else b"\x02" + f(items[0]))
            while parts and parts[-1] == b"\x01":
                parts.pop()
            return b"".join(parts) + b"\x00"
        return composite
    raise ValueError(f"CQL type {t.cql()!r} has no order (it cannot be a clustering column, set element or map key)")


# -- composites -----------------------------------------------------------------------------

def _sized(b: bytes | None) -> bytes:
    return _NULL_ELEMENT if b is None else struct.pack(">i", len(b)) + b


def _pack(t: CqlType, items: list[bytes | None]) -> bytes:
    """A list/set/vector of serialized elements (a set's already in Cassandra's order)."""
    if t.kind == "vector":
        if t.params[0].kind in FIXED_SIZE_KINDS:
            return b"".join(b or b"" for b in items)
        return b"".join(uvint(len(b or b"")) + (b or b"") for b in items)
    return struct.pack(">i", len(items)) + b"".join(_sized(b) for b in items)


def _sort_set(t: CqlType, items: list[bytes | None]) -> list[bytes | None]:
    if t.kind != "set":
        return items
    key = order_bytes(t.params[0])
    return sorted(items, key=lambda b: b"" if b is None else b"\x01" + key(b))


def _from_json(t: CqlType) -> Callable[[Any], bytes | None]:
    """A value as parsed from c2pg's canonical JSON (numbers as Decimal) → bytes; None for
    JSON null."""
    k = t.kind
    if t.is_scalar:
        f = _scalar_from_json(k)
        return lambda v: None if v is None else f(v)
    if k in ("list", "set", "vector"):
        elem = _from_json(t.params[0])
        return lambda v: None if v is None else _pack(t, _sort_set(t, [elem(x) for x in v]))
    if k == "map":
        key_of = _key_from_text(t.params[0])
        value_of = _from_json(t.params[1])
        order = order_bytes(t.params[0])

        def mapping(v: Any) -> bytes | None:
            if v is None:
                return None
            entries = sorted(((key_of(a), value_of(b)) for a, b in v.items()), key=lambda e: order(e[0]))
            return struct.pack(">i", len(entries)) + b"".join(_sized(a) + _sized(b) for a, b in entries)
        return mapping
    if k == "tuple":
        fields = [_from_json(p) for p in t.params]

        def tup(v: Any) -> bytes | None:
            if v is None:
                return None
            v = list(v) + [None] * (len(fields) - len(v))
            return b"".join(_sized(f(x)) for f, x in zip(fields, v, strict=False))
        return tup
    if k == "udt":
        named = list(zip(t.field_names, (_from_json(p) for p in t.params), strict=True))
        return lambda v: None if v is None else b"".join(_sized(f(v.get(n))) for n, f in named)
    raise ValueError(f"no serializer for CQL type {t.cql()!r}")


def _key_from_text(t: CqlType) -> Callable[[str], bytes]:
    """A map key's text (the jsonb object key) → bytes; a collection key is its JSON text."""
    if t.is_scalar:
        return _scalar_from_json(t.kind)
    inner = _from_json(t)

    def composite(s: str) -> bytes:
        b = inner(_loads(s))
        assert b is not None
        return b
    return composite


def _loads(s: str) -> Any:
    return json.loads(s, parse_float=Decimal, parse_int=Decimal)


# -- the public entry points ----------------------------------------------------------------

def serializer(t: CqlType, *, time_as: str = "time") -> Serializer:
    """``f(copy_text) -> bytes`` for a column of type ``t``: Cassandra's serialized value of
    the canonical COPY text c2pg stores (``engine.types``), escaped as COPY escapes it.
    Build it once per column, where it runs (it is a closure: not picklable)."""
    pg = pg_type(t, time_as=time_as)  # type: ignore[arg-type]
    if t.is_scalar:
        scalar = _scalar_from_text(t.kind)
        return lambda text: scalar(copy_unescape(text))
    if pg.is_array:
        elem = _scalar_from_text(t.params[0].kind)

        def array(text: str) -> bytes:
            items = [None if e is None else elem(e) for e in parse_pg_array(copy_unescape(text))]
            return _pack(t, _sort_set(t, items))
        return array
    inner = _from_json(t)

    def document(text: str) -> bytes:
        b = inner(_loads(copy_unescape(text)))
        assert b is not None
        return b
    return document


def column_serializers(schema) -> dict[str, Serializer]:
    """One :func:`serializer` per regular column of ``schema`` (an
    :class:`engine.schema.TableSchema`), by name: what :func:`engine.sync.reduce.reduce_events`
    takes to break live-live ties the way Cassandra does."""
    return {c.name: serializer(c.cql_type) for c in schema.regular if not c.dropped}
