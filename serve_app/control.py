"""What the control plane's routes do: one :class:`Control` per Serve replica, per pipeline.

Built by :class:`serve_app.app.ControlPlane` when a replica starts (from the pipeline file);
the routes of :func:`serve_app.api.create_api` call it and render its answers. It talks to

- the components, through :mod:`engine.health` (readiness; results cached ``api.health_cache``);
- the pipeline's :class:`~engine.sync.supervisor.SyncSupervisor` actor, looked up by name
  (the status it publishes, with ``api.check_timeout``; cached ``api.status_cache``; pause
  and resume);
- the Ray Jobs API (:class:`ray.job_submission.JobSubmissionClient`) for snapshot and
  reconcile runs: each run's id is chosen here and passed as ``--run-id``, the Ray job is
  ``c2pg-<kind>-<run id>``, and the run's record in ``_c2pg.runs`` (written by the job) is
  read back through :mod:`engine.runs`;
- PostgreSQL (a small connection pool) for runs, offsets and dead letters
  (:mod:`engine.dlq`).

What a request costs does not depend on the pipeline's size: ``/readyz`` and the status
route answer from a :class:`Rendered` (JSON serialized once per refresh, and gzipped once
for clients that accept it), refreshed in the background (:class:`Cached`). The refresh is
bounded too: the checks keep their clients between rounds (one round trip each, no schema
metadata; only the pipeline's Kafka topics described), a check that hangs is never started
twice (:class:`engine.health.SingleFlight`), and the supervisor's status and findings come
from what it publishes (:meth:`~engine.sync.supervisor.SyncSupervisor.status_snapshot`), not
from asking each worker and scanning Cassandra's schema here. Docs: docs/benchmarks.md,
"Control plane".

Failure means an :class:`~serve_app.security.ApiError` with a message for the client:
404 for an unknown pipeline, run or dead letter; 409 for pause/resume with no sync running;
422 for a table that is not one of the pipeline's; 503 when PostgreSQL, Ray or the
supervisor does not answer. Nothing here returns a traceback.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import gzip
import os
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

from engine import health, runs
from engine.config import PipelineConfig, TableConfig
from engine.cql import ssl_context
from engine.sync_status import in_future, iso_write_time, node_label
from serve_app.security import ApiError

log = structlog.get_logger("c2pg.serve")

KINDS = {"snapshot": "jobs.snapshot", "reconcile": "jobs.reconcile"}
FINDINGS_CACHE_S = 15.0
_DONE = {"succeeded", "completed"}


POOL_MAX = 8
POOL_KEEP = 4  # idle connections kept: the status refresh, the postgres and capture checks, a route
GZIP_FROM_BYTES = 1024
"""Answers at least this long are also kept gzipped (once per refresh), for clients that accept it."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """An answer serialized once per refresh and sent as it is to every request until the
    next one: ``value`` (for callers in Python), ``body`` (compact JSON, as Starlette's
    ``JSONResponse`` writes it), ``gzipped`` (``body`` compressed; empty for short answers)
    and the HTTP ``status``."""

    value: dict
    body: bytes
    gzipped: bytes
    status: int = 200

    @classmethod
    def of(cls, value: dict, status: int = 200) -> Rendered:
        # orjson: compact UTF-8 as Starlette's JSONResponse writes it, ~20x faster than json at
        # 200 tables (0.2 vs 3.2 ms for the 240 KB status answer); NaN becomes null.
        body = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        # mtime=0: the same answer gives the same bytes; level 1: 0.3 ms instead of 0.8 at 200
        # tables, and the answer (repetitive JSON) still shrinks ~65x.
        gzipped = gzip.compress(body, compresslevel=1, mtime=0) if len(body) >= GZIP_FROM_BYTES else b""
        return cls(value, body, gzipped, status)


class Cached:
    """A value recomputed at most once per ``ttl_s``, without making callers wait for it.

    - No value yet (first call, or after :meth:`clear`), or ``ttl_s`` is 0: compute now;
      concurrent callers wait for that one computation (single flight).
    - A value older than ``ttl_s``: return it at once and refresh it in a background
      thread (one at a time). So under load a probe never pays for the round trips of the
      checks; an answer is at most ``ttl_s`` plus one computation old.

    A computation that raises leaves the old value (its exception reaches the caller only
    when there is no value to return).
    """

    def __init__(self, ttl_s: float, compute: Callable[[], Any]):
        self.ttl_s = ttl_s
        self._compute = compute
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._value: Any = None
        self._at: float | None = None
        self._generation = 0  # bumped by clear(): a refresh started before it is dropped

    def peek(self) -> Any:
        """The value if one may be served without computing (refreshing it behind when stale),
        else None. Cheap and non-blocking: async routes call it on the event loop."""
        at = self._at
        if at is None or self.ttl_s <= 0:
            return None
        if time.monotonic() - at >= self.ttl_s and self._refreshing.acquire(blocking=False):
            threading.Thread(target=self._refresh, args=(self._generation,), name="c2pg-cache-refresh",
                             daemon=True).start()
        return self._value

    def get(self) -> Any:
        value = self.peek()
        if value is not None:
            return value
        with self._lock:
            if self._at is None or self.ttl_s <= 0:
                self._store(self._compute())
            return self._value

    def _refresh(self, generation: int) -> None:
        try:
            value = self._compute()
            with self._lock:
                if generation == self._generation and self._at is not None:
                    self._store(value)
        except Exception:
            log.exception("background refresh failed")
        finally:
            self._refreshing.release()

    def _store(self, value: Any) -> None:
        self._value, self._at = value, time.monotonic()

    def clear(self) -> None:
        """Forget the value: the next :meth:`get` computes a fresh one (after pause/resume)."""
        with self._lock:
            self._generation += 1
            self._at = None


class Control:
    """The backends of one pipeline's control plane (see the module docstring)."""

    def __init__(self, cfg: PipelineConfig, config_path: Path, *, env: dict[str, str] | None = None,
                 jobs_client: Callable[[], Any] | None = None):
        """``env``: the environment ``cfg`` was loaded with; its ``C2PG__`` overrides (and
        ``C2PG_LOG_*``) are handed to the jobs, so they run on the same effective config."""
        self.cfg = cfg
        self.config_path = Path(config_path).resolve()
        self.job_env = {k: v for k, v in (os.environ if env is None else env).items()
                        if k.startswith(("C2PG__", "C2PG_LOG"))}
        self._jobs_client_factory = jobs_client or _default_jobs_client
        self._jobs: Any = None
        self._pool: Any = None
        self._pool_lock = threading.Lock()
        self._cql: Any = None
        api = cfg.api
        self.check_timeout_s = api.check_timeout.total_seconds()
        self._health = Cached(api.health_cache.total_seconds(), self._render_readiness)
        self._sync = Cached(api.status_cache.total_seconds(), self._read_sync)
        self._status = Cached(api.status_cache.total_seconds(), lambda: Rendered.of(self._build_status()))
        # Which tables the connector will not capture changes slowly (schema changes): taken
        # from the supervisor's status (its schema round finds them); without a supervisor, a
        # scan of system_schema here per FINDINGS_CACHE_S, not per probe.
        self._findings = Cached(FINDINGS_CACHE_S, self._find_uncapturable)
        self.tables = {f"{t.keyspace}.{t.table}": t for t in cfg.tables}
        self._topics = {cfg.kafka.topic_for(t.keyspace, t.table): q for q, t in self.tables.items()}
        # The supervisor's published status this replica holds, and its version (replaced
        # together: the refresh and a cold read after pause may overlap).
        self._sync_held: tuple[str | None, dict | None] = (None, None)
        self._checks: dict[str, health.Check] | None = None
        self._executor: cf.ThreadPoolExecutor | None = None
        self._probes: list[Any] = []

    # --- lookups -----------------------------------------------------------------------

    def pipeline(self, name: str) -> None:
        if name != self.cfg.name:
            raise ApiError(404, f"no pipeline {name!r} here (this app serves {self.cfg.name!r})")

    def table(self, qualified: str, field: str = "table") -> TableConfig:
        t = self.tables.get(qualified)
        if t is None:
            raise ApiError(422, f"{field}: {qualified!r} is not a table of pipeline {self.cfg.name!r} "
                                f"(one of: {', '.join(sorted(self.tables))})")
        return t

    # --- health ------------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        """``{"ready", "failed", "components"}``; ``ready`` is false when a required
        component is down (every configured one; ``sync`` only with ``api.sync_required``)."""
        return self._health.get().value

    def readiness_cached(self) -> Rendered | None:
        """:meth:`readiness`, rendered, if it can be answered from the cache without waiting, else None."""
        return self._health.peek()

    def _render_readiness(self) -> Rendered:
        result = self._check_all()
        return Rendered.of(result, 200 if result["ready"] else 503)

    def _component_checks(self) -> dict[str, health.Check]:
        """The checks of ``/readyz``, built once per replica: those of ``c2pg health``, with
        PostgreSQL on the pool, Cassandra and Kafka on long-lived clients (see the module
        docstring), each wrapped in :class:`engine.health.SingleFlight`."""
        if self._checks is None:
            cfg, t = self.cfg, self.check_timeout_s
            checks = health.pipeline_checks(cfg, timeout_s=t)
            cassandra = health.CassandraProbe(
                contact_points=list(cfg.cassandra.contact_points), port=cfg.cassandra.port,
                username=cfg.cassandra.username,
                password=cfg.cassandra.password.get() if cfg.cassandra.password else None, timeout_s=t,
                ssl_context=ssl_context(cfg.cassandra.ssl))
            kafka = health.KafkaProbe(bootstrap_servers=cfg.kafka.bootstrap_servers, topics=list(self._topics),
                                      extra=cfg.kafka.client_conf(), timeout_s=t)
            self._probes = [cassandra]
            checks.update(postgres=self._postgres_check, cassandra=cassandra, kafka=kafka,
                          sync=lambda: health.describe_sync(self._sync_answer()), capture=self._capture_check)
            self._checks = {name: health.SingleFlight(name, fn) for name, fn in checks.items()}
        return self._checks

    def _postgres_check(self) -> str:
        """A round trip on a pooled connection. A pooled connection broken since its last
        use (PostgreSQL restarted in between) is dropped and the check tried once more on a
        new one, so a restart that is over does not read as an outage."""
        try:
            return self._postgres_round_trip()
        except ApiError:
            return self._postgres_round_trip()

    def _postgres_round_trip(self) -> str:
        with self.pg() as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT current_setting('server_version')")
                row = cur.fetchone()
            conn.rollback()
        return f"PostgreSQL {row[0] if row else '?'}"

    def _check_all(self) -> dict[str, Any]:
        checks = self._component_checks()
        if self._executor is None:
            # A thread per check and one more: a hung check holds one (SingleFlight), never the round.
            self._executor = cf.ThreadPoolExecutor(len(checks) + 1, thread_name_prefix="readyz")
        results = health.run_checks(checks, timeout_s=self.check_timeout_s + 0.5, executor=self._executor)
        required = {r.name for r in results} - (set() if self.cfg.api.sync_required else {"sync"})
        failed = [r.name for r in results if not r.ok and r.name in required]
        components = [{**r.as_dict(), "required": r.name in required} for r in results]
        return {"ready": not failed, "failed": failed, "components": components,
                "checked_at": _now()}

    def _capture_check(self) -> str:
        """The ``capture`` component: the heartbeat verdict (``_c2pg.capture``, one query on
        the pool) and the cached findings; raises naming a stalled node or an uncapturable table."""
        from engine import capture

        try:
            with self.pg() as conn:
                rows = capture.read_rows(conn, self.cfg.name)
        except ApiError as exc:  # reported as the postgres component; capture cannot be judged
            return f"not measured: {exc.message}"
        nodes = capture.assess(rows, time.time(), self.cfg.capture.stall_after.total_seconds(),
                               self.cfg.capture.heartbeat_interval.total_seconds())
        published = self._published_findings()
        note = ""
        if published is not None:
            findings = published
        else:
            try:
                findings = self._findings.get()
            except Exception as exc:  # noqa: BLE001 - Cassandra away: reported as its own component
                findings, note = [], f"; tables not checked ({type(exc).__name__})"
        return capture.describe(nodes, findings, capture.stall_cause(self.cfg, nodes)) + note

    def _published_findings(self) -> list | None:
        """The running supervisor's findings (its schema round, every
        ``sync.schema_check_interval``), or None without a supervisor status."""
        from engine.capture import Finding

        _, doc, _ = self._sync.get()
        raw = ((doc or {}).get("capture") or {}).get("findings")
        if raw is None:
            return None
        return [Finding(**f) for f in raw]

    def _find_uncapturable(self) -> list:
        from engine import capture

        path = self.cfg.capture.connector_log
        return capture.find_uncapturable(self._cql_session(), self.cfg,
                                         capture.connector_log(path).update() if path else None)

    # --- sync ---------------------------------------------------------------------------

    def _read_sync(self) -> tuple[str, dict | None, str | None]:
        """``(state, supervisor status or None, error)``; state is ``running``, ``paused``,
        ``not running`` or ``unreachable``."""
        import ray

        from engine.sync.supervisor import find

        try:
            sup = find(self.cfg.name)
            if sup is None:
                self._sync_held = (None, None)
                return "not running", None, None
            snapshot = getattr(sup, "status_snapshot", None)
            if snapshot is None:  # a supervisor started by an older c2pg
                status = ray.get(sup.status.remote(), timeout=self.check_timeout_s)
            else:
                held_version, held = self._sync_held
                version, doc = ray.get(snapshot.remote(held_version), timeout=self.check_timeout_s)
                if doc is not None:
                    self._sync_held = (version, doc)
                status = doc if doc is not None else held
            if status is None:
                raise RuntimeError("the supervisor published no status")
        except Exception as exc:  # noqa: BLE001 - a dead or slow actor is an answer, not a crash
            return "unreachable", None, f"{type(exc).__name__}: {str(exc)[:300]}"
        return ("paused" if status.get("paused_all") else "running"), status, None

    def _sync_answer(self) -> dict:
        _, status, error = self._sync.get()
        if status is None:
            raise RuntimeError(error or f"no sync supervisor running for pipeline {self.cfg.name!r} "
                                        "(c2pg sync start)")
        return status

    def status(self, name: str) -> dict[str, Any]:
        self.pipeline(name)
        return self._status.get().value

    def status_cached(self, name: str) -> Rendered | None:
        """:meth:`status`, rendered, if it can be answered from the cache without waiting, else None."""
        self.pipeline(name)
        return self._status.peek()

    def _build_status(self) -> dict[str, Any]:
        state, sup, error = self._sync.get()
        problems = [f"sync: {error}"] if error else []
        topics = self._topics
        dead: dict[tuple[str, int | None], int] | None = None
        committed: list[dict] = []
        try:
            with self.pg() as conn:
                dead = runs.dead_letter_counts(conn, self.cfg.name)
                if sup is None:
                    committed = runs.offsets(conn, self.cfg.name, list(topics))
        except ApiError as exc:
            problems.append(exc.message)
        parts: dict[str, list[dict]] = {q: [] for q in self.tables}
        workers = []
        now = time.time()
        if sup is not None:
            for w in sup.get("workers", []):
                workers.append({"worker": w.get("worker"), "node_id": w.get("node_id"), "node_ip": w.get("node_ip"),
                                "state": w.get("state"), "error": w.get("error"),
                                "restarts": w.get("restarts", 0), "batches": w.get("batches"),
                                "batch_in_flight_s": w.get("batch_in_flight_s"),
                                "latency_ms": w.get("latency_ms"), "partitions": len(w.get("partitions", []))})
                for p in w.get("partitions", []):
                    q = topics.get(p["topic"])
                    if q is not None:
                        # Flagged by the worker's clock or this replica's (a worker may predate the flag).
                        ts = p.get("last_write_ts_us")
                        future = bool(p.get("last_write_in_future")) or in_future(ts, now)
                        parts[q].append({"partition": p["partition"], "offset": p.get("offset"),
                                         "high_watermark": p.get("high_watermark"), "lag": p.get("lag"),
                                         "last_write_applied": iso_write_time(ts), "last_write_ts_us": ts,
                                         "last_write_in_future": future,
                                         "events": p.get("events", 0), "events_per_s": p.get("events_per_s", 0.0),
                                         "dead_letters": None if dead is None else dead.get((q, p["partition"]), 0),
                                         "worker": w.get("worker"), "worker_state": w.get("state"),
                                         "batch_in_flight_s": w.get("batch_in_flight_s"),
                                         "node": node_label(w.get("node_id"), w.get("node_ip"))})
        else:
            for o in committed:
                parts[topics[o["topic"]]].append({
                    "partition": o["partition"], "offset": o["offset"], "high_watermark": None, "lag": None,
                    "last_write_applied": None, "last_write_ts_us": None, "last_write_in_future": False,
                    "events": 0, "events_per_s": 0.0,
                    "dead_letters": None if dead is None else dead.get((topics[o["topic"]], o["partition"]), 0),
                    "worker": None, "node": None, "batch_in_flight_s": None,
                    "worker_state": "stopped", "committed_at": o["updated_at"]})
        # Tables the supervisor will not sync: c2pg's state of them does not match (engine.state_check).
        refused = {r["table"]: r["error"] for r in (sup or {}).get("refused") or []}
        problems += [f"table {t} refused: {e}" for t, e in sorted(refused.items())]
        waiting = {w["table"]: w["reason"] for w in (sup or {}).get("waiting") or []}  # not in Cassandra yet
        paused_all = bool(sup and sup.get("paused_all"))
        paused_tables = set(sup.get("paused_tables", [])) if sup else set()
        tables = []
        for q, t in self.tables.items():
            ps = sorted(parts[q], key=lambda p: p["partition"])
            lags = [p["lag"] for p in ps if p["lag"] is not None]
            writes = [p["last_write_ts_us"] for p in ps if p["last_write_ts_us"]]
            tables.append({"table": q, "target": f"{t.target_schema}.{t.target_table}",
                           "topic": self.cfg.kafka.topic_for(t.keyspace, t.table),
                           "paused": paused_all or q in paused_tables, "refused": refused.get(q),
                           "waiting": waiting.get(q),
                           "dead_letters": None if dead is None else sum(n for (t_, _), n in dead.items() if t_ == q),
                           "lag": sum(lags) if lags else None,
                           "events_per_s": round(sum(p["events_per_s"] for p in ps), 1),
                           "last_write_applied": iso_write_time(max(writes)) if writes else None,
                           "last_write_in_future": any(p["last_write_in_future"] for p in ps), "partitions": ps})
        return {"pipeline": self.cfg.name, "as_of": _now(),
                "capture": (sup or {}).get("capture"),
                "sync": {"state": state, "error": error, "paused_all": paused_all,
                         "paused_tables": sorted(paused_tables),
                         "started_at": _ts(sup["started_at"] * 1e6) if sup and sup.get("started_at") else None,
                         "workers": workers, "moves": (sup or {}).get("moves", [])},
                "tables": tables, "problems": problems}

    def pause(self, name: str, table: str | None, *, resume: bool = False) -> dict[str, Any]:
        """Pause (or resume) the whole pipeline or one table through the supervisor, which
        keeps the flag in ``_c2pg.sync_state`` and tells every worker."""
        import ray

        from engine.sync.supervisor import find

        self.pipeline(name)
        if table is not None:
            self.table(table)
        action = "resume" if resume else "pause"
        try:
            sup = find(name)
        except Exception as exc:
            raise ApiError(503, f"Ray did not answer ({type(exc).__name__})") from exc
        if sup is None:
            raise ApiError(409, f"sync is not running for pipeline {name!r}; start it with "
                                "c2pg sync start --config FILE")
        try:
            ray.get(getattr(sup, action).remote(table), timeout=30)
        except ray.exceptions.GetTimeoutError as exc:
            raise ApiError(503, f"the sync supervisor did not confirm the {action} within 30 s") from exc
        except ray.exceptions.RayError as exc:
            raise ApiError(503, f"the sync supervisor failed to {action} ({type(exc).__name__})") from exc
        self._sync_held = (None, None)  # the supervisor gathered its status again before answering
        self._sync.clear()
        self._status.clear()
        self._health.clear()
        log.info(f"sync {action}d", pipeline=name, table=table or "every table")
        return {"pipeline": name, "action": f"{action}d", "table": table}

    # --- runs (Ray jobs) ------------------------------------------------------------------

    def submit(self, kind: str, table: str, *, splits: int | None = None, repair: bool = False) -> dict:
        """Submit ``python -m jobs.<kind> --run-id <new id> ...`` as a Ray job; return its ids."""
        self.table(table)
        run_id = str(uuid.uuid4())
        argv = ["python", "-m", KINDS[kind], "--config", str(self.config_path), "--table", table,
                "--run-id", run_id]
        if splits:
            argv += ["--splits", str(splits)]
        if repair:
            argv.append("--repair")
        job_id = job_id_of(kind, run_id)
        env = self.job_env
        try:
            self.jobs().submit_job(entrypoint=shlex.join(argv), submission_id=job_id,
                                   runtime_env={"env_vars": env} if env else None,
                                   metadata={"c2pg_kind": kind, "c2pg_run_id": run_id,
                                             "c2pg_pipeline": self.cfg.name, "c2pg_table": table})
        except Exception as exc:
            log.warning("job submission failed", kind=kind, error=f"{type(exc).__name__}: {exc}")
            raise ApiError(503, f"the Ray Jobs API did not accept the {kind} job ({type(exc).__name__})") from exc
        log.info("job submitted", kind=kind, run_id=run_id, job_id=job_id, table=table)
        return {"id": run_id, "kind": kind, "job_id": job_id, "table": table, "state": "pending",
                "href": f"/v1/{_collection(kind)}/{run_id}"}

    def run(self, kind: str, run_id: str) -> dict[str, Any]:
        """State, progress and report of one run, from its record and its Ray job."""
        with self.pg() as conn:
            row = runs.get_run(conn, run_id, kind)
            progress = runs.run_progress(conn, run_id) if row else None
            drift = runs.diff_counts(conn, run_id) if row and kind == "reconcile" else None
            sample = runs.diffs(conn, run_id, limit=20) if row and kind == "reconcile" else None
        job = self._job_info(job_id_of(kind, run_id))
        if row is None and job is None:
            raise ApiError(404, f"no {kind} run {run_id}")
        state, error = _state(row, job)
        if state == "failed" and error is None and job is not None:
            error = self._job_error(job)
        out: dict[str, Any] = {"id": run_id, "kind": kind, "state": state, "error": error,
                               "table": f"{row['keyspace']}.{row['source_table']}" if row else
                               (job.get("metadata") or {}).get("c2pg_table"),
                               "target": row["target"] if row else None,
                               "started_at": row["started_at"] if row else None,
                               "finished_at": row["finished_at"] if row else None,
                               "progress": progress, "report": row["stats"] if row else None,
                               "job": job and {"id": job["submission_id"], "status": job["status"],
                                               "message": job.get("message")}}
        if kind == "reconcile" and row:
            out["drift"] = drift
            out["diffs"] = sample
        return out

    def recent_runs(self, kind: str | None, limit: int) -> list[dict[str, Any]]:
        with self.pg() as conn:
            rows = runs.recent_runs(conn, self.cfg.name, kind=kind, limit=limit)
        for r in rows:
            r["state"] = _state(r, None)[0]
        return rows

    def jobs(self):
        if self._jobs is None:
            self._jobs = self._jobs_client_factory()
        return self._jobs

    def _job_info(self, job_id: str) -> dict | None:
        try:
            info = self.jobs().get_job_info(job_id)
        except Exception as exc:  # noqa: BLE001 - unknown job (404) or Jobs API down: no job to report
            log.debug("no job info", job_id=job_id, error=f"{type(exc).__name__}: {exc}")
            return None
        return {"submission_id": info.submission_id, "status": str(getattr(info.status, "value", info.status)),
                "message": info.message, "metadata": info.metadata or {}}

    def _job_error(self, job: dict) -> str:
        """Why a job failed: its last meaningful log line (the entry point prints one), else
        Ray's message. Traceback frames are left out."""
        try:
            logs = self.jobs().get_job_logs(job["submission_id"])
        except Exception:  # noqa: BLE001 - logs are a nicety; Ray's message remains
            logs = ""
        lines = [ln.strip() for ln in logs.splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith(("File ", "Traceback", "^", "~"))
                 and not ln.startswith("{")]
        return (lines[-1] if lines else (job.get("message") or "the job failed"))[:500]

    # --- dead letters -----------------------------------------------------------------------

    def dead_letters(self, *, origin: str | None, table: str | None, limit: int,
                     include_replayed: bool) -> list[dict[str, Any]]:
        from engine import dlq

        if table is not None:
            self.table(table, field="table")
        with self.pg() as conn:
            return dlq.list_dead_letters(conn, self.cfg, origin=origin, table=table, limit=limit,
                                         include_replayed=include_replayed)

    def dead_letter(self, id_: int) -> dict[str, Any]:
        from engine import dlq

        with self.pg() as conn:
            try:
                letter = dlq.show(conn, id_)
            except dlq.DeadLetterNotFound as exc:
                raise ApiError(404, str(exc)) from exc
        if letter["pipeline"] != self.cfg.name:
            raise ApiError(404, f"no dead letter with id {id_} in pipeline {self.cfg.name!r}")
        return letter

    def replay(self, ids: list[int] | None) -> dict[str, Any]:
        """Replay sync dead letters (all unreplayed ones of the pipeline without ``ids``)
        through sync's own path (:func:`engine.dlq.replay`)."""
        from engine import dlq

        with self.pg() as conn:
            result = dlq.replay(conn, self.cfg, ids, cql_session=self._cql_session())
        return {"replayed": list(result.replayed),
                "failed": [{"id": i, "error": e} for i, e in result.failed],
                "skipped": [{"id": i, "reason": r} for i, r in result.skipped]}

    def _cql_session(self):
        from engine import cql

        if self._cql is None:
            try:
                self._cql = cql.connect(self.cfg.cassandra)
            except Exception as exc:
                raise ApiError(503, f"cassandra unavailable ({type(exc).__name__})") from exc
        return self._cql[1]

    # --- PostgreSQL ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def pg(self) -> Iterator[Any]:
        """A pooled connection; a broken one is closed rather than returned. PostgreSQL
        unreachable → 503 naming it."""
        import psycopg2

        pool = self._get_pool()
        try:
            conn = pool.getconn()
        except psycopg2.Error as exc:
            raise ApiError(503, f"postgres unavailable ({type(exc).__name__}: {str(exc).strip()[:200]})") from exc
        broken = False
        try:
            yield conn
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            broken = True
            raise ApiError(503, f"postgres unavailable ({type(exc).__name__}: {str(exc).strip()[:200]})") from exc
        finally:
            pool.putconn(conn, close=broken or conn.closed != 0)

    def _get_pool(self):
        from psycopg2.pool import ThreadedConnectionPool

        with self._pool_lock:
            if self._pool is None:
                kwargs = self.cfg.postgres.connect_kwargs(application_name="c2pg-serve")
                self._pool = ThreadedConnectionPool(0, POOL_MAX, **kwargs)
                # psycopg2's pool closes a returned connection once it holds ``minconn`` idle
                # ones: with 0, every use connected anew (a fork and an authentication on the
                # server, several a second). Created with 0, so that a replica starts while
                # PostgreSQL is down; kept up to POOL_KEEP from then on.
                self._pool.minconn = POOL_KEEP
            return self._pool

    def close(self) -> None:
        for probe in self._probes:
            probe.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._pool is not None:
            self._pool.closeall()
        if self._cql is not None:
            self._cql[0].shutdown()


def job_id_of(kind: str, run_id: str) -> str:
    """The Ray job id of a run submitted by the control plane."""
    return f"c2pg-{kind}-{run_id}"


def _collection(kind: str) -> str:
    return {"snapshot": "snapshots", "reconcile": "reconciliations"}[kind]


def _state(row: dict | None, job: dict | None) -> tuple[str, str | None]:
    """One state for a run: ``pending``, ``running``, ``succeeded`` or ``failed``.

    The run record wins once it says how the run ended; a job that ended while its record
    still says ``running`` died without finishing it (killed, or its driver crashed).
    """
    job_status = job["status"] if job else None
    if row is not None:
        if row["status"] in _DONE:
            return "succeeded", None
        if row["status"] == "failed":
            return "failed", row.get("error")
        if job_status in ("FAILED", "STOPPED"):
            return "failed", None
        return "running", None
    if job_status in ("FAILED", "STOPPED"):
        return "failed", None
    if job_status == "SUCCEEDED":
        return "succeeded", None
    return ("running" if job_status == "RUNNING" else "pending"), None


def _ts(us: float | None) -> str | None:
    if not us:
        return None
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat()


def _now() -> str:
    return datetime.now(tz=UTC).isoformat()


def jobs_api_address() -> str:
    """The Jobs API (dashboard) of the cluster this replica runs on: ``RAY_API_SERVER_ADDRESS``
    if set, else the dashboard address the node registered.

    Passed explicitly because ``JobSubmissionClient(None)`` inside a Ray worker does not see
    the connected cluster and waits 40 s for a GCS at the default port.
    """
    explicit = os.environ.get("RAY_API_SERVER_ADDRESS")
    if explicit:
        return explicit
    import ray

    url = ray._private.worker.global_worker.node.address_info.get("webui_url")
    if not url:
        raise ApiError(503, "the Ray dashboard (Jobs API) is not running on this cluster")
    return url if "://" in url else f"http://{url}"


def _default_jobs_client():
    """A client of :func:`jobs_api_address`; Ray adds its auth token itself when token
    authentication is on."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(jobs_api_address())
