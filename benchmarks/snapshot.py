"""Snapshot benchmark: c2pg vs. what a user would otherwise do, measured in the same run.

    .venv/bin/python -m benchmarks.snapshot [--rows 1000000] [--config examples/pipeline.local.yaml]
        [--table snap] [--variants c2pg,no_writetime,ttl_selectors]

On the local stack (``c2pg stack up``):
1. loads ``c2pg_bench.<table>`` (10 columns of mixed types) with ``--rows`` rows, once (a
   later run with the same row count reuses it);
2. baseline: ``cqlsh COPY ... TO`` a CSV, then ``psql \\copy ... FROM`` it into an empty
   table — what many users do by hand for a one-off copy (collections land as text);
3. the write-side ceiling: the ``psql \\copy`` of that CSV alone;
4. the peer: ``dsbulk unload`` to CSV files (DSBulk from Maven Central,
   :mod:`benchmarks.dsbulk_unload`), then ``psql \\copy`` of them — what a user picks for a
   large table. It carries values only, no write times;
5. c2pg: ``run_snapshot`` into an empty target (Ray already started, as on a cluster), as
   shipped (write times, TTL selectors only when the table may have TTLs), then the
   ``--variants``: ``no_writetime`` (``--no-writetime``, like for like with DSBulk) and
   ``ttl_selectors`` (TTLs read although the table has none: the lever's "before") and
   ``row_tuples`` (the driver's row tuples instead of ``SELECT JSON``: that lever's "before")
   and ``half_cpu_tasks`` (``snapshot.task_cpus`` 0.5, the default, where the local
   pipeline has 1.0: twice as many tasks at once).
   Each c2pg run records the CPU seconds of every component (Cassandra, the Ray task
   workers, PostgreSQL's backends that were still alive at the end, ...).
After each copy (outside its timing) the table it wrote is vacuumed and analyzed, so no copy
shares the cores with autovacuum working on the previous one's rows.
Checks that every copy holds the same values (the cqlsh one except its map column), prints
rows/s and ratios, and writes ``benchmarks/results/snapshot.json`` (earlier runs' summaries
kept in ``history``).
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

from benchmarks import dsbulk_unload
from benchmarks.sync import cpu_between, cpu_snapshot
from engine import cql, log
from engine.config import TableConfig, load_config

KS = "c2pg_bench"
NAMES = ("id", "u", "name", "qty", "price", "at", "active", "amount", "attrs", "note")
RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("id bigint PRIMARY KEY, u uuid, name text, qty int, price double, at timestamp, "
           "active boolean, amount decimal, attrs map<text, int>, note text")
BASELINE_PG = ("id bigint PRIMARY KEY, u uuid, name text, qty integer, price double precision, "
               "at timestamptz, active boolean, amount numeric, attrs text, note text")
# DSBulk writes a map as JSON, so its copy keeps it as jsonb, like c2pg's.
DSBULK_PG = BASELINE_PG.replace("attrs text", "attrs jsonb")
# c2pg runs besides the default one: name -> run_snapshot arguments.
VARIANTS = {"no_writetime": {"write_times": False}, "ttl_selectors": {"read_ttls": True},
            "row_tuples": {"json_rows": False}, "half_cpu_tasks": {"task_cpus": 0.5}}
SUMMARY = ("when", "command", "rows", "c2pg_rows_per_s", "c2pg_no_writetime_rows_per_s", "dsbulk_rows_per_s",
           "baseline_rows_per_s", "ratio_vs_dsbulk", "ratio_no_writetime_vs_dsbulk", "ratio_vs_baseline",
           "ratio_vs_copy_ceiling", "levers", "end_states")


def load_source(session, table: str, rows: int) -> float:
    """Create and fill the source table unless it already holds ``rows`` rows."""
    from cassandra.concurrent import execute_concurrent_with_args

    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {KS} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    session.execute(f"CREATE TABLE IF NOT EXISTS {KS}.meta (k text PRIMARY KEY, rows bigint)")
    done = session.execute(f"SELECT rows FROM {KS}.meta WHERE k = %s", (table,)).one()
    if done and done.rows == rows:
        return 0.0
    session.execute(f"DROP TABLE IF EXISTS {KS}.{table}")
    session.execute(f"CREATE TABLE {KS}.{table} ({COLUMNS})")
    stmt = session.prepare(f"INSERT INTO {KS}.{table} (id, u, name, qty, price, at, active, amount, attrs, note) "
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
    session.execute(f"INSERT INTO {KS}.meta (k, rows) VALUES (%s, %s)", (table, rows))
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


def settle(conn, table: str) -> None:
    """After a copy, outside every timing: vacuum and analyze what it wrote, so the next
    system does not share the cores with autovacuum working on this one's rows (the
    benchmark's user may not ``CHECKPOINT``; checkpoints come on PostgreSQL's own schedule)."""
    old = conn.autocommit
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"VACUUM (ANALYZE) bench.{table}")  # nosec B608 - the benchmark's own table
    finally:
        conn.autocommit = old


def count_rows(conn, target: str) -> int:
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM bench.{target}")  # nosec B608 - the benchmark's own table
        return cur.fetchone()[0]


def run_baseline(cfg, table: str, rows: int, workdir: Path, conn) -> tuple[float, float]:
    """(seconds of cqlsh COPY TO, seconds of psql \\copy FROM) for the same CSV."""
    csv = workdir / "snap.csv"
    cqlsh = Path(os.sys.executable).with_name("cqlsh")
    login = []
    if cfg.cassandra.username:  # asked for by the stack in TLS mode; the password from a file, not argv
        credentials = workdir / "cqlsh-credentials"
        credentials.write_text(f"[PlainTextAuthProvider]\nusername = {cfg.cassandra.username}\n"
                               f"password = {cfg.cassandra.password.get()}\n")
        credentials.chmod(0o600)
        login = ["-u", cfg.cassandra.username, "--credentials", str(credentials)]
    t0 = time.perf_counter()
    subprocess.run([str(cqlsh), cfg.cassandra.contact_points[0], str(cfg.cassandra.port), *login,
                    "--request-timeout=120", "-e",
                    f"COPY {KS}.{table} ({', '.join(NAMES)}) "
                    f"TO '{csv}' WITH HEADER = false AND NUMPROCESSES = 2"],
                   check=True, capture_output=True)
    export_s = time.perf_counter() - t0
    fresh_pg_table(conn, f"{table}_cqlsh", BASELINE_PG)
    t0 = time.perf_counter()
    subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-q", "-c",
                    f"\\copy bench.{table}_cqlsh FROM '{csv}' WITH (FORMAT csv)"],
                   check=True, env=psql_env(cfg), capture_output=True)
    import_s = time.perf_counter() - t0
    assert count_rows(conn, f"{table}_cqlsh") == rows, "baseline copied a different row count"
    settle(conn, f"{table}_cqlsh")
    return export_s, import_s


def run_dsbulk(cfg, table: str, rows: int, workdir: Path, conn) -> dict:
    """``dsbulk unload`` into CSV files, then one ``psql \\copy`` of them into an empty table."""
    dsbulk_unload.install()  # outside the timing: a first run resolves the jars
    login = (cfg.cassandra.username, cfg.cassandra.password.get()) if cfg.cassandra.username else None
    before = cpu_snapshot()
    unload = dsbulk_unload.unload(cfg.cassandra.contact_points[0], cfg.cassandra.port, KS, table, list(NAMES),
                                  workdir / "dsbulk", login=login)
    fresh_pg_table(conn, f"{table}_dsbulk", DSBULK_PG)
    import_s = dsbulk_unload.copy_csv_dir(workdir / "dsbulk" / "csv", f"bench.{table}_dsbulk", psql_env(cfg))
    cpu = cpu_between(before, cpu_snapshot(), rows)  # DSBulk's JVM and psql: the driver's children
    assert unload["rows"] == rows and count_rows(conn, f"{table}_dsbulk") == rows, "DSBulk copied a different count"
    settle(conn, f"{table}_dsbulk")
    return {"unload_s": round(unload["seconds"], 2), "unload_reported": unload["reported"],
            "import_s": round(import_s, 2), "rows_per_s": round(rows / (unload["seconds"] + import_s)),
            "version": dsbulk_unload.DSBULK, "command": " ".join(unload["command"]),
            "cpu_seconds": cpu["cpu_seconds"], "cpu_us_per_row": cpu["cpu_us_per_event"]}


def run_c2pg(cfg, table: str, target: str, rows: int, conn, task_cpus: float | None = None, **kwargs) -> dict:
    """One c2pg snapshot into an empty ``bench.<target>``; ``task_cpus`` overrides the
    pipeline's ``snapshot.task_cpus``, the rest are ``run_snapshot``'s arguments."""
    import ray

    from engine.snapshot import run_snapshot

    if task_cpus is not None:
        cfg = cfg.model_copy(update={"snapshot": cfg.snapshot.model_copy(update={"task_cpus": task_cpus})})

    fresh_pg_table(conn, target, "")
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = 'bench' AND target_table = %s", (target,))
    if not ray.is_initialized():
        ray.init(logging_level="WARNING")
    before = cpu_snapshot()
    result = run_snapshot(cfg, TableConfig(keyspace=KS, table=table, target_schema="bench", target_table=target),
                          **kwargs)
    cpu = cpu_between(before, cpu_snapshot(), rows)
    assert result.ok and result.rows == rows, result
    settle(conn, target)
    # Where the CPU went, per component (Cassandra, PostgreSQL, the Ray workers, ...).
    return {**result.as_dict(), "cpu_seconds": cpu["cpu_seconds"], "cpu_us_per_row": cpu["cpu_us_per_event"]}


def differing_rows(conn, a: str, b: str, columns: tuple[str, ...] = NAMES) -> int:
    """Rows of bench.a and bench.b (joined on id, missing ones included) whose ``columns``
    differ; jsonb and numeric compare by value, so c2pg's and DSBulk's spellings agree."""
    cols = ", ".join(columns)
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM (SELECT {cols} FROM bench.{a}) x "  # nosec B608 - own tables
                    f"FULL JOIN (SELECT {cols} FROM bench.{b}) y USING (id) "
                    f"WHERE x IS DISTINCT FROM y OR x.id IS NULL OR y.id IS NULL")
        return cur.fetchone()[0]


def differing_columns(conn, a: str, b: str) -> dict[str, int]:
    """Per column of :data:`NAMES`, how many rows of bench.a and bench.b differ in it; the
    map column compared as text (cqlsh's copy holds cqlsh's spelling of it)."""
    counts = ", ".join(f"count(*) FILTER (WHERE x.{c}::text IS DISTINCT FROM y.{c}::text)" if c == "attrs" else
                       f"count(*) FILTER (WHERE x.{c} IS DISTINCT FROM y.{c})" for c in NAMES[1:])
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT {counts} FROM bench.{a} x JOIN bench.{b} y USING (id)")  # nosec B608 - own tables
        return {c: n for c, n in zip(NAMES[1:], cur.fetchone(), strict=True) if n}


def warm_up_ray(task_cpus: float) -> None:
    """Start the Ray workers every c2pg run uses and import what a read task imports, so no
    run (the default one or a variant) pays for that and another does not."""
    import ray

    @ray.remote(num_cpus=task_cpus)
    def imports() -> None:
        import engine.cassandra_source  # noqa: F401
        import engine.pg_sink  # noqa: F401

    ray.get([imports.remote() for _ in range(int(ray.cluster_resources().get("CPU", 2) / task_cpus))])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--config", type=Path, default=Path("examples/pipeline.local.yaml"))
    p.add_argument("--table", default="snap", help="source c2pg_bench.TABLE; targets bench.TABLE[_suffix]")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated c2pg variants to run after the default one ({', '.join(VARIANTS)})")
    p.add_argument("--no-peers", action="store_true", help="c2pg only: skip the cqlsh and DSBulk copies")
    p.add_argument("--output", type=Path, default=RESULTS / "snapshot.json",
                   help="the results file (a development run on another table: somewhere else)")
    args = p.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    log.configure("WARNING")
    cfg = load_config(args.config)
    table = args.table
    cluster, session = cql.connect(cfg.cassandra)
    conn = psycopg2.connect(**cfg.postgres.connect_kwargs())
    runs: dict[str, dict] = {}
    try:
        from engine.target import ensure_state

        ensure_state(conn)
        load_s = load_source(session, table, args.rows)
        export_s = import_s = None
        dsbulk = None
        if not args.no_peers:
            with tempfile.TemporaryDirectory() as tmp:
                export_s, import_s = run_baseline(cfg, table, args.rows, Path(tmp), conn)
            with tempfile.TemporaryDirectory() as tmp:
                dsbulk = run_dsbulk(cfg, table, args.rows, Path(tmp), conn)
        import ray

        if not ray.is_initialized():
            ray.init(logging_level="WARNING")
        warm_up_ray(min([cfg.snapshot.task_cpus] + [VARIANTS[v].get("task_cpus", 1.0) for v in variants]))
        runs["c2pg"] = run_c2pg(cfg, table, table, args.rows, conn)
        for name in variants:
            runs[name] = run_c2pg(cfg, table, f"{table}_{name}", args.rows, conn, **VARIANTS[name])
        # c2pg's variants and DSBulk must hold exactly c2pg's values, all ten columns.
        end_states: dict = {f"{name}_vs_c2pg": differing_rows(conn, f"{table}_{name}", table) for name in variants}
        if dsbulk:
            end_states["dsbulk_vs_c2pg"] = differing_rows(conn, f"{table}_dsbulk", table)
            # cqlsh's copy is lossy by design (doubles to 12 digits, '' as NULL, the map as
            # cqlsh's text): recorded per column, not checked.
            cqlsh_columns = differing_columns(conn, f"{table}_cqlsh", table)
    finally:
        cluster.shutdown()
        conn.close()
    mine = runs["c2pg"]["rows_per_s"]
    out: dict = {"rows": args.rows, "table": f"{KS}.{table}", "c2pg_rows_per_s": round(mine)}
    if "no_writetime" in runs:
        out["c2pg_no_writetime_rows_per_s"] = round(runs["no_writetime"]["rows_per_s"])
    if dsbulk:
        out["dsbulk_rows_per_s"] = dsbulk["rows_per_s"]
        out["ratio_vs_dsbulk"] = round(mine / dsbulk["rows_per_s"], 2)
        if "no_writetime" in runs:
            out["ratio_no_writetime_vs_dsbulk"] = round(runs["no_writetime"]["rows_per_s"] / dsbulk["rows_per_s"], 2)
    if export_s is not None and import_s is not None:
        baseline, ceiling = args.rows / (export_s + import_s), args.rows / import_s
        out.update({"baseline_rows_per_s": round(baseline), "copy_ceiling_rows_per_s": round(ceiling),
                    "ratio_vs_baseline": round(mine / baseline, 2), "ratio_vs_copy_ceiling": round(mine / ceiling, 2),
                    "baseline_export_s": round(export_s, 2), "baseline_import_s": round(import_s, 2)})
    # Each lever as the same run measured it: rows/s with the lever ("on") and without ("off").
    levers = {}
    if "ttl_selectors" in runs and not runs["c2pg"]["ttls"]:
        levers["skip_ttl_selectors"] = {"on": round(mine), "off": round(runs["ttl_selectors"]["rows_per_s"])}
    if "row_tuples" in runs:
        levers["json_rows"] = {"on": round(mine), "off": round(runs["row_tuples"]["rows_per_s"])}
    if "half_cpu_tasks" in runs:
        levers["task_cpus"] = {"on": round(mine), "off": round(runs["half_cpu_tasks"]["rows_per_s"]),
                               "on_is": cfg.snapshot.task_cpus, "off_is": VARIANTS["half_cpu_tasks"]["task_cpus"]}
    if "no_writetime" in runs:
        levers["no_writetime"] = {"on": out["c2pg_no_writetime_rows_per_s"], "off": round(mine)}
    if dsbulk:
        out["cqlsh_rows_differing_by_column"] = cqlsh_columns
    out.update({"levers": levers, "end_states": end_states, "dsbulk": dsbulk, "c2pg": runs["c2pg"],
                "variants": {k: v for k, v in runs.items() if k != "c2pg"}, "source_load_s": round(load_s, 1),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(), "load_avg": os.getloadavg()},
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": " ".join([".venv/bin/python -m benchmarks.snapshot", *os.sys.argv[1:]])})
    path = args.output
    path.parent.mkdir(parents=True, exist_ok=True)
    # Every run's figures are kept: the latest at the top, the earlier ones' summaries in "history".
    history = []
    if path.exists():
        old = json.loads(path.read_text())
        history = old.pop("history", [])
        history.append({k: old.get(k) for k in SUMMARY if k in old})
    out["history"] = history
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out.get(k) for k in SUMMARY}, indent=2))
    if any(end_states.values()):
        raise SystemExit(f"copies differ: {end_states}")


if __name__ == "__main__":
    main()
