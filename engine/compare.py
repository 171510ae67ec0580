"""Compare a PostgreSQL target with a full read of its Cassandra table, cell by cell.

For small tables: the demo and the integration tests use it to prove two sides equal
without going through the code under test. (Reconcile does the same at scale, by token
range with digests.)

It is an oracle, so it shares no value code with what it judges: not the codecs of
``engine.types`` that turn Cassandra values into the text c2pg stores, not psycopg2's
adapters. Each side is brought to one plain Python form by this module alone, from the
storage mapping of docs/types.md (the specification, "How each CQL type is stored"):

- Cassandra: the Python driver's values (a top-level ``timestamp`` read as epoch
  milliseconds with ``toUnixTimestamp``: the driver cannot build dates outside years
  1..9999);
- PostgreSQL: every column read as ``col::text`` in a session with ``TimeZone`` UTC,
  ``DateStyle`` ISO, ``IntervalStyle`` iso_8601 and ``extra_float_digits`` 1 (shortest
  round-trip floats), parsed here: numbers, ``bytea`` hex, array literals, ISO timestamps
  with ``BC``, ISO-8601 intervals, and JSON for the ``jsonb`` columns (maps, UDTs, tuples,
  nested collections) with their rules for values inside JSON.

The plain form (:class:`_Plain`) keeps what c2pg promises to keep and drops what
docs/types.md says PostgreSQL cannot hold: a ``time`` or ``duration`` is compared to the
microsecond at top level and in arrays, to the nanosecond inside JSON; a ``decimal`` with a
negative scale is compared as the integer PostgreSQL stores; floats by their bits, every NaN
alike, and ``-0.0`` as ``0.0`` inside JSON (``numeric`` has no negative zero).

:func:`differences` returns ``("missing", key)``, ``("extra", key)`` and
``("mismatch", key, column, cassandra_value, postgres_value)`` entries (a key as text, one
string per key column: an integer ``"7"``, NULL as ``None``), or one
``("target not there yet", ...)`` when the table or a column is still missing.
"""

from __future__ import annotations

import calendar
import ipaddress
import json
import math
import re
import struct
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg2
from psycopg2 import sql

from engine.schema import read_table
from engine.types import CqlType

_INTS = frozenset({"tinyint", "smallint", "int", "bigint", "varint", "counter"})
_TS = re.compile(r"^(\d+)-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d+))?\+00( BC)?$")
_DATE = re.compile(r"^(\d+)-(\d\d)-(\d\d)( BC)?$")
_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)(?:\.(\d+))?$")
_ISO_TS = re.compile(r"^([+-]?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z$")
_ISO_DATE = re.compile(r"^([+-]?\d{4,})-(\d\d)-(\d\d)$")
_ISO_DURATION = re.compile(r"^P(?:(-?\d+)Y)?(?:(-?\d+)M)?(?:(-?\d+)W)?(?:(-?\d+)D)?"
                           r"(?:T(?:(-?\d+)H)?(?:(-?\d+)M)?(?:(-?\d+(?:\.\d+)?)S)?)?$")


def differences(session, conn, keyspace: str, table: str, target_schema: str, target_table: str) -> list:
    schema = read_table(session, keyspace, table)
    cols = list(schema.columns)
    plains = [_Plain(c.cql_type) for c in cols]
    n_key = len(schema.primary_key)
    selectors = [f'toUnixTimestamp("{c.name}")' if c.cql_type.kind == "timestamp" else f'"{c.name}"' for c in cols]
    want = {}
    for row in session.execute(f'SELECT {", ".join(selectors)} FROM "{keyspace}"."{table}"'):
        values = [p.driver(v) for p, v in zip(plains, row, strict=True)]
        want[_key(values[:n_key])] = values
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; "
                        "SET LOCAL IntervalStyle = 'iso_8601'; SET LOCAL extra_float_digits = 1")
            cur.execute(sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in cols),
                sql.Identifier(target_schema, target_table)))
            got_rows = cur.fetchall()
    except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn) as exc:
        return [("target not there yet", type(exc).__name__)]
    got = {}
    for row in got_rows:
        values = [p.postgres(v) for p, v in zip(plains, row, strict=True)]
        got[_key(values[:n_key])] = values
    diffs: list[tuple[Any, ...]] = [("missing", k) for k in want.keys() - got.keys()]
    diffs += [("extra", k) for k in got.keys() - want.keys()]
    for k in want.keys() & got.keys():
        for c, w, g in zip(cols, want[k], got[k], strict=True):
            if w != g:
                diffs.append(("mismatch", k, c.name, w, g))
    return diffs


def wait_equal(session, conn, keyspace, table, target_schema, target_table, timeout_s: float = 60,
               expected=lambda d: False) -> list:
    """Differences after waiting up to ``timeout_s`` for them to vanish (sync catching up);
    ``expected(diff)`` marks differences that are known and documented, not waited for.

    Compares again as often as a comparison costs (0.1 s to 0.5 s apart): a small table is
    seen equal soon after sync applies it, a large one is not read back to back."""
    deadline = time.monotonic() + timeout_s
    while True:
        started = time.monotonic()
        diffs = [d for d in differences(session, conn, keyspace, table, target_schema, target_table)
                 if not expected(d)]
        if not diffs or time.monotonic() > deadline:
            return diffs
        time.sleep(min(0.5, max(0.1, time.monotonic() - started)))


def _key(values: list) -> tuple[str | None, ...]:
    return tuple(None if v is None else str(v) for v in values)


def _stored_as_json(t: CqlType) -> bool:
    """docs/types.md: a list, set or vector of a scalar is an array, every other collection,
    UDT and tuple a jsonb document."""
    if t.is_scalar:
        return False
    return not (t.kind in ("list", "set", "vector") and t.params[0].is_scalar)


class _Plain:
    """One column type's plain form, from either side."""

    def __init__(self, t: CqlType):
        self.t = t
        self.json = _stored_as_json(t)

    def driver(self, v: Any) -> Any:
        return _from_driver(self.t, v, in_json=self.json, top=True)

    def postgres(self, text: str | None) -> Any:
        if text is None:
            return None
        if self.json:
            return _from_json(self.t, json.loads(text, parse_float=Decimal, parse_int=int))
        if self.t.is_scalar:
            return _from_pg_text(self.t.kind, text)
        items = _pg_array(text)
        elems = tuple(None if e is None else _from_pg_text(self.t.params[0].kind, e) for e in items)
        return frozenset(elems) if self.t.kind == "set" else elems


# -- plain values -----------------------------------------------------------------------

def _float(kind: str, x: float, in_json: bool) -> Any:
    if math.isnan(x):
        return "NaN"
    if in_json and x == 0:
        x = 0.0  # jsonb's numeric has no -0
    return struct.pack(">f" if kind == "float" else ">d", x)


def _decimal(d: Decimal) -> str:
    return str(d.quantize(Decimal(1)) if d.as_tuple().exponent > 0 else d)  # type: ignore[operator]


def _days(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (astronomical year)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _trunc_us(ns: int) -> int:
    return -((-ns) // 1000) if ns < 0 else ns // 1000


def _from_driver(t: CqlType, v: Any, *, in_json: bool, top: bool = False) -> Any:
    if v is None:
        return None
    k = t.kind
    if k in _INTS:
        return int(v)
    if k == "decimal":
        return _decimal(Decimal(v))
    if k in ("float", "double"):
        return _float(k, float(v), in_json)
    if k == "boolean":
        return bool(v)
    if k in ("text", "ascii", "varchar"):
        return str(v)
    if k == "blob":
        return bytes(v)
    if k in ("uuid", "timeuuid"):
        return uuid.UUID(str(v))
    if k == "inet":
        return ipaddress.ip_address(str(v))
    if k == "timestamp":
        if top:
            return int(v)  # toUnixTimestamp: epoch ms
        assert isinstance(v, datetime)
        return calendar.timegm(v.utctimetuple()) * 1000 + v.microsecond // 1000
    if k == "date":
        return int(v.days_from_epoch)
    if k == "time":
        ns = int(v.nanosecond_time)
        return ns if in_json else ns // 1000
    if k == "duration":
        return (int(v.months), int(v.days), int(v.nanoseconds) if in_json else _trunc_us(int(v.nanoseconds)))
    if k in ("list", "vector"):
        return tuple(_from_driver(t.params[0], e, in_json=in_json) for e in v)
    if k == "set":
        return frozenset(_from_driver(t.params[0], e, in_json=in_json) for e in v)
    if k == "map":
        return frozenset((_from_driver(t.params[0], a, in_json=in_json), _from_driver(t.params[1], b, in_json=in_json))
                         for a, b in v.items())
    if k == "tuple":
        items = list(v) + [None] * (len(t.params) - len(v))
        return tuple(_from_driver(p, e, in_json=in_json) for p, e in zip(t.params, items, strict=True))
    if k == "udt":
        items = list(v) + [None] * (len(t.params) - len(v))
        return tuple((name, _from_driver(p, e, in_json=in_json))
                     for name, p, e in zip(t.field_names, t.params, items, strict=True))
    raise ValueError(f"compare: no plain form for CQL type {t.cql()}")


def _from_pg_text(kind: str, s: str) -> Any:
    """A scalar as PostgreSQL prints it (``::text`` or an array element)."""
    if kind in _INTS:
        return int(s)
    if kind == "decimal":
        return _decimal(Decimal(s))
    if kind == "float":
        return _float(kind, struct.unpack(">f", struct.pack(">f", float(s)))[0], False)
    if kind == "double":
        return _float(kind, float(s), False)
    if kind == "boolean":
        return s in ("t", "true")
    if kind in ("text", "ascii", "varchar"):
        return s
    if kind == "blob":
        return bytes.fromhex(s[2:])
    if kind in ("uuid", "timeuuid"):
        return uuid.UUID(s)
    if kind == "inet":
        return ipaddress.ip_address(s.split("/")[0])
    if kind == "timestamp":
        m = _TS.match(s)
        if m is None:
            raise ValueError(f"compare: unexpected timestamptz text {s!r}")
        year = int(m[1]) if not m[8] else 1 - int(m[1])
        day = _days(year, int(m[2]), int(m[3]))
        us = int(((m[7] or "") + "000000")[:6])
        return ((day * 24 + int(m[4])) * 60 + int(m[5])) * 60_000 + int(m[6]) * 1000 + us // 1000
    if kind == "date":
        m = _DATE.match(s)
        if m is None:
            raise ValueError(f"compare: unexpected date text {s!r}")
        return _days(int(m[1]) if not m[4] else 1 - int(m[1]), int(m[2]), int(m[3]))
    if kind == "time":
        if s.isdigit():  # time_as='bigint': nanoseconds
            return int(s) // 1000
        m = _TIME.match(s)
        if m is None:
            raise ValueError(f"compare: unexpected time text {s!r}")
        return ((int(m[1]) * 60 + int(m[2])) * 60 + int(m[3])) * 1_000_000 + int(((m[4] or "") + "000000")[:6])
    if kind == "duration":
        months, days, ns = _iso_duration(s)
        return (months, days, _trunc_us(ns))
    raise ValueError(f"compare: no plain form for CQL type {kind}")


def _iso_duration(s: str) -> tuple[int, int, int]:
    """ISO 8601 (PostgreSQL's iso_8601 interval style, and c2pg's JSON form) → (months,
    days, nanoseconds); each part carries its own sign."""
    m = _ISO_DURATION.match(s)
    if m is None:
        raise ValueError(f"compare: unexpected duration text {s!r}")
    y, mo, w, d, h, mi = (int(x) if x else 0 for x in m.groups()[:6])
    seconds = Decimal(m[7] or 0)
    return y * 12 + mo, w * 7 + d, (h * 3600 + mi * 60) * 1_000_000_000 + int(seconds * 1_000_000_000)


def _pg_array(s: str) -> list[str | None]:
    """A one-dimensional PostgreSQL array literal → its elements' texts (NULL → None)."""
    if not (s.startswith("{") and s.endswith("}")):
        raise ValueError(f"compare: unexpected array text {s!r}")
    body, i = s[1:-1], 0
    out: list[str | None] = []
    while i < len(body):
        if body[i] == '"':
            i += 1
            buf = []
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                buf.append(body[i])
                i += 1
            out.append("".join(buf))
            i += 1
        else:
            j = body.find(",", i)
            j = len(body) if j < 0 else j
            token = body[i:j]
            out.append(None if token == "NULL" else token)  # nosec B105 - an array's NULL, not a password
            i = j
        i += 1  # the comma
    return out


# -- values inside jsonb (docs/types.md, "Inside JSON") ----------------------------------------

def _iso_year(text: str) -> int:
    return int(text)  # ISO 8601 expanded years are astronomical: -0001 is 2 BC


def _from_json_scalar(kind: str, v: Any) -> Any:
    if kind in _INTS:
        return int(v)
    if kind == "decimal":
        return _decimal(Decimal(v) if not isinstance(v, Decimal) else v)
    if kind in ("float", "double"):
        return _float(kind, float(v), True)
    if kind == "boolean":
        return v is True or v == "true"
    if kind in ("text", "ascii", "varchar"):
        return str(v)
    if kind == "blob":
        return bytes.fromhex(v[2:])
    if kind in ("uuid", "timeuuid"):
        return uuid.UUID(v)
    if kind == "inet":
        return ipaddress.ip_address(v)
    if kind == "timestamp":
        m = _ISO_TS.match(v)
        if m is None:
            raise ValueError(f"compare: unexpected JSON timestamp {v!r}")
        day = _days(_iso_year(m[1]), int(m[2]), int(m[3]))
        ms = int(((m[7] or "") + "000")[:3])
        return ((day * 24 + int(m[4])) * 60 + int(m[5])) * 60_000 + int(m[6]) * 1000 + ms
    if kind == "date":
        m = _ISO_DATE.match(v)
        if m is None:
            raise ValueError(f"compare: unexpected JSON date {v!r}")
        return _days(_iso_year(m[1]), int(m[2]), int(m[3]))
    if kind == "time":
        m = _TIME.match(v)
        if m is None:
            raise ValueError(f"compare: unexpected JSON time {v!r}")
        return ((int(m[1]) * 60 + int(m[2])) * 60 + int(m[3])) * 1_000_000_000 + int(((m[4] or "") + "0" * 9)[:9])
    if kind == "duration":
        return _iso_duration(v)
    raise ValueError(f"compare: no plain form for CQL type {kind} in JSON")


def _map_key(t: CqlType) -> Callable[[str], Any]:
    """A jsonb object key (text) → the key's plain form: a scalar's text, a frozen
    collection/UDT/tuple key's compact JSON."""
    if not t.is_scalar:
        return lambda s: _from_json(t, json.loads(s, parse_float=Decimal, parse_int=int))
    if t.kind in _INTS or t.kind in ("decimal", "float", "double"):
        return lambda s: _from_json_scalar(t.kind, s if s in ("NaN", "Infinity", "-Infinity") else Decimal(s))
    return lambda s: _from_json_scalar(t.kind, s)


def _from_json(t: CqlType, v: Any) -> Any:
    if v is None:
        return None
    k = t.kind
    if t.is_scalar:
        return _from_json_scalar(k, v)
    if k in ("list", "vector"):
        return tuple(_from_json(t.params[0], e) for e in v)
    if k == "set":
        return frozenset(_from_json(t.params[0], e) for e in v)
    if k == "map":
        key = _map_key(t.params[0])
        return frozenset((key(a), _from_json(t.params[1], b)) for a, b in v.items())
    if k == "tuple":
        items = list(v) + [None] * (len(t.params) - len(v))
        return tuple(_from_json(p, e) for p, e in zip(t.params, items, strict=True))
    if k == "udt":
        return tuple((name, _from_json(p, v.get(name))) for name, p in zip(t.field_names, t.params, strict=True))
    raise ValueError(f"compare: no plain form for CQL type {t.cql()} in JSON")
