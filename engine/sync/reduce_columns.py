"""Reduce a decoded batch per key and cell with Cassandra's rules, column-wise, and build the
staged rows' COPY text from the result (ADR 0010).

Called by :class:`engine.sync.apply.TableApplier` on the columnar path, after
:mod:`engine.sync.decode_columns`; the result goes to :meth:`engine.pg_writer.SyncWriter.apply`.
The rules are :func:`engine.sync.reduce.reduce_events`'s — that per-event function is the oracle
this one is tested against on any events in any order with any duplicates
(``tests/unit/test_reduce_columns.py``):

- per (key, column) the write with the greatest (write time, is a deletion, has a TTL,
  expiry in whole seconds) wins: one numpy ``lexsort`` and the last of each run. A cell
  whose TTL ran out by the batch's clock is a deletion at its write time. Where the winner
  ties another live write on all four, Cassandra compares the serialized values
  (:func:`engine.sync.reduce.wins`): those few groups are folded with ``wins`` itself, in batch
  order (the earlier of two equal writes is kept, as the per-event fold keeps it);
- per key the row marker with the greatest (write time, has a TTL, expiry seconds);
- deletions (row, partition, range) come from the slow lane's events, few per batch: each
  key of a partition that has one is judged by :func:`engine.sync.reduce.kill_ts`, and what it
  covers is dropped (a key left with nothing is dropped; a key never covered stays, even
  empty, as the per-event reducer keeps it).

The staged rows are built as Arrow string columns joined with tabs, so no Python object is
made per row: per key its key texts, values, partition token, ``_c2pg_wt`` and
``_c2pg_exp`` array literals and row marker, in :func:`engine.pg_dialect.target_columns`'s order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.events import Cell, ChangeEvent, Op
from engine.sync.reduce import Tombstone, _tombstone, kill_ts, text_bytes, wins
from engine.schema import TableSchema
from engine.sync.decode_columns import Columns

_NONE = np.iinfo(np.int64).min


def columnar_fits(schema: TableSchema) -> bool:
    """Can the columnar path apply this table? Not when a cell must be read back from
    Cassandra (non-frozen collections and UDTs, durations: :func:`engine.readback.needs_read_back`)
    or the table has static columns (ADR 0007's static rows): the per-event path does those."""
    from engine.readback import needs_read_back

    return not any(c.kind == "static" or needs_read_back(c) for c in schema.regular)


@dataclass(slots=True)
class StagedRows:
    """A reduced batch ready for the writer: ``copy_text`` holds ``rows`` lines of COPY text
    for the stage table; ``tombstones`` as :func:`engine.sync.reduce.reduce_events` gives them."""

    copy_text: bytes
    rows: int
    tombstones: list[Tombstone] = field(default_factory=list)
    max_ts: int | None = None


def _np(a) -> np.ndarray:
    return a.to_numpy(zero_copy_only=False)


def _run_ends(group: np.ndarray) -> np.ndarray:
    """Positions of the last element of each run of equal values (``group`` sorted)."""
    if not len(group):
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[group[1:] != group[:-1], True])


class ColumnReducer:
    """The reducer of one table; build once per schema (with the applier's decoder)."""

    def __init__(self, schema: TableSchema, compare, serializers: Mapping[str, Callable[[str], bytes]],
                 token: Callable[[Sequence[str]], int]):
        self.schema = schema
        self.n_pk = len(schema.partition_key)
        self.n_key = len(schema.primary_key)
        self.compare = compare
        self.regular = [c.name for c in schema.regular if not c.dropped]
        # The stage has every regular column, dropped ones included (always NULL).
        self.staged = [c.name for c in schema.regular]
        self.serializers = {n: serializers.get(n, text_bytes) for n in self.regular}
        self.token = token
        self._tokens: dict[str, int] = {}  # partition text → token, across batches (bounded)

    def reduce(self, cols: Columns, events: Sequence[tuple[int, ChangeEvent]], now_us: int) -> StagedRows:
        """``cols`` (the columnar upserts) and ``events`` (the slow lane's, with their batch
        positions) → the staged rows and the deletions, judged at ``now_us``."""
        ups = [(p, ev) for p, ev in events if ev.op is Op.UPSERT]
        tombs = self._tombstones([ev for _, ev in events if ev.op is not Op.UPSERT])
        nf = len(cols)
        key_cols = [pa.concat_arrays([cols.keys[j].cast(pa.string()),
                                      pa.array([ev.key[j] for _, ev in ups], pa.string())])
                    for j in range(self.n_key)]
        n = nf + len(ups)
        max_ts = None
        if n:
            max_ts = int(max(cols.ts.max() if nf else _NONE, max((ev.ts for _, ev in ups), default=_NONE)))
        if tombs:
            max_ts = max(max_ts if max_ts is not None else _NONE, max(t.ts for t in tombs))
        if not n:
            return StagedRows(b"", 0, tombs, max_ts)
        # Canonical texts are COPY-escaped: a raw tab never occurs, so it joins key parts unambiguously.
        joined = key_cols[0] if self.n_key == 1 else pc.binary_join_element_wise(*key_cols, "\t")
        enc = pc.dictionary_encode(joined)
        key_id = _np(enc.indices).astype(np.int64)
        nkeys = len(enc.dictionary)
        _, first = np.unique(key_id, return_index=True)
        ts = np.concatenate([cols.ts, np.array([ev.ts for _, ev in ups], dtype=np.int64)])
        pos = np.concatenate([cols.pos, np.array([p for p, _ in ups], dtype=np.int64)])

        kill = self._kills(tombs, enc.dictionary, key_cols, first, nkeys)

        values, wts, exps = [], [], []
        for j, name in enumerate(self.regular):
            v, t, x = self._column(j, name, cols, ups, key_id, ts, pos, nkeys, now_us)
            dead = t <= kill                               # covered by a deletion: dropped
            if (dead & (t != _NONE)).any():
                v = pc.if_else(pa.array(dead), pa.scalar(None, pa.string()), v)
            t = np.where(dead, _NONE, t)
            values.append(v)
            wts.append(t)
            exps.append(np.where(dead, _NONE, x))
        row_ts, row_exp = self._markers(cols, ups, key_id, pos, nkeys)
        marker_dead = row_ts <= kill
        row_ts = np.where(marker_dead, _NONE, row_ts)
        row_exp = np.where(marker_dead, _NONE, row_exp)
        keep = np.ones(nkeys, dtype=bool)
        if tombs:
            # A key a deletion covered and left with nothing is not written (the per-event
            # reducer drops it); one never covered stays, even empty.
            empty = row_ts == _NONE
            for t in wts:
                empty &= t == _NONE
            keep = ~((kill != _NONE) & empty)
        return StagedRows(self._copy_text(keep, key_cols, first, values, wts, exps, row_ts, row_exp),
                          int(keep.sum()), tombs, max_ts)

    def tokens(self, partitions: list[str]) -> list[int]:
        """The token of each partition (its key texts joined by tabs), cached: a stream
        touches the same keys again and again. Raises :class:`engine.murmur.TokenError`."""
        cache, out = self._tokens, []
        if len(cache) > 1_000_000:
            cache.clear()
        for p in partitions:
            t = cache.get(p)
            if t is None:
                t = cache[p] = self.token(tuple(p.split("\t")) if self.n_pk > 1 else (p,))
            out.append(t)
        return out

    # -- the parts ----------------------------------------------------------------------

    @staticmethod
    def _tombstones(deletions: list[ChangeEvent]) -> list[Tombstone]:
        by_identity: dict[tuple, Tombstone] = {}
        for ev in deletions:
            t = _tombstone(ev)
            old = by_identity.get(t.identity())
            if old is None or t.ts > old.ts:
                by_identity[t.identity()] = t
        return sorted(by_identity.values(), key=lambda t: (t.kind, t.key, t.ts))

    def _kills(self, tombs: list[Tombstone], keys: pa.Array, key_cols: list[pa.Array], first: np.ndarray,
               nkeys: int) -> np.ndarray:
        """Per key id, the newest deletion covering it (``_NONE``: none)."""
        kill = np.full(nkeys, _NONE, dtype=np.int64)
        if not tombs:
            return kill
        # Deletions of one exact key (every row deletion; a partition deletion where a
        # partition is one row): looked up by key text, no per-key Python.
        exact = [t for t in tombs if t.kind == "row" or (t.kind == "partition" and self.n_pk == self.n_key)]
        if exact:
            ids = pc.index_in(pa.array(["\t".join(t.key) for t in exact], pa.string()), value_set=keys)
            found = ~_np(ids.is_null())
            np.maximum.at(kill, _np(ids.fill_null(0)).astype(np.int64)[found],
                          np.array([t.ts for t in exact], dtype=np.int64)[found])
        wide = [t for t in tombs if t.kind != "row" and self.n_pk != self.n_key]
        if not wide:
            return kill
        # Partition and range deletions of tables with clustering columns: each key of such a
        # partition is judged by kill_ts, the per-event reducer's own function (few per batch).
        by_partition: dict[tuple[str, ...], list[Tombstone]] = {}
        for t in tombs:
            by_partition.setdefault(t.key[: self.n_pk], []).append(t)
        part_cols = [k.take(pa.array(first)) for k in key_cols[: self.n_pk]]
        partitions = part_cols[0] if self.n_pk == 1 else pc.binary_join_element_wise(*part_cols, "\t")
        wanted = pa.array(sorted({"\t".join(t.key[: self.n_pk]) for t in wide}), pa.string())
        hit = np.flatnonzero(_np(pc.is_in(partitions, value_set=wanted)))
        for i in hit:
            key = tuple(keys[int(i)].as_py().split("\t"))
            k = kill_ts(key, by_partition[key[: self.n_pk]], self.n_pk, self.compare)
            if k is not None:
                kill[i] = max(kill[i], k)
        return kill

    def _column(self, j: int, name: str, cols: Columns, ups, key_id, ts, pos, nkeys: int, now_us: int):
        """One regular column's winner per key id: (value texts, write time, expiry), with
        ``_NONE`` (and a null value) where the batch did not write the cell."""
        nf = len(cols)
        written, value, expires = cols.cells[j]
        idx = np.flatnonzero(written)
        vals = [value.take(pa.array(idx))]
        exp = [_np(expires.take(pa.array(idx)).fill_null(_NONE))]
        at = [idx]
        slow_at, slow_vals, slow_exp = [], [], []
        for i, (_, ev) in enumerate(ups):
            for cname, cell in ev.cells:
                if cname == name:
                    slow_at.append(nf + i)
                    slow_vals.append(cell.value)
                    slow_exp.append(_NONE if cell.expires_us is None else cell.expires_us)
        if slow_at:
            at.append(np.array(slow_at, dtype=np.int64))
            vals.append(pa.array(slow_vals, pa.string()))
            exp.append(np.array(slow_exp, dtype=np.int64))
        rows = np.concatenate(at)
        values = pa.concat_arrays(vals)
        x = np.concatenate(exp)
        has_exp = x != _NONE
        # Dead on arrival: a live value whose TTL ran out by the batch's clock is a deletion at
        # its write time (engine.sync.reduce.dead_on_arrival).
        is_del = _np(values.is_null())
        doa = has_exp & ~is_del & (x <= now_us)
        if doa.any():
            values = pc.if_else(pa.array(doa), pa.scalar(None, pa.string()), values)
            is_del |= doa
        has_exp &= ~is_del
        x = np.where(has_exp, x, _NONE)
        exp_s = np.where(has_exp, x // 1_000_000, 0)
        k, t, p = key_id[rows], ts[rows], pos[rows]
        o = np.lexsort((-p, exp_s, has_exp, is_del, t, k))
        ends = _run_ends(k[o])
        win = o[ends]
        # Live writes tied with the winner on everything but the value: Cassandra's bytes
        # decide (wins), in batch order. Equal values (the same write seen again: RF
        # duplicates, a replay) need no fold, the earliest already sorts last.
        if len(o) > 1:
            ks = k[o]
            same = ((ks[1:] == ks[:-1]) & (t[o][1:] == t[o][:-1]) & (is_del[o][1:] == is_del[o][:-1])
                    & (has_exp[o][1:] == has_exp[o][:-1]) & (exp_s[o][1:] == exp_s[o][:-1]) & ~is_del[o][1:])
            differ = same
            if same.any():  # the values are compared only when some writes tie on everything else
                vs = values.take(pa.array(o))
                differ = same & ~_np(pc.equal(vs[1:], vs[:-1]).fill_null(False))
            if differ.any():
                win = win.copy()
                serialize = self.serializers[name]
                for e in ends[(ends > 0) & same[np.maximum(ends - 1, 0)]]:
                    lo = e
                    while lo > 0 and same[lo - 1]:
                        lo -= 1
                    if not differ[lo:e].any():
                        continue
                    best: tuple[int, Cell] | None = None
                    for r in sorted(o[lo:e + 1], key=lambda r: p[r]):
                        cell = Cell(values[int(r)].as_py(), int(t[r]), int(x[r]) if has_exp[r] else None)
                        if best is None or wins(cell, best[1], serialize):
                            best = (int(r), cell)
                    assert best is not None
                    win[np.searchsorted(ends, e)] = best[0]
        out_idx = np.full(nkeys, -1, dtype=np.int64)
        out_idx[k[win]] = win
        missing = out_idx < 0
        v = values.take(pa.array(out_idx, mask=missing))
        return (v, np.where(missing, _NONE, t[np.maximum(out_idx, 0)]) if len(t) else np.full(nkeys, _NONE),
                np.where(missing, _NONE, x[np.maximum(out_idx, 0)]) if len(x) else np.full(nkeys, _NONE))

    def _markers(self, cols: Columns, ups, key_id, pos, nkeys: int) -> tuple[np.ndarray, np.ndarray]:
        nf = len(cols)
        fast = np.flatnonzero(cols.marker)
        slow = [(nf + i, ev) for i, (_, ev) in enumerate(ups) if ev.row_marker]
        rows = np.concatenate([fast, np.array([r for r, _ in slow], dtype=np.int64)])
        ts = np.concatenate([cols.ts[fast], np.array([ev.ts for _, ev in slow], dtype=np.int64)])
        has = np.concatenate([cols.marker_has_exp[fast],
                              np.array([ev.marker_expires_us is not None for _, ev in slow], dtype=bool)])
        exp = np.concatenate([cols.marker_exp[fast], np.array([ev.marker_expires_us or 0 for _, ev in slow],
                                                              dtype=np.int64)])
        row_ts = np.full(nkeys, _NONE, dtype=np.int64)
        row_exp = np.full(nkeys, _NONE, dtype=np.int64)
        if not len(rows):
            return row_ts, row_exp
        k, p = key_id[rows], pos[rows]
        o = np.lexsort((-p, np.where(has, exp // 1_000_000, 0), has, ts, k))
        win = o[_run_ends(k[o])]
        row_ts[k[win]] = ts[win]
        row_exp[k[win]] = np.where(has[win], exp[win], _NONE)
        return row_ts, row_exp

    def _copy_text(self, keep, key_cols, first, values, wts, exps, row_ts, row_exp) -> bytes:
        rows = np.flatnonzero(keep)
        if not len(rows):
            return b""
        take = pa.array(rows)
        at = pa.array(first[rows])
        keys = [k.take(at) for k in key_cols]
        partition = keys[: self.n_pk]
        # The token per distinct partition (murmur3 of its serialized key).
        part_text = partition[0] if self.n_pk == 1 else pc.binary_join_element_wise(*partition, "\t")
        penc = pc.dictionary_encode(part_text)
        tokens = np.array(self.tokens(penc.dictionary.to_pylist()), dtype=np.int64)
        token = pa.array(tokens[_np(penc.indices)]).cast(pa.string())

        def as_text(a: np.ndarray) -> pa.Array:
            return pa.array(a, pa.int64(), mask=a == _NONE).cast(pa.string())

        by_name = dict(zip(self.regular, range(len(self.regular)), strict=True))
        fields: list[pa.Array] = list(keys)
        wt_parts, exp_parts = [], []
        any_exp = np.zeros(len(rows), dtype=bool)
        for name in self.staged:
            j = by_name.get(name)
            if j is None:                                   # a dropped column: always NULL
                fields.append(pa.nulls(len(rows), pa.string()))
                wt_parts.append(pa.scalar("NULL"))
                exp_parts.append(pa.scalar("NULL"))
                continue
            fields.append(values[j].take(take))
            wt_parts.append(as_text(wts[j][rows]).fill_null("NULL"))
            e = exps[j][rows]
            any_exp |= e != _NONE
            exp_parts.append(as_text(e).fill_null("NULL"))
        fields.append(token)
        if wt_parts:
            wt = pc.binary_join_element_wise(*wt_parts, ",")
            ex = pc.binary_join_element_wise(*exp_parts, ",")
            fields.append(pc.binary_join_element_wise("{", wt, "}", ""))
            fields.append(pc.if_else(pa.array(any_exp), pc.binary_join_element_wise("{", ex, "}", ""),
                                     pa.scalar(None, pa.string())))
        else:
            fields.append(pa.array(["{}"] * len(rows), pa.string()))
            fields.append(pa.nulls(len(rows), pa.string()))
        fields.append(as_text(row_ts[rows]))
        fields.append(as_text(row_exp[rows]))
        line = pc.binary_join_element_wise(*fields, "\t", null_handling="replace", null_replacement="\\N")
        line = pc.binary_join_element_wise(line, "", "\n")
        if isinstance(line, pa.ChunkedArray):
            line = line.combine_chunks()
        offsets = np.frombuffer(line.buffers()[1], dtype=np.int32)[line.offset: line.offset + len(line) + 1]
        return line.buffers()[2].to_pybytes()[offsets[0]: offsets[-1]]
