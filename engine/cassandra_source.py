"""A Ray Data Datasource that reads a Cassandra table by token range, with write times.

``CassandraDatasource`` is built on the driver by the snapshot job and pickled to the read
tasks: it holds settings and the split plan, never a session. Each read task (one per
:class:`~engine.token_ranges.TokenSplit`) opens its own session, pages through
``token(pk) > start AND token(pk) <= end`` at the configured consistency, and yields Arrow
tables with one string column per Cassandra column (the value already in PostgreSQL COPY
text form, NULL for null), ``_c2pg_token``, the per-cell ``_c2pg_wt``/``_c2pg_exp`` lists,
``_c2pg_row_ts``, and bookkeeping columns (split, part, parts_total) that let the sink mark
a split finished exactly once. A row with a NULL ``_c2pg_token`` is a marker (an empty
split's last part) and a row with ``_c2pg_dead_error`` set is a dead letter.

Failure: a timeout is retried with exponential backoff from the last token read (rows of a
partially read partition are not emitted twice); a range that keeps timing out is split
in two and each half read on its own. A value that cannot be converted is not a failure:
its row goes out as a dead letter (``_c2pg_dead_*`` columns) and the run goes on.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from engine import faults
from engine.config import CassandraConfig
from engine.schema import META_EXP, META_ROW_TS, META_TOKEN, META_WT, TableSchema
from engine.token_ranges import TokenSplit
from engine.types import ValueConversionError

log = logging.getLogger("c2pg.snapshot.read")

SPLIT, PART, PARTS_TOTAL, RETRIES = "_c2pg_split", "_c2pg_part", "_c2pg_parts_total", "_c2pg_retries"
PART_ROWS_COL = "_c2pg_part_rows"  # rows in the whole part: the sink checks it got all of them
DEAD_KEY, DEAD_ERROR = "_c2pg_dead_key", "_c2pg_dead_error"
PART_ROWS = 50_000  # rows per yielded block; the sink commits one block per transaction


@dataclass(frozen=True, slots=True)
class ReadSettings:
    cassandra: CassandraConfig
    schema: TableSchema
    consistency: str
    page_size: int
    max_retries: int
    read_started_us: int  # a row with no live regular cell gets this as its marker time


class CassandraDatasource(Datasource):
    def __init__(self, settings: ReadSettings, splits: list[TokenSplit]):
        self.settings = settings
        self.splits = splits

    def get_name(self) -> str:
        return f"Cassandra({self.settings.schema.qualified})"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        """One task per split, whatever ``parallelism`` says: splits are the unit of resume."""
        return [ReadTask(_ReadSplit(self.settings, split),
                         BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None))
                for split in self.splits]


def arrow_schema(schema: TableSchema) -> pa.Schema:
    fields = [pa.field(c.name, pa.string()) for c in schema.columns]
    fields += [pa.field(META_TOKEN, pa.int64()), pa.field(META_WT, pa.list_(pa.int64())),
               pa.field(META_EXP, pa.list_(pa.int64())), pa.field(META_ROW_TS, pa.int64()),
               pa.field(SPLIT, pa.int32()), pa.field(PART, pa.int32()), pa.field(PARTS_TOTAL, pa.int32()),
               pa.field(RETRIES, pa.int32()), pa.field(PART_ROWS_COL, pa.int32()),
               pa.field(DEAD_KEY, pa.string()), pa.field(DEAD_ERROR, pa.string())]
    return pa.schema(fields)


def select_statement(schema: TableSchema) -> str:
    """``SELECT token(pk), pk..., ck..., c, WRITETIME(c), TTL(c)... WHERE token range``.

    Identifiers are double-quoted for CQL (a quote inside a name is doubled).
    """
    q = _cql_ident
    pk = ", ".join(q(c.name) for c in schema.partition_key)
    parts = [f"token({pk})"] + [_value(c) for c in schema.primary_key]
    for c in schema.regular:
        if _multi_cell(c.cql_type):
            # WRITETIME/TTL of a multi-cell column are lists with null elements, which the
            # Python driver cannot decode; MAXWRITETIME (Cassandra 5) gives the newest
            # element's time. Element TTLs are not read (docs/types.md).
            parts += [_value(c), f"MAXWRITETIME({q(c.name)})"]
        else:
            parts += [_value(c), f"WRITETIME({q(c.name)})", f"TTL({q(c.name)})"]
    return (f"SELECT {', '.join(parts)} FROM {q(schema.keyspace)}.{q(schema.table)} "
            f"WHERE token({pk}) > ? AND token({pk}) <= ?")


def _value(c) -> str:
    """The selector of a column's value. A top-level timestamp is read as epoch
    milliseconds: the driver cannot build a datetime outside years 1..9999 and would fail
    the whole page (the codec takes the integer exactly)."""
    if c.cql_type.kind == "timestamp":
        return f"toUnixTimestamp({_cql_ident(c.name)})"
    return _cql_ident(c.name)


def _multi_cell(t) -> bool:
    """Non-frozen collections and UDTs: stored as one cell per element or field."""
    return t.kind in ("list", "set", "map", "udt") and not t.frozen


def _cql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _ReadSplit:
    """The read function of one split (a picklable callable, run on a Ray worker)."""

    def __init__(self, settings: ReadSettings, split: TokenSplit):
        self.settings = settings
        self.split = split
        self.retries = 0

    def __call__(self) -> Iterator[pa.Table]:
        from engine import cql

        s = self.settings
        cluster, session = cql.connect(s.cassandra)
        try:
            stmt = session.prepare(select_statement(s.schema))
            stmt.consistency_level = cql.consistency_level(s.consistency)
            stmt.fetch_size = s.page_size
            builder = _BlockBuilder(s, self.split.index)
            for row in self._rows(session, stmt, self.split, depth=0):
                builder.add(row)
                if builder.rows >= PART_ROWS:
                    yield builder.flush(final=False)
            builder.retries = self.retries
            yield builder.flush(final=True)
        finally:
            cluster.shutdown()

    def _rows(self, session, stmt, split: TokenSplit, depth: int) -> Iterator[tuple]:
        """Rows of ``split``, resuming after the last complete partition on a timeout."""
        from cassandra import OperationTimedOut, ReadFailure, ReadTimeout, Unavailable

        start = split.start
        last_token, seen_in_last = None, set()
        failures = 0
        while True:
            try:
                # Resume at the partition being read when the failure came (>=), skipping
                # the rows of it already emitted.
                bound = (stmt.bind((start, split.end)) if last_token is None else
                         _resume_stmt(session, stmt, self.settings).bind((last_token, split.end)))
                for n, row in enumerate(session.execute(bound)):
                    faults.hit("snapshot.read", split=split.index, rows=n)
                    token = row[0]
                    if token == last_token:
                        key = row[1:1 + len(self.settings.schema.primary_key)]
                        if key in seen_in_last:
                            continue
                        seen_in_last.add(key)
                    else:
                        last_token, seen_in_last = token, {row[1:1 + len(self.settings.schema.primary_key)]}
                    yield row
                return
            except (ReadTimeout, ReadFailure, OperationTimedOut, Unavailable) as exc:
                failures += 1
                self.retries += 1
                if failures > self.settings.max_retries:
                    if depth < 3 and last_token is None and split.width > 1:
                        log.warning("split %s keeps timing out (%s); reading it in halves", split, exc)
                        for half in split.halves():
                            yield from self._rows(session, stmt, half, depth + 1)
                        return
                    raise
                delay = min(30.0, 0.5 * 2 ** failures) * (0.5 + random.random())
                log.warning("read of split %s failed (%s: %s); retry %d/%d in %.1fs",
                            split.index, type(exc).__name__, exc, failures, self.settings.max_retries, delay)
                time.sleep(delay)


def _resume_stmt(session, stmt, settings: ReadSettings):
    text = stmt.query_string.replace(") > ? AND token(", ") >= ? AND token(", 1)
    resumed = session.prepare(text)
    resumed.consistency_level = stmt.consistency_level
    resumed.fetch_size = stmt.fetch_size
    return resumed


class _BlockBuilder:
    """Accumulates converted rows column-wise and cuts them into Arrow tables."""

    def __init__(self, settings: ReadSettings, split_index: int):
        self.schema = settings.schema
        self.read_started_us = settings.read_started_us
        self.codecs = self.schema.codecs()
        self.n_key = len(self.schema.primary_key)
        self.n_reg = len(self.schema.regular)
        # Where each regular column's value starts in a row, and whether a TTL follows
        # (see select_statement: value, WRITETIME[, TTL]).
        self.layout, at = [], 1 + self.n_key
        for c in self.schema.regular:
            has_ttl = not _multi_cell(c.cql_type)
            self.layout.append((at, has_ttl))
            at += 3 if has_ttl else 2
        self.split_index = split_index
        self.part = 0
        self.retries = 0  # set by the read function before the final flush
        self.arrow_schema = arrow_schema(self.schema)
        self._reset()

    def _reset(self) -> None:
        self.cols: list[list] = [[] for _ in self.schema.columns]
        self.tokens: list[int] = []
        self.wts: list[list] = []
        self.exps: list[list | None] = []
        self.row_ts: list[int | None] = []
        self.dead_key: list[str | None] = []
        self.dead_error: list[str | None] = []
        self.rows = 0

    def add(self, row: tuple) -> None:
        now_us = None
        try:
            values = []
            for i in range(self.n_key):
                values.append(self.codecs[i].from_driver(row[1 + i]))
            wt, exp = [], []
            for j, (at, has_ttl) in enumerate(self.layout):
                value, writetime = row[at], row[at + 1]
                ttl = row[at + 2] if has_ttl else None
                values.append(self.codecs[self.n_key + j].from_driver(value))
                wt.append(writetime if value is not None else None)
                if ttl:
                    now_us = now_us or int(time.time() * 1_000_000)
                    exp.append(now_us + int(ttl) * 1_000_000)
                else:
                    exp.append(None)
        except ValueConversionError as exc:
            self._dead(row, exc)
            return
        for i, v in enumerate(values):
            self.cols[i].append(v)
        self.tokens.append(row[0])
        self.wts.append(wt)
        self.exps.append(exp if any(e is not None for e in exp) else None)
        # A row with no live regular cell exists through its row marker, whose time CQL
        # does not expose: the read's start time stands in (ADR 0002).
        self.row_ts.append(None if any(w is not None for w in wt) else self.read_started_us)
        self.dead_key.append(None)
        self.dead_error.append(None)
        self.rows += 1

    def _dead(self, row: tuple, exc: Exception) -> None:
        key = ", ".join(f"{c.name}={row[1 + i]!r}" for i, c in enumerate(self.schema.primary_key))
        for col in self.cols:
            col.append(None)
        self.tokens.append(row[0])
        self.wts.append([])
        self.exps.append(None)
        self.row_ts.append(None)
        self.dead_key.append(key)
        self.dead_error.append(f"{type(exc).__name__}: {exc}")
        self.rows += 1

    def flush(self, final: bool) -> pa.Table:
        if final and self.rows == 0:
            # An empty last part still has to tell the sink the split is finished: one
            # marker row (no token, no values) that the sink counts but never writes.
            for col in self.cols:
                col.append(None)
            self.tokens.append(None)
            self.wts.append(None)
            self.exps.append(None)
            self.row_ts.append(None)
            self.dead_key.append(None)
            self.dead_error.append(None)
            self.rows = 1
        n = self.rows
        arrays = [pa.array(col, pa.string()) for col in self.cols]
        arrays += [pa.array(self.tokens, pa.int64()), pa.array(self.wts, pa.list_(pa.int64())),
                   pa.array(self.exps, pa.list_(pa.int64())), pa.array(self.row_ts, pa.int64()),
                   pa.array([self.split_index] * n, pa.int32()), pa.array([self.part] * n, pa.int32()),
                   pa.array([self.part + 1 if final else None] * n, pa.int32()),
                   pa.array([self.retries if final else None] * n, pa.int32()),
                   pa.array([n] * n, pa.int32()),
                   pa.array(self.dead_key, pa.string()), pa.array(self.dead_error, pa.string())]
        table = pa.Table.from_arrays(arrays, schema=self.arrow_schema)
        self.part += 1
        self._reset()
        return table
