"""Snapshot a Cassandra table into PostgreSQL (Ray Data, token ranges, COPY + LWW merge).

    python -m jobs.snapshot --config pipeline.yaml --table ks.table [--splits N]
        [--consistency LEVEL] [--resume RUN_ID] [--evolve] [--concurrency N] [--no-writetime] [--output result.json]
        [--run-id UUID]

Usable as-is under ``ray job submit --working-dir . -- python -m jobs.snapshot ...`` (it
joins the job's cluster) or locally (it starts a local Ray). Ends with a summary line and
a run record in ``_c2pg.runs``.

Exit codes: 0 copied completely; 1 some rows could not be converted (see
``_c2pg.dead_letters`` for the run id) or splits failed (the message names the run to
``--resume``); 2 bad configuration or arguments (``--table``, ``--consistency``,
``--resume``), unknown keyspace/table, or a target that differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine import log
from engine.cli import add_config_argument
from jobs import _entry


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``python -m jobs.snapshot`` and ``c2pg snapshot``."""
    add_config_argument(p)  # --config FILE, else $C2PG_PIPELINE_CONFIG
    p.add_argument("--table", required=True, metavar="KEYSPACE.TABLE",
                   help="the Cassandra table to copy; its target is the pipeline's entry for it, "
                        "else the same name in postgres.schema")
    p.add_argument("--splits", type=int, metavar="N", help="number of token-range splits (default: by size)")
    p.add_argument("--consistency", metavar="LEVEL",
                   help="read consistency, e.g. LOCAL_QUORUM or ONE (default: snapshot.consistency)")
    p.add_argument("--resume", metavar="RUN_ID", help="redo only the unfinished splits of that run")
    p.add_argument("--evolve", action="store_true", help="add columns missing in an existing target")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="max concurrent read/write tasks (default: Ray Data decides)")
    p.add_argument("--no-writetime", action="store_true",
                   help="first load of a new target only: skip reading write times; every cell is stamped "
                        "with the snapshot's start (docs/snapshot.md says when that is sound)")
    p.add_argument("--output", type=Path, metavar="FILE", help="write the result as JSON here too")
    p.add_argument("--run-id", metavar="UUID", help="the new run's id, chosen by the caller: the Serve app "
                                                    "returns it before the job starts (default: a new one)")


def run(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.snapshot import find_table, run_snapshot

    cfg = load_config(args.config)
    log.bind(pipeline=cfg.name, table=args.table)
    result = run_snapshot(cfg, find_table(cfg, args.table), splits=args.splits,
                          consistency=args.consistency, resume=args.resume, evolve=args.evolve,
                          concurrency=args.concurrency, run_id=getattr(args, "run_id", None),
                          write_times=not getattr(args, "no_writetime", False))
    summary = result.as_dict()
    print(f"snapshot {result.table} → {result.target}: {result.rows} rows, "
          f"{result.bytes / 1e6:.1f} MB, {result.seconds:.1f} s, {result.rows_per_s:,.0f} rows/s, "
          f"{result.splits_done}/{result.splits} splits, {result.retries} retries, "
          f"{result.dead_letters} dead letters, mode {result.mode}, run {result.run_id}")
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2) + "\n")
    if result.dead_letters:
        print(f"snapshot: {result.dead_letters} row(s) could not be copied; see "
              f"SELECT * FROM _c2pg.dead_letters WHERE run_id = '{result.run_id}'", file=sys.stderr)
    if result.splits_done < result.splits:
        print(f"snapshot: {result.splits - result.splits_done} split(s) unfinished; "
              f"rerun with --resume {result.run_id}", file=sys.stderr)
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    return _entry.main("snapshot", __doc__ or "", add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
