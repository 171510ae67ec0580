"""Sync benchmark: c2pg's actors vs. the Debezium JDBC sink, on the same events, same run.

    .venv/bin/python -m benchmarks.sync [--events 1000000] [--keys 100000]

On the local stack (``c2pg stack up``):

1. generates Debezium Cassandra events for ``c2pg_bench.sync_events`` — inserts of every key,
   then partial updates and deletes over them — and writes them to a fresh topic per run
   (``c2pg.c2pg_bench.sync_events`` is the table's topic name, so the topic is cleared and
   refilled): the raw connector format c2pg consumes;
2. writes the same changes "flattened" (whole after-image, tombstone for a delete) to a
   second topic, the form the JDBC sink needs (``benchmarks/sync_baseline.py``);
3. c2pg with 1 and then 2 workers: a fresh target and offsets, the supervisor started, timed
   from the first committed batch until every partition's lag is 0;
4. the JDBC sink in Kafka Connect standalone (upsert mode) into the same PostgreSQL;
5. latency: c2pg again, with events produced at half its measured maximum rate for 20 s,
   and the p50/p99 of Kafka record time → PostgreSQL commit.

Writes ``benchmarks/results/sync.json``; ``docs/benchmarks.md`` shows the figures.

    .venv/bin/python -m benchmarks.sync --heartbeat-ab [--rounds 3] [--events 300000]

measures what the capture heartbeat (``engine/capture.py``) costs instead: c2pg with 2
workers on the same topic, alternately with ``capture.heartbeat`` on and off, ``--rounds``
times each, every run kept in ``benchmarks/results/capture_heartbeat.json`` with the ratio of
the means (on / off). Heartbeats here come every second (the default is 5 s), so the cost
shown is five times the default's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg2

from benchmarks import sync_baseline as jdbc
from engine import cql, log
from engine.config import TableConfig, load_config

KS, TABLE = "c2pg_bench", "sync_events"
TOPIC = f"c2pg.{KS}.{TABLE}"
FLAT_TOPIC = "c2pg_bench.flat.sync_events"
RESULTS = Path(__file__).resolve().parent / "results"


def cell(v):
    return None if v is ... else {"value": v, "deletion_ts": None, "set": True}


def generate(events: int, keys: int, seed: int = 7):
    """(key dict, Debezium value dict, flattened row or None) per event, in write order."""
    rnd = random.Random(seed)
    ts = int(time.time() * 1_000_000) - events
    state: dict[int, dict] = {}
    out = []
    for i in range(events):
        ts += 1
        k = i if i < keys else rnd.randrange(keys)
        if k not in state:
            row = {"id": k, "name": f"name {k}", "qty": k % 100, "price": k / 7, "updated": ts}
            after = {c: cell(v) for c, v in row.items()}
            op = "i"
            state[k] = row
        elif rnd.random() < 0.1:
            op, after = "d", {"id": cell(k), **{c: {"value": None, "deletion_ts": ts, "set": True}
                                               for c in ("name", "qty", "price", "updated")}}
            state.pop(k)
        else:
            changes = {"qty": rnd.randrange(1000), "updated": ts}
            if rnd.random() < 0.3:
                changes["name"] = f"renamed {k} {i}"
            state[k].update(changes)
            op, after = "u", {"id": cell(k), **{c: (cell(v) if c in changes else None) for c, v in
                                               (("name", changes.get("name", ...)), ("qty", 0), ("price", 0),
                                                ("updated", 0))}}
        value = {"ts_ms": ts // 1000, "op": op, "source": {
            "version": "3.4.1.Final", "connector": "cassandra", "name": "c2pg", "ts_ms": ts // 1000, "ts_us": ts,
            "ts_ns": ts * 1000, "snapshot": "false", "db": "NULL", "sequence": None, "cluster": "c2pg-dev",
            "file": "bench", "pos": i, "keyspace": KS, "table": TABLE},
            "after": {**after, "_range_start": None, "_range_end": None}}
        out.append(({"id": k}, value, dict(state[k]) if k in state else None))
    return out


def fill_topics(bootstrap: str, generated) -> None:
    from confluent_kafka import Producer

    for topic in (TOPIC, FLAT_TOPIC):
        jdbc.delete_topic(bootstrap, topic)
        jdbc.create_topic(bootstrap, topic, partitions=3)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 500000})
    for n, (key, value, _) in enumerate(generated):
        producer.produce(TOPIC, key=orjson.dumps(key), value=orjson.dumps(value))
        if n % 100_000 == 0:
            producer.flush()
    producer.flush()
    jdbc.prepare_flat_topic(bootstrap, FLAT_TOPIC, [(key, row) for key, _, row in generated])


def _latency_at(cfg, sup, rate: float, start_pos: int, seconds: float = 20.0) -> dict:
    """Produce updates at ``rate`` events/s for ``seconds`` while sync runs; then the p50/p99
    of Kafka record time → PostgreSQL commit over those events (the workers' own figures)."""
    import ray
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "linger.ms": 5})
    rnd = random.Random(11)
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        due = int((time.monotonic() - t0) * rate)
        while n < due:
            k, ts = rnd.randrange(1000), int(time.time() * 1_000_000)
            value = {"ts_ms": ts // 1000, "op": "u", "source": {
                "version": "3.4.1.Final", "connector": "cassandra", "name": "c2pg", "ts_ms": ts // 1000,
                "ts_us": ts, "ts_ns": ts * 1000, "snapshot": "false", "db": "NULL", "sequence": None,
                "cluster": "c2pg-dev", "file": "bench", "pos": start_pos + n, "keyspace": KS, "table": TABLE},
                "after": {"id": cell(k), "name": None, "qty": cell(n % 1000), "price": None, "updated": cell(ts),
                          "_range_start": None, "_range_end": None}}
            producer.produce(TOPIC, key=orjson.dumps({"id": k}), value=orjson.dumps(value))
            n += 1
        producer.poll(0)
        time.sleep(0.002)
    producer.flush()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = ray.get(sup.status.remote(), timeout=30)
        if all(p.get("lag") == 0 for w in status["workers"] for p in w.get("partitions", [])):
            break
        time.sleep(0.5)
    lat = [w["latency_ms"] for w in status["workers"] if w.get("latency_ms")]
    return {"rate": round(rate), "events": n, "p50_ms": max((x["p50"] for x in lat), default=None),
            "p99_ms": max((x["p99"] for x in lat), default=None)}


def run_c2pg(cfg, workers: int, events: int, timeout_s: float = 900, rate: float | None = None,
             heartbeat: bool = True) -> dict:
    import ray

    from engine.sync_supervisor import find, get_or_start

    name = f"bench-sync-{workers}"
    table = TableConfig(keyspace=KS, table=TABLE, target_schema="bench", target_table=f"sync_{workers}")
    cfg = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"name": name}), "tables": (table,),
                                 "sync": cfg.sync.model_copy(update={"workers": workers}),
                                 "capture": cfg.capture.model_copy(update={
                                     "heartbeat": heartbeat, "heartbeat_interval": timedelta(seconds=1)})})
    conn = psycopg2.connect(**cfg.postgres.connect_kwargs())
    with conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS bench.sync_{workers}")
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = 'bench' AND target_table = %s",
                    (f"sync_{workers}",))
        cur.execute("DELETE FROM _c2pg.offsets WHERE pipeline = %s", (name,))
    old = find(name)
    if old is not None:
        ray.kill(old, no_restart=True)
    sup = get_or_start(cfg)
    first = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = ray.get(sup.status.remote(), timeout=30)
        parts = [p for w in status["workers"] for p in w.get("partitions", []) if not p.get("heartbeat")]
        applied = sum(p.get("events") or 0 for p in parts)
        if applied and first is None:
            first = time.monotonic()
        if parts and applied >= events and all(p.get("lag") == 0 for p in parts):
            break
        time.sleep(0.2)
    seconds = time.monotonic() - (first or time.monotonic())
    latency = None
    if rate:
        latency = _latency_at(cfg, sup, rate, events)
    ray.get(sup.stop.remote(), timeout=120)
    ray.kill(sup, no_restart=True)
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM bench.sync_{workers}")
        rows = cur.fetchone()[0]
    conn.close()
    return {"workers": workers, "events": applied, "seconds": round(seconds, 2),
            "events_per_s": round(applied / seconds) if seconds else None, "rows": rows,
            "latency_at_half_rate": latency, "heartbeat": heartbeat}


def heartbeat_ab(cfg, events: int, rounds: int, expected_rows: int) -> None:
    """c2pg with 2 workers, heartbeat on and off in turn, same topic; every run is kept.
    ``events`` counts only the table's events: heartbeat partitions are ignored."""
    runs = []
    for n in range(rounds):
        for hb in ((True, False) if n % 2 == 0 else (False, True)):  # neither always goes first
            r = run_c2pg(cfg, 2, events, heartbeat=hb)
            r["round"] = n + 1
            runs.append(r)
            print(f"round {n + 1}, heartbeat {'on ' if hb else 'off'}: {r['events_per_s']:,} events/s "
                  f"({r['seconds']} s), rows {r['rows']:,} (expected {expected_rows:,})", flush=True)
    on = [r["events_per_s"] for r in runs if r["heartbeat"]]
    off = [r["events_per_s"] for r in runs if not r["heartbeat"]]
    out = {"events": events, "workers": 2, "heartbeat_interval_s": 1, "runs": runs,
           "mean_on": round(sum(on) / len(on)), "mean_off": round(sum(off) / len(off)),
           "ratio_on_vs_off": round(sum(on) / len(on) / (sum(off) / len(off)), 3),
           "spread_off": [min(off), max(off)], "spread_on": [min(on), max(on)],
           "end_states_equal": all(r["rows"] == expected_rows for r in runs),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
           "when": datetime.now(UTC).isoformat(timespec="seconds"),
           "command": f".venv/bin/python -m benchmarks.sync --heartbeat-ab --rounds {rounds} --events {events}"}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "capture_heartbeat.json"
    history = json.loads(path.read_text()).get("history", []) if path.exists() else []
    summary = {k: out[k] for k in ("when", "mean_on", "mean_off", "ratio_on_vs_off", "end_states_equal")}
    path.write_text(json.dumps({**out, "history": history + [summary]}, indent=2, default=str) + "\n")
    print(json.dumps({k: out[k] for k in ("mean_on", "mean_off", "ratio_on_vs_off", "spread_on", "spread_off",
                                          "end_states_equal")}))


def main() -> None:
    import ray

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--config", type=Path, default=Path("examples/pipeline.local.yaml"))
    p.add_argument("--skip-jdbc", action="store_true")
    p.add_argument("--heartbeat-ab", action="store_true",
                   help="measure the capture heartbeat's cost instead (capture_heartbeat.json)")
    p.add_argument("--rounds", type=int, default=3, help="with --heartbeat-ab: runs with and without, each")
    args = p.parse_args()
    log.configure("WARNING")
    cfg = load_config(args.config)
    bootstrap = cfg.kafka.bootstrap_servers
    cluster, session = cql.connect(cfg.cassandra)
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {KS} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    session.execute(f"CREATE TABLE IF NOT EXISTS {KS}.{TABLE} (id bigint PRIMARY KEY, name text, qty int, "
                    "price double, updated bigint)")  # no cdc: events come from the generator
    cluster.shutdown()

    print(f"generating {args.events:,} events over {args.keys:,} keys", flush=True)
    generated = generate(args.events, args.keys)
    fill_topics(bootstrap, generated)
    final = {}
    for key, _, row in generated:
        final[key["id"]] = row
    expected_rows = sum(1 for row in final.values() if row is not None)

    ray.init(address=os.environ.get("RAY_ADDRESS") or "127.0.0.1:6380", logging_level="WARNING",
             log_to_driver=False)
    if args.heartbeat_ab:
        heartbeat_ab(cfg, args.events, args.rounds, expected_rows)
        return
    c2pg = [run_c2pg(cfg, w, args.events) for w in (1, 2)]
    for r in c2pg:
        print(f"c2pg, {r['workers']} worker(s): {r['events_per_s']:,} events/s ({r['seconds']} s), "
              f"rows {r['rows']:,} (expected {expected_rows:,})", flush=True)
    best = max(c2pg, key=lambda r: r["events_per_s"] or 0)
    # The latency run: the best worker count again, then a steady stream at half its rate.
    fill_topics(bootstrap, generated)
    latency_run = run_c2pg(cfg, best["workers"], args.events, rate=best["events_per_s"] / 2)
    latency = latency_run["latency_at_half_rate"]
    print(f"c2pg latency at {latency['rate']:,} events/s: p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms",
          flush=True)
    jdbc_result = None
    if not args.skip_jdbc:
        kw = cfg.postgres.connect_kwargs()
        jdbc_result = jdbc.run_jdbc_sink(bootstrap, FLAT_TOPIC, {k: kw[k] for k in ("host", "port", "dbname", "user",
                                                                                   "password")},
                                         "bench.jdbc_sink", args.events, timeout_s=1800)
        print(f"Debezium JDBC sink: {jdbc_result['events_per_s']:,.0f} events/s ({jdbc_result['seconds']:.1f} s)",
              flush=True)
    out = {
        "events": args.events, "keys": args.keys, "expected_rows": expected_rows,
        "c2pg_events_per_s": best["events_per_s"], "workers": best["workers"], "c2pg_runs": c2pg,
        "jdbc_sink_events_per_s": round(jdbc_result["events_per_s"]) if jdbc_result else None,
        "ratio_vs_jdbc_sink": round(best["events_per_s"] / jdbc_result["events_per_s"], 2) if jdbc_result else None,
        "p99_apply_latency_ms": latency["p99_ms"], "p50_apply_latency_ms": latency["p50_ms"],
        "latency_rate_events_per_s": latency["rate"],
        "jdbc_sink": jdbc_result,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f".venv/bin/python -m benchmarks.sync --events {args.events} --keys {args.keys}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sync.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(json.dumps({k: out[k] for k in ("c2pg_events_per_s", "jdbc_sink_events_per_s", "ratio_vs_jdbc_sink",
                                          "p99_apply_latency_ms", "workers", "events")}))


if __name__ == "__main__":
    main()
