"""The Murmur3 token of a partition key, computed from its canonical values.

Sync needs the ``_c2pg_token`` of rows it inserts, and Debezium events do not carry it.
Cassandra's Murmur3Partitioner hashes the partition key's serialized bytes: one column is
its value's bytes; a composite key is, per component, a 2-byte length, the bytes and a 0.
The values arrive here as c2pg's canonical COPY text (:mod:`engine.types`), so each type
has a serializer from that text. Callers: :class:`engine.pg_writer.SyncWriter`.

A partition-key type without a serializer raises :class:`TokenError`; the event becomes a
dead letter naming the type (no wrong token is ever stored).
"""

from __future__ import annotations

import ipaddress
import struct
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal

from cassandra.murmur3 import murmur3

from engine.errors import C2pgError
from engine.schema import TableSchema
from engine.types import copy_unescape

MAX_TOKEN = 2**63 - 1
MIN_TOKEN = -(2**63)


class TokenError(C2pgError):
    """The token of a partition key cannot be computed (unsupported type or bad value)."""


def _timestamp(text: str) -> bytes:
    t = text.replace(" ", "T", 1)
    if t.endswith("+00"):
        t = t[:-3] + "+00:00"
    dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    ms = (dt - datetime(1970, 1, 1, tzinfo=UTC)) // _MS
    return struct.pack(">q", ms)


_MS = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)


def _varint(n: int) -> bytes:
    length = max(1, (n + (n < 0)).bit_length() // 8 + 1)
    return n.to_bytes(length, "big", signed=True)


def _decimal(text: str) -> bytes:
    d = Decimal(text)
    sign, digits, exp = d.as_tuple()
    if not isinstance(exp, int):  # NaN or infinity: CQL decimals are finite
        raise ValueError(f"not a finite decimal: {text!r}")
    unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    return struct.pack(">i", -exp) + _varint(unscaled)


def _date(text: str) -> bytes:
    days = (date.fromisoformat(text) - date(1970, 1, 1)).days
    return struct.pack(">I", (days + 2**31) & 0xFFFFFFFF)


SERIALIZERS: dict[str, Callable[[str], bytes]] = {
    "int": lambda t: struct.pack(">i", int(t)),
    "bigint": lambda t: struct.pack(">q", int(t)),
    "counter": lambda t: struct.pack(">q", int(t)),
    "smallint": lambda t: struct.pack(">h", int(t)),
    "tinyint": lambda t: struct.pack(">b", int(t)),
    "varint": lambda t: _varint(int(t)),
    "decimal": _decimal,
    "text": lambda t: copy_unescape(t).encode(),
    "ascii": lambda t: copy_unescape(t).encode(),
    "uuid": lambda t: uuid.UUID(t).bytes,
    "timeuuid": lambda t: uuid.UUID(t).bytes,
    "boolean": lambda t: b"\x01" if t in ("t", "true") else b"\x00",
    "double": lambda t: struct.pack(">d", float(t)),
    "float": lambda t: struct.pack(">f", float(t)),
    "blob": lambda t: bytes.fromhex(t[3:] if t.startswith("\\\\x") else t[2:]),
    "inet": lambda t: ipaddress.ip_address(t).packed,
    "timestamp": _timestamp,
    "date": _date,
}


def token_function(schema: TableSchema) -> Callable[[Sequence[str]], int]:
    """A function of the partition-key values (COPY text, in key order) to their token."""
    kinds = [c.cql_type.kind for c in schema.partition_key]
    missing = [k for k in kinds if k not in SERIALIZERS]
    serializers = [SERIALIZERS[k] for k in kinds if k in SERIALIZERS]  # complete unless missing

    def token(values: Sequence[str]) -> int:
        if missing:
            raise TokenError(f"cannot compute the token of a partition key of type {missing[0]}")
        try:
            parts = [f(v) for f, v in zip(serializers, values, strict=True)]
        except (ValueError, struct.error, TypeError) as exc:
            raise TokenError(f"partition key {list(values)!r}: {exc}") from exc
        key = parts[0] if len(parts) == 1 else b"".join(
            struct.pack(">H", len(p)) + p + b"\x00" for p in parts)
        t = murmur3(key)
        return MAX_TOKEN if t == MIN_TOKEN else t

    return token
