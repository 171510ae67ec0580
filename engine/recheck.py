"""Collections whose elements expire one by one: read them again when the first one does.

Cassandra keeps a TTL per element of a non-frozen list, set or map (per field of a
non-frozen UDT), static columns included (a static is stored in every row of its partition,
so each row has its entry): ``UPDATE t USING TTL 60 SET l = l + [3]`` gives the element ``3`` a TTL
and leaves ``[1, 2]`` as they were. PostgreSQL holds the collection as one value with one
expiry, and Cassandra emits no event when an element expires. So the read-back
(:mod:`engine.readback`), when it reads such a cell, also reads
``collection_min(TTL(col))`` — the seconds left to the first element to expire — and the
sync writer registers the cell in ``_c2pg.rechecks`` with that time and the cell's write
time, in the batch's transaction.

Called by the sync supervisor's sweep, once per table before the TTL sweep
(:func:`engine.sweep.sweep_expired`), with the same ``now_us``: :func:`recheck` reads the
due cells again from Cassandra (the read-back's reader, at ``cassandra.consistency``) and,
for each whose stored write time is still the registered one:

- Cassandra still holds elements: the value becomes Cassandra's (write time unchanged:
  an expired element is a deletion at its own write time, at or before the cell's), and the
  entry moves to the next element's expiry, or goes when no element has a TTL left;
- Cassandra holds none (every element expired, or the row is gone): the cell's expiry is
  set to ``now_us``, so the TTL sweep that follows expires it as it expires any cell —
  NULL at its write time, and the row removed if nothing else keeps it.

An entry whose cell has a newer write time since (a later write won the merge; its own
read-back registered it again if it needs one), or whose row is gone, is dropped. A row a
sync batch holds is skipped (``FOR UPDATE SKIP LOCKED``) and its entry kept for the next
sweep. A value read before a newer write's event is applied (Cassandra already holds the
write) is written at the old write time and is replaced by that event when it arrives. One
transaction per call; a failure (Cassandra unreachable: :class:`ReadBackFailed`) changes
nothing and raises, and the caller skips the TTL sweep of the table for that round so no
collection is expired whole while its elements could not be read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from psycopg2 import sql

from engine import pg_dialect as d
from engine.murmur import token_function
from engine.readback import ReadBack
from engine.schema import META_EXP, META_WT
from engine.target import Target
from engine.types import copy_unescape

log = logging.getLogger("c2pg.sync.recheck")

BATCH = 2_000  # entries read and applied per call (the rest wait for the next sweep)

__all__ = ["RecheckStats", "recheck"]


@dataclass(frozen=True, slots=True)
class RecheckStats:
    updated: int = 0  # cells given Cassandra's current value
    emptied: int = 0  # cells left for the TTL sweep to expire (Cassandra holds no element)
    stale: int = 0  # entries dropped: a newer write, or no row
    held: int = 0  # entries kept: their row was locked by a sync batch


def recheck(conn, target: Target, session, consistency: str, now_us: int) -> RecheckStats:
    """Read again the collection cells of ``target`` registered as due at ``now_us`` and
    apply what Cassandra holds now (see the module docstring)."""
    schema = target.schema
    with conn, conn.cursor() as cur:
        cur.execute("SELECT key, col, wt FROM _c2pg.rechecks WHERE target_schema = %s AND target_table = %s "
                    "AND at_us <= %s ORDER BY at_us LIMIT %s",
                    (target.target_schema, target.target_table, now_us, BATCH))
        due: list[tuple[tuple[str | None, ...], str, int]] = [(tuple(key), col, wt) for key, col, wt in cur.fetchall()]
    if not due:
        return RecheckStats()
    current = ReadBack(schema, session, consistency, token_function(schema)).current({k for k, _, _ in due})
    position = {c.name: i for i, c in enumerate(schema.regular, start=1)}
    pg_types = {c.name: c.pg_sql_type for c in schema.columns}
    table = d.ident(target.target_schema, target.target_table)
    # A static row's clustering values are NULL (ADR 0007): matched as such.
    where = sql.SQL(" AND ").join(
        sql.SQL("{c} IS NOT DISTINCT FROM %s::{t}" if c.kind == "clustering" and schema.has_statics
                else "{c} = %s::{t}").format(
            c=d.ident(c.name), t=sql.SQL(c.pg_sql_type)) for c in schema.primary_key)
    updated = emptied = stale = held = 0
    with conn, conn.cursor() as cur:
        for key, col, wt in due:
            if col not in position:  # the column was dropped since
                _forget(cur, target, key, col)
                stale += 1
                continue
            i = sql.Literal(position[col])
            params = [None if v is None else copy_unescape(v) for v in key]
            cur.execute(sql.SQL("SELECT {wt}[{i}] FROM {t} WHERE {where} FOR UPDATE SKIP LOCKED").format(
                wt=d.ident(META_WT), i=i, t=table, where=where), params)
            row = cur.fetchone()
            if row is None:
                cur.execute(sql.SQL("SELECT {wt}[{i}] FROM {t} WHERE {where}").format(
                    wt=d.ident(META_WT), i=i, t=table, where=where), params)
                unlocked = cur.fetchone()
                if unlocked is not None and unlocked[0] == wt:
                    held += 1  # a sync batch holds the row: the next sweep
                    continue
            if row is None or row[0] != wt:
                _forget(cur, target, key, col)
                stale += 1
                continue
            text, next_at = current.get(key, {}).get(col, (None, None))
            if text is None:
                cur.execute(sql.SQL("UPDATE {t} SET {exp}[{i}] = %s WHERE {where}").format(
                    t=table, exp=d.ident(META_EXP), i=i, where=where), [now_us, *params])
                _forget(cur, target, key, col)
                emptied += 1
                continue
            cur.execute(sql.SQL("UPDATE {t} SET {c} = %s::{type} WHERE {where}").format(
                t=table, c=d.ident(col), type=sql.SQL(pg_types[col]), where=where), [copy_unescape(text), *params])
            if next_at is None:
                _forget(cur, target, key, col)
            else:
                cur.execute("UPDATE _c2pg.rechecks SET at_us = %s WHERE target_schema = %s AND target_table = %s "
                            "AND key = %s AND col = %s", (next_at, target.target_schema, target.target_table,
                                                          list(key), col))
            updated += 1
    stats = RecheckStats(updated, emptied, stale, held)
    if updated or emptied:
        log.info("%s.%s: %d collection(s) read again after an element expired, %d emptied", target.target_schema,
                 target.target_table, updated, emptied)
    return stats


def _forget(cur, target: Target, key: tuple[str | None, ...], col: str) -> None:
    cur.execute("DELETE FROM _c2pg.rechecks WHERE target_schema = %s AND target_table = %s AND key = %s AND col = %s",
                (target.target_schema, target.target_table, list(key), col))
