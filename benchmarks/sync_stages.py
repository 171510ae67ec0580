"""Where sync's CPU goes, per stage and per event: the per-event path and the columnar path
(ADR 0010) on the same events, in one process, against the stack's PostgreSQL.

    .venv/bin/python -m benchmarks.sync_stages --events 200000 --batch 5000

The events are :func:`benchmarks.sync.generate`'s (the sync benchmark's table, inserts then
partial updates and 10 % row deletions over ``--keys`` keys), as Kafka records. Each path
applies them with :class:`engine.sync.apply.TableApplier` (``sync.columnar`` off, then on;
twice each, alternating) into a fresh target, in batches of ``--batch``. The process's CPU
time is split by stage (the functions each path calls are wrapped with a CPU timer), and
PostgreSQL's share is the CPU its backend process used (``/proc/<pid>/stat``). Both targets
must end equal to the generator's expected rows, or the run fails. Every run is appended to
``benchmarks/results/sync_stages.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg2
import psycopg2.sql

from benchmarks.sync import KS, TABLE, TOPIC, expected_state, generate, state_differences, table_state
from engine import cql, log
from engine.config import TableConfig, load_config
from engine.sync import apply as apply_module
from engine.sync.apply import Record, TableApplier

RESULTS = Path(__file__).resolve().parent / "results" / "sync_stages.json"


def _backend_cpu_s(conn) -> float:
    """CPU seconds (user + system) PostgreSQL's backend of ``conn`` has used."""
    fields = Path(f"/proc/{conn.get_backend_pid()}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(stages: collections.Counter, name: str, fn):
    def wrapper(*args, **kwargs):
        t = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            stages[name] += time.process_time() - t
    return wrapper


def run_path(cfg, records: list[Record], batch: int, columnar: bool, session, target: str) -> dict:
    stages: collections.Counter = collections.Counter()
    c = cfg.model_copy(update={"sync": cfg.sync.model_copy(update={"columnar": columnar})})
    conn = psycopg2.connect(**cfg.postgres.connect_kwargs())
    with conn, conn.cursor() as cur:
        cur.execute(psycopg2.sql.SQL("DROP TABLE IF EXISTS {}").format(psycopg2.sql.Identifier("bench", target)))
    applier = TableApplier(c, TableConfig(keyspace=KS, table=TABLE, target_schema="bench", target_table=target),
                           conn, session)
    reduce_events = apply_module.reduce_events
    if columnar:
        if applier.columnar is None:
            raise SystemExit("the benchmark's table does not fit the columnar path")
        decoder, reducer = applier.columnar
        decoder.decode = _timed(stages, "decode: columns (msgspec, Arrow kernels)", decoder.decode)
        reducer.reduce = _timed(stages, "reduce + COPY text (numpy, Arrow)", reducer.reduce)
        applier._drop_bad_tokens = _timed(stages, "tokens (murmur3, cached)", applier._drop_bad_tokens)
        applier._decode_all = _timed(stages, "decode: slow lane (deletions)", applier._decode_all)
    else:
        applier._decode_all = _timed(stages, "decode: per event", applier._decode_all)
        apply_module.reduce_events = _timed(stages, "reduce: per event", reduce_events)
        applier.writer._row_lines = _timed(stages, "COPY text: per row", applier.writer._row_lines)
    applier.writer.apply = _timed(stages, "write: client side (incl. COPY text)", applier.writer.apply)
    backend0, cpu0, wall0 = _backend_cpu_s(conn), time.process_time(), time.perf_counter()
    try:
        for i in range(0, len(records), batch):
            part = records[i:i + batch]
            applier.apply(part, {(TOPIC, 0): part[-1].offset + 1})
    finally:
        apply_module.reduce_events = reduce_events
    wall, cpu, backend = time.perf_counter() - wall0, time.process_time() - cpu0, _backend_cpu_s(conn) - backend0
    conn.close()
    n = len(records)
    if not columnar:  # the COPY text is built inside the writer's apply: count it once
        stages["write: client side (incl. COPY text)"] -= stages["COPY text: per row"]
    return {"path": "columnar" if columnar else "per-event", "events_per_s_in_process": round(n / wall),
            "client_cpu_us_per_event": round(cpu / n * 1e6, 2),
            "postgresql_cpu_us_per_event": round(backend / n * 1e6, 2),
            "stages_cpu_us_per_event": {k: round(v / n * 1e6, 2) for k, v in sorted(stages.items())}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--keys", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--config", type=Path, default=Path("examples/pipeline.local.yaml"))
    args = p.parse_args()
    log.configure("WARNING")
    cfg = load_config(args.config)
    cluster, session = cql.connect(cfg.cassandra)
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {KS} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    session.execute(f"CREATE TABLE IF NOT EXISTS {KS}.{TABLE} (id bigint PRIMARY KEY, name text, qty int, "
                    "price double, updated bigint)")
    generated = generate(args.events, args.keys)
    want = expected_state(generated)
    records = [Record(TOPIC, i % 3, i, orjson.dumps(k), orjson.dumps(v)) for i, (k, v, _) in enumerate(generated)]
    runs = []
    for columnar in (False, True, False, True):
        target = "stages_columnar" if columnar else "stages_per_event"
        r = run_path(cfg, records, args.batch, columnar, session, target)
        r["end_state"] = state_differences(want, table_state(cfg, f"bench.{target}"))
        runs.append(r)
        print(json.dumps(r), flush=True)
    cluster.shutdown()
    out = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
           "command": f".venv/bin/python -m benchmarks.sync_stages --events {args.events} --keys {args.keys} "
                      f"--batch {args.batch}",
           "load_average_at_end": os.getloadavg(), "runs": runs}
    history = json.loads(RESULTS.read_text())["history"] if RESULTS.exists() else []
    history.append(out)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"history": history}, indent=2) + "\n")
    if any(r["end_state"]["missing"] or r["end_state"]["extra"] or r["end_state"]["differing_rows"] for r in runs):
        raise SystemExit("a path's end state differs from the expected rows")


if __name__ == "__main__":
    main()
