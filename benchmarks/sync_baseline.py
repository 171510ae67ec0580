"""The sync benchmark's baseline: the Debezium JDBC sink connector in Kafka Connect standalone.

What a user would otherwise pick to keep PostgreSQL equal to a Kafka topic of change events:
Kafka Connect (``org.apache.kafka:connect-runtime``, the local stack's Kafka version) running
Debezium's JDBC sink (``io.debezium:debezium-connector-jdbc``, its published plugin archive),
both from Maven Central, in upsert mode into the same PostgreSQL. The sink needs whole rows, so
it reads a "flattened" topic: the row's after-image as JSON with an embedded schema, and a
tombstone for a delete (what Debezium's ``ExtractNewRecordState`` SMT would have produced).

    .venv/bin/python -m benchmarks.sync_baseline --selftest [--events 20000]

The self test fills a fresh topic (inserts, then updates and deletes over ``events / 2`` keys),
runs the sink into a fresh table and checks the table holds exactly the expected rows.
``benchmarks/jdbc_sink/README.md`` says more: versions, configuration, how time is measured.

API for ``benchmarks/sync.py``: :func:`prepare_flat_topic`, :func:`run_jdbc_sink`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import psycopg2
from psycopg2 import sql

from engine.stack import versions as v
from engine.stack.launcher import default_root
from engine.stack.services import StackPaths, copy_maven_deps, java_bin, log4j2_xml, maven

# Debezium 3.6.1.Final's JDBC sink is not on Maven Central (the jar and POM answer 404);
# 3.6.0.Final is, with its plugin archive. The stack's own Debezium (3.4.1.Final, the
# Cassandra connector) has no JDBC sink there either.
DEBEZIUM_JDBC = "3.6.0.Final"
CONNECTOR_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"
SERVICE = "jdbc-sink"
POM = Path(__file__).resolve().parent / "jdbc_sink" / "pom.xml"

# Columns of the flattened row, as JsonConverter's schema type names and as the PostgreSQL table.
FIELDS: tuple[tuple[str, str, bool], ...] = (  # (name, Connect type, optional)
    ("id", "int64", False), ("name", "string", True), ("qty", "int32", True),
    ("price", "double", True), ("updated", "int64", True),
)
TABLE_COLUMNS = ("id bigint PRIMARY KEY, name text, qty integer, price double precision, "
                 "updated bigint")

# Like the stack's Kafka: to stdout, which goes to .stack/logs/jdbc-sink.log.
LOG4J2_XML = log4j2_xml({"org.apache.kafka": "INFO", "org.apache.kafka.clients": "WARN", "io.debezium": "INFO",
                         "org.hibernate": "WARN", "org.reflections": "ERROR"})

# The JVM options of Kafka's own bin/connect-standalone.sh (kafka-run-class.sh defaults).
JVM_OPTS = ["-Xms256m", "-Xmx2g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true"]


# --- the flattened topic -------------------------------------------------------------------


def _schema(fields: tuple[tuple[str, str, bool], ...], name: str) -> dict[str, Any]:
    return {"type": "struct", "optional": False, "name": name,
            "fields": [{"field": f, "type": t, "optional": opt} for f, t, opt in fields]}


# JsonConverter (schemas.enable=true) envelopes; the schema part is the same for every record.
_KEY_PREFIX = b'{"schema":' + orjson.dumps(_schema(FIELDS[:1], "c2pg.bench.Key")) + b',"payload":'
_VALUE_PREFIX = b'{"schema":' + orjson.dumps(_schema(FIELDS, "c2pg.bench.Value")) + b',"payload":'
_VALUE_FIELDS = tuple(f for f, _, _ in FIELDS)


def encode_key(key: dict[str, Any]) -> bytes:
    return _KEY_PREFIX + orjson.dumps({"id": int(key["id"])}) + b"}"


def encode_value(row: dict[str, Any] | None) -> bytes | None:
    """The whole row as JsonConverter writes it; ``None`` (a tombstone) for a delete."""
    if row is None:
        return None
    return _VALUE_PREFIX + orjson.dumps({f: row.get(f) for f in _VALUE_FIELDS}) + b"}"


def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    """Create ``topic`` (3 partitions, like the stack's auto-created topics). One that exists
    already is accepted when it has ``partitions`` partitions."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 30
    while True:
        fut = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic]
        try:
            fut.result(timeout=30)
            break
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            md = admin.list_topics(timeout=5).topics.get(topic)
            if md is not None and md.error is None:
                if len(md.partitions) != partitions:
                    raise ValueError(f"topic {topic} exists with {len(md.partitions)} partitions, "
                                     f"not {partitions}") from e
                break
            if time.monotonic() > deadline:  # still being deleted
                raise
            time.sleep(0.2)
    while time.monotonic() < deadline + 30:  # metadata reaches the broker's cache shortly after
        md = admin.list_topics(timeout=5).topics.get(topic)
        if md is not None and md.error is None and len(md.partitions) == partitions:
            return
        time.sleep(0.1)
    raise TimeoutError(f"topic {topic} has no metadata after creation")


def delete_topic(bootstrap: str, topic: str) -> None:
    """Delete ``topic`` if it exists and wait until the broker no longer lists it."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the future resolves
    try:
        admin.delete_topics([topic])[topic].result(timeout=30)
    except KafkaException as e:
        if e.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise
        return
    deadline = time.monotonic() + 60
    while topic in admin.list_topics(timeout=5).topics:
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} still listed 60 s after its deletion")
        time.sleep(0.1)


def delete_group(bootstrap: str, group: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_consumer_groups([group])[group].result(timeout=30)


def _records_in(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"c2pg-probe-{uuid.uuid4().hex[:8]}"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(hi - lo for lo, hi in (c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                                          for p in parts))
    finally:
        c.close()


def prepare_flat_topic(bootstrap: str, topic: str,
                       events: Iterable[tuple[dict[str, Any], dict[str, Any] | None]],
                       *, partitions: int = 3, compression: str = "none") -> int:
    """Write ``events`` (key ``{id}``, value the full after-image row or ``None`` for a delete)
    to ``topic`` (created unless it exists; it must be empty) in the form the JDBC sink
    consumes; returns the number written.

    Records of one key go to one partition in the given order (keyed messages), which is all
    the order an upsert sink can rely on.
    """
    from confluent_kafka import KafkaException, Producer

    create_topic(bootstrap, topic, partitions)
    held = _records_in(bootstrap, topic)
    if held:  # run_jdbc_sink counts committed offsets: the topic must hold these events only
        raise ValueError(f"topic {topic} already holds {held:,} records; delete it first")
    errors: list[str] = []

    def on_delivery(err, _msg) -> None:
        if err is not None and len(errors) < 10:
            errors.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20,
                         "batch.size": 1_000_000, "compression.type": compression,
                         "queue.buffering.max.messages": 500_000, "enable.idempotence": True})
    n = 0
    for key, value in events:
        k, val = encode_key(key), encode_value(value)
        while True:
            try:
                producer.produce(topic, value=val, key=k, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise KafkaException(f"{topic}: records still undelivered after 120 s")
    if errors:
        raise KafkaException(f"{topic}: delivery failed: {'; '.join(errors)}")
    return n


# --- Kafka Connect and the connector -------------------------------------------------------


def install(paths: StackPaths | None = None) -> tuple[Path, Path]:
    """Resolve the worker's classpath and the connector's plugin directory, once.

    ``.stack/dist/jdbc-sink-<debezium>/kafka-<kafka>/`` holds connect-runtime and the log4j
    jars; ``.../plugins/debezium-connector-jdbc/`` Debezium's unpacked plugin archive.
    Returns (worker lib dir, plugin.path dir).
    """
    paths = paths or StackPaths(default_root())
    dist = paths.dist / f"jdbc-sink-{DEBEZIUM_JDBC}"
    log = paths.log(f"install-{SERVICE}")
    worker = dist / f"kafka-{v.KAFKA}"
    # copy_maven_deps joins its pom name to engine/stack/maven/; an absolute path stays itself.
    copy_maven_deps(SERVICE, str(POM), {"part": "worker", "kafka.version": v.KAFKA,
                                        "log4j.version": v.KAFKA_LOG4J}, worker, log)
    plugins = dist / "plugins"
    if not (plugins / ".complete").exists():
        shutil.rmtree(plugins, ignore_errors=True)
        maven(SERVICE, ["-f", str(POM), "-Dpart=connector", f"-Ddebezium.version={DEBEZIUM_JDBC}",
                        "dependency:unpack-dependencies", "-DincludeTypes=tar.gz",
                        f"-DoutputDirectory={plugins}",
                        # its "already unpacked" markers would land in benchmarks/jdbc_sink/target/
                        f"-DmarkersDirectory={dist / '.markers'}"], log)
        shutil.rmtree(dist / ".markers", ignore_errors=True)
        # The archive is a pax tar: Maven's unpacker leaves its extended headers as files
        # (PaxHeaders.*/...jar, not jars) that Connect's plugin scan would trip over.
        for extra in plugins.glob("PaxHeaders*"):
            shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
        if not any((plugins / "debezium-connector-jdbc").glob("debezium-connector-jdbc-*.jar")):
            raise RuntimeError(f"{plugins}: the plugin archive held no connector jar (see {log})")
        (plugins / ".complete").write_text(DEBEZIUM_JDBC)
    return worker, plugins


def free_port() -> int:
    """A free loopback port that is none of the stack's."""
    taken = set(v.PORTS.values())
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((v.HOST, 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def _http_json(url: str, timeout_s: float = 3.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read() or b"null")


def _properties(props: dict[str, Any]) -> str:
    def esc(s: str) -> str:  # java.util.Properties: backslash escapes
        return s.replace("\\", "\\\\").replace("\n", "\\n")
    return "".join(f"{k}={esc(str(val))}\n" for k, val in props.items())


def _qualified(table: str) -> sql.Composed:
    return sql.SQL(".").join(sql.Identifier(p) for p in table.split("."))


def recreate_table(pg: dict[str, Any], table: str) -> None:
    """Drop and create ``table`` (``schema.table`` or ``table``) with the flattened row's columns."""
    with psycopg2.connect(**pg) as conn, conn.cursor() as cur:
        if "." in table:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.split(".")[0])))
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_qualified(table)))
        cur.execute(sql.SQL("CREATE TABLE {} (" + TABLE_COLUMNS + ")").format(_qualified(table)))
    conn.close()


def _committed(consumer, partitions) -> int:
    """Records the group has committed on ``partitions`` (offsets start at 0 on a new topic)."""
    return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=5))


def _log_tail(path: Path, nbytes: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - nbytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM the worker's process group (Connect stops its tasks), SIGKILL after ``timeout_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def run_jdbc_sink(bootstrap: str, topic: str, pg: dict[str, Any], table: str, expected_events: int,
                  *, timeout_s: float, batch_size: int = 2000, tasks_max: int | None = None,
                  reduction_buffer: bool = True, unnest_insert: bool = False,
                  rewrite_batched_inserts: bool = False, fresh_table: bool = True,
                  stack_root: Path | None = None, poll_s: float = 0.05) -> dict[str, Any]:
    """Apply ``topic`` to ``table`` with the Debezium JDBC sink in Kafka Connect standalone.

    ``pg``: host, port, dbname, user, password. The connector upserts on the record key
    (``insert.mode=upsert``, ``primary.key.mode=record_key``), deletes on tombstones, and
    reads the topic from the beginning under a new consumer group (``connect-<name>``, the
    name unique per run). ``batch_size`` is both the sink's ``batch.size`` and the consumer's
    ``max.poll.records`` (the sink never batches more than one poll). ``tasks_max`` defaults
    to the topic's partition count. ``reduction_buffer`` (``use.reduction.buffer``, off in
    Debezium's defaults) is on: without it the sink flushes its batch whenever a delete
    follows an upsert or the reverse, so on a stream mixing updates and deletes its batches
    are a few rows long and it runs ~3x slower; the baseline is the sink configured well.
    ``unnest_insert`` and ``rewrite_batched_inserts`` fail without the reduction buffer when
    a batch holds a key twice ("ON CONFLICT DO UPDATE command cannot affect row a second
    time"). With ``fresh_table`` the table is dropped and created first
    (``schema.evolution=basic`` would create it too, from the record schema).

    Done when the group's committed offsets reach ``expected_events`` (Connect commits what
    the sink reports as written, every ``offset.flush.interval.ms`` = 200 ms here) and the
    table's row count is stable. ``seconds`` runs from the first moment a row is visible in
    the table (the first batch committed) to that point: worker start-up, plugin scanning,
    Hibernate's boot and the consumer group join are left out. Returns
    ``{"events", "seconds", "events_per_s", "connector_version", ...}``.
    """
    from confluent_kafka import Consumer, TopicPartition

    paths = StackPaths(stack_root or default_root())
    worker_lib, plugins = install(paths)
    java = java_bin(SERVICE)
    if fresh_table:
        recreate_table(pg, table)

    name = f"c2pg-jdbc-sink-{uuid.uuid4().hex[:10]}"
    group = f"connect-{name}"
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    parts = probe.list_topics(topic, timeout=10).topics[topic].partitions
    partitions = [TopicPartition(topic, p) for p in sorted(parts)]
    tasks = tasks_max or len(partitions)
    port = free_port()
    url = f"http://{v.HOST}:{port}"

    tmp = Path(tempfile.mkdtemp(prefix="c2pg-jdbc-sink-"))  # 0700: the password file lives here
    (tmp / "log4j2.xml").write_text(LOG4J2_XML)
    (tmp / "worker.properties").write_text(_properties({
        "bootstrap.servers": bootstrap,
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "true",
        "value.converter.schemas.enable": "true",
        "offset.storage.file.filename": tmp / "connect.offsets",  # source offsets only; unused
        "offset.flush.interval.ms": 200,
        "listeners": url,
        "rest.advertised.host.name": v.HOST,
        "rest.advertised.port": port,
        "plugin.path": plugins,
        # Connect's own advice in its log: every plugin here has ServiceLoader manifests, and
        # the default (hybrid_warn) spends ~7 s more on a reflective scan at start-up.
        "plugin.discovery": "service_load",
        "consumer.auto.offset.reset": "earliest",
        "consumer.max.poll.records": batch_size,
    }))
    (tmp / "connector.properties").write_text(_properties({
        "name": name,
        "connector.class": CONNECTOR_CLASS,
        "tasks.max": tasks,
        "topics": topic,
        "connection.url": f"jdbc:postgresql://{pg['host']}:{pg['port']}/{pg['dbname']}"
                          + ("?reWriteBatchedInserts=true" if rewrite_batched_inserts else ""),
        "connection.username": pg["user"],
        "connection.password": pg["password"],
        "insert.mode": "upsert",
        "primary.key.mode": "record_key",
        "delete.enabled": "true",
        "schema.evolution": "basic",
        "collection.name.format": table,
        "batch.size": batch_size,
        "use.reduction.buffer": str(reduction_buffer).lower(),
        "dialect.postgres.unnest.insert.enabled": str(unnest_insert).lower(),
    }))
    os.chmod(tmp / "connector.properties", 0o600)

    log_file = paths.log(SERVICE)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [java, *JVM_OPTS, f"-Dkafka.logs.dir={paths.logs}",
           f"-Dlog4j2.configurationFile={tmp / 'log4j2.xml'}",
           "-cp", f"{worker_lib}/*", "org.apache.kafka.connect.cli.ConnectStandalone",
           str(tmp / "worker.properties"), str(tmp / "connector.properties")]
    conn = psycopg2.connect(**pg)
    conn.autocommit = True
    cur = conn.cursor()
    exists_q = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(_qualified(table))
    count_q = sql.SQL("SELECT count(*) FROM {}").format(_qualified(table))

    with open(log_file, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {name} topic={topic} table={table}\n".encode())
        out.flush()
        t_launch = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=tmp)
    try:
        deadline = t_launch + timeout_s
        t_rest = t_running = t_first = t_done = None
        committed = 0
        last_status = 0.0
        status: dict[str, Any] = {}
        while True:
            now = time.monotonic()
            if proc.poll() is not None:
                raise RuntimeError(f"Kafka Connect exited ({proc.returncode}); {log_file}:\n"
                                   f"{_log_tail(log_file)}")
            if now > deadline:
                raise TimeoutError(f"{name}: {committed:,}/{expected_events:,} records committed after "
                                   f"{timeout_s:.0f} s; status {status}; see {log_file}")
            if now - last_status >= 1.0 or t_running is None:  # the REST API: cheap, but not every 50 ms
                last_status = now
                try:
                    status = _http_json(f"{url}/connectors/{name}/status")
                    t_rest = t_rest or now
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    status = {}
                states = [t.get("state") for t in status.get("tasks", [])]
                failed = [t for t in status.get("tasks", []) if t.get("state") == "FAILED"]
                if failed or status.get("connector", {}).get("state") == "FAILED":
                    trace = (failed[0] if failed else status["connector"]).get("trace", "")
                    raise RuntimeError(f"{name} failed:\n{trace[:4000]}")
                if t_running is None and states and all(s == "RUNNING" for s in states):
                    t_running = now
            if t_first is None:
                cur.execute(exists_q)
                if cur.fetchone()[0]:
                    t_first = time.monotonic()
            committed = _committed(probe, partitions)
            if committed >= expected_events:
                t_done = time.monotonic()
                break
            time.sleep(poll_s)
        # Caught up; the table must not change any more (nothing is in flight after the commit).
        cur.execute(count_q)
        rows = cur.fetchone()[0]
        for _ in range(50):
            time.sleep(0.5)
            cur.execute(count_q)
            again = cur.fetchone()[0]
            if again == rows:
                break
            rows = again
        else:
            raise RuntimeError(f"{table}: row count still changing after the group caught up")
        plugins_info = _http_json(f"{url}/connector-plugins")
        version = next((p.get("version") for p in plugins_info if p.get("class") == CONNECTOR_CLASS), None)
        worker_info = _http_json(f"{url}/")
    finally:
        _stop(proc)
        probe.close()
        conn.close()
        shutil.rmtree(tmp, ignore_errors=True)

    assert t_done is not None
    # A topic so small that it was applied within one poll: fall back to the tasks' start.
    t_first = t_first or t_running or t_launch
    seconds = max(t_done - t_first, 1e-6)
    return {
        "events": expected_events,
        "seconds": round(seconds, 3),
        "events_per_s": round(expected_events / seconds, 1),
        "connector_version": version,
        "kafka_connect_version": worker_info.get("version"),
        "rows": rows,
        "committed": committed,
        "tasks_max": tasks,
        "group": group,
        "batch_size": batch_size,
        "reduction_buffer": reduction_buffer,
        "unnest_insert": unnest_insert,
        "rewrite_batched_inserts": rewrite_batched_inserts,
        # Seconds from launching the JVM: REST answering, all tasks RUNNING, first row seen, caught up.
        "startup": {"rest_s": _rel(t_rest, t_launch), "running_s": _rel(t_running, t_launch),
                    "first_row_s": _rel(t_first, t_launch), "done_s": _rel(t_done, t_launch)},
        "wall_seconds": round(t_done - t_launch, 3),
        "log": str(log_file),
    }


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 3)


# --- self test -----------------------------------------------------------------------------


def selftest_events(n_events: int, seed: int = 7
                    ) -> tuple[list[tuple[dict[str, Any], dict[str, Any] | None]], dict[int, dict[str, Any]]]:
    """Half inserts (one per key), a quarter updates, a quarter deletes, over ``n_events // 2``
    keys; updates and deletes are interleaved at random after the inserts and only touch live
    keys, so some keys are updated and then deleted. Returns (events, expected final rows)."""
    rng = random.Random(seed)
    n_keys = n_events // 2
    n_upd = n_events // 4
    n_del = n_events - n_keys - n_upd
    state: dict[int, dict[str, Any]] = {}
    events: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    clock = 1_700_000_000_000_000
    for i in range(n_keys):
        clock += 1
        row = {"id": i, "name": f"item {i}", "qty": i % 1000, "price": i / 7.0, "updated": clock}
        state[i] = row
        events.append(({"id": i}, dict(row)))
    live = list(state)
    ops = ["u"] * n_upd + ["d"] * n_del
    rng.shuffle(ops)
    for op in ops:
        clock += 1
        j = rng.randrange(len(live))
        k = live[j]
        if op == "d":
            live[j] = live[-1]
            live.pop()
            del state[k]
            events.append(({"id": k}, None))
        else:
            row = dict(state[k])  # a partial update (qty, price) turned into the whole after-image
            row["qty"] = rng.randrange(100_000)
            row["price"] = rng.random() * 1000
            row["updated"] = clock
            if rng.random() < 0.2:
                row["name"] = None
            state[k] = row
            events.append(({"id": k}, dict(row)))
    return events, state


def stack_pg(root: Path | None = None) -> dict[str, Any]:
    """The local stack's PostgreSQL as the ``c2pg`` role."""
    root = root or default_root()
    return {"host": v.HOST, "port": v.PORTS["postgres"], "dbname": "c2pg", "user": "c2pg",
            "password": (root / "secrets" / "postgres-password").read_text().strip()}


def selftest(n_events: int, *, keep: bool = False, **sink_kw: Any) -> dict[str, Any]:
    bootstrap = f"{v.HOST}:{v.PORTS['kafka']}"
    pg = stack_pg()
    tag = uuid.uuid4().hex[:8]
    topic, table = f"c2pg-bench-flat-selftest-{tag}", f"bench.jdbc_selftest_{tag}"
    events, expected = selftest_events(n_events)
    t0 = time.monotonic()
    result_group = None
    n = prepare_flat_topic(bootstrap, topic, events)
    print(f"topic {topic}: {n:,} events ({len(expected):,} live keys expected) "
          f"in {time.monotonic() - t0:.1f} s", flush=True)
    try:
        result = run_jdbc_sink(bootstrap, topic, pg, table, n, timeout_s=600, **sink_kw)
        result_group = result["group"]
        with psycopg2.connect(**pg) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT id, name, qty, price, updated FROM {}").format(_qualified(table)))
            got = {r[0]: dict(zip(_VALUE_FIELDS, r)) for r in cur.fetchall()}
        conn.close()
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        result["check"] = {"expected_rows": len(expected), "rows": len(got), "missing": len(missing),
                           "extra": len(extra), "different": len(wrong),
                           "examples": {"missing": missing[:5], "extra": extra[:5], "different": wrong[:5]}}
        result["ok"] = not (missing or extra or wrong)
        result["topic"], result["table"] = topic, table
        return result
    finally:
        if not keep:
            with psycopg2.connect(**pg) as conn, conn.cursor() as cur:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_qualified(table)))
            conn.close()
            delete_topic(bootstrap, topic)
            if result_group:
                delete_group(bootstrap, result_group)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--selftest", action="store_true", help="fill a fresh topic, run the sink, check the table")
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--tasks", type=int, default=None, help="tasks.max (default: the topic's partitions)")
    p.add_argument("--reduction-buffer", action=argparse.BooleanOptionalAction, default=True,
                   help="use.reduction.buffer (default: on; --no-reduction-buffer for Debezium's default)")
    p.add_argument("--unnest", action="store_true", help="dialect.postgres.unnest.insert.enabled=true")
    p.add_argument("--rewrite-batched-inserts", action="store_true",
                   help="the PostgreSQL driver's reWriteBatchedInserts=true")
    p.add_argument("--keep", action="store_true", help="keep the topic and the table afterwards")
    p.add_argument("--install-only", action="store_true", help="resolve the artifacts and stop")
    args = p.parse_args(argv)
    if args.install_only:
        worker, plugins = install()
        print(f"worker classpath: {worker}\nplugin.path: {plugins}")
        return 0
    if not args.selftest:
        p.error("nothing to do: pass --selftest (or --install-only); benchmarks/sync.py uses the API")
    result = selftest(args.events, keep=args.keep, batch_size=args.batch_size, tasks_max=args.tasks,
                      reduction_buffer=args.reduction_buffer, unnest_insert=args.unnest,
                      rewrite_batched_inserts=args.rewrite_batched_inserts)
    print(json.dumps(result, indent=2))
    print(f"{'OK' if result['ok'] else 'MISMATCH'}: {result['events']:,} events in {result['seconds']:.2f} s "
          f"= {result['events_per_s']:,.0f} events/s (Debezium JDBC sink {result['connector_version']}, "
          f"Kafka Connect {result['kafka_connect_version']})")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
