"""CQL types → PostgreSQL types, and Cassandra values → PostgreSQL COPY text.

This is the one module that knows how a Cassandra value looks in PostgreSQL. Everything
else (the snapshot reader and Datasink, the sync decoder and merge, reconcile) goes through
it, so a value has exactly one text form whichever way it arrived:

* ``parse_cql_type`` reads ``system_schema.columns.type`` strings into a ``CqlType``;
* ``pg_type`` picks the PostgreSQL column type (the table in ``docs/types.md``);
* ``codec`` builds, once per column, a ``Codec`` whose ``from_driver`` (snapshot, repair),
  ``from_debezium`` (sync) and ``from_pg`` (reconcile, tests) all give the **canonical COPY
  text** of a value: the field as it goes into ``COPY ... FROM STDIN`` (text format), already
  escaped, or ``None`` for SQL NULL. Two values are equal when their canonical texts are.

Canonical text, in short (``docs/types.md`` has every rule and every loss): it is
PostgreSQL's own output text (DateStyle ISO, TimeZone UTC, IntervalStyle postgres,
bytea_output hex) for every scalar except ``real``/``double precision`` (shortest
round-trip repr) and ``inet`` (the C library's ``inet_ntop`` form); arrays use
PostgreSQL's array output quoting; ``jsonb`` values are compact JSON with UDT fields in
declaration order and map keys in jsonb's own key order.

A value that cannot be stored raises ``ValueConversionError`` (a ``ValueError``): the
caller adds the row key and the column and routes the row to the dead-letter table. A type
that cannot be mapped raises ``TypeMappingError`` when the codec is built.

Hot path: ``codec()`` composes one function per column up front; per value there is a
``None`` check, one call and, for composites, one call per element.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time as dtime, timedelta
from decimal import Decimal
from typing import Any, Literal

import numpy as np

from engine.errors import C2pgError

__all__ = [
    "COPY_NULL", "Codec", "CqlType", "PgType", "TypeMappingError", "ValueConversionError",
    "codec", "copy_line", "parse_cql_type", "pg_type", "register_pg_text_casts",
]


class TypeMappingError(C2pgError):
    """A CQL type c2pg cannot map (unknown name, custom Java type, unknown UDT).

    Raised when a table's schema is read, before any data moves; the message names the
    type text. Exit code 2: it is a configuration/schema problem, not a runtime failure.
    """

    exit_code = 2


class ValueConversionError(ValueError):
    """A value that cannot be converted, with the reason.

    The message says which value and why, e.g. "text contains a NUL byte (0x00), which
    PostgreSQL text cannot store". Callers add the row key and the column and route the
    row to the dead-letter table; nothing else about the batch fails.
    """


# ---------------------------------------------------------------------------------------
# The CQL type model
# ---------------------------------------------------------------------------------------

_SCALARS = frozenset({
    "ascii", "bigint", "blob", "boolean", "counter", "date", "decimal", "double", "duration",
    "float", "inet", "int", "smallint", "text", "time", "timestamp", "timeuuid", "tinyint",
    "uuid", "varint",
})
_ALIASES = {"varchar": "text"}
_COMPLEX = frozenset({"list", "set", "map", "tuple", "udt", "vector"})
_PLAIN_IDENT = re.compile(r"[a-z][a-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class CqlType:
    """A parsed CQL type.

    ``kind`` is the lowercase CQL name (``varchar`` is normalised to ``text``), or ``udt``.
    ``params`` are the element types (list/set: 1, map: 2, tuple: n, vector: 1, udt: the
    field types). ``frozen`` is true for frozen collections/UDTs, for everything nested in
    a frozen type, and always for tuples (Cassandra tuples are always frozen).
    """

    kind: str
    params: tuple[CqlType, ...] = ()
    frozen: bool = False
    field_names: tuple[str, ...] = ()
    name: str | None = None
    dimension: int | None = None

    def cql(self) -> str:
        """Back to CQL text, e.g. ``frozen<map<text, int>>``; ``parse_cql_type`` reads it back."""
        k = self.kind
        if k in _SCALARS:
            return k
        if k == "udt":
            body = _cql_ident(self.name or "")
        elif k == "vector":
            return f"vector<{self.params[0].cql()}, {self.dimension}>"
        else:
            body = f"{k}<{', '.join(p.cql() for p in self.params)}>"
        return f"frozen<{body}>" if self.frozen else body

    @property
    def is_scalar(self) -> bool:
        return self.kind in _SCALARS

    @property
    def multi_cell(self) -> bool:
        """A non-frozen collection or UDT: Cassandra stores it as one cell per element or
        field (each with its own write time and TTL), not as one value."""
        return self.kind in ("list", "set", "map", "udt") and not self.frozen


def _cql_ident(name: str) -> str:
    return name if _PLAIN_IDENT.match(name) else '"' + name.replace('"', '""') + '"'


def _freeze(t: CqlType) -> CqlType:
    """Everything inside a frozen type is frozen (Cassandra's rule). A vector is one cell
    whatever it holds, so its own flag stays as written; its element is frozen."""
    if t.kind not in _COMPLEX:
        return t
    params = tuple(_freeze(p) for p in t.params)
    return replace(t, params=params, frozen=t.frozen if t.kind == "vector" else True)


_TOKEN = re.compile(r"""\s*(?:(?P<q>"(?:[^"]|"")*")|(?P<s>'(?:[^']|'')*')|(?P<n>\d+)"""
                    r"""|(?P<w>[A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"]|"")*"))?)"""
                    r"""|(?P<p>[<>,]))""")


class _TypeParser:
    def __init__(self, text: str, udts: Mapping[str, tuple[tuple[str, str], ...]],
                 resolving: tuple[str, ...]):
        self.text = text
        self.udts = udts
        self.resolving = resolving
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m:
                raise TypeMappingError(f"cannot parse CQL type {text!r} at position {pos}")
            self.tokens.append((m.lastgroup or "", m.group(m.lastgroup or 0)))
            pos = m.end()
        self.i = 0

    def _fail(self, why: str) -> TypeMappingError:
        return TypeMappingError(f"cannot parse CQL type {self.text!r}: {why}")

    def _next(self) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise self._fail("unexpected end")
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def _expect(self, p: str) -> None:
        kind, val = self._next()
        if kind != "p" or val != p:
            raise self._fail(f"expected {p!r}, found {val!r}")

    def parse_all(self) -> CqlType:
        t = self.parse()
        if self.i != len(self.tokens):
            raise self._fail(f"unexpected {self.tokens[self.i][1]!r}")
        return t

    def parse(self) -> CqlType:
        kind, val = self._next()
        if kind == "s":
            raise TypeMappingError(f"custom CQL type {self.text!r} cannot be mapped")
        if kind == "q":
            return self._udt(val[1:-1].replace('""', '"'))
        if kind != "w":
            raise self._fail(f"unexpected {val!r}")
        if "." in val:                      # keyspace-qualified UDT name: keep the type name
            last = val.split(".", 1)[1]
            return self._udt(last[1:-1].replace('""', '"') if last.startswith('"') else last.lower())
        word = val.lower()
        if word == "frozen":
            self._expect("<")
            t = self.parse()
            self._expect(">")
            return _freeze(t)
        if word in ("list", "set"):
            self._expect("<")
            e = self.parse()
            self._expect(">")
            return CqlType(word, (e,))
        if word == "map":
            self._expect("<")
            k = self.parse()
            self._expect(",")
            v = self.parse()
            self._expect(">")
            return CqlType("map", (k, v))
        if word == "tuple":
            self._expect("<")
            items = [self.parse()]
            while True:
                kind, val = self._next()
                if (kind, val) == ("p", ">"):
                    break
                if (kind, val) != ("p", ","):
                    raise self._fail(f"expected ',' or '>', found {val!r}")
                items.append(self.parse())
            return _freeze(CqlType("tuple", tuple(items)))
        if word == "vector":
            self._expect("<")
            e = self.parse()
            self._expect(",")
            kind, val = self._next()
            if kind != "n" or int(val) < 1:
                raise self._fail(f"vector dimension must be a positive integer, found {val!r}")
            self._expect(">")
            return CqlType("vector", (e,), dimension=int(val))
        word = _ALIASES.get(word, word)
        if word in _SCALARS:
            return CqlType(word)
        return self._udt(word)

    def _udt(self, name: str) -> CqlType:
        fields = self.udts.get(name)
        if fields is None:
            raise TypeMappingError(f"unknown CQL type {self.text!r}: {name!r} is neither a built-in "
                                   f"type nor a known user-defined type")
        if name in self.resolving:
            raise TypeMappingError(f"user-defined type {name!r} refers to itself")
        types = tuple(_TypeParser(tt, self.udts, self.resolving + (name,)).parse_all() for _, tt in fields)
        return CqlType("udt", types, field_names=tuple(f for f, _ in fields), name=name)


def parse_cql_type(text: str, udts: Mapping[str, tuple[tuple[str, str], ...]] | None = None) -> CqlType:
    """Parse a ``system_schema.columns.type`` string.

    ``udts`` maps a UDT name (keyspace-less, as in ``system_schema.types.type_name``) to
    its ``((field_name, field_type_text), ...)``; UDT fields may use other UDTs. Unknown
    names and custom (``'org.apache...'``) types raise ``TypeMappingError`` naming the text.
    """
    return _TypeParser(text, udts or {}, ()).parse_all()


# ---------------------------------------------------------------------------------------
# PostgreSQL types
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PgType:
    """The PostgreSQL column type of a CQL type: ``sql`` is a fixed type name from the
    mapping table (safe to compose with ``psycopg2.sql.SQL``)."""

    sql: str
    is_array: bool
    is_json: bool


_PG_SCALAR = {
    "ascii": "text", "text": "text",
    "tinyint": "smallint", "smallint": "smallint", "int": "integer",
    "bigint": "bigint", "counter": "bigint",
    "varint": "numeric", "decimal": "numeric",
    "float": "real", "double": "double precision",
    "boolean": "boolean", "blob": "bytea", "uuid": "uuid", "timeuuid": "uuid", "inet": "inet",
    "timestamp": "timestamp with time zone", "date": "date", "time": "time",
    "duration": "interval",
}
_JSONB = PgType("jsonb", False, True)


def _scalar_sql(kind: str, time_as: str) -> str:
    if kind == "time" and time_as == "bigint":
        return "bigint"
    return _PG_SCALAR[kind]


def pg_type(t: CqlType, *, time_as: Literal["time", "bigint"] = "time") -> PgType:
    """The PostgreSQL type for ``t``: scalars by the table; list/set/vector of a scalar →
    ``T[]``; map, UDT, tuple, nested collections and collections of UDT/tuple → ``jsonb``.
    ``time_as='bigint'`` stores CQL ``time`` as nanoseconds of the day (lossless)."""
    if time_as not in ("time", "bigint"):
        raise TypeMappingError(f"time_as must be 'time' or 'bigint', not {time_as!r}")
    if t.kind in _SCALARS:
        return PgType(_scalar_sql(t.kind, time_as), False, False)
    if t.kind in ("list", "set", "vector") and t.params[0].kind in _SCALARS:
        return PgType(_scalar_sql(t.params[0].kind, time_as) + "[]", True, False)
    if t.kind in _COMPLEX:
        return _JSONB
    raise TypeMappingError(f"CQL type {t.cql()!r} cannot be mapped")


# ---------------------------------------------------------------------------------------
# COPY text
# ---------------------------------------------------------------------------------------

COPY_NULL = "\\N"


def copy_line(fields: Sequence[str | None]) -> str:
    """One COPY text line: fields joined with tab, ``None`` → ``\\N``, ending in newline.
    Fields must already be COPY-escaped (every ``Codec`` output is)."""
    return "\t".join(COPY_NULL if f is None else f for f in fields) + "\n"


def _copy_escape(s: str) -> str:
    # COPY text format: only backslash, newline, carriage return and the delimiter (tab)
    # must be escaped; every other character, NUL excepted, is taken literally.
    if "\\" in s:
        s = s.replace("\\", "\\\\")
    if "\t" in s:
        s = s.replace("\t", "\\t")
    if "\n" in s:
        s = s.replace("\n", "\\n")
    if "\r" in s:
        s = s.replace("\r", "\\r")
    return s


def copy_unescape(text: str) -> str:
    """Undo :func:`_copy_escape` (``\\\\``, ``\\t``, ``\\n``, ``\\r``): a canonical text value back
    to the text itself. Callers: partition tokens (:mod:`engine.murmur`) and clustering
    order (:func:`engine.sync.reduce.typed_compare`), which need the raw text."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _copy_escape_json(s: str) -> str:
    # JSON text never holds a raw tab/newline/CR (json escapes control characters).
    return s.replace("\\", "\\\\") if "\\" in s else s


_ARRAY_QUOTE = re.compile(r'[{}",\\ \t\n\r\v\f]')


def _array_elem(s: str) -> str:
    """One element of a PostgreSQL array literal, quoted exactly as ``array_out`` does."""
    if s == "" or _ARRAY_QUOTE.search(s) is not None or (len(s) == 4 and s.lower() == "null"):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return s


# The whitespace array_in trims around an unquoted element: ASCII only (PostgreSQL 15
# arrayfuncs.c ``array_isspace``; the same six as the ``scanner_isspace`` later versions use).
# ``str.strip()`` would also drop U+001F, U+00A0, U+2028 ..., which array_out leaves unquoted.
_PG_ARRAY_SPACE = " \t\n\r\v\f"


def parse_pg_array(s: str) -> list[str | None]:
    """Parse a one-dimensional PostgreSQL array literal (``array_out`` form) into element
    texts (``None`` for NULL). Used by ``from_pg`` when psycopg2 has no array caster for the
    element type (uuid[], inet[] ...) and hands back the literal, and by
    :mod:`engine.cassandra_bytes` for the staged array columns of the tie rule. Around an unquoted element
    it trims what array_in trims (:data:`_PG_ARRAY_SPACE`), nothing else."""
    if s.startswith("["):                       # explicit bounds: [0:2]={...}
        s = s[s.index("=") + 1:]
    if not (s.startswith("{") and s.endswith("}")):
        raise ValueConversionError(f"not a PostgreSQL array literal: {s[:80]!r}")
    out: list[str | None] = []
    i, n = 1, len(s) - 1
    if n == 1:
        return out
    while i <= n:
        if s[i] == '"':
            buf = []
            i += 1
            while s[i] != '"':
                if s[i] == "\\":
                    i += 1
                buf.append(s[i])
                i += 1
            out.append("".join(buf))
            i += 1
        else:
            j = i
            while s[j] not in ",}":
                j += 1
            tok = s[i:j].strip(_PG_ARRAY_SPACE)
            if tok == "{" or tok.startswith("{"):
                raise ValueConversionError("multi-dimensional arrays are not produced by c2pg")
            out.append(None if tok.upper() == "NULL" else tok)
            i = j
        i += 1                                   # skip ',' or the final '}'
    return out


# ---------------------------------------------------------------------------------------
# Scalar rules: core values and their texts
#
# Every scalar kind converts a source value (driver, Debezium, psycopg2, jsonb) into one
# "core" Python value, and renders the core as canonical text, JSON and map-key text:
#   text/ascii str · integers int · varint int · decimal Decimal · float/double float ·
#   boolean bool · blob bytes · uuid/timeuuid/inet canonical str · timestamp µs since epoch
#   (int) · date days since epoch (int) · time ns of day (int) · duration (months, days, ns)
# ---------------------------------------------------------------------------------------

_enc = json.encoder.encode_basestring          # str → JSON string literal (non-ASCII kept)
_NUL = "\x00"


def _text_core(v: Any) -> str:
    if v.__class__ is not str:
        raise ValueConversionError(f"expected a string, got {type(v).__name__}")
    if _NUL in v:
        raise ValueConversionError("text contains a NUL byte (0x00), which PostgreSQL text cannot store")
    return v


def _int_core(v: Any) -> int:
    if v.__class__ is int:
        return v
    if isinstance(v, bool) or not isinstance(v, (int, str, Decimal)):
        raise ValueConversionError(f"expected an integer, got {type(v).__name__} {v!r:.60}")
    i = int(v)
    if isinstance(v, Decimal) and i != v:
        raise ValueConversionError(f"expected an integer, got {v}")
    return i


def _int_text(v: int) -> str:
    try:
        return str(v)
    except ValueError:                            # beyond Python's int→str digit limit
        return _decimal_text(Decimal(v))


def _varint_core_str(v: Any) -> int:
    if v.__class__ is int:
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            d = Decimal(v)                        # very long digit strings (> 4300 digits)
            if d != d.to_integral_value():
                raise ValueConversionError(f"varint {v[:60]!r} is not an integer") from None
            return int(d)
    return _int_core(v)


# PostgreSQL numeric: up to 131072 digits before the decimal point, 16383 after.
_NUMERIC_MAX_ADJ = 131071
_NUMERIC_MAX_SCALE = 16383


def _decimal_text(d: Decimal) -> str:
    """Exact plain notation, scale kept (``1.50`` stays ``1.50``), never an exponent
    (``1E+3`` → ``1000``), zero unsigned (PostgreSQL numeric has no negative zero)."""
    if not d.is_finite():
        return "NaN" if d.is_nan() else ("Infinity" if d > 0 else "-Infinity")
    adj = d.adjusted()
    if adj > _NUMERIC_MAX_ADJ or adj < -_NUMERIC_MAX_SCALE - 1:
        raise ValueConversionError(f"decimal with exponent {d.as_tuple().exponent} is outside PostgreSQL "
                                   f"numeric's range (131072 digits before, 16383 after the point)")
    s = format(d, "f")
    dot = s.find(".")
    if dot >= 0 and len(s) - dot - 1 > _NUMERIC_MAX_SCALE:
        raise ValueConversionError(f"decimal has {len(s) - dot - 1} digits after the point; "
                                   f"PostgreSQL numeric keeps at most 16383")
    if s[0] == "-" and not d:
        s = s[1:]
    return s


def _decimal_core_dbz(v: Any) -> Decimal:
    if isinstance(v, str):
        return Decimal(v)
    if isinstance(v, Decimal):
        return v
    if isinstance(v, dict) and "scale" in v and "value" in v:
        # Kafka Connect VariableScaleDecimal: unscaled two's-complement big-endian, base64.
        unscaled = int.from_bytes(base64.b64decode(v["value"]), "big", signed=True)
        t = Decimal(unscaled).as_tuple()
        return Decimal((t.sign, t.digits, -int(v["scale"])))
    if isinstance(v, int) and not isinstance(v, bool):
        return Decimal(v)
    raise ValueConversionError(
        f"decimal arrived as {type(v).__name__} {v!r:.60}: run the connector with "
        f"decimal.handling.mode=string so no decimal goes through a double")


def _decimal_core_pg(v: Any) -> Decimal:
    return v if isinstance(v, Decimal) else Decimal(v)


_F_SPECIAL = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _f64_text(x: float) -> str:
    r = repr(x)
    return _F_SPECIAL.get(r, r) if r[-1] in "nf" else r


def _f32_text(x: float) -> str:
    if x - x != 0.0:                              # NaN or ±Infinity
        return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")
    return str(np.float32(x))                     # shortest text that round-trips via float32


def _f64_json(x: float) -> str:
    r = repr(x)
    return '"' + _F_SPECIAL[r] + '"' if r[-1] in "nf" else r


def _f32_json(x: float) -> str:
    s = _f32_text(x)
    return '"' + s + '"' if s[-1] in "Ny" else s


def _float_core(v: Any) -> float:
    if v.__class__ is float:
        return v
    if isinstance(v, bool):
        raise ValueConversionError(f"expected a number, got {v!r}")
    return float(v)                               # ints, Decimals, "NaN"/"Infinity" strings


def _float_sort(x: float) -> tuple:
    # NaN last; -0.0 before 0.0 (Cassandra's Float.compare order keeps them apart).
    return (x != x, x if x == x else 0.0, str(x)[0] != "-")


def _bool_core(v: Any) -> bool:
    if v is True or v is False:
        return v
    if isinstance(v, str) and v.lower() in ("t", "true", "f", "false"):
        return v.lower() in ("t", "true")
    raise ValueConversionError(f"expected a boolean, got {v!r:.60}")


def _blob_core_drv(v: Any) -> bytes:
    return v if v.__class__ is bytes else bytes(v)


def _blob_core_dbz(v: Any) -> bytes:
    if isinstance(v, str):
        return base64.b64decode(v, validate=True)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    # Never bytes(v) of anything else: bytes(10**12) would allocate a terabyte of zeros from
    # one bad event, and a list of ints would pass as bytes.
    raise ValueConversionError(f"expected base64 text for a blob, got {v!r:.60}")


def _blob_core_pg(v: Any) -> bytes:
    if isinstance(v, str):
        if not v.startswith("\\x"):
            raise ValueConversionError("bytea text must be in hex form (bytea_output = hex)")
        return bytes.fromhex(v[2:])
    return bytes(v)


def _blob_text(b: bytes) -> str:
    return "\\x" + b.hex()


def _uuid_core(v: Any) -> str:
    if isinstance(v, uuid.UUID):
        return str(v)
    return str(uuid.UUID(v))


def _inet_norm(s: str) -> str:
    try:
        if ":" in s:
            return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, s))
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, s))
    except OSError:
        raise ValueConversionError(f"not an IP address: {s[:60]!r}") from None


def _inet_core_drv(v: Any) -> str:
    # The driver hands back socket.inet_ntop output already: nothing to normalise.
    return v if v.__class__ is str else _inet_norm(str(v).split("/", 1)[0])


def _inet_core_dbz(v: Any) -> str:
    # Java's InetAddress.toString(): "hostname/1.2.3.4" or "/1.2.3.4"; IPv6 unabbreviated.
    return _inet_norm(v.rsplit("/", 1)[-1])


def _inet_core_pg(v: Any) -> str:
    # inet_out drops /32 and /128; an ipaddress object (register_ipaddress) keeps them.
    return _inet_norm(str(v).split("/", 1)[0])


# -- dates and times ------------------------------------------------------------------

_US_PER_DAY = 86_400_000_000
_NS_PER_DAY = 86_400_000_000_000
# PostgreSQL's ranges (julian day 0 = 4714-11-24 BC, proleptic Gregorian):
# timestamptz [4714-11-24 00:00 BC, 294277-01-01 00:00) and date [4714-11-24 BC, 5874898-01-01).
_TS_MIN_US = -210_866_803_200_000_000
_TS_END_US = 9_224_318_016_000_000_000
_DATE_MIN_DAYS = -2_440_588
_DATE_END_DAYS = 2_145_042_906
_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_UNIX_ORDINAL = 719_163                           # date(1970, 1, 1).toordinal()


def _civil(days: int) -> tuple[int, int, int]:
    """Days since 1970-01-01 → proleptic Gregorian (year, month, day), astronomical years
    (0 = 1 BC). Howard Hinnant's ``civil_from_days``; exact for any integer."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


def _days_from_civil(y: int, m: int, d: int) -> int:
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m - 3 if m > 2 else m + 9) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _pg_date_part(days: int) -> tuple[str, bool]:
    y, m, d = _civil(days)
    if y > 0:
        return f"{y:04d}-{m:02d}-{d:02d}", False
    return f"{1 - y:04d}-{m:02d}-{d:02d}", True


def _iso_date_part(days: int) -> str:
    y, m, d = _civil(days)
    ys = f"{y:04d}" if 0 <= y <= 9999 else (f"+{y:04d}" if y > 0 else f"-{-y:04d}")
    return f"{ys}-{m:02d}-{d:02d}"


def _ts_text(us: int) -> str:
    """µs since epoch → PostgreSQL timestamptz output (TimeZone UTC): fraction trimmed,
    ``+00``, `` BC`` for years before 1."""
    if not _TS_MIN_US <= us < _TS_END_US:
        raise ValueConversionError(
            f"timestamp {us // 1000} ms since 1970 is outside PostgreSQL's timestamptz range "
            f"(4714-11-24 BC .. 294276-12-31 AD)")
    days, rem = divmod(us, _US_PER_DAY)
    dpart, bc = _pg_date_part(days)
    secs, frac = divmod(rem, 1_000_000)
    h, secs = divmod(secs, 3600)
    mi, s = divmod(secs, 60)
    out = f"{dpart} {h:02d}:{mi:02d}:{s:02d}"
    if frac:
        out += f".{frac:06d}".rstrip("0")
    return out + ("+00 BC" if bc else "+00")


def _ts_iso(us: int) -> str:
    """µs since epoch → ISO-8601 UTC with milliseconds (microseconds if not whole ms);
    years outside 0000..9999 in ISO's expanded form (+10000, -0001). No range limit."""
    days, rem = divmod(us, _US_PER_DAY)
    secs, frac = divmod(rem, 1_000_000)
    h, secs = divmod(secs, 3600)
    mi, s = divmod(secs, 60)
    fs = f"{frac // 1000:03d}" if frac % 1000 == 0 else f"{frac:06d}"
    return f"{_iso_date_part(days)}T{h:02d}:{mi:02d}:{s:02d}.{fs}Z"


def _ts_core_drv(v: Any) -> int:
    # The driver builds the datetime from a float of seconds (ms / 1000.0); far from 1970
    # that float is off by up to ~30 µs, so round to the nearest millisecond: the stored
    # value is whole milliseconds and the error is far below 0.5 ms.
    if v.__class__ is int:                         # epoch ms, e.g. SELECT toUnixTimestamp(col)
        return v * 1000
    if v.tzinfo is not None:
        us = (v - _EPOCH_UTC) // _ONE_US
    else:
        us = (v - _EPOCH) // _ONE_US
    return ((us + 500) // 1000) * 1000


def _ts_text_drv(v: Any) -> str:
    """Driver datetime → canonical text. Fast path for the usual case: a naive datetime of
    whole milliseconds has no float drift (drift would leave stray µs) and, being within
    years 1..9999, is inside PostgreSQL's range; format its fields directly."""
    if v.__class__ is datetime and v.tzinfo is None:
        us = v.microsecond
        if us == 0:
            return v.isoformat(" ", "seconds") + "+00"
        if us % 1000 == 0:                        # the fraction has a non-zero digit to stop at
            return v.isoformat(" ", "milliseconds").rstrip("0") + "+00"
    return _ts_text(_ts_core_drv(v))


def _ts_core_dbz(v: Any) -> int:
    return _int_core(v) * 1000


_PG_TS = re.compile(r"(\d{4,})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
                    r"(?:([+-])(\d\d)(?::?(\d\d))?(?::(\d\d))?)?( BC)?\Z")


def _ts_core_pg(v: Any) -> int:
    if isinstance(v, datetime):
        if v.tzinfo is None:
            return (v - _EPOCH) // _ONE_US
        return (v - _EPOCH_UTC) // _ONE_US
    m = _PG_TS.match(v)
    if not m:
        raise ValueConversionError(f"not a PostgreSQL timestamptz text (DateStyle ISO): {v[:60]!r}")
    y, mo, d, h, mi, s, frac, sign, oh, om, osec, bc = m.groups()
    year = int(y)
    if bc:
        year = 1 - year
    us = (((_days_from_civil(year, int(mo), int(d)) * 24 + int(h)) * 60 + int(mi)) * 60 + int(s)) * 1_000_000
    if frac:
        us += int(frac.ljust(6, "0"))
    if sign:
        off = (int(oh) * 3600 + int(om or 0) * 60 + int(osec or 0)) * 1_000_000
        us -= off if sign == "+" else -off
    return us


def _date_text(days: int) -> str:
    if not _DATE_MIN_DAYS <= days < _DATE_END_DAYS:
        raise ValueConversionError(f"date {days} days since 1970 is outside PostgreSQL's date range "
                                   f"(4714-11-24 BC .. 5874897-12-31 AD)")
    dpart, bc = _pg_date_part(days)
    return dpart + " BC" if bc else dpart


_PY_DATE_MIN_DAYS = date.min.toordinal() - 719_163     # 0001-01-01
_PY_DATE_MAX_DAYS = date.max.toordinal() - 719_163     # 9999-12-31


def _date_text_days(days: int) -> str:
    if _PY_DATE_MIN_DAYS <= days <= _PY_DATE_MAX_DAYS:   # fast path: Python's own calendar
        return date.fromordinal(days + 719_163).isoformat()
    return _date_text(days)


def _date_core_drv(v: Any) -> int:
    try:
        return v.days_from_epoch                  # cassandra.util.Date (always, in 3.30)
    except AttributeError:
        return v.toordinal() - _UNIX_ORDINAL      # datetime.date


_PG_DATE = re.compile(r"(\d{4,})-(\d\d)-(\d\d)( BC)?\Z")


def _date_core_pg(v: Any) -> int:
    if isinstance(v, date):
        return v.toordinal() - _UNIX_ORDINAL
    m = _PG_DATE.match(v)
    if not m:
        raise ValueConversionError(f"not a PostgreSQL date text (DateStyle ISO): {v[:60]!r}")
    year = int(m.group(1))
    return _days_from_civil(1 - year if m.group(4) else year, int(m.group(2)), int(m.group(3)))


def _time_check(ns: int) -> int:
    if not 0 <= ns < _NS_PER_DAY:
        raise ValueConversionError(f"time {ns} ns is not a time of day")
    return ns


def _time_text(ns: int) -> str:
    """ns of day → PostgreSQL time output; nanoseconds are truncated to microseconds."""
    secs, frac = divmod(_time_check(ns) // 1000, 1_000_000)
    h, secs = divmod(secs, 3600)
    mi, s = divmod(secs, 60)
    out = f"{h:02d}:{mi:02d}:{s:02d}"
    return out + f".{frac:06d}".rstrip("0") if frac else out


def _time_iso(ns: int) -> str:
    """ns of day → ``HH:MM:SS.nnnnnnnnn`` (exact: JSON keeps nanoseconds)."""
    secs, frac = divmod(_time_check(ns), 1_000_000_000)
    h, secs = divmod(secs, 3600)
    mi, s = divmod(secs, 60)
    return f"{h:02d}:{mi:02d}:{s:02d}.{frac:09d}"


def _time_core_drv(v: Any) -> int:
    if v.__class__ is int:
        return v
    try:
        return v.nanosecond_time                  # cassandra.util.Time
    except AttributeError:                        # datetime.time
        return (((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond) * 1000


_PG_TIME = re.compile(r"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?\Z")


def _time_core_pg(v: Any) -> int:
    if isinstance(v, dtime):
        return _time_core_drv(v)
    if v.__class__ is int:                        # time_as='bigint'
        return v
    if v.isdigit():                               # time_as='bigint', element of an array literal
        return int(v)
    m = _PG_TIME.match(v)
    if not m:
        raise ValueConversionError(f"not a PostgreSQL time text: {v[:60]!r}")
    h, mi, s, frac = m.groups()
    return ((int(h) * 60 + int(mi)) * 60 + int(s)) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def _interval_text(core: tuple[int, int, int]) -> str:
    """(months, days, ns) → PostgreSQL interval output, IntervalStyle postgres
    (``1 year 2 mons 3 days 04:05:06.000007``). Nanoseconds are truncated toward zero."""
    months, days, ns = core
    us = ns // 1000 if ns >= 0 else -((-ns) // 1000)
    parts: list[str] = []
    is_before = False
    # C division truncates toward zero: years and months carry the sign of the total.
    years = abs(months) // 12 * (1 if months >= 0 else -1)
    mons = months - years * 12
    for value, unit in ((years, "year"), (mons, "mon"), (days, "day")):
        if value:
            parts.append(f"{'+' if is_before and value > 0 else ''}{value} {unit}{'' if value == 1 else 's'}")
            is_before = value < 0
    if us or not parts:
        sign = "-" if us < 0 else ("+" if is_before else "")
        secs, frac = divmod(abs(us), 1_000_000)
        h, secs = divmod(secs, 3600)
        mi, s = divmod(secs, 60)
        t = f"{sign}{h:02d}:{mi:02d}:{s:02d}"
        parts.append(t + f".{frac:06d}".rstrip("0") if frac else t)
    return " ".join(parts)


def _duration_iso(core: tuple[int, int, int]) -> str:
    """(months, days, ns) → ISO-8601 duration with nanoseconds (``P1M2DT1H2M3.000000004S``),
    each component signed; PostgreSQL casts it to interval (rounding to µs)."""
    months, days, ns = core
    if not (months or days or ns):
        return "PT0S"
    out = "P" + (f"{months}M" if months else "") + (f"{days}D" if days else "")
    if ns:
        sign = "-" if ns < 0 else ""
        secs, frac = divmod(abs(ns), 1_000_000_000)
        h, secs = divmod(secs, 3600)
        mi, s = divmod(secs, 60)
        out += "T" + (f"{sign}{h}H" if h else "") + (f"{sign}{mi}M" if mi else "")
        if s or frac:
            out += f"{sign}{s}" + (f".{frac:09d}".rstrip("0") if frac else "") + "S"
    return out


def _duration_core_drv(v: Any) -> tuple[int, int, int]:
    return (v.months, v.days, v.nanoseconds)


def _duration_core_dbz(v: Any) -> tuple[int, int, int]:
    # The connector folds a duration into one int64 of nanoseconds:
    # (months * 30 + days) * 86400e9 + ns. Months and days cannot be recovered.
    return (0, 0, _int_core(v))


_PG_INTERVAL = re.compile(r"(?:([+-]?\d+) years? ?)?(?:([+-]?\d+) mons? ?)?(?:([+-]?\d+) days? ?)?"
                          r"(?:([+-])?(\d+):(\d\d):(\d\d)(?:\.(\d{1,6}))?)?\Z")


def _duration_core_pg(v: Any) -> tuple[int, int, int]:
    if isinstance(v, timedelta):
        # psycopg2 folds months into days (30 each): only the total survives.
        return (0, 0, (v // _ONE_US) * 1000)
    m = _PG_INTERVAL.match(v)
    if not m or not v:
        raise ValueConversionError(f"not a PostgreSQL interval text (IntervalStyle postgres): {v[:60]!r}")
    y, mo, d, sign, h, mi, s, frac = m.groups()
    us = ((int(h or 0) * 60 + int(mi or 0)) * 60 + int(s or 0)) * 1_000_000 + int((frac or "0").ljust(6, "0"))
    return (int(y or 0) * 12 + int(mo or 0), int(d or 0), (-us if sign == "-" else us) * 1000)


# -- the per-kind table -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Scalar:
    drv: Callable[[Any], Any]        # driver value → core
    dbz: Callable[[Any], Any]        # Debezium cell value → core
    dbzkey: Callable[[str], Any]     # Debezium map key string (JSON object key) → core
    pg: Callable[[Any], Any]         # psycopg2 value, or PostgreSQL output text → core
    text: Callable[[Any], str]       # core → canonical text (unescaped)
    json: Callable[[Any], str]       # core → JSON fragment
    key: Callable[[Any], str]        # core → JSON object key (map keys)
    pgjson: Callable[[Any], str]     # value inside jsonb (parsed, numbers as Decimal) → JSON fragment
    text_drv: Callable[[Any], str] | None = None   # driver value → canonical text, when faster
    sort: Callable[[Any], Any] | None = None   # sort key for set elements; None: the core itself
    escape: bool = False             # canonical text may hold COPY specials (\\, tab, LF, CR)
    quote: bool = True               # canonical text may need quoting as an array element


def _ident(v: Any) -> Any:
    return v


def _jstr(s: str) -> str:
    return '"' + s + '"'


def _pgjson_str(v: Any) -> str:
    # A string-valued scalar (uuid, timestamp ISO, ...) is stored in jsonb as we wrote it.
    if not isinstance(v, str):
        raise ValueConversionError(f"expected a JSON string, got {v!r:.60}")
    return _enc(v)


def _pgjson_int(v: Any) -> str:
    return _int_text(_int_core(v))


def _bool_text(b: bool) -> str:
    return "t" if b else "f"


def _bool_json(b: bool) -> str:
    return "true" if b else "false"


def _pgjson_bool(v: Any) -> str:
    if v is True or v is False:
        return _bool_json(v)
    raise ValueConversionError(f"expected a JSON boolean, got {v!r:.60}")


_INT = _Scalar(drv=_int_core, dbz=_int_core, dbzkey=int, pg=_int_core, text=_int_text, json=_int_text,
               key=_int_text, pgjson=_pgjson_int, quote=False)


def _bounded(kind: str, bits: int) -> _Scalar:
    """An integer type of ``bits`` bits: a value outside its range (a bad event) is a
    conversion error naming the type, not a COPY failure that would stop the whole batch."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def check(v: Any) -> int:
        if v.__class__ is int and lo <= v <= hi:  # the usual case, first
            return v
        i = _int_core(v)
        if not lo <= i <= hi:
            raise ValueConversionError(f"{i} is outside the range of {kind} ({lo}..{hi})")
        return i

    return replace(_INT, drv=check, dbz=check, dbzkey=lambda t: check(int(t)))
_TEXT = _Scalar(drv=_text_core, dbz=_text_core, dbzkey=_text_core, pg=_ident, text=_ident, json=_enc,
                key=_ident, pgjson=_pgjson_str, escape=True)

_KINDS: dict[str, _Scalar] = {
    "text": _TEXT,
    "ascii": _TEXT,
    "tinyint": _bounded("tinyint", 8), "smallint": _bounded("smallint", 16), "int": _bounded("int", 32),
    "bigint": _bounded("bigint", 64), "counter": _bounded("counter", 64),
    "varint": replace(_INT, dbz=_varint_core_str, dbzkey=_varint_core_str, pg=_varint_core_str),
    "decimal": _Scalar(drv=_decimal_core_pg, dbz=_decimal_core_dbz, dbzkey=Decimal, pg=_decimal_core_pg,
                       text=_decimal_text, json=_decimal_text, key=_decimal_text,
                       pgjson=lambda v: _decimal_text(_decimal_core_pg(v)), quote=False),
    "float": _Scalar(drv=_float_core, dbz=_float_core, dbzkey=float, pg=_float_core, text=_f32_text,
                     json=_f32_json, key=_f32_text, pgjson=lambda v: _f32_json(_float_core(v)),
                     sort=_float_sort, quote=False),
    "double": _Scalar(drv=_float_core, dbz=_float_core, dbzkey=float, pg=_float_core, text=_f64_text,
                      json=_f64_json, key=_f64_text, pgjson=lambda v: _f64_json(_float_core(v)),
                      sort=_float_sort, quote=False),
    "boolean": _Scalar(drv=_bool_core, dbz=_bool_core, dbzkey=_bool_core, pg=_bool_core, text=_bool_text,
                       json=_bool_json, key=_bool_json, pgjson=_pgjson_bool, quote=False),
    "blob": _Scalar(drv=_blob_core_drv, dbz=_blob_core_dbz, dbzkey=_blob_core_dbz, pg=_blob_core_pg,
                    text=_blob_text, json=lambda b: '"\\\\x' + b.hex() + '"', key=_blob_text,
                    pgjson=_pgjson_str, escape=True),
    "uuid": _Scalar(drv=_uuid_core, dbz=_uuid_core, dbzkey=_uuid_core, pg=_uuid_core, text=_ident,
                    json=_jstr, key=_ident, pgjson=_pgjson_str, quote=False),
    "inet": _Scalar(drv=_inet_core_drv, dbz=_inet_core_dbz, dbzkey=_inet_core_dbz, pg=_inet_core_pg,
                    text=_ident, json=_jstr, key=_ident, pgjson=_pgjson_str, quote=False),
    "timestamp": _Scalar(drv=_ts_core_drv, dbz=_ts_core_dbz, dbzkey=_ts_core_dbz, pg=_ts_core_pg,
                         text=_ts_text, json=lambda us: _jstr(_ts_iso(us)), key=_ts_iso, pgjson=_pgjson_str,
                         text_drv=_ts_text_drv),
    "date": _Scalar(drv=_date_core_drv, dbz=_int_core, dbzkey=int, pg=_date_core_pg, text=_date_text_days,
                    json=lambda d: _jstr(_iso_date_part(d)), key=_iso_date_part, pgjson=_pgjson_str),
    "time": _Scalar(drv=_time_core_drv, dbz=_int_core, dbzkey=int, pg=_time_core_pg, text=_time_text,
                    json=lambda ns: _jstr(_time_iso(ns)), key=_time_iso, pgjson=_pgjson_str, quote=False),
    "duration": _Scalar(drv=_duration_core_drv, dbz=_duration_core_dbz, dbzkey=_duration_core_dbz,
                        pg=_duration_core_pg, text=_interval_text,
                        json=lambda c: _jstr(_duration_iso(c)), key=_duration_iso, pgjson=_pgjson_str),
}
_KINDS["timeuuid"] = _KINDS["uuid"]
_TIME_BIGINT = replace(_KINDS["time"], text=lambda ns: str(_time_check(ns)))

# -- psycopg2 ---------------------------------------------------------------------------

# OIDs of the types whose psycopg2 Python values lose information or fail outside Python's
# range: (name, scalar oid, array oid).
_TEXT_CAST_OIDS = (("JSON", 114, 199), ("JSONB", 3802, 3807), ("INTERVAL", 1186, 1187),
                   ("DATE", 1082, 1182), ("TIMESTAMPTZ", 1184, 1185))


def register_pg_text_casts(conn_or_cursor: Any) -> None:
    """Make psycopg2 return jsonb/json, interval, date and timestamptz (and their arrays)
    as PostgreSQL's text output, for ``Codec.from_pg``.

    Needed for exact comparison: psycopg2 parses jsonb numbers as floats (decimal digits
    lost), folds interval months into 30 days, and cannot return dates or timestamps
    outside years 1..9999 at all. Call it on every reconcile/test connection (or cursor).
    The session must use DateStyle ISO and IntervalStyle postgres (PostgreSQL's defaults);
    any TimeZone works.
    """
    import psycopg2.extensions as ext

    def as_text(value: str | bytes | None, cur: Any) -> str | bytes | None:
        return value

    for name, oid, array_oid in _TEXT_CAST_OIDS:
        t = ext.new_type((oid,), f"C2PG_TEXT_{name}", as_text)
        ext.register_type(t, conn_or_cursor)
        ext.register_type(ext.new_array_type((array_oid,), f"C2PG_TEXT_{name}_ARRAY", t), conn_or_cursor)


# ---------------------------------------------------------------------------------------
# Composite types: one node of functions per CqlType
# ---------------------------------------------------------------------------------------

def _jsonb_key_order(item: tuple[str, str]) -> tuple[int, bytes]:
    # jsonb stores object keys shorter-first, then bytewise: use the same order so the
    # canonical text lists keys the way PostgreSQL prints them.
    b = item[0].encode("utf-8")
    return (len(b), b)


def _object(items: list[tuple[str, str]]) -> str:
    items.sort(key=_jsonb_key_order)
    return "{" + ",".join(_enc(k) + ":" + v for k, v in items) + "}"


@dataclass(frozen=True, slots=True)
class _Node:
    """JSON-side functions of one type: value → JSON fragment (None → ``null``) from each
    source, and value → map-key text from each source."""

    j_drv: Callable[[Any], str]
    j_dbz: Callable[[Any], str]
    j_pg: Callable[[Any], str]
    k_drv: Callable[[Any], str]
    k_dbz: Callable[[Any], str]
    k_dbzkey: Callable[[str], str]


def _nullable(f: Callable[[Any], str]) -> Callable[[Any], str]:
    def g(v: Any) -> str:
        return "null" if v is None else f(v)
    return g


def _node(t: CqlType) -> _Node:
    k = t.kind
    if k in _SCALARS:
        s = _KINDS[k]
        sj, sk, drv, dbz, dbzkey = s.json, s.key, s.drv, s.dbz, s.dbzkey
        return _Node(
            j_drv=_nullable(lambda v: sj(drv(v))),
            j_dbz=_nullable(lambda v: sj(dbz(v))),
            j_pg=_nullable(s.pgjson),
            k_drv=lambda v: sk(drv(v)),
            k_dbz=lambda v: sk(dbz(v)),
            k_dbzkey=lambda v: sk(dbzkey(v)),
        )
    if k in ("list", "set", "vector"):
        return _seq_node(t)
    if k == "map":
        return _map_node(t)
    if k == "tuple":
        return _tuple_node(t)
    if k == "udt":
        return _udt_node(t)
    raise TypeMappingError(f"CQL type {t.cql()!r} cannot be mapped")


def _no_dbzkey(v: Any) -> str:
    raise ValueConversionError("a collection-typed map key cannot arrive as a JSON object key")


def _seq_node(t: CqlType) -> _Node:
    e = t.params[0]
    is_set = t.kind == "set"
    if is_set and e.kind in _SCALARS:
        s = _KINDS[e.kind]
        sj, drv, dbz, sort = s.json, s.drv, s.dbz, s.sort

        def sorted_json(cores: list) -> str:
            cores.sort(key=sort)
            return "[" + ",".join(sj(c) for c in cores) + "]"

        def j_drv(v: Any) -> str:
            return sorted_json([drv(x) for x in v])

        def j_dbz(v: Any) -> str:
            return sorted_json([dbz(x) for x in v])
    else:
        en = _node(e)
        ed, eb = en.j_drv, en.j_dbz

        if is_set:                 # set of frozen collections/UDTs/tuples: by canonical text
            def j_drv(v: Any) -> str:
                return "[" + ",".join(sorted(ed(x) for x in v)) + "]"

            def j_dbz(v: Any) -> str:
                return "[" + ",".join(sorted(eb(x) for x in v)) + "]"
        else:
            def j_drv(v: Any) -> str:
                return "[" + ",".join([ed(x) for x in v]) + "]"

            def j_dbz(v: Any) -> str:
                return "[" + ",".join([eb(x) for x in v]) + "]"

    ep = _node(e).j_pg

    def j_pg(v: Any) -> str:
        return "[" + ",".join([ep(x) for x in v]) + "]"

    # As a map key (frozen, never null) a collection/UDT/tuple is its canonical JSON text.
    return _Node(_nullable(j_drv), _nullable(j_dbz), _nullable(j_pg), j_drv, j_dbz, _no_dbzkey)


def _map_node(t: CqlType) -> _Node:
    kn, vn = _node(t.params[0]), _node(t.params[1])
    kd, kb, kbs, vd, vb, vp = kn.k_drv, kn.k_dbz, kn.k_dbzkey, vn.j_drv, vn.j_dbz, vn.j_pg

    def j_drv(v: Any) -> str:
        return _object([(kd(a), vd(b)) for a, b in v.items()])

    def j_dbz(v: Any) -> str:
        # JsonConverter writes maps with string-schema keys as objects, others as [[k, v], ...].
        if isinstance(v, dict):
            return _object([(kbs(a), vb(b)) for a, b in v.items()])
        return _object([(kb(a), vb(b)) for a, b in v])

    def j_pg(v: Any) -> str:
        return _object([(a, vp(b)) for a, b in v.items()])

    # As a map key (frozen, never null) a collection/UDT/tuple is its canonical JSON text.
    return _Node(_nullable(j_drv), _nullable(j_dbz), _nullable(j_pg), j_drv, j_dbz, _no_dbzkey)


def _tuple_node(t: CqlType) -> _Node:
    nodes = [_node(p) for p in t.params]
    ds = [n.j_drv for n in nodes]
    bs = [n.j_dbz for n in nodes]
    ps = [n.j_pg for n in nodes]
    names = [f"field{i + 1}" for i in range(len(nodes))]
    n = len(nodes)

    def j_drv(v: Any) -> str:
        v = tuple(v) + (None,) * (n - len(v))
        return "[" + ",".join([f(x) for f, x in zip(ds, v)]) + "]"

    def j_dbz(v: Any) -> str:
        # The connector sends a tuple as a struct {field1..fieldN}.
        vals = [v.get(name) for name in names] if isinstance(v, dict) else list(v) + [None] * (n - len(v))
        return "[" + ",".join([f(x) for f, x in zip(bs, vals)]) + "]"

    def j_pg(v: Any) -> str:
        if not isinstance(v, list) or len(v) != n:
            return _dump_any(v)
        return "[" + ",".join([f(x) for f, x in zip(ps, v)]) + "]"

    # As a map key (frozen, never null) a collection/UDT/tuple is its canonical JSON text.
    return _Node(_nullable(j_drv), _nullable(j_dbz), _nullable(j_pg), j_drv, j_dbz, _no_dbzkey)


def _dump_any(v: Any) -> str:
    # Render an unexpected jsonb shape as is, so a comparison shows the difference.
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=str)


def _udt_fields_drv(v: Any, names: tuple[str, ...]) -> Sequence[Any]:
    if isinstance(v, tuple):            # the driver's namedtuple (or plain tuple)
        return v if len(v) == len(names) else tuple(v) + (None,) * (len(names) - len(v))
    return [getattr(v, n, None) for n in names]     # a class registered with register_user_type


def _udt_node(t: CqlType) -> _Node:
    names = t.field_names
    keys = [_enc(n) + ":" for n in names]           # declaration order, encoded once
    nodes = [_node(p) for p in t.params]
    ds = [n.j_drv for n in nodes]
    bs = [n.j_dbz for n in nodes]
    ps = [n.j_pg for n in nodes]
    known = frozenset(names)

    def j_drv(v: Any) -> str:
        vals = _udt_fields_drv(v, names)
        return "{" + ",".join([k + f(x) for k, f, x in zip(keys, ds, vals)]) + "}"

    def j_dbz(v: Any) -> str:
        return "{" + ",".join([k + f(v.get(n)) for k, f, n in zip(keys, bs, names)]) + "}"

    def j_pg(v: Any) -> str:
        body = [k + f(v.get(n)) for k, f, n in zip(keys, ps, names)]
        body += [_enc(x) + ":" + _dump_any(v[x]) for x in v if x not in known]   # surface drift
        return "{" + ",".join(body) + "}"

    # As a map key (frozen, never null) a collection/UDT/tuple is its canonical JSON text.
    return _Node(_nullable(j_drv), _nullable(j_dbz), _nullable(j_pg), j_drv, j_dbz, _no_dbzkey)


# ---------------------------------------------------------------------------------------
# Column codecs
# ---------------------------------------------------------------------------------------

_CONVERSION_ERRORS = (TypeError, ValueError, ArithmeticError, AttributeError, KeyError, IndexError,
                      OverflowError)


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


@dataclass(frozen=True, slots=True)
class Codec:
    """Converts one column's values to canonical COPY text. Built once per column by
    ``codec()``; picklable (rebuilt from its type on unpickling), so it can travel to Ray
    workers inside a Datasink or a worker's settings.

    Every method returns the field's COPY text, already escaped, or ``None`` for SQL NULL,
    and raises ``ValueConversionError`` for a value PostgreSQL cannot store.
    """

    cql_type: CqlType
    pg: PgType
    _drv: Callable[[Any], str] = field(repr=False, compare=False)
    _dbz: Callable[[Any], str | None] = field(repr=False, compare=False)
    _pgv: Callable[[Any], str] = field(repr=False, compare=False)
    time_as: str = "time"

    def __reduce__(self):
        # The composed functions are closures: pickle the type, rebuild on the other side.
        return (_rebuild_codec, (self.cql_type, self.time_as))

    def _fail(self, source: str, value: Any, exc: Exception) -> ValueConversionError:
        # Every message names the CQL type and the source; our own reasons are kept as
        # written, anything else (a malformed value) also shows the value, shortened.
        if isinstance(exc, ValueConversionError):
            return ValueConversionError(f"{self.cql_type.cql()} value from {source}: {exc}")
        return ValueConversionError(f"{self.cql_type.cql()} value {_short(value)} from {source} "
                                    f"cannot be converted: {type(exc).__name__}: {exc}")

    def from_driver(self, value: Any) -> str | None:
        """A value as cassandra-driver 3.30 returns it for this type → COPY text.

        Snapshot and repair call it per cell. Timestamps may also be given as epoch
        milliseconds (``int``), e.g. read with ``toUnixTimestamp(col)``, which is exact
        where the driver's datetime is not (and works outside years 1..9999).
        """
        if value is None:
            return None
        try:
            return self._drv(value)
        except _CONVERSION_ERRORS as exc:
            raise self._fail("cassandra-driver", value, exc) from exc

    def from_debezium(self, value: Any) -> str | None:
        """The ``value`` of a Debezium Cassandra connector JSON cell → the same COPY text
        ``from_driver`` gives for the same Cassandra value, with two documented exceptions:

        * ``duration``: the connector sends one int64 of nanoseconds, having folded months
          as 30 days and days as 24 h (``(months*30 + days)*86400e9 + ns``); months and days
          cannot be recovered, so the interval is written as hours only
          (``1 mon 2 days 00:00:01`` arrives as ``768:00:01``). PostgreSQL's ``=`` on
          intervals applies the same folding, so the stored value compares equal; its text
          differs (reconcile shows it, a repair rewrites it exactly).
        * an empty non-frozen collection (``[]``/``{}``) and a non-frozen UDT whose fields
          are all null are ``None``: that is what Cassandra returns for them.

        Non-frozen collection cells carry only the elements the mutation touched; this
        method converts what it is given, the merge decides what it means.
        """
        if value is None:
            return None
        try:
            return self._dbz(value)
        except _CONVERSION_ERRORS as exc:
            raise self._fail("Debezium", value, exc) from exc

    def from_pg(self, value: Any) -> str | None:
        """What psycopg2 returns for this column → the canonical COPY text, so a Cassandra
        value and a PostgreSQL value compare as equal strings.

        Accepts psycopg2's default Python values and PostgreSQL's text output. jsonb,
        interval, date and timestamptz need the text form for an exact answer: call
        ``register_pg_text_casts`` on the connection (see its docstring for why).
        """
        if value is None:
            return None
        try:
            return self._pgv(value)
        except _CONVERSION_ERRORS as exc:
            raise self._fail("PostgreSQL", value, exc) from exc

    def same(self, cassandra_copy_text: str | None, pg_value: Any) -> bool:
        """True when a value's canonical COPY text (``from_driver``) equals a PostgreSQL
        value (as psycopg2 returns it). Strict: the texts must match exactly. A PostgreSQL
        value that cannot be read back (``from_pg`` raises) equals nothing c2pg writes."""
        try:
            return cassandra_copy_text == self.from_pg(pg_value)
        except ValueConversionError:
            return False


def _rebuild_codec(t: CqlType, time_as: str) -> Codec:
    return codec(t, time_as=time_as)  # type: ignore[arg-type]


def _scalar_fns(s: _Scalar) -> tuple[Callable, Callable, Callable]:
    text, drv, dbz, pg = s.text, s.drv, s.dbz, s.pg
    if s.text_drv is not None:
        assert not s.escape
        return s.text_drv, lambda v: text(dbz(v)), lambda v: text(pg(v))
    if s.escape:
        def f_drv(v: Any) -> str:
            return _copy_escape(text(drv(v)))

        def f_dbz(v: Any) -> str:
            return _copy_escape(text(dbz(v)))

        def f_pg(v: Any) -> str:
            return _copy_escape(text(pg(v)))
    else:
        def f_drv(v: Any) -> str:
            return text(drv(v))

        def f_dbz(v: Any) -> str:
            return text(dbz(v))

        def f_pg(v: Any) -> str:
            return text(pg(v))
    return f_drv, f_dbz, f_pg


def _array_fns(t: CqlType, s: _Scalar) -> tuple[Callable, Callable, Callable]:
    text, drv, dbz, pg, sort = s.text, s.drv, s.dbz, s.pg, s.sort
    is_set = t.kind == "set"
    empty_is_null = t.kind in ("list", "set") and not t.frozen
    elem = _array_elem if s.quote else _ident
    finish = _copy_escape if s.escape else _ident

    def render(cores: list) -> str:
        if is_set:
            cores.sort(key=sort)
        return finish("{" + ",".join(["NULL" if c is None else elem(text(c)) for c in cores]) + "}")

    def f_drv(v: Any) -> str | None:
        if not v and empty_is_null:
            return None
        return render([None if x is None else drv(x) for x in v])

    def f_dbz(v: Any) -> str | None:
        if not v and empty_is_null:
            return None
        return render([None if x is None else dbz(x) for x in v])

    def f_pg(v: Any) -> str:
        # PostgreSQL's element order is the truth here: no re-sorting.
        if isinstance(v, str):
            v = parse_pg_array(v)
        return finish("{" + ",".join(["NULL" if x is None else elem(text(pg(x))) for x in v]) + "}")

    return f_drv, f_dbz, f_pg


def _json_loads_exact(s: str) -> Any:
    return json.loads(s, parse_float=Decimal, parse_int=Decimal)


def _json_fns(t: CqlType) -> tuple[Callable, Callable, Callable]:
    n = _node(t)
    jd, jb, jp = n.j_drv, n.j_dbz, n.j_pg
    empty_is_null = t.kind in ("list", "set", "map") and not t.frozen
    # A non-frozen UDT is one cell per field: with every field null there is no cell, and
    # Cassandra returns null for the column.
    udt_all_null = t.kind == "udt" and not t.frozen

    def f_drv(v: Any) -> str | None:
        if empty_is_null and not v:
            return None
        if udt_all_null and all(x is None for x in _udt_fields_drv(v, t.field_names)):
            return None
        return _copy_escape_json(jd(v))

    def f_dbz(v: Any) -> str | None:
        if empty_is_null and not v:
            return None
        if udt_all_null and all(v.get(x) is None for x in t.field_names):
            return None
        return _copy_escape_json(jb(v))

    def f_pg(v: Any) -> str:
        if isinstance(v, str):
            v = _json_loads_exact(v)
        return _copy_escape_json(jp(v))

    return f_drv, f_dbz, f_pg


def codec(t: CqlType, *, time_as: Literal["time", "bigint"] = "time") -> Codec:
    """The codec of one column of type ``t``; build it once per column and reuse it."""
    pg = pg_type(t, time_as=time_as)
    if t.kind in _SCALARS:
        s = _TIME_BIGINT if (t.kind == "time" and time_as == "bigint") else _KINDS[t.kind]
        fns = _scalar_fns(s)
    elif pg.is_array:
        e = t.params[0].kind
        s = _TIME_BIGINT if (e == "time" and time_as == "bigint") else _KINDS[e]
        fns = _array_fns(t, s)
    else:
        fns = _json_fns(t)
    return Codec(t, pg, *fns, time_as=time_as)
