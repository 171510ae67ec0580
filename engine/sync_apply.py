"""Turn a batch of Kafka records of one table into one applied PostgreSQL transaction.

Used by the sync ``PartitionWorker`` (one :class:`TableApplier` per table it serves) and by
``c2pg dlq replay``. It owns the per-table pipeline decode → reduce → write:

- bad records (:class:`~engine.decode.DecodeError`) become dead letters in the same
  transaction as the rest of the batch, and their offsets move on;
- a record naming a column the schema lacks (:class:`~engine.decode.SchemaChanged`) makes
  the applier read the table definition again, add the column to PostgreSQL, and decode
  the record again; if the column is still unknown the record is a dead letter;
- an event whose partition-key token cannot be computed is a dead letter.

Failure of the transaction itself (PostgreSQL down, a constraint) raises; nothing was
committed, so the caller retries the same records later (offsets did not move).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from engine.cassandra_bytes import column_serializers
from engine.config import PipelineConfig, TableConfig
from engine.decode import DecodeError, EventDecoder, SchemaChanged
from engine.events import ChangeEvent, Origin
from engine.murmur import TokenError
from engine.pg_writer import ApplyStats, DeadLetter, SyncWriter
from engine.readback import ReadBack, ReadBackStats
from engine.reduce import reduce_events, typed_compare
from engine.schema import read_table
from engine.sweep import wall_clock_us
from engine.target import Target, ensure_target

log = logging.getLogger("c2pg.sync.apply")


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record, as polled (bytes decoded lazily by the decoder)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None  # Kafka's record time (producer or log-append)

    def origin(self) -> Origin:
        return Origin(self.topic, self.partition, self.offset)


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


class TableApplier:
    """Decoder, writer and schema of one table, on one PostgreSQL connection."""

    def __init__(self, cfg: PipelineConfig, table: TableConfig, conn, cql_session, registry=None):
        self.cfg = cfg
        self.table = table
        self.conn = conn
        self.cql = cql_session
        self.registry = registry
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

    def refresh_schema(self) -> None:
        """Read the table again and add new columns to PostgreSQL (the periodic check, and
        the reaction to :class:`SchemaChanged`)."""
        self._load()

    def apply(self, records: Sequence[Record], next_offsets: dict[tuple[str, int], int]) -> BatchResult:
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
        stats: ApplyStats = self.writer.apply(reduced, next_offsets, dead, now_us=now_us)
        return BatchResult(len(records), stats.rows, stats.tombstones, stats.dead_letters,
                           max((e.ts for e in good), default=None), stats.seconds, tuple(dead), read_back)

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
