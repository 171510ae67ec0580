"""``SyncSupervisor``: one detached, named Ray actor per pipeline that runs its sync.

Started (or found) by ``python -m jobs.sync`` / ``c2pg sync start`` through
:func:`get_or_start`; looked up by name by the CLI and the Serve app. It

- lists the partitions of every configured table's topic and spreads them over
  ``sync.workers`` :class:`~engine.sync.worker.PartitionWorker` actors with ``assign()``
  (sorted partitions, round robin: the same input gives the same assignment);
- places the workers over the Ray nodes on purpose (:mod:`engine.sync.placement`): each
  new worker goes to the node with the fewest of this pipeline's workers, with a soft node
  affinity (Ray's SPREAD is round robin and ignores where the pipeline's workers already
  are, so it could not re-spread them), and the supervisor itself runs on the head
  (``node:__internal_head__``), so it never dies with a worker node;
- watches the workers: a worker whose ``run()`` ended is restarted with exponential
  backoff; a slot that fails ``MAX_FAILURES`` times in ``FAILURE_WINDOW_S`` is retired and
  its partitions go to the other workers;
- loses a node without losing its partitions: a worker that died (``ActorDiedError``)
  marks its node suspect at once, without waiting for the GCS's verdict (a SIGKILLed
  node is declared dead only after its health checks fail); the GCS's verdict, when it
  comes first, does the same. The worker is started again on a surviving node and
  continues from the offsets committed in PostgreSQL. When a node joins, one worker at a
  time moves to it (stopped, its batch committed, before the new one starts: never two
  owners of a partition) until no node has two more than another. Each move is recorded
  (``moves`` in :meth:`SyncSupervisor.status`, and the log);
- picks up new partitions and new topics (a table's topic appears with its first event);
- checks c2pg's own state for each table (:mod:`engine.state_check`: catalog row, tombstone
  table, offsets against the target, the Cassandra table and the topic) before it makes the
  target and assigns the table's partitions: it rebuilds what is safe to rebuild, and
  *refuses* a table whose state it cannot trust — the table is left out, with the error, in
  :meth:`status` (``refused``) and ``/readyz``, and checked again every round until it is
  fixed; the other tables go on. ``c2pg sync start`` waits for the first round that judged
  every table (:meth:`startup`);
- runs the capture heartbeat (:mod:`engine.capture`): writes a heartbeat row per Cassandra
  node every ``capture.heartbeat_interval`` (its own thread), judges from ``_c2pg.capture``
  whether each node's connector still delivers, exports ``c2pg_capture_*`` metrics, and
  with ``capture.heal_after_stall`` reconciles every table with repair when a stalled node
  recovers (:meth:`heal`, also on demand);
- reconciles the tables configured ``capture: reconcile`` with repair every
  ``reconcile_every`` (one reconcile at a time, heals included);
- publishes its status for the control plane (:meth:`SyncSupervisor.status_snapshot`): one
  gathering of the workers' status per ``STATUS_PERIOD_S`` while someone watches, with a
  version, so a Serve replica that polls it pays one cheap call, and nothing when it has not
  changed;
- keeps its desired state (pause flags, worker count, assignment) in ``_c2pg.sync_state``,
  so a restarted supervisor (``max_restarts=-1``: Ray re-runs ``__init__``) resumes it.
  Workers are its children: they die with it and are re-created by the new incarnation,
  which continues from the offsets committed in PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from dataclasses import asdict
from typing import Any

import ray

from engine import faults
from engine.capture import iso
from engine.config import PipelineConfig
from engine.sync.placement import WORKER_CPUS, Node, choose_node, rebalance_move

log = logging.getLogger("c2pg.sync.supervisor")

NAMESPACE = "c2pg"
MAX_FAILURES = 3
FAILURE_WINDOW_S = 300.0
STATUS_PERIOD_S = 1.0
"""How often the published status is gathered from the workers while it is watched."""
STATUS_WATCH_S = 30.0
"""The status is gathered only while someone asked for it within this many seconds."""
SUSPECT_S = 60.0
"""A node where a worker died is not chosen for new workers for this long (or until the GCS
declares it dead): the worker's death is known before the GCS's verdict on the node."""
SETTLE_S = 10.0
"""No rebalancing move within this many seconds of another move or a restart."""

STATE_DDL = """CREATE TABLE IF NOT EXISTS _c2pg.sync_state (
    pipeline text PRIMARY KEY,
    paused_all boolean NOT NULL DEFAULT false,
    paused_tables jsonb NOT NULL DEFAULT '[]',
    assignment jsonb NOT NULL DEFAULT '{}',
    stopped boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now())"""


def actor_name(pipeline: str) -> str:
    return f"c2pg-sync-{pipeline}"


ROUND_S = 2.0  # seconds between supervision rounds


class Pass:
    """Work over every table once per ``interval_s``, spread over the supervision rounds.

    A pass begins once the previous one has ended and ``interval_s`` has passed since that one
    began; each round then takes the next ``ceil(tables × ROUND_S / interval_s)`` tables, so a
    pass ends within its interval. The first pass takes every table in one round, as a
    supervisor starting needs every target made at once. Without it, a pipeline of hundreds of
    tables did all the work of a minute in one round — four schema queries per table in
    Cassandra, the DDL checks and sweeps in PostgreSQL, twice — and held the machine's cores for
    seconds each minute (the control plane's latency tail at 200 tables, docs/benchmarks.md)."""

    def __init__(self, interval_s: float):
        self.interval_s = max(interval_s, ROUND_S)
        self.next_start = 0.0
        self.queue: list = []
        self.per_round = 0
        self.first = True

    def take(self, now: float, tables) -> tuple[list, bool] | None:
        """The tables of this round and whether they end the pass, or None between passes."""
        if not self.queue:
            if now < self.next_start:
                return None
            self.next_start = now + self.interval_s
            self.queue = list(tables)
            self.per_round = len(self.queue) if self.first else max(
                1, math.ceil(len(self.queue) * ROUND_S / self.interval_s))
            self.first = False
        batch, self.queue = self.queue[:self.per_round], self.queue[self.per_round:]
        return batch, not self.queue


def _name(t) -> str:
    """A table of the pipeline file as ``keyspace.table`` (how refusals name it)."""
    return f"{t.keyspace}.{t.table}"


def get_or_start(cfg: PipelineConfig):
    """The pipeline's supervisor: the running one, or a new detached one."""
    # On the head: a worker node lost must not take the supervisor with it (the head holds
    # the GCS; losing it loses every actor anyway, see the keeper, engine/sync/keeper.py).
    return SyncSupervisor.options(  # type: ignore[attr-defined]  # a Ray actor class
        name=actor_name(cfg.name), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_concurrency=8, num_cpus=0, resources={"node:__internal_head__": 0.001},
        **faults.runtime_env()).remote(cfg)


def find(pipeline: str):
    """The running supervisor of ``pipeline``, or None."""
    try:
        return ray.get_actor(actor_name(pipeline), namespace=NAMESPACE)
    except ValueError:
        return None


def remove(pipeline: str, sup, timeout_s: float = 30.0) -> bool:
    """Kill the (drained) supervisor ``sup`` and wait until its name is free, so that a
    ``sync start`` right after starts a new one (``ray.kill`` returns before Ray's GCS has
    seen the actor die). False if the name is still taken after ``timeout_s``."""
    import time

    ray.kill(sup, no_restart=True)
    deadline = time.monotonic() + timeout_s
    while find(pipeline) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


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
        # slot → {actor, ref, partitions, failures: [t], next_start, node (id once known), where (ref)}
        self.slots: dict[int, dict] = {}
        self.retired: set[int] = set()
        self.nodes: dict[str, Node] = {}  # the alive Ray nodes, read each round
        self.suspect: dict[str, float] = {}  # node id → monotonic time a worker died there
        self.moves: list[dict] = []  # the last re-placements: node lost, worker died, rebalance
        self._settled_at = 0.0
        # engine.state_check's verdicts: tables whose partitions may be assigned, and tables
        # refused ("ks.table" → what status shows); a table in neither is not judged yet.
        self.accepted: set[str] = set()
        self.refused: dict[str, dict] = {}
        self.waiting: dict[str, str] = {}  # "ks.table" → why it is not synced yet (not in Cassandra)
        self.rounds = 0  # supervision rounds completed (every table judged in each)
        self.round_error: str | None = None
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
        # Capture (engine.capture): the heartbeat thread's verdicts, the schema round's
        # findings, the reconcile runs of heals and of `capture: reconcile` tables.
        self.capture_nodes: list = []
        self.capture_cause: str | None = None
        self.capture_error: str | None = None
        self.findings: list = []
        self.heals: list[dict] = []
        self._stalled: set[str] = set()
        self._runner: threading.Thread | None = None
        self._admin: Any = None  # the Kafka admin client of the supervision rounds (_partitions)
        self._cass: Any = None  # (cluster, session) of the schema rounds and sweeps (_cassandra)
        self._next_reconcile: dict[str, float] = {}
        self._heal_pending: str | None = None  # a heal asked for while a reconcile ran
        # The published status (status_snapshot): gathered by the "status" thread while watched.
        self._status_epoch = uuid.uuid4().hex[:12]  # a new incarnation's versions never match the old one's
        self._status_version = 0
        self._status_doc: dict | None = None
        self._status_at = 0.0
        self._watched_at = 0.0
        self._status_lock = threading.Lock()
        self._status_wake = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="supervise", daemon=True)
        self._thread.start()
        threading.Thread(target=self._publish_loop, name="status", daemon=True).start()
        self._heartbeat: threading.Thread | None = None
        if cfg.capture.heartbeat:
            self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
            self._heartbeat.start()

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
                      "node_id": s.get("node"), "node_ip": getattr(self.nodes.get(s.get("node") or ""), "ip", None),
                      "partitions": [{"topic": t, "partition": p} for t, p in s["partitions"]]}
            st["restarts"] = len(s["failures"])
            workers.append(st)
        with self._lock:
            nodes = [{**asdict(node), "workers": sum(1 for s in slots.values() if s.get("node") == n)}
                     for n, node in sorted(self.nodes.items())]
            moves = [dict(m) for m in self.moves]
        return {"pipeline": self.cfg.name, "started_at": self.started_at, "paused_all": self.paused_all,
                "paused_tables": sorted(self.paused_tables), "workers": workers,
                "retired_slots": sorted(self.retired), "nodes": nodes, "moves": moves,
                "capture": self.capture_status(), **self._state_status(workers)}

    def startup(self) -> dict:
        """What ``c2pg sync start`` waits on: ``rounds`` completed (the first one has judged
        every table's state and assigned the accepted tables' partitions), the last round's
        error (Kafka, Cassandra or PostgreSQL not answering) and the tables refused."""
        with self._lock:
            return {"rounds": self.rounds, "error": self.round_error, "refused": list(self.refused.values())}

    def _state_status(self, workers: list[dict]) -> dict:
        """The refused tables for :meth:`status`: the supervisor's (engine.state_check), and
        any a worker could not open (its target changed after the supervisor's check)."""
        with self._lock:
            refused = dict(self.refused)
        for w in workers:
            for table, error in (w.get("refused") or {}).items():
                refused.setdefault(table, {"table": table, "error": error, "since": None,
                                           "by": f"worker {w['worker']}"})
        # Not the round count: the published status (status_snapshot) would change every round.
        with self._lock:
            waiting = [{"table": t, "reason": r} for t, r in sorted(self.waiting.items())]
        return {"refused": [refused[t] for t in sorted(refused)], "waiting": waiting,
                "round_error": self.round_error}

    def status_snapshot(self, since: str | None = None) -> tuple[str, dict | None]:
        """``(version, status)``: the status of :meth:`status`, as gathered at most
        ``STATUS_PERIOD_S`` ago by the supervisor's own thread; ``status`` is None when
        ``since`` is already that version (nothing changed since the caller's copy).

        Called by the control plane (``serve_app.control``) once per ``api.status_cache``:
        the workers are asked once per period whatever the number of callers, and an
        unchanged status crosses no wire. The first call after nobody watched for
        ``STATUS_WATCH_S`` gathers it at once. After pause and resume it is gathered again
        before they return."""
        self._watched_at = time.monotonic()
        with self._status_lock:
            fresh = self._status_doc is not None and time.monotonic() - self._status_at < 2 * STATUS_PERIOD_S + 5.0
        if not fresh:
            self._publish()
        self._status_wake.set()
        with self._status_lock:
            version = f"{self._status_epoch}-{self._status_version}"
            return version, (None if since == version else self._status_doc)

    def _publish(self) -> None:
        doc = self.status()
        with self._status_lock:
            if doc != self._status_doc:
                self._status_doc = doc
                self._status_version += 1
            self._status_at = time.monotonic()

    def _publish_loop(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() - self._watched_at < STATUS_WATCH_S:
                try:
                    self._publish()
                except Exception:  # noqa: BLE001 - the next period tries again; status_snapshot gathers itself
                    log.exception("status not gathered")
                self._stop.wait(STATUS_PERIOD_S)
            else:
                self._status_wake.wait(STATUS_WATCH_S)
                self._status_wake.clear()

    def capture_status(self) -> dict:
        """The capture heartbeat's verdict per node, the tables that will not be captured, and
        the reconcile runs c2pg started itself (heals, ``capture: reconcile`` tables)."""
        from dataclasses import asdict

        with self._lock:
            nodes, heals = list(self.capture_nodes), [dict(h) for h in self.heals[-10:]]
            findings = list(self.findings)
            due = dict(self._next_reconcile)
        return {"heartbeat": self.cfg.capture.heartbeat,
                "stall_after_s": self.cfg.capture.stall_after.total_seconds(),
                "stalled": any(n.stalled for n in nodes), "nodes": [asdict(n) for n in nodes],
                "cause": self.capture_cause, "error": self.capture_error,
                "findings": [f.as_dict() for f in findings], "heals": heals,
                "scheduled_reconcile": {t: iso(at) for t, at in sorted(due.items())}}

    def heal(self, reason: str = "on demand") -> dict:
        """Reconcile every table of the pipeline with repair, in the background, recording
        each run (``capture.heals`` in :meth:`status`). One reconcile runs at a time: when one
        is running, nothing new starts and the answer says so."""
        started = self._start_runs([t for t in self.cfg.tables], reason)
        return {"started": started, "reason": reason,
                "detail": None if started else "a heal or scheduled reconcile is already running"}

    def pause(self, table: str | None = None) -> None:
        with self._lock:
            if table is None:
                self.paused_all = True
            else:
                self.paused_tables.add(table)
            actors = [s["actor"] for s in self.slots.values()]
        self._save_flags()
        ray.get([a.pause.remote(table) for a in actors])
        self._publish()

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
        self._publish()

    def stop(self, timeout_s: float = 60.0) -> str:
        """Drain: every worker finishes its batch and returns; then the actor can be killed."""
        self._stop.set()
        with self._lock:
            slots = dict(self.slots)
        for s in slots.values():
            s["actor"].stop.remote()
        ray.wait([s["ref"] for s in slots.values()], num_returns=len(slots), timeout=timeout_s)
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=15)
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute("UPDATE _c2pg.sync_state SET stopped = true, updated_at = now() WHERE pipeline = %s",
                            (self.cfg.name,))
                # No heartbeat is written from now on: capture is "not measured", not stalled
                # by the last heartbeat, written but not yet seen when the workers stopped.
                cur.execute("UPDATE _c2pg.capture SET written_at = NULL WHERE pipeline = %s", (self.cfg.name,))
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
        schema_pass = Pass(self.cfg.sync.schema_check_interval.total_seconds())
        sweep_pass = Pass(self.cfg.sync.ttl_sweep_interval.total_seconds())
        while not self._stop.is_set():
            # Targets and state are checked before partitions are assigned (the first round
            # judges every table), so a table c2pg cannot trust gets no worker; when the
            # checks fail (a server down), workers are still watched and restarted.
            judged = self._judge_round(schema_pass)
            try:
                self._watch_nodes()
                self._reconcile_assignment()
                self._restart_dead_workers()
                self._rebalance()
                due = sweep_pass.take(time.monotonic(), [t for t in self.cfg.tables if _name(t) in self.accepted])
                if due is not None:
                    self._sweep(due[0])
                self._scheduled_reconciles()
                if judged:
                    with self._lock:
                        self.rounds, self.round_error = self.rounds + 1, None
            except Exception as exc:  # noqa: BLE001 - keep supervising; the error is logged with its trace
                log.exception("supervision round failed")
                with self._lock:
                    self.round_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                self._close_cassandra()
            self._stop.wait(ROUND_S)
        self._close_cassandra()

    def _cassandra(self):
        """The session of the schema rounds and sweeps, kept across rounds (one connect, not
        one per round); without the driver's schema metadata, which these rounds do not use
        and which every schema change anywhere in the cluster would make it read again."""
        from engine import cql

        if self._cass is None:
            self._cass = cql.connect(self.cfg.cassandra, metadata=False)
        return self._cass[1]

    def _close_cassandra(self) -> None:
        cass, self._cass = self._cass, None
        if cass is not None:
            cass[0].shutdown()

    def _targets(self, conn, session, tables, *, offsets: bool = True) -> list:
        """The targets of ``tables``, made or evolved after their state was checked
        (:meth:`_judge`); a refused table is left out. ``offsets=False`` (the TTL sweep) does
        not ask Kafka for the topics' watermarks."""
        out = []
        for t in tables:
            target = self._judge(conn, session, t, offsets)
            if target is not None:
                out.append(target)
        return out

    def _judge(self, conn, session, t, offsets: bool):
        """Check c2pg's state for table ``t`` (:func:`engine.state_check.verify`: rebuilds are
        logged), then make or evolve its target: the target, or None when the table is refused
        (a :class:`~engine.errors.C2pgError` naming it and the fix: recorded in ``refused``,
        logged once). Anything else — a server not answering — raises: the round fails and
        every verdict stands until a round can judge again."""
        import psycopg2

        from engine.errors import C2pgError
        from engine.schema import TableNotFound, read_table
        from engine.state_check import verify
        from engine.target import ensure_target

        name, where = _name(t), (t.target_schema or self.cfg.postgres.schema, t.target_table or t.table)
        topic = self.cfg.kafka.topic_for(t.keyspace, t.table)
        try:
            schema = read_table(session, t.keyspace, t.table)
        except TableNotFound as exc:
            # Not a refusal: a table listed before it is created is synced once it exists
            # (judged again every round); it has no topic, so there is nothing to hold back.
            with self._lock:
                self.accepted.discard(name)
                self.refused.pop(name, None)
                new = name not in self.waiting
                self.waiting[name] = str(exc).removeprefix(f"{name}: ")
            if new:
                log.warning("table %s: %s; it is synced once it exists", name, self.waiting[name])
            return None
        try:
            for line in verify(conn, schema, *where, pipeline=self.cfg.name, topic=topic,
                               watermarks=(lambda: self._watermarks(topic)) if offsets else None):
                log.warning("%s", line)
            target = ensure_target(conn, schema, *where, evolve=True, defer_token_index=False)
        except (C2pgError, psycopg2.ProgrammingError, psycopg2.DataError) as exc:
            # What a retry would meet again (PostgreSQL rejecting the DDL counts: it crash-
            # looped the workers on an old tombstone index); a server down raises instead.
            # Shown beside the table's name (status, sync start, /readyz): not twice.
            error = (str(exc) if isinstance(exc, C2pgError) else f"{type(exc).__name__}: {exc}".strip()
                     ).removeprefix(f"{name}: ")
            with self._lock:
                known = self.refused.get(name)
                self.accepted.discard(name)
                self.refused[name] = {"table": name, "target": ".".join(where), "error": error,
                                      "since": known["since"] if known else iso(time.time())}
            if known is None or known["error"] != error:
                log.error("table %s refused: %s", name, error)
            return None
        with self._lock:
            if self.refused.pop(name, None) is not None:
                log.warning("table %s: its state matches again; syncing it", name)
            if self.waiting.pop(name, None) is not None:
                log.warning("table %s exists now; syncing it", name)
            self.accepted.add(name)
        return target

    def _judge_round(self, schema_pass: Pass) -> bool:
        """This round's checks: the schema pass's tables (:meth:`_check_schemas`), then the
        tables refused or not judged yet (:meth:`_check_unjudged`). False when a server did
        not answer (logged, and shown as the round's error): every verdict stands, and a
        table not judged yet stays without a worker until a round judges it."""
        try:
            due = schema_pass.take(time.monotonic(), self.cfg.tables)
            if due is not None:
                self._check_schemas(*due)
            self._check_unjudged(due[0] if due is not None else [])
            return True
        except Exception as exc:  # noqa: BLE001 - the next round tries again; logged with its trace
            log.exception("tables not checked this round")
            with self._lock:
                self.round_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            self._close_cassandra()
            return False

    def _check_unjudged(self, judged: list) -> None:
        """Every round, the tables refused or not judged yet (a round that failed before it
        judged them) are checked again, apart from those this round's schema pass judged:
        a fixed table is synced again within a round, without restarting anything."""
        tables = [t for t in self.cfg.tables if _name(t) not in self.accepted and t not in judged]
        if tables:
            self._judge_tables(tables)

    def _judge_tables(self, tables) -> None:
        """:meth:`_targets` of ``tables``, on the rounds' Cassandra session and a PostgreSQL
        connection of their own (closed after)."""
        session = self._cassandra()
        conn = self._connect()
        try:
            self._targets(conn, session, tables)
        finally:
            conn.close()

    def _watermarks(self, topic: str):
        """``topic``'s partitions → :class:`~engine.state_check.Watermarks` (``{}``: no such
        topic), or None when Kafka does not answer (the offsets are then not judged)."""
        from confluent_kafka import KafkaError, KafkaException, TopicCollection, TopicPartition
        from confluent_kafka.admin import AdminClient, OffsetSpec

        from engine.state_check import Watermarks

        try:
            admin = self._admin = self._admin or AdminClient({**self.cfg.kafka.client_conf()})
            try:
                desc = admin.describe_topics(TopicCollection([topic]), request_timeout=5)[topic].result(timeout=10)
            except KafkaException as exc:
                if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    return {}
                raise
            tps = [TopicPartition(topic, p.id) for p in desc.partitions]
            ends: dict[int, list[int]] = {}
            for spec in (OffsetSpec.earliest(), OffsetSpec.latest()):
                for tp, fut in admin.list_offsets({tp: spec for tp in tps}, request_timeout=10).items():
                    ends.setdefault(tp.partition, []).append(fut.result(timeout=10).offset)
            return {p: Watermarks(low, high) for p, (low, high) in ends.items()}
        except Exception as exc:  # noqa: BLE001 - Kafka away: the offsets are judged next time
            log.warning("offsets of %s not checked: %s", topic, exc)
            self._admin = None
            return None

    def _check_schemas(self, tables, pass_done: bool) -> None:
        """Columns added in Cassandra to ``tables`` are added in PostgreSQL even before their
        first event (a :class:`Pass` hands every table over once per
        ``sync.schema_check_interval``); when the pass is done, the tables whose changes will
        not be captured are found (``capture.findings``) and the drift metrics exported."""
        from engine.capture import connector_log, find_uncapturable

        self._judge_tables(tables)
        if not pass_done:
            return
        session = self._cassandra()
        log_path = self.cfg.capture.connector_log
        findings = find_uncapturable(session, self.cfg, connector_log(log_path).update() if log_path else None)
        self._export_drift()
        with self._lock:
            old = {f.line() for f in self.findings}
            self.findings = findings
        for f in findings:
            if f.line() not in old and f.severity != "info":
                log.error("%s", f.line())

    # --- capture ----------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        """Write a heartbeat per node every ``capture.heartbeat_interval``, then judge capture."""
        from engine import cql
        from engine.capture import HeartbeatWriter, record_written

        interval = self.cfg.capture.heartbeat_interval.total_seconds()
        since = time.time()
        cluster = writer = conn = None
        while not self._stop.is_set():
            try:
                if writer is None:
                    cluster, session = cql.connect(self.cfg.cassandra)
                    writer = HeartbeatWriter(self.cfg, cluster, session)
                    writer.ensure()
                beats = writer.beat()
                if conn is None or conn.closed:
                    conn = self._connect()
                record_written(conn, self.cfg.name, since, beats)
                self.capture_error = None
            except Exception as exc:  # noqa: BLE001 - reported in status; the next round retries
                self.capture_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.warning("capture heartbeat not written: %s", self.capture_error)
                if writer is not None and not writer.ready:  # ensure() failed: start over
                    writer = None
                if conn is not None:
                    conn.close()
                    conn = None
                if writer is None and cluster is not None:
                    cluster.shutdown()
                    cluster = None
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                self._assess_capture(conn)
            except Exception:  # noqa: BLE001 - keep beating; the error is logged with its trace
                log.exception("capture assessment failed")
                if conn is not None:
                    conn.close()
                    conn = None
            self._stop.wait(interval)
        if cluster is not None:
            cluster.shutdown()
        if conn is not None:
            conn.close()

    def _assess_capture(self, conn) -> None:
        from engine.capture import assess, read_rows, stall_cause

        rows = read_rows(conn, self.cfg.name)
        nodes = assess(rows, time.time(), self.cfg.capture.stall_after.total_seconds(),
                       self.cfg.capture.heartbeat_interval.total_seconds())
        metrics = _capture_metrics()
        for n in nodes:
            tags = {"pipeline": self.cfg.name, "node": n.address or n.node}
            if n.delay_s is not None:
                metrics["delay"].set(n.delay_s, tags)
            if n.transit_s is not None:
                metrics["transit"].set(n.transit_s, tags)
            metrics["stalled"].set(1 if n.stalled else 0, tags)
        stalled = {n.node for n in nodes if n.stalled}
        recovered = {n.node for n in nodes if n.state == "ok"} & self._stalled
        cause = self.capture_cause
        if stalled - self._stalled:
            cause = stall_cause(self.cfg, nodes)
            for n in nodes:
                if n.node in stalled - self._stalled:
                    log.error("capture stalled: %s%s", n.reason, f" ({cause})" if cause else "")
        elif not stalled:
            cause = None
        with self._lock:
            self.capture_nodes, self.capture_cause = nodes, cause
        if recovered:
            names = ", ".join(sorted(n.address or n.node for n in nodes if n.node in recovered))
            log.warning("capture recovered on node(s) %s after a stall", names)
            if self.cfg.capture.heal_after_stall:
                # Started by the supervision round, which retries while another reconcile runs.
                self._heal_pending = f"capture recovered on node(s) {names} after a stall"
        self._stalled = (self._stalled | stalled) - recovered

    def _scheduled_reconciles(self) -> None:
        """Start a pending heal, else the reconcile of a ``capture: reconcile`` table that is
        due (one at a time). A table's first run is due ``reconcile_every`` after its last
        completed reconcile (at once if none), so a supervisor restart does not start one."""
        if self._heal_pending and self._start_runs(list(self.cfg.tables), self._heal_pending):
            self._heal_pending = None
            return
        now = time.time()
        for t in self.cfg.tables:
            if t.capture != "reconcile":
                continue
            name = f"{t.keyspace}.{t.table}"
            if name not in self._next_reconcile:
                self._next_reconcile[name] = self._last_reconcile(t) + t.reconcile_every.total_seconds()
            due = self._next_reconcile[name]
            if now >= due and self._start_runs([t], f"scheduled (capture: reconcile, every "
                                                   f"{t.reconcile_every.total_seconds():g} s)"):
                with self._lock:
                    self._next_reconcile[name] = now + t.reconcile_every.total_seconds()
                return

    def _last_reconcile(self, t) -> float:
        """When the last completed reconcile of table ``t`` finished (epoch s; 0 if never)."""
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT extract(epoch FROM max(finished_at)) FROM _c2pg.runs WHERE kind = 'reconcile' "
                            "AND keyspace = %s AND source_table = %s AND status = 'completed'", (t.keyspace, t.table))
                row = cur.fetchone()
        finally:
            conn.close()
        return float(row[0]) if row and row[0] is not None else 0.0

    def _start_runs(self, tables: list, reason: str) -> bool:
        with self._lock:
            if self._runner is not None and self._runner.is_alive():
                return False
            record: dict = {"reason": reason, "started_at": iso(time.time()), "finished_at": None,
                            "tables": [f"{t.keyspace}.{t.table}" for t in tables], "runs": []}
            self.heals = (self.heals + [record])[-20:]
            self._runner = threading.Thread(target=self._run_reconciles, args=(tables, record),
                                            name="reconcile", daemon=True)
            self._runner.start()
        log.warning("reconcile with repair of %s: %s", ", ".join(record["tables"]), reason)
        return True

    def _run_reconciles(self, tables: list, record: dict) -> None:
        import os
        import tempfile

        from engine.reconcile import run_reconcile

        for t in tables:
            name = f"{t.keyspace}.{t.table}"
            run_id = str(uuid.uuid4())
            try:
                res = run_reconcile(self.cfg, t, repair=True, run_id=run_id, progress=False,
                                    html_path=os.path.join(tempfile.gettempdir(), f"c2pg-reconcile-{run_id}.html"))
                run = {"table": name, "run_id": run_id, "status": res.status,
                       "drift": sum(res.differences.values()), "repaired": dict(res.repaired),
                       "not_repaired": res.unrepaired}
                log.warning("reconcile %s of %s: %s", run_id, name, run)
            except Exception as exc:  # noqa: BLE001 - recorded with the run; the next one may succeed
                run = {"table": name, "run_id": run_id, "status": "failed",
                       "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                log.error("reconcile %s of %s failed: %s", run_id, name, run["error"])
            with self._lock:
                record["runs"].append(run)
        with self._lock:
            record["finished_at"] = iso(time.time())

    def _export_drift(self) -> None:
        """Publish each table's last reconcile drift as a metric: a reconcile job ends before
        Ray exports the gauge it sets, this long-lived actor does not."""
        from engine.reconcile import export_drift

        conn = self._connect()
        try:
            export_drift(conn, self.cfg.name)
        finally:
            conn.close()

    def _sweep(self, tables) -> None:
        """Expire TTL cells of ``tables`` (Cassandra emits no event for it) and purge old
        tombstones (a :class:`Pass` hands every table over once per ``sync.ttl_sweep_interval``).
        First, with the read-back on, read again the collections whose first element has
        expired (:mod:`engine.recheck`); when Cassandra cannot be read, that table's expiry
        waits for the next sweep (it could expire a collection whole that still holds
        elements)."""
        from engine.readback import ReadBackFailed
        from engine.recheck import recheck
        from engine.sweep import purge_cutoff_us, purge_tombstones, sweep_expired, wall_clock_us

        session = self._cassandra()
        conn = self._connect()
        try:
            for target in self._targets(conn, session, tables, offsets=False):
                now_us = wall_clock_us()
                expired = 0
                try:
                    if self.cfg.sync.read_back:
                        recheck(conn, target, session, self.cfg.cassandra.consistency, now_us)
                    expired = sweep_expired(conn, target, now_us)
                except ReadBackFailed as exc:
                    log.warning("%s.%s: TTL sweep postponed, collections could not be read again: %s",
                                target.target_schema, target.target_table, exc)
                purged = purge_tombstones(conn, target, purge_cutoff_us(self.cfg.sync))
                if expired or purged:
                    log.info("%s.%s: %d cell(s) expired, %d tombstone(s) purged", target.target_schema,
                             target.target_table, expired, purged)
        finally:
            conn.close()

    def _partitions(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs of the pipeline's topics that exist now: its CDC tables'
        and the capture heartbeat's (a table's topic appears with its first change event).

        Asked every supervision round (2 s) with one DescribeTopics request for those topics
        alone, on an admin client kept across rounds: a cluster's full metadata grows with
        every topic it holds (hundreds on a shared cluster), this pipeline's does not. Raises
        what Kafka raises (the round logs it and tries again); the client is then made anew."""
        from confluent_kafka import KafkaError, KafkaException, TopicCollection
        from confluent_kafka.admin import AdminClient

        # A table's partitions are assigned once its state was checked (refused: left out).
        topics = [self.cfg.kafka.topic_for(t.keyspace, t.table) for t in self.cfg.tables
                  if t.capture == "cdc" and _name(t) in self.accepted]
        if self.cfg.capture.heartbeat:
            from engine.capture import heartbeat_topic

            topics.append(heartbeat_topic(self.cfg))
        topics = list(dict.fromkeys(topics))
        if not topics:
            return []
        admin = self._admin = self._admin or AdminClient({**self.cfg.kafka.client_conf()})
        out = []
        try:
            for topic, fut in admin.describe_topics(TopicCollection(topics), request_timeout=5).items():
                try:
                    desc = fut.result(timeout=10)
                except KafkaException as exc:
                    if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        continue  # not created yet
                    raise
                out += [(topic, p.id) for p in desc.partitions]
        except Exception:
            self._admin = None
            raise
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

    def _start_slot(self, slot: int, partitions: list[tuple[str, int]], failures: list[float] | None = None,
                    node: str | None = None) -> None:
        """Start the worker of ``slot`` on ``node`` (default: :meth:`_place`'s choice), with a
        soft affinity: if that node cannot take it (gone meanwhile), Ray places it elsewhere."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from engine.sync.worker import PartitionWorker

        node = node or self._place()
        # A soft affinity: a node gone since it was chosen makes Ray place the worker elsewhere.
        placement = {} if node is None else {
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=True)}
        actor = PartitionWorker.options(num_cpus=WORKER_CPUS, **placement,  # type: ignore[attr-defined]
                                        **faults.runtime_env()).remote(
            self.cfg, slot, partitions, sorted(self.paused_tables), self.paused_all)
        with self._lock:
            old = self.slots.get(slot, {})
            self.slots[slot] = {"actor": actor, "ref": actor.run.remote(), "partitions": partitions,
                                "failures": old.get("failures", []) if failures is None else failures,
                                "next_start": 0.0, "node": None, "target": node, "where": actor.where.remote()}

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
            except ray.exceptions.RayActorError as exc:
                # The worker's process (or its node) is gone: its node takes no new worker
                # until proven alive, whatever the GCS says yet (placement.choose_node).
                error = f"{type(exc).__name__}: {exc}"
                if s.get("node"):
                    with self._lock:
                        self.suspect[s["node"]] = time.monotonic()
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
            self._record_move(slot, s, f"worker ended: {error[:200]}")

    # --- placement over the Ray nodes ----------------------------------------------------

    def _watch_nodes(self) -> None:
        """Each round: the alive nodes (the GCS's list), the workers' nodes as they answer
        ``where()``, and the workers on a node the GCS has declared dead, started again on a
        surviving node at once (their ``run()`` may only fail later)."""
        nodes = {n["NodeID"]: Node(n["NodeID"], n.get("NodeManagerAddress"), n.get("Resources", {}).get("CPU", 0.0),
                                   "node:__internal_head__" in n.get("Resources", {}))
                 for n in ray.nodes() if n.get("Alive")}
        now = time.monotonic()
        with self._lock:
            self.nodes = nodes
            self.suspect = {n: t for n, t in self.suspect.items() if n in nodes and now - t < SUSPECT_S}
            slots = dict(self.slots)
        for slot, s in slots.items():
            if s.get("node") is None and s.get("where") is not None:
                ready, _ = ray.wait([s["where"]], timeout=0)
                if ready:
                    try:
                        s["node"] = ray.get(ready[0])["node_id"]
                    except Exception:  # noqa: BLE001 - died before answering: _restart_dead_workers sees it
                        pass
                    s["where"] = None
            if s.get("node") and nodes and s["node"] not in nodes and not self._stop.is_set():
                log.error("Ray node %s is dead (GCS): worker %d and its partitions move", s["node"][:8], slot)
                ray.kill(s["actor"], no_restart=True)
                with self._lock:
                    self.slots.pop(slot, None)
                self._start_slot(slot, s["partitions"], s["failures"])
                self._record_move(slot, s, f"node {s['node'][:8]} lost")

    def _place(self) -> str | None:
        """The node for a new worker (:func:`engine.sync.placement.choose_node`)."""
        with self._lock:
            placed = [s.get("node") or s.get("target") for s in self.slots.values()]
            return choose_node(self.nodes, placed, set(self.suspect))

    def _rebalance(self) -> None:
        """Apply :func:`engine.sync.placement.rebalance_move` (a node joined, or came back):
        the old worker stops first (its batch in flight committed), then the new one starts
        on the idler node from the committed offsets, so no partition ever has two owners.
        Only when every worker's node is known and nothing moved or restarted within
        ``SETTLE_S``."""
        with self._lock:
            slots = dict(self.slots)
            nodes, suspect = dict(self.nodes), set(self.suspect)
        if (time.monotonic() - self._settled_at < SETTLE_S or not slots
                or any(s.get("node") is None for s in slots.values())):
            return
        move = rebalance_move(nodes, {slot: s["node"] for slot, s in slots.items()}, suspect)
        if move is None:
            return
        slot, busiest, idlest = move
        s = slots[slot]
        log.warning("rebalancing: worker %d moves from node %s to node %s", slot, busiest[:8], idlest[:8])
        self._stop_slot(slot)
        self._start_slot(slot, s["partitions"], s["failures"], node=idlest)
        self._record_move(slot, s, f"rebalance: node {busiest[:8]} had at least two workers more than "
                                   f"node {idlest[:8]}")

    def _record_move(self, slot: int, old: dict, reason: str) -> None:
        """Remember (``moves`` in the status) and log where a worker's partitions went."""
        with self._lock:
            new = self.slots.get(slot, {})
            partitions = [f"{t}/{p}" for t, p in old["partitions"]]
            source, target = old.get("node"), new.get("target")
            self.moves = (self.moves + [{"at": iso(time.time()), "worker": slot, "reason": reason,
                                         "partitions": partitions, "from_node": source, "to_node": target}])[-20:]
            self._settled_at = time.monotonic()
        log.warning("worker %d: partitions %s from node %s to node %s (%s)", slot, ", ".join(partitions),
                    (source or "?")[:8], (target or "any")[:8], reason)

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


_CAPTURE_METRICS: dict | None = None


def _capture_metrics() -> dict:
    """``c2pg_capture_delay_seconds``, ``c2pg_capture_transit_seconds`` and
    ``c2pg_capture_stalled`` per pipeline and node (``ray_`` prefix added by Ray)."""
    global _CAPTURE_METRICS
    if _CAPTURE_METRICS is None:
        from ray.util import metrics

        tags = ("pipeline", "node")
        _CAPTURE_METRICS = {
            "delay": metrics.Gauge("c2pg_capture_delay_seconds",
                                   "age of the newest capture heartbeat that arrived through Kafka", tag_keys=tags),
            "transit": metrics.Gauge("c2pg_capture_transit_seconds",
                                     "write to commit time of the newest capture heartbeat", tag_keys=tags),
            "stalled": metrics.Gauge("c2pg_capture_stalled",
                                     "1 when the node's heartbeats stopped arriving (capture.stall_after)",
                                     tag_keys=tags),
        }
    return _CAPTURE_METRICS
