"""Real health checks of every component c2pg talks to.

One module, three callers: ``c2pg stack status`` / ``stack up`` (readiness of the local
stack), the CLI's ``c2pg health`` and the Serve app's ``/readyz`` (``serve_app``). Each check
is a plain function that talks to the real server and raises on failure; :func:`run_checks`
runs a set of them concurrently, each bounded by a timeout, and turns outcomes into
:class:`ComponentHealth` values (status, latency, error). A check never reports healthy
without a round trip.

The checks are probes of peers that may be down: the drivers' own error logging (the
Cassandra driver logs a traceback per refused connection) is silenced while a check runs,
because the check's exception is the answer (:func:`_drivers_quiet`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

Check = Callable[[], "str | None"]

_QUIET = logging.getLogger("c2pg.health.librdkafka")
_QUIET.setLevel(logging.CRITICAL)
_QUIET.propagate = False

_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: int | None = None


@contextlib.contextmanager
def _drivers_quiet(logger_name: str = "cassandra") -> Iterator[None]:
    """Raise ``logger_name``'s level to CRITICAL while at least one check runs.

    Checks run concurrently (and the Serve app runs requests concurrently), so the level is
    reference-counted: the first check in saves it, the last one out puts it back. Other
    code in the same process logging through the driver in that window is silenced too;
    the window is one check's timeout at most.
    """
    global _quiet_depth, _quiet_saved
    logger = logging.getLogger(logger_name)
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved = logger.level
            logger.setLevel(logging.CRITICAL)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_saved is not None:
                logger.setLevel(_quiet_saved)


@dataclass(frozen=True, slots=True)
class ComponentHealth:
    """Outcome of one check: ``ok``, how long the round trip took, and why it failed."""

    name: str
    ok: bool
    latency_ms: float
    detail: str | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        """``"up"`` or ``"down"``: what ``/readyz`` and ``c2pg health --json`` show."""
        return "up" if self.ok else "down"

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "status": self.status, **{k: v for k, v in asdict(self).items()
                                                              if k != "name"}}


def run_checks(checks: Mapping[str, Check], timeout_s: float = 5.0,
               executor: cf.ThreadPoolExecutor | None = None) -> list[ComponentHealth]:
    """Run ``checks`` concurrently; a check still running after ``timeout_s`` is a failure.

    The result keeps the order of ``checks``. The threads of checks that time out are left
    to finish on their own (drivers have their own timeouts, set from the same budget).
    ``executor``: a pool kept by a caller that checks every second (the Serve replica), so
    a round starts no threads; its checks must be :class:`SingleFlight` and the pool have a
    thread per check and one more, so a hung check never starves the next round.
    """
    if executor is not None:
        return _collect({name: executor.submit(_timed, fn) for name, fn in checks.items()}, timeout_s)
    pool = cf.ThreadPoolExecutor(max_workers=max(1, len(checks)), thread_name_prefix="health")
    try:
        return _collect({name: pool.submit(_timed, fn) for name, fn in checks.items()}, timeout_s)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _collect(futures: Mapping[str, cf.Future], timeout_s: float) -> list[ComponentHealth]:
    started = time.monotonic()
    results = []
    for name, fut in futures.items():
        remaining = max(0.0, timeout_s - (time.monotonic() - started))
        try:
            ok, latency, detail, error = fut.result(timeout=remaining)
        except cf.TimeoutError:
            ok, latency, detail, error = False, timeout_s * 1000, None, f"timed out after {timeout_s:g}s"
        results.append(ComponentHealth(name, ok, round(latency, 1), detail, error))
    return results


def _timed(fn: Check) -> tuple[bool, float, str | None, str | None]:
    t0 = time.perf_counter()
    try:
        detail = fn()
    except Exception as exc:  # noqa: BLE001 - any failure of the peer is the answer here
        return False, (time.perf_counter() - t0) * 1000, None, f"{type(exc).__name__}: {exc}"
    return True, (time.perf_counter() - t0) * 1000, detail, None


# --- the checks -------------------------------------------------------------------------


def check_postgres(*, host: str, port: int, user: str, password: str | None, dbname: str,
                   timeout_s: float = 3.0, **libpq: Any) -> str:
    """``SELECT 1`` over a fresh connection; returns the server version. ``libpq``: further
    connection settings (``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``...)."""
    import psycopg2

    conn = psycopg2.connect(host=host, port=port, user=user, password=password, dbname=dbname,
                            connect_timeout=max(1, int(timeout_s)), **libpq)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1, current_setting('server_version')")
            row = cur.fetchone()
            assert row is not None and row[0] == 1
            return f"PostgreSQL {row[1]}"
    finally:
        conn.close()


def check_cassandra(*, contact_points: list[str], port: int, username: str | None = None,
                    password: str | None = None, timeout_s: float = 5.0, ssl_context: Any = None) -> str:
    """``SELECT release_version FROM system.local`` through the driver (now() proves a read)."""
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    auth = PlainTextAuthProvider(username, password) if username else None
    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy(contact_points),
                               request_timeout=timeout_s)
    with _drivers_quiet("cassandra"):
        # No schema or token metadata: the check reads one row, and the driver would otherwise
        # read every keyspace's schema at connect (a cost that grows with the cluster's tables).
        cluster = Cluster(contact_points, port=port, auth_provider=auth, connect_timeout=timeout_s,
                          control_connection_timeout=timeout_s, protocol_version=5, ssl_context=ssl_context,
                          schema_metadata_enabled=False, token_metadata_enabled=False,
                          execution_profiles={EXEC_PROFILE_DEFAULT: profile})
        try:
            session = cluster.connect()
            row = session.execute("SELECT now(), release_version FROM system.local",
                                  timeout=timeout_s).one()
            return f"Cassandra {row.release_version}"
        finally:
            cluster.shutdown()


def check_kafka(*, bootstrap_servers: str, topics: list[str] | None = None,
                extra: Mapping[str, object] | None = None, require_topics: bool = True,
                timeout_s: float = 5.0) -> str:
    """Cluster metadata, and the metadata of each of ``topics``: it must exist (or, with
    ``require_topics=False``, a missing one is only named in the detail) and every one of
    its partitions must have a leader (a partition without one cannot be read)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # librdkafka's own connection errors are collected, not printed: the exception below is
    # the answer, and a probe of a stopped broker must not flood the caller's stderr.
    causes = _KafkaCauses()
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap_servers,
                            "socket.timeout.ms": int(timeout_s * 1000), "logger": causes.logger,
                            "error_cb": lambda err: causes.errors.append(err.str())}
    conf.update(extra or {})
    admin = AdminClient(conf)
    try:
        md = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        # "Failed to get metadata: Local: Broker transport failure" hides the cause (a TLS
        # handshake or a SASL login refused): librdkafka tells it to error_cb, served by poll(),
        # and to its log.
        admin.poll(0)
        raise KafkaException(f"{exc.args[0]}; {causes}" if causes else exc.args[0]) from exc
    detail = f"{len(md.brokers)} broker(s), {len(md.topics)} topic(s)"
    missing = [t for t in topics or [] if t not in md.topics or md.topics[t].error is not None]
    if missing and require_topics:
        raise RuntimeError(f"topics missing: {', '.join(missing)}")
    present = [t for t in topics or [] if t not in missing]
    leaderless = [f"{t}/{p}" for t in present for p, pm in sorted(md.topics[t].partitions.items())
                  if pm.leader < 0 or pm.error is not None]
    if leaderless:
        raise RuntimeError(f"partitions without a leader: {', '.join(leaderless)}")
    if present:
        detail += "; " + ", ".join(f"{t}: {len(md.topics[t].partitions)} partition(s)" for t in present)
    if missing:
        detail += f"; no topic yet for {', '.join(missing)} (created by the first change event)"
    return detail


class _KafkaCauses(logging.Handler):
    """What librdkafka said while a check failed: its error callbacks and its warning or
    error log lines (a certificate refused, a SASL login refused), shown after the
    exception's own text. The logger is not registered with :mod:`logging`: one per check."""

    SHOWN = 3

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []
        self.lines: list[str] = []
        self.logger = logging.Logger("c2pg.health.librdkafka")
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __bool__(self) -> bool:
        return bool(self.errors or self.lines)

    def __str__(self) -> str:
        return "; ".join(list(dict.fromkeys(self.errors or self.lines))[:self.SHOWN])


class CassandraProbe:
    """The Cassandra check for a long-lived caller (the Serve replica's ``/readyz``, every
    ``api.health_cache``): one session kept between checks, so each check costs one round
    trip (``system.local``) instead of a new cluster connection; no schema or token metadata,
    so its cost does not grow with the cluster's tables. A failed check drops the session and
    the next one connects afresh (the driver's own reconnection backs off for minutes, and a
    probe must see a node that came back at once)."""

    def __init__(self, *, contact_points: list[str], port: int, username: str | None = None,
                 password: str | None = None, timeout_s: float = 5.0, ssl_context: Any = None):
        self._args = (list(contact_points), port, username, password)
        self._ssl_context = ssl_context
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._cluster: Any = None
        self._session: Any = None

    def __call__(self) -> str:
        with self._lock, _drivers_quiet("cassandra"):
            try:
                if self._session is None:
                    self._connect()
                row = self._session.execute("SELECT now(), release_version FROM system.local",
                                            timeout=self.timeout_s).one()
                return f"Cassandra {row.release_version}"
            except Exception:
                self._close()
                raise

    def _connect(self) -> None:
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import WhiteListRoundRobinPolicy

        contact_points, port, username, password = self._args
        profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy(contact_points),
                                   request_timeout=self.timeout_s)
        self._cluster = Cluster(contact_points, port=port, protocol_version=5, ssl_context=self._ssl_context,
                                auth_provider=PlainTextAuthProvider(username, password) if username else None,
                                connect_timeout=self.timeout_s, control_connection_timeout=self.timeout_s,
                                schema_metadata_enabled=False, token_metadata_enabled=False,
                                execution_profiles={EXEC_PROFILE_DEFAULT: profile})
        self._session = self._cluster.connect()

    def _close(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.shutdown()

    def close(self) -> None:
        with self._lock:
            self._close()


class KafkaProbe:
    """The Kafka check for a long-lived caller (the Serve replica's ``/readyz``): one admin
    client kept between checks, and only the pipeline's topics described (not the metadata
    of every topic of the cluster), so its cost follows the pipeline, not the cluster.

    Same verdict as :func:`check_kafka` with ``require_topics=False``: fails when the
    brokers do not answer or a partition of a pipeline topic has no leader; a topic that
    does not exist yet is named in the detail. The detail counts topics and partitions
    rather than listing each (a pipeline may have hundreds)."""

    NAMES_SHOWN = 5
    TOPICS_PER_ROUND = 25
    """A round describes at most this many topics (the next ones in turn), so its cost is
    bounded whatever the pipeline's size; every topic is described again within
    ``ceil(topics / TOPICS_PER_ROUND)`` rounds (8 s at 200 tables and one round a second)."""

    def __init__(self, *, bootstrap_servers: str, topics: list[str], extra: Mapping[str, object] | None = None,
                 timeout_s: float = 5.0):
        self._conf: dict[str, Any] = {"bootstrap.servers": bootstrap_servers,
                                      "socket.timeout.ms": int(timeout_s * 1000), "logger": _QUIET,
                                      **(extra or {})}
        self.topics = list(topics)
        self.timeout_s = timeout_s
        self._admin: Any = None
        self._next = 0
        # per topic, from its latest description: partition count (None: no such topic yet)
        # and the partitions without a leader
        self._seen: dict[str, tuple[int | None, list[str]]] = {}

    def __call__(self) -> str:
        from confluent_kafka import KafkaError, KafkaException, TopicCollection
        from confluent_kafka.admin import AdminClient

        if self._admin is None:
            self._admin = AdminClient(self._conf)
        t = self.timeout_s
        batch = self._batch()
        try:
            brokers = len(self._admin.describe_cluster(request_timeout=t).result(timeout=t).nodes)
            futures = self._admin.describe_topics(TopicCollection(batch), request_timeout=t) if batch else {}
            for topic, fut in futures.items():
                try:
                    desc = fut.result(timeout=t)
                except KafkaException as exc:
                    if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        self._seen[topic] = (None, [])
                        continue
                    raise
                self._seen[topic] = (len(desc.partitions),
                                     [f"{topic}/{p.id}" for p in desc.partitions if p.leader is None])
        except Exception:
            self._admin = None  # a new client next time, not one stuck on a broken connection
            raise
        seen = [self._seen[topic] for topic in self.topics if topic in self._seen]
        leaderless = [p for _, parts in seen for p in parts]
        if leaderless:
            raise RuntimeError(f"partitions without a leader: {_some(leaderless, self.NAMES_SHOWN)}")
        missing = [topic for topic in self.topics if self._seen.get(topic, (0, []))[0] is None]
        partitions = sum(n or 0 for n, _ in seen)
        detail = (f"{brokers} broker(s); {len(seen) - len(missing)} topic(s) of the pipeline, {partitions} "
                  "partition(s), each with a leader")
        if missing:
            detail += f"; no topic yet for {_some(missing, self.NAMES_SHOWN)} (created by the first change event)"
        return detail

    def _batch(self) -> list[str]:
        """The next topics to describe, in turn."""
        n = len(self.topics)
        if n <= self.TOPICS_PER_ROUND:
            return list(self.topics)
        batch = [self.topics[(self._next + i) % n] for i in range(self.TOPICS_PER_ROUND)]
        self._next = (self._next + self.TOPICS_PER_ROUND) % n
        return batch


def _some(names: list[str], shown: int) -> str:
    """The first ``shown`` names, and how many more."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


class SingleFlight:
    """A check for a caller that repeats it (the Serve replica, every ``api.health_cache``)
    that is never run twice at once: while an earlier call has not returned (a peer that
    accepts the connection and never answers), each new call fails at once naming it,
    instead of starting another thread that would hang too. So a hung peer costs one thread,
    however long it hangs, and the other checks and the probes' answers are not held up.

    ``faults.hit("health.check", component=NAME)`` runs first: the fault tests make one
    component's check hang (``action=hold``) or fail, aimed, without stopping a server."""

    def __init__(self, name: str, check: Check):
        self.name = name
        self._check = check
        self._lock = threading.Lock()
        self._since: float | None = None

    def __call__(self) -> str | None:
        from engine import faults

        with self._lock:
            if self._since is not None:
                raise RuntimeError(f"the previous check has not returned after {time.monotonic() - self._since:.0f}s")
            self._since = time.monotonic()
        try:
            faults.hit("health.check", component=self.name)
            return self._check()
        finally:
            with self._lock:
                self._since = None


def check_http_json(url: str, *, timeout_s: float = 3.0, headers: Mapping[str, str] | None = None,
                    ) -> object:
    """GET ``url`` and parse the JSON body; non-2xx raises. Used by the registry/Vault checks."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def check_registry(*, url: str, timeout_s: float = 3.0) -> str:
    """``GET {url}/subjects`` of the Confluent-compatible API."""
    subjects = check_http_json(url.rstrip("/") + "/subjects", timeout_s=timeout_s)
    if not isinstance(subjects, list):
        raise RuntimeError(f"unexpected /subjects answer: {subjects!r}")  # noqa: TRY004 - a peer's answer
    return f"{len(subjects)} subject(s)"


def check_vault(*, url: str, timeout_s: float = 3.0) -> str:
    """``sys/health``: fails when Vault is sealed or not initialised (503/501 answers)."""
    try:
        health = check_http_json(url.rstrip("/") + "/v1/sys/health", timeout_s=timeout_s)
    except urllib.error.HTTPError as exc:
        states = {501: "not initialised", 503: "sealed", 429: "standby"}
        raise RuntimeError(f"Vault is {states.get(exc.code, f'unhealthy (HTTP {exc.code})')}") from exc
    assert isinstance(health, dict)
    if health.get("sealed"):
        raise RuntimeError("Vault is sealed")
    return f"version {health.get('version')}"


def check_debezium(*, url: str, timeout_s: float = 3.0) -> str:
    """The standalone Debezium Cassandra connector's ``/health``: every check must be healthy.

    The answer looks like ``{"cassandra-cdc-health-check": {"healthy": true, "message": ...}}``.
    """
    body = check_http_json(url.rstrip("/") + "/health", timeout_s=timeout_s)
    if not isinstance(body, dict) or not body:
        raise RuntimeError(f"unexpected /health answer: {body!r}")
    sick = [name for name, res in body.items() if not (isinstance(res, dict) and res.get("healthy"))]
    if sick:
        raise RuntimeError(f"connector reports unhealthy: {', '.join(sick)}")
    return "healthy"


def check_sync_supervisor(pipeline: str, *, timeout_s: float = 3.0) -> str:
    """The pipeline's :class:`~engine.sync.supervisor.SyncSupervisor` answers ``status()``
    within ``timeout_s``, every worker it runs is ``running`` or ``paused`` and no table is
    refused (c2pg's state of it does not match: :mod:`engine.state_check`).

    Needs a connected Ray driver (the Serve replica is one; so is any process after
    ``ray.init``). Fails when no supervisor runs for ``pipeline`` (``c2pg sync start``), when
    it does not answer, and when a worker is ``retrying``, ``stopped`` or unreachable (the
    message names the worker, its state and its last error).
    """
    import ray

    from engine.sync.supervisor import find

    if not ray.is_initialized():
        raise RuntimeError("not connected to Ray (the check runs in a Ray driver or the Serve app)")
    sup = find(pipeline)
    if sup is None:
        raise RuntimeError(f"no sync supervisor running for pipeline {pipeline!r} (c2pg sync start)")
    status = ray.get(sup.status.remote(), timeout=timeout_s)
    return describe_sync(status)


def describe_sync(status: Mapping) -> str:
    """The detail of a healthy supervisor ``status()``; raises naming every worker that is
    not ``running``/``paused``. Shared by :func:`check_sync_supervisor` and the Serve app,
    which reads the status once for both its status route and its readiness."""
    workers = status.get("workers") or []
    bad = [f"worker {w.get('worker')} {w.get('state')}" + (f" ({str(w['error'])[:200]})" if w.get("error") else "")
           for w in workers if w.get("state") not in ("running", "paused", "refused")]
    bad += [f"table {r['table']} refused: {str(r['error'])[:300]}" for r in status.get("refused") or []]
    if bad:
        raise RuntimeError("; ".join(bad))
    paused = " (paused)" if status.get("paused_all") else ""
    if not workers:
        return "supervisor running; no partitions to assign yet (no topic has events)"
    return f"{len(workers)} worker(s) running{paused}"


def pipeline_checks(cfg, *, timeout_s: float = 3.0, sync: bool = False) -> dict[str, Check]:
    """The checks of every component a pipeline uses, built from its (resolved) config.

    Callers: ``c2pg health`` and the Serve app's ``/readyz``. Kafka is checked for cluster
    metadata and the metadata of the pipeline's topics: a table's topic appears with its
    first change event, so a missing topic is reported in the detail, not as a failure.
    ``capture`` is :func:`engine.capture.check_capture`: it fails when a node's heartbeat
    stalled, and names tables that will not be captured in its detail (without a running
    sync it reports "not measured"). ``sync=True`` adds ``sync`` (:func:`check_sync_supervisor`; needs a Ray
    driver).
    """
    from engine.cql import ssl_context

    pg = cfg.postgres.connect_kwargs(application_name="c2pg-health")
    checks: dict[str, Check] = {
        "postgres": lambda: check_postgres(host=pg["host"], port=pg["port"], user=pg["user"],
                                           password=pg["password"], dbname=pg["dbname"],
                                           timeout_s=timeout_s, sslmode=pg["sslmode"],
                                           **cfg.postgres.ssl_kwargs()),
        "cassandra": lambda: check_cassandra(
            contact_points=list(cfg.cassandra.contact_points), port=cfg.cassandra.port,
            username=cfg.cassandra.username,
            password=cfg.cassandra.password.get() if cfg.cassandra.password else None,
            timeout_s=timeout_s, ssl_context=ssl_context(cfg.cassandra.ssl)),
        "kafka": lambda: check_kafka(
            bootstrap_servers=cfg.kafka.bootstrap_servers, extra=cfg.kafka.client_conf(),
            topics=[cfg.kafka.topic_for(t.keyspace, t.table) for t in cfg.tables],
            require_topics=False, timeout_s=timeout_s),
    }
    if cfg.schema_registry.url:
        checks["schema_registry"] = lambda: check_registry(url=str(cfg.schema_registry.url),
                                                           timeout_s=timeout_s)
    if cfg.vault is not None:
        checks["vault"] = lambda: check_vault(url=str(cfg.vault.url), timeout_s=timeout_s)
    checks["capture"] = lambda: _check_capture(cfg, timeout_s)
    if sync:
        checks["sync"] = lambda: check_sync_supervisor(cfg.name, timeout_s=timeout_s)
    return checks


def _check_capture(cfg, timeout_s: float) -> str:
    from engine.capture import check_capture

    with _drivers_quiet("cassandra"):
        return check_capture(cfg, timeout_s=timeout_s)

