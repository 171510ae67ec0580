"""Turn a batch of Kafka records of one table into one applied PostgreSQL transaction.

Used by the sync ``PartitionWorker`` (one :class:`TableApplier` per table it serves) and by
``c2pg dlq replay``. It owns the per-table pipeline decode → reduce → write:

- bad records (:class:`~engine.sync.decode.DecodeError`) become dead letters in the same
  transaction as the rest of the batch, and their offsets move on;
- a record naming a column the schema lacks (:class:`~engine.sync.decode.SchemaChanged`) makes
  the applier read the table definition again, add the column to PostgreSQL, and decode
  the record again; if the column is still unknown the record is a dead letter;
- an event whose partition-key token cannot be computed is a dead letter.

Failure of the transaction itself (PostgreSQL down, a constraint) raises; nothing was
committed, so the caller retries the same records later (offsets did not move).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

import numpy as np
import pyarrow.compute as pc

from engine.cassandra_bytes import column_serializers
from engine.config import PipelineConfig, TableConfig
from engine.sync.decode import DecodeError, EventDecoder, SchemaChanged
from engine.events import ChangeEvent, Origin
from engine.murmur import TokenError
from engine.pg_writer import ApplyStats, DeadLetter, SyncWriter
from engine.readback import ReadBack, ReadBackStats
from engine.sync.reduce import Reduced, reduce_events, typed_compare
from engine.schema import read_table
from engine.sweep import wall_clock_us
from engine.sync.decode_columns import ColumnDecoder, Columns
from engine.sync.reduce_columns import ColumnReducer, StagedRows, columnar_fits
from engine.target import Target, ensure_target

log = logging.getLogger("c2pg.sync.apply")


class Record(NamedTuple):
    """One Kafka record, as polled (bytes decoded lazily by the decoder). A tuple: the
    worker makes one per record polled, and a frozen dataclass costs three times as much."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None  # Kafka's record time (producer or log-append)

    def origin(self) -> Origin:
        return Origin(self.topic, self.partition, self.offset)


class Records(Sequence[Record]):
    """A polled batch as columns, one list per field of :class:`Record`.

    Made by the sync worker from the Kafka messages of a batch (:meth:`from_messages`:
    six list comprehensions instead of one Python object per message); the columnar
    decoder reads :attr:`values` whole, and a :class:`Record` is built only for a record
    someone indexes (the slow lane's deletions, dead letters). Any ``Sequence[Record]``
    works where this does (dead-letter replay and the tests pass lists)."""

    __slots__ = ("topics", "partitions", "offsets", "keys", "values", "timestamps")

    def __init__(self, topics: list[str], partitions: list[int], offsets: list[int], keys: list[bytes | None],
                 values: list[bytes | None], timestamps: list[int | None]):
        self.topics, self.partitions, self.offsets = topics, partitions, offsets
        self.keys, self.values, self.timestamps = keys, values, timestamps

    @classmethod
    def from_messages(cls, msgs: Sequence[Any]) -> Records:
        """From confluent-kafka ``Message`` objects (none with an error)."""
        return cls([m.topic() for m in msgs], [m.partition() for m in msgs], [m.offset() for m in msgs],
                   [m.key() for m in msgs], [m.value() for m in msgs],
                   [ts if kind else None for kind, ts in [m.timestamp() for m in msgs]])

    def __len__(self) -> int:
        return len(self.offsets)

    @overload
    def __getitem__(self, i: int) -> Record: ...
    @overload
    def __getitem__(self, i: slice) -> Records: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return Records(self.topics[i], self.partitions[i], self.offsets[i], self.keys[i], self.values[i],
                           self.timestamps[i])
        return Record(self.topics[i], self.partitions[i], self.offsets[i], self.keys[i], self.values[i],
                      self.timestamps[i])

    def __iter__(self) -> Iterator[Record]:
        return map(Record, self.topics, self.partitions, self.offsets, self.keys, self.values, self.timestamps)

    def take(self, positions: Sequence[int]) -> Records:
        """The records at ``positions``, in that order."""
        return Records([self.topics[i] for i in positions], [self.partitions[i] for i in positions],
                       [self.offsets[i] for i in positions], [self.keys[i] for i in positions],
                       [self.values[i] for i in positions], [self.timestamps[i] for i in positions])

    def by_topic(self) -> dict[str, Records]:
        """The batch split by topic, each part in poll order."""
        first = self.topics[0] if self.topics else None
        if all(t == first for t in self.topics):
            return {first: self} if first is not None else {}
        where: dict[str, list[int]] = {}
        for i, t in enumerate(self.topics):
            where.setdefault(t, []).append(i)
        return {t: self.take(pos) for t, pos in where.items()}

    def next_offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) → the offset after the greatest one in the batch."""
        out: dict[tuple[str, int], int] = {}
        for t, p, o in zip(self.topics, self.partitions, self.offsets, strict=True):
            if o >= out.get((t, p), 0):
                out[(t, p)] = o + 1
        return out


@dataclass(frozen=True, slots=True)
class BatchResult:
    events: int
    applied_rows: int
    tombstones: int
    dead_letters: int
    max_write_ts_us: int | None
    seconds: float
    dead: tuple[DeadLetter, ...] = ()  # committed with the batch; the worker may also publish them
    read_back: ReadBackStats = ReadBackStats()


@dataclass(slots=True)
class Prepared:
    """A batch decoded and reduced (:meth:`TableApplier.prepare`), not written yet."""

    records: int
    batch: Reduced | StagedRows
    next_offsets: dict[tuple[str, int], int]
    dead: list[DeadLetter]
    now_us: int
    max_ts: int | None
    read_back: ReadBackStats = ReadBackStats()


class TableApplier:
    """Decoder, writer and schema of one table, on one PostgreSQL connection.

    A batch is prepared (:meth:`prepare`: decoded, reduced, read back; CPU and Cassandra),
    then written (:meth:`write`: one PostgreSQL transaction); :meth:`apply` does both. The sync worker
    prepares the next batch while the previous one is written, in another thread: ``lock``
    (one per connection, shared by the appliers that use it) is held by :meth:`write` and
    by a schema refresh (which alters the target), so the two never use the connection at
    once.
    """

    def __init__(self, cfg: PipelineConfig, table: TableConfig, conn, cql_session, registry=None,
                 lock: threading.RLock | None = None):
        self.cfg = cfg
        self.table = table
        self.conn = conn
        self.cql = cql_session
        self.registry = registry
        self.lock = lock or threading.RLock()
        self._load()

    def _load(self) -> None:
        """Read the table definition and prepare the target: create it (with its token index:
        sync may run without a snapshot) or add the columns Cassandra gained since."""
        schema = read_table(self.cql, self.table.keyspace, self.table.table)
        # The documented defaults, for a TableConfig built without the pipeline's validation.
        self.target: Target = ensure_target(self.conn, schema, self.table.target_schema or self.cfg.postgres.schema,
                                            self.table.target_table or self.table.table, evolve=True,
                                            defer_token_index=False)
        self.decoder = EventDecoder(self.target.schema, value_format=self.cfg.kafka.value_format,
                                    registry=self.registry)
        self.writer = SyncWriter(self.conn, self.target, self.cfg.name)
        self.n_pk = len(self.target.schema.partition_key)
        self.compare = typed_compare(self.target.schema)
        # Cassandra's tie rule compares serialized values: each column's bytes by its type.
        self.serializers = column_serializers(self.target.schema)
        # Cells the events cannot describe exactly (collection fragments, folded durations)
        # are read back from Cassandra before the merge (engine.readback).
        self.read_back = (ReadBack(self.target.schema, self.cql, self.cfg.cassandra.consistency, self.writer.token)
                          if self.cfg.sync.read_back and self.cql is not None else None)
        # The columnar path (engine.sync, ADR 0010) where nothing needs the per-event one:
        # JSON values, and no cell the read-back or the static-row rules must see.
        self.columnar: tuple[ColumnDecoder, ColumnReducer] | None = None
        if self.cfg.sync.columnar and self.cfg.kafka.value_format == "json" and columnar_fits(self.target.schema):
            self.columnar = (ColumnDecoder(self.target.schema),
                             ColumnReducer(self.target.schema, self.compare, self.serializers, self.writer.token))

    def refresh_schema(self) -> None:
        """Read the table again and add new columns to PostgreSQL (the periodic check, and
        the reaction to :class:`SchemaChanged`); waits for a write in flight."""
        with self.lock:
            self._load()

    def apply(self, records: Sequence[Record], next_offsets: dict[tuple[str, int], int]) -> BatchResult:
        """Prepare and write ``records``: one committed transaction with ``next_offsets``."""
        return self.write(self.prepare(records, next_offsets))

    def write(self, p: Prepared) -> BatchResult:
        """Write a prepared batch in one transaction (its offsets, its dead letters).
        Raises what the transaction raised; nothing was committed then."""
        with self.lock:
            stats: ApplyStats = self.writer.apply(p.batch, p.next_offsets, p.dead, now_us=p.now_us)
        return BatchResult(p.records, stats.rows, stats.tombstones, stats.dead_letters, p.max_ts, stats.seconds,
                           tuple(p.dead), p.read_back)

    def prepare(self, records: Sequence[Record], next_offsets: dict[tuple[str, int], int]) -> Prepared:
        """Decode and reduce ``records`` (and read back what the events cannot describe).
        Touches PostgreSQL only to refresh the schema (under :attr:`lock`)."""
        if self.columnar is not None:
            return self._prepare_columns(records, next_offsets)
        events, dead = self._decode_all(records)
        # A token is computed for every upsert key at write time; find the impossible ones
        # now so one bad key does not fail the whole transaction.
        good: list[ChangeEvent] = []
        for ev, rec in events:
            try:
                if ev.key:
                    self.writer.token(ev.key[: self.n_pk])
                good.append(ev)
            except TokenError as exc:
                dead.append(_dead(rec, exc))
        # One clock per batch, read once: the reducer and the merge judge TTL expiries at the
        # same instant (a cell dead on arrival is a deletion at its write time; one that
        # expires after this instant is written live and expired by the TTL sweep).
        now_us = wall_clock_us()
        reduced = reduce_events(good, self.n_pk, self.compare, self.serializers, now_us=now_us)
        read_back = self.read_back.apply(reduced) if self.read_back is not None else ReadBackStats()
        return Prepared(len(records), reduced, next_offsets, dead, now_us, max((e.ts for e in good), default=None),
                        read_back)

    def _prepare_columns(self, records: Sequence[Record], next_offsets: dict[tuple[str, int], int],
                         again: bool = True) -> Prepared:
        """The columnar path: the same outcome as :meth:`apply`'s per-event one (tested), with
        per-record work only for the records the column decoder leaves to the slow lane
        (deletions, and anything it cannot take exactly: their dead letters are the
        per-event decoder's)."""
        decoder, reducer = self.columnar  # type: ignore[misc]
        cols, slow = decoder.decode(records.values if isinstance(records, Records) else [r.value for r in records])
        slow_records = [records[i] for i in slow]
        slow_events, dead = self._decode_all(slow_records)
        if self.columnar is None or self.columnar[0] is not decoder:
            # The slow lane refreshed the schema (SchemaChanged): decode the batch again with
            # the new one (once: a column still unknown then is the record's fault).
            if again:
                return (self._prepare_columns(records, next_offsets, again=False) if self.columnar is not None
                        else self.prepare(records, next_offsets))
            decoder, reducer = self.columnar or (decoder, reducer)
        at = {id(rec): i for rec, i in zip(slow_records, slow, strict=True)}
        events: list[tuple[int, ChangeEvent]] = []
        for ev, rec in slow_events:
            try:
                if ev.key:
                    self.writer.token(ev.key[: self.n_pk])
                events.append((at[id(rec)], ev))
            except TokenError as exc:
                dead.append(_dead(rec, exc))
        cols = self._drop_bad_tokens(cols, records, dead)
        now_us = wall_clock_us()
        staged = reducer.reduce(cols, events, now_us)
        return Prepared(len(records), staged, next_offsets, dead, now_us, staged.max_ts)

    def _drop_bad_tokens(self, cols: Columns, records: Sequence[Record], dead: list[DeadLetter]) -> Columns:
        """Dead-letter the columnar upserts whose partition key has no token (one bad key must
        not fail the transaction); tried once per distinct partition key."""
        if not len(cols):
            return cols
        part = cols.keys[: self.n_pk]
        enc = pc.dictionary_encode(part[0] if self.n_pk == 1 else pc.binary_join_element_wise(*part, "\t"))
        partitions = enc.dictionary.to_pylist()
        try:
            self.columnar[1].tokens(partitions)  # type: ignore[index] # cached for the reducer
            return cols
        except TokenError:
            pass
        bad: dict[int, TokenError] = {}
        for i, p in enumerate(partitions):
            try:
                self.columnar[1].tokens([p])  # type: ignore[index]
            except TokenError as exc:
                bad[i] = exc
        if not bad:
            return cols
        ids = enc.indices.to_numpy(zero_copy_only=False)
        keep = ~np.isin(ids, list(bad))
        for row in np.flatnonzero(~keep):
            dead.append(_dead(records[int(cols.pos[row])], bad[int(ids[row])]))
        return cols.take(np.flatnonzero(keep))

    def _decode_all(self, records: Sequence[Record]) -> tuple[list[tuple[ChangeEvent, Record]], list[DeadLetter]]:
        events, dead = [], []
        refreshed = False
        for rec in records:
            try:
                try:
                    ev = self.decoder.decode(rec.key, rec.value, rec.origin())
                except SchemaChanged:
                    if refreshed:
                        raise
                    log.info("new columns in %s.%s: reading its definition again",
                             self.table.keyspace, self.table.table)
                    self.refresh_schema()
                    refreshed = True
                    ev = self.decoder.decode(rec.key, rec.value, rec.origin())
            except (DecodeError, SchemaChanged) as exc:
                dead.append(_dead(rec, exc))
                continue
            if ev is not None:
                events.append((ev, rec))
        return events, dead


def _dead(rec: Record, exc: Exception) -> DeadLetter:
    def text(b: bytes | None) -> str | None:
        return None if b is None else b.decode("utf-8", errors="replace").replace("\x00", "\\u0000")

    return DeadLetter(rec.topic, rec.partition, rec.offset, text(rec.key), text(rec.value),
                      type(exc).__name__, str(exc))
