"""Change events: the small immutable values that flow from the decoder to the merge.

Contract between the stages of sync (decode → reduce → stage → merge, STYLE.md):

- :mod:`engine.sync.decode` turns one Kafka record (a Debezium Cassandra event) into one
  :class:`ChangeEvent`, or raises :class:`~engine.sync.decode.DecodeError` (the record goes to the
  dead letters);
- :mod:`engine.sync.reduce` folds the events of a batch per primary key with per-cell
  last-write-wins into rows and tombstones;
- :mod:`engine.pg_writer` stages and merges them in one transaction with the offsets.

Values are already in their canonical PostgreSQL COPY text (:meth:`engine.types.Codec.from_debezium`),
so reduction compares and keeps text, and staging writes it as is. Times are microseconds
since the epoch, the unit of Cassandra's write timestamps.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Op(enum.Enum):
    """What a Debezium Cassandra event did (its ``op`` and which key columns it carries)."""

    UPSERT = "upsert"  # op i or u: a partial write of the cells present
    ROW_DELETE = "row_delete"  # op d with every clustering column set
    PARTITION_DELETE = "partition_delete"  # op d with the clustering columns null
    RANGE_DELETE = "range_delete"  # op r: a clustering range of one partition


@dataclass(frozen=True, slots=True)
class Cell:
    """One column's write: ``value`` (COPY text) or ``None`` for a null/deleted cell.

    ``expires_us`` is the cell's TTL expiry for a live value written with a TTL.
    ``recheck_us`` is set by the read-back on a non-frozen collection or UDT whose elements
    (fields) carry TTLs: when the first of them expires, and the value must be read again
    (:mod:`engine.recheck`); the cell as a whole does not expire then.
    """

    value: str | None
    ts: int
    expires_us: int | None = None
    recheck_us: int | None = None


@dataclass(frozen=True, slots=True)
class Bound:
    """One end of a range deletion: a prefix of the clustering columns (COPY text values)."""

    values: tuple[str, ...]
    inclusive: bool


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the event came from, for dead letters and offsets."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One mutation of one table at write time ``ts`` (µs).

    ``key`` holds the partition-key values and then the clustering values (COPY text), in
    the table's primary-key order; for a partition or range deletion the clustering part is
    absent (``key`` has only the partition key). ``cells`` are the regular columns the
    mutation touched, by name. ``row_marker`` is true for an INSERT (op ``i``): the row
    exists even if all its cells are null — until ``marker_expires_us`` (µs) when the INSERT
    had a TTL (Cassandra gives the statement's marker and cells one TTL; the event carries it
    on the cells only, so the decoder takes it from them).
    """

    keyspace: str
    table: str
    op: Op
    ts: int
    key: tuple[str, ...]
    cells: tuple[tuple[str, Cell], ...] = ()
    row_marker: bool = False
    range_start: Bound | None = None
    range_end: Bound | None = None
    origin: Origin | None = None
    marker_expires_us: int | None = None

    @property
    def qualified(self) -> str:
        return f"{self.keyspace}.{self.table}"

    def cell_map(self) -> dict[str, Cell]:
        return dict(self.cells)
