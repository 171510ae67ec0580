"""Dead letters: list and show them, replay them through sync's own path, copy them to Kafka.

Callers: the CLI (``c2pg dlq list|show|replay``), the Serve app's DLQ endpoints, and the
sync worker (:func:`publish_to_topic` when ``kafka.dlq_topic`` is set). A dead letter is a
row of ``_c2pg.dead_letters``: the raw record (key and value as text), where it came from
(``origin`` ``sync``: Kafka topic/partition/offset; ``snapshot``: a run), and why it failed.

**Replay** (:func:`replay`) re-applies dead letters of origin ``sync`` exactly the way sync
applies records: the table's :class:`~engine.sync.apply.TableApplier` decodes, reduces and
merges them with per-cell last-write-wins, so an old record cannot overwrite newer data.
Replay never moves Kafka offsets (``next_offsets={}``): the records were consumed long ago.
Per table and per chunk of dead letters, ONE transaction holds

1. a lock on the chunk's dead letters (``FOR UPDATE SKIP LOCKED``: two replays never
   apply the same dead letter twice at once; one locked elsewhere is skipped);
2. the applier's writes (tombstones, merge, empty-row removal);
3. ``replayed_at = now()`` on every dead letter that applied, and the new error on every
   one that failed again.

So a dead letter is marked replayed if and only if its data committed. To get the
writer's statements into this transaction, the replay applier hands its
:class:`~engine.pg_writer.SyncWriter` a connection whose context manager does not commit
(:class:`_InReplayTransaction`); a ``SyncWriter.apply(..., commit=False)`` hook would say it
more plainly. One exception: when a record names a column the table gained while the
replay runs, the applier reads the table again and :func:`~engine.target.ensure_target`
commits its DDL, which also ends the locks of step 1 early (the data and the marks still
commit together).

**Duplicates.** A record that fails again is not written as a new dead letter (the applier's
new dead letters are captured, not inserted): its existing row stays unreplayed, with
``error_class``/``error`` updated to the new failure (``created_at`` keeps the first).

**What replay refuses** (reported as ``skipped``, the dead letter left as it is):
dead letters of origin ``snapshot`` (re-run the run's split instead), of a table the pipeline
does not list, without Kafka coordinates, already replayed, stored from Avro (the table
keeps record bytes as text, which is lossy for Avro's binary: re-read the record from Kafka
at its topic/partition/offset), and upserts written before now minus
``sync.tombstone_retention``: a deletion that covers such a write may already be purged
(:mod:`engine.sweep`), and replaying it would resurrect deleted data — repair that key with
reconcile instead. Deletions of any age are safe to replay and are applied.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg2
from psycopg2.extras import execute_values

from engine import pg_dialect as d
from engine.config import PipelineConfig, TableConfig
from engine.errors import C2pgError
from engine.events import ChangeEvent, Op
from engine.pg_writer import DeadLetter
from engine.schema import TableNotFound
from engine.sweep import wall_clock_us
from engine.sync.apply import Record, TableApplier
from engine.target import TargetMismatch

log = logging.getLogger("c2pg.dlq")

__all__ = ["DeadLetterNotFound", "DlqPublishError", "ReplayResult", "list_dead_letters", "publish_to_topic",
           "replay", "show"]

# Header names of the records published to ``kafka.dlq_topic``.
H_ERROR_CLASS = "c2pg.error.class"
H_ERROR = "c2pg.error.message"
H_TOPIC = "c2pg.source.topic"
H_PARTITION = "c2pg.source.partition"
H_OFFSET = "c2pg.source.offset"
H_ROW_KEY = "c2pg.row_key"
H_PIPELINE = "c2pg.pipeline"


class DeadLetterNotFound(C2pgError):
    """No dead letter has this id (exit code 2: a usage error)."""

    exit_code = 2


class DlqPublishError(C2pgError):
    """Kafka did not acknowledge a dead letter written to ``kafka.dlq_topic``."""


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What :func:`replay` did, per dead-letter id."""

    replayed: tuple[int, ...] = ()                 # applied; replayed_at set
    failed: tuple[tuple[int, str], ...] = ()       # failed again: (id, the new error); left unreplayed
    skipped: tuple[tuple[int, str], ...] = ()      # not attempted: (id, why)


# --- reading ------------------------------------------------------------------------------


def list_dead_letters(conn, pipeline: str | PipelineConfig, *, origin: str | None = None,
                      table: str | None = None, since: datetime | timedelta | None = None, limit: int = 50,
                      include_replayed: bool = False) -> list[dict]:
    """The newest dead letters of ``pipeline`` (a name or its config), without raw records.

    ``table`` is ``keyspace.table`` or a bare table name; ``since`` a time or an age
    (``timedelta(hours=1)``: the last hour). Replayed ones are left out unless asked for.
    """
    name = pipeline.name if isinstance(pipeline, PipelineConfig) else pipeline
    keyspace, source_table = (table.split(".", 1) if table and "." in table else (None, table))
    query, params = d.select_dead_letters(name, origin=origin, keyspace=keyspace, table=source_table,
                                          since=since, include_replayed=include_replayed, limit=limit)
    with conn, conn.cursor() as cur:
        cur.execute(query, params)
        return [dict(zip(d.DEAD_LETTER_FIELDS, row)) for row in cur.fetchall()]


def show(conn, id: int) -> dict:  # noqa: A002 - the CLI's and API's name for it
    """One dead letter with its raw key and value; :class:`DeadLetterNotFound` if none."""
    with conn, conn.cursor() as cur:
        cur.execute(d.show_dead_letter(), (id,))
        row = cur.fetchone()
    if row is None:
        raise DeadLetterNotFound(f"no dead letter with id {id}")
    return dict(zip(d.DEAD_LETTER_FIELDS + d.DEAD_LETTER_RAW, row))


# --- replay -------------------------------------------------------------------------------


def replay(conn, cfg: PipelineConfig, ids: list[int] | None, *, cql_session, registry=None,
           now_us: int | None = None, chunk_size: int | None = None) -> ReplayResult:
    """Re-apply dead letters of origin ``sync`` through sync's path; offsets never move.

    ``ids=None`` replays every unreplayed sync dead letter of the pipeline. ``cql_session``
    reads the tables' definitions (a column added since the failure is picked up);
    ``registry`` is the schema-registry client for Avro pipelines. Dead letters are applied
    per table in chunks of ``chunk_size`` (default ``sync.batch_max_events``), one
    transaction each (see the module docstring). Raises only when PostgreSQL itself fails
    (connection lost): what committed before stays committed and marked.
    """
    now_us = wall_clock_us() if now_us is None else now_us
    oldest_upsert_us = now_us - cfg.sync.tombstone_retention // timedelta(microseconds=1)
    chunk_size = chunk_size or cfg.sync.batch_max_events
    tables = {(t.keyspace, t.table): t for t in cfg.tables}
    appliers: dict[tuple[str, str], _ReplayApplier | str] = {}
    out = _Outcome()
    autocommit = conn.autocommit
    conn.autocommit = False  # the writer's temporary tables live for one transaction
    try:
        for page in _pages(conn, cfg.name, ids, chunk_size, out):
            by_table: dict[tuple[str, str], list[dict]] = defaultdict(list)
            for letter in page:
                reason = _not_replayable(letter, cfg.name, tables)
                if reason:
                    out.skip(letter["id"], reason)
                else:
                    by_table[(letter["keyspace"], letter["source_table"])].append(letter)
            for key, letters in by_table.items():
                applier = appliers.get(key)
                if applier is None:
                    applier = appliers[key] = _applier(cfg, tables[key], conn, cql_session, registry,
                                                       oldest_upsert_us)
                if isinstance(applier, str):
                    for letter in letters:
                        out.skip(letter["id"], applier)
                    continue
                for start in range(0, len(letters), chunk_size):
                    _replay_chunk(conn, applier, letters[start:start + chunk_size], out)
    finally:
        if not conn.closed:
            conn.autocommit = autocommit
    result = out.result()
    log.info("dead-letter replay of %s: %d replayed, %d failed again, %d skipped", cfg.name,
             len(result.replayed), len(result.failed), len(result.skipped))
    return result


@dataclass
class _Outcome:
    replayed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)

    def skip(self, id_: int, reason: str) -> None:
        self.skipped[id_] = reason

    def result(self) -> ReplayResult:
        return ReplayResult(tuple(sorted(self.replayed)), tuple(sorted(self.failed.items())),
                            tuple(sorted(self.skipped.items())))


def _pages(conn, pipeline: str, ids: list[int] | None, size: int, out: _Outcome) -> Iterable[list[dict]]:
    """The dead letters to consider, a page at a time (every given id is accounted for)."""
    columns = d.DEAD_LETTER_FIELDS + d.DEAD_LETTER_RAW
    if ids is not None:
        wanted = sorted(set(ids))
        for start in range(0, len(wanted), size):
            chunk = wanted[start:start + size]
            with conn, conn.cursor() as cur:
                cur.execute(d.select_replay_by_ids(), (chunk,))
                page = [dict(zip(columns, row)) for row in cur.fetchall()]
            for missing in set(chunk) - {x["id"] for x in page}:
                out.skip(missing, "no dead letter with this id")
            yield page
        return
    last = 0
    while True:
        with conn, conn.cursor() as cur:
            cur.execute(d.select_replay_pending(), (pipeline, last, size))
            page = [dict(zip(columns, row)) for row in cur.fetchall()]
        if not page:
            return
        last = page[-1]["id"]
        yield page


def _not_replayable(letter: dict, pipeline: str, tables: Mapping[tuple[str, str], TableConfig]) -> str | None:
    if letter["pipeline"] != pipeline:
        return f"belongs to pipeline {letter['pipeline']!r}"
    if letter["origin"] != "sync":
        return f"origin {letter['origin']!r}: only sync dead letters are replayed (re-run the snapshot split)"
    if letter["replayed_at"] is not None:
        return f"already replayed at {letter['replayed_at'].isoformat()}"
    if letter["topic"] is None or letter["kafka_partition"] is None or letter["kafka_offset"] is None:
        return "no Kafka topic/partition/offset recorded"
    if (letter["keyspace"], letter["source_table"]) not in tables:
        return f"table {letter['keyspace']}.{letter['source_table']} is not in the pipeline's tables"
    if (letter["raw_value"] or "").startswith("\\u0000"):
        # engine.sync.apply._dead stores bytes as text with NUL escaped: an Avro record (magic
        # byte 0) cannot be rebuilt from it.
        return ("an Avro record, stored as lossy text: re-read it from Kafka at "
                f"{letter['topic']}/{letter['kafka_partition']}/{letter['kafka_offset']}")
    return None


def _applier(cfg, table: TableConfig, conn, cql_session, registry,
             oldest_upsert_us: int) -> _ReplayApplier | str:
    """The table's replay applier, or why there is none (the table is gone from Cassandra,
    or its target differs in a way sync cannot evolve either)."""
    try:
        return _ReplayApplier(cfg, table, conn, cql_session, registry, oldest_upsert_us)
    except (TableNotFound, TargetMismatch) as exc:
        return f"cannot attach to the table: {exc}"


def _replay_chunk(conn, applier: _ReplayApplier, letters: Sequence[dict], out: _Outcome) -> None:
    """Apply ``letters`` (one table) and mark them, in one transaction (module docstring).

    When PostgreSQL rejects the chunk's data (a value the mapping lets through but the
    column refuses), the chunk is rolled back and replayed one dead letter at a time, so
    one bad record cannot hold back the others; a single one that PostgreSQL rejects
    counts as failed again. Connection failures raise.
    """
    try:
        with _transaction(conn):
            with conn.cursor() as cur:
                cur.execute(d.LOCK_DEAD_LETTERS, ([x["id"] for x in letters],))
                locked = {row[0] for row in cur.fetchall()}
            for letter in letters:
                if letter["id"] not in locked:
                    out.skip(letter["id"], "replayed or being replayed by another session")
            letters = [x for x in letters if x["id"] in locked]
            if not letters:
                return
            replayed, failed, skipped = applier.replay(letters)
            with conn.cursor() as cur:
                if replayed:
                    cur.execute(d.MARK_REPLAYED, (replayed,))
                if failed:
                    execute_values(cur, d.RECORD_REPLAY_FAILURES.as_string(conn),
                                   [(i, cls, err) for i, (cls, err) in failed.items()])
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        raise
    except psycopg2.DatabaseError as exc:
        if len(letters) > 1:
            log.warning("a chunk of %d dead letters failed (%s); replaying them one by one",
                        len(letters), exc)
            for letter in letters:
                _replay_chunk(conn, applier, [letter], out)
            return
        cls, err = type(exc).__name__, str(exc).strip()
        with conn, conn.cursor() as cur:
            execute_values(cur, d.RECORD_REPLAY_FAILURES.as_string(conn), [(letters[0]["id"], cls, err)])
        out.failed[letters[0]["id"]] = f"{cls}: {err}"
        return
    out.replayed.extend(replayed)
    out.failed.update({i: f"{cls}: {err}" for i, (cls, err) in failed.items()})
    out.skipped.update(skipped)


class _transaction:
    """Commit on success, roll back on error (psycopg2's ``with conn`` cannot nest, and the
    applier may use it inside; this does not)."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.conn.commit()
        elif not self.conn.closed:
            self.conn.rollback()
        return False


class _ReplayApplier(TableApplier):
    """The sync applier of one table, run inside replay's transaction.

    Differences from sync: the table's new columns are always added (``evolve``), as sync
    does on :class:`~engine.sync.decode.SchemaChanged`; the writer runs in the caller's
    transaction and its dead letters are captured instead of inserted; upserts older than
    ``oldest_upsert_us`` are held back (module docstring).
    """

    def __init__(self, cfg, table, conn, cql_session, registry, oldest_upsert_us: int):
        self.oldest_upsert_us = oldest_upsert_us
        self._failures: list[DeadLetter] = []
        self._too_old: list[Record] = []
        super().__init__(cfg, table, conn, cql_session, registry)

    def _load(self) -> None:
        super()._load()
        # The per-event path: the hold-back below judges each decoded event (replay is small).
        self.columnar = None
        # A SyncWriter by duck typing (it wraps one), which the annotation cannot say.
        self.writer = _CapturingWriter(self.writer, self._failures)  # type: ignore[assignment]

    def _decode_all(self, records):
        events, dead = super()._decode_all(records)
        keep: list[tuple[ChangeEvent, Record]] = []
        for ev, rec in events:
            if ev.op is Op.UPSERT and ev.ts < self.oldest_upsert_us:
                self._too_old.append(rec)
            else:
                keep.append((ev, rec))
        return keep, dead

    def replay(self, letters: Sequence[dict]) -> tuple[list[int], dict[int, tuple[str, str]], dict[int, str]]:
        """Apply ``letters``; return the ids applied, failed again (id → (class, error))
        and held back (id → why). Runs in the caller's transaction."""
        self._failures.clear()
        self._too_old.clear()
        records = [Record(x["topic"], x["kafka_partition"], x["kafka_offset"], _bytes(x["raw_key"]),
                          _bytes(x["raw_value"])) for x in letters]
        self.apply(records, {})  # no offsets: replay never moves them
        failures = {(f.topic, f.partition, f.offset): (f.error_class, f.error) for f in self._failures}
        too_old = {(r.topic, r.partition, r.offset) for r in self._too_old}
        replayed, failed, skipped = [], {}, {}
        for x in letters:
            where = (x["topic"], x["kafka_partition"], x["kafka_offset"])
            if where in failures:
                failed[x["id"]] = failures[where]
            elif where in too_old:
                skipped[x["id"]] = _TOO_OLD
            else:
                replayed.append(x["id"])
        return replayed, failed, skipped


_TOO_OLD = ("an upsert older than sync.tombstone_retention: a deletion covering it may be purged "
            "already, so replaying could resurrect data; run reconcile instead")


class _CapturingWriter:
    """A :class:`~engine.pg_writer.SyncWriter` that writes in replay's transaction and hands
    its dead letters back instead of inserting them (no duplicate rows)."""

    def __init__(self, writer, failures: list[DeadLetter]):
        writer.conn = _InReplayTransaction(writer.conn)
        self._writer = writer
        self._failures = failures

    def apply(self, batch, offsets, dead=(), **clock):
        self._failures.extend(dead)
        return self._writer.apply(batch, offsets, (), **clock)  # clock: the batch's now_us

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


class _InReplayTransaction:
    """The connection as the writer sees it during replay: ``with conn`` neither commits nor
    rolls back (replay's own transaction does), everything else is the real connection."""

    def __init__(self, conn):
        self._conn = conn

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> Literal[False]:
        return False

    def commit(self) -> None:
        raise RuntimeError("the dead-letter replay owns this transaction; the writer must not commit it")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8")


# --- the Kafka DLQ topic ------------------------------------------------------------------

_PRODUCERS: dict[tuple, Any] = {}


def publish_to_topic(producer_conf: Mapping[str, Any], topic: str,
                     dead_letter: DeadLetter | Mapping[str, Any], *, pipeline: str | None = None,
                     timeout_s: float = 10.0) -> None:
    """Write one dead letter to ``topic``: its raw key and value, and headers naming the
    error (``c2pg.error.class``, ``c2pg.error.message``) and the source record
    (``c2pg.source.topic``, ``c2pg.source.partition``, ``c2pg.source.offset``; plus
    ``c2pg.row_key`` and ``c2pg.pipeline`` when known).

    ``dead_letter`` is a :class:`~engine.pg_writer.DeadLetter` or a row from :func:`show`.
    Waits for Kafka's acknowledgement; :class:`DlqPublishError` if it does not come. The
    sync worker calls it after the batch holding the dead letter committed: the table is
    the record of truth, the topic a copy delivered at least once (a crash between the two
    loses the copy, never the row). One producer per configuration is kept per process.
    """
    f = _fields(dead_letter)
    headers = [(H_ERROR_CLASS, f["error_class"]), (H_ERROR, f["error"]), (H_TOPIC, f["topic"]),
               (H_PARTITION, f["partition"]), (H_OFFSET, f["offset"]), (H_ROW_KEY, f["row_key"]),
               (H_PIPELINE, pipeline or f.get("pipeline"))]
    producer = _producer(producer_conf)
    errors: list[Any] = []
    producer.produce(topic, key=_bytes(f["raw_key"]), value=_bytes(f["raw_value"]),
                     headers=[(k, str(v).encode("utf-8")) for k, v in headers if v is not None],
                     on_delivery=lambda err, _msg: errors.append(err))
    remaining = producer.flush(timeout_s)
    if remaining or not errors or errors[0] is not None:
        cause = errors[0] if errors and errors[0] else "timed out"
        raise DlqPublishError(f"dead letter of {f['topic']}/{f['partition']}/{f['offset']} not acknowledged "
                              f"by topic {topic}: {cause}")


def _fields(dl: DeadLetter | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(dl, DeadLetter):
        return {"topic": dl.topic, "partition": dl.partition, "offset": dl.offset, "raw_key": dl.raw_key,
                "raw_value": dl.raw_value, "error_class": dl.error_class, "error": dl.error,
                "row_key": dl.row_key}
    return {"topic": dl["topic"], "partition": dl["kafka_partition"], "offset": dl["kafka_offset"],
            "raw_key": dl["raw_key"], "raw_value": dl["raw_value"], "error_class": dl["error_class"],
            "error": dl["error"], "row_key": dl.get("row_key"), "pipeline": dl.get("pipeline")}


def _producer(conf: Mapping[str, Any]):
    from confluent_kafka import Producer

    key = tuple(sorted((k, str(v)) for k, v in conf.items()))
    producer = _PRODUCERS.get(key)
    if producer is None:
        producer = _PRODUCERS[key] = Producer({"enable.idempotence": True, **conf})
    return producer
