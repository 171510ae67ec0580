"""``SyncSupervisor``: one detached, named Ray actor per pipeline that runs its sync.

Started (or found) by ``python -m jobs.sync`` / ``c2pg sync start`` through
:func:`get_or_start`; looked up by name by the CLI and the Serve app. It

- lists the partitions of every configured table's topic and spreads them over
  ``sync.workers`` :class:`~engine.sync_worker.PartitionWorker` actors with ``assign()``
  (sorted partitions, round robin: the same input gives the same assignment);
- watches the workers: a worker whose ``run()`` ended is restarted with exponential
  backoff; a slot that fails ``MAX_FAILURES`` times in ``FAILURE_WINDOW_S`` is retired and
  its partitions go to the other workers;
- picks up new partitions and new topics (a table's topic appears with its first event);
- keeps its desired state (pause flags, worker count, assignment) in ``_c2pg.sync_state``,
  so a restarted supervisor (``max_restarts=-1``: Ray re-runs ``__init__``) resumes it.
  Workers are its children: they die with it and are re-created by the new incarnation,
  which continues from the offsets committed in PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import ray

from engine import faults
from engine.config import PipelineConfig

log = logging.getLogger("c2pg.sync.supervisor")

NAMESPACE = "c2pg"
MAX_FAILURES = 3
FAILURE_WINDOW_S = 300.0

STATE_DDL = """CREATE TABLE IF NOT EXISTS _c2pg.sync_state (
    pipeline text PRIMARY KEY,
    paused_all boolean NOT NULL DEFAULT false,
    paused_tables jsonb NOT NULL DEFAULT '[]',
    assignment jsonb NOT NULL DEFAULT '{}',
    stopped boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now())"""


def actor_name(pipeline: str) -> str:
    return f"c2pg-sync-{pipeline}"


def get_or_start(cfg: PipelineConfig):
    """The pipeline's supervisor: the running one, or a new detached one."""
    return SyncSupervisor.options(  # type: ignore[attr-defined]  # a Ray actor class
        name=actor_name(cfg.name), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_concurrency=8, num_cpus=0, **faults.runtime_env()).remote(cfg)


def find(pipeline: str):
    """The running supervisor of ``pipeline``, or None."""
    try:
        return ray.get_actor(actor_name(pipeline), namespace=NAMESPACE)
    except ValueError:
        return None


@ray.remote
class SyncSupervisor:
    def __init__(self, cfg: PipelineConfig):
        from engine import log as c2pg_log
        from engine.target import ensure_state

        c2pg_log.configure()
        c2pg_log.bind(pipeline=cfg.name)
        self.cfg = cfg
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.slots: dict[int, dict] = {}  # slot → {actor, ref, partitions, failures: [t], next_start}
        self.retired: set[int] = set()
        conn = self._connect()
        try:
            ensure_state(conn)
            with conn, conn.cursor() as cur:
                cur.execute(STATE_DDL)
                cur.execute("INSERT INTO _c2pg.sync_state (pipeline) VALUES (%s) ON CONFLICT DO NOTHING",
                            (cfg.name,))
                cur.execute("UPDATE _c2pg.sync_state SET stopped = false WHERE pipeline = %s", (cfg.name,))
                cur.execute("SELECT paused_all, paused_tables FROM _c2pg.sync_state WHERE pipeline = %s",
                            (cfg.name,))
                self.paused_all, paused = cur.fetchone()
                self.paused_tables = set(paused)
        finally:
            conn.close()
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._supervise, name="supervise", daemon=True)
        self._thread.start()

    # --- control -----------------------------------------------------------------------

    def status(self) -> dict:
        with self._lock:
            slots = dict(self.slots)
        workers = []
        for slot, s in sorted(slots.items()):
            try:
                st = ray.get(s["actor"].status.remote(), timeout=5)
            except Exception as exc:  # noqa: BLE001 - a dead or busy worker is reported, not fatal
                st = {"worker": slot, "state": "unreachable", "error": f"{type(exc).__name__}: {exc}",
                      "partitions": [{"topic": t, "partition": p} for t, p in s["partitions"]]}
            st["restarts"] = len(s["failures"])
            workers.append(st)
        return {"pipeline": self.cfg.name, "started_at": self.started_at, "paused_all": self.paused_all,
                "paused_tables": sorted(self.paused_tables), "workers": workers,
                "retired_slots": sorted(self.retired)}

    def pause(self, table: str | None = None) -> None:
        with self._lock:
            if table is None:
                self.paused_all = True
            else:
                self.paused_tables.add(table)
            actors = [s["actor"] for s in self.slots.values()]
        self._save_flags()
        ray.get([a.pause.remote(table) for a in actors])

    def resume(self, table: str | None = None) -> None:
        with self._lock:
            if table is None:
                self.paused_all = False
                self.paused_tables.clear()
            else:
                self.paused_tables.discard(table)
            actors = [s["actor"] for s in self.slots.values()]
        self._save_flags()
        ray.get([a.resume.remote(table) for a in actors])

    def stop(self, timeout_s: float = 60.0) -> str:
        """Drain: every worker finishes its batch and returns; then the actor can be killed."""
        self._stop.set()
        with self._lock:
            slots = dict(self.slots)
        for s in slots.values():
            s["actor"].stop.remote()
        ray.wait([s["ref"] for s in slots.values()], num_returns=len(slots), timeout=timeout_s)
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute("UPDATE _c2pg.sync_state SET stopped = true, updated_at = now() WHERE pipeline = %s",
                            (self.cfg.name,))
        finally:
            conn.close()
        return "stopped"

    def ping(self) -> str:
        return "ok"

    def workers(self) -> dict[int, object]:
        """The worker actors by slot (operators and the crash tests kill one with ray.kill)."""
        with self._lock:
            return {slot: s["actor"] for slot, s in self.slots.items()}

    # --- supervision ---------------------------------------------------------------------

    def _supervise(self) -> None:
        next_sweep = next_schema = time.monotonic()
        while not self._stop.is_set():
            try:
                self._reconcile_assignment()
                self._restart_dead_workers()
                now = time.monotonic()
                if now >= next_schema:
                    next_schema = now + self.cfg.sync.schema_check_interval.total_seconds()
                    self._check_schemas()
                    self._export_drift()
                if now >= next_sweep:
                    next_sweep = now + self.cfg.sync.ttl_sweep_interval.total_seconds()
                    self._sweep()
            except Exception:  # noqa: BLE001 - keep supervising; the error is logged with its trace
                log.exception("supervision round failed")
            self._stop.wait(2.0)

    def _targets(self, conn, session) -> list:
        from engine.schema import read_table
        from engine.target import ensure_target

        out = []
        for t in self.cfg.tables:
            try:
                schema = read_table(session, t.keyspace, t.table)
            except Exception as exc:  # noqa: BLE001 - one missing table must not stop the others
                log.warning("table %s.%s: %s", t.keyspace, t.table, exc)
                continue
            out.append(ensure_target(conn, schema, t.target_schema or self.cfg.postgres.schema,
                                     t.target_table or t.table, evolve=True, defer_token_index=False))
        return out

    def _check_schemas(self) -> None:
        """Columns added in Cassandra are added in PostgreSQL even before their first event."""
        from engine import cql

        conn = self._connect()
        cluster, session = cql.connect(self.cfg.cassandra)
        try:
            self._targets(conn, session)
        finally:
            cluster.shutdown()
            conn.close()

    def _export_drift(self) -> None:
        """Publish each table's last reconcile drift as a metric: a reconcile job ends before
        Ray exports the gauge it sets, this long-lived actor does not."""
        from engine.reconcile import export_drift

        conn = self._connect()
        try:
            export_drift(conn, self.cfg.name)
        finally:
            conn.close()

    def _sweep(self) -> None:
        """Expire TTL cells (Cassandra emits no event for it) and purge old tombstones."""
        from engine import cql
        from engine.sweep import purge_cutoff_us, purge_tombstones, sweep_expired, wall_clock_us

        conn = self._connect()
        cluster, session = cql.connect(self.cfg.cassandra)
        try:
            for target in self._targets(conn, session):
                expired = sweep_expired(conn, target, wall_clock_us())
                purged = purge_tombstones(conn, target, purge_cutoff_us(self.cfg.sync))
                if expired or purged:
                    log.info("%s.%s: %d cell(s) expired, %d tombstone(s) purged", target.target_schema,
                             target.target_table, expired, purged)
        finally:
            cluster.shutdown()
            conn.close()

    def _partitions(self) -> list[tuple[str, int]]:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**self.cfg.kafka.client_conf()})
        md = admin.list_topics(timeout=5)
        out = []
        for t in self.cfg.tables:
            topic = self.cfg.kafka.topic_for(t.keyspace, t.table)
            if topic in md.topics and md.topics[topic].error is None:
                out += [(topic, p) for p in sorted(md.topics[topic].partitions)]
        return sorted(out)

    def _reconcile_assignment(self) -> None:
        partitions = self._partitions()
        slots = [i for i in range(self.cfg.sync.workers) if i not in self.retired] or [0]
        wanted: dict[int, list[tuple[str, int]]] = {i: [] for i in slots}
        for n, part in enumerate(partitions):
            wanted[slots[n % len(slots)]].append(part)
        with self._lock:
            current = {i: s["partitions"] for i, s in self.slots.items()}
        if current == {i: p for i, p in wanted.items() if p}:
            return
        log.info("assignment %s", {i: [f"{t}/{p}" for t, p in ps] for i, ps in wanted.items()})
        for slot in set(current) | set(wanted):
            if current.get(slot) != wanted.get(slot):
                self._stop_slot(slot)
                if wanted.get(slot):
                    self._start_slot(slot, wanted[slot])
        self._save_assignment()

    def _start_slot(self, slot: int, partitions: list[tuple[str, int]], failures: list[float] | None = None) -> None:
        from engine.sync_worker import PartitionWorker

        actor = PartitionWorker.options(num_cpus=0.5, **faults.runtime_env()).remote(  # type: ignore[attr-defined]
            self.cfg, slot, partitions, sorted(self.paused_tables), self.paused_all)
        with self._lock:
            old = self.slots.get(slot, {})
            self.slots[slot] = {"actor": actor, "ref": actor.run.remote(), "partitions": partitions,
                                "failures": old.get("failures", []) if failures is None else failures,
                                "next_start": 0.0}

    def _stop_slot(self, slot: int) -> None:
        with self._lock:
            s = self.slots.pop(slot, None)
        if s is None:
            return
        s["actor"].stop.remote()
        ray.wait([s["ref"]], timeout=30)
        ray.kill(s["actor"], no_restart=True)

    def _restart_dead_workers(self) -> None:
        with self._lock:
            slots = dict(self.slots)
        for slot, s in slots.items():
            ready, _ = ray.wait([s["ref"]], timeout=0)
            if not ready or self._stop.is_set():
                continue
            try:
                ray.get(s["ref"])
                error = "run() returned"
            except Exception as exc:  # noqa: BLE001 - the worker's failure is what we report
                error = f"{type(exc).__name__}: {exc}"
            now = time.time()
            failures = [t for t in s["failures"] if now - t < FAILURE_WINDOW_S] + [now]
            log.warning("worker %d ended (%s); failure %d in the window", slot, error[:300], len(failures))
            ray.kill(s["actor"], no_restart=True)
            if len(failures) >= MAX_FAILURES and len(self.slots) > 1:
                log.error("worker slot %d keeps failing: its partitions go to the other workers", slot)
                with self._lock:
                    self.slots.pop(slot, None)
                    self.retired.add(slot)
                continue
            delay = min(60.0, 2.0 ** len(failures))
            self._stop.wait(delay)
            with self._lock:
                self.slots.pop(slot, None)
            self._start_slot(slot, s["partitions"], failures)

    # --- desired state in PostgreSQL ----------------------------------------------------

    def _connect(self):
        import psycopg2

        return psycopg2.connect(**self.cfg.postgres.connect_kwargs(application_name="c2pg-sync-supervisor"))

    def _save_flags(self) -> None:
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute("UPDATE _c2pg.sync_state SET paused_all = %s, paused_tables = %s, updated_at = now() "
                            "WHERE pipeline = %s", (self.paused_all, json.dumps(sorted(self.paused_tables)),
                                                    self.cfg.name))
        finally:
            conn.close()

    def _save_assignment(self) -> None:
        with self._lock:
            assignment = {str(i): [f"{t}/{p}" for t, p in s["partitions"]] for i, s in self.slots.items()}
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute("UPDATE _c2pg.sync_state SET assignment = %s, updated_at = now() WHERE pipeline = %s",
                            (json.dumps(assignment), self.cfg.name))
        finally:
            conn.close()
