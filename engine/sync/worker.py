"""``PartitionWorker``: a Ray actor that owns Kafka partitions and applies their events.

Created and supervised by :class:`engine.sync.supervisor.SyncSupervisor`, which gives each
worker its partitions (``assign()``, no consumer-group rebalancing). Everything the worker
holds is derived from resume state: it reads its starting offsets from ``_c2pg.offsets``
(where the writer commits them with the data), so a restarted worker — or another worker
given the same partitions — continues exactly after the last committed batch.

Concurrency: the loop runs in the ``loop`` concurrency group (one thread); ``status``,
``pause``, ``resume`` and ``stop`` run in ``control``, so they answer while a batch is being
applied. A batch closes on ``sync.batch_max_events``, ``sync.batch_max_bytes`` or
``sync.batch_max_wait``, whichever comes first.

After each batch's PostgreSQL commit the worker also commits the same offsets to the Kafka
consumer group ``c2pg-<pipeline>``, asynchronously, for Kafka's tools to see (they are
never read back: ``_c2pg.offsets`` is the truth).

Failure: a batch that cannot be committed (PostgreSQL down, a bug) is not acknowledged:
the worker seeks its partitions back to the committed offsets and retries with backoff,
reporting ``state = "retrying"`` and the error in its status. An exception that escapes
the loop ends ``run()`` with that exception; the supervisor restarts the worker. A table
whose target cannot be made (a :class:`~engine.errors.C2pgError`: the Cassandra table is
gone, the target does not match; or DDL PostgreSQL rejects) does not end it: its partitions
are held like paused ones, the table is reported in ``refused`` with the error, and opened
again every ``REOPEN_S`` — the worker's other tables go on (a restart would only fail again).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray

from engine.config import PipelineConfig, TableConfig
from engine.sync_status import WindowRate, in_future

if TYPE_CHECKING:
    from engine.sync.apply import Records

log = logging.getLogger("c2pg.sync.worker")

REOPEN_S = 30.0
"""How often a worker tries again to open a table it could not (``refused`` in its status)."""

STUCK_AFTER_S = 60.0
"""A partition with events waiting that has not moved for this long, with no batch in flight,
is read again from its committed offset (``PartitionWorker._unstick``). Longer than any
healthy gap between two commits of a partition with lag (a batch waits at most
``batch_max_wait``; a failing batch is rewound by the retry path itself)."""


def _tell_kafka(consumer, offsets: dict[tuple[str, int], int]) -> None:
    """Commit to the Kafka consumer group (``c2pg-<pipeline>``) the offsets PostgreSQL has
    just committed, asynchronously, so Kafka's tools (``kafka-consumer-groups.sh``, Burrow,
    lag exporters) see c2pg's progress. PostgreSQL stays the source of truth: the worker
    starts from ``_c2pg.offsets``, never from these, and a commit that fails (logged by
    :func:`_on_kafka_commit`) changes nothing but what the tools show."""
    if consumer is None or not offsets:
        return
    from confluent_kafka import TopicPartition

    try:
        consumer.commit(offsets=[TopicPartition(t, p, nxt) for (t, p), nxt in offsets.items()], asynchronous=True)
    except Exception as exc:  # noqa: BLE001 - the tools' view only; the data is committed
        log.debug("consumer group offsets not committed to Kafka: %s", exc)


def _on_kafka_commit(err, partitions) -> None:
    """The consumer's ``on_commit`` callback (run inside ``poll``): a failed commit is logged."""
    if err is not None:
        log.info("consumer group offsets not committed to Kafka (%s); the next batch commits again", err)

GC_GEN0_THRESHOLD = 50_000
"""Allocations between two young-generation collections in a worker (Python's default: 700)."""


def _quiet_gc() -> None:
    """Keep the cyclic garbage collector off the batch loop's back. Every batch allocates
    tens of thousands of short-lived objects (Kafka messages, decoded records, lists), which
    at the default threshold woke the collector every 700 of them, and each of its older
    collections walked everything the process holds (Ray, the drivers, pyarrow). The objects
    alive once the worker is set up are frozen (never scanned again) and the young
    generation is collected every ``GC_GEN0_THRESHOLD`` allocations instead; cycles are
    still collected, just in fewer, larger passes. Called by :meth:`PartitionWorker.run`
    once, before its loop: the process is the actor's alone."""
    import gc

    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


@dataclass
class PartitionState:
    topic: str
    partition: int
    next_offset: int | None = None  # committed: the next offset to apply
    high_watermark: int | None = None
    last_write_ts_us: int | None = None  # the newest Cassandra write time applied (a maximum)
    events: int = 0
    # events/s over the last RATE_WINDOW_S; counts from when the worker built this state.
    rate: WindowRate = field(default_factory=lambda: WindowRate(time.monotonic()))
    # When the partition last moved (a commit) or had nothing waiting (lag 0): _unstick.
    progress_at: float = field(default_factory=time.monotonic)

    @property
    def lag(self) -> int | None:
        if self.high_watermark is None:
            return None
        return max(0, self.high_watermark - (self.next_offset or 0))


@dataclass
class WorkerState:
    state: str = "starting"  # starting | running | paused | retrying | stopped | failed
    error: str | None = None
    batches: int = 0
    retries: int = 0  # batches not applied (rewound and read again), since the worker started
    # When the batch in flight was handed to the write thread (time.monotonic()), None when
    # none is: status() reports its age, so a batch PostgreSQL holds (a lock on the target
    # table, a slow merge) shows while it lasts instead of a worker that looks "running".
    writing_since: float | None = None
    paused_tables: set[str] = field(default_factory=set)
    paused_all: bool = False


@ray.remote(concurrency_groups={"loop": 1, "control": 4})  # type: ignore[call-overload]
class PartitionWorker:
    def __init__(self, cfg: PipelineConfig, worker_id: int, partitions: list[tuple[str, int]],
                 paused_tables: list[str] | None = None, paused_all: bool = False):
        from engine import log as c2pg_log

        c2pg_log.configure()
        c2pg_log.bind(pipeline=cfg.name)
        self.cfg = cfg
        self.worker_id = worker_id
        self.partitions: list[tuple[str, int]] = [(str(t), int(p)) for t, p in partitions]
        self.state = WorkerState(paused_tables=set(paused_tables or []), paused_all=paused_all)
        self.parts = {(t, p): PartitionState(t, p) for t, p in self.partitions}
        self._stop = threading.Event()
        # Writes batch N while the loop prepares batch N+1 (run()); one thread: in order.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="c2pg-write")
        self._pg_lock = threading.RLock()  # the connection's: a write, or a schema refresh
        self._lock = threading.Lock()
        self._watermarks_at = 0.0
        self._paused: set[tuple[str, int]] = set()
        # Kafka record time → PostgreSQL commit, per event, for the last 20,000 events.
        self.latencies: deque[float] = deque(maxlen=20_000)
        self.tables: dict[str, TableConfig] = {cfg.kafka.topic_for(t.keyspace, t.table): t for t in cfg.tables}
        # The capture heartbeat's topic (engine.capture): assigned like a table's, applied apart.
        from engine.capture import heartbeat_topic

        self.heartbeat_topic = heartbeat_topic(cfg) if cfg.capture.heartbeat else None
        self._renew_at = 0.0
        self._heartbeats_failed = False  # the last heartbeat batch failed (state "retrying")
        # As an actor, the node it runs on; as the plain class (unit tests), none: asking Ray's
        # runtime context outside Ray would start a local Ray instance.
        in_ray = ray.is_initialized()
        self.node = {"node_id": ray.get_runtime_context().get_node_id() if in_ray else None,
                     "node_ip": ray.util.get_node_ip_address() if in_ray else None, "pid": os.getpid()}
        self._refused: dict[str, str] = {}  # topic → why its table could not be opened (_open_tables)
        self._reopen_at = 0.0
        self._renew_at = 0.0

    # --- control -----------------------------------------------------------------------

    @ray.method(concurrency_group="control")
    def where(self) -> dict:
        """The Ray node this worker runs on (``node_id``, ``node_ip``) and its ``pid``: the
        supervisor asks once after starting it, to place the next workers and to know which
        partitions a lost node held."""
        return dict(self.node)

    @ray.method(concurrency_group="control")
    def status(self) -> dict:
        with self._lock:
            lat = sorted(self.latencies)
            mono, wall = time.monotonic(), time.time()
            since = self.state.writing_since
            return {"worker": self.worker_id, **self.node, "state": self.state.state, "error": self.state.error,
                    "batches": self.state.batches, "retries": self.state.retries,
                    "batch_in_flight_s": None if since is None else round(mono - since, 1),
                    "latency_ms": {"p50": round(lat[len(lat) // 2], 1), "p99": round(lat[int(len(lat) * 0.99)], 1),
                                   "events": len(lat)} if lat else None, "paused_all": self.state.paused_all,
                    "paused_tables": sorted(self.state.paused_tables),
                    "refused": {self._table_name(t): e for t, e in self._refused.items()},
                    "partitions": [{"topic": p.topic, "partition": p.partition, "table": self._table_name(p.topic),
                                    "heartbeat": p.topic == self.heartbeat_topic,
                                    "offset": p.next_offset, "high_watermark": p.high_watermark, "lag": p.lag,
                                    "last_write_ts_us": p.last_write_ts_us,
                                    "last_write_in_future": in_future(p.last_write_ts_us, wall),
                                    "events": p.events, "events_per_s": round(p.rate.per_second(mono), 1)}
                                   for p in self.parts.values()]}

    @ray.method(concurrency_group="control")
    def pause(self, table: str | None = None) -> None:
        with self._lock:
            if table is None:
                self.state.paused_all = True
            else:
                self.state.paused_tables.add(table)

    @ray.method(concurrency_group="control")
    def resume(self, table: str | None = None) -> None:
        with self._lock:
            if table is None:
                self.state.paused_all = False
                self.state.paused_tables.clear()
            else:
                self.state.paused_tables.discard(table)

    @ray.method(concurrency_group="control")
    def stop(self) -> None:
        """Finish the batch in flight, then leave the loop (``run()`` returns)."""
        self._stop.set()

    # --- the loop ------------------------------------------------------------------------

    @ray.method(concurrency_group="loop")
    def run(self) -> str:
        import psycopg2
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

        from engine import cql
        from engine.capture import HeartbeatApplier

        cfg = self.cfg
        conn = psycopg2.connect(**cfg.postgres.connect_kwargs(application_name=f"c2pg-sync-{self.worker_id}"))
        cluster, session = cql.connect(cfg.cassandra)
        consumer = Consumer({**cfg.kafka.client_conf(), "group.id": f"c2pg-{cfg.name}",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest",
                             "enable.partition.eof": False, "on_commit": _on_kafka_commit})
        # Watermarks of partitions this worker does not fetch (paused ones) come from a
        # consumer of their own: on the fetching consumer's connection the request waits
        # behind a long-polling fetch and times out, leaving the lag figure stale.
        offsets_reader = Consumer({**cfg.kafka.client_conf(), "group.id": f"c2pg-{cfg.name}-watermarks",
                                   "enable.auto.commit": False})
        try:
            registry = None
            if cfg.kafka.value_format == "avro":
                from confluent_kafka.schema_registry import SchemaRegistryClient

                registry = SchemaRegistryClient(cfg.schema_registry.client_conf())
            # One lock for the connection the appliers share: the write thread holds it for a
            # transaction, a schema refresh (in the loop's thread) for its DDL.
            appliers: dict = {}
            self._open_tables(appliers, {t for t, _ in self.partitions if t != self.heartbeat_topic},
                              conn, session, registry)
            if any(t == self.heartbeat_topic for t, _ in self.partitions):
                appliers[self.heartbeat_topic] = HeartbeatApplier(cfg, conn, session, registry)
            committed = self._committed_offsets(conn)
            # A pipeline new to the heartbeat topic starts at its end: older heartbeats (of
            # other pipelines, or from before) say nothing about capture now. The end is read
            # here, so the partition's offset and lag are known before its first batch.
            for t, p in self.partitions:
                if t == self.heartbeat_topic and (t, p) not in committed:
                    try:
                        committed[(t, p)] = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=5)[1]
                    except Exception:  # noqa: BLE001 - the end then, offset unknown until a batch
                        committed[(t, p)] = OFFSET_END
            consumer.assign([TopicPartition(t, p, committed.get((t, p), OFFSET_BEGINNING)) for t, p in self.partitions])
            with self._lock:
                for key, off in committed.items():
                    if key in self.parts and off >= 0:
                        self.parts[key].next_offset = off
                self.state.state = "running"
            backoff = 1.0
            kafka = consumer if cfg.sync.kafka_group_commit else None
            _quiet_gc()
            # Batch N+1 is polled, decoded and reduced here while batch N is written in the
            # write thread (its PostgreSQL work releases the GIL). One batch in flight at a
            # time, written in order: N+1 is handed over only after N committed; when N
            # fails, N+1 is dropped and both are read again from the committed offsets.
            inflight: Future | None = None
            while not self._stop.is_set():
                if inflight is None:
                    conn = self._renew(conn, appliers)
                if self._refused and time.monotonic() >= self._reopen_at:
                    self._open_tables(appliers, set(self._refused), conn, session, registry)
                self._apply_pauses(consumer)
                batch = self._poll_batch(consumer)
                self._refresh_watermarks(consumer, offsets_reader)
                if inflight is None:
                    self._unstick(consumer)
                prepared, error = None, None
                if batch:
                    try:
                        prepared = self._prepare(batch, appliers)
                    except Exception as exc:  # noqa: BLE001 - handled below, after the batch in flight
                        error = exc
                if inflight is not None:
                    try:
                        _tell_kafka(kafka, inflight.result())
                        backoff = 1.0
                    except Exception as exc:  # noqa: BLE001 - not committed: rewind, report, retry
                        error, prepared = exc, None
                    inflight = None
                    with self._lock:
                        self.state.writing_since = None
                if error is not None:
                    log.warning("batch not applied (%s: %s); retrying in %.0fs", type(error).__name__, error,
                                backoff)
                    with self._lock:
                        self.state.state, self.state.error = "retrying", f"{type(error).__name__}: {error}"
                        self.state.retries += 1
                    self._rewind(consumer)
                    self._stop.wait(backoff)
                    backoff = min(30.0, backoff * 2)
                    conn = self._reconnect(conn, appliers)
                elif prepared is not None:
                    with self._lock:
                        self.state.writing_since = time.monotonic()
                    inflight = self._writer.submit(self._write, prepared, appliers)
            if inflight is not None:  # stopping: finish the batch in flight
                try:
                    _tell_kafka(kafka, inflight.result())
                except Exception as exc:  # noqa: BLE001 - not committed; the next start re-reads it
                    log.warning("last batch not applied (%s: %s)", type(exc).__name__, exc)
            with self._lock:
                self.state.state, self.state.writing_since = "stopped", None
            return "stopped"
        finally:
            consumer.close()
            offsets_reader.close()
            cluster.shutdown()
            conn.close()

    def _open_tables(self, appliers: dict, topics: set[str], conn, session, registry) -> None:
        """Open a :class:`~engine.sync.apply.TableApplier` for each of ``topics`` (it reads the
        table's definition and makes or evolves its target). A table that cannot be opened
        for a reason a restart would not cure is recorded in ``_refused`` (status), its
        partitions held, and tried again after ``REOPEN_S``; any other failure (a server
        down) raises, as before."""
        import psycopg2

        from engine.errors import C2pgError
        from engine.sync.apply import TableApplier

        for topic in sorted(topics):
            try:
                with self._pg_lock:
                    appliers[topic] = TableApplier(self.cfg, self.tables[topic], conn, session, registry,
                                                   lock=self._pg_lock)
            except (C2pgError, psycopg2.ProgrammingError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                if self._refused.get(topic) != error:
                    log.error("table %s not opened (its partitions are held): %s", self._table_name(topic), error)
                with self._lock:
                    self._refused[topic] = error
                continue
            with self._lock:
                if self._refused.pop(topic, None) is not None:
                    log.warning("table %s opened; applying its partitions", self._table_name(topic))
        self._reopen_at = time.monotonic() + REOPEN_S

    def _table_name(self, topic: str) -> str:
        if topic == self.heartbeat_topic:
            return "(capture heartbeat)"
        t = self.tables.get(topic)
        return f"{t.keyspace}.{t.table}" if t else topic

    def _committed_offsets(self, conn) -> dict[tuple[str, int], int]:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT topic, kafka_partition, next_offset FROM _c2pg.offsets WHERE pipeline = %s",
                        (self.cfg.name,))
            return {(t, p): o for t, p, o in cur.fetchall()}

    def _apply_pauses(self, consumer) -> None:
        from confluent_kafka import TopicPartition

        with self._lock:
            # The heartbeat's partitions are never paused: a paused pipeline still proves
            # that capture works (and would otherwise look stalled).
            tables = [p for p in self.partitions if p[0] != self.heartbeat_topic]
            paused = {p for p in tables
                      if self.state.paused_all or self._table_name(p[0]) in self.state.paused_tables}
            refused = {p for p in tables if p[0] in self._refused}
            if self.state.state in ("running", "paused", "refused"):
                self.state.state = ("refused" if refused and len(refused) == len(tables) else
                                    "paused" if paused | refused and len(paused | refused) == len(tables) else
                                    "running")
            paused |= refused  # not fetched until the table opens (_open_tables)
        self._paused = paused
        running = [p for p in self.partitions if p not in paused]
        if paused:
            consumer.pause([TopicPartition(t, p) for t, p in paused])
        if running:
            consumer.resume([TopicPartition(t, p) for t, p in running])

    def _poll_batch(self, consumer) -> Records:
        """The next batch (:class:`~engine.sync.apply.Records`, possibly empty): messages
        until ``batch_max_events``, ``batch_max_bytes`` or ``batch_max_wait``. Kept as the
        client's message objects until the batch closes, then turned into columns at once."""
        from engine.sync.apply import Records

        s = self.cfg.sync
        deadline = time.monotonic() + s.batch_max_wait.total_seconds()
        msgs: list = []
        size = 0
        while len(msgs) < s.batch_max_events and size < s.batch_max_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                break
            got = consumer.consume(num_messages=min(1000, s.batch_max_events - len(msgs)),
                                   timeout=min(remaining, s.poll_timeout.total_seconds()))
            good = [m for m in got if m.error() is None]
            if len(good) < len(got):
                for m in got:
                    if m.error() is not None:
                        log.warning("kafka: %s", m.error())
            msgs.extend(good)
            size += sum(len(m) + len(m.key() or b"") for m in good)  # len(message): its value's
        return Records.from_messages(msgs)

    def _prepare(self, batch: Records, appliers: dict) -> list[tuple[str, Records, dict, Any]]:
        """Per topic of ``batch``: its records, next offsets and prepared batch (a table's,
        :meth:`TableApplier.prepare`; ``None`` for the capture heartbeats, applied whole)."""
        by_topic = batch.by_topic()
        out = []
        # Heartbeats first, on their own (see _write).
        for topic in sorted(by_topic, key=lambda t: t != self.heartbeat_topic):
            records = by_topic[topic]
            next_offsets = records.next_offsets()
            prepared = None if topic == self.heartbeat_topic else appliers[topic].prepare(records, next_offsets)
            out.append((topic, records, next_offsets, prepared))
        return out

    def _write(self, prepared: list[tuple[str, Records, dict, Any]], appliers: dict) -> dict[tuple[str, int], int]:
        """Write each topic's prepared batch (one transaction each) and count it; → the
        offsets committed, for the Kafka consumer group. Runs in the write thread; raises
        the first table's failure (the tables before it stay committed and counted)."""
        committed: dict[tuple[str, int], int] = {}
        for topic, records, next_offsets, p in prepared:
            if p is None:
                # A table batch that keeps failing must not hold heartbeats back (capture would
                # look stalled), and a heartbeat that cannot be recorded must not stop the
                # tables (it is re-read after a restart or rewind; the next one comes anyway).
                try:
                    with self._pg_lock:
                        appliers[topic].apply(records, next_offsets)
                    self._advance(records, next_offsets, None, time.monotonic(), count_batch=False)
                    committed.update(next_offsets)
                except Exception as exc:  # noqa: BLE001 - logged and shown; the tables go on
                    log.warning("capture heartbeats not recorded (%s: %s)", type(exc).__name__, exc)
                    with contextlib.suppress(Exception):
                        appliers[topic].conn.rollback()
                    with self._lock:  # the worker cannot write: say so until it can (_advance, _renew)
                        self.state.state = "retrying"
                        self._heartbeats_failed = True
                        self.state.error = f"capture heartbeats not recorded: {type(exc).__name__}: {exc}"
                continue
            t0 = time.monotonic()
            result = appliers[topic].write(p)
            _metrics().record(self.cfg.name, self._table_name(topic), result, time.monotonic() - t0)
            self._publish_dead(result.dead)
            committed_ms, committed_at = time.time() * 1000, time.monotonic()
            with self._lock:
                self.latencies.extend([committed_ms - ts for ts in records.timestamps if ts])
            self._advance(records, next_offsets, result.max_write_ts_us, committed_at)
            committed.update(next_offsets)
        return committed

    def _advance(self, records: Records, next_offsets: dict, max_write_ts_us: int | None, committed_at: float,
                 count_batch: bool = True) -> None:
        """After a commit: count the batch (a table's; heartbeats are not the tables' batches)
        and move the in-memory offsets it covered."""
        with self._lock:
            if count_batch:
                self.state.batches += 1
            self.state.error = None
            self._heartbeats_failed = False
            if self.state.state == "retrying":  # recovered; _apply_pauses says paused if so
                self.state.state = "running"
            counts = Counter(zip(records.topics, records.partitions))
            for (t, p), nxt in next_offsets.items():
                st = self.parts[(t, p)]
                n = counts[(t, p)]
                st.events += n
                st.next_offset = nxt
                st.progress_at = committed_at
                if max_write_ts_us:
                    st.last_write_ts_us = max(st.last_write_ts_us or 0, max_write_ts_us)
                st.rate.add(n, committed_at)

    def _publish_dead(self, dead) -> None:
        """Copy committed dead letters to ``kafka.dlq_topic`` when one is set (at least once:
        the table is the record of truth; a publish failure is logged, not retried)."""
        if not dead or not self.cfg.kafka.dlq_topic:
            return
        from engine.dlq import DlqPublishError, publish_to_topic

        for d in dead:
            try:
                publish_to_topic(self.cfg.kafka.client_conf(), self.cfg.kafka.dlq_topic, d, pipeline=self.cfg.name)
            except DlqPublishError as exc:
                log.warning("dead letter not copied to %s: %s", self.cfg.kafka.dlq_topic, exc)

    def _refresh_watermarks(self, consumer, offsets_reader) -> None:
        """High watermarks for the lag figures, at most once a second (this runs in the apply
        loop). A partition being fetched has its high watermark in every fetch response, so
        the consumer's cached value is read (no round trip); a paused one is not fetched, so
        ``offsets_reader`` (a consumer that fetches nothing) asks the broker: on the fetching
        consumer's connection that request waits behind a long-polling fetch."""
        from confluent_kafka import TopicPartition

        now = time.monotonic()
        if now - self._watermarks_at < 1.0:
            return
        self._watermarks_at = now
        for (t, p), st in self.parts.items():
            tp = TopicPartition(t, p)
            try:
                high = -1
                if (t, p) not in self._paused:
                    high = consumer.get_watermark_offsets(tp, cached=True)[1]
                if high < 0:  # paused, or no fetch response yet
                    high = offsets_reader.get_watermark_offsets(tp, timeout=1.0, cached=False)[1]
            except Exception:  # noqa: BLE001 - a transient metadata error only delays the lag figure
                continue
            st.high_watermark = high
            if not st.lag:
                st.progress_at = now  # caught up: nothing to move
            _metrics().lag(self.cfg.name, t, p, st.lag)

    def _rewind(self, consumer) -> None:
        """Put every partition back at its committed offset (the failed batch is re-read).

        By assigning them again with those offsets, not by ``seek``: librdkafka refuses a
        seek for a partition not in an active fetch state (while Kafka restarts, say), and a
        refused seek that was ignored left the consumer past events never applied. An
        assignment always takes; if even that fails the worker fails, and the supervisor
        starts a new one from the offsets in PostgreSQL."""
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

        with self._lock:
            positions = {k: st.next_offset for k, st in self.parts.items()}
            now = time.monotonic()
            for st in self.parts.values():
                st.progress_at = now
        consumer.assign([TopicPartition(t, p, off if off is not None else
                                        OFFSET_END if t == self.heartbeat_topic else OFFSET_BEGINNING)
                         for (t, p), off in positions.items()])

    def _unstick(self, consumer) -> None:
        """A partition with events waiting (lag) that has not moved for ``STUCK_AFTER_S`` while
        nothing was in flight is re-read from its committed offset: whatever left the consumer's
        fetch position wrong or idle (a broker restart mid-fetch, a lost seek), the worker
        recovers by itself instead of showing a lag that never shrinks. Called by the apply
        loop with no batch in flight; paused and refused tables are not fetched, so not judged."""
        now = time.monotonic()
        with self._lock:
            stuck = [(k, st.lag) for k, st in self.parts.items()
                     if k not in self._paused and st.lag and now - st.progress_at > STUCK_AFTER_S]
        if stuck:
            log.warning("partition(s) %s have not moved for %.0f s with events waiting; reading them again "
                        "from the committed offsets", ", ".join(f"{t}/{p} (lag {lag})" for (t, p), lag in stuck),
                        STUCK_AFTER_S)
            self._rewind(consumer)

    def _renew(self, conn, appliers: dict):
        """The loop's connection, made anew (at most once a second) when PostgreSQL closed it.

        A failed table batch reconnects on its own way out (:meth:`_reconnect` after the
        backoff); this is for a worker with nothing else to write: after a PostgreSQL restart
        its heartbeats failed for ever on the closed connection while its status said
        ``running``, and capture was reported stalled, blaming the connector."""
        if not conn.closed or time.monotonic() < self._renew_at:
            return conn
        self._renew_at = time.monotonic() + 1.0
        new = self._reconnect(conn, appliers)
        with self._lock:
            if new is not conn and self._heartbeats_failed and self.state.state == "retrying":
                # What failed was the connection, and there is a new one: the worker can write
                # again (its partitions may stay quiet, so no commit would say so).
                self.state.state, self.state.error = "running", None
                self._heartbeats_failed = False
        return new

    def _reconnect(self, conn, appliers: dict):
        """A new connection when the old one is closed (PostgreSQL restarted)."""
        import psycopg2

        if not conn.closed:
            return conn
        try:
            new = psycopg2.connect(**self.cfg.postgres.connect_kwargs(application_name=f"c2pg-sync-{self.worker_id}"))
        except psycopg2.OperationalError:
            return conn
        for applier in appliers.values():
            applier.conn = new
            if hasattr(applier, "writer"):
                applier.writer.conn = new
        return new


class _Metrics:
    """c2pg's sync metrics in the Ray dashboard / Prometheus (``ray_`` prefix added by Ray)."""

    def __init__(self) -> None:
        from ray.util import metrics

        self.events = metrics.Counter("c2pg_sync_events", "change events consumed",
                                      tag_keys=("pipeline", "table"))
        self.applied = metrics.Counter("c2pg_sync_rows_applied", "reduced rows merged",
                                       tag_keys=("pipeline", "table"))
        self.dead = metrics.Counter("c2pg_sync_dead_letters", "events sent to the dead letters",
                                    tag_keys=("pipeline", "table"))
        self.latency = metrics.Histogram("c2pg_sync_apply_seconds", "seconds to apply one batch",
                                         boundaries=[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
                                         tag_keys=("pipeline", "table"))
        self.batch = metrics.Histogram("c2pg_sync_batch_events", "events per batch",
                                       boundaries=[10, 100, 500, 1000, 5000, 10000], tag_keys=("pipeline", "table"))
        self.delay = metrics.Gauge("c2pg_sync_delay_seconds", "now minus the newest write time applied",
                                   tag_keys=("pipeline", "table"))
        self.lag_gauge = metrics.Gauge("c2pg_sync_lag", "records not yet applied, per partition",
                                       tag_keys=("pipeline", "topic", "partition"))
        self.read_back = metrics.Counter("c2pg_sync_read_back_rows",
                                         "rows read back from Cassandra before the merge (engine.readback)",
                                         tag_keys=("pipeline", "table"))

    def record(self, pipeline: str, table: str, result, seconds: float) -> None:
        tags = {"pipeline": pipeline, "table": table}
        # Ray's Counter.inc refuses 0: a batch of dead letters only, or of events older than
        # the stored cells, applies no row. Raising here, after the commit, would report the
        # worker "retrying" and leave its in-memory offsets behind the committed ones.
        if result.events:
            self.events.inc(result.events, tags)
        if result.applied_rows:
            self.applied.inc(result.applied_rows, tags)
        if result.dead_letters:
            self.dead.inc(result.dead_letters, tags)
        if result.read_back.rows:
            self.read_back.inc(result.read_back.rows, tags)
        self.latency.observe(seconds, tags)
        self.batch.observe(result.events, tags)
        if result.max_write_ts_us:
            self.delay.set(max(0.0, time.time() - result.max_write_ts_us / 1e6), tags)

    def lag(self, pipeline: str, topic: str, partition: int, lag: int | None) -> None:
        if lag is not None:
            self.lag_gauge.set(lag, {"pipeline": pipeline, "topic": topic, "partition": str(partition)})


_METRICS: _Metrics | None = None


def _metrics() -> _Metrics:
    global _METRICS
    if _METRICS is None:
        _METRICS = _Metrics()
    return _METRICS
