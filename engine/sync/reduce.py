"""Reduce a batch of change events per primary key with Cassandra's last-write-wins rules.

Called by the sync worker on each closed batch, before staging: every key is written once
per batch, and the merge (:func:`engine.pg_dialect.merge`) applies the result against what
PostgreSQL already holds. A pure function of its input: the same events, in any order and
with any duplicates, reduce to the same result (tested against a reference model with
hypothesis in ``tests/unit/test_reduce.py``).

The rules (docs/architecture.md, "The replication contract", rules 2 and 3), per cell:

- the write with the greater timestamp wins;
- at equal timestamps Cassandra's tie rule (:func:`wins`), the same as the merge's: a
  deletion (null value) beats a live value, a value with a TTL beats one without, the later
  expiry wins, then the greater serialized value (Cassandra's bytes, :mod:`engine.cassandra_bytes`);
- a row deletion at T kills every cell and the row marker of that row written at or before
  T; a partition deletion does so for every row of the partition; a range deletion for the
  rows whose clustering values fall in the range;
- a cell dead on arrival — written with a TTL whose expiry (:attr:`Cell.expires_us`) is at
  or before the batch's ``now_us`` — is a deletion of that cell at its write time
  (:func:`dead_on_arrival`), never a live value: Cassandra reads an expired cell as a
  tombstone with the same timestamp, so it shadows older writes, loses to newer ones and,
  at an equal time, beats a live value. This is what makes replaying a topic from its
  beginning after a snapshot exact for TTL'd cells whose TTL ran out long ago;
- the row marker (an INSERT's) follows :func:`marker_wins` and keeps its expiry, dead or
  not: the merge and the writer's removal of empty rows judge it by the same clock.

Deletions are kept as :class:`Tombstone` values: the merge records them (so an older write
arriving in a later batch cannot resurrect data) and applies them to rows already stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from engine.events import Bound, Cell, ChangeEvent, Op
from engine.types import copy_unescape

TombstoneKind = Literal["row", "partition", "range"]


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A deletion at ``ts``: of the row ``key`` (row), of the partition ``key`` (partition),
    or of the clustering range ``start``..``end`` of the partition ``key`` (range; an
    absent bound is open)."""

    kind: TombstoneKind
    key: tuple[str, ...]
    ts: int
    start: Bound | None = None
    end: Bound | None = None

    def identity(self) -> tuple:
        return (self.kind, self.key, self.start, self.end)


@dataclass(slots=True)
class RowWrite:
    """The winning writes of one primary key in a batch."""

    # Canonical text per key column; a static row (read back or repaired, never reduced from
    # events) holds None for its clustering values (ADR 0007), which the writer's COPY sends as NULL.
    key: tuple[str, ...]
    cells: dict[str, Cell] = field(default_factory=dict)
    row_ts: int | None = None  # the winning row marker (INSERT), if any ...
    row_exp: int | None = None  # ... and its expiry (µs) when it had a TTL


@dataclass(slots=True)
class Reduced:
    rows: dict[tuple[str, ...], RowWrite]
    tombstones: list[Tombstone]

    @property
    def empty(self) -> bool:
        return not self.rows and not self.tombstones


def text_bytes(value: str) -> bytes:
    """The UTF-8 bytes of a canonical text: Cassandra's serialized value for ``text`` and
    ``ascii`` columns, and :func:`wins`'s order when the column's type is not given."""
    return copy_unescape(value).encode()


def wins(new: Cell, old: Cell | None, serialize: Callable[[str], bytes] = text_bytes) -> bool:
    """Does ``new`` replace ``old``? Cassandra's rule for two writes of one cell
    (``org.apache.cassandra.db.rows.Cells.resolveRegular``, Cassandra 5.0):

    1. the greater write time wins;
    2. at an equal time a deletion (``None``) beats a live value (two deletions: keep ``old``);
    3. a live value with a TTL (``expires_us``) beats one without — Cassandra treats an
       expiring cell like the tombstone it will become (CASSANDRA-14592);
    4. of two values with a TTL, the later expiry wins, compared in whole seconds (Cassandra's
       local deletion time has seconds);
    5. otherwise the greater serialized value wins, compared as unsigned bytes (Cassandra's
       ``ValueAccessor.compare`` → ``ByteBufferUtil.compareUnsigned``); ``serialize`` turns
       the canonical text into those bytes (:func:`engine.cassandra_bytes.serializer` of the
       column's type; the default is right for text columns only). Equal bytes keep ``old``.

    ``wins`` has no clock: a cell whose TTL ran out must be passed as the deletion it is
    (:func:`dead_on_arrival`; :func:`reduce_events` does so), so that at an equal time it
    beats a live value whatever that value's expiry.
    """
    if old is None:
        return True
    if new.ts != old.ts:
        return new.ts > old.ts
    if new.value is None or old.value is None:
        return new.value is None and old.value is not None
    if (new.expires_us is None) != (old.expires_us is None):
        return new.expires_us is not None
    if new.expires_us is not None and old.expires_us is not None:
        new_s, old_s = new.expires_us // 1_000_000, old.expires_us // 1_000_000
        if new_s != old_s:
            return new_s > old_s
    return serialize(new.value) > serialize(old.value)


def marker_wins(ts: int, expires_us: int | None, old_ts: int | None, old_expires_us: int | None) -> bool:
    """Does a row marker written at ``ts`` (expiring at ``expires_us``, or never) replace
    the one held (``old_ts``, ``old_expires_us``; ``old_ts=None``: none)? Cassandra's
    ``LivenessInfo.supersedes``: the newer write time wins; at an equal time a marker with a
    TTL beats one without, and of two with a TTL the later expiry in whole seconds wins.
    An expired marker is compared the same way: it is dead, but shadows older markers
    (the merge, ``pg_dialect.marker_supersedes``, applies the same rule)."""
    if old_ts is None or ts != old_ts:
        return old_ts is None or ts > old_ts
    if expires_us is None:
        return False
    return old_expires_us is None or expires_us // 1_000_000 > old_expires_us // 1_000_000


def dead_on_arrival(cell: Cell, now_us: int | None) -> Cell:
    """``cell`` as it stands at ``now_us``: a live value whose TTL ran out (``expires_us <=
    now_us``; Cassandra: live while ``now < localDeletionTime``) is a deletion at its write
    time, ``Cell(None, cell.ts)`` — the same thing the TTL sweep makes of a stored cell
    (``engine.sweep``). ``now_us=None`` judges nothing (for callers and models that have no
    clock; sync always passes one). Every other cell is returned as is."""
    if now_us is not None and cell.expires_us is not None and cell.value is not None \
            and cell.expires_us <= now_us:
        return Cell(None, cell.ts)
    return cell


def reduce_events(events: Iterable[ChangeEvent], n_partition_key: int, compare=None,
                  serializers: Mapping[str, Callable[[str], bytes]] | None = None, *,
                  now_us: int | None = None) -> Reduced:
    """Fold ``events`` (one table) into one :class:`RowWrite` per key and the deletions.

    ``n_partition_key`` says how many leading ``key`` values are the partition key (the rest
    are clustering values), to match rows against partition and range deletions;
    ``compare`` orders clustering values (see :func:`kill_ts`); ``serializers`` gives, by
    column name, Cassandra's bytes of a value for the tie rule of :func:`wins`
    (:func:`engine.cassandra_bytes.column_serializers`; a column without one compares as text).

    ``now_us`` is the clock the batch is judged by (µs, the sync worker's wall clock read
    once per batch, :func:`engine.sweep.wall_clock_us`): a cell whose expiry is at or before
    it is reduced as a deletion at its write time (:func:`dead_on_arrival`). The sync writer
    passes the same instant to the merge (:meth:`engine.pg_writer.SyncWriter.apply`), so the
    reducer and the merge never disagree on which cells are dead; a cell that expires after
    ``now_us`` is written live with its expiry and the TTL sweep expires it later.
    ``None`` judges no expiry (the function is then independent of time).
    """
    by_name = serializers or {}
    rows: dict[tuple[str, ...], RowWrite] = {}
    tombs: dict[tuple, Tombstone] = {}
    for ev in events:
        if ev.op is Op.UPSERT:
            row = rows.get(ev.key)
            if row is None:
                row = rows[ev.key] = RowWrite(ev.key)
            for name, cell in ev.cells:
                cell = dead_on_arrival(cell, now_us)
                if wins(cell, row.cells.get(name), by_name.get(name, text_bytes)):
                    row.cells[name] = cell
            if ev.row_marker and marker_wins(ev.ts, ev.marker_expires_us, row.row_ts, row.row_exp):
                row.row_ts, row.row_exp = ev.ts, ev.marker_expires_us
        else:
            t = _tombstone(ev)
            old = tombs.get(t.identity())
            if old is None or t.ts > old.ts:
                tombs[t.identity()] = t
    tombstones = sorted(tombs.values(), key=lambda t: (t.kind, t.key, t.ts))
    if tombstones:
        # Only a row's own partition's deletions can cover it: index them by partition key.
        by_partition: dict[tuple[str, ...], list[Tombstone]] = {}
        for t in tombstones:
            by_partition.setdefault(t.key[:n_partition_key], []).append(t)
        for row in list(rows.values()):
            own = by_partition.get(row.key[:n_partition_key])
            if not own:
                continue
            kill = kill_ts(row.key, own, n_partition_key, compare)
            if kill is not None:
                _shadow(row, kill)
                if not row.cells and row.row_ts is None:
                    del rows[row.key]
    return Reduced(rows, tombstones)


def _tombstone(ev: ChangeEvent) -> Tombstone:
    if ev.op is Op.ROW_DELETE:
        return Tombstone("row", ev.key, ev.ts)
    if ev.op is Op.PARTITION_DELETE:
        return Tombstone("partition", ev.key, ev.ts)
    return Tombstone("range", ev.key, ev.ts, ev.range_start, ev.range_end)


def _shadow(row: RowWrite, kill: int) -> None:
    """Drop the writes at or before ``kill`` (a deletion covering the row)."""
    row.cells = {n: c for n, c in row.cells.items() if c.ts > kill}
    if row.row_ts is not None and row.row_ts <= kill:
        row.row_ts = row.row_exp = None


def kill_ts(key: tuple[str, ...], tombstones: Sequence[Tombstone], n_partition_key: int,
            compare=None) -> int | None:
    """The newest deletion covering the row ``key``, if any.

    ``compare(a, b)`` orders two clustering values of one position (negative, zero,
    positive); without it they compare as text, which is right for text columns only —
    callers pass the table's typed comparison (:func:`engine.sync.reduce.typed_compare`).
    """
    partition, clustering = key[:n_partition_key], key[n_partition_key:]
    best = None
    for t in tombstones:
        if t.key[:n_partition_key] != partition:
            continue
        if (t.kind == "partition" or (t.kind == "row" and t.key == key)
                or (t.kind == "range" and in_range(clustering, t.start, t.end, compare))):
            best = t.ts if best is None else max(best, t.ts)
    return best


def in_range(clustering: tuple[str, ...], start: Bound | None, end: Bound | None, compare=None) -> bool:
    """Is the row with these clustering values inside ``start``..``end``? A bound is a prefix
    of the clustering columns: a row matches it when its first values equal the prefix."""
    cmp = compare or _text_compare

    def prefix_cmp(bound: Bound) -> int:
        for i, v in enumerate(bound.values):
            c = cmp(i, clustering[i], v)
            if c:
                return c
        return 0

    if start is not None:
        c = prefix_cmp(start)
        if c < 0 or (c == 0 and not start.inclusive):
            return False
    if end is not None:
        c = prefix_cmp(end)
        if c > 0 or (c == 0 and not end.inclusive):
            return False
    return True


def _text_compare(_: int, a: str, b: str) -> int:
    return (a > b) - (a < b)


def typed_compare(schema):
    """``compare(i, a, b)`` for the table's clustering column ``i``, on canonical COPY text,
    in Cassandra's clustering order (reversed for a DESC column): the order of
    :func:`engine.cassandra_bytes.order_bytes` over the value's Cassandra bytes, for every
    type (numbers by value, text by UTF-8 bytes, uuid and timeuuid as ``UUIDType`` and
    ``TimeUUIDType``, frozen collections, tuples and UDTs element by element). Used for
    range deletions inside one batch; the merge compares stored rows in the same order
    (``pg_dialect.clustering_order_key``)."""
    from functools import lru_cache

    from engine.cassandra_bytes import order_bytes, serializer

    def key_fn(t):
        to_bytes, order = serializer(t), order_bytes(t)
        return lru_cache(maxsize=4096)(lambda text: order(to_bytes(text)))

    keys = [key_fn(c.cql_type) for c in schema.clustering]
    # Range bounds come in clustering order: a DESC column's order is its values' reverse.
    signs = [-1 if c.descending else 1 for c in schema.clustering]

    def compare(i: int, a: str, b: str) -> int:
        ka, kb = keys[i](a), keys[i](b)
        return signs[i] * ((ka > kb) - (ka < kb))

    return compare
