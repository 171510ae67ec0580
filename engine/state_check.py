"""c2pg's own state for a target checked against the target, the Cassandra table and the topic.

For every table it syncs, c2pg keeps state beside the target: a catalog row (column order,
mapping, the source's schema hash), a tombstone table keyed like the target, rechecks, and
Kafka offsets per partition of the table's topic. Any of these can stop matching what it
describes: the owner drops the target, the Cassandra table is recreated with another key, a
column is dropped in PostgreSQL, the topic is deleted and created again, retention deletes
events sync had not applied. Applying on top of such state either fails for ever (a crash
loop on the old tombstone index) or loses data without a sign (a re-added column left NULL,
offsets that skip a new topic's first events).

:func:`verify` is called by the sync supervisor (``SyncSupervisor._targets``) for each table
before it makes the target (:func:`engine.target.ensure_target`) and before it assigns the
table's partitions: on its first round, on every schema round, and every round for a table it
refused. It either rebuilds what can be rebuilt without losing data (and says what it did)
or raises :class:`StateMismatch`, which names the table, what does not match and the fix; the
supervisor then leaves the table out (refused, in status and ``/readyz``) and syncs the
others. The table of cases and the reasoning behind each is in docs/sync.md, "When c2pg's
state no longer matches".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from psycopg2 import sql

from engine import pg_dialect as d
from engine.errors import C2pgError
from engine.schema import META_COLUMNS, TableSchema
from engine.target import canonical_type

log = logging.getLogger("c2pg.state_check")

CONFIG = "<pipeline file>"
"""Stands for the pipeline file in the fixes printed: the supervisor does not know its path."""


class StateMismatch(C2pgError):
    """c2pg's state for a table contradicts the target, the Cassandra table or the topic,
    and no rebuild is safe: the message names the table, what does not match and the fix
    (a command or SQL). The sync supervisor refuses the table (its other tables go on);
    ``c2pg sync start`` prints the message and exits 2."""

    exit_code = 2

    def __init__(self, table: str, problem: str, fix: str):
        self.table, self.problem, self.fix = table, problem, fix
        super().__init__(f"{table}: {problem}. Fix: {fix}")


@dataclass(frozen=True, slots=True)
class Watermarks:
    """A partition's first offset still held by Kafka (``low``) and the next to be written (``high``)."""

    low: int
    high: int


@dataclass(frozen=True, slots=True)
class Held:
    """What PostgreSQL holds for one target, read in one transaction by :func:`read_held`."""

    columns: dict[str, str]  # the target's columns → type, as PostgreSQL spells it; empty: no target
    key: tuple[str, ...]  # its primary key (or, with static columns, UNIQUE key) columns
    has_rows: bool
    catalog: list[dict] | None  # the catalog row's columns, None without a row
    tomb_table: str
    tomb_key: tuple[tuple[str, str], ...] | None  # (name, type) of its key columns; None: no table
    tombstones: int
    offsets: dict[int, int]  # partition → next offset, for the table's topic


def read_held(cur, pipeline: str, target_schema: str, target_table: str, topic: str) -> Held:
    cur.execute(*d.describe_target(target_schema, target_table))
    columns = dict(cur.fetchall())
    key: tuple[str, ...] = ()
    has_rows = False
    if columns:
        cur.execute("SELECT array_agg(a.attname ORDER BY u.ord) FROM pg_constraint k "
                    "JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "CROSS JOIN LATERAL unnest(k.conkey) WITH ORDINALITY AS u(attnum, ord) "
                    "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.attnum "
                    "WHERE n.nspname = %s AND c.relname = %s AND k.contype IN ('p', 'u') "
                    "GROUP BY k.oid, k.contype ORDER BY k.contype LIMIT 1", (target_schema, target_table))
        row = cur.fetchone()
        key = tuple(row[0]) if row else ()
        cur.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(d.ident(target_schema, target_table)))
        has_rows = bool(cur.fetchone()[0])
    cur.execute("SELECT columns, tombstone_table FROM _c2pg.catalog WHERE target_schema = %s AND target_table = %s",
                (target_schema, target_table))
    row = cur.fetchone()
    catalog, tomb = (row[0], row[1]) if row else (None, d.tombstone_table_name(target_schema, target_table))
    cur.execute(*d.describe_target(d.STATE_SCHEMA, tomb))
    tomb_columns = cur.fetchall()
    tomb_key = tuple((n, t) for n, t in tomb_columns if not n.startswith("_c2pg_")) if tomb_columns else None
    tombstones = 0
    if tomb_columns:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(d.ident(d.STATE_SCHEMA, tomb)))
        tombstones = cur.fetchone()[0]
    cur.execute("SELECT kafka_partition, next_offset FROM _c2pg.offsets WHERE pipeline = %s AND topic = %s",
                (pipeline, topic))
    return Held(columns, key, has_rows, catalog, tomb, tomb_key, tombstones, dict(cur.fetchall()))


def verify(conn, schema: TableSchema, target_schema: str, target_table: str, *, pipeline: str, topic: str,
           watermarks: Callable[[], dict[int, Watermarks] | None] | None = None) -> list[str]:
    """Check c2pg's state for ``target_schema.target_table`` (the target of ``schema``, the
    Cassandra table as it is now) and rebuild what is safe to rebuild, in one transaction.

    ``watermarks()`` gives the topic's partitions as Kafka has them now (``{}``: the topic
    does not exist; ``None``: unknown, Kafka did not answer); it is called after the offsets
    are read, so an offset a worker commits meanwhile is never above the high watermark it is
    compared with. Without it (the TTL sweep) the offsets are not judged.

    Returns one line per thing rebuilt (logged by the caller); raises :class:`StateMismatch`
    when the state contradicts the target, the source or the topic and rebuilding could
    lose data. Nothing is changed when it raises."""
    name = f"{schema.keyspace}.{schema.table}"
    target = f"{target_schema}.{target_table}"
    with conn, conn.cursor() as cur:
        # ensure_target's lock: a snapshot or a worker making this target waits, and is waited for.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (target,))
        held = read_held(cur, pipeline, target_schema, target_table, topic)
        marks = watermarks() if watermarks is not None else None
        if marks is not None:
            _check_offsets(name, pipeline, topic, held.offsets, marks)
        if not held.columns:
            return _target_missing(cur, name, (target_schema, target_table), schema, held)
        _check_target(cur, name, (target_schema, target_table), schema, held)
        return _check_tombstones(cur, name, schema, held)


def _key_of(schema: TableSchema) -> list[list[str]]:
    return [[c.name, c.kind, c.cql_type.cql()] for c in schema.primary_key]


def _catalog_key(catalog: list[dict]) -> list[list[str]]:
    return [[c["name"], c["kind"], c["cql"]] for c in catalog if c.get("kind") in ("partition_key", "clustering")]


def _target_missing(cur, name: str, where: tuple[str, str], schema: TableSchema, held: Held) -> list[str]:
    """The target does not exist. With nothing of c2pg's left, it is a new table. With state
    left (its owner dropped it), the offsets decide:

    - no offsets: no event was ever applied to it by this pipeline (a snapshot made it), so
      its catalog row, deletions and rechecks describe rows that are gone: dropped, and the
      target starts as a new table (its topic from the beginning);
    - offsets, and the Cassandra table's key is not the one recorded: the Cassandra table was
      recreated. Every event of the new table follows the offsets (they were committed while
      the old one existed), and the events before them belong to the old table: the state of
      the old table is dropped and the offsets kept, so none of the old events is applied to
      the new table;
    - offsets, and the same key (or no catalog to compare with): the target was dropped under
      a running pipeline. Starting it again from those offsets would leave out every row
      applied before them, and from the topic's beginning every row older than the topic:
      refused, the fix is a snapshot (which creates the target and clears the old state).
    """
    target = ".".join(where)
    if held.catalog is None and held.tomb_key is None:
        if held.offsets:
            raise StateMismatch(name, f"the target {target} does not exist, but this pipeline applied events of "
                                f"{name} up to offsets {_fmt(held.offsets)} to it",
                                f"copy the table: c2pg snapshot --config {CONFIG} --table {name}, then c2pg sync start")
        return []
    if held.offsets and (held.catalog is None or _catalog_key(held.catalog) == _key_of(schema)):
        raise StateMismatch(
            name, f"the target {target} was dropped, but c2pg's state of it is left in _c2pg (catalog row, "
                  f"{held.tombstones} deletion(s) in _c2pg.{held.tomb_table}, offsets {_fmt(held.offsets)}): "
                  "resuming from those offsets would leave out every row applied before them",
            f"copy the table again: c2pg snapshot --config {CONFIG} --table {name} (it creates {target} and "
            "clears c2pg's old state of it), then c2pg sync start")
    why = ("no event was applied to it by this pipeline" if not held.offsets else
           f"the Cassandra table was recreated with another key ({_key_text(_key_of(schema))}, was "
           f"{_key_text(_catalog_key(held.catalog or []))}); the offsets are kept, so the old table's events "
           "before them are not applied to the new one")
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(d.ident(d.STATE_SCHEMA, held.tomb_table)))
    cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = %s AND target_table = %s", where)
    cur.execute("DELETE FROM _c2pg.rechecks WHERE target_schema = %s AND target_table = %s", where)
    rechecks = cur.rowcount
    return [f"{name}: the target {target} was dropped; dropped c2pg's state of it (catalog row, "
            f"{held.tombstones} deletion(s) in _c2pg.{held.tomb_table}, {rechecks} recheck(s)) and start it as a "
            f"new table: {why}"]


def _check_target(cur, name: str, where: tuple[str, str], schema: TableSchema, held: Held) -> None:
    """The target exists: its key, its columns and their types must be what c2pg writes."""
    target, qt = ".".join(where), _q(*where)
    if not all(m in held.columns for m in META_COLUMNS[:2]):
        return  # not a table c2pg made: ensure_target names what is missing
    if held.catalog is None and held.has_rows:
        raise StateMismatch(
            name, f"the target {target} holds rows but c2pg has no catalog row for it, so the order of the "
                  "write times in its _c2pg_wt is unknown",
            f"copy it again: DROP TABLE {qt}; then c2pg snapshot --config {CONFIG} --table {name}")
    want = tuple(c.name for c in schema.primary_key)
    if held.key and held.key != want:
        raise StateMismatch(
            name, f"the target {target} is keyed by ({', '.join(held.key)}) but the Cassandra table by "
                  f"({', '.join(want)}): the Cassandra table was recreated with another key",
            f"DROP TABLE {qt}; then c2pg snapshot --config {CONFIG} --table {name} (c2pg forgets the "
            "old table's state and copies the new one)")
    if held.catalog is not None:
        lost = [c for c in held.catalog if not c.get("dropped") and c["name"] not in held.columns]
        if lost:
            adds = "; ".join(f"ALTER TABLE {qt} ADD COLUMN {_q(c['name'])} {c['pg']}" for c in lost)
            raise StateMismatch(
                name, f"column(s) {', '.join(c['name'] for c in lost)} of {target} were dropped in PostgreSQL; "
                      "their write times are still in _c2pg_wt, so added back empty they would stay NULL wherever "
                      "a write was applied",
                f"{adds}; then c2pg reconcile --config {CONFIG} --table {name} --repair (a repair replaces a "
                "value at the same write time)")
    wrong = [(c, held.columns[c.name]) for c in schema.columns
             if not c.dropped and c.name in held.columns
             and held.columns[c.name] != canonical_type(cur, c.pg_sql_type)]
    if wrong:
        raise StateMismatch(
            name, "column(s) of another type in " + target + ": " + ", ".join(
                f"{c.name} is {have}, c2pg writes {c.pg_sql_type} for {c.cql_type.cql()}" for c, have in wrong),
            "; ".join(f"ALTER TABLE {qt} ALTER COLUMN {_q(c.name)} TYPE {c.pg_sql_type} USING "
                      f"{_q(c.name)}::{c.pg_sql_type}" for c, _ in wrong)
            + f" (or DROP TABLE {qt} and c2pg snapshot --config {CONFIG} --table {name})")


def _check_tombstones(cur, name: str, schema: TableSchema, held: Held) -> list[str]:
    """A tombstone table keyed otherwise than the target holds deletions of rows of another
    key: no merge can match them with this table's rows, so they protect nothing, and
    creating the table's index on it fails. It is dropped (and made again by ensure_target)."""
    if held.tomb_key is None:
        return []
    # Its columns not prefixed _c2pg_ are the key's, in the key's order (pg_dialect.create_tombstones).
    if held.tomb_key == tuple((c.name, canonical_type(cur, c.pg_sql_type)) for c in schema.primary_key):
        return []
    cur.execute(sql.SQL("DROP TABLE {}").format(d.ident(d.STATE_SCHEMA, held.tomb_table)))
    return [f"{name}: _c2pg.{held.tomb_table} was keyed by ({', '.join(n for n, _ in held.tomb_key)}), not by the "
            f"target's key: dropped its {held.tombstones} deletion(s) of another key, which cannot cover this "
            "table's rows, and made it again"]


def _check_offsets(name: str, pipeline: str, topic: str, offsets: dict[int, int],
                   watermarks: dict[int, Watermarks]) -> None:
    """Offsets that the topic cannot honour: a partition gone, an offset past the end (the
    topic was deleted and created again: its offsets belong to the old one, and resuming
    from them would skip the new topic's first events), or one before the oldest event
    Kafka still holds (retention deleted events before sync applied them). Either way
    events were lost before c2pg saw them, so it does not guess: refused, and the fix says
    how to start again and repair."""
    # The fixes are SQL for the operator to read and paste, never executed here.
    where = f"pipeline = {_lit(pipeline)} AND topic = {_lit(topic)}"
    reset = (f"DELETE FROM _c2pg.offsets WHERE {where}; then "  # nosec B608 - printed, not run
             f"c2pg reconcile --config {CONFIG} --table {name} --repair (sync then reads the topic from its "
             "beginning; the repair brings back what the lost events held)")
    if offsets and not watermarks:
        raise StateMismatch(name, f"c2pg holds offsets {_fmt(offsets)} for topic {topic}, which no longer "
                            "exists: its events that were not applied went with it", reset)
    for p, off in sorted(offsets.items()):
        w = watermarks.get(p)
        if w is None:
            raise StateMismatch(name, f"c2pg holds offset {off} for partition {p} of topic {topic}, which has no "
                                "such partition: the topic was deleted and created again", reset)
        if off > w.high:
            raise StateMismatch(name, f"c2pg's offset {off} for {topic}/{p} lies past the partition's end ({w.high}): "
                                "the topic was deleted and created again (or its events deleted)", reset)
        if off < w.low:
            raise StateMismatch(
                name, f"c2pg's offset {off} for {topic}/{p} lies before the oldest event Kafka still holds ({w.low}): "
                      f"{w.low - off} event(s) were deleted by retention before sync applied them",
                f"UPDATE _c2pg.offsets SET next_offset = {w.low} WHERE {where} "  # nosec B608 - printed, not run
                f"AND kafka_partition = {p}; then c2pg reconcile --config {CONFIG} --table {name} --repair")


def _fmt(offsets: dict[int, int]) -> str:
    return ", ".join(f"{p}:{o}" for p, o in sorted(offsets.items()))


def _key_text(key: list[list[str]]) -> str:
    return ", ".join(f"{n} {t}" for n, _, t in key)


def _lit(text: str) -> str:
    """A string literal for a fix pasted into psql."""
    return "'" + text.replace("'", "''") + "'"


def _q(*parts: str) -> str:
    """A name (``schema, table`` or a column), double-quoted for a fix pasted into psql."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)
