"""Read-only views of c2pg's state in PostgreSQL for the control plane.

Callers: the Serve app (``serve_app.control``) for its status, run and status-page routes.
Writers of these tables are elsewhere: snapshot (:mod:`engine.snapshot`) and reconcile
(``jobs.reconcile``) write ``_c2pg.runs`` / ``run_splits`` (and reconcile
``_c2pg.reconcile_diffs``); sync writes ``_c2pg.offsets`` and ``_c2pg.dead_letters``.
Nothing here writes.

Every query is composed with :mod:`psycopg2.sql` (identifiers are never formatted into
text). Each function takes an open connection and runs in its own short transaction.
A table that does not exist yet (a fresh database, or reconcile not deployed) reads as
empty rather than failing: the control plane must answer before the first run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg2 import sql

__all__ = ["RUN_FIELDS", "dead_letter_counts", "diff_counts", "diffs", "get_run", "offsets", "recent_runs",
           "run_progress", "table_exists"]

RUN_FIELDS = ("run_id", "kind", "pipeline", "keyspace", "source_table", "target", "status", "started_at",
              "finished_at", "args", "stats", "error")

_RUN_COLUMNS = sql.SQL(", ").join(sql.Identifier(c) for c in RUN_FIELDS)
_RUNS = sql.Identifier("_c2pg", "runs")
_SPLITS = sql.Identifier("_c2pg", "run_splits")
_DIFFS = sql.Identifier("_c2pg", "reconcile_diffs")
_OFFSETS = sql.Identifier("_c2pg", "offsets")
_DEAD = sql.Identifier("_c2pg", "dead_letters")

DIFF_FIELDS = ("split_index", "token", "key", "kind", "columns", "detail", "repaired", "found_at")


def table_exists(conn, qualified: str) -> bool:
    """``to_regclass`` of ``schema.table``: whether the table exists (and is visible)."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (qualified,))
        return bool(cur.fetchone()[0])


def get_run(conn, run_id: str, kind: str | None = None) -> dict[str, Any] | None:
    """One row of ``_c2pg.runs`` as a dict (``run_id`` as text), or None.

    ``run_id`` must already be a valid UUID string (the API validates it); ``kind``
    (``'snapshot'``/``'reconcile'``) restricts the match.
    """
    if not table_exists(conn, "_c2pg.runs"):
        return None
    query = sql.SQL("SELECT {} FROM {} WHERE run_id = %s::uuid").format(_RUN_COLUMNS, _RUNS)
    params: list[Any] = [run_id]
    if kind is not None:
        query += sql.SQL(" AND kind = %s")
        params.append(kind)
    with conn, conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    return _run(row) if row else None


def recent_runs(conn, pipeline: str, *, kind: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The newest runs of ``pipeline`` (both kinds unless ``kind``), newest first, each with
    its split progress (``splits_done``, ``splits_total``)."""
    if not table_exists(conn, "_c2pg.runs"):
        return []
    where: sql.Composable = sql.SQL("r.pipeline = %s")
    params: list[Any] = [pipeline]
    if kind is not None:
        where += sql.SQL(" AND r.kind = %s")
        params.append(kind)
    query = sql.SQL(
        "SELECT {cols}, "
        "(SELECT count(*) FROM {splits} s WHERE s.run_id = r.run_id), "
        "(SELECT count(*) FROM {splits} s WHERE s.run_id = r.run_id AND s.status = 'done') "
        "FROM {runs} r WHERE {where} ORDER BY r.started_at DESC LIMIT %s").format(
        cols=sql.SQL(", ").join(sql.Identifier("r", c) for c in RUN_FIELDS), splits=_SPLITS, runs=_RUNS,
        where=where)
    with conn, conn.cursor() as cur:
        cur.execute(query, [*params, limit])
        rows = cur.fetchall()
    out = []
    for row in rows:
        run = _run(row[:len(RUN_FIELDS)])
        run["splits_total"], run["splits_done"] = int(row[-2]), int(row[-1])
        out.append(run)
    return out


def run_progress(conn, run_id: str) -> dict[str, Any]:
    """Split progress of a run: ``{"splits_total", "splits_done", "splits_failed", "rows",
    "fraction"}`` (``fraction`` is done/total, None before the splits are planned)."""
    query = sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'failed'), "
        "COALESCE(sum(rows), 0) FROM {} WHERE run_id = %s::uuid").format(_SPLITS)
    with conn, conn.cursor() as cur:
        cur.execute(query, (run_id,))
        total, done, failed, rows = cur.fetchone()
    return {"splits_total": int(total), "splits_done": int(done), "splits_failed": int(failed),
            "rows": int(rows), "fraction": round(done / total, 4) if total else None}


def diff_counts(conn, run_id: str) -> dict[str, int]:
    """Differences a reconcile run recorded, by kind (``missing``, ``extra``, ``mismatch``)
    plus ``repaired``; empty when the diff table does not exist."""
    if not table_exists(conn, "_c2pg.reconcile_diffs"):
        return {}
    query = sql.SQL("SELECT kind, count(*), count(*) FILTER (WHERE repaired) FROM {} "
                    "WHERE run_id = %s::uuid GROUP BY kind ORDER BY kind").format(_DIFFS)
    with conn, conn.cursor() as cur:
        cur.execute(query, (run_id,))
        rows = cur.fetchall()
    out = {kind: int(n) for kind, n, _ in rows}
    out["repaired"] = sum(int(r) for _, _, r in rows)
    return out


def diffs(conn, run_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
    """The first ``limit`` differences of a reconcile run, in token order."""
    if not table_exists(conn, "_c2pg.reconcile_diffs"):
        return []
    query = sql.SQL("SELECT {} FROM {} WHERE run_id = %s::uuid ORDER BY split_index, token LIMIT %s").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in DIFF_FIELDS), _DIFFS)
    with conn, conn.cursor() as cur:
        cur.execute(query, (run_id, limit))
        return [_jsonable(dict(zip(DIFF_FIELDS, row))) for row in cur.fetchall()]


def offsets(conn, pipeline: str, topics: Sequence[str]) -> list[dict[str, Any]]:
    """Committed offsets (next offset to apply) of ``pipeline`` on ``topics``: what the status
    route shows per partition when no supervisor is running."""
    if not topics or not table_exists(conn, "_c2pg.offsets"):
        return []
    query = sql.SQL("SELECT topic, kafka_partition, next_offset, updated_at FROM {} "
                    "WHERE pipeline = %s AND topic = ANY(%s) ORDER BY topic, kafka_partition").format(_OFFSETS)
    with conn, conn.cursor() as cur:
        cur.execute(query, (pipeline, list(topics)))
        return [{"topic": t, "partition": p, "offset": o, "updated_at": u.isoformat()}
                for t, p, o, u in cur.fetchall()]


def dead_letter_counts(conn, pipeline: str) -> dict[tuple[str, int | None], int]:
    """Unreplayed dead letters of ``pipeline`` per (``keyspace.table``, Kafka partition);
    the partition is None for snapshot dead letters (they come from a run, not a topic)."""
    if not table_exists(conn, "_c2pg.dead_letters"):
        return {}
    query = sql.SQL("SELECT keyspace, source_table, kafka_partition, count(*) FROM {} WHERE pipeline = %s "
                    "AND replayed_at IS NULL GROUP BY keyspace, source_table, kafka_partition").format(_DEAD)
    with conn, conn.cursor() as cur:
        cur.execute(query, (pipeline,))
        return {(f"{ks}.{t}", p): int(n) for ks, t, p, n in cur.fetchall()}


def _run(row: Sequence[Any]) -> dict[str, Any]:
    return _jsonable(dict(zip(RUN_FIELDS, row)))


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """UUIDs and timestamps as text, so the API can return the dict as JSON."""
    out = {}
    for k, v in d.items():
        if hasattr(v, "isoformat"):
            v = v.isoformat()
        elif type(v).__name__ == "UUID":
            v = str(v)
        out[k] = v
    return out
