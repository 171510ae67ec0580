"""Reconcile a PostgreSQL target with its Cassandra table: digests by token range, exact
comparison where they differ, re-check of rows written meanwhile, optional LWW repair.

    python -m jobs.reconcile --config pipeline.yaml --table ks.table [--repair] [--splits N]
        [--consistency LEVEL] [--concurrency N] [--output report.json] [--html drift.html]
        [--run-id UUID] [--fail-on-drift]

Usable as-is under ``ray job submit --working-dir . -- python -m jobs.reconcile ...`` (it
joins the job's cluster) or locally (it starts a local Ray). Prints a progress line while
it runs and a summary at the end; the run, its per-range progress and every difference are
in ``_c2pg.runs``, ``_c2pg.run_splits`` and ``_c2pg.reconcile_diffs``. When drift is found
a page with the drift per token range is written (``--html``, default
``c2pg-reconcile-<run>.html``).

Exit codes: 0 the run completed (with or without drift); 3 with ``--fail-on-drift`` when
drift is left: any drift without ``--repair``, any key the re-read after the repair still
finds different with it ("not repaired"); 1 the run failed (recorded as failed); 2 bad
configuration or arguments, unknown table, or no target yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine import log
from engine.cli import add_config_argument
from jobs import _entry

DRIFT_EXIT = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``python -m jobs.reconcile`` and ``c2pg reconcile``."""
    add_config_argument(p)  # --config FILE, else $C2PG_PIPELINE_CONFIG
    p.add_argument("--table", required=True, metavar="KEYSPACE.TABLE",
                   help="the Cassandra table to compare with its PostgreSQL target")
    p.add_argument("--repair", action="store_true", default=None,
                   help="repair the drift found (default: reconcile.repair)")
    p.add_argument("--splits", type=int, metavar="N", help="number of token-range splits (default: by size)")
    p.add_argument("--consistency", metavar="LEVEL",
                   help="read consistency (default: reconcile.consistency, then snapshot's)")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="max concurrent compare tasks (default: the cluster's CPUs / snapshot.task_cpus)")
    p.add_argument("--output", type=Path, metavar="FILE", help="write the report as JSON here too")
    p.add_argument("--html", type=Path, metavar="FILE",
                   help="where to write the drift page when drift is found "
                        "(default: c2pg-reconcile-<run>.html in $C2PG_REPORT_DIR, else here)")
    p.add_argument("--run-id", metavar="UUID",
                   help="the new run's id, chosen by the caller such as the Serve app (default: a new one)")
    p.add_argument("--fail-on-drift", action="store_true", help=f"exit {DRIFT_EXIT} when unrepaired drift remains")


def run(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.reconcile import find_table, run_reconcile
    from engine.reconcile_report import summary

    cfg = load_config(args.config)
    log.bind(pipeline=cfg.name, table=args.table)
    result = run_reconcile(cfg, find_table(cfg, args.table), repair=args.repair, splits=args.splits,
                           consistency=args.consistency, run_id=args.run_id, concurrency=args.concurrency,
                           html_path=str(args.html) if args.html else None)
    print(summary(result))
    if result.report_html:
        print(f"reconcile: drift per token range: {result.report_html}")
    if args.output:
        args.output.write_text(json.dumps(result.stats(), indent=2, default=str) + "\n")
    # Drift left behind: all of it without --repair; with it, what the re-read after the
    # repair still finds (future write times included, as any drift).
    return DRIFT_EXIT if args.fail_on_drift and result.unrepaired > 0 else 0


def main(argv: list[str] | None = None) -> int:
    return _entry.main("reconcile", __doc__ or "", add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
