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
   and the p50/p99 of Kafka record time → PostgreSQL commit over every event of the window,
   measured from outside c2pg (the producer's delivery reports give each record's offset and
   time; a poll of ``_c2pg.offsets`` every 20 ms gives when its offset was committed);
6. the end states: each c2pg target and the sink's table are compared cell by cell with the
   rows the generator says must be left (the run fails if any differs), and the ceiling:
   COPY of those rows into a staging table plus one plain ``INSERT … ON CONFLICT DO UPDATE``,
   timed in the same run (PostgreSQL's own cost of the end state, no Kafka, no decoding, no
   last-write-wins);
7. the Kafka read floor: every record of the topic fetched by one consumer process per
   partition in parallel, doing nothing with it — the least any design that reads the
   events spends, so ``ceiling seconds / floor seconds`` is the best ratio to the ceiling
   such a design can reach.

Both systems get the same changes: an update event carries the values its flattened row
has. Writes ``benchmarks/results/sync.json`` (the latest run at the top, every earlier run's
summary kept in ``history``); ``docs/benchmarks.md`` shows the figures.

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
import psycopg2.sql

from benchmarks import sync_baseline as jdbc
from engine import cql, log
from engine.config import TableConfig, load_config

KS, TABLE = "c2pg_bench", "sync_events"
TOPIC = f"c2pg.{KS}.{TABLE}"
FLAT_TOPIC = "c2pg_bench.flat.sync_events"
RESULTS = Path(__file__).resolve().parent / "results"
SUMMARY = ("when", "command", "events", "c2pg_events_per_s", "workers", "jdbc_sink_events_per_s", "ratio_vs_jdbc_sink",
           "ratio_vs_copy_merge_ceiling", "p50_apply_latency_ms", "p99_apply_latency_ms", "latency_rate_events_per_s",
           "end_states_equal")


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
            # The cells the update wrote, with the values the flattened row carries too.
            op, after = "u", {"id": cell(k), **{c: (cell(changes[c]) if c in changes else None)
                                               for c in ("name", "qty", "price", "updated")}}
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


def _latency_at(cfg, rate: float, start_pos: int, seconds: float = 20.0) -> dict:
    """Produce updates at ``rate`` events/s for ``seconds`` while sync runs; then the p50/p99
    of Kafka record time → PostgreSQL commit over EVERY event of the window, measured from
    outside c2pg: each record's offset and timestamp come from the producer's delivery
    reports, its commit time is when a poll of ``_c2pg.offsets`` (every 20 ms) first shows
    its partition's committed offset past it."""
    import threading

    from confluent_kafka import Producer

    delivered: list[tuple[int, int, int]] = []  # (partition, offset, record time ms)

    def on_delivery(err, msg) -> None:
        if err is None:
            delivered.append((msg.partition(), msg.offset(), msg.timestamp()[1]))

    samples: list[tuple[float, dict[int, int]]] = []
    stop = threading.Event()

    def poll_offsets() -> None:
        conn = psycopg2.connect(**cfg.postgres.connect_kwargs(application_name="bench-latency"))
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("SELECT kafka_partition, next_offset FROM _c2pg.offsets WHERE pipeline = %s "
                            "AND topic = %s", (cfg.name, TOPIC))
                samples.append((time.time() * 1000, dict(cur.fetchall())))
                stop.wait(0.02)
        conn.close()

    poller = threading.Thread(target=poll_offsets, daemon=True)
    poller.start()
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
            producer.produce(TOPIC, key=orjson.dumps({"id": k}), value=orjson.dumps(value), on_delivery=on_delivery)
            n += 1
        producer.poll(0)
        time.sleep(0.002)
    producer.flush()
    # Wait until PostgreSQL has committed past every produced record (the poller's own view;
    # the status's lag reads cached watermarks and can say 0 early).
    need: dict[int, int] = {}
    for partition, offset, _ in delivered:
        need[partition] = max(need.get(partition, 0), offset + 1)
    deadline = time.monotonic() + 120
    while not (samples and all(samples[-1][1].get(p, -1) >= off for p, off in need.items())):
        if time.monotonic() > deadline:
            stop.set()
            raise RuntimeError(f"sync did not commit the latency window's events within 120 s: {need} vs "
                               f"{samples[-1][1] if samples else None}")
        time.sleep(0.1)
    stop.set()
    poller.join(timeout=10)
    latencies = sorted(_commit_ms(samples, partition, offset) - ts for partition, offset, ts in delivered)
    latencies = [x for x in latencies if x is not None]
    if not latencies:
        return {"rate": round(rate), "events": n, "measured": 0, "p50_ms": None, "p99_ms": None}
    return {"rate": round(rate), "events": n, "measured": len(latencies),
            "p50_ms": round(latencies[len(latencies) // 2], 1),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
            "max_ms": round(latencies[-1], 1), "offset_poll_ms": 20}


def _commit_ms(samples: list[tuple[float, dict[int, int]]], partition: int, offset: int) -> float:
    """The first sample time at which ``partition``'s committed offset is past ``offset``
    (samples are in time order; binary search on the monotone committed offset)."""
    lo, hi = 0, len(samples)
    while lo < hi:
        mid = (lo + hi) // 2
        if samples[mid][1].get(partition, -1) > offset:
            hi = mid
        else:
            lo = mid + 1
    if lo == len(samples):
        raise RuntimeError(f"partition {partition} offset {offset} never committed while measured")
    return samples[lo][0]


def table_state(cfg, table: str) -> dict[int, tuple]:
    """A target's rows: id → (name, qty, price, updated)."""
    conn = psycopg2.connect(**cfg.postgres.connect_kwargs())
    try:
        with conn, conn.cursor() as cur:
            cur.execute(psycopg2.sql.SQL("SELECT id, name, qty, price, updated FROM {}").format(
                psycopg2.sql.Identifier(*table.split("."))))
            return {r[0]: tuple(r[1:]) for r in cur.fetchall()}
    finally:
        conn.close()


def expected_state(generated) -> dict[int, tuple]:
    final: dict[int, dict | None] = {}
    for key, _, row in generated:
        final[key["id"]] = row
    return {k: (r["name"], r["qty"], r["price"], r["updated"]) for k, r in final.items() if r is not None}


def state_differences(want: dict[int, tuple], got: dict[int, tuple]) -> dict:
    """How ``got`` differs from ``want``, cell by cell (counts and a few examples)."""
    missing = want.keys() - got.keys()
    extra = got.keys() - want.keys()
    differing = [k for k in want.keys() & got.keys() if want[k] != got[k]]
    return {"missing": len(missing), "extra": len(extra), "differing_rows": len(differing),
            "examples": [{"id": k, "want": want[k], "got": got[k]} for k in sorted(differing)[:3]]}


def copy_merge_ceiling(cfg, want: dict[int, tuple], events: int) -> dict:
    """What PostgreSQL alone needs for the end state: COPY of the final rows into a staging
    table plus one plain ``INSERT … SELECT … ON CONFLICT (id) DO UPDATE SET`` of every column
    — no Kafka, no decoding, no last-write-wins. Counted per event of the run it stands for."""
    import io

    conn = psycopg2.connect(**cfg.postgres.connect_kwargs())
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS bench.ceiling")
            cur.execute("CREATE TABLE bench.ceiling (id bigint PRIMARY KEY, name text, qty integer, "
                        "price double precision, updated bigint)")
        buf = io.StringIO("".join(f"{k}\t{n}\t{q}\t{p!r}\t{u}\n" for k, (n, q, p, u) in want.items()))
        t0 = time.perf_counter()
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE ceiling_stage (LIKE bench.ceiling) ON COMMIT DROP")
            cur.copy_expert("COPY ceiling_stage FROM STDIN", buf)
            cur.execute("INSERT INTO bench.ceiling SELECT * FROM ceiling_stage ON CONFLICT (id) DO UPDATE SET "
                        "name = EXCLUDED.name, qty = EXCLUDED.qty, price = EXCLUDED.price, updated = EXCLUDED.updated")
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    got = table_state(cfg, "bench.ceiling")
    assert got == want, "the ceiling's table is not the expected end state"
    return {"rows": len(want), "seconds": round(seconds, 3), "events_per_s": round(events / seconds)}


def _read_partition(bootstrap: str, topic: str, partition: int, end: int, ready, out) -> None:
    """One process of :func:`kafka_read_floor`: read ``topic``/``partition`` from 0 to ``end``."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"c2pg-bench-floor-{os.getpid()}",
                         "enable.auto.commit": False, "fetch.max.bytes": 52428800,
                         "max.partition.fetch.bytes": 10485760})
    consumer.assign([TopicPartition(topic, partition, 0)])
    consumer.list_topics(topic, timeout=10)
    ready.wait()
    t0, n, size, last = time.perf_counter(), 0, 0, -1
    while last + 1 < end:
        for m in consumer.consume(num_messages=10000, timeout=1.0):
            if m.error() is None:
                n += 1
                size += len(m.value() or b"")
                last = m.offset()
    out.put((t0, time.perf_counter(), n, size))
    consumer.close()


def kafka_read_floor(bootstrap: str, topic: str) -> dict:
    """The least any design that reads every event must spend: every record of ``topic``
    fetched from Kafka by one consumer process per partition, in parallel, doing nothing
    with them (no decoding). Timed from the moment all are connected to the last record."""
    import multiprocessing as mp

    ends = _topic_ends(bootstrap, topic)
    parts = sorted(ends)
    ctx = mp.get_context("spawn")
    ready, out = ctx.Barrier(len(parts)), ctx.Queue()
    procs = [ctx.Process(target=_read_partition, args=(bootstrap, topic, p, ends[p], ready, out)) for p in parts]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    seconds = max(r[1] for r in results) - min(r[0] for r in results)
    records = sum(r[2] for r in results)
    return {"records": records, "bytes": sum(r[3] for r in results), "consumers": len(parts),
            "seconds": round(seconds, 3), "records_per_s": round(records / seconds)}


def _component(proc) -> str:
    """Which part of the stack a process is, for the CPU accounting of a run."""
    name = proc.info["name"] or ""
    cmd = " ".join(proc.info["cmdline"] or ())
    if proc.pid == os.getpid():
        return "benchmark driver"
    if name == "postgres" or "postgres:" in cmd:
        return "postgresql"
    if name.startswith("ray::PartitionWor") or "ray::PartitionWorker" in cmd:
        return "c2pg sync workers"
    if name.startswith("ray::SyncSupervi") or "ray::SyncSupervisor" in cmd:
        return "c2pg supervisor"
    if "kafka.Kafka" in cmd:
        return "kafka broker"
    if "CassandraDaemon" in cmd:
        return "cassandra"
    if "debezium" in cmd:
        return "debezium connector"
    if name.startswith("ray::") or "default_worker.py" in cmd:
        return "ray task workers"  # e.g. the snapshot's read/write tasks
    if "ray" in name or "/ray/" in cmd or "ray::" in cmd:
        return "ray (other)"
    return "other"


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """pid → (component, user + system CPU seconds so far) of every process on the machine."""
    import psutil

    out = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        t = proc.info["cpu_times"]
        if t is not None:
            # Children's times too: PostgreSQL's backends (one per connection of the
            # snapshot's write tasks) end within a run and their CPU moves to the postmaster.
            out[proc.pid] = (_component(proc), t.user + t.system + t.children_user + t.children_system)
    return out


def cpu_between(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], events: int) -> dict:
    """CPU seconds per component between two snapshots (a process started in between counts
    whole; one that ended in between counts with its parent once reaped — PostgreSQL's
    backends with the postmaster — else is lost, which the workers never do: the second
    snapshot is taken before they stop), and µs of CPU per event."""
    by: dict[str, float] = {}
    for pid, (comp, cpu) in after.items():
        old = before.get(pid)
        by[comp] = by.get(comp, 0.0) + cpu - (old[1] if old and old[0] == comp else 0.0)
    total = sum(by.values())
    return {"cpu_seconds": {k: round(v, 2) for k, v in sorted(by.items(), key=lambda kv: -kv[1])},
            "cpu_us_per_event": {k: round(v / events * 1e6, 2) for k, v in sorted(by.items(), key=lambda kv: -kv[1])},
            "total_cpu_seconds": round(total, 2)}


def _topic_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """partition → high watermark of ``topic`` (it is filled before a run starts)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "c2pg-bench-ends"})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        c.close()


def run_c2pg(cfg, workers: int, events: int, timeout_s: float = 900, rate: float | None = None,
             heartbeat: bool = True) -> dict:
    import ray

    from engine.sync.supervisor import find, get_or_start

    name = f"bench-sync-{workers}"
    table = TableConfig(keyspace=KS, table=TABLE, target_schema="bench", target_table=f"sync_{workers}")
    cfg = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"name": name}), "tables": (table,),
                                 "sync": cfg.sync.model_copy(update={"workers": workers}),
                                 "capture": cfg.capture.model_copy(update={
                                     "heartbeat": heartbeat, "heartbeat_interval": timedelta(seconds=1)})})
    conn = psycopg2.connect(**cfg.postgres.connect_kwargs())
    with conn, conn.cursor() as cur:
        # A fresh target (engine.target.ensure_target also drops what _c2pg kept of a dropped
        # one: its tombstones had piled up to 1.5M rows and slowed every run more).
        cur.execute(f"DROP TABLE IF EXISTS bench.sync_{workers}")
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = 'bench' AND target_table = %s",
                    (f"sync_{workers}",))
        cur.execute("DELETE FROM _c2pg.offsets WHERE pipeline = %s", (name,))
    old = find(name)
    if old is not None:
        ray.kill(old, no_restart=True)
    ends = _topic_ends(cfg.kafka.bootstrap_servers, TOPIC)
    cpu_before = cpu_snapshot()
    sup = get_or_start(cfg)
    # Progress is read from outside c2pg, from the offsets it commits with the data (one small
    # query every 50 ms), not from the supervisor's status: asking it five times a second made
    # the supervisor gather every worker's status each time, CPU the run would then count.
    first, applied = None, 0
    deadline = time.monotonic() + timeout_s
    with conn.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute("SELECT kafka_partition, next_offset FROM _c2pg.offsets WHERE pipeline = %s AND topic = %s",
                        (name, TOPIC))
            done = dict(cur.fetchall())
            conn.rollback()
            applied = sum(done.values())
            if applied and first is None:
                first = time.monotonic()
            if all(done.get(p, 0) >= end for p, end in ends.items()):
                break
            time.sleep(0.05)
    seconds = time.monotonic() - (first or time.monotonic())
    cpu = cpu_between(cpu_before, cpu_snapshot(), events)
    latency = None
    if rate:
        latency = _latency_at(cfg, rate, events)
    ray.get(sup.stop.remote(), timeout=120)
    ray.kill(sup, no_restart=True)
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM bench.sync_{workers}")
        rows = cur.fetchone()[0]
    conn.close()
    return {"workers": workers, "events": applied, "seconds": round(seconds, 2),
            "events_per_s": round(applied / seconds) if seconds else None, "rows": rows,
            "latency_at_half_rate": latency, "heartbeat": heartbeat, "cpu": cpu}


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
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3], help="the worker counts to run c2pg with")
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
    want = expected_state(generated)
    # The ceiling (below) never reads the events; any design that does cannot beat this.
    floor = kafka_read_floor(bootstrap, TOPIC)
    expected_rows = len(want)

    ray.init(address=os.environ.get("RAY_ADDRESS") or "127.0.0.1:6380", logging_level="WARNING",
             log_to_driver=False)
    if args.heartbeat_ab:
        heartbeat_ab(cfg, args.events, args.rounds, expected_rows)
        return
    c2pg, end_states = [], {}
    for w in args.workers:
        r = run_c2pg(cfg, w, args.events)
        end_states[f"c2pg_{w}_workers"] = state_differences(want, table_state(cfg, f"bench.sync_{w}"))
        c2pg.append(r)
        print(f"c2pg, {r['workers']} worker(s): {r['events_per_s']:,} events/s ({r['seconds']} s), "
              f"rows {r['rows']:,} (expected {expected_rows:,}); end state vs expected: "
              f"{end_states[f'c2pg_{w}_workers']}", flush=True)
        print(f"  CPU µs per event: {r['cpu']['cpu_us_per_event']}", flush=True)
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
        end_states["jdbc_sink"] = state_differences(want, table_state(cfg, "bench.jdbc_sink"))
        print(f"Debezium JDBC sink: {jdbc_result['events_per_s']:,.0f} events/s ({jdbc_result['seconds']:.1f} s); "
              f"end state vs expected: {end_states['jdbc_sink']}", flush=True)
    ceiling = copy_merge_ceiling(cfg, want, args.events)
    print(f"COPY + merge ceiling: {ceiling['events_per_s']:,} events/s equivalent ({ceiling['seconds']} s for "
          f"{ceiling['rows']:,} rows)", flush=True)
    reachable = round(ceiling["seconds"] / floor["seconds"], 3)
    print(f"Kafka read floor: {floor['records']:,} records ({floor['bytes'] / 2**20:,.0f} MiB) in {floor['seconds']} s "
          f"by {floor['consumers']} consumers, no decoding: a design that reads every event reaches at most "
          f"{reachable} of the ceiling", flush=True)
    equal = all(d["missing"] == d["extra"] == d["differing_rows"] == 0 for d in end_states.values())
    out = {
        "events": args.events, "keys": args.keys, "expected_rows": expected_rows,
        "c2pg_events_per_s": best["events_per_s"], "workers": best["workers"], "c2pg_runs": c2pg,
        "jdbc_sink_events_per_s": round(jdbc_result["events_per_s"]) if jdbc_result else None,
        "ratio_vs_jdbc_sink": round(best["events_per_s"] / jdbc_result["events_per_s"], 2) if jdbc_result else None,
        "copy_merge_ceiling": ceiling,
        "ratio_vs_copy_merge_ceiling": round(best["events_per_s"] / ceiling["events_per_s"], 3),
        "kafka_read_floor": floor, "ceiling_ratio_reachable_by_reading_events": reachable,
        "end_states_equal": equal, "end_states": end_states,
        "p99_apply_latency_ms": latency["p99_ms"], "p50_apply_latency_ms": latency["p50_ms"],
        "latency_rate_events_per_s": latency["rate"], "latency": latency,
        "jdbc_sink": jdbc_result,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f".venv/bin/python -m benchmarks.sync --events {args.events} --keys {args.keys}"
                   + (f" --workers {' '.join(map(str, args.workers))}" if args.workers != [1, 2, 3] else "")
                   + (" --skip-jdbc" if args.skip_jdbc else ""),
        "load_average_at_end": os.getloadavg(),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "sync.json"
    # Every run's figures are kept: the latest at the top, the earlier ones' summaries in "history".
    history = []
    if path.exists():
        old = json.loads(path.read_text())
        history = old.pop("history", [])
        history.append({k: old.get(k) for k in SUMMARY if k in old})
    out["history"] = history
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(json.dumps({k: out.get(k) for k in SUMMARY}))
    if not equal:
        raise SystemExit("the end states differ from the expected rows (see end_states in sync.json)")


if __name__ == "__main__":
    main()
