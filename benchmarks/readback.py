"""Read-back benchmark: what sync pays to be exact for collection fragments and durations.

    .venv/bin/python -m benchmarks.readback [--keys 20000] [--events 200000] [--batch 5000]

On the local stack (``c2pg stack up``), all in this process:

1. generates one workload of ``--events`` writes over ``--keys`` rows (``--rows-per-partition``
   rows per partition): an ``INSERT`` of every row (a list, a map, a duration, a text), then
   list appends, map element updates, duration updates and text updates on random rows, each
   at its own write time;
2. writes it to Cassandra with ``USING TIMESTAMP`` (tables without cdc: the events are
   generated, not captured), so Cassandra's end state is the truth: into
   ``c2pg_bench.readback_events`` (``list<int>``, ``map<text, int>``, ``duration``, ``text``)
   and, as scalars, into ``c2pg_bench.readback_plain`` (``int``, ``text``, ``bigint``,
   ``text``: nothing to read back);
3. builds the Debezium records the connector writes for the same mutations (an append
   carries only the appended element, a map update only its entry, a duration its folded
   nanoseconds) and feeds them, in batches of ``--batch``, through sync's ``TableApplier``
   (decode → reduce → read-back → merge → commit), each run into a fresh PostgreSQL target:
   ``sync.read_back`` on and off, while Cassandra already holds the end state (sync catching
   up: a backlog, a replay); the scalar table (the ceiling: same events, same keys, nothing
   to read back); read-back on while "live" (``c2pg_bench.readback_live``: each batch's
   mutations are written to Cassandra just before the batch is applied, as when sync keeps
   up); and read-back on, catching up, again under cProfile (kept out of the timed runs);
4. checks that every target but the one without read-back equals Cassandra
   (``engine.compare.differences``), counts the cells the run without read-back got wrong,
   and exits non-zero if an exact target is not exact.

Every run is appended to ``runs`` in ``benchmarks/results/readback.json`` (``--results``
for a smoke run elsewhere); docs/benchmarks.md shows the latest. The timed figures and the
CPU split (this process's main thread, its other threads — the driver's I/O —, the
Cassandra JVM, the PostgreSQL backend) cover the ``apply`` calls only.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg2
from psycopg2 import sql

from engine import cql, log, readback
from engine.compare import differences
from engine.config import TableConfig, load_config
from engine.pg_dialect import tombstone_table_name
from engine.sync.apply import Record, TableApplier
from engine.target import ensure_state

KS = "c2pg_bench"
TABLE, LIVE, PLAIN = "readback_events", "readback_live", "readback_plain"
COLUMNS = {TABLE: "l list<int>, m map<text, int>, d duration, x text",
           LIVE: "l list<int>, m map<text, int>, d duration, x text",
           PLAIN: "l int, m text, d bigint, x text"}
READ_BACK_COLUMNS = frozenset({"l", "m", "d"})
RESULTS = Path(__file__).resolve().parent / "results" / "readback.json"
ROOT = Path(__file__).resolve().parent.parent
NS_PER_DAY = 86_400 * 10**9


@dataclass(frozen=True, slots=True)
class Mutation:
    """One write of the workload: the cells it sets on row (pk, ck) at ``ts``, as the
    collection table sees them (``l`` the elements written, ``m`` the entries written, ``d``
    as (months, days, nanoseconds)). ``insert`` overwrites whole collections; otherwise ``l``
    is an append and ``m`` an element update."""

    pk: int
    ck: int
    ts: int
    insert: bool
    cells: dict


def generate(keys: int, events: int, rows_per_partition: int, seed: int = 11) -> list[Mutation]:
    """An insert of every row, then 35% appends, 25% map element updates, 20% duration
    updates, 20% text updates, on random rows; write times 1 µs apart, in this order."""
    rnd = random.Random(seed)
    ts = int(time.time() * 1_000_000) - events - 10
    out = []
    for i in range(events):
        ts += 1
        k = i if i < keys else rnd.randrange(keys)
        pk, ck = divmod(k, rows_per_partition)
        if i < keys:
            d = (rnd.randrange(24), rnd.randrange(31), rnd.randrange(10**12) * 1000)
            out.append(Mutation(pk, ck, ts, True, {"l": [i], "m": {"k0": i}, "d": d, "x": f"x{i}"}))
            continue
        kind = rnd.random()
        if kind < 0.35:
            cells: dict = {"l": [i]}
        elif kind < 0.6:
            cells = {"m": {f"k{rnd.randrange(4)}": i}}
        elif kind < 0.8:
            cells = {"d": (rnd.randrange(24), rnd.randrange(31), 0)}
        else:
            cells = {"x": f"x{i}"}
        out.append(Mutation(pk, ck, ts, False, cells))
    return out


def _folded(d: tuple[int, int, int]) -> int:
    """The connector's one int64 for a duration (NanoDuration: 30-day months, 24-hour days)."""
    months, days, nanos = d
    return (months * 30 + days) * NS_PER_DAY + nanos


def _scalar(column: str, value):
    """The cell of the scalar table standing for a collection table's cell."""
    if column == "l":
        return value[-1]
    if column == "m":
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    if column == "d":
        return _folded(value)
    return value


def cql_write(table: str, m: Mutation) -> tuple[str, tuple]:
    """The CQL statement and parameters of ``m`` for ``table``."""
    from cassandra.util import Duration

    plain = table == PLAIN
    names = list(m.cells)
    values = [_scalar(c, v) if plain else (Duration(*v) if c == "d" else v) for c, v in m.cells.items()]
    if m.insert:
        return (f"INSERT INTO {KS}.{table} (pk, ck, {', '.join(names)}) VALUES (?, ?{', ?' * len(names)}) "
                "USING TIMESTAMP ?", (m.pk, m.ck, *values, m.ts))
    # An append and a map element update add to the collection; everything else overwrites.
    sets = ", ".join(f"{c} = {c} + ?" if not plain and c in ("l", "m") else f"{c} = ?" for c in names)
    return f"UPDATE {KS}.{table} USING TIMESTAMP ? SET {sets} WHERE pk = ? AND ck = ?", (m.ts, *values, m.pk, m.ck)


def write_cassandra(session, table: str, mutations: list[Mutation]) -> float:
    """Every mutation, 128 in flight. Order does not matter: each carries its write time
    (list elements appended concurrently may land in any order; Cassandra's order is the
    truth the targets are compared with)."""
    from cassandra.concurrent import execute_concurrent_with_args

    t0 = time.perf_counter()
    by_stmt: dict[str, list[tuple]] = {}
    for m in mutations:
        stmt, params = cql_write(table, m)
        by_stmt.setdefault(stmt, []).append(params)
    for stmt, params in by_stmt.items():
        execute_concurrent_with_args(session, session.prepare(stmt), params, concurrency=128,
                                     raise_on_first_error=True)
    return time.perf_counter() - t0


def records(table: str, mutations: list[Mutation]) -> list[Record]:
    """The connector's records of ``mutations`` (JSON, no schema envelope), offsets 0..n-1."""
    plain = table == PLAIN
    out = []
    for n, m in enumerate(mutations):
        after = {c: None for c in ("l", "m", "d", "x")}
        for c, v in m.cells.items():
            after[c] = {"value": _scalar(c, v) if plain or c == "d" else v, "deletion_ts": None, "set": True}
        key = {"pk": m.pk, "ck": m.ck}
        value = {"ts_ms": m.ts // 1000, "op": "i" if m.insert else "u", "source": {
            "version": "3.4.1.Final", "connector": "cassandra", "name": "c2pg", "ts_ms": m.ts // 1000,
            "ts_us": m.ts, "ts_ns": m.ts * 1000, "snapshot": "false", "db": "NULL", "sequence": None,
            "cluster": "c2pg-dev", "file": "bench", "pos": n, "keyspace": KS, "table": table},
            "after": {"pk": {"value": m.pk, "deletion_ts": None, "set": True},
                      "ck": {"value": m.ck, "deletion_ts": None, "set": True},
                      **after, "_range_start": None, "_range_end": None}}
        out.append(Record(f"c2pg.{KS}.{table}", 0, n, orjson.dumps(key), orjson.dumps(value)))
    return out


def partitions_to_read(table: str, mutations: list[Mutation], batch: int) -> int:
    """Partitions with a collection or duration cell, summed over batches: what read-back
    must read (the table has no static columns)."""
    if table == PLAIN:
        return 0
    return sum(len({m.pk for m in mutations[i:i + batch] if READ_BACK_COLUMNS.intersection(m.cells)})
               for i in range(0, len(mutations), batch))


class CountingSession:
    """The Cassandra session, counting the asynchronous requests sent through it: the
    read-back's reads (``execute_concurrent``); the applier sends no other."""

    def __init__(self, session):
        self._session = session
        self.requests = 0

    def execute_async(self, *args, **kwargs):
        self.requests += 1
        return self._session.execute_async(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)


class CpuClock:
    """CPU seconds of this process's main thread, its other threads (the driver's I/O
    thread), the Cassandra JVM (found by its listening port; it also serves anything else
    running) and the PostgreSQL backend of ``conn``; None where a process cannot be seen."""

    def __init__(self, cassandra_port: int, conn):
        self.procs = {"cassandra": _listener(cassandra_port), "postgres_backend": _process(conn.get_backend_pid())}

    def read(self) -> dict[str, float | None]:
        main, process = time.thread_time(), time.process_time()
        out: dict[str, float | None] = {"bench_main_thread": main, "bench_other_threads": process - main}
        for name, proc in self.procs.items():
            out[name] = sum(proc.cpu_times()[:2]) if proc is not None else None
        return out

    @staticmethod
    def spent(before: dict, after: dict) -> dict[str, float | None]:
        return {k: None if before[k] is None else after[k] - before[k] for k in before}


def _process(pid: int):
    import psutil  # with Ray

    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _listener(port: int):
    import psutil

    try:
        pids = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
                and c.status == psutil.CONN_LISTEN and c.pid}
    except psutil.Error:
        return None
    return _process(pids.pop()) if len(pids) == 1 else None


def fresh_target(conn, schema: str, table: str) -> None:
    """An empty PostgreSQL schema for one run (the applier creates the table in it)."""
    with conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = %s", (schema,))
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
            sql.Identifier("_c2pg", tombstone_table_name(schema, table))))


def run(cfg, session, conn, table: str, schema: str, mutations: list[Mutation], batch: int, read_back: bool,
        *, live: bool = False, profile: cProfile.Profile | None = None) -> dict:
    """Apply the records of ``mutations`` into a fresh ``schema``, in batches, timing the
    ``apply`` calls only. ``live``: write each batch's mutations to Cassandra just before
    applying it (untimed), as when sync keeps up; otherwise Cassandra already holds the end
    state, as when sync catches up (a backlog, a replay onto a snapshot)."""
    fresh_target(conn, schema, table)
    recs = records(table, mutations)
    tcfg = TableConfig(keyspace=KS, table=table, target_schema=schema, target_table=table)
    cfg = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"name": f"bench-readback-{schema}"}),
                                 "tables": (tcfg,), "sync": cfg.sync.model_copy(update={"read_back": read_back})})
    counting = CountingSession(session)
    applier = TableApplier(cfg, tcfg, conn, counting)
    clock = CpuClock(cfg.cassandra.port, conn)
    results, seconds, cpu = [], 0.0, Counter[str]()
    for i in range(0, len(recs), batch):
        if live:
            write_cassandra(session, table, mutations[i:i + batch])
        before, requests_before, t0 = clock.read(), counting.requests, time.perf_counter()
        if profile is not None:
            profile.enable()
        results.append((applier.apply(recs[i:i + batch], {}), counting.requests - requests_before))
        if profile is not None:
            profile.disable()
        seconds += time.perf_counter() - t0
        cpu.update({k: v for k, v in CpuClock.spent(before, clock.read()).items() if v is not None})
    dead = [d for r, _ in results for d in r.dead]
    if dead:
        raise SystemExit(f"{len(dead)} dead letters in {schema}: {dead[:3]}")
    read_s, write_s = sum(r.read_back.seconds for r, _ in results), sum(r.seconds for r, _ in results)
    rows, cells = sum(r.read_back.rows for r, _ in results), sum(r.read_back.cells for r, _ in results)
    stale, requests = sum(r.read_back.stale for r, _ in results), sum(n for _, n in results)
    batches = len(results)
    partitions = partitions_to_read(table, mutations, batch) if read_back else 0
    return {"target": schema, "table": table, "read_back": read_back, "live": live, "events": len(recs),
            "batches": batches, "seconds": round(seconds, 2), "events_per_s": round(len(recs) / seconds),
            "read_back_seconds": round(read_s, 2), "writer_seconds": round(write_s, 2),
            "decode_reduce_seconds": round(seconds - read_s - write_s, 2),
            "partitions_read_per_batch": round(partitions / batches, 1),
            "cassandra_requests_per_batch": round(requests / batches, 1),
            "rows_read_per_batch": round(rows / batches, 1), "cells_replaced": cells, "durations_stale": stale,
            "read_back_ms_per_partition": round(read_s * 1000 / partitions, 3) if partitions else None,
            "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()}}


def _top(prof: cProfile.Profile, key: str, n: int = 15) -> list[dict]:
    """The ``n`` functions with the most ``key`` time ("tottime": own, "cumtime": with callees)."""
    entries = []
    for (file, line, func), (_cc, calls, tt, ct, _callers) in pstats.Stats(prof).stats.items():
        where = file.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        entries.append({"function": f"{where}:{line}({func})" if line else func, "calls": calls,
                        "tottime": round(tt, 3), "cumtime": round(ct, 3)})
    return sorted(entries, key=lambda e: -e[key])[:n]


def summarise(diffs: list) -> dict:
    """``engine.compare.differences`` counted: cells per column, rows missing or extra."""
    kinds = Counter(d[0] for d in diffs)
    return {"total": len(diffs), "missing_rows": kinds["missing"], "extra_rows": kinds["extra"],
            "cells_by_column": dict(Counter(d[2] for d in diffs if d[0] == "mismatch")),
            "rows_with_a_wrong_cell": len({d[1] for d in diffs if d[0] == "mismatch"})}


def _engine_version() -> dict:
    """The commit measured, and engine files changed on top of it (work in progress)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_engine_files": git("status", "--porcelain", "engine/").splitlines()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=20_000, help="rows")
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--rows-per-partition", type=int, default=4)
    p.add_argument("--batch", type=int, default=5000, help="records per apply (sync.batch_max_events)")
    p.add_argument("--config", type=Path, default=Path("examples/pipeline.local.yaml"))
    p.add_argument("--results", type=Path, default=RESULTS, help="the JSON file this run is appended to")
    args = p.parse_args()
    log.configure("WARNING")
    cfg = load_config(args.config)
    cluster, session = cql.connect(cfg.cassandra)
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {KS} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    for table, columns in COLUMNS.items():
        session.execute(f"DROP TABLE IF EXISTS {KS}.{table}")
        session.execute(f"CREATE TABLE {KS}.{table} (pk bigint, ck int, {columns}, PRIMARY KEY (pk, ck))")
    mutations = generate(args.keys, args.events, args.rows_per_partition)
    print(f"writing {2 * len(mutations):,} mutations to Cassandra (and {len(mutations):,} more during the live run)",
          flush=True)
    write_s = write_cassandra(session, TABLE, mutations) + write_cassandra(session, PLAIN, mutations)
    conn = psycopg2.connect(**cfg.postgres.connect_kwargs(application_name="c2pg-bench-readback"))
    ensure_state(conn)
    load_before = os.getloadavg()
    runs = {}
    for name, table, schema, on, live in (("read_back_on", TABLE, "bench_rb_on", True, False),
                                          ("read_back_off", TABLE, "bench_rb_off", False, False),
                                          ("no_read_back_columns", PLAIN, "bench_rb_plain", True, False),
                                          ("read_back_on_live", LIVE, "bench_rb_live", True, True)):
        runs[name] = r = run(cfg, session, conn, table, schema, mutations, args.batch, on, live=live)
        print(f"{name}: {r['events_per_s']:,} events/s ({r['seconds']} s: read-back {r['read_back_seconds']} s, "
              f"writer {r['writer_seconds']} s; {r['partitions_read_per_batch']} partitions, "
              f"{r['cassandra_requests_per_batch']} requests per batch; cpu s {r['cpu_seconds']})", flush=True)
    prof = cProfile.Profile()
    profiled = run(cfg, session, conn, TABLE, "bench_rb_profile", mutations, args.batch, True, profile=prof)
    load_after = os.getloadavg()
    diffs = {name: summarise(differences(session, conn, KS, r["table"], r["target"], r["table"]))
             for name, r in (*runs.items(), ("profiled", profiled))}
    conn.close()
    cluster.shutdown()

    on, off, ceiling = runs["read_back_on"], runs["read_back_off"], runs["no_read_back_columns"]
    figures = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python -m benchmarks.readback", *sys.argv[1:]]).strip(),
        "keys": args.keys, "events": args.events, "rows_per_partition": args.rows_per_partition,
        "batch": args.batch, "engine": _engine_version(),
        "read_back_concurrency": readback.CONCURRENCY,
        "read_back_keys_per_read": getattr(readback, "KEYS_PER_READ", None),
        "cassandra_write_seconds": round(write_s, 1),
        **runs,
        "ratio_on_vs_off": round(on["events_per_s"] / off["events_per_s"], 3),
        "ratio_on_vs_no_read_back_columns": round(on["events_per_s"] / ceiling["events_per_s"], 3),
        "ratio_off_vs_no_read_back_columns": round(off["events_per_s"] / ceiling["events_per_s"], 3),
        "ratio_on_live_vs_off": round(runs["read_back_on_live"]["events_per_s"] / off["events_per_s"], 3),
        "differences": diffs,
        "profile": {"run": {k: profiled[k] for k in ("seconds", "events_per_s", "read_back_seconds")},
                    "note": "cProfile of the main thread only (the driver's I/O thread is in cpu_seconds)",
                    "top_tottime": _top(prof, "tottime"), "top_cumtime": _top(prof, "cumtime")},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after]},
    }
    history = json.loads(args.results.read_text()) if args.results.exists() else {"runs": []}
    history["runs"].append(figures)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(history, indent=2) + "\n")
    print(f"events/s, read-back on / off: {figures['ratio_on_vs_off']} (catching up), "
          f"{figures['ratio_on_live_vs_off']} (live); on / no read-back columns: "
          f"{figures['ratio_on_vs_no_read_back_columns']}", flush=True)
    print(json.dumps({name: d["total"] for name, d in diffs.items()}))
    wrong = {name: d for name, d in diffs.items() if name != "read_back_off" and d["total"]}
    if wrong:
        raise SystemExit(f"targets not equal to Cassandra: {wrong}")


if __name__ == "__main__":
    main()
