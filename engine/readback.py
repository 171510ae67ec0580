"""Read back from Cassandra the cells a change event cannot describe exactly.

Called by :class:`engine.sync.apply.TableApplier` on every reduced batch, between the reducer
and the writer, when ``sync.read_back`` is on (the default). Two kinds of cell arrive from
the Debezium connector as something other than the value Cassandra holds:

- **non-frozen collections and UDTs** (multi-cell columns): an event carries only the
  elements its mutation wrote, so an append, a prepend, an element set by index, an element
  removal and an overwrite look alike (``[1,2]`` + append ``3`` arrives as ``[3]``);
- **``duration``** anywhere in a column's type: the connector folds months and days into
  nanoseconds (30-day months), which cannot be unfolded.

For each partition of the batch holding such a cell, the reader selects those columns of its
rows (64 partitions per ``pk IN ?`` request for a single-column partition key of a common
type, else one ``token(pk) = ?`` request per partition; many in flight; at
``cassandra.consistency``)
with their write times, and replaces each event cell by what Cassandra holds for its row:

- a multi-cell column gets Cassandra's whole value at ``max(MAXWRITETIME, event time)``.
  The read happens after the event's mutation was applied in Cassandra (the connector reads
  the commit log, which is written before the write is acknowledged), so the value
  includes it; the event's own time is kept as the floor because a removal leaves a
  tombstone, not an element, and may lower the newest element's time below what
  PostgreSQL holds (``[1@t1, 2@t2]`` minus ``2`` at ``t3`` reads ``[1]`` with
  ``MAXWRITETIME`` ``t1``: written at ``t3`` it wins over the stored ``t2``, as the removal
  did in Cassandra). An empty collection is a deletion at the event's time. When some
  elements carry a TTL, the cell gets ``recheck_us``, the expiry of the first of them
  (``collection_min(TTL(col))``): :mod:`engine.recheck` reads the value again then;
- a ``duration`` cell gets Cassandra's exact value when the read shows a write at or after
  the event's time (the same write, or a newer one whose own event follows); otherwise
  (deleted since, expired, or a replica that has not seen the write) the event's folded
  value stays, the best there is, and :attr:`ReadBackStats.stale` counts it.

**Static columns** never reach Kafka (the connector skips them). For every partition a batch
writes to, the same read returns the partition's static values with their write times, and
every row of the partition read gets them, so a static changed in Cassandra reaches
PostgreSQL with the next write to its partition (a write that sets only statics produces no
event at all: reconcile covers it). A static deleted in Cassandra reads as null without a
write time and is left to reconcile. The read covers the partitions a batch deletes from
too, and a partition holding statics but no rows is staged as its static row (clustering
columns NULL, ADR 0007).

Everything then goes through the same reducer output and merge as any cell, so order,
duplicates and replays keep converging. A read that fails raises
(:class:`ReadBackFailed`): the batch is not applied and is read again (offsets did not
move), like any transient failure of the batch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from engine import cql
from engine.cassandra_source import _cql_ident, _value
from engine.errors import C2pgError
from engine.events import Cell
from engine.sync.reduce import Reduced, RowWrite
from engine.schema import Column, TableSchema, has_kind
from engine.types import ValueConversionError, copy_unescape

CONCURRENCY = 256  # token reads in flight per batch (benchmarks/readback.py: 32 → 39 s, 128 → 23 s, 512 → 20 s)
KEYS_PER_READ = 64  # partitions per "pk IN ?" read
WIDTH = 3  # selectors per read column: value, write time, TTL (a multi-cell column: its first element's)
_IN_KINDS: dict[str, Callable[[str], object]] = {
    "tinyint": int, "smallint": int, "int": int, "bigint": int, "varint": int,
    "text": copy_unescape, "ascii": copy_unescape, "uuid": uuid.UUID, "timeuuid": uuid.UUID}


class ReadBackFailed(C2pgError):
    """Cassandra did not answer a read-back (the batch is retried, nothing was applied)."""


def needs_read_back(column: Column) -> bool:
    """Does an event's cell of ``column`` differ from what Cassandra holds? (Static columns
    are never in an event; :class:`ReadBack` reads them for every partition of a batch.)"""
    return not column.dropped and column.kind != "static" and (
        column.cql_type.multi_cell or has_kind(column.cql_type, "duration"))


@dataclass(frozen=True, slots=True)
class ReadBackStats:
    rows: int = 0  # rows read from Cassandra
    cells: int = 0  # event cells replaced by Cassandra's
    stale: int = 0  # duration cells kept as the event had them (no write at or after it read)
    statics: int = 0  # rows given their partition's static cells
    seconds: float = 0.0


class ReadBack:
    """The reader of one table, on the sync worker's Cassandra session.

    Built by :class:`~engine.sync.apply.TableApplier` with the table's schema and its token
    function; holds one prepared statement (``SELECT`` the key, the read-back columns and
    the static columns of one partition, by token). :meth:`apply` mutates the batch in
    place. A partition is read whole: a batch touching one row of a wide partition pays for
    the partition (the key's text form cannot be bound as a clustering restriction without a
    conversion back to driver values), and static columns need every row anyway.
    """

    def __init__(self, schema: TableSchema, session, consistency: str, token):
        self.schema = schema
        self.session = session
        self.token = token
        self.n_pk = len(schema.partition_key)
        self.n_key = len(schema.primary_key)
        self.columns = [c for c in schema.regular if needs_read_back(c)]
        self.statics = [c for c in schema.regular if c.kind == "static" and not c.dropped]
        self.multi_cell = {c.name: c.cql_type.multi_cell for c in (*self.columns, *self.statics)}
        codecs = dict(zip((c.name for c in schema.columns), schema.codecs(), strict=True))
        self.codecs = {c.name: codecs[c.name] for c in (*self.columns, *self.statics)}
        self.key_codecs = [codecs[c.name] for c in schema.primary_key]
        self.stmt = None
        self._asked_s = 0  # the second the latest read was sent in
        if self.columns or self.statics:
            q = _cql_ident
            parts = [_value(c) for c in schema.primary_key]
            for c in (*self.columns, *self.statics):
                if self.multi_cell[c.name]:
                    # The soonest element (field) TTL, in seconds; null when none has one.
                    # (TTL(col) itself is a list with nulls the driver cannot decode.)
                    parts += [q(c.name), f"MAXWRITETIME({q(c.name)})", f"collection_min(TTL({q(c.name)}))"]
                else:
                    parts += [q(c.name), f"WRITETIME({q(c.name)})", f"TTL({q(c.name)})"]
            pk = ", ".join(q(c.name) for c in schema.partition_key)
            select = f"SELECT {', '.join(parts)} FROM {q(schema.keyspace)}.{q(schema.table)}"
            self.stmt = session.prepare(f"{select} WHERE token({pk}) = ?")
            self.stmt.consistency_level = cql.consistency_level(consistency)
            # A single-column partition key of a common type is read many partitions per
            # request ("pk IN ?", the key's text turned back into the driver's value): one
            # request per partition costs the Python driver ~1 ms each.
            only = schema.partition_key[0] if len(schema.partition_key) == 1 else None
            self.key_param = _IN_KINDS.get(only.cql_type.kind) if only is not None else None
            self.in_stmt = None
            if self.key_param is not None:
                self.in_stmt = session.prepare(f"{select} WHERE {pk} IN ?")
                self.in_stmt.consistency_level = cql.consistency_level(consistency)

    def apply(self, batch: Reduced) -> ReadBackStats:
        """Replace, in ``batch``, every read-back column's cell by Cassandra's current one,
        and give every stored row of each partition the batch writes to its partition's
        static cells (a row of the partition the batch does not hold is added with only its
        static cells: the merge updates it if PostgreSQL has it; if PostgreSQL does not have
        it yet, the writer's removal of rows without a live regular cell or marker drops it
        again in the same transaction)."""
        if self.stmt is None:
            return ReadBackStats()
        names = {c.name for c in self.columns}
        todo: list[RowWrite] = [row for row in batch.rows.values() if names.intersection(row.cells)]
        partitions = {row.key[: self.n_pk] for row in todo}
        if self.statics:
            # Every partition the batch writes to or deletes from: a deletion can leave a
            # partition with statics and no rows (its static row, ADR 0007).
            partitions.update(row.key[: self.n_pk] for row in batch.rows.values())
            partitions.update(t.key[: self.n_pk] for t in batch.tombstones)
        if not partitions:
            return ReadBackStats()
        t0 = time.perf_counter()
        self._asked_s = int(time.time())
        found_rows = self._read(partitions)
        read_us = int(time.time() * 1_000_000)
        cells = stale = 0
        for row in todo:
            found = found_rows.get(row.key)
            at = self.n_key
            for c in self.columns:
                values = found[at:at + WIDTH] if found is not None else (None,) * WIDTH
                at += WIDTH
                event_cell = row.cells.get(c.name)
                if event_cell is None:
                    continue
                new = self._cell(c, values, event_cell, read_us, row.key)
                if new is None:
                    stale += 1
                    continue
                row.cells[c.name] = new
                cells += 1
        statics = self._statics(batch, found_rows, read_us) if self.statics else 0
        return ReadBackStats(len(found_rows), cells, stale, statics, time.perf_counter() - t0)

    def current(self, keys: set[tuple[str | None, ...]]) -> dict[tuple[str | None, ...],
                                                              dict[str, tuple[str | None, int | None]]]:
        """Cassandra's value now of each multi-cell column (static ones included) at these
        primary keys (canonical text; a static row's clustering values None), with the expiry
        of its first element to expire: key → {column: (text or None, recheck_us or None)}. A
        key Cassandra has no row at is absent. Used by :mod:`engine.recheck`; raises
        :class:`ReadBackFailed` like :meth:`apply`."""
        self._asked_s = int(time.time())
        found = self._read({cast(tuple[str, ...], k[: self.n_pk]) for k in keys})
        out: dict[tuple[str | None, ...], dict[str, tuple[str | None, int | None]]] = {}
        for key in keys:
            raw = found.get(key)
            if raw is None:
                continue
            cells: dict[str, tuple[str | None, int | None]] = {}
            at = self.n_key
            for c in (*self.columns, *self.statics):
                if self.multi_cell[c.name]:
                    text, soonest = self._text(c, raw[at], key), raw[at + 2]
                    cells[c.name] = (text, self._recheck_us(soonest) if text is not None else None)
                at += WIDTH
            out[key] = cells
        return out

    def _recheck_us(self, soonest: int | None) -> int | None:
        """When to read a collection again, from ``collection_min(TTL(col))``: Cassandra gives
        the whole seconds from the second it read in (``nowInSec``) to the first element's
        expiry (``localDeletionTime``), so counted from the second the read was sent in it is
        at or before the expiry (a recheck that comes early finds the element and waits again)."""
        if soonest is None:
            return None
        return (self._asked_s + max(soonest, 1)) * 1_000_000

    def _statics(self, batch: Reduced, found_rows: dict, read_us: int) -> int:
        """Static cells, as read, onto every row read (a live static cell only: a null static
        has no write time to delete with; reconcile covers a static deleted in Cassandra). A
        partition with statics and no rows reads as one row with null clustering values: it
        is staged as that, the partition's static row (ADR 0007); the writer drops it again
        if the partition holds a clustering row once the batch is applied."""
        start = self.n_key + WIDTH * len(self.columns)
        given = 0
        for key, raw in found_rows.items():
            cells: dict[str, Cell] = {}
            at = start
            for c in self.statics:
                value, wt, ttl = raw[at], raw[at + 1], raw[at + 2]
                at += WIDTH
                text = self._text(c, value, key)
                if text is None or wt is None:
                    continue
                if self.multi_cell[c.name]:
                    cells[c.name] = Cell(text, wt, recheck_us=self._recheck_us(ttl))
                else:
                    cells[c.name] = Cell(text, wt, read_us + ttl * 1_000_000 if ttl else None)
            if cells:
                row = batch.rows.get(key)
                if row is None:
                    row = batch.rows[key] = RowWrite(key)
                row.cells.update(cells)
                given += 1
        return given

    def _text(self, c: Column, value, key) -> str | None:
        try:
            return self.codecs[c.name].from_driver(value)
        except ValueConversionError as exc:
            raise ReadBackFailed(f"read-back of {self.schema.qualified} column {c.name} at key {key}: {exc}") from exc

    def _cell(self, c: Column, values: Sequence, event: Cell, read_us: int, key) -> Cell | None:
        value, wt = values[0], values[1]
        text = self._text(c, value, key)
        if self.multi_cell[c.name]:
            if text is None:
                return Cell(None, event.ts)
            return Cell(text, max(wt if wt is not None else event.ts, event.ts), recheck_us=self._recheck_us(values[2]))
        if wt is None or wt < event.ts:
            return None  # nothing at or after the event's write: keep the event's cell
        ttl = values[2]
        return Cell(text, wt, read_us + ttl * 1_000_000 if ttl else None)

    def _read(self, partitions: set[tuple[str, ...]]) -> dict[tuple[str | None, ...], tuple]:
        """The rows of these partitions (partition keys, canonical text), by primary key."""
        if self.in_stmt is not None and self.key_param is not None:
            keys = [self.key_param(p[0]) for p in partitions]
            chunks = [(keys[i:i + KEYS_PER_READ],) for i in range(0, len(keys), KEYS_PER_READ)]
            return self._run(self.in_stmt, chunks, max(1, CONCURRENCY // KEYS_PER_READ))
        return self._run(self.stmt, [(self.token(p),) for p in partitions], CONCURRENCY)

    def _run(self, stmt, params: list[tuple], concurrency: int) -> dict[tuple[str | None, ...], tuple]:
        from cassandra import DriverException
        from cassandra.cluster import NoHostAvailable
        from cassandra.concurrent import execute_concurrent_with_args

        try:
            results = execute_concurrent_with_args(self.session, stmt, params, concurrency=concurrency,
                                                   raise_on_first_error=True)
        except (DriverException, NoHostAvailable) as exc:  # timeouts, unavailable, no host: "not read"
            raise ReadBackFailed(f"read-back of {self.schema.qualified}: {type(exc).__name__}: {exc}") from exc
        out: dict[tuple[str | None, ...], tuple] = {}
        for _ok, result in results:
            for raw in result:
                raw = tuple(raw)
                try:
                    key = tuple(codec.from_driver(v) for codec, v in zip(self.key_codecs, raw, strict=False))
                except ValueConversionError:
                    continue  # a key PostgreSQL cannot hold: no event of it reached the batch either
                out[key] = raw
        return out
