"""Apply a reduced batch of change events to PostgreSQL in one transaction, with its offsets.

Called by the sync ``PartitionWorker`` for each closed batch (and by DLQ replay). One
:class:`SyncWriter` per table and connection; :meth:`SyncWriter.apply` runs, in ONE
transaction (ADR 0002, addendum):

1. stage the batch's deletions (COPY) and record them in the tombstone table;
2. shadow the stored rows they cover (cells at or before a deletion become NULL);
3. stage the reduced rows (COPY) and run the LWW merge, judging TTL expiries by the
   batch's clock (``now_us``: the instant the batch was reduced at, so a cell dead for the
   reducer is dead for the merge, and a cell the reducer saw live is written live and left
   to the TTL sweep if it expires before commit);
   A collection cell whose elements carry TTLs is registered for a recheck
   (``_c2pg.rechecks``, :mod:`engine.recheck`) in the same transaction;
4. remove rows left with no live cell and no live row marker, keeping their cell deletions
   (and a dead marker) as tombstones; then, in a table with static columns, the static row
   of each touched partition that now holds a clustering row (ADR 0007);
5. insert the batch's dead letters;
6. move the Kafka offsets of every partition in the batch (``_c2pg.offsets``).

Commit order is the point: offsets move only with the data they cover, so after a crash
at any step the batch is read again from the committed offsets and re-applied — the merge
is idempotent, so the table ends exactly as if nothing had happened. A failure rolls the
whole transaction back and re-raises; the caller decides (retry, or dead-letter events).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from psycopg2 import sql
from psycopg2.extras import execute_values

from engine import faults
from engine import pg_dialect as d
from engine.events import Bound
from engine.murmur import token_function
from engine.sync.reduce import Reduced, Tombstone
from engine.sync.reduce_columns import StagedRows
from engine.target import Target
from engine.types import COPY_NULL, copy_line


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event that could not be decoded or applied: the raw record and why."""

    topic: str
    partition: int
    offset: int
    raw_key: str | None
    raw_value: str | None
    error_class: str
    error: str
    row_key: str | None = None


@dataclass(frozen=True, slots=True)
class ApplyStats:
    rows: int
    tombstones: int
    dead_letters: int
    seconds: float


class SyncWriter:
    """``source_wins_ties``: reconcile's repair (the staged cells were just read from
    Cassandra and replace a stored cell of the same write time; see ``pg_dialect.merge``)."""

    def __init__(self, conn, target: Target, pipeline: str, *, source_wins_ties: bool = False):
        self.conn = conn
        self.target = target
        self.pipeline = pipeline
        self.rows_applied = 0  # rows merged by this writer's committed batches (fault hook filter)
        schema = target.schema
        self.schema = schema
        self.n_pk = len(schema.partition_key)
        self.n_ck = len(schema.clustering)
        self.token = token_function(schema)
        self.multi_cell = [c.name for c in schema.regular if c.cql_type.multi_cell and not c.dropped]
        t_schema, t_table, tomb = target.target_schema, target.target_table, target.tomb_table
        def as_text(q) -> str:  # compose once, reuse per batch
            return q.as_string(conn)

        # Without static columns the merge and the shadowing record which rows they emptied,
        # and only those are removed; with statics every row of a touched partition is
        # checked (its static row settles with the partition, ADR 0007).
        precise = not schema.has_statics
        creates = [d.create_tombstone_stage(tomb), d.create_stage(t_schema, t_table)]
        if precise:
            creates.append(d.create_empty_keys(schema, t_schema, t_table))
        self.sql_create = as_text(sql.SQL("; ").join(creates))  # one round trip
        self.sql_copy_tstage = as_text(d.copy_tombstone_stage(schema))
        self.sql_record = as_text(d.record_tombstones(schema, tomb))
        self.sql_shadow = as_text(d.shadow_rows(schema, t_schema, t_table, collect_empty=precise))
        self.sql_copy_stage = as_text(d.copy_stage(d.target_columns(schema)))
        self.sql_merge = as_text(d.merge(schema, t_schema, t_table, tomb, source_wins_ties=source_wins_ties,
                                         collect_empty=precise))
        self.sql_remove_empty = as_text(d.by_key_index(d.remove_empty_rows(schema, t_schema, t_table, tomb,
                                                                           from_empty_keys=precise)))
        settle = d.settle_static_rows(schema, t_schema, t_table, (d.STAGE, d.TSTAGE))
        self.sql_settle = as_text(settle) if settle is not None else None
        self.sql_dead = as_text(d.insert_dead_letters())
        self.sql_offsets = as_text(d.SAVE_OFFSETS)
        self.sql_set_now = as_text(d.SET_MERGE_NOW)
        self.sql_rechecks = as_text(d.REGISTER_RECHECKS)
        self.lock_key = f"{t_schema}.{t_table}"

    def apply(self, batch: Reduced | StagedRows, offsets: Mapping[tuple[str, int], int],
              dead: Iterable[DeadLetter] = (), *, now_us: int | None = None) -> ApplyStats:
        """Apply ``batch`` and move ``offsets`` ((topic, partition) → next offset to read).

        ``batch`` is the per-event reducer's :class:`~engine.sync.reduce.Reduced`, or the columnar
        path's :class:`~engine.sync.reduce_columns.StagedRows`, whose rows are COPY text
        already (its tables have no multi-cell columns, so no rechecks).

        ``now_us`` is the clock the merge judges TTL expiries by (a staged cell whose expiry
        is at or before it is a deletion at its write time, ``pg_dialect.merge``): pass the
        ``now_us`` the batch was reduced with (:func:`engine.sync.reduce.reduce_events`). ``None``:
        PostgreSQL's statement time.
        """
        t0 = time.perf_counter()
        dead = list(dead)
        with self.conn, self.conn.cursor() as cur:
            # Partition and range deletions are keyed apart from the rows they cover, so another
            # worker may hold those rows: a batch with one takes the table's apply lock exclusively,
            # every other batch shares it. Without it a row merged while a partition deletion is
            # uncommitted in another transaction is never shadowed (neither statement sees the other).
            n_rows = batch.rows if isinstance(batch, StagedRows) else len(batch.rows)
            wide = any(t.kind != "row" for t in batch.tombstones)
            cur.execute(d.APPLY_LOCK if wide else d.APPLY_LOCK_SHARED, (self.lock_key,))
            if now_us is not None:  # transaction-local: gone at commit or rollback
                cur.execute(self.sql_set_now, (str(int(now_us)),))
            cur.execute(self.sql_create)
            if batch.tombstones:
                cur.copy_expert(self.sql_copy_tstage, io.StringIO(self._tombstone_lines(batch.tombstones)))
                cur.execute(self.sql_record)
                cur.execute(self.sql_shadow)
            if n_rows:
                rows: io.IOBase = (io.BytesIO(batch.copy_text) if isinstance(batch, StagedRows)
                                   else io.StringIO(self._row_lines(batch)))
                cur.copy_expert(self.sql_copy_stage, rows)
                cur.execute(self.sql_merge)
            rechecks = self._rechecks(batch) if self.multi_cell and isinstance(batch, Reduced) and n_rows else []
            if rechecks:
                execute_values(cur, self.sql_rechecks, rechecks)
            if n_rows or batch.tombstones:
                cur.execute(self.sql_remove_empty)
                if self.sql_settle:
                    cur.execute(self.sql_settle)
            if dead:
                execute_values(cur, self.sql_dead, [
                    (self.pipeline, "sync", None, self.schema.keyspace, self.schema.table, x.topic,
                     x.partition, x.offset, x.row_key, x.raw_key, x.raw_value, x.error_class, x.error)
                    for x in dead])
            if offsets:
                execute_values(cur, self.sql_offsets,
                               [(self.pipeline, topic, part, nxt) for (topic, part), nxt in offsets.items()])
            # Everything is written, nothing committed: the crash tests stop the world here.
            faults.hit("sync.commit", pipeline=self.pipeline, rows=self.rows_applied,
                       table=f"{self.schema.keyspace}.{self.schema.table}")
        self.rows_applied += n_rows
        return ApplyStats(n_rows, len(batch.tombstones), len(dead), time.perf_counter() - t0)

    def _rechecks(self, batch: Reduced) -> list[tuple]:
        """Entries of ``_c2pg.rechecks`` for the batch's collection cells whose elements carry
        TTLs (``Cell.recheck_us``, set by the read-back)."""
        t, out = self.target, []
        for name in self.multi_cell:
            for key, row in batch.rows.items():
                cell = row.cells.get(name)
                if cell is not None and cell.recheck_us is not None:
                    out.append((t.target_schema, t.target_table, list(key), name, cell.recheck_us, cell.ts))
        return out

    def _row_lines(self, batch: Reduced) -> str:
        regular = [c.name for c in self.schema.regular]
        lines = []
        for key, row in batch.rows.items():
            values: list[str | None] = list(key)
            wts: list[str] = []
            exps: list[str] = []
            for name in regular:
                cell = row.cells.get(name)
                values.append(None if cell is None else cell.value)
                wts.append("NULL" if cell is None else str(cell.ts))
                exps.append("NULL" if cell is None or cell.expires_us is None else str(cell.expires_us))
            values.append(str(self.token(key[: self.n_pk])))
            values.append("{" + ",".join(wts) + "}")
            values.append("{" + ",".join(exps) + "}" if any(e != "NULL" for e in exps) else None)
            values.append(None if row.row_ts is None else str(row.row_ts))
            values.append(None if row.row_exp is None else str(row.row_exp))
            lines.append(copy_line(values))
        return "".join(lines)

    def _tombstone_lines(self, tombstones: list[Tombstone]) -> str:
        lines = []
        for t in tombstones:
            partition: list[str | None] = list(t.key[: self.n_pk])
            start: list[str | None]
            end: list[str | None]
            meta: list[str | None]
            if t.kind == "row":
                start, end = list(t.key[self.n_pk:]), [None] * self.n_ck
                meta = [t.kind, "0", None, "0", None, None, str(t.ts)]
            elif t.kind == "partition":
                start, end = [None] * self.n_ck, [None] * self.n_ck
                meta = [t.kind, "0", None, "0", None, None, str(t.ts)]
            else:
                start, end = _bound_values(t.start, self.n_ck), _bound_values(t.end, self.n_ck)
                meta = [t.kind, str(len(t.start.values)) if t.start else "0", _bool(t.start),
                        str(len(t.end.values)) if t.end else "0", _bool(t.end), None, str(t.ts)]
            lines.append(copy_line(partition + start + end + meta))
        return "".join(lines)


def _bound_values(bound: Bound | None, n: int) -> list[str | None]:
    values = list(bound.values) if bound else []
    return values + [None] * (n - len(values))


def _bool(bound: Bound | None) -> str | None:
    return None if bound is None else ("t" if bound.inclusive else "f")


__all__ = ["COPY_NULL", "ApplyStats", "DeadLetter", "SyncWriter"]
