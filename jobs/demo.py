"""The README's demo: real changes moving from Cassandra to Kafka through Debezium.

    python -m jobs.demo --config examples/pipeline.local.yaml [--rows 20]

It creates the pipeline's first table (``demo.users``) with ``cdc = true``, writes a stream
of inserts, partial updates, column deletes and row deletes, and prints every Debezium
change event as it arrives on Kafka, with its delay from the write, then a summary that
compares what Cassandra holds with what the events say. The demo grows with each
capability (snapshot, sync, reconcile): each will add its step here.

Exit codes: 0 when every write produced its event, 1 when some did not arrive in time,
2 for a bad configuration.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

from engine import cql, log
from engine.config import PipelineConfig, load_config
from engine.errors import C2pgError
from engine.topic_tail import TopicTail

DDL_KEYSPACE = ("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = "
                "{{'class': 'SimpleStrategy', 'replication_factor': 1}}")
DDL_TABLE = """CREATE TABLE IF NOT EXISTS {ks}.{t} (
    id uuid PRIMARY KEY, name text, email text, score decimal, tags set<text>,
    visits int, updated_at timestamp
) WITH cdc = true"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--rows", type=int, default=20, help="users to insert (then update/delete some)")
    args = p.parse_args(argv)
    log.configure("ERROR")
    try:
        cfg = load_config(args.config)
        return run(cfg, args.rows)
    except C2pgError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return exc.exit_code


def run(cfg: PipelineConfig, rows: int) -> int:
    table = cfg.tables[0]
    ks, t = table.keyspace, table.table
    topic = cfg.kafka.topic_for(ks, t)
    cluster, session = cql.connect(cfg.cassandra)
    try:
        _banner(f"1. Cassandra: table {ks}.{t} WITH cdc = true")
        session.execute(DDL_KEYSPACE.format(ks=ks))
        time.sleep(2)  # the connector misses a table created in its keyspace's refresh window
        session.execute(DDL_TABLE.format(ks=ks, t=t))
        before = _count(session, ks, t)
        print(f"   {before} row(s) there already; topic {topic}")

        with TopicTail(topic, cfg.kafka.client_conf()) as tail:
            _wait_for_capture(session, tail, ks, t)
            _banner(f"2. Writing {rows} inserts, then updates and deletes; events as they arrive")
            writes = _write_stream(session, ks, t, rows)
            events = tail.read(len(writes), timeout_s=30, settle_s=1.0,
                               key_filter=lambda k: isinstance(k, dict) and k.get("id") in writes.ids)
            _print_events(events, writes)

        _banner("3. Summary")
        after = _count(session, ks, t)
        ops = Counter(e.value["op"] for e in events)
        print(f"   Cassandra rows: {before} before, {after} after")
        print(f"   writes made: {len(writes)}  events received: {len(events)}  by op: {dict(ops)}")
        if events:
            delays = sorted(writes.delay_ms(e) for e in events)
            print(f"   write → Kafka delay: p50 {delays[len(delays) // 2]:.0f} ms, max {delays[-1]:.0f} ms")
        print("   next: snapshot, sync and reconcile into PostgreSQL (see the README's roadmap)")
        return 0 if len(events) >= len(writes) else 1
    finally:
        cluster.shutdown()


class Writes:
    """What the demo wrote: one entry per statement, with its wall-clock send time."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, float]] = []  # (id, op, time.time())
        self.ids: set[str] = set()

    def add(self, row_id: uuid.UUID, op: str) -> None:
        self.sent.append((str(row_id), op, time.time()))
        self.ids.add(str(row_id))

    def __len__(self) -> int:
        return len(self.sent)

    def delay_ms(self, event) -> float:
        """Kafka arrival minus the Cassandra write time of the event (``source.ts_us``)."""
        return event.value["ts_ms"] - event.value["source"]["ts_us"] / 1000


def _write_stream(session, ks: str, t: str, rows: int) -> Writes:
    rng = random.Random(7)
    insert = session.prepare(f"INSERT INTO {ks}.{t} (id, name, email, score, tags, visits, updated_at) "
                             "VALUES (?, ?, ?, ?, ?, ?, toTimestamp(now()))")
    update = session.prepare(f"UPDATE {ks}.{t} SET visits = ?, updated_at = toTimestamp(now()) WHERE id = ?")
    drop_email = session.prepare(f"DELETE email FROM {ks}.{t} WHERE id = ?")
    delete = session.prepare(f"DELETE FROM {ks}.{t} WHERE id = ?")
    writes = Writes()
    ids = [uuid.uuid4() for _ in range(rows)]
    names = ["ada", "grace", "edsger", "barbara", "ken", "margaret", "dennis", "frances", "alan", "radia"]
    for i, row_id in enumerate(ids):
        name = f"{names[i % len(names)]}-{i}"
        session.execute(insert, (row_id, name, f"{name}@example.org", Decimal(rng.randint(0, 10**6)) / 100,
                                 {rng.choice(["admin", "beta", "ops", "new"])}, 0))
        writes.add(row_id, "insert")
    for row_id in ids[: rows // 2]:
        session.execute(update, (rng.randint(1, 99), row_id))
        writes.add(row_id, "update")
    for row_id in ids[rows // 2: rows // 2 + max(1, rows // 10)]:
        session.execute(drop_email, (row_id,))
        writes.add(row_id, "column delete")
    for row_id in ids[-max(1, rows // 10):]:
        session.execute(delete, (row_id,))
        writes.add(row_id, "row delete")
    return writes


def _wait_for_capture(session, tail: TopicTail, ks: str, t: str, timeout_s: float = 60) -> None:
    """Upsert a marker row until its event appears: then the connector captures the table."""
    marker = uuid.UUID(int=0)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        session.execute(f"INSERT INTO {ks}.{t} (id, name) VALUES (%s, 'capture check')", (marker,))
        if tail.read(1, 3.0, key_filter=lambda k: isinstance(k, dict) and k.get("id") == str(marker)):
            print("   the Debezium connector captures the table")
            return
    raise C2pgError(f"no change event for {ks}.{t} within {timeout_s:.0f}s: is the connector "
                    "running (c2pg stack status) and the table WITH cdc = true?")


def _print_events(events, writes: Writes) -> None:
    print(f"   {'partition/offset':<17} {'op':<3} {'id':<36} {'delay':>7}  cells")
    for e in events:
        v = e.value
        cells = {k: c["value"] for k, c in v["after"].items()
                 if c is not None and k not in ("id", "_range_start", "_range_end")}
        shown = ", ".join(f"{k}={val!r}" for k, val in sorted(cells.items()))
        print(f"   {e.partition:>3}/{e.offset:<13} {v['op']:<3} {v['after']['id']['value']:<36} "
              f"{writes.delay_ms(e):>5.0f}ms  {shown[:70]}")


def _count(session, ks: str, t: str) -> int:
    """A full count: fine for the demo's few rows (reconcile is the tool for real tables)."""
    return sum(1 for _ in session.execute(f"SELECT id FROM {ks}.{t}"))


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
