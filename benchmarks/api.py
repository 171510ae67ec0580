"""Control-plane benchmark: locust against /readyz and the status route of the Serve app.

    .venv/bin/python -m benchmarks.api [--users 50] [--seconds 60] [--wait 0.5-1.5]

On the local stack (``c2pg stack up``):

1. a CDC table ``c2pg_bench.api_events`` with a few rows, a pipeline ``bench-api`` on it,
   and sync running (so the status route reads a live supervisor and its workers);
2. the Serve app (``serve_app.app.ControlPlane``) on the stack's Ray head, HTTP on
   127.0.0.1, with the pipeline's settings (1 s health and status caches) and a rate limit
   high enough not to throttle the benchmark (every locust user shares one address);
3. ``locust --headless`` with ``--users`` users for ``--seconds`` s, each asking ``/readyz``
   and ``/v1/pipelines/bench-api/status`` with a pause of ``--wait`` s between requests;
4. Serve, the supervisor and the pipeline's state are removed; the Ray cluster stays up.

Writes ``benchmarks/results/api.json`` (``status_p99_ms``, ``readyz_p99_ms``, ``requests``,
``errors``, ...); ``docs/benchmarks.md`` shows the figures. Target: status p99 < 100 ms and
no errors. Everything (locust, Serve's proxy and replica, the stack) shares the machine's
cores, so the figures include the load generator's own CPU use.
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
from datetime import UTC, datetime
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
KS, TABLE, PIPELINE = "c2pg_bench", "api_events", "bench-api"


def pipeline_file(directory: Path) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / "pipeline.local.yaml").read_text())
    doc["pipeline"]["name"] = PIPELINE
    doc["tables"] = [{"keyspace": KS, "table": TABLE, "target_schema": "bench"}]
    secrets = ROOT / ".stack" / "secrets"
    doc["vault"]["role_id"] = f"file:{secrets / 'vault-role-id'}"
    doc["capture"]["connector_log"] = str(secrets.parent / "logs" / "debezium.log")
    doc["vault"]["secret_id"] = f"file:{secrets / 'vault-secret-id'}"
    doc["api"]["rate_limit_per_minute"] = 10_000_000
    path = directory / "bench-api.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def prepare_table(cfg) -> None:
    """The CDC table, captured by the connector, with 100 rows (its topic then exists)."""
    from engine import cql
    from engine.topic_tail import TopicTail

    cluster, session = cql.connect(cfg.cassandra)
    try:
        created = not session.execute(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s", (KS,)).one()
        session.execute(f"CREATE KEYSPACE IF NOT EXISTS {KS} WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        if created:
            time.sleep(2)  # a table created in the keyspace's schema-refresh window is not captured
        session.execute(f"CREATE TABLE IF NOT EXISTS {KS}.{TABLE} (id int PRIMARY KEY, v text) WITH cdc = true")
        with TopicTail(cfg.kafka.topic_for(KS, TABLE), cfg.kafka.client_conf()) as tail:
            if not tail.wait_for_capture(lambda: session.execute(
                    f"INSERT INTO {KS}.{TABLE} (id, v) VALUES (0, 'probe')"), 90):
                raise SystemExit(f"the Debezium connector does not capture {KS}.{TABLE}")
        for i in range(1, 100):
            session.execute(f"INSERT INTO {KS}.{TABLE} (id, v) VALUES (%s, %s)", (i, f"v{i}"))
    finally:
        cluster.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_locust(url: str, token: str, users: int, seconds: int, wait: str, out_dir: Path) -> dict:
    env = {**os.environ, "C2PG_BENCH_TOKEN": token, "C2PG_BENCH_PIPELINE": PIPELINE, "C2PG_BENCH_WAIT": wait}
    cmd = [str(Path(sys.executable).with_name("locust")), "-f", str(ROOT / "benchmarks" / "api_locustfile.py"),
           "--headless", "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{seconds}s",
           "--host", url, "--csv", str(out_dir / "api"), "--only-summary", "--loglevel", "WARNING",
           "--stop-timeout", "5"]
    subprocess.run(cmd, env=env, check=False, timeout=seconds + 120, stdout=subprocess.DEVNULL)
    with open(out_dir / "api_stats.csv", newline="") as fh:
        return {r["Name"]: r for r in csv.DictReader(fh)}


def _serve_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", r"ray::(ProxyActor|ServeReplica:c2pg-bench-api)"], capture_output=True,
                         text=True, check=False).stdout
    return [int(x) for x in out.split()]


def serve_nice() -> int | None:
    """The niceness Ray gave Serve's processes (its workers run at 15 unless configured)."""
    pids = _serve_pids()
    return os.getpriority(os.PRIO_PROCESS, pids[0]) if pids else None


def renice_serve(value: int) -> None:
    for pid in _serve_pids():
        os.setpriority(os.PRIO_PROCESS, pid, value)
    print(f"Serve proxy and replica reniced to {value}", flush=True)


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
    top = sorted(((round(v, 1), k) for k, v in groups.items() if v > 0.5), reverse=True)[:10]
    return {"machine_busy_cpu_s": round(after[0] - before[0], 1), "wall_s": round(seconds, 1),
            "cpus": os.cpu_count(), "by_process_cpu_s": {k: v for v, k in top}}


def _ms(row: dict, column: str) -> float | None:
    value = row.get(column)
    return None if value in (None, "", "N/A") else float(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.api", description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--wait", default="0.5-1.5", help="seconds between a user's requests: LOW-HIGH or a constant")
    p.add_argument("--output", type=Path, default=RESULTS / "api.json")
    p.add_argument("--serve-nice", type=int, default=None,
                   help="diagnosis: renice Serve's proxy and replica to this value (Ray starts its workers "
                        "at nice 15; needs root). Default: leave them as Ray runs them")
    args = p.parse_args(argv)

    os.environ["RAY_AUTH_MODE"] = "token"
    import psycopg2
    import ray
    from ray import serve

    from engine.config import load_config
    from engine.stack.launcher import Stack
    from engine.sync.supervisor import find, get_or_start
    from serve_app.app import ControlPlane

    stack = Stack()
    work = Path(tempfile.mkdtemp(prefix="c2pg-bench-api-"))
    config = pipeline_file(work)
    cfg = load_config(config)
    prepare_table(cfg)
    ray.init(address=stack.services["ray"].gcs_address, namespace="c2pg-bench", logging_level="WARNING",
             log_to_driver=False)
    port = free_port()
    sup = get_or_start(cfg)
    ray.get(sup.ping.remote())
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(ControlPlane.bind(str(config)), name="c2pg-bench-api", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        token = cfg.api.token.get()
        deadline = time.monotonic() + 120
        while True:  # up, and sync has its workers on the table's partitions
            try:
                st = requests.get(f"{url}/v1/pipelines/{PIPELINE}/status", timeout=5,
                                  headers={"Authorization": f"Bearer {token}"})
                first = st.json()["tables"][0] if st.status_code == 200 else {}
                if first.get("partitions") and first.get("lag") == 0:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the control plane or sync did not come up in 120 s")
            time.sleep(1)
        ready = requests.get(f"{url}/readyz", timeout=30).json()
        print(f"control plane on {url}; readiness {ready['ready']}; {args.users} users for {args.seconds} s, "
              f"wait {args.wait} s", flush=True)
        nice = serve_nice()
        if args.serve_nice is not None:
            renice_serve(args.serve_nice)
        t0, cpu0 = time.monotonic(), cpu_snapshot()
        rows = run_locust(url, token, args.users, args.seconds, args.wait, work)
        elapsed = time.monotonic() - t0
        cpu = cpu_use(cpu0, cpu_snapshot(), elapsed)
    finally:
        serve.shutdown()
        sup = find(PIPELINE)
        if sup is not None:
            ray.get(sup.stop.remote(), timeout=120)
            ray.kill(sup, no_restart=True)
        conn = psycopg2.connect(**cfg.postgres.connect_kwargs())
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM _c2pg.offsets WHERE pipeline = %s", (PIPELINE,))
        conn.close()

    total, status, readyz = rows["Aggregated"], rows["status"], rows["readyz"]
    result = {
        "benchmark": "api", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f".venv/bin/python -m benchmarks.api --users {args.users} --seconds {args.seconds} "
                   f"--wait {args.wait}" + (f" --serve-nice {args.serve_nice}" if args.serve_nice is not None else ""),
        "users": args.users, "seconds": args.seconds, "wait_s": args.wait,
        "serve_nice": args.serve_nice if args.serve_nice is not None else nice,
        "requests": int(total["Request Count"]), "errors": int(total["Failure Count"]),
        "requests_per_s": round(float(total["Requests/s"]), 1),
        "status_p50_ms": _ms(status, "50%"), "status_p95_ms": _ms(status, "95%"), "status_p99_ms": _ms(status, "99%"),
        "status_max_ms": _ms(status, "100%"), "status_requests": int(status["Request Count"]),
        "readyz_p50_ms": _ms(readyz, "50%"), "readyz_p95_ms": _ms(readyz, "95%"), "readyz_p99_ms": _ms(readyz, "99%"),
        "readyz_max_ms": _ms(readyz, "100%"), "readyz_requests": int(readyz["Request Count"]),
        "target": {"status_p99_ms_below": 100, "errors": 0},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "wall_s": round(elapsed, 1),
        "cpu": cpu,
    }
    result["target_met"] = bool(result["status_p99_ms"] is not None and result["status_p99_ms"] < 100
                                and result["errors"] == 0)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
