"""Reconcile: prove a PostgreSQL target equal to its Cassandra table by token range, report
the drift, and repair it through the LWW merge.

Callers: ``python -m jobs.reconcile`` (locally or under ``ray job submit``), ``c2pg
reconcile`` and the Serve app (through the job). :func:`run_reconcile` on the driver plans
the snapshot's token-range splits, records the run (``_c2pg.runs``, one ``_c2pg.run_splits``
row per split), and runs one Ray task per split (:func:`compare_split`):

1. PostgreSQL digests the split where the rows are: one aggregate query returns, per
   sub-range of about ``reconcile.digest_rows`` rows, a count and a sum of row digests
   (:mod:`engine.digest`);
2. the task streams the split from Cassandra in token order (the snapshot's reader, with
   its retries), digests each sub-range as it closes and keeps the rows only of sub-ranges
   whose digests differ;
3. those sub-ranges alone are read from PostgreSQL (an index range scan on
   ``_c2pg_token``) and merge-joined by primary key with the exact comparison rules of
   snapshot (``Codec.same``): ``missing`` (only in Cassandra), ``extra`` (only in
   PostgreSQL), ``mismatch`` (with the differing columns).

Live traffic: every difference is read again on both sides (by partition token) after
``reconcile.recheck_delay``, up to ``reconcile.recheck_rounds`` times (:func:`recheck`). One
that is still there is drift when no write time on either side is at or after the run's
start, or, at the last round, when nothing about it changed since the read before — so a
write time in the future delays the verdict but never hides drift (it is flagged "future
write time"). One still changing at the last round is ``unsettled`` (in flight), not drift.
So a reconcile under continuous sync reports no false drift.

Repair (``repair=True``): the drifted keys are read again on both sides, with write times, at
the configured consistency (:func:`plan_repair`), applied through
:class:`~engine.pg_writer.SyncWriter` (the sync merge, the source winning ties), and read
again (:func:`verify_repair`): a key counts as repaired only when that re-read finds no
difference, else it is "not repaired", with the reason. A cell the merge cannot win
(PostgreSQL holds it at a newer write time than Cassandra's) falls under the authoritative
rule: replaced by Cassandra's value at Cassandra's time only when the reads are at a quorum
or stronger, both sides still hold what the re-check saw, and PostgreSQL still holds that
write time when the overwrite runs (:func:`_row_repair`, :func:`apply_repair`). An ``extra``
row is deleted (a row tombstone at its own newest write time) when Cassandra confirms it
absent and the row was neither written in the future nor changed since the re-check.

Failure: a task that fails is retried by Ray; a run that cannot finish is recorded as
``failed`` with the error, and :class:`ReconcileFailed` names it. Differences are values,
never exceptions.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, cast

import numpy as np
import psycopg2
from cassandra import ConsistencyLevel
from psycopg2 import sql
from psycopg2.extras import execute_values

from engine import cql, digest, log, reconcile_report
from engine import pg_dialect as d
from engine.cassandra_source import ReadSettings, RowLayout, SplitReader, _column_converter, select_statement
from engine.config import CassandraConfig, PipelineConfig, PostgresConfig, TableConfig
from engine.errors import C2pgError
from engine.events import Cell
from engine.pg_writer import SyncWriter
from engine.ray_connect import ensure_ray
from engine.sync.reduce import Reduced, RowWrite, Tombstone
from engine.schema import TableSchema, read_table
from engine.target import Target, ensure_state, ensure_target
from engine.token_ranges import TokenSplit, plan_splits
from engine.types import ValueConversionError, register_pg_text_casts

logger = log.get("c2pg.reconcile")

KINDS = ("missing", "extra", "mismatch")
CHUNK_ROWS = 4096  # Cassandra rows digested per vectorized step
DETAIL_CHARS = 200  # values in a diff's detail are cut to this length


class ReconcileUsageError(C2pgError):
    """A bad ``--table``/``--run-id``/``--consistency``, or a target that does not exist (exit 2)."""

    exit_code = 2


class ReconcileFailed(C2pgError):
    """The run stopped before every range was compared; it is recorded as failed."""

    def __init__(self, run_id: str, cause: BaseException):
        self.run_id = run_id
        super().__init__(f"reconcile run {run_id} failed ({type(cause).__name__}: {cause})")


# --- values crossing task boundaries ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CompareSettings:
    """Everything a compare task needs (pickled to it; connections are opened there)."""

    cassandra: CassandraConfig
    postgres: PostgresConfig
    schema: TableSchema  # in the target's catalog order
    target_schema: str
    target_table: str
    consistency: str
    page_size: int
    max_retries: int
    run_started_us: int
    rows_per_token: float  # expected density, to size sub-ranges
    digest_rows: int
    max_diffs: int  # per split: differences kept in detail (all are counted)


@dataclass(frozen=True, slots=True)
class Diff:
    """One differing primary key. ``key`` is the key's canonical text per key column;
    write times are the newest cell (or row marker) time on each side, µs."""

    split_index: int
    token: int
    key: tuple[str | None, ...]  # a static row's clustering values are None (ADR 0007)
    kind: str
    columns: tuple[str, ...] = ()
    detail: dict = field(default_factory=dict, compare=False, hash=False)
    cassandra_wt: int | None = None
    postgres_wt: int | None = None
    future: bool = False  # drift whose write time was ahead of the clock when it was judged

    def live(self, run_started_us: int) -> bool:
        """Written at or after the run's start on either side: maybe in flight, read again."""
        return any(w is not None and w >= run_started_us for w in (self.cassandra_wt, self.postgres_wt))

    def written_after(self, now_us: int) -> bool:
        """A write time later than ``now_us`` on either side (``USING TIMESTAMP`` ahead)."""
        return any(w is not None and w > now_us for w in (self.cassandra_wt, self.postgres_wt))

    def same_as(self, other: Diff) -> bool:
        """The same difference as ``other`` read earlier: same kind, columns, values and write
        times on both sides, so nothing was written to the key between the two reads."""
        return (self.kind, self.columns, self.cassandra_wt, self.postgres_wt, self.detail) == \
            (other.kind, other.columns, other.cassandra_wt, other.postgres_wt, other.detail)


@dataclass(frozen=True, slots=True)
class SplitOutcome:
    split: TokenSplit
    cassandra_rows: int
    postgres_rows: int
    sub_ranges: int
    sub_ranges_differing: int
    rows_compared_exactly: int
    diffs: tuple[Diff, ...]
    diffs_total: int  # more than len(diffs) when capped by max_diffs
    retries: int
    seconds: float


# --- one side's rows in comparable form ---------------------------------------------------------

@dataclass(slots=True)
class _Row:
    token: int
    key: tuple[str | None, ...]  # canonical text; a static row's clustering values are None (ADR 0007)
    texts: list[str | None]  # Cassandra: canonical text per column; PostgreSQL: raw values
    wts: list[int | None]  # per regular column
    ttls_or_exps: list[int | None]
    row_ts: int | None = None
    error: str | None = None  # Cassandra: a value PostgreSQL cannot hold
    soonest: list[int | None] | None = None  # Cassandra: a collection's first element TTL (s), per column

    def newest(self) -> int | None:
        times = [w for w in self.wts if w is not None]
        if self.row_ts is not None:
            times.append(self.row_ts)
        return max(times, default=None)


class _Rows:
    """Turns raw rows of either side into :class:`_Row` values for one table."""

    def __init__(self, schema: TableSchema):
        self.schema = schema
        self.codecs = schema.codecs()
        self.layout = RowLayout.of(schema)
        self.n_key = len(schema.primary_key)
        self.n_pk = len(schema.partition_key)
        self.regular = list(schema.regular)

    def cassandra(self, raw: tuple) -> _Row:
        texts: list[str | None] = []
        error = None
        for column, codec, at in zip(self.schema.columns, self.codecs, self.layout.value_at, strict=True):
            if at is None:
                texts.append(None)
                continue
            try:
                texts.append(codec.from_driver(raw[at]))
            except ValueConversionError as exc:
                texts.append(None)
                error = error or f"column {column.name}: {exc}"
        wts = [None if at is None else raw[at] for at in self.layout.wt_at]
        ttls = [None if at is None else raw[at] for at in self.layout.ttl_at]
        soonest = [None if at is None else raw[at] for at in self.layout.soonest_at]
        return _Row(raw[0], cast(tuple[str, ...], tuple(texts[: self.n_key])), texts, wts, ttls, None, error,
                    soonest)

    def postgres(self, raw: tuple, now_us: int) -> _Row:
        n = len(self.schema.columns)
        values = list(raw[:n])
        token, wts, exps, row_ts, row_exp = raw[n], raw[n + 1] or [], raw[n + 2] or [], raw[n + 3], raw[n + 4]
        if row_exp is not None and row_exp <= now_us:  # an expired row marker keeps no row
            row_ts = None
        wts = list(wts) + [None] * (len(self.regular) - len(wts))
        exps = list(exps) + [None] * (len(self.regular) - len(exps))
        for j, exp in enumerate(exps):
            if exp is not None and exp <= now_us:  # expired: Cassandra no longer returns it
                values[self.n_key + j] = None
        key = tuple(c.from_pg(v) for c, v in zip(self.codecs[: self.n_key], values[: self.n_key], strict=True))
        return _Row(token, key, values, wts, exps, row_ts)



def diff_rows(rows: _Rows, split_index: int, cassandra: Iterable[_Row], postgres: Iterable[_Row]) -> list[Diff]:
    """Merge-join two sides' rows by primary key; the differences, in key order."""
    by_key_c = {r.key: r for r in cassandra}
    by_key_p = {r.key: r for r in postgres}
    out = []
    names = [c.name for c in rows.schema.columns]
    for key in by_key_c.keys() | by_key_p.keys():
        c, p = by_key_c.get(key), by_key_p.get(key)
        detail: dict[str, Any]
        if p is None:
            assert c is not None
            detail = {"cassandra": _cut_row(names, c.texts)}
            if c.error:
                detail["error"] = f"cannot be stored in PostgreSQL: {c.error}"
            out.append(Diff(split_index, c.token, key, "missing", (), detail, c.newest(), None))
            continue
        if c is None:
            out.append(Diff(split_index, p.token, key, "extra", (),
                            {"postgres": _cut_row(names, [_pg_text(x, v) for x, v in zip(rows.codecs, p.texts)])},
                            None, p.newest()))
            continue
        differing: list[str] = []
        detail = {}
        for j, (column, codec) in enumerate(zip(rows.regular, rows.codecs[rows.n_key:], strict=True)):
            at = rows.n_key + j
            if codec.same(c.texts[at], p.texts[at]):
                continue
            differing.append(column.name)
            detail[column.name] = {"cassandra": _cut(c.texts[at]), "postgres": _cut(_pg_text(codec, p.texts[at])),
                                   "cassandra_wt": c.wts[j], "postgres_wt": p.wts[j]}
        if differing:
            out.append(Diff(split_index, c.token, key, "mismatch", tuple(differing), detail, c.newest(), p.newest()))
    out.sort(key=lambda x: (x.token, key_order(x.key)))
    return out


def key_order(key: Sequence[str | None]) -> tuple:
    """A sort key for primary keys that may hold None (a static row's clustering values)."""
    return tuple((v is not None, v or "") for v in key)


def _pg_text(codec, value) -> str | None:
    try:
        return codec.from_pg(value)
    except ValueConversionError:
        return repr(value)


def _cut(text: str | None) -> str | None:
    return text if text is None or len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS] + "…"


def _cut_row(names: list[str], texts: Sequence[str | None]) -> dict[str, str | None]:
    return {n: _cut(t) for n, t in zip(names, texts, strict=True)}


# --- the compare task ----------------------------------------------------------------------------

@contextlib.contextmanager
def pg_session(cfg: PostgresConfig, role: str) -> Iterator[Any]:
    """A PostgreSQL connection set up for comparison: text output pinned (the digest
    compares it). Cursors that read rows to compare call ``register_pg_text_casts``."""
    conn = psycopg2.connect(**cfg.connect_kwargs(application_name=role))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(d.RECONCILE_SESSION)
        conn.autocommit = False
        yield conn
    finally:
        conn.close()


def compare_split(settings: CompareSettings, split: TokenSplit) -> SplitOutcome:
    """Compare one token range; runs as a Ray task (one per split). See the module docstring.

    Cassandra rows arrive in token order, so a sub-range is complete once a row of a later
    one arrives: its digest is compared right then and its rows dropped when equal, which
    bounds memory by the differing sub-ranges.
    """
    started = time.monotonic()
    schema = settings.schema
    rows = _Rows(schema)
    n_sub = max(1, min(1_000_000, math.ceil(settings.rows_per_token * split.width / settings.digest_rows)))
    width = max(1, -(-split.width // n_sub))
    n_sub = -(-split.width // width)
    first = split.start + 1
    with pg_session(settings.postgres, f"c2pg-reconcile-{split.index}") as conn:
        now_us = int(time.time() * 1_000_000)
        with conn, conn.cursor() as cur:
            cur.execute(d.digest_by_bucket(schema, settings.target_schema, settings.target_table),
                        {"first": first, "width": width, "start": split.start, "end": split.end, "now": now_us})
            pg_digests = {int(b): (int(n), int(s) % digest.MOD) for b, n, s in cur.fetchall()}
        stream = _CassandraDigests(settings, split, rows, first, width, pg_digests)
        stream.run()
        differing = sorted(stream.differing.keys() | (pg_digests.keys() - stream.seen))
        diffs: list[Diff] = []
        exact = 0
        if differing:
            ranges = [(split.start + b * width, min(split.end, split.start + (b + 1) * width)) for b in differing]
            with conn, conn.cursor() as cur:
                register_pg_text_casts(cur)
                cur.execute(d.select_rows_in_ranges(schema, settings.target_schema, settings.target_table),
                            {"los": [lo for lo, _ in ranges], "his": [hi for _, hi in ranges]})
                pg_rows = [rows.postgres(r, now_us) for r in cur.fetchall()]
            c_rows = [rows.cassandra(r) for b in differing for r in stream.differing.get(b, ())]
            exact = len(c_rows) + len(pg_rows)
            diffs = diff_rows(rows, split.index, c_rows, pg_rows)
    return SplitOutcome(split, stream.count, sum(n for n, _ in pg_digests.values()), n_sub, len(differing),
                        exact, tuple(diffs[: settings.max_diffs]), len(diffs),
                        stream.retries, time.monotonic() - started)


class _CassandraDigests:
    """Streams one split from Cassandra, digesting sub-ranges as they close."""

    def __init__(self, settings: CompareSettings, split: TokenSplit, rows: _Rows, first: int, width: int,
                 pg_digests: dict[int, tuple[int, int]]):
        self.settings, self.split, self.rows = settings, split, rows
        self.first = np.uint64(first % digest.MOD)
        self.width = np.uint64(width)
        self.pg = pg_digests
        self.codecs = rows.codecs
        self.forms = [digest.form_of(c) for c in self.codecs]
        self.converters = [_column_converter(c) for c in self.codecs]
        self.count = 0
        self.retries = 0
        self.seen: set[int] = set()
        self.differing: dict[int, list[tuple]] = {}
        self.open_bucket: int | None = None  # the sub-range still receiving rows
        self.open_sum = 0
        self.open_count = 0
        self.open_rows: list[tuple] = []

    def run(self) -> None:
        s = self.settings
        read = ReadSettings(s.cassandra, s.schema, s.consistency, s.page_size, s.max_retries, s.run_started_us)
        reader = SplitReader(read, self.split)
        chunk: list[tuple] = []
        for raw in reader.iter_rows():
            chunk.append(raw)
            if len(chunk) >= CHUNK_ROWS:
                self._digest(chunk)
                chunk = []
        if chunk:
            self._digest(chunk)
        self._close_open()
        self.retries = reader.retries

    def _digest(self, chunk: list[tuple]) -> None:
        layout = self.rows.layout
        columns = list(zip(*chunk))
        n = len(chunk)
        texts = []
        for form, codec, conv, at in zip(self.forms, self.codecs, self.converters, layout.value_at, strict=True):
            values = columns[at] if at is not None else (None,) * n
            texts.append(digest.column_texts(form, codec, values, conv))
        hashes = digest.row_digests(digest.row_text_array(texts)).view(np.uint64)
        tokens = np.asarray(columns[0], dtype=np.int64).view(np.uint64)
        buckets = (tokens - self.first) // self.width  # wraps mod 2**64 like the token ring
        if n > 1 and np.any(np.diff(tokens.view(np.int64)) < 0):
            raise AssertionError(f"split {self.split.index}: Cassandra rows out of token order")
        starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
        sums = np.add.reduceat(hashes, starts)
        ends = list(starts[1:]) + [n]
        self.count += n
        for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
            bucket = int(buckets[a])
            if bucket != self.open_bucket:
                self._close_open()
                self.open_bucket = bucket
            self.open_sum = (self.open_sum + int(sums[i])) % digest.MOD
            self.open_count += int(b - a)
            self.open_rows.extend(chunk[a:b])

    def _close_open(self) -> None:
        if self.open_bucket is None:
            return
        b = self.open_bucket
        self.seen.add(b)
        if self.pg.get(b) != (self.open_count, self.open_sum):
            self.differing[b] = self.open_rows
        self.open_bucket, self.open_sum, self.open_count, self.open_rows = None, 0, 0, []


# --- reading keys again: recheck and repair ----------------------------------------------------

class _KeyReader:
    """Reads whole partitions by token from both sides (driver side, small sets)."""

    BATCH = 1000  # partitions per round trip

    def __init__(self, target: Target, consistency: str, session, conn):
        self.target, self.session, self.conn = target, session, conn
        self.consistency = consistency
        self.rows = _Rows(target.schema)
        self.stmt = session.prepare(select_statement(target.schema))
        self.stmt.consistency_level = cql.consistency_level(consistency)
        self.sql = d.select_rows_by_tokens(target.schema, target.target_schema, target.target_table)

    def cassandra(self, tokens: Sequence[int]) -> dict[int, list[_Row]]:
        from cassandra.concurrent import execute_concurrent_with_args

        out: dict[int, list[_Row]] = defaultdict(list)
        results = execute_concurrent_with_args(self.session, self.stmt, [(t - 1, t) for t in tokens],
                                               concurrency=32, raise_on_first_error=True)
        for _ok, result in results:  # raise_on_first_error: every result here succeeded
            for raw in result:
                row = self.rows.cassandra(raw)
                out[row.token].append(row)
        return out

    def postgres(self, tokens: Sequence[int]) -> dict[int, list[_Row]]:
        now_us = int(time.time() * 1_000_000)
        out: dict[int, list[_Row]] = defaultdict(list)
        with self.conn, self.conn.cursor() as cur:
            register_pg_text_casts(cur)
            cur.execute(self.sql, {"tokens": list(tokens)})
            for raw in cur.fetchall():
                row = self.rows.postgres(raw, now_us)
                out[row.token].append(row)
        return out

    def read(self, tokens: Iterable[int]) -> Iterator[tuple[int, list[_Row], list[_Row]]]:
        """Per token (ascending): its rows in Cassandra and in PostgreSQL, read in batches."""
        ordered = sorted(set(tokens))
        for i in range(0, len(ordered), self.BATCH):
            batch = ordered[i:i + self.BATCH]
            c, p = self.cassandra(batch), self.postgres(batch)
            for t in batch:
                yield t, c.get(t, []), p.get(t, [])

    def diff(self, candidates: Sequence[Diff]) -> list[Diff]:
        """The differences now, in the partitions of ``candidates`` (all their rows)."""
        split_of = {c.token: c.split_index for c in candidates}
        return [x for t, c, p in self.read(split_of) for x in diff_rows(self.rows, split_of[t], c, p)]


def recheck(reader: _KeyReader, candidates: list[Diff], run_started_us: int, delay_s: float,
            rounds: int) -> tuple[list[Diff], list[Diff]]:
    """``(drift, unsettled)``: the candidates' partitions read again, up to ``rounds`` times,
    ``delay_s`` apart.

    A difference is drift when a re-read finds it again one delay later and either no write
    time on either side is at or after the run start, or — at the last round — nothing about
    it changed since the read before (values and write times on both sides): whatever its
    write times say, nothing was in flight for that key. So a write time in the future
    (``USING TIMESTAMP`` ahead of the clock), which is always "after the run start", costs
    the re-check rounds but never hides drift; such drift is flagged ``future``. What is
    left after the last round — a difference that changed between the last two reads, or
    was seen there for the first time (a deletion leaves no write time to look at) — is
    unsettled: in flight, not drift.
    """
    drift: list[Diff] = []
    decided: set[tuple] = set()  # a partition read again also returns its drift found earlier
    previous = {(x.token, x.key): x for x in candidates}
    pending = candidates
    rounds = max(1, rounds)
    for round_no in range(1, rounds + 1):
        if not pending:
            break
        time.sleep(delay_s)
        now = [x for x in reader.diff(pending) if (x.token, x.key) not in decided]
        now_us = int(time.time() * 1_000_000)
        last = round_no == rounds
        pending = []
        for x in now:
            before = previous.get((x.token, x.key))
            if before is not None and (not x.live(run_started_us) or (last and x.same_as(before))):
                drift.append(replace(x, future=x.written_after(now_us)))
                decided.add((x.token, x.key))
            else:
                pending.append(x)
        previous = {(x.token, x.key): x for x in pending}
    return drift, pending


# --- repair: plan, apply, verify ----------------------------------------------------------------

# Reads that see every write acknowledged at a quorum: the only answers a repair may impose
# on a NEWER PostgreSQL cell (the authoritative overwrite; docs/reconcile.md#repair).
AUTHORITATIVE_READS = frozenset({"QUORUM", "LOCAL_QUORUM", "EACH_QUORUM", "SERIAL", "LOCAL_SERIAL", "ALL"})


@dataclass(frozen=True, slots=True)
class Overwrite:
    """One row's cells the merge cannot repair: PostgreSQL holds them at a newer write time
    than Cassandra's, so last-write-wins keeps PostgreSQL's value. ``cells`` are Cassandra's
    (value, write time, expiry); ``stored_wts`` the PostgreSQL write times they replace —
    the overwrite applies only while the row still holds exactly those."""

    token: int
    key: tuple[str | None, ...]
    cells: dict[str, Cell]
    stored_wts: dict[str, int]


@dataclass(slots=True)
class RowRepair:
    """What a repair does to one drifted row Cassandra has (:func:`_row_repair`)."""

    write: RowWrite  # through the merge
    overwrite: dict[str, Cell]  # column → Cassandra's cell, replacing a newer stored one
    stored_wts: dict[str, int]  # column → the stored write time that overwrite expects
    blocked: dict[str, str]  # column → why the repair leaves it as it is


@dataclass
class RepairPlan:
    """What a repair does, per drifted ``(token, key)``: built from a fresh read of both
    sides (:func:`plan_repair`), applied by :func:`apply_repair` (which records each
    overwrite's outcome here), judged by :func:`verify_repair`."""

    batch: Reduced
    notes: dict[tuple, str]  # what the repair does to the key
    read_us: int = 0  # when the repair read the two sides
    overwrites: list[Overwrite] = field(default_factory=list)
    written: set[tuple] = field(default_factory=set)
    deleted: set[tuple] = field(default_factory=set)
    blocked: dict[tuple, str] = field(default_factory=dict)  # what the repair leaves as it is, and why


def plan_repair(reader: _KeyReader, drift: Sequence[Diff], run_started_us: int) -> RepairPlan:
    """Read the drifted partitions again (Cassandra at the configured consistency, with
    write times) and decide per key: Cassandra's row written through the merge, the cells
    the merge cannot win overwritten under the authoritative rule (:func:`_row_repair`), a
    row Cassandra does not have deleted (:func:`_plan_delete`), or the key left, with why."""
    seen = {(x.token, x.key): x for x in drift}
    c_rows: dict[int, list[_Row]] = {}
    p_rows: dict[int, list[_Row]] = {}
    for t, c_list, p_list in reader.read(t for t, _ in seen):
        c_rows[t], p_rows[t] = c_list, p_list
    plan = RepairPlan(Reduced({}, []), {}, int(time.time() * 1_000_000))
    for ident, x in sorted(seen.items(), key=lambda item: (item[0][0], key_order(item[0][1]))):
        token, key = ident
        c = next((r for r in c_rows.get(token, ()) if r.key == key), None)
        p = next((r for r in p_rows.get(token, ()) if r.key == key), None)
        if c is None and p is None:
            plan.notes[ident] = "already equal (absent on both sides)"
        elif c is None:
            assert p is not None
            _plan_delete(plan, ident, x, p, run_started_us, reader.rows)
        elif c.error:
            plan.blocked[ident] = f"cannot be stored in PostgreSQL: {c.error}"
        else:
            r = _row_repair(reader.rows, c, p, x, read_us=plan.read_us, run_started_us=run_started_us,
                            consistency=reader.consistency)
            plan.batch.rows[r.write.key] = r.write
            plan.written.add(ident)
            plan.notes[ident] = "written from Cassandra"
            if r.overwrite:
                plan.overwrites.append(Overwrite(token, key, r.overwrite, r.stored_wts))
            if r.blocked:
                plan.blocked[ident] = "; ".join(f"{column}: {why}" for column, why in r.blocked.items())
    return plan


def _plan_delete(plan: RepairPlan, ident: tuple, seen: Diff, p: _Row, run_started_us: int, rows: _Rows) -> None:
    """A row Cassandra confirms absent: a row tombstone at the row's own newest write time,
    so nothing written later is touched and an older event replayed later cannot bring it
    back. Left alone when that time is in the future (the tombstone would hide every write
    of the key until then) or when the row was written after the run started and changed
    since the re-check (in flight)."""
    newest = p.newest()
    if newest is not None and newest > plan.read_us:
        plan.blocked[ident] = (f"not deleted: its write time {newest} is in the future, and a deletion at that "
                               "time would hide every write of this key until then (delete it by hand if "
                               "Cassandra's absence is right)")
    elif newest is not None and newest >= run_started_us and not (seen.kind == "extra"
                                                                   and seen.postgres_wt == newest):
        plan.blocked[ident] = "not deleted: written in PostgreSQL since the re-check (in flight)"
    elif any(v is None for v in ident[1][rows.n_pk:]):
        # A static row: no row deletion covers it (its statics are the partition's); each
        # static it holds is deleted at its own write time, and the writer removes the row
        # once no static is left (ADR 0007).
        cells = {c.name: Cell(None, wt if wt is not None else 0)
                 for j, (c, wt) in enumerate(zip(rows.regular, p.wts, strict=False))
                 if c.kind == "static" and not c.dropped and p.texts[rows.n_key + j] is not None}
        plan.batch.rows[ident[1]] = RowWrite(ident[1], cells)
        plan.deleted.add(ident)
        plan.notes[ident] = "deleted (absent in Cassandra)"
    else:
        plan.batch.tombstones.append(Tombstone("row", ident[1], newest if newest is not None else 0))
        plan.deleted.add(ident)
        plan.notes[ident] = "deleted (absent in Cassandra)"


def _row_repair(rows: _Rows, c: _Row, p: _Row | None, seen: Diff | None, *, read_us: int, run_started_us: int,
                consistency: str) -> RowRepair:
    """The Cassandra row ``c`` as a repair of the stored row ``p``, cell by cell:

    - a cell Cassandra has is written at its Cassandra write time through the merge, which
      also wins a tie;
    - a cell NULL in Cassandra but set in PostgreSQL becomes a deletion at the stored cell's
      own write time (so a newer write survives), unless it was written after the run
      started and is no longer what the re-check saw (in flight);
    - a differing cell PostgreSQL holds at a NEWER write time than Cassandra's, which the
      merge would keep, falls under the authoritative rule: replaced by Cassandra's value at
      Cassandra's write time when (1) the reads are at a quorum consistency or stronger, and
      (2) both sides still hold the values and write times the re-check saw (the difference
      persisted); :func:`apply_repair` adds (3): PostgreSQL still holds that write time when
      the overwrite runs. Otherwise the cell is left, with the reason.
    """
    cells: dict[str, Cell] = {}
    overwrite: dict[str, Cell] = {}
    stored_wts: dict[str, int] = {}
    blocked: dict[str, str] = {}
    for j, column in enumerate(rows.regular):
        if column.dropped:
            continue
        at = rows.n_key + j
        text, wt, ttl = c.texts[at], c.wts[j], c.ttls_or_exps[j]
        stored, stored_wt = (None, None) if p is None else (p.texts[at], p.wts[j])
        if text is not None:
            # A live cell always has a write time; 0 would lose to any write.
            soonest = c.soonest[j] if c.soonest is not None else None
            # A collection whose elements carry TTLs is read again at the first expiry (engine.recheck).
            cell = Cell(text, wt if wt is not None else 0, read_us + ttl * 1_000_000 if ttl else None,
                        (read_us // 1_000_000 - 1 + max(soonest, 1)) * 1_000_000 if soonest is not None else None)
            if stored_wt is None or stored_wt <= cell.ts or rows.codecs[at].same(text, stored):
                cells[column.name] = cell
            elif consistency not in AUTHORITATIVE_READS:
                blocked[column.name] = (f"PostgreSQL holds it at a newer write time ({stored_wt} > {cell.ts}) and "
                                        f"a read at {consistency} may not overwrite that (QUORUM or stronger may)")
            elif not _as_seen(rows, seen, j, c, p):
                blocked[column.name] = (f"PostgreSQL holds it at a newer write time ({stored_wt} > {cell.ts}), "
                                        "changed since the re-check (in flight)")
            else:
                overwrite[column.name], stored_wts[column.name] = cell, stored_wt
        elif stored is not None:
            if stored_wt is not None and stored_wt >= run_started_us and not _as_seen(rows, seen, j, c, p):
                blocked[column.name] = "set in PostgreSQL since the re-check (in flight)"
                continue
            cells[column.name] = Cell(None, stored_wt if stored_wt is not None else 0)
    # A clustering row lives by a regular cell or its marker; a static cell is the partition's.
    statics = {c.name for c in rows.regular if c.kind == "static"}
    has_live = any(cell.value is not None for name, cell in (*cells.items(), *overwrite.items())
                   if name not in statics)
    static_row = any(v is None for v in c.key[rows.n_pk:])  # exists by its statics, never by a marker
    key = cast(tuple[str, ...], c.key)  # a static row's None clustering values go to COPY as NULL
    return RowRepair(RowWrite(key, cells, None if has_live or static_row else read_us), overwrite, stored_wts,
                     blocked)


def _as_seen(rows: _Rows, seen: Diff | None, j: int, c: _Row, p: _Row | None) -> bool:
    """Both sides of regular column ``j`` still hold the values and write times the
    re-check's last read recorded for that column (so the difference persisted, and no
    write landed on either side since)."""
    if seen is None or seen.kind != "mismatch" or p is None:
        return False
    was = seen.detail.get(rows.regular[j].name)
    if not isinstance(was, dict):
        return False
    at = rows.n_key + j
    now = {"cassandra": _cut(c.texts[at]), "postgres": _cut(_pg_text(rows.codecs[at], p.texts[at])),
           "cassandra_wt": c.wts[j], "postgres_wt": p.wts[j]}
    return all(was.get(k) == v for k, v in now.items())


def apply_repair(conn, target: Target, pipeline: str, plan: RepairPlan) -> int:
    """Apply ``plan``: its writes and deletions in one transaction through the sync merge
    (the source wins ties, a newer stored cell is kept), then its overwrites in a second
    transaction, each a compare-and-set on the stored write times, so a sync write that
    lands in between wins and the overwrite changes nothing (the key is then left, with the
    reason). Returns the number of cells overwritten; each overwrite is logged."""
    if not plan.batch.empty:
        SyncWriter(conn, target, pipeline, source_wins_ties=True).apply(plan.batch, {})
    if not plan.overwrites:
        return 0
    overwritten = 0
    with conn, conn.cursor() as cur:
        for o in plan.overwrites:
            ident = (o.token, o.key)
            statement, params = _overwrite(target, o)
            cur.execute(statement, params)
            columns = ", ".join(o.cells)
            if cur.rowcount == 1:
                overwritten += len(o.cells)
                plan.notes[ident] = (f"written from Cassandra; newer PostgreSQL cells ({columns}) replaced by "
                                     "Cassandra's (authoritative overwrite)")
                logger.warning("repair replaced newer PostgreSQL cells by Cassandra's (authoritative overwrite)",
                               key=list(o.key), columns=list(o.cells),
                               cassandra_wt={k: cell.ts for k, cell in o.cells.items()},
                               postgres_wt=o.stored_wts)
            else:
                why = f"{columns}: changed in PostgreSQL during the repair, not overwritten"
                plan.blocked[ident] = "; ".join(filter(None, (plan.blocked.get(ident), why)))
    return overwritten


def _overwrite(target: Target, o: Overwrite) -> tuple[sql.Composed, dict[str, Any]]:
    """The authoritative overwrite of one row (SQL: :func:`engine.pg_dialect.overwrite_cells`)."""
    return d.overwrite_cells(target.schema, target.target_schema, target.target_table, o.token, o.key,
                             o.cells, o.stored_wts)


@dataclass(frozen=True, slots=True)
class Verdict:
    """How the repair of one drifted key ended, by the re-read after it: ``written`` or
    ``deleted`` (repaired: the re-read finds no difference), ``not_repaired`` (it still
    finds one), ``equal`` (no difference, but not by the repair's hand)."""

    outcome: Literal["written", "deleted", "not_repaired", "equal"]
    note: str

    @property
    def repaired(self) -> bool:
        return self.outcome in ("written", "deleted")


def verify_repair(reader: _KeyReader, drift: Sequence[Diff], plan: RepairPlan, delay_s: float) -> dict[tuple, Verdict]:
    """Per drifted ``(token, key)``, the repair's verdict from a re-read of both sides after
    it, compared as the re-check compares (:meth:`_KeyReader.diff`). A key is repaired only
    when the re-read finds no difference for it; whatever the plan meant to do, a difference
    still there means "not repaired", with the plan's reason when it had one. A difference
    written after the repair's read (in flight) is read once more, after ``delay_s``."""
    wanted = {(x.token, x.key) for x in drift}
    remaining = {(x.token, x.key): x for x in reader.diff(drift) if (x.token, x.key) in wanted}
    moving = [x for x in remaining.values() if x.live(plan.read_us)]
    if moving:
        time.sleep(delay_s)
        again = {(x.token, x.key): x for x in reader.diff(moving)}
        for x in moving:
            ident = (x.token, x.key)
            if ident in again:
                remaining[ident] = again[ident]
            else:
                del remaining[ident]
    verdicts: dict[tuple, Verdict] = {}
    for ident in wanted:
        left = remaining.get(ident)
        if left is not None:
            why = plan.blocked.get(ident) or _still(left)
            verdicts[ident] = Verdict("not_repaired", f"not repaired: {why}")
        elif ident in plan.written:
            verdicts[ident] = Verdict("written", plan.notes[ident])
        elif ident in plan.deleted:
            verdicts[ident] = Verdict("deleted", plan.notes[ident])
        else:
            verdicts[ident] = Verdict("equal", plan.notes.get(ident) or "equal at the repair (another write)")
    return verdicts


def _still(x: Diff) -> str:
    if x.kind == "missing":
        return ("still missing after the repair (a deletion recorded in PostgreSQL after Cassandra's cells "
                "drops them from the merge)")
    if x.kind == "extra":
        return "still present after the repair"
    return f"still differs after the repair in {', '.join(x.columns)}"


# --- the run ---------------------------------------------------------------------------------

@dataclass
class ReconcileResult:
    run_id: str
    table: str
    target: str
    status: str
    rows_compared: int  # Cassandra rows read
    postgres_rows: int
    ranges: int
    ranges_differing: int
    sub_ranges: int
    sub_ranges_differing: int
    rows_compared_exactly: int
    differences: dict[str, int]
    rechecked: int  # differences of the first pass, read again after the delay
    unsettled: int
    # rows_written / rows_deleted: repaired, as the re-read after the repair proved;
    # not_repaired: still differing after it (each with its reason in _c2pg.reconcile_diffs).
    repaired: dict[str, int]
    seconds: float  # the whole run: compare, re-check delays, repair, bookkeeping
    compare_seconds: float  # the parallel digest/compare pass alone
    retries: int
    diffs_truncated: bool
    drift_by_range: list[dict]
    report_html: str | None = None
    sample: list[dict] = field(default_factory=list)
    repair: bool = False  # the run repaired (``repaired`` says how that ended)
    future_write_time: int = 0  # drift rows with a write time ahead of the clock
    cells_overwritten: int = 0  # by the repair's authoritative overwrite
    equal_at_repair: int = 0  # drift rows the repair found equal without writing them (another write)

    @property
    def rows_per_s(self) -> float:
        """Rows compared per second of the whole run."""
        return self.rows_compared / self.seconds if self.seconds else 0.0

    @property
    def drift(self) -> int:
        return sum(self.differences.values())

    @property
    def unrepaired(self) -> int:
        """Drift the run leaves behind: all of it without repair, else what the re-read after
        the repair still finds (``--fail-on-drift`` exits 3 when this is not 0)."""
        return self.repaired["not_repaired"] if self.repair else self.drift

    def stats(self) -> dict:
        out = asdict(self)
        out["rows_per_s"] = round(self.rows_per_s, 1)
        out["drift"] = self.drift
        out["unrepaired"] = self.unrepaired
        return out


def find_table(cfg: PipelineConfig, qualified: str) -> TableConfig:
    """``ks.table`` as configured in the pipeline, or a bare one with default targets."""
    from engine.snapshot import SnapshotUsageError
    from engine.snapshot import find_table as snapshot_find_table

    try:
        return snapshot_find_table(cfg, qualified)
    except SnapshotUsageError as exc:
        raise ReconcileUsageError(str(exc)) from None


def run_reconcile(cfg: PipelineConfig, table_cfg: TableConfig, *, repair: bool | None = None,
                  splits: int | None = None, consistency: str | None = None, run_id: str | None = None,
                  concurrency: int | None = None, html_path: str | None = None,
                  progress: bool = True) -> ReconcileResult:
    """Compare (and with ``repair`` repair) one table; see the module docstring.

    ``run_id`` names the new run (the Serve app picks it before the job starts). Raises
    :class:`ReconcileUsageError` for bad arguments or a missing target, and
    :class:`ReconcileFailed` (after recording the run as failed) when a range cannot be read.
    """
    import ray

    rc = cfg.reconcile
    repair = rc.repair if repair is None else repair
    consistency = (consistency or rc.consistency or cfg.snapshot.consistency).upper()
    if not hasattr(ConsistencyLevel, consistency) or consistency == "ANY":
        raise ReconcileUsageError(f"--consistency {consistency!r} is not a read consistency level")
    try:
        run_id = str(uuid.UUID(run_id)) if run_id else str(uuid.uuid4())
    except ValueError:
        raise ReconcileUsageError(f"--run-id must be a UUID, got {run_id!r}") from None
    started = time.monotonic()
    run_started_us = int(time.time() * 1_000_000)
    cluster, session = cql.connect(cfg.cassandra)
    try:
        with pg_session(cfg.postgres, "c2pg-reconcile") as conn:
            schema = read_table(session, table_cfg.keyspace, table_cfg.table)
            ensure_state(conn)
            target = _existing_target(conn, schema, table_cfg.target_schema or cfg.postgres.schema,
                                      table_cfg.target_table or table_cfg.table)
            ensure_ray()
            slots = int(ray.cluster_resources().get("CPU", 2) / cfg.snapshot.task_cpus)
            plan = plan_splits(cluster, schema.keyspace, schema.table, split_size_mb=cfg.snapshot.split_size_mb,
                               min_splits=max(8, 4 * slots), splits=splits or rc.splits)
            est_rows = _estimated_rows(conn, target)
            settings = CompareSettings(cfg.cassandra, cfg.postgres, target.schema, target.target_schema,
                                       target.target_table, consistency, cfg.snapshot.page_size,
                                       cfg.snapshot.max_retries, run_started_us, est_rows / 2.0**64,
                                       rc.digest_rows, rc.max_diffs)
            qualified_target = f"{target.target_schema}.{target.target_table}"
            _record_run(conn, run_id, cfg, target, plan, {"repair": repair, "splits": splits or rc.splits,
                                                          "consistency": consistency})
            log.bind(pipeline=cfg.name, table=schema.qualified, run_id=run_id)
            logger.info("reconcile starting", splits=len(plan), target=qualified_target, repair=repair)
            try:
                compare_started = time.monotonic()
                outcomes = _compare_all(cfg, settings, plan, conn, run_id, concurrency, progress, schema.qualified)
                compare_seconds = time.monotonic() - compare_started
                reader = _KeyReader(target, consistency, session, conn)
                candidates = [x for o in outcomes for x in o.diffs]
                t_recheck = time.monotonic()
                drift, unsettled = recheck(reader, candidates, run_started_us, rc.recheck_delay.total_seconds(),
                                           rc.recheck_rounds) if candidates else ([], [])
                logger.info("re-check done", candidates=len(candidates), drift=len(drift), unsettled=len(unsettled),
                            seconds=round(time.monotonic() - t_recheck, 2))
                verdicts: dict[tuple, Verdict] = {}
                overwritten = 0
                if repair and drift:
                    verdicts, overwritten = _repair(conn, reader, target, cfg.name, drift, run_started_us,
                                                    rc.recheck_delay.total_seconds())
                result = _result(run_id, schema.qualified, qualified_target, outcomes, drift, unsettled,
                                 repair, verdicts, overwritten, time.monotonic() - started, compare_seconds)
                _store_diffs(conn, run_id, plan, drift, verdicts)
                if result.drift:
                    result.report_html = reconcile_report.write_html(
                        result, drift, html_path, {ident: v.note for ident, v in verdicts.items()})
                _finish(conn, run_id, "completed", result, None)
                return result
            except BaseException as exc:  # Ctrl-C included: the run record must not stay 'running'
                with contextlib.suppress(Exception):
                    _finish(conn, run_id, "failed", None, f"{type(exc).__name__}: {exc}")
                if isinstance(exc, Exception) and not isinstance(exc, C2pgError):
                    raise ReconcileFailed(run_id, exc) from exc
                raise
    finally:
        cluster.shutdown()


def _existing_target(conn, schema: TableSchema, target_schema: str, target_table: str) -> Target:
    with conn, conn.cursor() as cur:
        cur.execute(*d.describe_target(target_schema, target_table))
        exists = bool(cur.fetchall())
    if not exists:
        raise ReconcileUsageError(f"target {target_schema}.{target_table} does not exist: "
                                  f"run a snapshot of {schema.qualified} first")
    return ensure_target(conn, schema, target_schema, target_table, evolve=False)


def _estimated_rows(conn, target: Target) -> float:
    with conn, conn.cursor() as cur:
        cur.execute(*d.estimated_rows(target.target_schema, target.target_table))
        row = cur.fetchone()
        estimate = row[0] if row else 0
        if not estimate or estimate < 0:
            cur.execute(d.sql.SQL("SELECT count(*) FROM {}").format(d.ident(target.target_schema, target.target_table)))
            estimate = cur.fetchone()[0]
    return float(max(estimate, 1))


def _compare_all(cfg: PipelineConfig, settings: CompareSettings, plan: list[TokenSplit], conn, run_id: str,
                 concurrency: int | None, progress: bool, qualified: str) -> list[SplitOutcome]:
    """One Ray task per split, at most ``concurrency`` at once; a progress line every few seconds."""
    import ray

    from engine import faults

    # SPREAD: the splits go to every node of the cluster (Ray's default packs a node until it
    # is half busy, so a reconcile on several nodes ran mostly on the driver's). Snapshot's
    # read tasks are spread by Ray Data's own default (DataContext.scheduling_strategy).
    task = ray.remote(compare_split).options(num_cpus=cfg.snapshot.task_cpus, max_retries=3,
                                             scheduling_strategy="SPREAD", **faults.runtime_env())
    limit = concurrency or max(1, int(ray.cluster_resources().get("CPU", 2) / cfg.snapshot.task_cpus))
    queue = list(plan)
    running: dict[Any, TokenSplit] = {}
    outcomes: list[SplitOutcome] = []
    rows = differing = 0
    t0 = last = time.monotonic()
    while queue or running:
        while queue and len(running) < limit:
            split = queue.pop(0)
            running[task.remote(settings, split)] = split
        done, _ = ray.wait(list(running), num_returns=1, timeout=2.0)
        for ref in done:
            running.pop(ref)
            outcome = ray.get(ref)
            outcomes.append(outcome)
            rows += outcome.cassandra_rows
            differing += outcome.sub_ranges_differing
            with conn, conn.cursor() as cur:
                cur.execute(d.FINISH_RUN_SPLIT, (outcome.cassandra_rows, outcome.retries, run_id,
                                                 outcome.split.index))
        now = time.monotonic()
        if progress and (now - last >= 3 or not (queue or running)):
            last = now
            print(f"reconcile {qualified}: ranges {len(outcomes)}/{len(plan)} · rows {rows:,} · "
                  f"differing sub-ranges {differing:,} · {rows / max(now - t0, 1e-9):,.0f} rows/s",
                  file=sys.stderr, flush=True)
    return sorted(outcomes, key=lambda o: o.split.index)


def _repair(conn, reader: _KeyReader, target: Target, pipeline: str, drift: list[Diff], run_started_us: int,
            delay_s: float) -> tuple[dict[tuple, Verdict], int]:
    """Plan, apply and verify the repair of ``drift``: per key its verdict, and the number
    of cells overwritten under the authoritative rule."""
    t_read = time.monotonic()
    plan = plan_repair(reader, drift, run_started_us)
    t_apply = time.monotonic()
    overwritten = apply_repair(conn, target, pipeline, plan)
    t_verify = time.monotonic()
    verdicts = verify_repair(reader, drift, plan, delay_s)
    logger.info("repair applied and verified", read_s=round(t_apply - t_read, 2),
                apply_s=round(t_verify - t_apply, 2), verify_s=round(time.monotonic() - t_verify, 2),
                rows=len(plan.batch.rows), tombstones=len(plan.batch.tombstones), cells_overwritten=overwritten,
                not_repaired=sum(v.outcome == "not_repaired" for v in verdicts.values()))
    return verdicts, overwritten


def _result(run_id: str, qualified: str, target: str, outcomes: list[SplitOutcome], drift: list[Diff],
            unsettled: list[Diff], repair: bool, verdicts: dict[tuple, Verdict], cells_overwritten: int,
            seconds: float, compare_seconds: float) -> ReconcileResult:
    """The run's figures; ``drift_by_range`` feeds the drift page and the status page."""
    counts = {k: 0 for k in KINDS}
    for x in drift:
        counts[x.kind] += 1
    per_split: dict[int, dict] = {o.split.index: {"split_index": o.split.index, "start_token": o.split.start,
                                                   "end_token": o.split.end, "rows": o.cassandra_rows,
                                                   **{k: 0 for k in KINDS}, "future": 0} for o in outcomes}
    for x in drift:
        per_split[x.split_index][x.kind] += 1
        per_split[x.split_index]["future"] += x.future
    ranges = sorted(per_split.values(), key=lambda r: r["start_token"])
    verdict_counts = Counter(v.outcome for v in verdicts.values())
    repaired = {"rows_written": verdict_counts["written"], "rows_deleted": verdict_counts["deleted"],
                "not_repaired": verdict_counts["not_repaired"]}
    return ReconcileResult(
        run_id=run_id, table=qualified, target=target, status="completed",
        rows_compared=sum(o.cassandra_rows for o in outcomes), postgres_rows=sum(o.postgres_rows for o in outcomes),
        ranges=len(outcomes), ranges_differing=sum(1 for r in ranges if any(r[k] for k in KINDS)),
        sub_ranges=sum(o.sub_ranges for o in outcomes),
        sub_ranges_differing=sum(o.sub_ranges_differing for o in outcomes),
        rows_compared_exactly=sum(o.rows_compared_exactly for o in outcomes), differences=counts,
        rechecked=sum(len(o.diffs) for o in outcomes), unsettled=len(unsettled),
        repaired=repaired,
        seconds=round(seconds, 3), compare_seconds=round(compare_seconds, 3), retries=sum(o.retries for o in outcomes),
        diffs_truncated=any(o.diffs_total > len(o.diffs) for o in outcomes), drift_by_range=ranges,
        sample=[_diff_json(x) for x in drift[:20]], repair=repair,
        future_write_time=sum(x.future for x in drift), cells_overwritten=cells_overwritten,
        equal_at_repair=verdict_counts["equal"])


def _diff_json(x: Diff) -> dict:
    return {"token": x.token, "key": list(x.key), "kind": x.kind, "columns": list(x.columns), "detail": x.detail,
            "flags": [reconcile_report.FUTURE_FLAG] if x.future else []}


def _record_run(conn, run_id: str, cfg: PipelineConfig, target: Target, plan: list[TokenSplit], args: dict) -> None:
    with conn, conn.cursor() as cur:
        cur.execute(d.INSERT_RUN, (run_id, "reconcile", cfg.name, target.schema.keyspace, target.schema.table,
                                   f"{target.target_schema}.{target.target_table}", json.dumps(args)))
        execute_values(cur, d.INSERT_RUN_SPLITS.as_string(conn), [(run_id, s.index, s.start, s.end) for s in plan])


def _store_diffs(conn, run_id: str, plan: list[TokenSplit], drift: list[Diff],
                 verdicts: dict[tuple, Verdict]) -> None:
    """One ``_c2pg.reconcile_diffs`` row per drifted key; a flagged row's ``detail`` carries
    ``_c2pg_flags`` (the ``_c2pg_`` prefix is c2pg's, so no column name collides); with a
    repair, ``repaired`` and ``repair_note`` are the verdict of the re-read after it."""
    if not drift:
        return
    by_index = {s.index: s for s in plan}
    with conn, conn.cursor() as cur:
        rows = []
        for x in drift:
            s = by_index[x.split_index]
            detail = {**x.detail, "_c2pg_flags": [reconcile_report.FUTURE_FLAG]} if x.future else x.detail
            rows.append((run_id, x.split_index, s.start, s.end, x.token, json.dumps(list(x.key)), x.kind,
                         list(x.columns), json.dumps(detail, default=str)))
        ids = execute_values(cur, d.INSERT_RECONCILE_DIFFS.as_string(conn), rows, fetch=True)
        marks = [(row_id, v.repaired, v.note) for (row_id,), x in zip(ids, drift, strict=True)
                 if (v := verdicts.get((x.token, x.key))) is not None]
        if marks:
            execute_values(cur, d.MARK_REPAIRED.as_string(conn), marks)


def _finish(conn, run_id: str, status: str, result: ReconcileResult | None, error: str | None) -> None:
    stats = {} if result is None else result.stats()
    with conn, conn.cursor() as cur:
        cur.execute(d.FINISH_RUN, (status, json.dumps(stats, default=str), error, run_id))


def export_drift(conn, pipeline: str) -> int:
    """``c2pg_reconcile_drift_rows{pipeline,table,kind}`` from each table's last completed
    reconcile in ``_c2pg.runs``. Called by the sync supervisor on its schema-check cadence;
    returns how many tables it reported. (Not set by the reconcile job itself: a job's
    gauge ends with its process, before Ray exports it.)"""
    with conn, conn.cursor() as cur:
        cur.execute(d.LATEST_RECONCILE_DRIFT, (pipeline,))
        rows = cur.fetchall()
    for table, differences in rows:
        _set_drift(pipeline, table, differences or {})
    return len(rows)


_drift_gauge = None


def _set_drift(pipeline: str, table: str, differences: dict) -> None:
    global _drift_gauge
    try:
        from ray.util.metrics import Gauge

        if _drift_gauge is None:
            _drift_gauge = Gauge("c2pg_reconcile_drift_rows", "Rows that differ between Cassandra and PostgreSQL, "
                                 "by kind, as found by the last reconcile", tag_keys=("pipeline", "table", "kind"))
        for kind in KINDS:
            _drift_gauge.set(int(differences.get(kind, 0)), tags={"pipeline": pipeline, "table": table, "kind": kind})
    except Exception as exc:  # noqa: BLE001 - metrics are best effort; the run's record is the truth
        logger.warning("could not export the drift metric", error=str(exc))
