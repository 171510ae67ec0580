"""``c2pg``: the command line. Parses arguments, configures logging, maps errors to exit codes.

Exit codes: 0 success, 1 failure, 2 bad configuration or arguments, 3 local stack failure.
Every subcommand's work lives in the library; this module only wires it to the terminal.
What a user reads in ``c2pg … --help`` is written in :func:`build_parser`; the jobs'
``add_arguments`` define the arguments ``c2pg snapshot``/``reconcile`` share with ``python -m
jobs.…``, and every pipeline-file argument comes from :func:`add_config_argument`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine import log
from engine.errors import C2pgError

PIPELINE_ENV = "C2PG_PIPELINE_CONFIG"
# The default of every pipeline-file argument. argparse passes a string default through the
# argument's type when the argument is not given, once parsing is done: that is where the
# variable is read (so it is the environment at parse time, not at import time) or its
# absence reported. A literal "$C2PG_PIPELINE_CONFIG" (an unexpanded pod argument) reads it too.
_FROM_ENV = f"${PIPELINE_ENV}"
EXAMPLE = "examples/pipeline.local.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.configure(args.log_level)
    try:
        return int(args.func(args) or 0)
    except C2pgError as exc:
        print(f"c2pg: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def add_config_argument(p: argparse.ArgumentParser, name: str = "--config") -> None:
    """Add the pipeline file: ``--config FILE`` (or an optional positional ``name``).

    Callers: this module and the jobs' ``add_arguments``, so ``c2pg …`` and ``python -m
    jobs.…`` agree. The default is ``$C2PG_PIPELINE_CONFIG`` (the Kubernetes pods export
    it); with neither, parsing fails with exit code 2 and a message naming both.
    """
    how = f"{name} FILE" if name.startswith("-") else "FILE"

    def pipeline_file(text: str) -> Path:
        if text == _FROM_ENV:
            text = os.environ.get(PIPELINE_ENV, "")
        if not text:
            raise argparse.ArgumentTypeError(f"no pipeline file: pass {how} or set {PIPELINE_ENV}")
        return Path(text)

    p.add_argument(name, type=pipeline_file, default=_FROM_ENV, nargs=None if name.startswith("-") else "?",
                   metavar="FILE", help=f"the pipeline YAML (default: ${PIPELINE_ENV})")


# --- help text ----------------------------------------------------------------------------


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples keep their line breaks; an option's default follows its
    help unless the help already says it or there is nothing to say (no default, a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _prose(text: str) -> str:
    """Paragraphs (separated by a blank line) wrapped to a terminal's width."""
    return "\n\n".join(textwrap.fill(para, 78) for para in text.split("\n\n"))


def _examples(*commands: str) -> str:
    """An epilog: "examples:" then one indented command a line, trailing "# why" aligned."""
    rows = [c.partition("  # ") for c in commands]
    width = max((len(cmd) for cmd, sep, _ in rows if sep), default=0)
    lines = [f"  {cmd:<{width}}  # {why}" if sep else f"  {cmd}" for cmd, sep, why in rows]
    return ("examples:\n" if len(lines) > 1 else "example:\n") + "\n".join(lines)


def _command(sub, name: str, summary: str, description: str, *examples: str) -> argparse.ArgumentParser:
    """A (sub-)command: ``summary`` is its line in the parent's list, ``description`` says
    what it does and prints, ``examples`` are complete command lines."""
    return sub.add_parser(name, help=summary, description=_prose(description), epilog=_examples(*examples),
                          formatter_class=_HelpFormatter)


def _actions(p: argparse.ArgumentParser, what: str):
    return p.add_subparsers(required=True, metavar="ACTION", title="actions",
                            help=f"{what} (each has its own --help)")


# --- the parser -----------------------------------------------------------------------------

DESCRIPTION = (
    "c2pg keeps PostgreSQL tables equal to Cassandra tables, on Ray. `snapshot` copies a table "
    "once (Ray Data, by token range); `sync` then applies the Debezium change stream from Kafka "
    "continuously (Ray actors, last write wins); `reconcile` proves both sides equal by token "
    "range and repairs the drift it finds; `dlq` shows and replays what could not be applied; "
    "`health` checks every server a pipeline uses. `stack` runs a local stack of the real "
    "servers (Cassandra, Debezium, Kafka, PostgreSQL, OpenBao, Apicurio, Ray) for development "
    "and tests.\n\n"
    "A pipeline file (YAML, see `c2pg config check`) names the source, the change stream, the "
    "target and the tables; commands take it as --config FILE or from $C2PG_PIPELINE_CONFIG.\n\n"
    "Exit codes: 0 success, 1 failure, 2 bad configuration or arguments, 3 a local stack "
    "failure (or, with reconcile --fail-on-drift, drift left).")


def build_parser() -> argparse.ArgumentParser:
    """The whole ``c2pg`` command tree, with the help each command shows."""
    p = argparse.ArgumentParser(
        prog="c2pg", description=_prose(DESCRIPTION), formatter_class=_HelpFormatter, epilog=_examples(
            "c2pg stack up  # start the local stack",
            f"c2pg config check {EXAMPLE}",
            f"c2pg snapshot --config {EXAMPLE} --table demo.users",
            f"c2pg sync start --config {EXAMPLE}",
            f"c2pg sync status --config {EXAMPLE}",
            f"c2pg reconcile --config {EXAMPLE} --table demo.users --repair",
            "c2pg sync --help  # the help of a command"))
    p.add_argument("--log-level", default="INFO", metavar="LEVEL",
                   help="DEBUG, INFO, WARNING or ERROR; C2PG_LOG_LEVEL overrides it")
    sub = p.add_subparsers(required=True, metavar="COMMAND", title="commands",
                           help="what to do (each has its own --help)")
    _add_stack(sub)
    _add_config(sub)
    _add_snapshot_and_reconcile(sub)
    _add_sync(sub)
    _add_dlq(sub)
    _add_health(sub)
    return p


_parser = build_parser  # the name tests/unit/test_docs_operations.py calls


def _add_stack(sub) -> None:
    services = "postgres, vault, kafka, cassandra, registry, debezium, ray"
    stack = _actions(_command(
        sub, "stack", "the local stack of real servers",
        "Run the local stack: real servers on 127.0.0.1, without Docker: PostgreSQL, OpenBao "
        "(Vault), Kafka, Cassandra, Apicurio Registry, the Debezium Cassandra connector and a "
        "Ray head. The first `up` installs them into .stack/ (or $C2PG_STACK_DIR); later runs "
        "start from that cache. The demo, the tests and CI use it.",
        "c2pg stack up", "c2pg stack status", "c2pg stack down"), "what to do with the stack")

    up = _command(
        stack, "up", "install (cached), start and wait for the servers",
        "Install (the first time; cached), start and wait until each server answers a real "
        "health check, then print the status table. Named services start with the services "
        "they depend on; those already running are left as they are.\n\n"
        "Exit codes: 0 every service healthy, 1 some not healthy, 3 a service could not be "
        "installed or started (the message names its log file).",
        "c2pg stack up  # every service",
        "c2pg stack up debezium  # and cassandra and kafka, which it needs",
        "c2pg stack up --tls  # TLS mode (kept until --no-tls)",
        "c2pg stack up --ray-nodes 2  # the Ray head and one Ray worker node beside it")
    up.add_argument("services", nargs="*", metavar="SERVICE", help=f"{services} (default: all)")
    up.add_argument("--ray-nodes", type=int, default=None, metavar="N",
                    help="Ray nodes to run when ray is brought up, the head included: N-1 worker nodes "
                         "beside it, each its own raylet, object store and temp dir, on 127.0.0.1 "
                         "(default: as many as run now; 1, the head alone, on a new stack; "
                         "docs/local-stack.md)")
    mode = up.add_mutually_exclusive_group()
    mode.add_argument("--tls", dest="tls", action="store_true", default=None,
                      help="TLS mode, kept for later `up`s: certificates in .stack/tls/, PostgreSQL "
                           "ssl=on, Kafka SASL_SSL on 9094, Cassandra client encryption and logins "
                           "(docs/local-stack.md)")
    mode.add_argument("--no-tls", dest="tls", action="store_false", help="leave TLS mode")
    up.set_defaults(func=_stack_up)

    down = _command(
        stack, "down", "stop the servers this stack started",
        "Stop the servers this stack started, in reverse start order (SIGTERM, then SIGKILL). A "
        "named service is stopped alone, not the services that depend on it. Processes the "
        "stack did not start are left alone.",
        "c2pg stack down", "c2pg stack down debezium  # restart it with: c2pg stack up debezium")
    down.add_argument("services", nargs="*", metavar="SERVICE", help=f"{services} (default: all)")
    down.set_defaults(func=_stack_down)

    st = _command(
        stack, "status", "each service with port, pid, health, memory",
        "Print each service with its port, pid, resident memory and the result of a real "
        "health check (a query, a metadata request or an HTTP probe, not just an open port), "
        "then each Ray worker node (`up --ray-nodes N`) with its raylet's pid and whether the "
        "head lists it alive.\n\n"
        "Exit codes: 0 every service healthy, 1 otherwise.",
        "c2pg stack status", "c2pg stack status --json")
    st.add_argument("--json", action="store_true", help="print the services as a JSON list")
    st.set_defaults(func=_stack_status)

    lg = _command(
        stack, "logs", "print a service's log (or the list of logs)",
        "Print the last lines of a service's log file; without a service, print each service "
        "with the path of its log file.\n\n"
        "Exit codes: 0, 1 the service has written no log yet.",
        "c2pg stack logs  # where each log is", "c2pg stack logs kafka -n 200 -f")
    lg.add_argument("service", nargs="?", metavar="SERVICE", help=f"one of {services} (default: list the logs)")
    lg.add_argument("-n", "--lines", type=int, default=50, metavar="N", help="how many lines from the end")
    lg.add_argument("-f", "--follow", action="store_true", help="then print lines as they are written (Ctrl-C stops)")
    lg.set_defaults(func=_stack_logs)

    env = _command(
        stack, "env", "print shell exports for the stack (VAULT_ADDR, ...)",
        "Print the shell exports that point clients at the stack: VAULT_ADDR and VAULT_TOKEN "
        "(the dev server's root token), C2PG_STACK_DIR, RAY_ADDRESS (the GCS: drivers and "
        "python -m jobs.*), RAY_API_SERVER_ADDRESS (the Jobs API: ray job submit), "
        "RAY_AUTH_TOKEN_PATH (the stack's own Ray token) and RAY_AUTH_MODE=token.",
        "c2pg stack env", 'eval "$(c2pg stack env)"  # in this shell')
    env.set_defaults(func=_stack_env)


def _add_config(sub) -> None:
    cfg = _actions(_command(
        sub, "config", "pipeline configuration",
        "Pipeline files. A pipeline file (YAML) names the Cassandra source, the Kafka topics "
        "of the Debezium change stream, the PostgreSQL target, the tables to replicate and the "
        "settings of snapshot, sync and reconcile. Any setting can be overridden from the "
        "environment (C2PG__SECTION__KEY=value); secrets are references (vault:PATH#KEY, "
        "env:NAME, file:PATH).",
        f"c2pg config check {EXAMPLE}"), "what to do with a pipeline file")

    check = _command(
        cfg, "check", "validate a pipeline file; print it with secrets masked",
        "Validate a pipeline file and resolve its secrets, then print it as YAML with the "
        "secrets masked. Every problem is listed at once on stderr. Then ask Cassandra which "
        "tables the Debezium connector will not capture (cdc off, counters, a vector column "
        "anywhere in the cluster, and with capture.connector_log tables the running connector "
        "never loaded): each is named on stderr with the reason and the fix.\n\n"
        "Exit codes: 0 valid, 1 a configured table whose changes will not be captured, 2 "
        "invalid or a secret that cannot be resolved.",
        f"c2pg config check {EXAMPLE}",
        f"c2pg config check --no-secrets {EXAMPLE}  # without asking Vault")
    add_config_argument(check, "file")
    check.add_argument("--no-secrets", action="store_true",
                       help="validate without resolving secrets (no Vault round trip, no capture check)")
    check.add_argument("--offline", action="store_true",
                       help="do not ask Cassandra which tables the connector will not capture")
    check.set_defaults(func=_config_check)


def _add_snapshot_and_reconcile(sub) -> None:
    from jobs import reconcile as reconcile_job
    from jobs import snapshot as snapshot_job

    snap = _command(
        sub, "snapshot", "copy a Cassandra table into PostgreSQL (Ray Data)",
        "Copy a Cassandra table into PostgreSQL once, in parallel with Ray Data: the token "
        "ring is cut into splits, each read from Cassandra and written with COPY, then merged "
        "into the target by last write wins, so a snapshot may run while sync applies "
        "changes. The target table is created when missing. Prints a summary line; the run "
        "and its splits are recorded in _c2pg.runs and _c2pg.run_splits. The same job runs "
        "as `python -m jobs.snapshot` (ray job submit).\n\n"
        "Exit codes: 0 copied completely; 1 rows that could not be converted (in "
        "_c2pg.dead_letters) or unfinished splits (the message names the run to --resume); 2 "
        "bad configuration or arguments, or a target that differs from the table.",
        f"c2pg snapshot --config {EXAMPLE} --table demo.users",
        f"c2pg snapshot --config {EXAMPLE} --table demo.users --splits 64 --consistency ONE",
        f"c2pg snapshot --config {EXAMPLE} --table demo.users --resume 6f1d2c3b-8e4a-4f0e-9b1a-2c3d4e5f6a7b")
    snapshot_job.add_arguments(snap)
    snap.set_defaults(func=snapshot_job.run)

    rec = _command(
        sub, "reconcile", "prove PostgreSQL equals Cassandra by token range; --repair drift",
        "Prove a PostgreSQL target equal to its Cassandra table: both sides are digested by "
        "token range, rows are compared only where the digests differ, and each difference is "
        "read again so rows written meanwhile are not reported as drift. With --repair the "
        "drift is repaired through the last-write-wins merge. Prints progress and a summary; "
        "every difference is in _c2pg.reconcile_diffs, and a page of the drift per token "
        "range is written when there is drift. The same job runs as `python -m "
        "jobs.reconcile`.\n\n"
        f"Exit codes: 0 the run completed (drift or not); 1 the run failed; 2 bad "
        f"configuration or arguments, or no target yet; {reconcile_job.DRIFT_EXIT} with "
        "--fail-on-drift, drift left unrepaired.",
        f"c2pg reconcile --config {EXAMPLE} --table demo.users",
        f"c2pg reconcile --config {EXAMPLE} --table demo.users --repair",
        f"c2pg reconcile --config {EXAMPLE} --table demo.users --fail-on-drift --output report.json")
    reconcile_job.add_arguments(rec)
    rec.set_defaults(func=reconcile_job.run)


def _add_sync(sub) -> None:
    sync = _actions(_command(
        sub, "sync", "continuous sync (Ray actors)",
        "Continuous sync: a detached supervisor actor on the Ray cluster runs the pipeline's "
        "workers; each consumes the Debezium change events of its Kafka partitions, keeps the "
        "last write per key and applies them to PostgreSQL, committing offsets only once the "
        "write is durable. These commands join the cluster at $RAY_ADDRESS, else the local "
        "stack's, and find the supervisor by the pipeline's name.",
        f"c2pg sync start --config {EXAMPLE}", f"c2pg sync status --config {EXAMPLE}",
        f"c2pg sync stop --config {EXAMPLE}"), "what to do with the pipeline's sync")
    no_sync = "1 no sync is running for the pipeline"

    start = _command(
        sync, "start", "start the pipeline's supervisor (detached) and return",
        "Start the pipeline's supervisor, or find the running one, wait for its first round "
        "(every table's target and c2pg's state of it checked, partitions assigned; at most "
        "60 s) and return: it keeps running on the cluster (python -m jobs.sync also follows "
        "its progress). Prints the number of tables and workers, and each table refused "
        "because c2pg's state of it does not match the target, the Cassandra table or the "
        "topic, with the fix (the other tables sync).\n\n"
        "Exit codes: 0 running, 1 no round completed in time (the error is printed), 2 bad "
        "configuration, no Ray cluster to run on, or a table refused.",
        f"c2pg sync start --config {EXAMPLE}",
        f"C2PG_PIPELINE_CONFIG={EXAMPLE} c2pg sync start  # as in the pods")
    add_config_argument(start)
    start.set_defaults(func=_sync, action="start")

    stop = _command(
        sync, "stop", "drain the workers and remove the supervisor",
        "Drain: every worker finishes its batch and commits its offsets; then the supervisor "
        "is removed. A later start resumes from those offsets.\n\n"
        f"Exit codes: 0 stopped, {no_sync}.",
        f"c2pg sync stop --config {EXAMPLE}")
    add_config_argument(stop)
    stop.set_defaults(func=_sync, action="stop")

    status = _command(
        sync, "status", "per partition: offset, lag, last write applied, events/s",
        "Print a summary line (events remaining, rate, time to catch up), then per worker and "
        "Kafka partition: state, table, offset, lag, events/s and the Cassandra write time of "
        "the last write applied.\n\n"
        f"Exit codes: 0, {no_sync}.",
        f"c2pg sync status --config {EXAMPLE}", f"c2pg sync status --config {EXAMPLE} --json")
    add_config_argument(status)
    status.add_argument("--json", action="store_true", help="print the supervisor's status as JSON")
    status.set_defaults(func=_sync, action="status")

    pause = _command(
        sync, "pause", "stop applying (the whole pipeline, or --table KS.TABLE)",
        "Stop applying change events, for every table or one. The workers keep their "
        "offsets, so nothing is skipped: resume applies from where they paused.\n\n"
        f"Exit codes: 0 paused, {no_sync}.",
        f"c2pg sync pause --config {EXAMPLE}", f"c2pg sync pause --config {EXAMPLE} --table demo.users")
    add_config_argument(pause)
    pause.add_argument("--table", metavar="KEYSPACE.TABLE", help="the table to pause (default: every table)")
    pause.set_defaults(func=_sync, action="pause")

    resume = _command(
        sync, "resume", "apply again after pause",
        "Apply change events again after a pause, for every table or one: without --table, "
        "every pause is lifted.\n\n"
        f"Exit codes: 0 resumed, {no_sync}.",
        f"c2pg sync resume --config {EXAMPLE}", f"c2pg sync resume --config {EXAMPLE} --table demo.users")
    add_config_argument(resume)
    resume.add_argument("--table", metavar="KEYSPACE.TABLE", help="the table to resume (default: every table)")
    resume.set_defaults(func=_sync, action="resume")

    heal = _command(
        sync, "heal", "reconcile every table with repair now (after a capture stall)",
        "Ask the supervisor to reconcile every table of the pipeline with repair, in the "
        "background: what to do when change capture stalled and writes may never arrive (a "
        "connector that skipped a commit-log segment). With capture.heal_after_stall the "
        "supervisor does this by itself when a stalled node recovers. The runs are recorded "
        "in _c2pg.runs; `c2pg sync status` lists them under capture.\n\n"
        "Exit codes: 0 started, 1 no sync is running, or a reconcile is already running.",
        f"c2pg sync heal --config {EXAMPLE}")
    add_config_argument(heal)
    heal.set_defaults(func=_sync, action="heal")

    keep = _command(
        sync, "keep", "keep sync running: start the supervisor again after a Ray head restart",
        "Stay in the foreground and keep the pipeline's sync running: start its supervisor "
        "whenever it is missing while its desired state is running — after the Ray head "
        "restarted (every actor is gone then), or at the keeper's own start. A watcher process "
        "joins the cluster ($RAY_ADDRESS, else the local stack's) and is started again, with a "
        "back-off of 1 s doubling to 30 s, whenever the head stops answering; each restart is "
        "logged. `c2pg sync stop` is respected: the pipeline stays stopped until `c2pg sync "
        "start`. SIGTERM or Ctrl-C stops the keeper, not sync (docs/operations.md).\n\n"
        "Exit codes: 0 stopped by a signal, 2 bad configuration.",
        f"c2pg sync keep --config {EXAMPLE}")
    add_config_argument(keep)
    keep.add_argument("--interval", type=float, default=2.0, metavar="S",
                      help="seconds between two looks at the supervisor (default 2)")
    keep.set_defaults(func=_sync_keep)


def _add_dlq(sub) -> None:
    dlq = _actions(_command(
        sub, "dlq", "dead letters: events and rows c2pg could not apply",
        "Dead letters: change events (sync) and rows (snapshot) that c2pg could not apply, "
        "kept in the target database's _c2pg.dead_letters with the error and the raw key "
        "and value. Sync does not stop for them.",
        f"c2pg dlq list --config {EXAMPLE}", f"c2pg dlq replay --config {EXAMPLE}"),
        "what to do with dead letters")

    dl = _command(
        dlq, "list", "the dead letters not replayed yet, newest first",
        "Print the pipeline's dead letters not replayed yet, newest first: id, origin, table, "
        "where (topic/partition@offset, or the row key), when, and the error.",
        f"c2pg dlq list --config {EXAMPLE}",
        f"c2pg dlq list --config {EXAMPLE} --table demo.users --origin sync --limit 10")
    add_config_argument(dl)
    dl.add_argument("--table", metavar="KEYSPACE.TABLE", help="only this table's")
    dl.add_argument("--origin", choices=["sync", "snapshot"], help="only those from sync or from snapshot")
    dl.add_argument("--limit", type=int, default=50, metavar="N", help="print at most N")
    dl.add_argument("--all", action="store_true", help="include replayed ones")
    dl.set_defaults(func=_dlq, action="list")

    ds = _command(
        dlq, "show", "one dead letter with its raw key and value",
        "Print one dead letter as JSON, with its error and its raw key and value.",
        f"c2pg dlq show --config {EXAMPLE} 42")
    add_config_argument(ds)
    ds.add_argument("id", type=int, metavar="ID", help="the dead letter's id (the ID column of dlq list)")
    ds.set_defaults(func=_dlq, action="show")

    dr = _command(
        dlq, "replay", "apply sync dead letters again through the sync path",
        "Apply sync dead letters again through the sync path, once their cause is fixed (a "
        "column type, a missing column). Kafka offsets do not move. Prints how many were "
        "replayed, failed again or were skipped, and why.\n\n"
        "Exit codes: 0 none failed again, 1 some failed again.",
        f"c2pg dlq replay --config {EXAMPLE}  # every unreplayed one", f"c2pg dlq replay --config {EXAMPLE} 42 43")
    add_config_argument(dr)
    dr.add_argument("ids", type=int, nargs="*", metavar="ID",
                    help="the dead letters to replay (default: every unreplayed one of the pipeline)")
    dr.set_defaults(func=_dlq, action="replay")


def _add_health(sub) -> None:
    hl = _command(
        sub, "health", "check every component a pipeline uses",
        "Check every component the pipeline uses, each with a real request, in parallel: "
        "PostgreSQL, Cassandra, Kafka (and the tables' topics), the schema registry and "
        "Vault when configured, change capture (the heartbeat's verdict per Cassandra node, "
        "and tables the connector will not capture), and with --sync the pipeline's sync "
        "supervisor. Prints one line per component with its latency.\n\n"
        "Exit codes: 0 every component ok, 1 some down, 2 bad configuration.",
        f"c2pg health --config {EXAMPLE}", f"c2pg health --config {EXAMPLE} --sync --json")
    add_config_argument(hl)
    hl.add_argument("--json", action="store_true", help="print the checks as a JSON list")
    hl.add_argument("--sync", action="store_true", help="also check the pipeline's sync supervisor "
                                                        "(joins the Ray cluster: RAY_ADDRESS or the stack's)")
    hl.set_defaults(func=_health)


# --- stack ------------------------------------------------------------------------------


def _stack(args: argparse.Namespace):
    from engine.stack.launcher import Stack

    return Stack()


def _stack_up(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    rows = _stack(args).up(args.services or None, on_event=lambda m: print(f"  {m}", flush=True),
                           tls=args.tls, ray_nodes=args.ray_nodes)
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
    # `ray job submit` from a shell whose HOME has no ~/.ray/auth_token needs the stack's own.
    print(f"export RAY_AUTH_TOKEN_PATH={ray.token_path}")
    print("export RAY_AUTH_MODE=token")
    return 0


# --- sync -------------------------------------------------------------------------------


def _sync_keep(args: argparse.Namespace) -> int:
    from engine.sync.keeper import keep

    return keep(str(args.config), args.interval)


@contextlib.contextmanager
def _ray_prints_to_stderr() -> Iterator[Any]:
    """Yields the real stdout, for a command whose stdout is one JSON document.

    Ray prints the cluster's error messages (a node marked dead, ...) to every driver's
    stdout, whenever they come, from threads that run until ``ray.shutdown()``: meanwhile
    ``sys.stdout`` is stderr, and a Ray this command joined is left before stdout is back
    (one that was already joined, as in a test calling :func:`main`, is left alone)."""
    def joined() -> bool:  # without importing Ray (a second) for a command that never joins it
        ray = sys.modules.get("ray")
        return ray is not None and ray.is_initialized()

    joined_before = joined()
    out, sys.stdout = sys.stdout, sys.stderr
    try:
        yield out
    finally:
        if not joined_before and joined():
            sys.modules["ray"].shutdown()
        sys.stdout = out


def _sync(args: argparse.Namespace) -> int:
    if not getattr(args, "json", False):
        return _sync_action(args, sys.stdout)
    with _ray_prints_to_stderr() as out:
        return _sync_action(args, out)


def _sync_action(args: argparse.Namespace, out) -> int:
    import ray

    from engine.config import load_config
    from engine.ray_connect import ensure_ray
    from engine.sync.supervisor import find, get_or_start, remove
    from jobs.sync import progress

    cfg = load_config(args.config)
    ensure_ray(persistent=True, log_to_driver=False)
    if args.action == "start":
        sup = get_or_start(cfg)
        ray.get(sup.ping.remote())
        code = _wait_first_round(cfg, sup)
        _print_capture_findings(cfg)
        return code
    sup = find(cfg.name)
    if sup is None:
        print(f"c2pg: no sync running for pipeline {cfg.name!r} (c2pg sync start --config ...)", file=sys.stderr)
        return 1
    if args.action == "stop":
        ray.get(sup.stop.remote(), timeout=120)
        if not remove(cfg.name, sup):
            print(f"c2pg: sync {cfg.name}: drained, but Ray still lists its supervisor after 30 s", file=sys.stderr)
            return 1
        print(f"sync {cfg.name}: stopped; offsets committed")
    elif args.action == "heal":
        answer = ray.get(sup.heal.remote("on demand (c2pg sync heal)"), timeout=30)
        if not answer["started"]:
            print(f"c2pg: {answer['detail']}", file=sys.stderr)
            return 1
        print(f"sync {cfg.name}: reconcile with repair of every table started; see c2pg sync status")
    elif args.action in ("pause", "resume"):
        ray.get(getattr(sup, args.action).remote(args.table))
        print(f"sync {cfg.name}: {args.action}d {args.table or 'every table'}")
    else:
        status = ray.get(sup.status.remote(), timeout=30)
        if args.json:
            print(json.dumps(status, indent=2, default=str), file=out, flush=True)
            return 0
        print(progress(status)[2])
        _print_sync_status(status, time.time())
        _print_refused(status)
        _print_capture(status.get("capture") or {})
    return 0


START_WAIT_S = 60.0
"""How long ``c2pg sync start`` waits for the supervisor's first completed round."""


def _wait_first_round(cfg, sup, timeout_s: float = START_WAIT_S) -> int:
    """``c2pg sync start`` after the supervisor answers: wait until its first round completed
    (:meth:`SyncSupervisor.startup`: every table judged, partitions assigned), then report.
    → 0 when every table syncs; 2 when a table was refused (each printed with its fix; the
    supervisor keeps running for the others and takes the table back once fixed); 1 when no
    round completed within ``timeout_s`` (the last round's error printed: a server down)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        st = ray.get(sup.startup.remote(), timeout=30)
        if st["rounds"] >= 1:
            break
        if time.monotonic() > deadline:
            print(f"c2pg: sync {cfg.name}: the supervisor runs, but its first round did not complete within "
                  f"{timeout_s:.0f} s" + (f": {st['error']}" if st["error"] else ""), file=sys.stderr)
            return 1
        time.sleep(0.25)
    refused = st["refused"]
    print(f"sync {cfg.name}: supervisor running ({len(cfg.tables) - len(refused)} of {len(cfg.tables)} table(s), "
          f"{cfg.sync.workers} worker(s))")
    for r in refused:
        print(f"c2pg: table {r['table']} refused: {r['error']}", file=sys.stderr)
    return 2 if refused else 0


def _print_refused(status: dict) -> None:
    """The tables ``c2pg sync status`` cannot sync, each with what does not match and the fix,
    and those not in Cassandra (yet)."""
    for r in status.get("refused") or []:
        by = f" (by {r['by']})" if r.get("by") else ""
        print(f"REFUSED {r['table']}{by} since {r.get('since') or '-'}: {r['error']}")
    for w in status.get("waiting") or []:
        print(f"WAITING {w['table']}: {w['reason']} (synced once it exists)")


def _print_capture(capture: dict) -> None:
    """The capture part of ``c2pg sync status``: each node's heartbeat, the findings, the
    reconcile runs the supervisor started."""
    if not capture:
        return
    if not capture.get("heartbeat"):
        print("capture heartbeat: off (capture.heartbeat)")
    for n in capture.get("nodes", []):
        delay = "-" if n.get("delay_s") is None else f"{n['delay_s']:.1f}s"
        transit = "-" if n.get("transit_s") is None else f"{n['transit_s']:.2f}s"
        state = n["state"].upper() if n["state"] == "stalled" else n["state"]
        print(f"capture {n.get('address') or n['node']}: {state}"
              f", newest heartbeat {delay} old (write->commit {transit}), last seen {n.get('last_seen') or '-'}"
              + (f": {n['reason']}" if n.get("reason") and n["state"] != "ok" else ""))
    if capture.get("stalled") and capture.get("cause"):
        print(f"  cause: {capture['cause']}")
    if capture.get("error"):
        print(f"capture heartbeat not written: {capture['error']}")
    for f in capture.get("findings", []):
        print(f"{f['severity']}: {f['table']}: {f['reason']}. Fix: {f['fix']}")
    for h in capture.get("heals", [])[-3:]:
        runs = ", ".join(f"{r['table']} {r.get('status')} (drift {r.get('drift', '-')}, "
                         f"not repaired {r.get('not_repaired', '-')})" for r in h.get("runs", []))
        state = "done" if h.get("finished_at") else "running"
        print(f"reconcile {state} ({h['reason']}, {h['started_at']}): {runs or '-'}")


def _print_capture_findings(cfg) -> int:
    """Print (stderr) every table whose changes will not be captured; returns the number of
    errors. Cassandra unreachable: says so and returns 0 (the config itself may be fine)."""
    from engine import capture, cql

    cluster = None
    try:
        cluster, session = cql.connect(cfg.cassandra, metadata=False)
        log_state = (capture.connector_log(cfg.capture.connector_log).update()
                     if cfg.capture.connector_log else None)
        findings = capture.find_uncapturable(session, cfg, log_state)
    except Exception as exc:  # noqa: BLE001 - advisory: Cassandra away or refusing, log unreadable
        print(f"# capture not checked ({type(exc).__name__}: {str(exc)[:200]})", file=sys.stderr)
        return 0
    finally:
        if cluster is not None:
            cluster.shutdown()
    for f in findings:
        print(f"# {f.line()}", file=sys.stderr)
    return sum(1 for f in findings if f.severity == "error")


SLOW_BATCH_S = 5.0
"""A batch in flight longer than this gets a line in ``c2pg sync status`` (a batch normally
commits in well under a second)."""


def _print_sync_status(status: dict, now_s: float) -> None:
    """The per-partition table of ``c2pg sync status`` (``now_s``: this machine's clock).

    events/s is the workers' figure over their last ``RATE_WINDOW_S``. A last write more
    than ``FUTURE_TOLERANCE_S`` after this clock — or one the worker flagged by its own
    clock — gets a remark: it is a client's wrong timestamp, not how far sync has come."""
    from engine.sync_status import describe_duration, format_write_time, in_future, node_label, seconds_ahead

    print(f"{'WORKER':<7} {'NODE':<19} {'STATE':<10} {'TABLE':<28} {'PART':>4} {'OFFSET':>9} {'LAG':>7} "
          f"{'EVENTS/S':>9}  LAST WRITE APPLIED")
    for w in status["workers"]:
        node = node_label(w.get("node_id"), w.get("node_ip"))
        for p in w.get("partitions", []):
            ts = p.get("last_write_ts_us")
            last = format_write_time(ts)
            if in_future(ts, now_s):
                last += f" (future: {describe_duration(seconds_ahead(ts, now_s))} ahead of this clock)"
            elif p.get("last_write_in_future"):
                last += " (future by the worker's clock)"
            print(f"{w['worker']:<7} {node:<19} {w['state']:<10} {p.get('table', p['topic']):<28} {p['partition']:>4} "
                  f"{p.get('offset', '-')!s:>9} {p.get('lag', '-')!s:>7} "
                  f"{p.get('events_per_s', 0):>9}  {last}")
        if w.get("error"):
            print(f"        error: {w['error']}")
        if (w.get("batch_in_flight_s") or 0) >= SLOW_BATCH_S:
            print(f"        writing one batch for {w['batch_in_flight_s']:.0f} s: PostgreSQL has not finished it "
                  "(a lock on a target table, a slow merge; see docs/troubleshooting.md)")
    for m in status.get("moves", [])[-5:]:
        print(f"moved {m['at']}: worker {m['worker']} ({', '.join(m['partitions'])}) from node "
              f"{node_label(m.get('from_node'))} to {node_label(m.get('to_node'))}: {m['reason']}")


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
    if args.no_secrets or args.offline:
        return 0
    errors = _print_capture_findings(cfg)
    if errors:
        print(f"# {errors} table(s) whose changes will not be captured (above)", file=sys.stderr)
        return 1
    return 0


def _health(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.health import pipeline_checks, run_checks

    cfg = load_config(args.config)
    with _ray_prints_to_stderr() if args.json else contextlib.nullcontext(sys.stdout) as out:
        if args.sync:
            from engine.ray_connect import ensure_ray

            ensure_ray(persistent=True, log_to_driver=False)
        results = run_checks(pipeline_checks(cfg, sync=args.sync), timeout_s=6)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2), file=out)
    else:
        for r in results:
            state = "ok" if r.ok else "DOWN"
            print(f"{r.name:<16} {state:<5} {r.latency_ms:>8.1f} ms  {r.detail or r.error}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
