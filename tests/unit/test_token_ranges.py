"""Token-range splitting: the splits cover the whole ring exactly once, for any ring."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.token_ranges import MAX_TOKEN, MIN_TOKEN, TokenSplit, ring_ranges, split_ranges

tokens = st.integers(min_value=MIN_TOKEN + 1, max_value=MAX_TOKEN)


def _covers_ring_once(splits: list[TokenSplit]) -> None:
    ordered = sorted(splits, key=lambda s: s.start)
    assert ordered[0].start == MIN_TOKEN
    assert ordered[-1].end == MAX_TOKEN
    for a, b in zip(ordered, ordered[1:], strict=False):
        assert a.end == b.start, "gap or overlap between splits"
    assert all(s.end > s.start for s in splits)


def test_single_node_ring_with_token_zero():
    assert ring_ranges([0]) == [(MIN_TOKEN, 0), (0, MAX_TOKEN)]


@given(st.lists(tokens, min_size=1, max_size=40), st.integers(min_value=1, max_value=300))
def test_splits_cover_the_ring_exactly_once(ring, pieces):
    ranges = [(a, b, (f"node{i % 3}",)) for i, (a, b) in enumerate(ring_ranges(ring))]
    splits = split_ranges(ranges, pieces)
    _covers_ring_once(splits)
    assert len(splits) >= len(ranges)
    assert [s.index for s in splits] == list(range(len(splits)))


@given(st.lists(tokens, min_size=1, max_size=10), st.integers(min_value=1, max_value=50))
def test_every_split_lies_inside_one_owned_range_and_keeps_its_replicas(ring, pieces):
    ranges = [(a, b, (f"node{i}",)) for i, (a, b) in enumerate(ring_ranges(ring))]
    for s in split_ranges(ranges, pieces):
        owner = [r for r in ranges if r[0] <= s.start and s.end <= r[1]]
        assert len(owner) == 1 and owner[0][2] == s.replicas


def test_pieces_are_interleaved_across_replica_sets():
    ranges = [(MIN_TOKEN, 0, ("a",)), (0, MAX_TOKEN, ("b",))]
    splits = split_ranges(ranges, 8)
    assert [s.replicas[0] for s in splits[:4]] == ["a", "b", "a", "b"]


@given(st.integers(min_value=MIN_TOKEN, max_value=MAX_TOKEN - 2), st.integers(min_value=2, max_value=2**64))
def test_halves_partition_the_split(start, width):
    end = min(MAX_TOKEN, start + width)
    s = TokenSplit(0, start, end)
    lo, hi = s.halves()
    assert lo.start == start and hi.end == end and lo.end == hi.start
    assert all(x.contains(t) for x, t in ((lo, lo.end), (hi, hi.end)))
