"""The README's demo: changes through Debezium to Kafka, a snapshot, then live sync.

    python -m jobs.demo --config examples/pipeline.local.yaml [--rows 20]

It creates the pipeline's first table (``demo.users``) with ``cdc = true``, writes a stream
of inserts, partial updates, column deletes and row deletes, and prints every Debezium
change event as it arrives on Kafka, with its delay from the write, then a summary that
snapshots the table into PostgreSQL with Ray Data and shows the row counts and the same
rows on both sides, then starts continuous sync (Ray actors) on the local stack's Ray head,
writes a live stream of inserts, updates and deletes, and shows PostgreSQL following until
it equals Cassandra. Last, reconcile proves the two equal by token range (zero drift),
then a few rows are damaged in PostgreSQL, reconcile finds and classifies each, repairs
them through the LWW merge, and a last run reports zero drift again.

Exit codes: 0 when every step did what it shows (events arrived, snapshot complete, sync
equal, reconcile found exactly the damage and repaired it), 1 otherwise, 2 for a bad
configuration.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections import Counter
from decimal import Decimal

from engine import cql, log
from engine.cli import add_config_argument
from engine.config import PipelineConfig, load_config
from engine.errors import C2pgError
from engine.snapshot import run_snapshot
from engine.topic_tail import TopicTail

DDL_KEYSPACE = ("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = "
                "{{'class': 'SimpleStrategy', 'replication_factor': 1}}")
DDL_TABLE = """CREATE TABLE IF NOT EXISTS {ks}.{t} (
    id uuid PRIMARY KEY, name text, email text, score decimal, tags set<text>,
    visits int, updated_at timestamp
) WITH cdc = true"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.splitlines()[0])
    add_config_argument(p)
    p.add_argument("--rows", type=int, default=20, help="users to insert (then update/delete some)")
    p.add_argument("--keep", action="store_true",
                   help="keep the demo table's earlier rows (default: start from an empty table)")
    args = p.parse_args(argv)
    log.configure("ERROR")
    try:
        cfg = load_config(args.config)
        return run(cfg, args.rows, args.keep)
    except C2pgError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return exc.exit_code


def run(cfg: PipelineConfig, rows: int, keep: bool = False) -> int:
    table = cfg.tables[0]
    ks, t = table.keyspace, table.table
    topic = cfg.kafka.topic_for(ks, t)
    cluster, session = cql.connect(cfg.cassandra)
    try:
        _banner(f"1. Cassandra: table {ks}.{t} WITH cdc = true")
        session.execute(DDL_KEYSPACE.format(ks=ks))
        time.sleep(2)  # the connector misses a table created in its keyspace's refresh window
        if not keep:
            _reset(cfg, session, table)
        session.execute(DDL_TABLE.format(ks=ks, t=t))
        print(f"   {_count(session, ks, t)} row(s) there already; topic {topic}")

        start_offsets = _topic_end(cfg, topic)  # sync applies this run's events, not older runs'
        with TopicTail(topic, cfg.kafka.client_conf()) as tail:
            _wait_for_capture(session, tail, ks, t)
            _banner(f"2. Writing {rows} inserts, then updates and deletes; events as they arrive")
            writes = _write_stream(session, ks, t, rows)
            events = tail.read(len(writes), timeout_s=30, settle_s=1.0,
                               key_filter=lambda k: isinstance(k, dict) and k.get("id") in writes.ids)
            _print_events(events, writes)

        ops = Counter(e.value["op"] for e in events)
        print(f"   writes made: {len(writes)}  events received: {len(events)}  by op: {dict(ops)}")
        if events:
            delays = sorted(writes.delay_ms(e) for e in events)
            print(f"   write → Kafka delay: p50 {delays[len(delays) // 2]:.0f} ms, max {delays[-1]:.0f} ms")

        _banner(f"3. Snapshot {ks}.{t} into PostgreSQL {table.target_schema}.{table.target_table} (Ray Data)")
        _ray_init()
        result = run_snapshot(cfg, table)
        print(f"   {result.rows} rows in {result.seconds:.1f} s over {result.splits} token-range splits "
              f"({result.mode} load), {result.dead_letters} dead letters, run {result.run_id}")
        _compare(cfg, session, table)

        _banner("4. Live sync: Ray actors apply the change stream while Cassandra takes writes")
        synced = _live_sync(cfg, session, table, start_offsets, rows)

        _banner("5. Reconcile: digests by token range, damage in PostgreSQL, find it, repair it")
        reconciled = _reconcile(cfg, table)
        ok = len(events) >= len(writes) and result.ok and synced and reconciled
        _banner("Done" if ok else "Done, with problems (see above)")
        print("   next: keep sync running with `c2pg sync start --config …`, reconcile on a schedule with "
              "`c2pg reconcile --config … --table …`, watch both in the Ray dashboard (http://127.0.0.1:8265)")
        return 0 if ok else 1
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
    if not tail.wait_for_capture(
            lambda: session.execute(f"INSERT INTO {ks}.{t} (id, name) VALUES (%s, 'capture check')", (marker,)),
            timeout_s, key_filter=lambda k: isinstance(k, dict) and k.get("id") == str(marker)):
        raise C2pgError(f"no change event for {ks}.{t} within {timeout_s:.0f}s: is the connector "
                        "running (c2pg stack status) and the table WITH cdc = true?")
    print("   the Debezium connector captures the table")


def _print_events(events, writes: Writes) -> None:
    print(f"   {'partition/offset':<17} {'op':<3} {'id':<36} {'delay':>7}  cells")
    for e in events:
        v = e.value
        cells = {k: c["value"] for k, c in v["after"].items()
                 if c is not None and k not in ("id", "_range_start", "_range_end")}
        shown = ", ".join(f"{k}={val!r}" for k, val in sorted(cells.items()))
        print(f"   {e.partition:>3}/{e.offset:<13} {v['op']:<3} {v['after']['id']['value']:<36} "
              f"{writes.delay_ms(e):>5.0f}ms  {shown[:70]}")


def _ray_init() -> None:
    """Join the local stack's Ray head (sync runs as detached actors there)."""
    from engine.ray_connect import ensure_ray

    ensure_ray(persistent=True, log_to_driver=False)


def _topic_end(cfg: PipelineConfig, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**cfg.kafka.client_conf(), "group.id": "c2pg-demo-offsets"})
    try:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        parts = sorted(md.partitions) if md and md.error is None else []
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        consumer.close()


def _live_sync(cfg: PipelineConfig, session, table, start_offsets: dict[int, int], rows: int) -> bool:
    """Start sync from this run's first event, write a live stream, show PostgreSQL following."""
    import psycopg2
    import ray

    from engine.compare import differences
    from engine.sync.supervisor import find, get_or_start
    from jobs.sync import progress

    topic = cfg.kafka.topic_for(table.keyspace, table.table)
    _ray_init()
    old = find(cfg.name)
    if old is not None:
        ray.get(old.stop.remote(), timeout=60)
        ray.kill(old, no_restart=True)
    with psycopg2.connect(**cfg.postgres.connect_kwargs(application_name="c2pg-demo")) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM _c2pg.offsets WHERE pipeline = %s AND topic = %s", (cfg.name, topic))
        for part, offset in start_offsets.items():
            cur.execute("INSERT INTO _c2pg.offsets (pipeline, topic, kafka_partition, next_offset) "
                        "VALUES (%s, %s, %s, %s)", (cfg.name, topic, part, offset))
    sup = get_or_start(cfg)
    ray.get(sup.ping.remote())
    print(f"   supervisor {cfg.name} started with {cfg.sync.workers} worker(s); writing a live stream")
    writes = _write_stream(session, table.keyspace, table.table, rows)
    print(f"   {len(writes)} more writes made in Cassandra (inserts, updates, column and row deletes)")
    conn = psycopg2.connect(**cfg.postgres.connect_kwargs(application_name="c2pg-demo"))
    try:
        deadline = time.monotonic() + 90
        while True:
            status = ray.get(sup.status.remote(), timeout=30)
            diffs = differences(session, conn, table.keyspace, table.table, table.target_schema, table.target_table)
            print(f"   {progress(status)[2]}; differences with Cassandra: {len(diffs)}", flush=True)
            if not diffs or time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:
        conn.close()
    _compare(cfg, session, table)
    print("   PostgreSQL equals Cassandra, every row and column" if not diffs
          else f"   still different: {diffs[:5]}")
    ray.get(sup.stop.remote(), timeout=60)
    ray.kill(sup, no_restart=True)
    print("   sync stopped (offsets committed)")
    return not diffs


def _reconcile(cfg: PipelineConfig, table) -> bool:
    """Zero drift, then damage four rows in PostgreSQL, find them, repair them, zero again."""
    from datetime import timedelta

    import psycopg2
    from psycopg2 import sql

    from engine.reconcile import run_reconcile
    from engine.reconcile_report import summary

    # Sync is stopped here: nothing is in flight, so a short re-check delay will do.
    cfg = cfg.model_copy(update={"reconcile": cfg.reconcile.model_copy(update={"recheck_delay": timedelta(seconds=1)})})
    first = run_reconcile(cfg, table, progress=False)
    print(f"   {summary(first)}")
    target = sql.Identifier(table.target_schema, table.target_table)
    with psycopg2.connect(**cfg.postgres.connect_kwargs(application_name="c2pg-demo")) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT id FROM {} ORDER BY name LIMIT 3").format(target))
        a, b, c = (r[0] for r in cur.fetchall())
        cur.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(target), (a,))
        cur.execute(sql.SQL("UPDATE {} SET email = 'someone@else.example' WHERE id = %s").format(target), (b,))
        cur.execute(sql.SQL("UPDATE {} SET tags = array_append(tags, 'sneaked-in') WHERE id = %s").format(target),
                    (c,))
        cur.execute(sql.SQL("INSERT INTO {} (id, name, _c2pg_token, _c2pg_wt) SELECT gen_random_uuid(), "
                            "'nobody', _c2pg_token, '{{}}' FROM {} WHERE id = %s").format(target, target), (c,))
    print("   damaged PostgreSQL: deleted 1 row, changed 1 email, added 1 tag, inserted 1 row Cassandra lacks")
    found = run_reconcile(cfg, table, repair=True, progress=False)
    print(f"   {summary(found)}")

    with psycopg2.connect(**cfg.postgres.connect_kwargs(application_name="c2pg-demo")) as conn, conn.cursor() as cur:
        cur.execute("SELECT kind, key, columns, repaired, repair_note FROM _c2pg.reconcile_diffs "
                    "WHERE run_id = %s ORDER BY kind", (found.run_id,))
        for kind, key, columns, _repaired, note in cur.fetchall():
            print(f"   {kind:<9} key {key}  {', '.join(columns) or '':<10} -> {note}")
    if found.report_html:
        print(f"   drift per token range (open in a browser): {found.report_html}")
    after = run_reconcile(cfg, table, progress=False)
    print(f"   {summary(after)}")
    return first.drift == 0 and found.differences == {"missing": 1, "extra": 1, "mismatch": 2} and after.drift == 0


def _reset(cfg: PipelineConfig, session, table) -> None:
    """The demo owns its table: drop it on both sides (and its catalog row) for a clean run."""
    import psycopg2
    from psycopg2 import sql

    session.execute(f"DROP TABLE IF EXISTS {table.keyspace}.{table.table}")
    with psycopg2.connect(**cfg.postgres.connect_kwargs(application_name="c2pg-demo")) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
            sql.Identifier(table.target_schema, table.target_table)))
        cur.execute("SELECT to_regclass('_c2pg.catalog') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = %s AND target_table = %s",
                        (table.target_schema, table.target_table))
    time.sleep(1)


def _compare(cfg: PipelineConfig, session, table) -> None:
    """Row counts on both sides and the same three rows from each."""
    import psycopg2
    from psycopg2 import sql

    ks, t = table.keyspace, table.table
    cass_rows = {str(r.id): r for r in session.execute(f"SELECT id, name, email, score, tags FROM {ks}.{t}")}
    with psycopg2.connect(**cfg.postgres.connect_kwargs(application_name="c2pg-demo")) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT id::text, name, email, score::text, tags FROM {} ORDER BY name").format(
            sql.Identifier(table.target_schema, table.target_table)))
        pg_rows = cur.fetchall()
    print(f"   rows: Cassandra {len(cass_rows)}, PostgreSQL {len(pg_rows)}")
    print(f"   {'side':<10} {'id':<36}  {'name':<12} {'email':<26} {'score':>9}  tags")
    for pid, name, email, score, tags in pg_rows[:3]:
        c = cass_rows.get(pid)
        if c is not None:
            print(f"   {'Cassandra':<10} {pid:<36}  {c.name or '':<12} {c.email or '-':<26} "
                  f"{str(c.score) if c.score is not None else '-':>9}  {sorted(c.tags or [])}")
        print(f"   {'PostgreSQL':<10} {pid:<36}  {name or '':<12} {email or '-':<26} {score or '-':>9}  "
              f"{sorted(tags or [])}")


def _count(session, ks: str, t: str) -> int:
    """A full count: fine for the demo's few rows (reconcile is the tool for real tables)."""
    return sum(1 for _ in session.execute(f"SELECT id FROM {ks}.{t}"))


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
