"""Snapshot benchmark: c2pg vs. what a user would otherwise do, measured in the same run.

    .venv/bin/python -m benchmarks.snapshot [--rows 1000000] [--config examples/pipeline.local.yaml]

On the local stack (``c2pg stack up``):
1. loads ``c2pg_bench.snap`` (10 columns of mixed types) with ``--rows`` rows, once (a
   later run with the same row count reuses it);
2. baseline: ``cqlsh COPY ... TO`` a CSV, then ``psql \\copy ... FROM`` it into an empty
   table — what many users do by hand for a one-off copy (collections land as text);
3. the write-side ceiling: the ``psql \\copy`` of that CSV alone;
4. c2pg: ``run_snapshot`` into an empty target (Ray already started, as on a cluster).
Prints rows/s and ratios, and writes ``benchmarks/results/snapshot.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg2

from engine import cql, log
from engine.config import TableConfig, load_config

KS, TABLE = "c2pg_bench", "snap"
RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("id bigint PRIMARY KEY, u uuid, name text, qty int, price double, at timestamp, "
           "active boolean, amount decimal, attrs map<text, int>, note text")
BASELINE_PG = ("id bigint PRIMARY KEY, u uuid, name text, qty integer, price double precision, "
               "at timestamptz, active boolean, amount numeric, attrs text, note text")


def load_source(session, rows: int) -> float:
    """Create and fill the source table unless it already holds ``rows`` rows."""
    from cassandra.concurrent import execute_concurrent_with_args

    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {KS} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    session.execute(f"CREATE TABLE IF NOT EXISTS {KS}.meta (k text PRIMARY KEY, rows bigint)")
    done = session.execute(f"SELECT rows FROM {KS}.meta WHERE k = 'snap'").one()
    if done and done.rows == rows:
        return 0.0
    session.execute(f"DROP TABLE IF EXISTS {KS}.{TABLE}")
    session.execute(f"CREATE TABLE {KS}.{TABLE} ({COLUMNS})")
    stmt = session.prepare(f"INSERT INTO {KS}.{TABLE} (id, u, name, qty, price, at, active, amount, attrs, note) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    t0 = time.perf_counter()
    base = datetime(2020, 1, 1, tzinfo=UTC)
    batch = 20_000
    for start in range(0, rows, batch):
        args = [(i, uuid.UUID(int=i * 7919 + 1), f"customer {i}", i % 1000, i / 7.0,
                 base + timedelta(seconds=i), i % 2 == 0, Decimal(i) / 100,
                 {"a": i % 10, "b": i % 7}, "note " * (i % 5))
                for i in range(start, min(rows, start + batch))]
        execute_concurrent_with_args(session, stmt, args, concurrency=256, raise_on_first_error=True)
        print(f"\r  loading Cassandra: {min(rows, start + batch):,}/{rows:,}", end="", flush=True)
    print()
    session.execute(f"INSERT INTO {KS}.meta (k, rows) VALUES ('snap', %s)", (rows,))
    return time.perf_counter() - t0


def psql_env(cfg) -> dict[str, str]:
    kw = cfg.postgres.connect_kwargs()
    return {**os.environ, "PGHOST": kw["host"], "PGPORT": str(kw["port"]), "PGUSER": kw["user"],
            "PGPASSWORD": kw["password"], "PGDATABASE": kw["dbname"]}


def fresh_pg_table(conn, name: str, columns: str) -> None:
    with conn, conn.cursor() as cur:
        cur.execute("CREATE SCHEMA IF NOT EXISTS bench")
        cur.execute(f"DROP TABLE IF EXISTS bench.{name}")
        if columns:
            cur.execute(f"CREATE TABLE bench.{name} ({columns})")


def run_baseline(cfg, rows: int, workdir: Path, conn) -> tuple[float, float]:
    """(seconds of cqlsh COPY TO, seconds of psql \\copy FROM) for the same CSV."""
    csv = workdir / "snap.csv"
    cqlsh = Path(os.sys.executable).with_name("cqlsh")
    t0 = time.perf_counter()
    subprocess.run([str(cqlsh), cfg.cassandra.contact_points[0], str(cfg.cassandra.port),
                    "--request-timeout=120", "-e",
                    f"COPY {KS}.{TABLE} (id, u, name, qty, price, at, active, amount, attrs, note) "
                    f"TO '{csv}' WITH HEADER = false AND NUMPROCESSES = 2"],
                   check=True, capture_output=True)
    export_s = time.perf_counter() - t0
    fresh_pg_table(conn, "baseline", BASELINE_PG)
    t0 = time.perf_counter()
    subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-q", "-c",
                    f"\\copy bench.baseline FROM '{csv}' WITH (FORMAT csv)"],
                   check=True, env=psql_env(cfg), capture_output=True)
    import_s = time.perf_counter() - t0
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM bench.baseline")
        assert cur.fetchone()[0] == rows, "baseline copied a different row count"
    return export_s, import_s


def run_c2pg(cfg, rows: int, conn) -> dict:
    import ray

    from engine.snapshot import run_snapshot

    fresh_pg_table(conn, "snap", "")
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = 'bench' AND target_table = 'snap'")
    if not ray.is_initialized():
        ray.init(logging_level="WARNING")
    result = run_snapshot(cfg, TableConfig(keyspace=KS, table=TABLE, target_schema="bench", target_table="snap"))
    assert result.ok and result.rows == rows, result
    return result.as_dict()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--config", type=Path, default=Path("examples/pipeline.local.yaml"))
    args = p.parse_args()
    log.configure("WARNING")
    cfg = load_config(args.config)
    cluster, session = cql.connect(cfg.cassandra)
    conn = psycopg2.connect(**cfg.postgres.connect_kwargs())
    try:
        from engine.target import ensure_state

        ensure_state(conn)
        load_s = load_source(session, args.rows)
        with tempfile.TemporaryDirectory() as tmp:
            export_s, import_s = run_baseline(cfg, args.rows, Path(tmp), conn)
        c2pg = run_c2pg(cfg, args.rows, conn)
    finally:
        cluster.shutdown()
        conn.close()
    baseline = args.rows / (export_s + import_s)
    ceiling = args.rows / import_s
    mine = c2pg["rows_per_s"]
    out = {
        "rows": args.rows,
        "c2pg_rows_per_s": round(mine),
        "baseline_rows_per_s": round(baseline),
        "copy_ceiling_rows_per_s": round(ceiling),
        "ratio_vs_baseline": round(mine / baseline, 2),
        "ratio_vs_copy_ceiling": round(mine / ceiling, 2),
        "baseline_export_s": round(export_s, 2),
        "baseline_import_s": round(import_s, 2),
        "c2pg": c2pg,
        "source_load_s": round(load_s, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f".venv/bin/python -m benchmarks.snapshot --rows {args.rows}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "snapshot.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"rows {args.rows:,}: c2pg {mine:,.0f} rows/s | cqlsh COPY TO + psql \\copy {baseline:,.0f} rows/s "
          f"(export {export_s:.1f}s, import {import_s:.1f}s) | psql \\copy alone {ceiling:,.0f} rows/s")
    print(f"ratio_vs_baseline {out['ratio_vs_baseline']}  ratio_vs_copy_ceiling {out['ratio_vs_copy_ceiling']}")


if __name__ == "__main__":
    main()
