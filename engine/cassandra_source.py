"""Reading a Cassandra table by token range, with write times.

The snapshot's Ray Data source (``engine.snapshot.CassandraDatasource``) and reconcile's
compare tasks both read through :class:`SplitReader`; this module does not import Ray
Data, so a compare task's worker does not pay for it. Each read task (one per
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

import json
import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine import faults, json_read
from engine.config import CassandraConfig
from engine.schema import META_EXP, META_ROW_TS, META_TOKEN, META_WT, TableSchema
from engine.token_ranges import TokenSplit
from engine.types import ValueConversionError

log = logging.getLogger("c2pg.snapshot.read")

SPLIT, PART, PARTS_TOTAL, RETRIES = "_c2pg_split", "_c2pg_part", "_c2pg_parts_total", "_c2pg_retries"
PART_ROWS_COL = "_c2pg_part_rows"  # rows in the whole part: the sink checks it got all of them
DEAD_KEY, DEAD_ERROR = "_c2pg_dead_key", "_c2pg_dead_error"
# Per regular column, when a collection whose elements carry TTLs must be read again
# (engine.recheck); not a target column: the sink registers it in _c2pg.rechecks.
RECHECK = "_c2pg_recheck"
PART_ROWS = 50_000  # rows per yielded block; the sink commits one block per transaction


@dataclass(frozen=True, slots=True)
class ReadSettings:
    cassandra: CassandraConfig
    schema: TableSchema
    consistency: str
    page_size: int
    max_retries: int
    read_started_us: int  # a row with no live regular cell gets this as its marker time
    # Off (``--no-writetime``, a first load): no WRITETIME selectors; every live cell gets
    # read_started_us as its write time (docs/snapshot.md says when that is sound).
    write_times: bool = True
    # Off when the table never had TTLs (engine.snapshot.may_have_ttls): no TTL selectors.
    ttls: bool = True
    # Rows as ``SELECT JSON`` texts parsed column-wise (engine.json_read), when every column
    # type has an exact JSON form; off, or for other tables: row tuples from the driver.
    json_rows: bool = True


def arrow_schema(schema: TableSchema) -> pa.Schema:
    fields = [pa.field(c.name, pa.string()) for c in schema.columns]
    fields += [pa.field(META_TOKEN, pa.int64()), pa.field(META_WT, pa.list_(pa.int64())),
               pa.field(META_EXP, pa.list_(pa.int64())), pa.field(META_ROW_TS, pa.int64()),
               pa.field(SPLIT, pa.int32()), pa.field(PART, pa.int32()), pa.field(PARTS_TOTAL, pa.int32()),
               pa.field(RETRIES, pa.int32()), pa.field(PART_ROWS_COL, pa.int32()),
               pa.field(DEAD_KEY, pa.string()), pa.field(DEAD_ERROR, pa.string()),
               pa.field(RECHECK, pa.list_(pa.int64()))]
    return pa.schema(fields)


def select_statement(schema: TableSchema, write_times: bool = True, ttls: bool = True) -> str:
    """``SELECT token(pk), pk..., ck..., c, WRITETIME(c), TTL(c)... WHERE token range``;
    without ``write_times`` or ``ttls`` those selectors are left out (:class:`RowLayout`).

    Identifiers are double-quoted for CQL (a quote inside a name is doubled).
    """
    q = _cql_ident
    pk = ", ".join(q(c.name) for c in schema.partition_key)
    return (f"SELECT {', '.join(selectors(schema, write_times, ttls))} FROM {q(schema.keyspace)}.{q(schema.table)} "
            f"WHERE token({pk}) > ? AND token({pk}) <= ?")


def selectors(schema: TableSchema, write_times: bool = True, ttls: bool = True) -> list[str]:
    """The selectors of :func:`select_statement`, in :class:`RowLayout` order."""
    q = _cql_ident
    pk = ", ".join(q(c.name) for c in schema.partition_key)
    parts = [f"token({pk})"] + [_value(c) for c in schema.primary_key]
    for c in schema.live_regular:
        parts.append(_value(c))
        if c.cql_type.multi_cell:
            # WRITETIME/TTL of a multi-cell column are lists with null elements, which the
            # Python driver cannot decode; MAXWRITETIME (Cassandra 5) gives the newest
            # element's time, collection_min(TTL(c)) the seconds to the first element's
            # expiry (engine.recheck reads the value again then).
            parts += [f"MAXWRITETIME({q(c.name)})"] * write_times + [f"collection_min(TTL({q(c.name)}))"] * ttls
        else:
            parts += [f"WRITETIME({q(c.name)})"] * write_times + [f"TTL({q(c.name)})"] * ttls
    return parts


def _value(c) -> str:
    """The selector of a column's value. A top-level timestamp is read as epoch
    milliseconds: the driver cannot build a datetime outside years 1..9999 and would fail
    the whole page (the codec takes the integer exactly)."""
    if c.cql_type.kind == "timestamp":
        return f"toUnixTimestamp({_cql_ident(c.name)})"
    return _cql_ident(c.name)


def _cql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class RowLayout:
    """Where each column sits in a row of :func:`select_statement`: the token at 0, the key
    columns, then per live regular column its value, WRITETIME and (single-cell columns)
    TTL. ``None``: not selected (a dropped column: NULL, no write time; or a selector left
    out, see :func:`select_statement`)."""

    value_at: list[int | None]
    wt_at: list[int | None]
    ttl_at: list[int | None]
    width: int
    soonest_at: list[int | None]  # a multi-cell column's first element TTL

    @classmethod
    def of(cls, schema: TableSchema, write_times: bool = True, ttls: bool = True) -> RowLayout:
        n_key = len(schema.primary_key)
        value_at: list[int | None] = [1 + i for i in range(n_key)]
        wt_at: list[int | None] = []
        ttl_at: list[int | None] = []
        soonest_at: list[int | None] = []
        at = 1 + n_key
        for c in schema.regular:
            if c.dropped:
                value_at.append(None)
                wt_at.append(None)
                ttl_at.append(None)
                soonest_at.append(None)
                continue
            value_at.append(at)
            at += 1
            wt_at.append(at if write_times else None)
            at += write_times
            ttl_at.append(at if ttls and not c.cql_type.multi_cell else None)
            soonest_at.append(at if ttls and c.cql_type.multi_cell else None)
            at += ttls
        return cls(value_at, wt_at, ttl_at, at, soonest_at)


class SplitReader:
    """The read function of one split (a picklable callable, run on a Ray worker): the
    snapshot calls it for Arrow blocks; reconcile's compare tasks iterate
    :meth:`iter_rows` for the raw rows (shape: :class:`RowLayout`)."""

    def __init__(self, settings: ReadSettings, split: TokenSplit):
        self.settings = settings
        self.split = split
        self.retries = 0
        self.host = None

    def __call__(self) -> Iterator[pa.Table]:
        keep_freed_memory()
        s = self.settings
        layout = RowLayout.of(s.schema, s.write_times, s.ttls)
        plan = (json_read.plan(s.schema, selectors(s.schema, s.write_times, s.ttls), layout.value_at)
                if s.json_rows else None)
        builder = _BlockBuilder(s, self.split.index, plan)
        if plan is None:
            for row in self.iter_rows():
                builder.add(row)
                if builder.rows >= PART_ROWS:
                    yield builder.flush(final=False)
        else:
            for page in self._iter_pages(plan):
                builder.add_page(page)
                if builder.rows >= PART_ROWS:
                    yield builder.flush(final=False)
        builder.retries = self.retries
        yield builder.flush(final=True)

    def _iter_pages(self, plan: json_read.JsonPlan) -> Iterator[list[str]]:
        """The split's rows as pages of JSON texts, in token order (``SELECT JSON``)."""
        from cassandra.query import tuple_factory

        from engine import cql

        s = self.settings
        cluster, session = cql.connect(s.cassandra, row_factory=tuple_factory, metadata=False)
        try:
            stmt = session.prepare(plan.statement)
            stmt.consistency_level = cql.consistency_level(s.consistency)
            stmt.fetch_size = s.page_size
            self.host = _replica(cluster, self.split)
            yield from self._pages(session, stmt, plan, self.split, depth=0)
        finally:
            cluster.shutdown()

    def _pages(self, session, stmt, plan: json_read.JsonPlan, split: TokenSplit, depth: int) -> Iterator[list[str]]:
        """Pages of ``split``, resuming after a timeout like :meth:`_rows`: the read starts
        again at the partition it was in and drops that partition's rows already emitted
        (known by key). Tokens are parsed only where a binary search over a page looks."""
        from cassandra import OperationTimedOut, ReadFailure, ReadTimeout, Unavailable

        last_token: int | None = None
        tail: list[str] = []  # the texts emitted with last_token: its partition's rows so far
        seen: set | None = None  # their keys, while a resumed read is still in that partition
        failures = 0
        hooked = faults.enabled()
        while True:
            try:
                bound = (stmt.bind((split.start, split.end)) if last_token is None else
                         _resume_stmt(session, stmt, self.settings).bind((last_token, split.end)))
                result = session.execute(bound, host=self.host)
                read = 0
                while True:
                    page = [r[0] for r in result.current_rows]
                    cut = None
                    if hooked:
                        page, cut = _fault_cut(page, split.index, read)
                    read += len(page)
                    if seen is not None and last_token is not None and page:
                        # The resumed read's first rows are the interrupted partition's again.
                        j = plan.first_after(page, last_token)
                        left = j < len(page)  # the partition ends within this page
                        page = [t for t in page[:j] if plan.key(t) not in seen] + page[j:]
                        if left:
                            seen = None
                    if page:
                        token = plan.token(page[-1])
                        i = plan.first_at(page, token)
                        if i == 0 and token == last_token:
                            tail.extend(page)
                        else:
                            tail = page[i:]
                        last_token = token
                        yield page
                    if cut is not None:
                        raise cut
                    if not result.has_more_pages:
                        return
                    result.fetch_next_page()
            except (ReadTimeout, ReadFailure, OperationTimedOut, Unavailable) as exc:
                failures += 1
                if self._give_up(exc, split, failures, depth, started=last_token is not None):
                    for half in split.halves():
                        yield from self._pages(session, stmt, plan, half, depth + 1)
                    return
                seen = {plan.key(t) for t in tail} if last_token is not None else None

    def iter_rows(self) -> Iterator[tuple]:
        """The split's raw rows in token order; the session lives as long as the generator."""
        from cassandra.query import tuple_factory

        from engine import cql

        s = self.settings
        cluster, session = cql.connect(s.cassandra, row_factory=tuple_factory, metadata=False)
        try:
            stmt = session.prepare(select_statement(s.schema, s.write_times, s.ttls))
            stmt.consistency_level = cql.consistency_level(s.consistency)
            stmt.fetch_size = s.page_size
            self.host = _replica(cluster, self.split)
            yield from self._rows(session, stmt, self.split, depth=0)
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
                for n, row in enumerate(session.execute(bound, host=self.host)):
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
                if self._give_up(exc, split, failures, depth, started=last_token is not None):
                    for half in split.halves():
                        yield from self._rows(session, stmt, half, depth + 1)
                    return

    def _give_up(self, exc: Exception, split: TokenSplit, failures: int, depth: int, started: bool) -> bool:
        """After a read of ``split`` failed for the ``failures``-th time: sleep the backoff
        and return False (read again), return True when the range is to be read in halves
        (it ran out of retries before yielding a row), or raise ``exc`` (out of retries)."""
        self.retries += 1
        if failures > self.settings.max_retries:
            if depth < 3 and not started and split.width > 1:
                log.warning("split %s keeps timing out (%s); reading it in halves", split, exc)
                return True
            raise exc
        delay = min(30.0, 0.5 * 2 ** failures) * (0.5 + random.random())  # nosec B311 - retry jitter
        log.warning("read of split %s failed (%s: %s); retry %d/%d in %.1fs",
                    split.index, type(exc).__name__, exc, failures, self.settings.max_retries, delay)
        time.sleep(delay)
        return False


_MALLOC_TUNED = False


def keep_freed_memory() -> None:
    """Keep freed memory for reuse in this process (a read task's worker): every block
    allocates and frees tens of MB (the page texts, the joined JSON, Arrow's columns, the
    COPY payload). Arrow's default allocator (mimalloc) and glibc both give big blocks back
    to the kernel, so the next block's pages fault in again, zeroed (huge pages): a fifth of
    a read task's CPU in ``perf`` (2026-12-06, ADR 0017). Here Arrow allocates through glibc,
    allocations up to 32 MiB come from the heap and up to 1 GiB of free heap is kept: the
    worker holds its largest block's memory between blocks. Once per process (the Arrow
    memory pool is process-wide); nothing changes where the C library is not glibc."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 1 << 30)
    pa.set_memory_pool(pa.system_memory_pool())


def _replica(cluster, split: TokenSplit):
    """A live replica of the split to send its reads to (a range query has no routing key
    for the token-aware policy to use), spread over replicas by split index; ``None`` lets
    the load-balancing policy choose when no replica is known or up."""
    hosts = sorted((h for h in cluster.metadata.all_hosts()
                    if str(h.address) in split.replicas and h.is_up is not False), key=lambda h: str(h.address))
    return hosts[split.index % len(hosts)] if hosts else None


def _resume_stmt(session, stmt, settings: ReadSettings):
    text = stmt.query_string.replace(") > ? AND token(", ") >= ? AND token(", 1)
    resumed = session.prepare(text)
    resumed.consistency_level = stmt.consistency_level
    resumed.fetch_size = stmt.fetch_size
    return resumed


class _BlockBuilder:
    """Collects raw rows and converts them column by column into an Arrow table.

    Column-wise conversion is the hot path of the snapshot: the common scalar types are
    converted by Arrow's C++ casts (:func:`_column_converter`), the rest by the column's
    codec in one comprehension; only a column holding a value that does not convert is
    walked value by value, to find the rows to send to the dead letters.
    """

    def __init__(self, settings: ReadSettings, split_index: int, plan: json_read.JsonPlan | None = None):
        self.schema = settings.schema
        self.read_started_us = settings.read_started_us
        codecs = self.schema.codecs()
        self.plan = plan  # set: rows arrive as JSON texts (add_page), else as tuples (add)
        self.converters = [_column_converter(c, json_form=plan is not None) for c in codecs]
        self.n_key = len(self.schema.primary_key)
        layout = RowLayout.of(self.schema, settings.write_times, settings.ttls)
        self.write_times = settings.write_times
        self.value_at, self.wt_at, self.ttl_at, self.width = layout.value_at, layout.wt_at, layout.ttl_at, layout.width
        self.soonest_at = layout.soonest_at
        self.split_index = split_index
        self.part = 0
        self.retries = 0  # set by the read function before the final flush
        self.arrow_schema = arrow_schema(self.schema)
        self.raw: list = []

    @property
    def rows(self) -> int:
        return len(self.raw)

    def add(self, row: tuple) -> None:
        self.raw.append(row)

    def add_page(self, texts: list[str]) -> None:
        self.raw.extend(texts)

    def flush(self, final: bool) -> pa.Table:
        rows, self.raw = self.raw, []
        n = len(rows)
        if final and n == 0:
            # An empty last part still has to tell the sink the split is finished: one
            # marker row (no token, no values) that the sink counts but never writes.
            return self._table(1, [pa.nulls(1, pa.string())] * len(self.converters), pa.nulls(1, pa.int64()),
                               pa.nulls(1, pa.list_(pa.int64())), pa.nulls(1, pa.list_(pa.int64())),
                               pa.nulls(1, pa.int64()), [None], [None], final, pa.nulls(1, pa.list_(pa.int64())))
        # Per RowLayout position: Arrow arrays (JSON texts) or tuples of driver values.
        cols: list = self.plan.decode(rows) if self.plan else list(zip(*rows))
        values: list[pa.Array] = []
        dead: dict[int, tuple[str, Exception]] = {}
        static_row = np.zeros(n, dtype=bool)
        for conv, at, column in zip(self.converters, self.value_at, self.schema.columns, strict=True):
            if at is None:
                values.append(pa.nulls(n, pa.string()))
                continue
            array, errors = conv(cols[at])
            values.append(array)
            for i, exc in errors.items():
                dead.setdefault(i, (column.name, exc))
            if column.kind == "clustering" and array.null_count:
                # A partition holding only static values comes back as one row with null
                # clustering columns: its static row (ADR 0007).
                static_row |= array.is_null().to_numpy(zero_copy_only=False)
        absent = (None,) * n
        if self.write_times:
            wt_cols: list = [absent if at is None else cols[at] for at in self.wt_at]
        else:
            # --no-writetime: a live cell was written at the latest when the read started.
            stand_in = pa.scalar(self.read_started_us, pa.int64())
            wt_cols = [absent if at is None else pc.if_else(pc.is_valid(v), stand_in, pa.scalar(None, pa.int64()))
                       for v, at in zip(values[self.n_key:], self.value_at[self.n_key:], strict=True)]
        wts, _ = _list_column(wt_cols, n)
        # A static cell is the partition's: it does not make a clustering row live.
        _, no_cell = _list_column([wt for wt, at, c in zip(wt_cols, self.value_at[self.n_key:], self.schema.regular,
                                                           strict=True) if at is not None and c.kind != "static"], n)
        exps = self._expiries(cols, n)
        # A row with no live regular cell exists through its row marker, whose time CQL
        # does not expose: the read's start time stands in (ADR 0002). A static row has
        # none: it exists by its statics alone.
        marker = no_cell & ~static_row
        row_ts = pa.array(np.where(marker, self.read_started_us, 0), pa.int64(), mask=~marker)
        dead_key: list[str | None] = [None] * n
        dead_error: list[str | None] = [None] * n
        for i, (bad_column, exc) in dead.items():
            dead_key[i] = ", ".join(f"{c.name}={_value_at(cols[1 + k], i)!r}"
                                    for k, c in enumerate(self.schema.primary_key))
            dead_error[i] = f"{type(exc).__name__}: column {bad_column}: {exc}"
        tokens = cols[0] if isinstance(cols[0], pa.Array) else pa.array(cols[0], pa.int64())
        table = self._table(n, values, tokens, wts, exps, row_ts, dead_key, dead_error,
                            final, self._rechecks(cols, n))
        return table.take(self._key_order(cols, values, n))

    def _key_order(self, cols: list, values: list[pa.Array], n: int) -> pa.Array:
        """The block's rows in primary-key order, for PostgreSQL: a token range holds its
        keys in hash order, so COPYing them as read inserts into the primary-key index at
        random leaves; in key order each leaf is visited once per block (PostgreSQL's CPU
        for the 1M-row benchmark 8.0–9.0 → 6.4–6.7 s). Integer-like keys sort as numbers,
        the others by their COPY text (uuid exactly as PostgreSQL orders it, text by bytes:
        near enough for the index, and order never changes what is written)."""
        keys = {}
        for k, column in enumerate(self.schema.primary_key):
            raw = cols[1 + k]
            if column.cql_type.kind in _INT_KINDS or column.cql_type.kind == "timestamp":
                keys[f"k{k}"] = raw if isinstance(raw, pa.Array) else pa.array(raw, pa.int64())
            else:
                keys[f"k{k}"] = values[k]
        return pc.sort_indices(pa.table(keys), sort_keys=[(name, "ascending") for name in keys])

    def _expiries(self, cols: list[tuple], n: int) -> pa.Array:
        """Per row, the cells' expiry (µs) from their remaining TTL; NULL when none has one."""
        if not any(at is not None and _any_value(cols[at]) for at in self.ttl_at):
            return pa.nulls(n, pa.list_(pa.int64()))
        # A dropped or multi-cell column has none.
        ttl_cols = [_values(cols[at]) if at is not None else (None,) * n for at in self.ttl_at]
        now_us = int(time.time() * 1_000_000)
        out = []
        for ttls in zip(*ttl_cols):
            out.append([now_us + t * 1_000_000 if t else None for t in ttls] if any(ttls) else None)
        return pa.array(out, pa.list_(pa.int64()))

    def _rechecks(self, cols: list[tuple], n: int) -> pa.Array:
        """Per row, when each collection with element TTLs must be read again (µs): counted
        from the snapshot's start, so at or before the first element's expiry (a recheck
        that comes early finds the element and waits again). NULL when none has one."""
        if not any(at is not None and _any_value(cols[at]) for at in self.soonest_at):
            return pa.nulls(n, pa.list_(pa.int64()))
        soonest = [_values(cols[at]) if at is not None else (None,) * n for at in self.soonest_at]
        started_s = self.read_started_us // 1_000_000
        return pa.array([[None if t is None else (started_s + max(t, 1)) * 1_000_000 for t in ttls]
                         if any(t is not None for t in ttls) else None for ttls in zip(*soonest)],
                        pa.list_(pa.int64()))

    def _table(self, n: int, values: list, tokens, wts, exps, row_ts, dead_key, dead_error,
               final: bool, rechecks) -> pa.Table:
        arrays = [*values, tokens, wts, exps, row_ts,
                  pa.array([self.split_index] * n, pa.int32()), pa.array([self.part] * n, pa.int32()),
                  pa.array([self.part + 1 if final else None] * n, pa.int32()),
                  pa.array([self.retries if final else None] * n, pa.int32()),
                  pa.array([n] * n, pa.int32()),
                  pa.array(dead_key, pa.string()), pa.array(dead_error, pa.string()), rechecks]
        self.part += 1
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema)


def _any_value(col) -> bool:
    """Whether a column (Arrow array or tuple) holds a non-null value."""
    if isinstance(col, pa.Array):
        return col.null_count < len(col)
    return any(x is not None for x in col)


def _values(col) -> Sequence:
    """A column's values as Python objects (the rarely taken paths that walk values)."""
    return col.to_pylist() if isinstance(col, pa.Array) else col


def _value_at(col, i: int):
    return col[i].as_py() if isinstance(col, pa.Array) else col[i]


def _fault_cut(page: list[str], split: int, read: int) -> tuple[list[str], Exception | None]:
    """The fault hook ``snapshot.read`` per row of a page (``rows``: rows read by this
    query so far): the rows before the one it fires at, and its exception."""
    for k in range(len(page)):
        try:
            faults.hit("snapshot.read", split=split, rows=read + k)
        except Exception as exc:  # an injected fault, raised after the rows before it
            return page[:k], exc
    return page, None


def _list_column(columns: list, n: int) -> tuple[pa.Array, np.ndarray]:
    """``n`` lists of ``len(columns)`` int64 each (row i = the i-th value of every column,
    a tuple of ints or an int64 Arrow array), and per row whether every value is null.
    Built with numpy, not per value in Python."""
    width = len(columns)
    if width == 0:
        return pa.array([[]] * n, pa.list_(pa.int64())), np.ones(n, dtype=bool)
    arrays = [c if isinstance(c, pa.Array) else pa.array(c, pa.int64()) for c in columns]
    values = np.stack([a.fill_null(0).to_numpy() for a in arrays], axis=1).ravel()
    nulls = np.stack([a.is_null().to_numpy(zero_copy_only=False) for a in arrays], axis=1)
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    flat = pa.array(values, pa.int64(), mask=nulls.ravel())
    return pa.ListArray.from_arrays(offsets, flat), np.asarray(nulls.all(axis=1))


_INT_KINDS = {"tinyint", "smallint", "int", "bigint", "counter"}
_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))


def _copy_escaped(arr: pa.Array) -> pa.Array:
    """Text values in COPY TEXT form: backslash, tab, newline and carriage return escaped.
    Each replacement is a copy of the whole column, so only the characters present are
    replaced (most columns hold none: one scan, no copy)."""
    if not pc.any(pc.match_substring_regex(arr, "[\\\\\t\n\r]")).as_py():
        return arr
    for old, new in _ESCAPES:
        arr = pc.replace_substring(arr, old, new)
    return arr


def _column_converter(codec, json_form: bool = False):
    """A function: a column's driver values → (Arrow string array of COPY text, {row: error}).

    Fast paths (Arrow casts) for integers, booleans, finite floats and text give the same
    values PostgreSQL parses from the codec's text; everything else, and any column where
    a fast path does not apply (non-finite floats, a NUL in text), goes through the codec.
    ``json_form``: the values are the Arrow array :mod:`engine.json_read` parsed from the
    column's JSON selector instead (see :func:`_json_converter`).
    """
    kind = codec.cql_type.kind
    from_driver = codec.from_driver

    def generic(vals):
        try:
            return pa.array([from_driver(v) for v in vals], pa.string()), {}
        except ValueConversionError:
            out, errors = [], {}
            for i, v in enumerate(vals):
                try:
                    out.append(from_driver(v))
                except ValueConversionError as exc:
                    out.append(None)
                    errors[i] = exc
            return pa.array(out, pa.string()), errors

    if json_form:
        return _json_converter(codec, generic)
    if kind in _ARROW_TYPE:
        arrow_type = _ARROW_TYPE[kind]
        return lambda vals: _arrow_text(kind, pa.array(vals, arrow_type), lambda: generic(vals))
    if (kind == "map" and codec.cql_type.params[0].kind in ("text", "ascii")
            and codec.cql_type.params[1].kind in _INT_KINDS | {"boolean", "text", "ascii"}):
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

        def text_maps(vals):
            # The driver gives an empty non-frozen map as None already; a frozen empty map
            # is {} in both forms.
            docs = [None if v is None else dumps(dict(v)) for v in vals]
            if any(d is not None and "\\u0000" in d for d in docs):
                return generic(vals)  # jsonb cannot hold NUL: the codec makes dead letters
            arr = pa.array(docs, pa.string())
            arr = _copy_escaped(arr)
            return arr, {}
        return text_maps
    if kind in ("uuid", "timeuuid"):
        return lambda vals: (pa.array([None if v is None else str(v) for v in vals], pa.string()), {})
    return generic


def _json_converter(codec, generic):
    """The converter of a column read by :mod:`engine.json_read`: its input is the Arrow
    array parsed from the column's JSON selector (:func:`engine.json_read.value_selector`),
    its output the same COPY text the driver path gives for the same values. ``generic``
    (the codec, value by value) gets driver-like values where a fast path does not apply."""
    kind = codec.cql_type.kind
    from_driver = codec.from_driver
    if kind in ("uuid", "timeuuid"):
        return lambda arr: (arr, {})  # Cassandra's canonical lowercase form, as str(UUID)
    if kind in ("double", "float"):
        dtype = np.dtype(">f8" if kind == "double" else ">f4")

        def floats(arr):
            x = _from_blobs(arr, dtype)
            if x is None:
                return generic([None if v is None else _blob_float(v, dtype) for v in arr.to_pylist()])
            return _arrow_text(kind, x, lambda: generic(x.to_pylist()))
        return floats
    if kind in _ARROW_TYPE:  # integers, boolean, text, timestamps (epoch ms): as parsed
        return lambda arr: _arrow_text(kind, arr, lambda: generic(arr.to_pylist()))
    if kind in ("decimal", "varint"):
        # The text Cassandra casts to is PostgreSQL numeric input as it stands, except an
        # exponent, a negative zero or a length that numeric's limits may refuse: those few
        # go through the codec (which writes plain notation or names the limit).
        pattern = "[eE]|^-0" if kind == "decimal" else "^$"
        exact = Decimal if kind == "varint" else str

        def numbers(arr):
            slow = pc.fill_null(pc.or_(pc.match_substring_regex(arr, pattern),
                                       pc.greater(pc.utf8_length(arr), 1000)), False)
            if not pc.any(slow).as_py():
                return arr, {}
            out, errors = arr.to_pylist(), {}
            for i in np.flatnonzero(slow.to_numpy(zero_copy_only=False)):
                try:
                    out[i] = from_driver(exact(out[i]))
                except ValueConversionError as exc:
                    out[i] = None
                    errors[int(i)] = exc
            return pa.array(out, pa.string()), errors
        return numbers
    if kind == "map":
        def json_maps(arr):
            docs = pc.if_else(pc.equal(arr, "null"), pa.scalar(None, pa.string()), arr)  # toJson of no map
            if pc.any(pc.match_substring(docs, "\\u0000")).as_py():
                # jsonb cannot hold NUL: the codec makes dead letters of those rows.
                return generic([None if d is None else json.loads(d) for d in docs.to_pylist()])
            docs = _copy_escaped(docs)
            return docs, {}
        return json_maps
    raise ValueError(f"{codec.cql_type.cql()} has no JSON read form (engine.json_read.supported)")


# The kinds with an Arrow fast path (_arrow_text), and the Arrow type their values parse as.
_ARROW_TYPE = {**dict.fromkeys(_INT_KINDS, pa.int64()), "boolean": pa.bool_(), "double": pa.float64(),
               "float": pa.float32(), "text": pa.string(), "ascii": pa.string(), "timestamp": pa.int64()}
_TIMESTAMP_MS = (-62135596800000, 253402300799999)  # years 1..9999, which Arrow formats


def _arrow_text(kind: str, arr: pa.Array, slow) -> tuple[pa.Array, dict]:
    """COPY text of a column of one of :data:`_ARROW_TYPE`'s kinds, by Arrow casts and string
    kernels; both read forms (driver values, parsed JSON) end here. Where the fast path does
    not give the codec's text — NaN/Infinity, a NUL in text (a dead letter), a timestamp
    outside years 1..9999 — ``slow()`` converts the column with the codec value by value."""
    if kind in ("double", "float") and not pc.all(pc.or_kleene(pc.is_finite(arr), pc.is_null(arr))).as_py():
        return slow()  # NaN/Infinity: the codec spells them PostgreSQL's way
    if kind in ("text", "ascii"):
        if pc.any(pc.match_substring(arr, "\x00")).as_py():
            return slow()  # find the rows with a NUL: they become dead letters
        return _copy_escaped(arr), {}
    if kind == "timestamp":
        bounds = pc.min_max(arr).as_py()
        if bounds["min"] is not None and (bounds["min"] < _TIMESTAMP_MS[0] or bounds["max"] > _TIMESTAMP_MS[1]):
            return slow()
        return arr.cast(pa.timestamp("ms", tz="UTC")).cast(pa.string()), {}
    return arr.cast(pa.string()), {}


_HEX = np.zeros(256, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def _from_blobs(arr: pa.Array, dtype: np.dtype) -> pa.Array | None:
    """``0x…`` hex texts of big-endian IEEE values (``doubleAsBlob``) → a float array, in
    numpy over the string buffer; ``None`` if some text is not exactly one value's hex."""
    width = 2 + 2 * dtype.itemsize
    n = len(arr)
    filled = pc.fill_null(arr, "0x" + "0" * (width - 2))
    offsets = np.frombuffer(filled.buffers()[1], np.int32)[filled.offset:filled.offset + n + 1]
    if n and not (np.all(np.diff(offsets) == width) and filled.buffers()[2] is not None):
        return None
    chars = np.frombuffer(filled.buffers()[2], np.uint8)[offsets[0]:offsets[0] + n * width] if n else \
        np.zeros(0, np.uint8)
    nibbles = _HEX[chars.reshape(n, width)[:, 2:]]
    raw = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    values = np.ascontiguousarray(raw).view(dtype).ravel().astype(dtype.newbyteorder("="))
    return pa.array(values, mask=arr.is_null().to_numpy(zero_copy_only=False))


def _blob_float(text: str, dtype: np.dtype) -> float:
    return float(np.frombuffer(bytes.fromhex(text[2:]), dtype)[0])
