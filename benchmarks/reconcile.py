"""Reconcile benchmark: a clean and a 0.1%-damaged table against the snapshot's own read rate.

    .venv/bin/python -m benchmarks.reconcile [--rows 1000000] [--damage 0.001] [--config examples/pipeline.local.yaml]

On the local stack (``c2pg stack up``), in one run:
1. the source ``c2pg_bench.snap`` (10 mixed columns, the snapshot benchmark's table) is
   loaded with ``--rows`` rows unless it already holds them, and snapshotted into a fresh
   target ``bench.reconcile``;
2. baseline: the snapshot's read side alone — ``CassandraDatasource`` through Ray Data,
   rows counted inside the read tasks (nothing written), same split plan and CPUs;
3. reconcile of the equal table (clean);
4. ``--damage`` of the rows changed in PostgreSQL (a quarter deleted, a quarter extra rows,
   half with a changed cell), reconcile again (drift; the count must match), then a repair
   and a final reconcile that must be clean.
Prints rows/s and the ratio clean/read, and writes ``benchmarks/results/reconcile.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg2

from benchmarks.snapshot import KS, RESULTS, TABLE, fresh_pg_table, load_source
from engine import cql, log
from engine.config import TableConfig, load_config

TARGET = "reconcile"


def snapshot_read_rate(cfg, table: TableConfig) -> tuple[int, float]:
    """(rows, seconds) of reading the table the way the snapshot does, without writing."""
    import ray

    from engine.cassandra_source import ReadSettings
    from engine.snapshot import CassandraDatasource
    from engine.schema import read_table
    from engine.snapshot import _connections
    from engine.token_ranges import plan_splits

    with _connections(cfg) as (cluster, session, _):
        schema = read_table(session, table.keyspace, table.table)
        slots = int(ray.cluster_resources().get("CPU", 2) / cfg.snapshot.task_cpus)
        plan = plan_splits(cluster, schema.keyspace, schema.table, split_size_mb=cfg.snapshot.split_size_mb,
                           min_splits=max(8, 4 * slots))
    source = CassandraDatasource(ReadSettings(cfg.cassandra, schema, cfg.snapshot.consistency,
                                              cfg.snapshot.page_size, cfg.snapshot.max_retries,
                                              int(time.time() * 1e6)), plan)
    t0 = time.perf_counter()
    ds = ray.data.read_datasource(source, override_num_blocks=len(plan), num_cpus=cfg.snapshot.task_cpus)
    counted = ds.map_batches(_count, batch_format="pyarrow", batch_size=None, num_cpus=cfg.snapshot.task_cpus)
    rows = int(sum(b["n"].to_pylist()[0] for b in counted.iter_batches(batch_format="pyarrow", batch_size=None)))
    return rows, time.perf_counter() - t0


def _count(block):
    import pyarrow as pa

    real = block.filter(block.column("_c2pg_token").is_valid())  # not the empty-split markers
    return pa.table({"n": [real.num_rows]})


def damage(conn, rows: int, fraction: float) -> int:
    """Change ``fraction`` of the target's rows; returns how many keys now differ."""
    n = max(4, int(rows * fraction))
    q = n // 4
    t = f"bench.{TARGET}"
    cols = "u, name, qty, price, at, active, amount, attrs, note, _c2pg_token, _c2pg_wt, _c2pg_exp, _c2pg_row_ts"
    with conn, conn.cursor() as cur:
        # Spread over the ring: every k-th id.
        step = rows // n
        ids = [i * step for i in range(n)]
        deleted, extra, changed = ids[:q], ids[q:2 * q], ids[2 * q:]
        cur.execute(f"DELETE FROM {t} WHERE id = ANY(%s)", (deleted,))
        cur.execute(f"INSERT INTO {t} (id, {cols}) SELECT id + {rows * 10}, {cols} FROM {t} WHERE id = ANY(%s)",
                    (extra,))
        cur.execute(f"UPDATE {t} SET name = name || ' (changed)' WHERE id = ANY(%s)", (changed,))
    return len(deleted) + len(extra) + len(changed)


def main() -> None:

    from engine.ray_connect import ensure_ray
    from engine.reconcile import run_reconcile
    from engine.reconcile_report import summary
    from engine.snapshot import run_snapshot
    from engine.target import ensure_state

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--damage", type=float, default=0.001)
    p.add_argument("--config", type=Path, default=Path("examples/pipeline.local.yaml"))
    args = p.parse_args()
    log.configure("WARNING")
    cfg = load_config(args.config)
    table = TableConfig(keyspace=KS, table=TABLE, target_schema="bench", target_table=TARGET)
    cluster, session = cql.connect(cfg.cassandra)
    conn = psycopg2.connect(**cfg.postgres.connect_kwargs())
    try:
        ensure_state(conn)
        load_source(session, args.rows)
        fresh_pg_table(conn, TARGET, "")
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = 'bench' AND target_table = %s", (TARGET,))
        ensure_ray()
        snap = run_snapshot(cfg, table)
        assert snap.ok and snap.rows == args.rows, snap
        read_rows, read_s = snapshot_read_rate(cfg, table)
        assert read_rows == args.rows, read_rows
        clean = run_reconcile(cfg, table)
        assert clean.drift == 0, summary(clean)
        print(summary(clean))
        expected = damage(conn, args.rows, args.damage)
        drift = run_reconcile(cfg, table)
        print(summary(drift))
        repaired = run_reconcile(cfg, table, repair=True)
        print(summary(repaired))
        after = run_reconcile(cfg, table)
        print(summary(after))
    finally:
        cluster.shutdown()
        conn.close()
    read_rate = read_rows / read_s
    out = {
        "rows": args.rows,
        "snapshot_read_rows_per_s": round(read_rate),
        "clean_rows_per_s": round(clean.rows_per_s),
        "drift_rows_per_s": round(drift.rows_per_s),
        "drift_compare_rows_per_s": round(drift.rows_compared / drift.compare_seconds),
        "ratio_clean_vs_snapshot_read": round(clean.rows_per_s / read_rate, 2),
        "ratio_drift_vs_snapshot_read": round(drift.rows_per_s / read_rate, 2),
        "diffs_found": drift.drift,
        "diffs_expected": expected,
        "differences": drift.differences,
        "sub_ranges": clean.sub_ranges,
        "sub_ranges_differing": drift.sub_ranges_differing,
        "rows_compared_exactly": drift.rows_compared_exactly,
        "repair": {"seconds": repaired.seconds, **repaired.repaired},
        "after_repair_drift": after.drift,
        "seconds": {"snapshot_read": round(read_s, 2), "clean": clean.seconds, "drift": drift.seconds,
                    "drift_compare": drift.compare_seconds,
                    "recheck_delay": cfg.reconcile.recheck_delay.total_seconds()},
        "snapshot_rows_per_s": round(snap.rows_per_s),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f".venv/bin/python -m benchmarks.reconcile --rows {args.rows} --damage {args.damage}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reconcile.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"rows {args.rows:,}: snapshot read {read_rate:,.0f} rows/s | reconcile clean {clean.rows_per_s:,.0f} rows/s "
          f"| with {args.damage:.1%} damaged {drift.rows_per_s:,.0f} rows/s "
          f"({out['drift_compare_rows_per_s']:,} in the compare pass)")
    print(f"ratio_clean_vs_snapshot_read {out['ratio_clean_vs_snapshot_read']}  diffs_found {drift.drift} "
          f"diffs_expected {expected}  after repair {after.drift}")


if __name__ == "__main__":
    main()
