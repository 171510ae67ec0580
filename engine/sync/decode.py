"""Decode Debezium Cassandra change events (Kafka records) into :class:`~engine.events.ChangeEvent`.

Called by the sync worker for every record it polls, before the batch is reduced: build one
:class:`EventDecoder` per table where the work runs (it holds the columns' codecs and, for
Avro, a registry client and its parsed schemas), then call :meth:`EventDecoder.decode` per
record. The event shape this module relies on is described in ``docs/debezium-events.md``
and the facts observed on the local stack in ``docs/local-stack.md``;
``tests/fixtures/debezium`` holds real records, which are the truth this module is tested
against.

Outcomes of one record, and what the caller does with each:

- a :class:`~engine.events.ChangeEvent`: reduce and apply it;
- ``None``: a Kafka tombstone (null value, written after deletes when the connector runs
  with ``tombstones.on.delete=true``): nothing to apply, commit its offset;
- :class:`DecodeError`: the record is bad (malformed, another table, a value PostgreSQL
  cannot store): route it to the dead-letter table with ``str(exc)`` and the type name, and
  go on with the batch;
- :class:`SchemaChanged`: the event names columns the :class:`~engine.schema.TableSchema`
  lacks (added in Cassandra after the schema was read): refresh the schema, build a new
  decoder and decode the record again. If the refreshed schema still lacks them, the record
  is bad: dead-letter it;
- :class:`RegistryUnavailable` (Avro only): the schema registry could not be asked. Nothing
  is wrong with the record: retry the batch later, never dead-letter it.

Nothing else escapes :meth:`EventDecoder.decode` (property-tested on arbitrary bytes and on
mutated real events).

Which event becomes which :class:`~engine.events.Op` (the connector's ``op``):

- ``i`` → ``UPSERT`` with ``row_marker=True`` (and ``marker_expires_us``, the TTL expiry
  of its live cells, when it had a TTL); ``u`` → ``UPSERT``. Both are partial writes:
  only the columns whose ``after`` entry is not null are in ``cells``.
- ``d`` → ``ROW_DELETE`` when every clustering column has a value in the record key, and
  ``PARTITION_DELETE`` when they are all null. In a table without clustering columns a
  partition holds exactly one row, so ``d`` is a ``ROW_DELETE`` (whose key is the whole
  primary key = the partition key).
- ``r`` → ``RANGE_DELETE`` with the bounds of ``after._range_start``/``_range_end``.

Values: every key value and cell value goes through the column's
:meth:`engine.types.Codec.from_debezium`, so events carry canonical COPY text. Non-frozen
collection cells hold only the elements the mutation touched (an append, an element removal
and an overwrite look alike; ``docs/local-stack.md`` fact 8): they are converted as given,
and the reducer and the merge treat them as an overwrite of the whole cell. Scheduled
reconcile restores what that gets wrong.

Formats: JSON (``JsonConverter``, with or without the ``{"schema", "payload"}`` envelope) or
Avro in the Confluent wire format (magic byte 0, a 4-byte big-endian schema id, Avro
binary). Avro writer schemas come from the registry by id, are parsed once, without their
logical types, so that values arrive in the same form as in JSON (timestamps as epoch ms,
dates as epoch days, uuids as strings), and both formats go through one function. Keys are
read only for ``d`` events; a key starting with byte 0 is read as Avro whatever the value
format.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from typing import Any, Literal

import fastavro

from engine.errors import C2pgError
from engine.events import Bound, Cell, ChangeEvent, Op, Origin
from engine.schema import Column, TableSchema
from engine.types import ValueConversionError, codec

# orjson parses the connector's JSON in about 3.4 µs per event where json takes 8.9 (the
# fixture events). Where they differ, nothing is stored wrong: orjson turns integers beyond
# 64 bits into floats, which every integer codec refuses (the connector never sends them:
# varint and decimal arrive as strings), and rejects lone surrogate escapes, which no
# Cassandra text holds.
try:
    import orjson as _orjson

    _loads: Callable[[Any], Any] = _orjson.loads
    _JSON_ERRORS: tuple[type[BaseException], ...] = (ValueError,)
except ImportError:  # pragma: no cover - exercised only where orjson is not installed
    _loads = json.loads
    # json recurses: a deeply nested document raises RecursionError instead of ValueError.
    _JSON_ERRORS = (ValueError, RecursionError)

__all__ = ["DecodeError", "EventDecoder", "RegistryUnavailable", "SchemaChanged"]


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------

def _where(origin: Origin | None) -> str:
    if origin is None:
        return "record"
    return f"record {origin.topic} partition {origin.partition} offset {origin.offset}"


class DecodeError(C2pgError):
    """A record that cannot be decoded or converted: it goes to the dead-letter table.

    The message names the record (topic, partition, offset), the column when a value is at
    fault, and the reason. ``reason``, ``origin`` and ``column`` are kept as attributes.
    """

    def __init__(self, reason: str, origin: Origin | None = None, column: str | None = None):
        self.reason = reason
        self.origin = origin
        self.column = column
        col = f"column {column!r}: " if column is not None else ""
        super().__init__(f"cannot decode {_where(origin)}: {col}{reason}")

    def __reduce__(self):
        return (type(self), (self.reason, self.origin, self.column))


class SchemaChanged(C2pgError):
    """The event names columns that the decoder's :class:`TableSchema` does not have.

    ``columns`` holds their names, sorted. Not a bad record: the worker refreshes the
    schema (:func:`engine.schema.read_table`) and decodes the record again.
    """

    def __init__(self, columns: list[str] | tuple[str, ...], table: str, origin: Origin | None = None):
        self.columns = tuple(sorted(columns))
        self.table = table
        self.origin = origin
        super().__init__(f"{_where(origin)} names columns {list(self.columns)} that the schema of "
                         f"{table} does not have: the table changed in Cassandra; refresh the schema")

    def __reduce__(self):
        return (type(self), (self.columns, self.table, self.origin))


class RegistryUnavailable(C2pgError):
    """The schema registry could not be asked for a writer schema (network error, server
    error). Transient and not the record's fault: the worker retries, it never dead-letters
    the record. (A schema id the registry does not know is a :class:`DecodeError`.)"""


class _Bad(Exception):
    """Internal: what is wrong with a record; :meth:`EventDecoder.decode` adds the origin."""

    def __init__(self, reason: str, column: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.column = column


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


# ---------------------------------------------------------------------------------------
# Range bounds: the clustering values of a range tombstone arrive as strings
# ---------------------------------------------------------------------------------------
#
# The connector writes each bound value with Cassandra's ``AbstractType.getString``
# (``Cassandra5CommitLogReadHandlerImpl.populateRangeData``). Checked against cassandra-all
# 5.0: ints and varint as decimal digits; text as is; uuid lowercase; boolean
# ``true``/``false``; double/float as Java's ``Double.toString`` (``1.0E10``, ``NaN``,
# ``Infinity``); decimal as ``BigDecimal.toString`` (``1E+3``, ``1.50``); blob as hex without
# ``0x``; inet as ``getHostAddress`` (``0:0:0:0:0:0:0:1``); timestamp as
# ``2023-11-14T22:13:20.123Z`` (UTC, years past 9999 as ``+10000``; the era is not written,
# so a timestamp before year 1 reads as the same year AD); date as ``1900-01-01``
# (astronomical years, ``-0001`` is 2 BC); time as ``23:59:59.123456789``.
# Each reader returns the value in the form a Debezium JSON cell would hold it, so the
# column's codec gives exactly the text it gives for the same value in a cell.

_INT_RE = re.compile(r"-?[0-9]+\Z")
_TS_RE = re.compile(r"([+-]?)([0-9]{4,})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
                    r"(?:\.([0-9]{1,9}))?Z\Z")
_DATE_RE = re.compile(r"([+-]?)([0-9]{4,})-([0-9]{2})-([0-9]{2})\Z")
_TIME_RE = re.compile(r"([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?\Z")


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Proleptic Gregorian date (astronomical year) → days since 1970-01-01 (H. Hinnant)."""
    if not (1 <= m <= 12 and 1 <= d <= 31):
        raise ValueError(f"no month {m} or day {d}")
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m - 3 if m > 2 else m + 9) + 2) // 5 + d - 1
    return era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468


def _read_int(s: str) -> int:
    if not _INT_RE.match(s):
        raise ValueError("not an integer")
    return int(s)


def _read_varint(s: str) -> str:
    if not _INT_RE.match(s):
        raise ValueError("not an integer")
    return s                                    # the codec reads any length exactly


def _read_bool(s: str) -> bool:
    if s == "true":
        return True
    if s == "false":
        return False
    raise ValueError("not true or false")


def _read_float(s: str) -> float:
    if "_" in s or s != s.strip():              # Python's float() takes these, Java never writes them
        raise ValueError("not a number")
    return float(s)                             # Java's forms: 1.0E10, NaN, Infinity, -0.0


def _read_blob(s: str) -> bytes:
    return bytes.fromhex(s)


def _read_timestamp(s: str) -> int:
    m = _TS_RE.match(s)
    if not m:
        raise ValueError("not a UTC timestamp yyyy-mm-ddThh:mm:ss.fffZ")
    sign, y, mo, d, h, mi, sec, frac = m.groups()
    year = -int(y) if sign == "-" else int(y)
    secs = ((_days_from_civil(year, int(mo), int(d)) * 24 + int(h)) * 60 + int(mi)) * 60 + int(sec)
    ms = int((frac or "0").ljust(3, "0")[:3])
    return secs * 1000 + ms                     # epoch ms, as in a cell


def _read_date(s: str) -> int:
    m = _DATE_RE.match(s)
    if not m:
        raise ValueError("not a date yyyy-mm-dd")
    sign, y, mo, d = m.groups()
    return _days_from_civil(-int(y) if sign == "-" else int(y), int(mo), int(d))


def _read_time(s: str) -> int:
    m = _TIME_RE.match(s)
    if not m:
        raise ValueError("not a time hh:mm:ss.nnnnnnnnn")
    h, mi, sec, frac = m.groups()
    return ((int(h) * 60 + int(mi)) * 60 + int(sec)) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def _as_is(s: str) -> str:
    return s


_BOUND_READERS: dict[str, Callable[[str], Any]] = {
    "tinyint": _read_int, "smallint": _read_int, "int": _read_int, "bigint": _read_int,
    "varint": _read_varint, "decimal": _as_is,
    "float": _read_float, "double": _read_float,
    "boolean": _read_bool,
    "text": _as_is, "ascii": _as_is, "uuid": _as_is, "timeuuid": _as_is, "inet": _as_is,
    "blob": _read_blob,
    "timestamp": _read_timestamp, "date": _read_date, "time": _read_time,
}

# Cassandra's ClusteringPrefix.Kind names; boundaries (EXCL_END_INCL_START_BOUNDARY, ...) only
# appear when tombstones are merged in sstables, never in one mutation.
_START_METHODS = {"INCL_START_BOUND": True, "EXCL_START_BOUND": False}
_END_METHODS = {"INCL_END_BOUND": True, "EXCL_END_BOUND": False}


def _cql_unquote(name: str) -> str:
    # Bound values are named with ColumnIdentifier.toCQLString(): quoted when not a plain
    # lowercase identifier ("MyCol"), unlike the cells of ``after``.
    if len(name) >= 2 and name[0] == '"' and name[-1] == '"':
        return name[1:-1].replace('""', '"')
    return name


# ---------------------------------------------------------------------------------------
# Avro
# ---------------------------------------------------------------------------------------

def _strip_logical_types(node: Any) -> Any:
    """The writer schema without ``logicalType``, so fastavro returns the underlying
    long/int/string/bytes, as JsonConverter writes them (no datetime, date or UUID objects)."""
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def _registry_says_unknown(exc: BaseException) -> bool:
    # confluent_kafka's SchemaRegistryError carries the HTTP status (404: no such schema);
    # a plain mapping-like registry (tests, caches) raises a LookupError.
    return isinstance(exc, LookupError) or getattr(exc, "http_status_code", None) == 404


# ---------------------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------------------

_OPS = {"i": Op.UPSERT, "u": Op.UPSERT, "d": Op.ROW_DELETE, "r": Op.RANGE_DELETE}
_RANGE_FIELDS = ("_range_start", "_range_end")


class EventDecoder:
    """Decodes the records of one table's topic; build it once per table where the work
    runs, and rebuild it when the schema changes (:class:`SchemaChanged`).

    Everything that depends only on the schema (codecs, column lists, the set of known
    names, the bound readers) is computed here, once: :meth:`decode` runs for every event.
    """

    def __init__(self, schema: TableSchema, *, value_format: Literal["json", "avro"] = "json",
                 registry: Any = None):
        if value_format not in ("json", "avro"):
            raise ValueError(f"value_format must be 'json' or 'avro', not {value_format!r}")
        if value_format == "avro" and registry is None:
            raise ValueError("value_format='avro' needs a schema registry client (registry=...)")
        self.schema = schema
        self.value_format = value_format
        self._registry = registry
        self._avro_schemas: dict[int, Any] = {}       # schema id → parsed writer schema
        self._keyspace = schema.keyspace
        self._table = schema.table
        self._pk = tuple((c.name, codec(c.cql_type).from_debezium) for c in schema.partition_key)
        self._ck = tuple((c.name, codec(c.cql_type).from_debezium) for c in schema.clustering)
        self._ck_names = tuple(c.name for c in schema.clustering)
        self._bound_readers = tuple(self._bound_reader(c) for c in schema.clustering)
        # Live regular columns, in the schema's order (the order of ChangeEvent.cells).
        self._regular = tuple((c.name, codec(c.cql_type).from_debezium)
                              for c in schema.regular if not c.dropped)
        # Columns whose event cell carries the statement's TTL (a non-frozen collection's
        # carries none): the row marker's TTL is read from them.
        self._one_cell = frozenset(c.name for c in schema.regular if not c.cql_type.multi_cell)
        # Names an event may carry: every column (dropped ones are ignored) and the bounds.
        self._known = frozenset([c.name for c in schema.columns] + list(_RANGE_FIELDS))

    @staticmethod
    def _bound_reader(col: Column) -> tuple[Callable[[str], Any] | None, str]:
        t = col.cql_type
        return (_BOUND_READERS.get(t.kind) if t.is_scalar else None), t.cql()

    # -- entry point ------------------------------------------------------------------

    def decode(self, raw_key: bytes | None, raw_value: bytes | None, origin: Origin) -> ChangeEvent | None:
        """One Kafka record → a :class:`ChangeEvent`, or ``None`` for a Kafka tombstone.

        Raises :class:`DecodeError` (dead-letter the record), :class:`SchemaChanged`
        (refresh the schema, decode again) or, for Avro, :class:`RegistryUnavailable`
        (retry later). See the module docstring.
        """
        if raw_value is None:
            return None
        try:
            value = self._read(raw_value, self.value_format == "avro", "value")
            if value is None:                       # JSON null or an enveloped null: also a tombstone
                return None
            return self._event(value, raw_key, origin)
        except _Bad as bad:
            raise DecodeError(bad.reason, origin, bad.column) from bad.__cause__

    # -- parsing ----------------------------------------------------------------------

    def _read(self, raw: Any, avro: bool, what: str) -> Any:
        """Bytes → the record as Python values (the payload if JSON-enveloped)."""
        if avro:
            return self._read_avro(raw, what)
        try:
            doc = _loads(raw)
        except _JSON_ERRORS as exc:
            raise _Bad(f"the {what} is not valid JSON: {exc}") from exc
        except TypeError as exc:                    # not bytes/str at all
            raise _Bad(f"the {what} is {type(raw).__name__}, not bytes") from exc
        # JsonConverter with schemas.enable=true wraps the record: {"schema": ..., "payload": ...}
        # (schema null for a schemaless value). No change event or key has exactly these fields.
        if doc.__class__ is dict and len(doc) == 2 and "payload" in doc and "schema" in doc:
            envelope_schema = doc["schema"]
            if envelope_schema is None or (envelope_schema.__class__ is dict
                                           and envelope_schema.get("type") == "struct"):
                return doc["payload"]
        return doc

    def _read_avro(self, raw: Any, what: str) -> Any:
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise _Bad(f"the {what} is {type(raw).__name__}, not bytes")
        if len(raw) < 5 or raw[0] != 0:
            raise _Bad(f"the {what} is not in the Confluent Avro wire format "
                       f"(magic byte 0 and a 4-byte schema id)")
        schema_id = int.from_bytes(raw[1:5], "big")
        parsed = self._avro_schemas.get(schema_id)
        if parsed is None:
            if self._registry is None:
                raise _Bad(f"the {what} is Avro (schema id {schema_id}) but this decoder has no "
                           f"schema registry")
            parsed = self._avro_schemas[schema_id] = self._fetch_schema(schema_id, what)
        buf = io.BytesIO(raw)
        buf.seek(5)
        try:
            doc = fastavro.schemaless_reader(buf, parsed, None)
        except Exception as exc:                    # fastavro's errors on bad data vary by field type
            raise _Bad(f"the {what} does not match its Avro writer schema {schema_id}: "
                       f"{type(exc).__name__}: {exc}") from exc
        return doc

    def _fetch_schema(self, schema_id: int, what: str) -> Any:
        try:
            registered = self._registry.get_schema(schema_id)
        except Exception as exc:                    # the registry client's errors: classify once here
            if _registry_says_unknown(exc):
                raise _Bad(f"the {what}'s Avro schema id {schema_id} is unknown to the schema registry") \
                    from exc
            raise RegistryUnavailable(f"cannot fetch Avro schema id {schema_id} from the schema registry: "
                                      f"{type(exc).__name__}: {exc}") from exc
        schema_type = getattr(registered, "schema_type", None) or "AVRO"
        if schema_type != "AVRO":
            raise _Bad(f"the {what}'s schema id {schema_id} is a {schema_type} schema, not Avro")
        try:
            return fastavro.parse_schema(_strip_logical_types(json.loads(registered.schema_str)))
        except Exception as exc:                    # json or fastavro rejecting the schema text
            raise _Bad(f"the {what}'s Avro schema id {schema_id} cannot be parsed: "
                       f"{type(exc).__name__}: {exc}") from exc

    # -- the event --------------------------------------------------------------------

    def _event(self, value: Any, raw_key: Any, origin: Origin) -> ChangeEvent:
        if value.__class__ is not dict:
            raise _Bad(f"the value is a {_kind(value)}, not a change event record")
        source = value.get("source")
        if source.__class__ is not dict:
            raise _Bad(f"field 'source' is {'missing' if 'source' not in value else _kind(source)}, "
                       f"not a record")
        keyspace, table = source.get("keyspace"), source.get("table")
        if keyspace != self._keyspace or table != self._table:
            raise _Bad(f"the event is for table {keyspace!r}.{table!r}, this decoder for "
                       f"{self._keyspace}.{self._table}")
        ts = source.get("ts_us")
        if ts.__class__ is not int:
            raise _Bad(f"field 'source.ts_us' must be an integer (µs), not {_kind(ts)}")
        op_code = value.get("op")
        op = _OPS.get(op_code) if op_code.__class__ is str else None
        if op is None:
            raise _Bad(f"unknown op {op_code!r} (expected one of i, u, d, r)")
        after = value.get("after")
        if after.__class__ is not dict:
            raise _Bad(f"field 'after' is {'missing' if 'after' not in value else _kind(after)}, "
                       f"not a record")
        if not self._known.issuperset(after):
            raise SchemaChanged([n for n in after if n not in self._known],
                                f"{self._keyspace}.{self._table}", origin)

        if op is Op.UPSERT:
            key = self._key_values(after, self._pk) + self._key_values(after, self._ck)
            cells = self._cells(after, ts)
            marker_expires = None
            if op_code == "i":
                # An INSERT gives its marker and its cells one TTL; the event has it on the
                # cells only. Taken when every live single-cell value agrees (a BATCH that
                # merges an INSERT without TTL and an UPDATE with one into one mutation
                # does not); an INSERT of the key alone carries no TTL to read.
                expiries = {c.expires_us for n, c in cells if c.value is not None and n in self._one_cell}
                marker_expires = expiries.pop() if len(expiries) == 1 else None
            return ChangeEvent(self._keyspace, self._table, op, ts, key, cells,
                               row_marker=op_code == "i", marker_expires_us=marker_expires, origin=origin)
        partition = self._key_values(after, self._pk)
        if op is Op.RANGE_DELETE:
            start = self._bound(after.get("_range_start"), "_range_start", _START_METHODS)
            end = self._bound(after.get("_range_end"), "_range_end", _END_METHODS)
            return ChangeEvent(self._keyspace, self._table, op, ts, partition,
                               range_start=start, range_end=end, origin=origin)
        if self._ck and not self._deletes_one_row(raw_key, after):
            return ChangeEvent(self._keyspace, self._table, Op.PARTITION_DELETE, ts, partition, origin=origin)
        # Without clustering columns a partition is one row: its deletion is a row deletion.
        key = partition + self._key_values(after, self._ck)
        return ChangeEvent(self._keyspace, self._table, Op.ROW_DELETE, ts, key, origin=origin)

    def _key_values(self, after: dict, columns: tuple) -> tuple[str, ...]:
        out = []
        for name, conv in columns:
            cell = after.get(name)
            if cell.__class__ is not dict:
                raise _Bad(f"primary-key cell is {_kind(cell)}, not a cell record", name)
            v = cell.get("value")
            if v is None:
                raise _Bad("primary-key cell has no value", name)
            try:
                text = conv(v)
            except ValueConversionError as exc:
                raise _Bad(str(exc), name) from exc
            if text is None:
                raise _Bad(f"primary-key value {v!r:.60} converts to null", name)
            out.append(text)
        return tuple(out)

    def _cells(self, after: dict, ts: int) -> tuple[tuple[str, Cell], ...]:
        out: list[tuple[str, Cell]] = []
        append = out.append
        null_cell = None                            # one shared Cell(None, ts): it is immutable
        for name, conv in self._regular:
            cell = after.get(name)
            if cell is None:                        # not touched by this mutation
                continue
            if cell.__class__ is not dict:
                raise _Bad(f"cell is {_kind(cell)}, not a cell record", name)
            try:
                v = cell["value"]
            except KeyError:
                raise _Bad("cell has no field 'value'", name) from None
            if v is not None:
                try:
                    text = conv(v)
                except ValueConversionError as exc:
                    raise _Bad(str(exc), name) from exc
                if text is not None:
                    expires = cell.get("deletion_ts")
                    if expires is not None and expires.__class__ is not int:
                        raise _Bad(f"deletion_ts must be an integer (µs) or null, not {_kind(expires)}",
                                   name)
                    append((name, Cell(text, ts, expires)))
                    continue
                # else: e.g. [] in a non-frozen collection, which is null in Cassandra
            # Set to null, or the column deleted: a deletion of the cell at ts.
            if null_cell is None:
                null_cell = Cell(None, ts)
            append((name, null_cell))
        return tuple(out)

    def _deletes_one_row(self, raw_key: Any, after: dict) -> bool:
        """For ``d`` in a table with clustering columns: a row (True) or a partition (False)?

        Decided by the record key (every clustering column set, or all null); without a key,
        by the clustering cells of ``after``. The two must agree: the key values of a row
        deletion are read from ``after``.
        """
        in_after = [self._has_value(after.get(n)) for n in self._ck_names]
        if raw_key is None:
            present = in_after
        else:
            is_avro = isinstance(raw_key, (bytes, bytearray, memoryview)) and raw_key[:1] == b"\x00"
            key = self._read(raw_key, is_avro, "key")
            if key.__class__ is not dict:
                raise _Bad(f"the key is a {_kind(key)}, not a record of the primary-key columns")
            present = [key.get(n) is not None for n in self._ck_names]
            if present != in_after:
                raise _Bad("the key and 'after' disagree on which clustering columns are set")
        if all(present):
            return True
        if not any(present):
            return False
        raise _Bad("a delete with some clustering columns set and others null "
                   "(a clustering prefix arrives as a range deletion, op r)")

    @staticmethod
    def _has_value(cell: Any) -> bool:
        return cell.__class__ is dict and cell.get("value") is not None

    def _bound(self, rng: Any, field: str, methods: dict[str, bool]) -> Bound | None:
        """One ``_range_start``/``_range_end`` → a :class:`Bound` (None: open-ended).

        The values are a prefix of the clustering columns, in the table's clustering order
        (for a DESC column the start bound holds the greater value, as in Cassandra). The
        connector writes them from a hash map, so they are put back in clustering order by
        name.
        """
        if rng is None:
            return None
        if rng.__class__ is not dict:
            raise _Bad(f"field 'after.{field}' is {_kind(rng)}, not a range bound record")
        method = rng.get("method")
        inclusive = methods.get(method) if method.__class__ is str else None
        if inclusive is None:
            raise _Bad(f"field 'after.{field}' has method {method!r}, expected one of {sorted(methods)}")
        items = rng.get("values")
        if items is None:
            return None
        if items.__class__ is not list:
            raise _Bad(f"field 'after.{field}.values' is {_kind(items)}, not a list")
        given: dict[str, str] = {}
        for item in items:
            if item.__class__ is not dict or item.get("name").__class__ is not str \
                    or item.get("value").__class__ is not str:
                raise _Bad(f"field 'after.{field}.values' holds {item!r:.80}, not a "
                           f"{{name, value, type}} record of strings")
            given[_cql_unquote(item["name"])] = item["value"]
        if not given:
            return None                             # no values: open on that side
        n = len(given)
        if n > len(self._ck_names) or any(name not in given for name in self._ck_names[:n]):
            raise _Bad(f"field 'after.{field}' names {sorted(given)}, not a prefix of the clustering "
                       f"columns {list(self._ck_names)}")
        out = []
        for (name, conv), (reader, cql) in zip(self._ck[:n], self._bound_readers[:n], strict=True):
            if reader is None:
                raise _Bad(f"a range deletion bound on a clustering column of type {cql} cannot be "
                           f"read (c2pg reads bounds of scalar types only)", name)
            s = given[name]
            try:
                text = conv(reader(s))
            except ValueConversionError as exc:
                raise _Bad(f"range bound {s!r:.60}: {exc}", name) from exc
            except (ValueError, OverflowError) as exc:
                raise _Bad(f"range bound {s!r:.60} is not a {cql} value: {exc}", name) from exc
            if text is None:
                raise _Bad(f"range bound {s!r:.60} converts to null", name)
            out.append(text)
        return Bound(tuple(out), inclusive)
