"""``c2pg``: the command line. Parses arguments, configures logging, maps errors to exit codes.

Exit codes: 0 success, 1 failure, 2 bad configuration or arguments, 3 local stack failure.
Every subcommand's work lives in the library; this module only wires it to the terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engine import log
from engine.errors import C2pgError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    log.configure(args.log_level)
    try:
        return int(args.func(args) or 0)
    except C2pgError as exc:
        print(f"c2pg: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c2pg", description=__doc__.splitlines()[0])
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    stack = sub.add_parser("stack", help="the local stack of real servers").add_subparsers(
        required=True, metavar="ACTION")
    up = stack.add_parser("up", help="install (cached), start and wait for the servers")
    up.add_argument("services", nargs="*", help="default: all")
    up.set_defaults(func=_stack_up)
    down = stack.add_parser("down", help="stop the servers this stack started")
    down.add_argument("services", nargs="*")
    down.set_defaults(func=_stack_down)
    st = stack.add_parser("status", help="each service with port, pid, health, memory")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_stack_status)
    lg = stack.add_parser("logs", help="print a service's log (or the list of logs)")
    lg.add_argument("service", nargs="?")
    lg.add_argument("-n", "--lines", type=int, default=50)
    lg.add_argument("-f", "--follow", action="store_true")
    lg.set_defaults(func=_stack_logs)
    env = stack.add_parser("env", help="print shell exports for the stack (VAULT_ADDR, ...)")
    env.set_defaults(func=_stack_env)

    cfg = sub.add_parser("config", help="pipeline configuration").add_subparsers(
        required=True, metavar="ACTION")
    check = cfg.add_parser("check", help="validate a pipeline file; print it with secrets masked")
    check.add_argument("file", type=Path)
    check.add_argument("--no-secrets", action="store_true",
                       help="validate without resolving secrets (no Vault round trip)")
    check.set_defaults(func=_config_check)

    from jobs import snapshot as snapshot_job

    snap = sub.add_parser("snapshot", help="copy a Cassandra table into PostgreSQL (Ray Data)")
    snapshot_job.add_arguments(snap)
    snap.set_defaults(func=snapshot_job.run)

    from jobs import reconcile as reconcile_job

    rec = sub.add_parser("reconcile", help="prove PostgreSQL equals Cassandra by token range; --repair drift")
    reconcile_job.add_arguments(rec)
    rec.set_defaults(func=reconcile_job.run)

    sync = sub.add_parser("sync", help="continuous sync (Ray actors)").add_subparsers(
        required=True, metavar="ACTION")
    for action, help_text in (("start", "start the pipeline's supervisor (detached) and return"),
                              ("stop", "drain the workers and remove the supervisor"),
                              ("status", "per partition: offset, lag, last write applied, events/s"),
                              ("pause", "stop applying (the whole pipeline, or --table KS.TABLE)"),
                              ("resume", "apply again")):
        sp = sync.add_parser(action, help=help_text)
        sp.add_argument("--config", type=Path, required=True)
        if action in ("pause", "resume"):
            sp.add_argument("--table", help="KEYSPACE.TABLE (default: every table)")
        if action == "status":
            sp.add_argument("--json", action="store_true")
        sp.set_defaults(func=_sync, action=action)

    dlq = sub.add_parser("dlq", help="dead letters: events and rows c2pg could not apply").add_subparsers(
        required=True, metavar="ACTION")
    dl = dlq.add_parser("list", help="newest first")
    dl.add_argument("--config", type=Path, required=True)
    dl.add_argument("--table", help="KEYSPACE.TABLE")
    dl.add_argument("--origin", choices=["sync", "snapshot"])
    dl.add_argument("--limit", type=int, default=50)
    dl.add_argument("--all", action="store_true", help="include replayed ones")
    dl.set_defaults(func=_dlq, action="list")
    ds = dlq.add_parser("show", help="one dead letter with its raw key and value")
    ds.add_argument("--config", type=Path, required=True)
    ds.add_argument("id", type=int)
    ds.set_defaults(func=_dlq, action="show")
    dr = dlq.add_parser("replay", help="apply sync dead letters again through the sync path")
    dr.add_argument("--config", type=Path, required=True)
    dr.add_argument("ids", type=int, nargs="*", help="default: every unreplayed one of the pipeline")
    dr.set_defaults(func=_dlq, action="replay")

    hl = sub.add_parser("health", help="check every component a pipeline uses")
    hl.add_argument("--config", type=Path, required=True)
    hl.add_argument("--json", action="store_true")
    hl.add_argument("--sync", action="store_true", help="also check the pipeline's sync supervisor "
                                                        "(joins the Ray cluster: RAY_ADDRESS or the stack's)")
    hl.set_defaults(func=_health)
    return p


# --- stack ------------------------------------------------------------------------------


def _stack(args: argparse.Namespace):
    from engine.stack.launcher import Stack

    return Stack()


def _stack_up(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    rows = _stack(args).up(args.services or None, on_event=lambda m: print(f"  {m}", flush=True))
    _print_status(rows)
    print(f"stack up in {time.monotonic() - t0:.1f}s")
    return 0 if all(r.healthy for r in rows) else 1


def _stack_down(args: argparse.Namespace) -> int:
    _stack(args).down(args.services or None, on_event=lambda m: print(f"  {m}", flush=True))
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    rows = _stack(args).status()
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        _print_status(rows)
    return 0 if all(r.healthy for r in rows) else 1


def _print_status(rows) -> None:
    print(f"{'SERVICE':<10} {'PORT':>6} {'PID':>8} {'RSS MB':>8}  {'HEALTH':<9} DETAIL")
    for r in rows:
        print(f"{r.name:<10} {r.port:>6} {r.pid or '-':>8} {r.rss_mb or '-':>8}  "
              f"{'healthy' if r.healthy else 'DOWN':<9} {r.detail}")


def _stack_logs(args: argparse.Namespace) -> int:
    stack = _stack(args)
    if not args.service:
        for name in stack.services:
            print(f"{name:<10} {stack.log_path(name)}")
        return 0
    path = stack.log_path(args.service)
    if not path.exists():
        print(f"c2pg: no log yet at {path}", file=sys.stderr)
        return 1
    lines = path.read_text(errors="replace").splitlines()
    print("\n".join(lines[-args.lines:]))
    if args.follow:
        with open(path, errors="replace") as fh:
            fh.seek(0, 2)
            while True:
                line = fh.readline()
                if line:
                    print(line, end="", flush=True)
                else:
                    time.sleep(0.3)
    return 0


def _stack_env(args: argparse.Namespace) -> int:
    from engine.stack import versions as v

    stack = _stack(args)
    vault = stack.services["vault"]
    print(f"export VAULT_ADDR=http://{v.HOST}:{vault.port}")
    print(f"export VAULT_TOKEN={vault.root_token}")
    print(f"export C2PG_STACK_DIR={stack.paths.root}")
    ray = stack.services["ray"]
    # Drivers (ray.init, python -m jobs.*) connect to the GCS; `ray job submit` to the Jobs API.
    print(f"export RAY_ADDRESS={ray.gcs_address}")
    print(f"export RAY_API_SERVER_ADDRESS={ray.dashboard_url}")
    print("export RAY_AUTH_MODE=token")
    return 0


# --- sync -------------------------------------------------------------------------------


def _sync(args: argparse.Namespace) -> int:
    import ray

    from engine.config import load_config
    from engine.ray_connect import ensure_ray
    from engine.sync_supervisor import find, get_or_start
    from jobs.sync import progress

    cfg = load_config(args.config)
    ensure_ray(persistent=True, log_to_driver=False)
    if args.action == "start":
        sup = get_or_start(cfg)
        ray.get(sup.ping.remote())
        print(f"sync {cfg.name}: supervisor running ({len(cfg.tables)} table(s), {cfg.sync.workers} worker(s))")
        return 0
    sup = find(cfg.name)
    if sup is None:
        print(f"c2pg: no sync running for pipeline {cfg.name!r} (c2pg sync start --config ...)", file=sys.stderr)
        return 1
    if args.action == "stop":
        ray.get(sup.stop.remote(), timeout=120)
        ray.kill(sup, no_restart=True)
        print(f"sync {cfg.name}: stopped; offsets committed")
    elif args.action in ("pause", "resume"):
        ray.get(getattr(sup, args.action).remote(args.table))
        print(f"sync {cfg.name}: {args.action}d {args.table or 'every table'}")
    else:
        status = ray.get(sup.status.remote(), timeout=30)
        if args.json:
            print(json.dumps(status, indent=2, default=str))
            return 0
        print(progress(status)[2])
        print(f"{'WORKER':<7} {'STATE':<10} {'TABLE':<28} {'PART':>4} {'OFFSET':>9} {'LAG':>7} "
              f"{'EVENTS/S':>9}  LAST WRITE APPLIED")
        for w in status["workers"]:
            for p in w.get("partitions", []):
                ts = p.get("last_write_ts_us")
                last = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts / 1e6)) if ts else "-"
                print(f"{w['worker']:<7} {w['state']:<10} {p.get('table', p['topic']):<28} {p['partition']:>4} "
                      f"{p.get('offset', '-')!s:>9} {p.get('lag', '-')!s:>7} "
                      f"{p.get('events_per_s', 0):>9}  {last}")
            if w.get("error"):
                print(f"        error: {w['error']}")
    return 0


# --- dead letters -------------------------------------------------------------------------


def _dlq(args: argparse.Namespace) -> int:
    import psycopg2

    from engine import cql, dlq
    from engine.config import load_config

    cfg = load_config(args.config)
    conn = psycopg2.connect(**cfg.postgres.connect_kwargs(application_name="c2pg-dlq"))
    try:
        if args.action == "list":
            rows = dlq.list_dead_letters(conn, cfg, origin=args.origin, table=args.table, limit=args.limit,
                                         include_replayed=args.all)
            print(f"{'ID':>6} {'ORIGIN':<8} {'TABLE':<28} {'WHERE':<26} {'WHEN':<20} ERROR")
            for r in rows:
                where = (f"{r.get('topic')}/{r.get('kafka_partition')}@{r.get('kafka_offset')}" if r.get("topic")
                         else (r.get("row_key") or "-"))
                when = r["created_at"].strftime("%Y-%m-%d %H:%M:%S") if r.get("created_at") else "-"
                print(f"{r['id']:>6} {r['origin']:<8} {r.get('keyspace', '')}.{r.get('source_table', ''):<20} "
                      f"{where[:26]:<26} {when:<20} {r['error_class']}: {r['error'][:80]}")
        elif args.action == "show":
            print(json.dumps(dlq.show(conn, args.id), indent=2, default=str))
        else:
            cluster, session = cql.connect(cfg.cassandra)
            try:
                result = dlq.replay(conn, cfg, args.ids or None, cql_session=session)
            finally:
                cluster.shutdown()
            print(f"replayed {len(result.replayed)}, failed again {len(result.failed)}, skipped {len(result.skipped)}")
            for i, why in result.failed:
                print(f"  {i}: failed again: {why}")
            for i, why in result.skipped:
                print(f"  {i}: skipped: {why}")
            return 0 if not result.failed else 1
    finally:
        conn.close()
    return 0


# --- config / health --------------------------------------------------------------------


def _config_check(args: argparse.Namespace) -> int:
    from engine.config import load_config

    cfg = load_config(args.file, resolve_secrets=not args.no_secrets)
    print(cfg.masked_yaml(), end="")
    print(f"# {args.file}: valid" + ("" if args.no_secrets else ", every secret resolved"),
          file=sys.stderr)
    return 0


def _health(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.health import pipeline_checks, run_checks

    cfg = load_config(args.config)
    if args.sync:
        from engine.ray_connect import ensure_ray

        ensure_ray(persistent=True, log_to_driver=False)
    results = run_checks(pipeline_checks(cfg, sync=args.sync), timeout_s=6)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            state = "ok" if r.ok else "DOWN"
            print(f"{r.name:<16} {state:<5} {r.latency_ms:>8.1f} ms  {r.detail or r.error}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
