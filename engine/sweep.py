"""Housekeeping of a replicated table: expire TTL'd cells, purge old tombstones.

Called by the sync supervisor every ``sync.ttl_sweep_interval``, once per configured table,
on its own PostgreSQL connection; each call is one short transaction, so a failure (lost
connection, a deadlock victim) changes nothing and the next interval simply runs again.
Both operations are idempotent.

**TTL sweep (docs/architecture.md, "The replication contract", rule 5).** Cassandra emits
no event when a TTL runs out, so :func:`sweep_expired` removes expired cells itself: an
expired cell becomes NULL and *keeps its write time* in ``_c2pg_wt`` — in Cassandra an
expired cell is a deletion at its write timestamp, so a write at or before that time
arriving later must still lose, and a newer one wins. Rows left with no live cell and no
row marker are deleted, their cells kept as ``cell`` tombstones, exactly as the sync writer
does (ADR 0002, addendum, step 4). Between two sweeps an expired cell is still visible in
PostgreSQL: the lag of the copy is up to one interval.

Row markers expire too: an ``INSERT … USING TTL`` gives its row marker the TTL of its
cells (Cassandra writes one liveness for the statement), which sync carries in
``_c2pg_row_exp``. An expired marker no longer keeps its row: the sweep deletes the row if
no live cell is left, or else clears the marker, and records it either way as a ``cell``
tombstone of ``_c2pg_row_ts`` so an older INSERT arriving later does not bring it back.

**Tombstone purge (docs/architecture.md, "The replication contract", rule 4).**
:func:`purge_tombstones` deletes the deletions older than ``sync.tombstone_retention`` (by
their Cassandra deletion time, ``_c2pg_deleted_at``). A tombstone is what stops an *older*
write that arrives *later* from resurrecting deleted data; once it is purged, nothing does.
The retention must therefore outlast every way such a write can still reach c2pg:

- Kafka: a write older than the deletion was produced before it (give or take the
  connector's lag), and Kafka keeps it ``retention.ms`` — plus up to ``segment.ms``, since
  Kafka deletes whole segments — so it can be re-read (a lagging partition, offsets reset,
  a new worker) until then. Retention ≥ Kafka retention + segment roll + connector lag.
- Cassandra hints and repair that bring an old write to a replica whose connector then
  emits it: bounded by ``max_hint_window`` and by the table's ``gc_grace_seconds``.
- Dead-letter replay: :mod:`engine.dlq` refuses to replay writes older than the retention
  for this reason.

The default of 7 days equals Kafka's default ``retention.ms``; raise it with the topic's
retention.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from engine import pg_dialect as d
from engine.config import SyncConfig
from engine.target import Target

log = logging.getLogger("c2pg.sync.sweep")

__all__ = ["purge_cutoff_us", "purge_tombstones", "sweep_expired", "wall_clock_us"]


def wall_clock_us() -> int:
    """The wall clock in microseconds, the unit of Cassandra's write and expiry times."""
    return time.time_ns() // 1000


def purge_cutoff_us(sync: SyncConfig, at_us: int | None = None) -> int:
    """The ``older_than_us`` for :func:`purge_tombstones`: now minus ``sync.tombstone_retention``."""
    retention_us = sync.tombstone_retention // timedelta(microseconds=1)
    return (wall_clock_us() if at_us is None else at_us) - retention_us


def sweep_expired(conn, target: Target, now_us: int) -> int:
    """Expire the cells (and row markers) of ``target`` whose TTL ran out at ``now_us``;
    return how many cells.

    One statement (:func:`engine.pg_dialect.expire_cells`) in its own transaction. Rows a
    concurrent sync batch has locked are skipped and swept by the next call, so the sweep
    never waits for a batch. Dropped columns are left alone.
    """
    stmt = d.expire_cells(target.schema, target.target_schema, target.target_table, target.tomb_table, now_us)
    with conn, conn.cursor() as cur:
        cur.execute(stmt)
        cells, rows = cur.fetchone()
    if cells or rows:
        log.info("expired %d cell(s) of %s.%s, removed %d empty row(s)", cells, target.target_schema,
                 target.target_table, rows)
    return int(cells)


def purge_tombstones(conn, target: Target, older_than_us: int) -> int:
    """Delete the tombstones of ``target`` deleted before ``older_than_us``; return how many.

    ``older_than_us`` is normally :func:`purge_cutoff_us` (now minus the retention); see the
    module docstring for why the retention must be at least the Kafka retention.
    """
    with conn, conn.cursor() as cur:
        cur.execute(d.purge_tombstones(target.tomb_table, older_than_us))
        purged = cur.rowcount
    if purged:
        log.info("purged %d tombstone(s) of %s.%s", purged, target.target_schema, target.target_table)
    return purged
