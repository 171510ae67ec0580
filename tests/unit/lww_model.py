"""Two models for the replication contract's property tests.

``Cassandra`` is the reference: it keeps, per cell, the winning write (deletions included)
and every deletion, and materializes rows the way a read at ALL would. Events can be
applied in any order, any number of times: it is order-free by construction.

``Target`` is what PostgreSQL holds under c2pg's layout (ADR 0002), in Python: rows with one
cell (value, write time) per column and a row marker (time, expiry), plus the tombstone table. It
applies :class:`~engine.sync.reduce.Reduced` batches the way the sync writer must, step by step:

1. record the batch's deletions (row, partition, range, and cell deletions of rows that
   become empty — see 4);
2. shadow the stored rows the new deletions cover: cells written at or before become a
   deletion at that time, an older row marker goes;
3. merge each reduced row: drop what a recorded deletion covers, then per cell
   last-write-wins (:func:`cell_wins`), the row marker by :func:`marker_rank`;
4. remove rows left with no live cell and no live marker (none, or past its expiry at the
   model's clock) — Cassandra has no such row — and keep their cell deletions, and a dead
   marker, as ``cell`` tombstones, so an older write arriving later still loses.

The property: any events, batched in any way, applied in any order and repeated, leave
``Target.materialize() == Cassandra.materialize()``. The SQL of the sync writer is then
checked against ``Target`` on real PostgreSQL.

Both models are oracles, so they are written from the rules as Cassandra states them
(docs/types.md, "Cassandra's tie rule"; docs/architecture.md, "The replication contract"),
not from the code they judge: the cell rule (:func:`cell_wins`) and the range test
(:func:`in_range`) are their own, and a value's bytes come from the cassandra-driver's
serializers, not from :mod:`engine.cassandra_bytes`. From ``engine`` they take only the data
types and, in :func:`apply_in_batches`, the reducer under test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cassandra.cqltypes import AsciiType, Int32Type, LongType, UTF8Type

from engine.events import Bound, Cell, ChangeEvent, Op
from engine.sync.reduce import Reduced, Tombstone, reduce_events

# The CQL types the model's values may have: the Python value of a canonical text, and the
# driver's serializer for it (protocol v4). A column not named in ``types`` is text.
_TYPES = {
    "text": (str, UTF8Type),
    "ascii": (str, AsciiType),
    "int": (int, Int32Type),
    "bigint": (int, LongType),
}


def driver_bytes(value: str, cql_type: str = "text") -> bytes:
    """Cassandra's serialized value of ``value`` (the text the events carry), by the driver."""
    if cql_type in ("text", "ascii") and "\\" in value:
        # Events carry COPY text: with a backslash it is an escape, not the value itself.
        raise ValueError(f"the model takes text values without backslashes, not {value!r}")
    python, serializer = _TYPES[cql_type]
    return serializer.serialize(python(value), 4)


def _rank(cell: Cell, cql_type: str) -> tuple[int, bool, bool, int, bytes]:
    """The order in which Cassandra resolves two writes of one cell (Cells.resolveRegular):
    the write time; then a deletion over a live value; then a value with a TTL over one
    without; then the later expiry in whole seconds; then the greater serialized value,
    as unsigned bytes with a proper prefix first — which is how Python orders ``bytes``."""
    if cell.value is None:
        return (cell.ts, True, False, 0, b"")
    if cell.expires_us is None:
        return (cell.ts, False, False, 0, driver_bytes(cell.value, cql_type))
    return (cell.ts, False, True, cell.expires_us // 1_000_000, driver_bytes(cell.value, cql_type))


def marker_rank(ts: int, expires_us: int | None) -> tuple[int, bool, int]:
    """The order of two row markers (Cassandra's ``LivenessInfo.supersedes``): the write
    time, then a marker with a TTL over one without, then the later expiry in whole seconds."""
    return (ts, expires_us is not None, 0 if expires_us is None else expires_us // 1_000_000)


def marker_live(marker: tuple[int, int | None] | None, now_us: int | None) -> bool:
    return marker is not None and (marker[1] is None or now_us is None or marker[1] > now_us)


MARKER = "_c2pg_row_ts"  # the pseudo-column of a dead row marker's ``cell`` tombstone


def cell_wins(new: Cell, old: Cell | None, cql_type: str = "text") -> bool:
    """Does ``new`` replace ``old``? The higher rank wins; an equal rank is the same write
    (or two deletions at one time), so ``old`` stays."""
    return old is None or _rank(new, cql_type) > _rank(old, cql_type)


def _int_compare(_: int, a: str, b: str) -> int:
    return (int(a) > int(b)) - (int(a) < int(b))


def _desc_compare(i: int, a: str, b: str) -> int:
    return -_int_compare(i, a, b)


def in_range(clustering: tuple[str, ...], start: Bound | None, end: Bound | None, compare) -> bool:
    """Is the row inside the range deletion ``start``..``end`` (an absent bound is open)?
    A bound is a prefix of the clustering values, compared position by position in
    clustering order; a row whose first values equal it is on the bound."""

    def side(bound: Bound) -> int:  # the row is before (-1), on (0) or after (1) the bound
        for i, v in enumerate(bound.values):
            c = compare(i, clustering[i], v)
            if c != 0:
                return 1 if c > 0 else -1
        return 0

    after_start = start is None or side(start) > 0 or (side(start) == 0 and start.inclusive)
    before_end = end is None or side(end) < 0 or (side(end) == 0 and end.inclusive)
    return after_start and before_end


def covering_kill(key: tuple[str, ...], tombs, n_pk: int, compare=_int_compare) -> int | None:
    best = None
    for t in tombs:
        if t.kind == "cell" or t.key[:n_pk] != key[:n_pk]:
            continue
        if (t.kind == "partition" or (t.kind == "row" and t.key == key)
                or (t.kind == "range" and in_range(key[n_pk:], t.start, t.end, compare))):
            best = t.ts if best is None else max(best, t.ts)
    return best


@dataclass
class Cassandra:
    n_pk: int
    compare: object = _int_compare  # clustering order (``_desc_compare`` for a DESC column)
    types: Mapping[str, str] = field(default_factory=dict)  # column → CQL type; text if absent
    cells: dict[tuple, Cell] = field(default_factory=dict)  # (key, column) → winning write
    markers: dict[tuple, tuple[int, int | None]] = field(default_factory=dict)  # (time, expiry)
    tombs: list[Tombstone] = field(default_factory=list)
    now_us: int | None = None  # the clock a marker's expiry is judged by (None: never expires)

    def apply(self, ev: ChangeEvent) -> None:
        if ev.op is Op.UPSERT:
            for name, cell in ev.cells:
                if cell_wins(cell, self.cells.get((ev.key, name)), self.types.get(name, "text")):
                    self.cells[(ev.key, name)] = cell
            old = self.markers.get(ev.key)
            if ev.row_marker and (old is None or marker_rank(ev.ts, ev.marker_expires_us) > marker_rank(*old)):
                self.markers[ev.key] = (ev.ts, ev.marker_expires_us)
        else:
            kind = {Op.ROW_DELETE: "row", Op.PARTITION_DELETE: "partition", Op.RANGE_DELETE: "range"}[ev.op]
            self.tombs.append(Tombstone(kind, ev.key, ev.ts, ev.range_start, ev.range_end))

    def materialize(self) -> dict[tuple, dict[str, str]]:
        keys = {k for k, _ in self.cells} | set(self.markers)
        out = {}
        for key in keys:
            kill = covering_kill(key, self.tombs, self.n_pk, self.compare)
            live = {name: c.value for (k, name), c in self.cells.items()
                    if k == key and c.value is not None and (kill is None or c.ts > kill)}
            marker = self.markers.get(key)
            if live or (marker_live(marker, self.now_us) and (kill is None or marker[0] > kill)):
                out[key] = live
        return out


@dataclass
class StoredRow:
    cells: dict[str, Cell] = field(default_factory=dict)
    row_ts: int | None = None
    row_exp: int | None = None


@dataclass
class Target:
    n_pk: int
    compare: object = _int_compare
    types: Mapping[str, str] = field(default_factory=dict)
    rows: dict[tuple, StoredRow] = field(default_factory=dict)
    tombs: list = field(default_factory=list)  # Tombstone, or ("cell", key, column, ts)
    now_us: int | None = None  # the writer's clock (None: markers never expire)

    def apply(self, batch: Reduced) -> None:
        # 1. record the deletions
        self.tombs.extend(batch.tombstones)
        # 2. shadow stored rows covered by the new deletions
        for key, row in self.rows.items():
            kill = covering_kill(key, batch.tombstones, self.n_pk, self.compare)
            if kill is not None:
                row.cells = {n: (c if c.ts > kill else Cell(None, kill)) for n, c in row.cells.items()}
                if row.row_ts is not None and row.row_ts <= kill:
                    row.row_ts = row.row_exp = None
        # 3. merge the reduced rows
        for key, write in batch.rows.items():
            kill = covering_kill(key, [t for t in self.tombs if isinstance(t, Tombstone)], self.n_pk, self.compare)
            row = self.rows.setdefault(key, StoredRow())
            for name, cell in write.cells.items():
                cell_kill = self._cell_kill(key, name)
                if (kill is not None and cell.ts <= kill) or (cell_kill is not None and cell.ts <= cell_kill):
                    continue
                if cell_wins(cell, row.cells.get(name), self.types.get(name, "text")):
                    row.cells[name] = cell
            dead_marker = self._cell_kill(key, MARKER)  # a dead marker: expired, so any live one outlives it
            survives = write.row_ts is not None and (kill is None or write.row_ts > kill) and (
                dead_marker is None or write.row_ts > dead_marker
                or (write.row_ts == dead_marker and marker_live((write.row_ts, write.row_exp), self.now_us)
                    and write.row_exp is not None))
            if survives and (
                    row.row_ts is None
                    or marker_rank(write.row_ts, write.row_exp) > marker_rank(row.row_ts, row.row_exp)):
                row.row_ts, row.row_exp = write.row_ts, write.row_exp
        # 4. remove rows Cassandra does not have; keep their cell deletions and dead marker
        for key in [k for k, r in self.rows.items()
                    if not marker_live(None if r.row_ts is None else (r.row_ts, r.row_exp), self.now_us)
                    and all(c.value is None for c in r.cells.values())]:
            row = self.rows.pop(key)
            for name, cell in row.cells.items():
                self.tombs.append(("cell", key, name, cell.ts))
            if row.row_ts is not None:
                self.tombs.append(("cell", key, MARKER, row.row_ts))

    def _cell_kill(self, key: tuple, name: str) -> int | None:
        times = [t[3] for t in self.tombs if isinstance(t, tuple) and t[1] == key and t[2] == name]
        return max(times) if times else None

    def materialize(self) -> dict[tuple, dict[str, str]]:
        return {key: {n: c.value for n, c in row.cells.items() if c.value is not None}
                for key, row in self.rows.items()}


def apply_in_batches(events: list[ChangeEvent], cuts: list[int], n_pk: int, compare=_int_compare,
                     types: Mapping[str, str] | None = None) -> Target:
    """Reduce ``events`` with the reducer under test, cut into batches at ``cuts``, and apply
    the batches to a :class:`Target`. ``types`` (column → CQL type) also gives the reducer
    the columns' serializers, as the sync worker does."""
    serializers = None
    if types:
        from engine.cassandra_bytes import serializer
        from engine.types import parse_cql_type

        serializers = {name: serializer(parse_cql_type(t)) for name, t in types.items()}
    target = Target(n_pk, compare, dict(types or {}))
    bounds = [0, *sorted(set(c % (len(events) + 1) for c in cuts)), len(events)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        if b > a:
            target.apply(reduce_events(events[a:b], n_pk, compare, serializers))
    return target
