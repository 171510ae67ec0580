"""The PostgreSQL side of a replicated table: engine state, the target table, its catalog row.

Callers: the snapshot job on the driver before any task runs (and later sync and
reconcile when they attach to a table). :func:`ensure_target` creates what is missing,
checks what exists, and returns the schema in the *catalog's* column order — the order
``_c2pg_wt`` positions follow — so a column added later is appended, never inserted.

Failure: :class:`TargetMismatch` lists every difference between the Cassandra table and
an existing target (exit code 2); ``evolve=True`` adds missing columns instead.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace

from psycopg2 import sql

from engine import pg_dialect as d
from engine.errors import C2pgError
from engine.schema import META_ADDED_LATER, META_COLUMNS, META_TOKEN, Column, TableSchema
from engine.types import CqlType, TypeMappingError, parse_cql_type

log = logging.getLogger("c2pg.target")


class TargetMismatch(C2pgError):
    """An existing PostgreSQL table does not match the Cassandra table."""

    exit_code = 2

    def __init__(self, target: str, differences: list[str]):
        self.differences = differences
        lines = "\n".join(f"  - {x}" for x in differences)
        super().__init__(f"target {target} differs from the Cassandra table "
                         f"(use --evolve to add missing columns):\n{lines}")


@dataclass(frozen=True, slots=True)
class Target:
    schema: TableSchema  # in catalog order
    target_schema: str
    target_table: str
    tomb_table: str
    created: bool  # this call created the table (so it is empty: a direct load is safe)


def ensure_state(conn) -> None:
    """Create schema ``_c2pg`` and its tables if missing (idempotent; any caller may run it)."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('_c2pg.ddl'))")
        for stmt in d.STATE_DDL:
            cur.execute(stmt)


def ensure_target(conn, schema: TableSchema, target_schema: str, target_table: str, *,
                  evolve: bool = False, defer_token_index: bool = True) -> Target:
    """Create or check the target table, its tombstone table and its catalog row."""
    tomb = d.tombstone_table_name(target_schema, target_table)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{target_schema}.{target_table}",))
        cur.execute(*d.describe_target(target_schema, target_table))
        existing = dict(cur.fetchall())
        created = not existing
        previous = None
        if created:
            # A target dropped by its owner leaves c2pg's state of it behind: its catalog row,
            # its deletions and its collection rechecks describe rows that no longer exist (and
            # a table recreated with another key could not even use them: the tombstone
            # table's index names the old key columns). A new target starts without them.
            _forget_dropped_target(cur, target_schema, target_table, tomb)
        else:
            cur.execute("SELECT columns FROM _c2pg.catalog WHERE target_schema = %s AND target_table = %s",
                        (target_schema, target_table))
            row = cur.fetchone()
            previous = row[0] if row is not None else None
            if previous is not None:
                schema = _in_catalog_order(schema, previous)
        if created:
            for stmt in d.create_target(schema, target_schema, target_table,
                                        with_token_index=not defer_token_index):
                cur.execute(stmt)
        else:
            _check_or_evolve(cur, schema, target_schema, target_table, existing, evolve)
        cur.execute(d.create_tombstones(schema, tomb))
        cur.execute(
            "INSERT INTO _c2pg.catalog (target_schema, target_table, keyspace, source_table, columns, "
            "fingerprint, tombstone_table) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (target_schema, target_table) DO UPDATE SET columns = EXCLUDED.columns, "
            "fingerprint = EXCLUDED.fingerprint, updated_at = now()",
            (target_schema, target_table, schema.keyspace, schema.table,
             json.dumps(catalog_columns(schema, previous)),
             schema.fingerprint(), tomb))
    return Target(schema, target_schema, target_table, tomb, created)


def _forget_dropped_target(cur, target_schema: str, target_table: str, tomb: str) -> None:
    cur.execute("SELECT tombstone_table FROM _c2pg.catalog WHERE target_schema = %s AND target_table = %s",
                (target_schema, target_table))
    row = cur.fetchone()
    leftovers = {tomb} | ({row[0]} if row is not None and row[0] else set())
    for name in sorted(leftovers):
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(d.ident(d.STATE_SCHEMA, name)))
    cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = %s AND target_table = %s",
                (target_schema, target_table))
    cur.execute("DELETE FROM _c2pg.rechecks WHERE target_schema = %s AND target_table = %s",
                (target_schema, target_table))
    if row is not None:
        log.info("%s.%s did not exist: the state c2pg kept for it (catalog row, deletions, rechecks) was "
                 "dropped with it", target_schema, target_table)


def create_token_index(conn, target: Target) -> None:
    """The ``_c2pg_token`` index, built after an initial load (faster than maintaining it),
    and statistics for the columns the planner needs first: the primary key (the merges'
    join) and the token (reconcile's ranges). The other columns' (array and jsonb
    statistics cost most of a full ``ANALYZE``, two thirds of a second per 1M rows) are
    left to autovacuum, which analyzes a freshly loaded table within a minute (an ANALYZE
    of some columns does not reset its count of changed rows)."""
    old = conn.autocommit
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(d.token_index(target.target_schema, target.target_table))
            columns = [c.name for c in target.schema.primary_key] + [META_TOKEN]
            cur.execute(d.sql.SQL("ANALYZE {} ({})").format(d.ident(target.target_schema, target.target_table),
                                                          d.sql.SQL(", ").join(map(d.sql.Identifier, columns))))
    finally:
        conn.autocommit = old


def canonical_type(cur, pg_sql_type: str) -> str:
    """PostgreSQL's own spelling of a type (``time`` → ``time without time zone``)."""
    cur.execute("SELECT %s::regtype::text", (pg_sql_type,))
    return cur.fetchone()[0]


def catalog_columns(schema: TableSchema, previous: list[dict] | None = None) -> list[dict]:
    """The catalog's column list; a dropped column keeps its recorded entry, marked."""
    before = {c["name"]: c for c in previous or []}
    return [{**before.get(c.name, {}), "dropped": True} if c.dropped else
            {"name": c.name, "kind": c.kind, "cql": c.cql_type.cql(), "pg": c.pg_sql_type}
            for c in schema.columns]


def _in_catalog_order(schema: TableSchema, catalog: list[dict]) -> TableSchema:
    """Regular columns in the catalog's order, new ones appended, dropped ones kept as
    ``dropped`` placeholders: a ``_c2pg_wt`` position never moves."""
    live = {c.name: c for c in schema.regular}
    ordered = []
    for entry in (x for x in catalog if x["kind"] in ("regular", "static")):
        if entry["name"] in live:
            ordered.append(live.pop(entry["name"]))
        else:
            ordered.append(Column(entry["name"], entry["kind"], -1, _catalog_type(entry), dropped=True))
    return replace(schema, regular=tuple(ordered + list(live.values())))


def _catalog_type(entry: dict) -> CqlType:
    """The recorded type of a dropped column; its UDT definitions may be gone, and the type
    only matters for its (unused) codec, so an unparseable one stands in as ``blob``."""
    try:
        return parse_cql_type(entry["cql"])
    except TypeMappingError:
        return parse_cql_type("blob")


def _check_or_evolve(cur, schema: TableSchema, target_schema: str, target_table: str,
                     existing: dict[str, str], evolve: bool) -> None:
    differences, missing = [], []
    for c in schema.columns:
        if c.dropped:
            continue  # kept as it is: no longer written
        have = existing.get(c.name)
        if have is None:
            missing.append(c)
            differences.append(f"column {c.name!r} ({c.cql_type.cql()} → {c.pg_sql_type}) is missing")
        elif have != canonical_type(cur, c.pg_sql_type):
            differences.append(f"column {c.name!r} is {have}, expected {c.pg_sql_type} for {c.cql_type.cql()}")
    for meta in META_COLUMNS:
        if meta not in existing and meta not in META_ADDED_LATER:
            differences.append(f"metadata column {meta!r} is missing (not a table c2pg created?)")
    only_missing = len(differences) == len(missing) and all(c.kind in ("regular", "static") for c in missing)
    if differences and not (evolve and only_missing):
        raise TargetMismatch(f"{target_schema}.{target_table}", differences)
    for c in missing:
        cur.execute(d.add_column(target_schema, target_table, c.name, c.pg_sql_type))
    for meta in META_ADDED_LATER:
        if meta not in existing:
            cur.execute(d.add_column(target_schema, target_table, meta, "bigint"))
    if schema.has_statics and schema.clustering:
        cur.execute(*d.primary_key_constraint(target_schema, target_table))
        pkey = cur.fetchone()
        if pkey is not None:  # created before static rows existed, or before its first static column
            log.info("allowing static rows in %s.%s: clustering columns nullable, key UNIQUE NULLS NOT DISTINCT",
                     target_schema, target_table)
            cur.execute(d.allow_static_rows(schema, target_schema, target_table, pkey[0]))
