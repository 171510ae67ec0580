"""Splitting the Murmur3 token ring into read splits that follow the cluster's ownership.

Callers: the snapshot job and reconcile, on the driver, before any task runs. A split is
``(start, end]`` in token space, never wrapping, with the replicas that own it; reads of a
split go to those replicas. The real ranges come from the driver's token map; each is cut
into pieces of about the target size (from ``system.size_estimates``), and the pieces are
interleaved across replica sets so concurrent tasks spread over nodes (as DSBulk and the
Spark connector do).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass

MIN_TOKEN = -(2**63)  # Murmur3 never assigns it: (MIN_TOKEN, x] covers the ring's start
MAX_TOKEN = 2**63 - 1
# A table with fewer rows than this is read by one task per owned range: starting a Ray
# worker process (imports, connections) costs more than reading it (docs/snapshot.md,
# "Splits").
SMALL_TABLE_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class TokenSplit:
    """Tokens ``start < token(pk) <= end`` (``start`` exclusive), owned by ``replicas``."""

    index: int
    start: int
    end: int
    replicas: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return self.end - self.start

    def halves(self) -> tuple[TokenSplit, TokenSplit]:
        """Two splits covering this one: used when a range keeps timing out."""
        mid = self.start + self.width // 2
        return (TokenSplit(self.index, self.start, mid, self.replicas),
                TokenSplit(self.index, mid, self.end, self.replicas))

    def contains(self, token: int) -> bool:
        return self.start < token <= self.end


def ring_ranges(tokens: list[int]) -> list[tuple[int, int]]:
    """The owned ranges ``(previous token, token]`` of a sorted ring, the wrapping one cut in
    two at the ring's end so that no range wraps."""
    tokens = sorted(set(tokens))
    if not tokens:
        return [(MIN_TOKEN, MAX_TOKEN)]
    out = [(tokens[i - 1], tokens[i]) for i in range(1, len(tokens))]
    out.append((tokens[-1], MAX_TOKEN))  # the wrap: after the last token up to the ring's end
    if tokens[0] != MIN_TOKEN:
        out.insert(0, (MIN_TOKEN, tokens[0]))  # ... and from the ring's start to the first
    return [(a, b) for a, b in out if b > a]


def split_ranges(ranges: list[tuple[int, int, tuple[str, ...]]], pieces: int) -> list[TokenSplit]:
    """Cut ``ranges`` into about ``pieces`` splits in proportion to their width (every range
    at least one), then interleave by replica set."""
    total = sum(b - a for a, b, _ in ranges)
    by_replicas: dict[tuple[str, ...], list[tuple[int, int]]] = defaultdict(list)
    for a, b, replicas in ranges:
        n = max(1, round(pieces * (b - a) / total)) if total else 1
        step = (b - a) / n
        bounds = [a + int(step * i) for i in range(n)] + [b]
        for lo, hi in itertools.pairwise(bounds):
            if hi > lo:
                by_replicas[replicas].append((lo, hi))
    # Interleave: the 1st piece of each replica set, then the 2nd of each, ...
    queues = [sorted(v) for _, v in sorted(by_replicas.items())]
    keys = [k for k, _ in sorted(by_replicas.items())]
    out: list[TokenSplit] = []
    for i in range(max((len(q) for q in queues), default=0)):
        for key, q in zip(keys, queues, strict=True):
            if i < len(q):
                out.append(TokenSplit(len(out), q[i][0], q[i][1], key))
    return out


def plan_splits(cluster, keyspace: str, table: str, *, split_size_mb: int, min_splits: int,
                splits: int | None = None) -> list[TokenSplit]:
    """Splits for ``keyspace.table`` from the live cluster's token map and size estimates.

    ``splits`` forces a count; otherwise the count is the table's estimated size over
    ``split_size_mb``, at least ``min_splits`` and at least one per owned range. When the
    estimate would leave ``min_splits`` to decide (a small table, or a new one that has no
    estimate yet), a bounded count of its rows decides instead: a table of fewer than
    :data:`SMALL_TABLE_ROWS` rows gets one split per owned range, because every further
    split is a further worker process to start for a few rows.
    """
    from cassandra.metadata import Murmur3Token

    token_map = cluster.metadata.token_map
    ring = [t.value for t in token_map.ring] if token_map else []
    ranges = []
    for a, b in ring_ranges(ring):
        replicas = tuple(sorted(str(h.address) for h in token_map.get_replicas(keyspace, Murmur3Token(b))))\
            if token_map else ()
        ranges.append((a, b, replicas))
    if splits is None:
        by_size = math.ceil(estimated_table_bytes(cluster, keyspace, table) / (split_size_mb * 1024 * 1024))
        if by_size < min_splits and has_fewer_rows(cluster, keyspace, table, SMALL_TABLE_ROWS):
            min_splits = 1
        splits = max(min_splits, by_size, len(ranges))
    return split_ranges(ranges, max(splits, len(ranges)))


def has_fewer_rows(cluster, keyspace: str, table: str, limit: int) -> bool:
    """Whether ``keyspace.table`` holds fewer than ``limit`` rows: reads at most ``limit``
    rows' partition keys (one page), so its cost is bounded whatever the table's size. A
    table the driver's metadata does not know counts as large (the caller keeps its
    default)."""
    from engine.cassandra_source import _cql_ident  # here: cassandra_source imports this module

    meta = cluster.metadata.keyspaces.get(keyspace)
    table_meta = meta.tables.get(table) if meta else None
    if table_meta is None or not table_meta.partition_key:
        return False
    columns = ", ".join(_cql_ident(c.name) for c in table_meta.partition_key)
    quoted = f"{_cql_ident(keyspace)}.{_cql_ident(table)}"
    session = cluster.connect()
    try:
        session.default_fetch_size = limit
        rows = session.execute(f"SELECT {columns} FROM {quoted} LIMIT {int(limit)}")  # nosec B608 - quoted names
        return sum(1 for _ in itertools.islice(rows, limit)) < limit
    finally:
        session.shutdown()


def estimated_table_bytes(cluster, keyspace: str, table: str) -> int:
    """``system.size_estimates`` of every node (mean partition size × partitions), summed.

    Estimates are refreshed every few minutes and are 0 for a new table; the caller's
    ``min_splits`` covers that.
    """
    session = cluster.connect()
    try:
        rows = session.execute("SELECT mean_partition_size, partitions_count FROM system.size_estimates "
                               "WHERE keyspace_name = %s AND table_name = %s", (keyspace, table))
        return sum((r.mean_partition_size or 0) * (r.partitions_count or 0) for r in rows)
    finally:
        session.shutdown()
