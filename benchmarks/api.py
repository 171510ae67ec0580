"""Control-plane benchmark: locust against /readyz and the status route of the Serve app, per pipeline size.

    .venv/bin/python -m benchmarks.api [--tables 1,50,200] [--users 50] [--seconds 60] [--wait 0.5-1.5]
                                       [--profile-seconds 20] [--keep]

On the local stack (``c2pg stack up``), for each size N of ``--tables`` (ascending, in one run):

1. N CDC tables ``c2pg_bench_api.t0000`` … in Cassandra (only the missing ones are created;
   their change-event topics are created with 3 partitions, as Kafka's auto-creation would,
   and one row is written into each new table), and a pipeline ``bench-api`` on all N;
2. the pipeline's sync supervisor (restarted on the N tables: it creates their targets in
   PostgreSQL and spreads their partitions over its workers), and the Serve app
   (``serve_app.app.ControlPlane``) on the stack's Ray head, HTTP on 127.0.0.1, with a rate
   limit high enough not to throttle the benchmark (every locust user shares one address);
   the load starts once every table has its partitions assigned and its target;
3. ``locust --headless`` with ``--users`` users (started 10 a second; the figures cover the
   ``--seconds`` s after the last one started), each asking ``/readyz``
   and ``/v1/pipelines/bench-api/status`` with a pause of ``--wait`` s between requests; the
   CPU seconds of every process and the load average are taken around it;
4. with ``--profile-seconds``, a second, shorter load with py-spy sampling Serve's replica and
   proxy (kept apart from the measured load, whose figures it would disturb): the functions
   where their CPU goes.

At the end the supervisor, the Serve app, the tables, topics, targets and the pipeline's state
are removed (``--keep`` leaves the tables and topics for the next run); the Ray cluster stays.

Writes ``benchmarks/results/api.json``: the largest size's figures at the top
(``status_p99_ms``, ``readyz_p99_ms``, ``errors``, ...), every size under ``by_tables``, the
ratios of each size to the smallest, and the summaries of earlier runs under ``history``;
``docs/benchmarks.md`` shows the figures. Target: status and /readyz p99 < 100 ms at every
size, no errors. Everything (locust, Serve's proxy and replica, the stack) shares the
machine's cores, so the figures include the load generator's own CPU use.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
KS, PIPELINE, TARGET_SCHEMA, APP = "c2pg_bench_api", "bench-api", "bench_api", "c2pg-bench-api"
PARTITIONS = 3  # what the stack's Kafka gives an auto-created topic (num.partitions)
SUMMARY = ("date", "command", "tables", "users", "seconds", "status_p99_ms", "readyz_p99_ms", "errors",
           "serve_cpu_ms_per_request", "load_avg_1m_before", "git")


def table_name(i: int) -> str:
    return f"t{i:04d}"


def stack_dir() -> Path:
    from engine.stack.root import default_root

    return default_root()


def pipeline_file(directory: Path, tables: int) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / "pipeline.local.yaml").read_text())
    doc["pipeline"]["name"] = PIPELINE
    doc["tables"] = [{"keyspace": KS, "table": table_name(i), "target_schema": TARGET_SCHEMA}
                     for i in range(tables)]
    secrets = stack_dir() / "secrets"
    doc["vault"]["role_id"] = f"file:{secrets / 'vault-role-id'}"
    doc["capture"]["connector_log"] = str(secrets.parent / "logs" / "debezium.log")
    doc["vault"]["secret_id"] = f"file:{secrets / 'vault-secret-id'}"
    doc["api"]["rate_limit_per_minute"] = 10_000_000
    path = directory / f"bench-api-{tables}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def prepare_tables(cfg, tables: int) -> dict:
    """Tables ``t0000`` … ``t{tables-1}`` with CDC on, each with its topic and one row; only the
    missing ones are made. Returns how long each step took (creating tables is the slow part:
    one schema change each)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from engine import cql

    cluster, session = cql.connect(cfg.cassandra, metadata=False)
    timings: dict = {}
    try:
        created = not session.execute(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s", (KS,)).one()
        session.execute(f"CREATE KEYSPACE IF NOT EXISTS {KS} WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        if created:
            time.sleep(2)  # a table created in the keyspace's schema-refresh window is not captured
        have = {r.table_name for r in session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (KS,))}
        new = [table_name(i) for i in range(tables) if table_name(i) not in have]
        t0 = time.monotonic()
        for name in new:
            session.execute(f"CREATE TABLE IF NOT EXISTS {KS}.{name} (id int PRIMARY KEY, v text) WITH cdc = true",
                            timeout=60)
        timings["cassandra_tables_created"] = len(new)
        timings["cassandra_create_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        admin = AdminClient(cfg.kafka.client_conf())
        topics = [cfg.kafka.topic_for(KS, table_name(i)) for i in range(tables)]
        existing = set(admin.list_topics(timeout=30).topics)
        missing = [t for t in topics if t not in existing]
        if missing:
            futures = admin.create_topics([NewTopic(t, num_partitions=PARTITIONS, replication_factor=1)
                                           for t in missing], operation_timeout=60)
            for f in futures.values():
                f.result(timeout=120)
        timings["topics_created"] = len(missing)
        timings["topics_create_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        for f in [session.execute_async(f"INSERT INTO {KS}.{name} (id, v) VALUES (0, 'row')") for name in new]:
            f.result()
        timings["rows_written_s"] = round(time.monotonic() - t0, 1)
    finally:
        cluster.shutdown()
    return timings


def remove_tables(cfg) -> None:
    """Drop the keyspace, its topics, the targets (with their catalog rows and tombstone
    tables) and the pipeline's state."""
    from confluent_kafka.admin import AdminClient

    from engine import cql
    from engine.pg_dialect import tombstone_table_name

    cluster, session = cql.connect(cfg.cassandra, metadata=False)
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {KS}", timeout=120)
    finally:
        cluster.shutdown()
    admin = AdminClient(cfg.kafka.client_conf())
    topics = [t for t in admin.list_topics(timeout=30).topics if t.startswith(f"{cfg.kafka.topic_prefix}.{KS}.")]
    if topics:
        for f in admin.delete_topics(topics, operation_timeout=60).values():
            try:
                f.result(timeout=120)
            except Exception as exc:  # noqa: BLE001 - a topic already gone is fine
                print(f"topic not deleted: {exc}", flush=True)
    conn = _pg(cfg)
    try:
        with conn, conn.cursor() as cur:
            from psycopg2 import sql

            cur.execute("SELECT to_regclass('_c2pg.catalog') IS NOT NULL")
            if cur.fetchone()[0]:
                cur.execute("SELECT target_table, tombstone_table FROM _c2pg.catalog WHERE target_schema = %s",
                            (TARGET_SCHEMA,))
                for target, tomb in cur.fetchall():
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("_c2pg", tomb)))
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
                        sql.Identifier("_c2pg", tombstone_table_name(TARGET_SCHEMA, target))))
                cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = %s", (TARGET_SCHEMA,))
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(TARGET_SCHEMA)))
            for table in ("offsets", "sync_state", "capture"):
                if _exists(cur, table):
                    cur.execute(sql.SQL("DELETE FROM {} WHERE pipeline = %s").format(sql.Identifier("_c2pg", table)),
                                (PIPELINE,))
    finally:
        conn.close()


def _exists(cur, table: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"_c2pg.{table}",))
    return bool(cur.fetchone()[0])


def _pg(cfg):
    import psycopg2

    return psycopg2.connect(**cfg.postgres.connect_kwargs(application_name="c2pg-bench-api"))


def targets_ready(cfg, tables: int) -> int:
    conn = _pg(cfg)
    try:
        with conn, conn.cursor() as cur:
            if not _exists(cur, "catalog"):
                return 0
            cur.execute("SELECT count(*) FROM _c2pg.catalog WHERE target_schema = %s", (TARGET_SCHEMA,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SPAWN_PER_S = 10


def run_locust(url: str, token: str, users: int, seconds: int, wait: str, out_dir: Path, tag: str) -> dict:
    env = {**os.environ, "C2PG_BENCH_TOKEN": token, "C2PG_BENCH_PIPELINE": PIPELINE, "C2PG_BENCH_WAIT": wait}
    cmd = [str(Path(sys.executable).with_name("locust")), "-f", str(ROOT / "benchmarks" / "api_locustfile.py"),
           # Users start SPAWN_PER_S a second and the figures begin once all have started
           # (--reset-stats): 50 users started at once send 50 requests in the same few
           # milliseconds, a burst no dashboard or set of probes makes, which queues ~150 ms
           # and alone is 1.5 % of a minute's requests, more than the p99 allows.
           "--headless", "--users", str(users), "--spawn-rate", str(SPAWN_PER_S), "--reset-stats",
           "--run-time", f"{seconds + users / SPAWN_PER_S:.0f}s",
           "--host", url, "--csv", str(out_dir / tag), "--only-summary", "--loglevel", "WARNING",
           "--stop-timeout", "5"]
    subprocess.run(cmd, env=env, check=False, timeout=seconds + 120, stdout=subprocess.DEVNULL)  # nosec B603 - locust with the argv built above, no shell
    with open(out_dir / f"{tag}_stats.csv", newline="") as fh:
        return {r["Name"]: r for r in csv.DictReader(fh)}


def _serve_pids() -> dict[str, int]:
    out = subprocess.run(["pgrep", "-af", r"ray::(ProxyActor|ServeReplica:" + APP + ")"], capture_output=True,  # nosec B603 B607 - pgrep from PATH with a fixed pattern, no shell
                         text=True, check=False).stdout
    pids = {}
    for line in out.splitlines():
        pid, cmd = line.split(" ", 1)
        pids["proxy" if "ProxyActor" in cmd else "replica"] = int(pid)
    return pids


def serve_nice() -> int | None:
    """The niceness Ray gave Serve's processes (its workers run at 15 unless configured)."""
    pids = list(_serve_pids().values())
    return os.getpriority(os.PRIO_PROCESS, pids[0]) if pids else None


def cpu_snapshot() -> tuple[float, dict[str, float]]:
    """Busy CPU seconds of the machine, and CPU seconds per process (grouped by name), now."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = (sum(int(x) for x in fields) - int(fields[3]) - int(fields[4])) / tick
    procs: dict[str, float] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parts = stat.rsplit(")", 1)[1].split()
        procs[f"{pid} {_name(cmd) or stat.split('(', 1)[1].split(')')[0]}"] = (int(parts[11]) + int(parts[12])) / tick
    return busy, procs


def _name(cmd: str) -> str:
    for marker, name in (("ProxyActor", "Serve proxy"), ("ServeReplica", "Serve replica (control plane)"),
                         ("locust", "locust (load generator)"), ("CassandraDaemon", "Cassandra"),
                         ("kafka.Kafka", "Kafka"), ("PartitionWorker", "sync workers"),
                         ("SyncSupervisor", "sync supervisor"), ("apicurio", "registry"),
                         ("debezium", "Debezium"), ("postgres", "PostgreSQL"), ("raylet", "raylet"),
                         ("gcs_server", "Ray GCS"), ("dashboard", "Ray dashboard")):
        if marker in cmd:
            return name
    return ""


def cpu_use(before, after, seconds: float) -> dict:
    """Where the machine's CPU went between two :func:`cpu_snapshot`: seconds per process group."""
    groups: dict[str, float] = {}
    for key, t in after[1].items():
        name = key.split(" ", 1)[1]
        groups[name] = groups.get(name, 0.0) + t - before[1].get(key, 0.0)
    top = sorted(((round(v, 1), k) for k, v in groups.items() if v > 0.5), reverse=True)[:12]
    return {"machine_busy_cpu_s": round(after[0] - before[0], 1), "wall_s": round(seconds, 1),
            "cpus": os.cpu_count(), "by_process_cpu_s": {k: v for v, k in top},
            "serve_cpu_s": round(groups.get("Serve proxy", 0.0) + groups.get("Serve replica (control plane)", 0.0), 2)}


def profile(url: str, token: str, args, work: Path, tag: str) -> dict:
    """py-spy (sampling, non-blocking) on Serve's replica and proxy during a short load of
    its own: where their CPU goes, as the share of samples per function (self time, and
    inclusive time of the c2pg/Serve/ASGI frames)."""
    py_spy = Path(sys.executable).with_name("py-spy")
    pids = _serve_pids()
    procs = {}
    for role, pid in pids.items():
        out = work / f"{tag}-{role}.txt"
        procs[role] = (out, subprocess.Popen(  # nosec B603 - py-spy next to this interpreter, argv built here
            [str(py_spy), "record", "--pid", str(pid), "--duration", str(args.profile_seconds), "--rate", "50",
             "--nonblocking", "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    rows = run_locust(url, token, args.users, args.profile_seconds, args.wait, work, f"{tag}-profiled")
    result = {"requests": int(rows["Aggregated"]["Request Count"])}
    for role, (out, proc) in procs.items():
        proc.wait(timeout=args.profile_seconds + 60)
        result[role] = summarize_profile(out) if out.exists() else {"error": "py-spy wrote nothing"}
    return result


def summarize_profile(path: Path, top: int = 12) -> dict:
    """The collapsed stacks py-spy wrote, as shares of the samples: busiest functions by self
    time, and by inclusive time among frames of c2pg (serve_app, engine), the ASGI stack and
    Serve's own request path."""
    self_time: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames and "(idle)" in frames[-1]:
            continue
        total += n
        self_time[_frame(frames[-1])] += n
        for f in {_frame(f) for f in frames}:
            if any(k in f for k in ("serve_app/", "engine/", "starlette/", "fastapi/", "ray/serve/", "json/",
                                    "uvicorn/", "cassandra/", "confluent_kafka", "psycopg2")):
                inclusive[f] += n
    share = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0.0)
    return {"samples": total, "self_pct": {k: share(v) for k, v in self_time.most_common(top)},
            "inclusive_pct": {k: share(v) for k, v in inclusive.most_common(top)}}


def _frame(frame: str) -> str:
    """``function (path/to/module.py:line)`` → ``function (module path from the package)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})"


def _ms(row: dict, column: str) -> float | None:
    value = row.get(column)
    return None if value in (None, "", "N/A") else float(value)


def _git() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,  # nosec B603 B607 - git from PATH, fixed argv
                         check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],  # nosec B603 B607 - git from PATH, fixed argv
                           capture_output=True, text=True, check=False).stdout.strip()
    return out + ("+dirty" if dirty else "")


def wait_up(url: str, token: str, cfg, tables: int, timeout_s: float = 600) -> float:
    """Until the status route shows every table with its partitions assigned and every target
    exists; returns the seconds it took."""
    t0 = time.monotonic()
    while True:
        try:
            st = requests.get(f"{url}/v1/pipelines/{PIPELINE}/status", timeout=10,
                              headers={"Authorization": f"Bearer {token}"})
            body = st.json() if st.status_code == 200 else {}
            assigned = sum(1 for t in body.get("tables", []) if len(t.get("partitions") or []) >= PARTITIONS)
            if assigned == tables and targets_ready(cfg, tables) >= tables:
                return time.monotonic() - t0
        except requests.RequestException:
            pass
        if time.monotonic() - t0 > timeout_s:
            raise SystemExit(f"the control plane or sync did not come up on {tables} tables in {timeout_s:.0f} s")
        time.sleep(2)


def measure(n: int, args, work: Path) -> dict:
    """Tables, supervisor and Serve app on ``n`` tables, then the load; the figures of size ``n``."""
    import ray
    from ray import serve

    from engine.config import load_config
    from engine.sync.supervisor import find, get_or_start, remove
    from serve_app.app import ControlPlane

    config = pipeline_file(work, n)
    cfg = load_config(config)
    t0 = time.monotonic()
    setup = prepare_tables(cfg, n)
    old = find(PIPELINE)
    if old is not None:
        ray.get(old.stop.remote(), timeout=120)
        remove(PIPELINE, old)
    sup = get_or_start(cfg)
    ray.get(sup.ping.remote())
    serve.run(ControlPlane.bind(str(config)), name=APP, route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{args.port}"
    token = cfg.api.token.get()
    setup["sync_and_serve_up_s"] = round(wait_up(url, token, cfg, n), 1)
    time.sleep(args.settle)  # the supervisor's first schema round and TTL sweep, at start, are over
    setup["total_s"] = round(time.monotonic() - t0, 1)
    ready = requests.get(f"{url}/readyz", timeout=30).json()
    print(f"{n} table(s): set up in {setup['total_s']} s ({setup}); readiness {ready['ready']} "
          f"(failed: {ready['failed']}); {args.users} users for {args.seconds} s, wait {args.wait} s", flush=True)
    nice = serve_nice()
    if args.serve_nice is not None:
        for pid in _serve_pids().values():
            os.setpriority(os.PRIO_PROCESS, pid, args.serve_nice)
    load_before = os.getloadavg()
    t1, cpu0 = time.monotonic(), cpu_snapshot()
    rows = run_locust(url, token, args.users, args.seconds, args.wait, work, f"api-{n}")
    elapsed = time.monotonic() - t1
    cpu = cpu_use(cpu0, cpu_snapshot(), elapsed)
    load_after = os.getloadavg()
    total, status, readyz = rows["Aggregated"], rows["status"], rows["readyz"]
    requests_n = int(total["Request Count"])
    body = requests.get(f"{url}/v1/pipelines/{PIPELINE}/status", timeout=10,
                        headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"})
    out = {
        "tables": n, "partitions": n * PARTITIONS, "status_body_bytes": len(body.content),
        "requests": requests_n, "errors": int(total["Failure Count"]),
        "requests_per_s": round(float(total["Requests/s"]), 1),
        "status_p50_ms": _ms(status, "50%"), "status_p95_ms": _ms(status, "95%"), "status_p99_ms": _ms(status, "99%"),
        "status_max_ms": _ms(status, "100%"), "status_requests": int(status["Request Count"]),
        "readyz_p50_ms": _ms(readyz, "50%"), "readyz_p95_ms": _ms(readyz, "95%"), "readyz_p99_ms": _ms(readyz, "99%"),
        "readyz_max_ms": _ms(readyz, "100%"), "readyz_requests": int(readyz["Request Count"]),
        "serve_cpu_ms_per_request": round(1000 * cpu["serve_cpu_s"] / requests_n, 2) if requests_n else None,
        "ready": ready["ready"], "failed_components": ready["failed"],
        "load_avg_1m_before": round(load_before[0], 2), "load_avg_1m_after": round(load_after[0], 2),
        "wall_s": round(elapsed, 1), "cpu": cpu, "setup": setup, "serve_nice_by_ray": nice,
        "serve_nice": serve_nice(),
    }
    if args.profile_seconds:
        out["profile"] = profile(url, token, args, work, f"profile-{n}")
    print(json.dumps({k: v for k, v in out.items() if k not in ("cpu", "profile")}), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.api", description=__doc__.splitlines()[0])
    p.add_argument("--tables", default="1", help="pipeline sizes to measure, ascending: N or N,N,... (default 1)")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--wait", default="0.5-1.5", help="seconds between a user's requests: LOW-HIGH or a constant")
    p.add_argument("--settle", type=float, default=15.0, help="seconds between set-up and load")
    p.add_argument("--profile-seconds", type=int, default=0,
                   help="after each measured load, a load of this many seconds with py-spy on Serve (0: none)")
    p.add_argument("--keep", action="store_true", help="leave the tables and topics for the next run")
    p.add_argument("--serve-nice", type=int, default=None,
                   help="diagnosis: renice Serve's proxy and replica to this value before each load (Ray starts "
                        "its workers at nice 15; needs root). Default: leave them as Ray runs them")
    p.add_argument("--output", type=Path, default=RESULTS / "api.json")
    args = p.parse_args(argv)
    sizes = sorted({int(x) for x in args.tables.split(",")})

    os.environ["RAY_AUTH_MODE"] = "token"
    import ray
    from ray import serve

    from engine.config import load_config
    from engine.stack.launcher import Stack
    from engine.sync.supervisor import find, remove

    stack = Stack()
    work = Path(tempfile.mkdtemp(prefix="c2pg-bench-api-"))
    ray.init(address=stack.services["ray"].gcs_address, namespace="c2pg-bench", logging_level="WARNING",
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})  # joins a running Serve as it is
    from ray.serve.context import _get_global_client

    args.port = _get_global_client().http_config.port
    started = datetime.now(UTC).isoformat(timespec="seconds")
    by_size: dict[str, dict] = {}
    cfg = load_config(pipeline_file(work, max(sizes)))
    try:
        for n in sizes:
            by_size[str(n)] = measure(n, args, work)
    finally:
        serve.delete(APP)
        if not serve.status().applications:
            serve.shutdown()
        sup = find(PIPELINE)
        if sup is not None:
            ray.get(sup.stop.remote(), timeout=120)
            remove(PIPELINE, sup)
        if not args.keep:
            t0 = time.monotonic()
            remove_tables(cfg)
            print(f"tables, topics, targets and state removed in {time.monotonic() - t0:.0f} s", flush=True)

    largest, smallest = by_size[str(sizes[-1])], by_size[str(sizes[0])]
    command = (f".venv/bin/python -m benchmarks.api --tables {','.join(map(str, sizes))} --users {args.users} "
               f"--seconds {args.seconds} --wait {args.wait}"
               + (f" --profile-seconds {args.profile_seconds}" if args.profile_seconds else "")
               + (f" --serve-nice {args.serve_nice}" if args.serve_nice is not None else ""))
    result = {
        "benchmark": "api", "date": started, "command": command, "git": _git(),
        "users": args.users, "seconds": args.seconds, "wait_s": args.wait,
        **{k: largest[k] for k in ("tables", "requests", "errors", "status_p50_ms", "status_p95_ms", "status_p99_ms",
                                   "readyz_p50_ms", "readyz_p95_ms", "readyz_p99_ms", "serve_cpu_ms_per_request",
                                   "load_avg_1m_before")},
        "errors_all_sizes": sum(r["errors"] for r in by_size.values()),
        "ratios_to_smallest": {n: {k: (round(r[k] / smallest[k], 2) if r.get(k) and smallest.get(k) else None)
                                   for k in ("status_p99_ms", "readyz_p99_ms", "serve_cpu_ms_per_request")}
                               for n, r in by_size.items()},
        "by_tables": by_size,
        "target": {"status_p99_ms_below": 100, "readyz_p99_ms_below": 100, "errors": 0, "at_every_size": True},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    result["target_met"] = all(r["status_p99_ms"] is not None and r["status_p99_ms"] < 100
                               and r["readyz_p99_ms"] is not None and r["readyz_p99_ms"] < 100
                               and r["errors"] == 0 for r in by_size.values())
    # Every run's figures are kept: the latest in full at the top, earlier ones' summaries in "history".
    history: list = []
    if args.output.exists():
        old = json.loads(args.output.read_text())
        history = old.pop("history", [])
        history.append({k: old.get(k) for k in SUMMARY if k in old}
                       | {"by_tables": {n: {k: r.get(k) for k in SUMMARY if k in r}
                                        for n, r in (old.get("by_tables") or {}).items()}})
    result["history"] = history
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("by_tables", "history")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
