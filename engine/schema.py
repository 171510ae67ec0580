"""A Cassandra table's definition, read from ``system_schema``, and its PostgreSQL layout.

Callers: the snapshot job (to create or check the target), sync (to decode events into
columns) and reconcile. :func:`read_table` asks Cassandra; :class:`TableSchema` is a small
immutable value that is pickled to Ray workers.

The PostgreSQL layout (ADR 0002): the target table keeps Cassandra's primary key and one
column per Cassandra column with its mapped type, plus five metadata columns:

- ``_c2pg_token bigint``: the partition key's Murmur3 token (indexed; reconcile scans by it);
- ``_c2pg_wt bigint[]``: per regular column, the write time (µs) of the cell value held,
  aligned with :attr:`TableSchema.regular` (the catalog records that order); NULL element
  = no cell write known;
- ``_c2pg_exp bigint[]``: per regular column, the cell's expiry (µs) when it has a TTL;
- ``_c2pg_row_ts bigint``: the row marker's write time (INSERT liveness), NULL if none;
- ``_c2pg_row_exp bigint``: the row marker's expiry (µs) when the INSERT had a TTL, NULL if
  none. A marker whose expiry has passed is dead: it no longer keeps the row alive, but
  still shadows older markers until the sweep turns it into a ``cell`` tombstone of the
  pseudo-column ``_c2pg_row_ts``.

A table with static columns has one more row per partition that holds statics and no
rows: its *static row*, clustering columns NULL (ADR 0007); its key is then ``UNIQUE NULLS
NOT DISTINCT`` rather than a primary key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from engine.errors import C2pgError
from engine.types import CqlType, codec, parse_cql_type, pg_type

Kind = Literal["partition_key", "clustering", "regular", "static"]

META_TOKEN = "_c2pg_token"
META_WT = "_c2pg_wt"
META_EXP = "_c2pg_exp"
META_ROW_TS = "_c2pg_row_ts"
META_ROW_EXP = "_c2pg_row_exp"
META_COLUMNS = (META_TOKEN, META_WT, META_EXP, META_ROW_TS, META_ROW_EXP)
# Added after the first layout: a target created before it gets the column on its next
# check (nullable, so adding it rewrites nothing), not a mismatch.
META_ADDED_LATER = (META_ROW_EXP,)


class TableNotFound(C2pgError):
    """The keyspace or table does not exist in Cassandra (exit code 2: a usage error)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind
    position: int
    cql_type: CqlType
    descending: bool = False
    # Dropped in Cassandra but kept in PostgreSQL (and in the catalog, so write-time
    # positions never move): never read, never written again.
    dropped: bool = False

    @property
    def pg_sql_type(self) -> str:
        return pg_type(self.cql_type).sql


@dataclass(frozen=True, slots=True)
class TableSchema:
    """A table's columns in Cassandra's order: partition key, clustering, then regular
    (static columns are regular columns with ``kind == "static"``)."""

    keyspace: str
    table: str
    partition_key: tuple[Column, ...]
    clustering: tuple[Column, ...]
    regular: tuple[Column, ...]
    cdc: bool

    @property
    def qualified(self) -> str:
        return f"{self.keyspace}.{self.table}"

    @property
    def primary_key(self) -> tuple[Column, ...]:
        return self.partition_key + self.clustering

    @property
    def columns(self) -> tuple[Column, ...]:
        return self.primary_key + self.regular

    @property
    def has_statics(self) -> bool:
        """Static columns (ever: a dropped one counts, the layout keeps its place). Then a
        partition may hold statics and no rows, which Cassandra reads as one row with null
        clustering columns: its PostgreSQL target has nullable clustering columns and a
        ``UNIQUE NULLS NOT DISTINCT`` key instead of a primary key (ADR 0007)."""
        return any(c.kind == "static" for c in self.regular)

    @property
    def live_regular(self) -> tuple[Column, ...]:
        """Regular columns that still exist in Cassandra."""
        return tuple(c for c in self.regular if not c.dropped)

    def codecs(self):
        """One codec per column, in :attr:`columns` order (built where the work runs)."""
        return [codec(c.cql_type) for c in self.columns]

    def fingerprint(self) -> str:
        """A stable hash of names, kinds and types: the catalog records it to notice changes."""
        text = "|".join(f"{c.name}:{c.kind}:{c.cql_type.cql()}" for c in self.columns if not c.dropped)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def unsupported_by_cdc(self) -> list[str]:
        """What the Debezium connector does not capture for this table (kept by reconcile)."""
        notes = []
        if not self.cdc:
            notes.append("the table is not WITH cdc = true: sync will not see its changes")
        statics = [c.name for c in self.regular if c.kind == "static"]
        if statics:
            notes.append(f"static columns {statics} are not captured by the connector: sync reads them back "
                         "with the partition's next write; a write of statics alone waits for it or reconcile")
        if any(c.cql_type.kind == "counter" for c in self.regular):
            notes.append("counter tables are not captured by the connector")
        if any(has_kind(c.cql_type, "vector") for c in self.columns):
            notes.append("vector columns stop the connector from capturing the table")
        # Non-frozen collections and durations are not listed: their events are inexact, but
        # sync reads those cells back from Cassandra (engine.readback).
        return notes


def has_kind(t: CqlType, kind: str) -> bool:
    """Is ``kind`` the type ``t`` or any type nested in it?"""
    return t.kind == kind or any(has_kind(p, kind) for p in t.params)


def read_table(session, keyspace: str, table: str) -> TableSchema:
    """Read ``keyspace.table`` from ``system_schema``; :class:`TableNotFound` if missing."""
    if session.execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
                       (keyspace,)).one() is None:
        raise TableNotFound(f"keyspace {keyspace!r} does not exist in Cassandra")
    trow = session.execute("SELECT cdc FROM system_schema.tables WHERE keyspace_name = %s "
                           "AND table_name = %s", (keyspace, table)).one()
    if trow is None:
        raise TableNotFound(f"table {keyspace}.{table} does not exist in Cassandra")
    udts = {r.type_name: tuple(zip(r.field_names, r.field_types, strict=True))
            for r in session.execute("SELECT type_name, field_names, field_types FROM system_schema.types "
                                     "WHERE keyspace_name = %s", (keyspace,))}
    rows = session.execute("SELECT column_name, kind, position, type, clustering_order "
                           "FROM system_schema.columns WHERE keyspace_name = %s AND table_name = %s",
                           (keyspace, table))
    cols = [Column(r.column_name, r.kind, r.position, parse_cql_type(r.type, udts),
                   (r.clustering_order or "").lower() == "desc") for r in rows]
    pk = tuple(sorted((c for c in cols if c.kind == "partition_key"), key=lambda c: c.position))
    ck = tuple(sorted((c for c in cols if c.kind == "clustering"), key=lambda c: c.position))
    regular = tuple(sorted((c for c in cols if c.kind in ("regular", "static")), key=lambda c: c.name))
    return TableSchema(keyspace, table, pk, ck, regular, bool(trow.cdc))
