"""The snapshot's ``SELECT JSON`` read path: rows as JSON texts, parsed column-wise by Arrow.

Called by :class:`engine.cassandra_source.SplitReader` (a snapshot read task) when
:func:`plan` accepts the table. Cassandra formats each row as one JSON text, so the Python
driver builds one string per row instead of one object per value (ADR 0017 has the
figures); a block's texts are parsed in one call of Arrow's JSON reader into typed
columns, and the column converters of :mod:`engine.cassandra_source` turn those into COPY
text without a Python object per value.

Every selector is aliased by its position in :class:`~engine.cassandra_source.RowLayout`
(``a0`` the token, ``a1``… the key columns, then each regular column's value, write time
and TTL), so the parsed columns sit where the row-tuple path has them. Where Cassandra's
JSON form of a value is not exact, the selector asks for a form that is (checked against
Cassandra 5): ``double``/``float`` as their bytes (``doubleAsBlob``: JSON has no NaN or
Infinity, Cassandra writes ``null`` for them), ``decimal``/``varint`` cast to text (a JSON
number would go through a double in the parser), ``timestamp`` as epoch milliseconds, a
``map<text, int|boolean|text>`` as its own JSON text (``toJson``, PostgreSQL's jsonb).
A table with any other type (``plan`` returns ``None``) is read as row tuples, as before.

Failure: a JSON text Arrow cannot parse raises ``pyarrow.ArrowInvalid`` naming the
offending line; a value that does not convert goes to the dead letters like on the tuple
path (its converter falls back to the column's codec for that column).
"""

from __future__ import annotations

import bisect
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.json as pj

from engine.schema import TableSchema
from engine.types import CqlType

_INT_KINDS = frozenset({"tinyint", "smallint", "int", "bigint", "counter"})
_STRING_KINDS = frozenset({"text", "ascii", "uuid", "timeuuid"})
# map<text, V> whose JSON text PostgreSQL's jsonb reads as the codec's own JSON of the map.
_MAP_VALUE_KINDS = _INT_KINDS | {"boolean", "text", "ascii"}
_BLOB_OF = {"double": "doubleAsBlob", "float": "floatAsBlob"}


def supported(t: CqlType) -> bool:
    """Whether a column of type ``t`` has an exact JSON form on this path."""
    if t.kind in _INT_KINDS or t.kind in _STRING_KINDS or t.kind in _BLOB_OF:
        return True
    if t.kind in ("boolean", "timestamp", "decimal", "varint"):
        return True
    return (t.kind == "map" and t.params[0].kind in ("text", "ascii")
            and t.params[1].kind in _MAP_VALUE_KINDS)


def arrow_type(t: CqlType) -> pa.DataType:
    """The type Arrow parses a value selector's JSON into (see :func:`value_selector`)."""
    if t.kind in _INT_KINDS or t.kind == "timestamp":
        return pa.int64()
    if t.kind == "boolean":
        return pa.bool_()
    return pa.string()


def value_selector(name: str, t: CqlType) -> str:
    """The selector of a column's value in its exact JSON form (module docstring)."""
    if t.kind in _BLOB_OF:
        return f"{_BLOB_OF[t.kind]}({name})"
    if t.kind in ("decimal", "varint"):
        return f"CAST({name} AS text)"
    if t.kind == "timestamp":
        return f"toUnixTimestamp({name})"
    if t.kind == "map":
        return f"toJson({name})"
    return name


@dataclass(frozen=True)
class JsonPlan:
    """How one table is read as JSON: the statement and the parse schema of its rows."""

    statement: str
    schema: pa.Schema  # a0, a1, …: one field per selector, in RowLayout order
    n_key: int

    def decode(self, texts: Sequence[str]) -> list[pa.Array]:
        """The rows' columns, by RowLayout position, from their JSON texts (one per row).

        Cassandra escapes control characters inside JSON strings, so a text never holds a
        raw newline and the texts can be parsed as newline-delimited JSON.
        """
        data = "\n".join(texts).encode()
        # Arrow parses block by block (1 MiB measured fastest); a row must fit in one.
        longest = max(map(len, texts), default=0) * 4 + 2  # UTF-8: up to 4 bytes a character
        options = pj.ReadOptions(use_threads=False, block_size=max(1 << 20, longest))
        parse = pj.ParseOptions(explicit_schema=self.schema, unexpected_field_behavior="error")
        table = pj.read_json(io.BytesIO(data), read_options=options, parse_options=parse)
        return [table.column(i).combine_chunks() for i in range(table.num_columns)]

    def token(self, text: str) -> int:
        return json.loads(text)["a0"]

    def key(self, text: str) -> tuple:
        row = json.loads(text)
        return tuple(row[f"a{1 + k}"] for k in range(self.n_key))

    def first_after(self, texts: Sequence[str], token: int) -> int:
        """Index of the first of ``texts`` (token order) whose token is above ``token``."""
        return bisect.bisect_right(_Tokens(self, texts), token)

    def first_at(self, texts: Sequence[str], token: int) -> int:
        """Index of the first of ``texts`` (token order) whose token is ``token`` or above."""
        return bisect.bisect_left(_Tokens(self, texts), token)


class _Tokens(Sequence):
    """The tokens of a page of JSON texts, parsed only where a binary search looks."""

    def __init__(self, plan: JsonPlan, texts: Sequence[str]):
        self.plan, self.texts = plan, texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i):  # type: ignore[override]
        return self.plan.token(self.texts[i])


def plan(schema: TableSchema, selectors: list[str], value_at: list[int | None]) -> JsonPlan | None:
    """The JSON plan of a table read with ``selectors`` (the row-tuple statement's, in
    RowLayout order; ``value_at`` where each column's value sits), or ``None`` when a
    column's type has no exact JSON form here (the caller reads row tuples then)."""
    if not all(supported(c.cql_type) for c in schema.columns if not c.dropped):
        return None
    fields = [pa.field(f"a{i}", pa.int64()) for i in range(len(selectors))]  # token, write times, TTLs
    json_selectors = list(selectors)
    for column, at in zip(schema.columns, value_at, strict=True):
        if at is None:
            continue
        name = _cql_ident(column.name)
        json_selectors[at] = value_selector(name, column.cql_type)
        fields[at] = pa.field(f"a{at}", arrow_type(column.cql_type))
    pk = ", ".join(_cql_ident(c.name) for c in schema.partition_key)
    listed = ", ".join(f"{s} AS a{i}" for i, s in enumerate(json_selectors))
    statement = (f"SELECT JSON {listed} FROM {_cql_ident(schema.keyspace)}.{_cql_ident(schema.table)} "  # nosec B608 - quoted names
                 f"WHERE token({pk}) > ? AND token({pk}) <= ?")
    return JsonPlan(statement, pa.schema(fields), len(schema.primary_key))


def _cql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
