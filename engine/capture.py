"""Is change capture still working? The end-to-end heartbeat, and tables the connector cannot see.

The Debezium connector can stop delivering changes while it, Kafka and every c2pg worker look
healthy: one statement it cannot decode makes it skip the rest of a commit-log segment, and a
schema it cannot parse stops it from learning new tables (docs/troubleshooting.md). Only an
event that travels the whole path proves the path works, so c2pg sends its own:

- **Writer.** The pipeline's :class:`~engine.sync.supervisor.SyncSupervisor` runs a
  :class:`HeartbeatWriter` every ``capture.heartbeat_interval``: one row per Cassandra node
  in ``<capture.heartbeat_keyspace>.heartbeat`` (created by c2pg with ``cdc = true`` and one
  replica; each node's row has a partition key whose token that node owns, so it is in that
  node's commit log only and only that node's connector can deliver it). What it wrote goes
  to ``_c2pg.capture`` (:func:`record_written`).
- **Reader.** The heartbeat topic's partitions are assigned to the sync workers like any
  table's; a worker hands their records to :class:`HeartbeatReader`, which decodes them with
  the ordinary event decoder, and records the newest heartbeat seen per node in the same
  transaction as the topic's offsets (:func:`record_seen`).
- **Verdict.** :func:`assess` (pure; the clock is an argument) turns a node's row into
  ``ok``, ``starting``, ``stalled`` or ``not measured``. Callers: the supervisor (metrics,
  status, heal after a stall), ``c2pg health`` and ``/readyz`` (:func:`check_capture`).

The second half finds tables whose changes will not be captured at all
(:func:`find_uncapturable`): ``cdc = false``, counters, ``vector`` columns (anywhere in the
cluster: they break the connector's schema refresh), and — when the connector's log is
readable (``capture.connector_log``) — tables the running connector never loaded (a UDT
created while it ran, a table created in its keyspace's first second). Each finding names the
table, the reason and the fix. The choices are explained in docs/adr/0008-capture-heartbeat.md.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("c2pg.capture")

HEARTBEAT_TABLE = "heartbeat"
KEYSPACE_SETTLE_S = 2.0
"""Wait between creating the heartbeat keyspace and its table: the connector is never told of
a table created in the same ~1 s schema refresh as its keyspace (docs/local-stack.md)."""

MAX_SLOT_SEARCH = 100_000

# ``_c2pg.capture`` (created with the other state tables: engine.pg_dialect.STATE_DDL) has
# one row per (pipeline, Cassandra node). ``since``: when the current writer (supervisor
# incarnation) began; ``written_us``/``written_at``: write time and wall time of the newest
# heartbeat written; ``write_error``: the last write's failure (NULL when it succeeded);
# ``seen_us``/``seen_at``: write time of the newest heartbeat a worker committed, and when.


class CaptureError(RuntimeError):
    """The heartbeat cannot be set up (keyspace refused, no token map); the message says why."""


def heartbeat_topic(cfg) -> str:
    """The Kafka topic the connector writes the heartbeat table's events to."""
    return cfg.kafka.topic_for(cfg.capture.heartbeat_keyspace, HEARTBEAT_TABLE)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def wall_clock_us() -> int:
    return time.time_ns() // 1000


def iso(ts_s: float | None) -> str | None:
    if ts_s is None:
        return None
    return datetime.fromtimestamp(ts_s, tz=UTC).isoformat()


# --- writer -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Beat:
    """One heartbeat write: the node it targets, its write time, and its error if it failed."""

    node: str
    address: str
    slot: int
    written_us: int
    error: str | None = None


class HeartbeatWriter:
    """Writes the pipeline's heartbeat rows (one per Cassandra node) into Cassandra.

    Owned by the supervisor's heartbeat thread, with a session of its own. :meth:`ensure`
    creates the keyspace and table when missing (raises :class:`CaptureError` when it
    cannot); :meth:`beat` writes one row per node and returns what happened to each. A node
    is targeted by searching for a ``slot`` (the second partition-key column) whose token the
    node owns, recomputed when the set of nodes changes.
    """

    def __init__(self, cfg, cluster, session):
        self.cfg = cfg
        self.cluster = cluster
        self.session = session
        self.keyspace = cfg.capture.heartbeat_keyspace
        self._insert: Any = None
        self._targets: dict[str, tuple[int, str]] = {}
        self._hosts: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        """:meth:`ensure` succeeded."""
        return self._insert is not None

    def ensure(self) -> None:
        from cassandra import ConsistencyLevel

        ks = _q(self.keyspace)
        try:
            if self.keyspace not in self.cluster.metadata.keyspaces:
                self.session.execute(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = "
                                     "{'class': 'SimpleStrategy', 'replication_factor': 1}")
                time.sleep(KEYSPACE_SETTLE_S)
            # Regular columns all text: the connector's Avro form fails for tables whose
            # cells differ in type (docs/local-stack.md), and a heartbeat must pass in any format.
            self.session.execute(
                f"CREATE TABLE IF NOT EXISTS {ks}.{_q(HEARTBEAT_TABLE)} (pipeline text, slot int, node text, "
                "address text, PRIMARY KEY ((pipeline, slot))) "
                "WITH cdc = true AND comment = 'c2pg capture heartbeat: one row per pipeline and node'")
        except Exception as exc:
            raise CaptureError(
                f"cannot create the heartbeat table {self.keyspace}.{HEARTBEAT_TABLE} "
                f"({type(exc).__name__}: {exc}); create keyspace {self.keyspace!r} yourself (one replica) "
                "or set capture.heartbeat: false") from exc
        self._insert = self.session.prepare(
            f"INSERT INTO {ks}.{_q(HEARTBEAT_TABLE)} (pipeline, slot, node, address) "
            "VALUES (?, ?, ?, ?) USING TIMESTAMP ?")
        self._insert.consistency_level = ConsistencyLevel.ONE

    def targets(self) -> dict[str, tuple[int, str]]:
        """``{node: (slot, address)}``; ``node`` is the host id (the replica ids joined by
        ``+`` if the keyspace was created with more than one replica)."""
        meta = self.cluster.metadata
        hosts = tuple(sorted(str(h.host_id) for h in meta.all_hosts()))
        if hosts == self._hosts and self._targets:
            return self._targets
        found: dict[str, tuple[int, str]] = {}
        for attempt in range(2):
            for slot in range(MAX_SLOT_SEARCH):
                key = self._insert.bind((self.cfg.name, slot, None, None, 0)).routing_key
                replicas = meta.get_replicas(self.keyspace, key)
                if not replicas:
                    break
                node = "+".join(sorted(str(h.host_id) for h in replicas))
                if node not in found:
                    found[node] = (slot, ",".join(sorted(str(h.address) for h in replicas)))
                if {h for n in found for h in n.split("+")} >= set(hosts):
                    break
            if found or attempt:
                break
            self.cluster.refresh_schema_metadata()  # a new keyspace: the token map lags behind
        if not found:
            raise CaptureError(f"the driver knows no replica of keyspace {self.keyspace!r}: cannot place "
                               "heartbeat rows")
        self._targets, self._hosts = found, hosts
        return found

    def beat(self) -> list[Beat]:
        """Write one heartbeat per node now (concurrently); never raises for a failed write."""
        beats = []
        pending = []
        for node, (slot, address) in self.targets().items():
            ts = wall_clock_us()
            fut = self.session.execute_async(self._insert, (self.cfg.name, slot, node.split("+")[0], address, ts))
            pending.append((node, address, slot, ts, fut))
        for node, address, slot, ts, fut in pending:
            try:
                fut.result()
                beats.append(Beat(node, address, slot, ts))
            except Exception as exc:  # noqa: BLE001 - a node down is recorded, not fatal
                beats.append(Beat(node, address, slot, ts, f"{type(exc).__name__}: {str(exc)[:300]}"))
        return beats


def record_written(conn, pipeline: str, since_s: float, beats: Sequence[Beat]) -> None:
    """Store what :meth:`HeartbeatWriter.beat` did (one transaction)."""
    with conn, conn.cursor() as cur:
        for b in beats:
            if b.error is None:
                cur.execute(
                    "INSERT INTO _c2pg.capture (pipeline, node, address, since, written_us, written_at, write_error) "
                    "VALUES (%s, %s, %s, to_timestamp(%s), %s, to_timestamp(%s), NULL) "
                    "ON CONFLICT (pipeline, node) DO UPDATE SET address = EXCLUDED.address, since = EXCLUDED.since, "
                    "written_us = EXCLUDED.written_us, written_at = EXCLUDED.written_at, write_error = NULL",
                    (pipeline, b.node, b.address, since_s, b.written_us, b.written_us / 1e6))
            else:
                cur.execute(
                    "INSERT INTO _c2pg.capture (pipeline, node, address, since, write_error) "
                    "VALUES (%s, %s, %s, to_timestamp(%s), %s) "
                    "ON CONFLICT (pipeline, node) DO UPDATE SET address = EXCLUDED.address, since = EXCLUDED.since, "
                    "write_error = EXCLUDED.write_error",
                    (pipeline, b.node, b.address, since_s, b.error))


# --- reader -----------------------------------------------------------------------------------


class HeartbeatReader:
    """Reads heartbeat records (a sync worker's batch of the heartbeat topic).

    The records are decoded by the ordinary :class:`~engine.sync.decode.EventDecoder` built from
    the heartbeat table's schema (JSON or Avro alike); rows of other pipelines are skipped, so
    are records that do not decode (logged: they are c2pg's own rows, not user data).
    """

    def __init__(self, cfg, session, registry=None):
        from engine.sync.decode import EventDecoder
        from engine.schema import read_table

        self.cfg = cfg
        schema = read_table(session, cfg.capture.heartbeat_keyspace, HEARTBEAT_TABLE)
        self.decoder = EventDecoder(schema, value_format=cfg.kafka.value_format, registry=registry)

    def newest(self, records: Iterable) -> dict[str, int]:
        """``{node: write time (µs) of the newest heartbeat of this pipeline in records}``."""
        from engine.sync.decode import DecodeError

        out: dict[str, int] = {}
        for r in records:
            try:
                ev = self.decoder.decode(r.key, r.value, r.origin())
            except DecodeError as exc:
                log.warning("heartbeat record %s/%d@%d not decoded: %s", r.topic, r.partition, r.offset, exc)
                continue
            if ev is None or not ev.key or ev.key[0] != self.cfg.name:
                continue
            cells = dict(ev.cells)
            node_cell = cells.get("node")
            if node_cell is None or node_cell.value is None:
                continue
            node = str(node_cell.value)
            out[node] = max(out.get(node, 0), ev.ts)
        return out


def record_seen(cur, pipeline: str, newest: Mapping[str, int], arrived_s: float) -> None:
    """Store the newest heartbeat seen per node (inside the caller's transaction, with the
    heartbeat topic's offsets). A node written under a multi-replica keyspace is keyed by
    its replica set by the writer; a heartbeat names its first replica, so it is matched to
    the row whose node starts with it."""
    for node, ts in newest.items():
        cur.execute(
            "UPDATE _c2pg.capture SET seen_us = %s, seen_at = to_timestamp(%s) "
            "WHERE pipeline = %s AND (node = %s OR node LIKE %s) AND COALESCE(seen_us, 0) < %s",
            (ts, arrived_s, pipeline, node, node + "+%", ts))
        if cur.rowcount == 0:
            cur.execute(
                "INSERT INTO _c2pg.capture (pipeline, node, seen_us, seen_at) VALUES (%s, %s, %s, to_timestamp(%s)) "
                "ON CONFLICT (pipeline, node) DO NOTHING", (pipeline, node, ts, arrived_s))


def read_rows(conn, pipeline: str) -> list[dict]:
    """The pipeline's ``_c2pg.capture`` rows (times as epoch seconds); [] before any heartbeat."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('_c2pg.capture') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return []
        cur.execute("SELECT node, address, extract(epoch FROM since), written_us, extract(epoch FROM written_at), "
                    "write_error, seen_us, extract(epoch FROM seen_at) FROM _c2pg.capture WHERE pipeline = %s "
                    "ORDER BY node", (pipeline,))
        rows = cur.fetchall()
    conn.rollback()
    names = ("node", "address", "since", "written_us", "written_at", "write_error", "seen_us", "seen_at")
    return [{k: (float(v) if k in ("since", "written_at", "seen_at") and v is not None else v)
             for k, v in zip(names, r, strict=True)} for r in rows]


# --- verdict ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeCapture:
    """The capture state of one node. ``delay_s``: how old the newest heartbeat that arrived
    is (an upper bound of how far behind capture from this node is, up to one interval when
    healthy); ``transit_s``: write → commit time of that heartbeat."""

    node: str
    address: str | None
    state: str  # ok | starting | stalled | not measured
    delay_s: float | None
    transit_s: float | None
    last_written: str | None
    last_seen: str | None
    reason: str | None = None
    waiting_since: float | None = None  # stalled: since when a heartbeat is awaited (epoch s)

    @property
    def stalled(self) -> bool:
        return self.state == "stalled"


def assess(rows: Sequence[Mapping], now_s: float, stall_after_s: float,
           interval_s: float = 0.0) -> list[NodeCapture]:
    """The state of each node from its ``_c2pg.capture`` row (see :func:`read_rows`).

    - ``not measured``: no heartbeat written for longer than ``stall_after_s`` (no sync
      running, or writes failing — then the reason is the write's error);
    - ``stalled``: a heartbeat newer than the newest seen exists, and the first one after
      the newest seen (written about ``interval_s`` after it), or the writer's first if it
      started later, was written more than ``stall_after_s`` ago;
    - ``starting``: written, nothing seen yet, within the bound;
    - ``ok``: otherwise.
    """
    out = []
    for r in rows:
        written_us, seen_us = r.get("written_us"), r.get("seen_us")
        written_at, seen_at, since = r.get("written_at"), r.get("seen_at"), r.get("since") or 0.0
        seen_s = seen_us / 1e6 if seen_us else None
        delay = round(max(0.0, now_s - seen_s), 3) if seen_s is not None else None
        transit = round(max(0.0, seen_at - seen_s), 3) if seen_s is not None and seen_at is not None else None
        base = {"node": r["node"], "address": r.get("address"), "delay_s": delay, "transit_s": transit,
                "last_written": iso(written_us / 1e6) if written_us else None, "last_seen": iso(seen_s)}
        if written_at is None or now_s - written_at > stall_after_s:
            why = (f"heartbeat writes fail: {r['write_error']}" if r.get("write_error") else
                   "no heartbeat written for " + (_human(now_s - written_at) if written_at else "ever")
                   + " (sync not running?)")
            out.append(NodeCapture(state="not measured", reason=why, **base))
            continue
        pending = (written_us or 0) > (seen_us or 0)
        waiting = now_s - max((seen_s + interval_s) if seen_s is not None else 0.0, since)
        if pending and waiting > stall_after_s:
            last = f"the last one seen was written {base['last_seen']}" if seen_s else "none has arrived"
            out.append(NodeCapture(state="stalled", reason=(
                f"no heartbeat from node {r.get('address') or r['node']} has arrived for "
                f"{_human(now_s - (seen_s or since))} (bound {_human(stall_after_s)} after the first one missing); "
                f"{last}"), waiting_since=now_s - waiting, **base))
        elif seen_s is None:
            out.append(NodeCapture(state="starting", reason="waiting for the first heartbeat", **base))
        else:
            out.append(NodeCapture(state="ok", **base))
    return out


def _human(seconds: float) -> str:
    from engine.sync_status import describe_duration

    return describe_duration(max(0.0, seconds))


# --- the connector's log ----------------------------------------------------------------------

_START = "Node configuration:["
_ADDED = re.compile(r"Added the schema for (\S+) to table schema cache")
_ADD_FAILED = re.compile(r"Error happened while adding table (\S+) to schema instance")
_VECTOR = "Could not parse type name vector"
_STAMP = re.compile(r"^(ERROR|WARN|INFO)\s+\[[^\]]*\]\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


@dataclass
class ConnectorLogState:
    """What the connector's log says since its latest start."""

    started: str | None = None
    loaded: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # table → why it was not loaded
    vector_refresh_failed: str | None = None  # when a schema refresh last failed on a vector
    last_error: str | None = None  # the newest ERROR with its root cause
    last_error_at: float | None = None


class ConnectorLog:
    """Follows the connector's log file (``capture.connector_log``): reads only what was
    appended since the last :meth:`update` (from the start again if the file shrank), so a
    long-lived caller (the supervisor, a Serve replica) pays for each line once."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._pos = 0
        self._ino: int | None = None
        self._lock = threading.Lock()
        self.state = ConnectorLogState()
        self._pending_table: str | None = None
        self._pending_error: list[str] | None = None
        self._pending_error_at: float | None = None

    def update(self) -> ConnectorLogState:
        with self._lock:
            try:
                st = os.stat(self.path)
            except OSError:
                return self.state
            if self._ino != st.st_ino or st.st_size < self._pos:  # rotated: read the new file from
                self._pos, self._ino = 0, st.st_ino               # its start (the state stays: a
                                                                  # start line resets it)
            if st.st_size == self._pos:
                return self.state
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                data = f.read(st.st_size - self._pos)
            end = data.rfind(b"\n") + 1
            self._pos += end
            for raw in data[:end].splitlines():
                self._line(raw[:2000].decode("utf-8", "replace"))
            self._flush_error(keep_open=True)  # its "Caused by:" lines may come with the next read
            return self.state

    def _line(self, line: str) -> None:
        s = self.state
        if self._pending_table is not None:
            if not _STAMP.match(line):
                s.failed[self._pending_table] = line.strip()[:300]
            self._pending_table = None
        m = _STAMP.match(line)
        if self._pending_error is not None:
            if m:
                self._flush_error()
            elif line.startswith("Caused by:"):
                self._pending_error.append(line[len("Caused by:"):].strip())
                return
            else:
                return
        if not m:
            return
        if _START in line:
            self.state = s = ConnectorLogState(started=m.group(2))
            return
        if (hit := _ADDED.search(line)) is not None:
            s.loaded.add(hit.group(1))
            s.failed.pop(hit.group(1), None)
        elif (hit := _ADD_FAILED.search(line)) is not None:
            s.loaded.discard(hit.group(1))
            s.failed[hit.group(1)] = "the connector could not load it"
            self._pending_table = hit.group(1)
        elif _VECTOR in line:
            s.vector_refresh_failed = m.group(2)
        elif m.group(1) == "ERROR":
            msg = line.split(" - ", 1)[-1].strip()
            self._pending_error = [msg]
            self._pending_error_at = _log_time(m.group(2))

    def _flush_error(self, keep_open: bool = False) -> None:
        if self._pending_error is None:
            return
        first, causes = self._pending_error[0], self._pending_error[1:]
        root = causes[-1] if causes else None
        self.state.last_error = first[:300] + (f"; cause: {root[:300]}" if root else "")
        self.state.last_error_at = self._pending_error_at
        if not keep_open:
            self._pending_error = None


def _log_time(text: str) -> float | None:
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S"))  # the connector logs local time
    except ValueError:
        return None


_LOGS: dict[str, ConnectorLog] = {}
_LOGS_LOCK = threading.Lock()


def connector_log(path: str) -> ConnectorLog:
    """The process-wide follower of ``path`` (one per file)."""
    with _LOGS_LOCK:
        if path not in _LOGS:
            _LOGS[path] = ConnectorLog(path)
        return _LOGS[path]


def connector_cause(capture_cfg, since_s: float | None = None, timeout_s: float = 2.0) -> str | None:
    """What the connector says about itself: the newest ERROR in its log (with its root
    cause; only one logged after ``since_s`` when given) and its ``/health`` answer, where
    configured. None when neither is configured or neither says anything."""
    from engine import health

    parts = []
    if capture_cfg.connector_log:
        try:
            st = connector_log(capture_cfg.connector_log).update()
        except Exception as exc:  # noqa: BLE001 - the stall must still be reported without its cause
            return f"cause unavailable: the connector log {capture_cfg.connector_log}: {type(exc).__name__}: {exc}"
        if st.last_error and (since_s is None or st.last_error_at is None or st.last_error_at >= since_s - 10):
            at = iso(st.last_error_at) if st.last_error_at else "?"
            parts.append(f"connector log ({at}): {st.last_error}")
    if capture_cfg.connector_health_url:
        try:
            parts.append("connector /health: " + health.check_debezium(url=capture_cfg.connector_health_url,
                                                                       timeout_s=timeout_s))
        except Exception as exc:  # noqa: BLE001 - its failure is the cause we are after
            parts.append(f"connector /health: {exc}")
    return "; ".join(parts) or None


# --- tables that will not be captured ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """A table whose changes will not (or may not) be captured. ``severity``: ``error`` — a
    configured table that will miss changes; ``warning`` — something that stops capture of
    tables created or changed later (or after a connector restart); ``info`` — kept by
    scheduled reconcile instead (``capture: reconcile``)."""

    table: str
    reason: str
    fix: str
    severity: str

    def line(self) -> str:
        return f"{self.severity}: {self.table}: {self.reason}. Fix: {self.fix}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


_SYSTEM = {"system", "system_schema", "system_auth", "system_distributed", "system_traces",
           "system_views", "system_virtual_schema"}


def find_uncapturable(session, cfg, log_state: ConnectorLogState | None = None) -> list[Finding]:
    """Every reason changes of ``cfg``'s tables (or of tables created later) will not be
    captured, from Cassandra's schema tables and, when given, the connector's log."""
    out: list[Finding] = []
    # Two reads of the schema tables whole, whatever the number of tables (they are small;
    # two queries per configured table were hundreds at once for a large pipeline).
    columns: dict[tuple[str, str], list] = {}
    for r in session.execute("SELECT keyspace_name, table_name, column_name, type FROM system_schema.columns"):
        columns.setdefault((r.keyspace_name, r.table_name), []).append(r)
    cdc = {(r.keyspace_name, r.table_name): r.cdc
           for r in session.execute("SELECT keyspace_name, table_name, cdc FROM system_schema.tables")}
    vector_cols = [(ks, tbl, c.column_name) for (ks, tbl), cols in columns.items() if ks not in _SYSTEM
                   for c in cols if "vector<" in c.type]
    configured = {(t.keyspace, t.table): t for t in cfg.tables}
    for ks, tbl, col in vector_cols:
        if (ks, tbl) in configured:
            continue
        out.append(Finding(
            f"{ks}.{tbl}", f"column {col} is a vector: the connector cannot parse the type, so every schema "
            "refresh fails while this table exists — tables created or changed later are not captured, "
            "and after a connector restart nothing is",
            "drop the table or its vector column, or keep vector tables in a cluster without CDC", "warning"))
    for (ks, tbl), t in configured.items():
        name = f"{ks}.{tbl}"
        if (ks, tbl) not in cdc:
            continue  # a missing table is reported by every command that uses it
        table_cdc = bool(cdc[(ks, tbl)])
        cols = columns.get((ks, tbl), [])
        reasons = []
        if any(c.type == "counter" for c in cols):
            reasons.append(("it is a counter table, which the connector skips", "capture: reconcile"))
        vec = [c.column_name for c in cols if "vector<" in c.type]
        if vec:
            reasons.append((f"column {', '.join(vec)} is a vector, which the connector cannot parse",
                            "capture: reconcile, or drop the column"))
        if not table_cdc and not reasons:  # cdc on would not help a counter or vector table
            reasons.append(("cdc is off, so the connector never sees its changes",
                            f'ALTER TABLE "{ks}"."{tbl}" WITH cdc = true (or capture: reconcile)'))
        if log_state is not None and log_state.started and table_cdc and not reasons and name not in log_state.loaded:
            why = log_state.failed.get(name) or "it is not among the tables the connector loaded"
            reasons.append((f"the connector running since {log_state.started} has not loaded it ({why}); a UDT "
                            "created while it ran, or a table created within a second of its keyspace",
                            "flush system_schema on every node and restart the connector "
                            "(docs/troubleshooting.md, \"A table is not captured\")"))
        for reason, fix in reasons:
            if t.capture == "reconcile":
                out.append(Finding(name, f"{reason}; kept equal by reconcile every "
                                         f"{_human(t.reconcile_every.total_seconds())} (capture: reconcile)",
                                   "none needed", "info"))
                break
            out.append(Finding(name, reason, fix, "error"))
    return out


# --- the check of c2pg health and /readyz -------------------------------------------------------


def describe(nodes: Sequence[NodeCapture], findings: Sequence[Finding], cause: str | None = None) -> str:
    """The detail of a working capture, with every finding named; raises ``RuntimeError``
    naming every stalled node (with the last heartbeat seen and the connector's cause).

    Findings do not fail it: a table configured but not captured may be there for snapshot
    and reconcile only, and a vector table elsewhere breaks nothing until the connector
    restarts; the heartbeat is what proves capture has stopped. ``c2pg config check`` is
    where an ``error`` finding fails (exit 1)."""
    problems = [n.reason or f"node {n.node} stalled" for n in nodes if n.stalled]
    if problems and cause:
        problems.append(cause)
    if problems:
        raise RuntimeError("capture: " + "; ".join(problems + [f.line() for f in findings if f.severity != "info"]))
    measured = [n for n in nodes if n.state in ("ok", "starting")]
    if measured:
        delays = [n.delay_s for n in measured if n.delay_s is not None]
        detail = (f"{len(measured)} node(s) delivering heartbeats" +
                  (f", newest {max(delays):.1f} s old at most" if delays else ""))
    elif nodes:
        detail = f"not measured: {nodes[0].reason}"
    else:
        detail = "not measured: no heartbeat yet (written while sync runs)"
    named = [f.line() for f in findings if f.severity != "info"]
    return detail + ("; " + "; ".join(named) if named else "")


def check_capture(cfg, *, timeout_s: float = 3.0, conn=None, session=None) -> str:
    """``c2pg health``'s and ``/readyz``'s ``capture`` check: the heartbeat verdict from
    ``_c2pg.capture`` and the tables that will not be captured. Opens its own PostgreSQL and
    Cassandra connections unless given them."""
    import psycopg2

    from engine import cql

    try:
        own_conn = conn is None
        if own_conn:
            conn = psycopg2.connect(**{**cfg.postgres.connect_kwargs(application_name="c2pg-health"),
                                       "connect_timeout": max(1, int(timeout_s))})
        try:
            rows = read_rows(conn, cfg.name)
        finally:
            if own_conn:
                conn.close()
    except psycopg2.Error as exc:  # reported as the postgres check; capture cannot be judged
        return f"not measured: postgres unavailable ({type(exc).__name__})"
    nodes = assess(rows, time.time(), cfg.capture.stall_after.total_seconds(),
                   cfg.capture.heartbeat_interval.total_seconds())
    note, findings = "", []
    cluster = None
    try:
        if session is None:
            cluster, session = cql.connect(cfg.cassandra, metadata=False)  # schema tables are queried
        log_state = connector_log(cfg.capture.connector_log).update() if cfg.capture.connector_log else None
        findings = find_uncapturable(session, cfg, log_state)
    except Exception as exc:  # noqa: BLE001 - Cassandra away (its own check says so), log unreadable
        note = f"; tables not checked ({type(exc).__name__})"
    finally:
        if cluster is not None:
            cluster.shutdown()
    return describe(nodes, findings, stall_cause(cfg, nodes)) + note


def stall_cause(cfg, nodes: Sequence[NodeCapture]) -> str | None:
    """:func:`connector_cause` for the stalled ``nodes`` (None when none is stalled): only a
    log error from around the last heartbeat seen or later counts."""
    stalled = [n for n in nodes if n.stalled]
    if not stalled:
        return None
    return connector_cause(cfg.capture, since_s=min(n.waiting_since or time.time() for n in stalled))


class HeartbeatApplier:
    """The sync worker's handler of heartbeat-topic batches: records the newest heartbeat per
    node and the topic's offsets in one transaction (so a restarted worker neither loses nor
    re-counts one). Failure raises like a table's batch: nothing committed, the worker retries."""

    def __init__(self, cfg, conn, session, registry=None):
        self.cfg = cfg
        self.conn = conn
        self._session = session
        self._registry = registry
        self._reader: HeartbeatReader | None = None

    def apply(self, records: Sequence, next_offsets: Mapping[tuple[str, int], int]) -> dict[str, int]:
        from psycopg2.extras import execute_values

        from engine import pg_dialect as d

        if self._reader is None:
            self._reader = HeartbeatReader(self.cfg, self._session, self._registry)
        newest = self._reader.newest(records)
        with self.conn, self.conn.cursor() as cur:
            record_seen(cur, self.cfg.name, newest, time.time())
            execute_values(cur, d.SAVE_OFFSETS.as_string(self.conn),
                           [(self.cfg.name, t, p, n) for (t, p), n in next_offsets.items()])
        return newest
