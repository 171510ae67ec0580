"""The replication contract as properties: order and multiplicity of events do not matter.

For any set of events on a small key space (so keys, timestamps and ranges collide often),
reducing them in batches and applying the batches to the PostgreSQL model gives exactly
what the Cassandra reference model materializes — whatever the order, the batching and the
duplicates (tests/unit/lww_model.py explains both models).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.events import Bound, Cell, ChangeEvent, Op
from engine.sync.reduce import Tombstone, in_range, reduce_events, typed_compare, wins
from tests.unit.lww_model import Cassandra, Target, apply_in_batches

PKS, CKS, COLS = ["1", "2"], ["1", "2", "3", "4"], ["a", "b", "c"]
ts = st.integers(min_value=1, max_value=12)  # few values: ties happen
values = st.one_of(st.none(), st.sampled_from(["x", "y", "z", "é", ""]))


@st.composite
def events(draw) -> ChangeEvent:
    kind = draw(st.sampled_from(["upsert", "upsert", "upsert", "row", "partition", "range"]))
    pk, t = draw(st.sampled_from(PKS)), draw(ts)
    if kind == "upsert":
        cols = draw(st.lists(st.sampled_from(COLS), unique=True, max_size=3))
        cells = tuple((c, Cell(draw(values), t)) for c in sorted(cols))
        return ChangeEvent("ks", "t", Op.UPSERT, t, (pk, draw(st.sampled_from(CKS))), cells,
                           row_marker=draw(st.booleans()))
    if kind == "row":
        return ChangeEvent("ks", "t", Op.ROW_DELETE, t, (pk, draw(st.sampled_from(CKS))))
    if kind == "partition":
        return ChangeEvent("ks", "t", Op.PARTITION_DELETE, t, (pk,))
    start = draw(st.one_of(st.none(), st.builds(Bound, st.tuples(st.sampled_from(CKS)), st.booleans())))
    end = draw(st.one_of(st.none(), st.builds(Bound, st.tuples(st.sampled_from(CKS)), st.booleans())))
    return ChangeEvent("ks", "t", Op.RANGE_DELETE, t, (pk,), range_start=start, range_end=end)


def reference(evs, compare=None, now_us=None) -> dict:
    model = Cassandra(n_pk=1, now_us=now_us) if compare is None else Cassandra(n_pk=1, compare=compare, now_us=now_us)
    for e in evs:
        model.apply(e)
    return model.materialize()


@settings(max_examples=400, deadline=None)
@given(st.lists(events(), max_size=25), st.lists(st.integers(min_value=0, max_value=30), max_size=6))
def test_batches_applied_in_order_equal_the_reference(evs, cuts):
    assert apply_in_batches(evs, cuts, 1).materialize() == reference(evs)


@settings(max_examples=400, deadline=None)
@given(st.lists(events(), max_size=25), st.randoms(use_true_random=False),
       st.lists(st.integers(min_value=0, max_value=30), max_size=6), st.integers(min_value=0, max_value=10))
def test_any_order_and_duplicates_give_the_same_table(evs, rnd, cuts, dups):
    shuffled = evs + [rnd.choice(evs) for _ in range(dups)] if evs else []
    rnd.shuffle(shuffled)
    assert apply_in_batches(shuffled, cuts, 1).materialize() == reference(evs)


@settings(max_examples=200, deadline=None)
@given(st.lists(events(), max_size=20), st.lists(st.integers(min_value=0, max_value=30), max_size=4))
def test_replaying_everything_again_changes_nothing(evs, cuts):
    target = apply_in_batches(evs, cuts, 1)
    before = target.materialize()
    target.apply(reduce_events(evs, 1, lambda i, a, b: (int(a) > int(b)) - (int(a) < int(b))))
    assert target.materialize() == before


def test_a_late_older_write_after_a_delete_does_not_resurrect_and_a_newer_one_does():
    insert = ChangeEvent("ks", "t", Op.UPSERT, 10, ("1", "1"), (("a", Cell("x", 10)),), row_marker=True)
    delete = ChangeEvent("ks", "t", Op.ROW_DELETE, 20, ("1", "1"))
    late_older = ChangeEvent("ks", "t", Op.UPSERT, 15, ("1", "1"), (("a", Cell("old", 15)),), row_marker=True)
    newer = ChangeEvent("ks", "t", Op.UPSERT, 25, ("1", "1"), (("b", Cell("new", 25)),))
    target = Target(n_pk=1)
    for batch in ([insert], [delete], [late_older]):
        target.apply(reduce_events(batch, 1))
    assert target.materialize() == {}
    target.apply(reduce_events([newer], 1))
    assert target.materialize() == {("1", "1"): {"b": "new"}}


def test_a_cell_deletion_outlives_its_row_against_older_writes():
    """UPDATE a = null on a row without a marker removes the row; an older write to a that
    arrives later must still lose (the deletion is kept as a cell tombstone)."""
    set_a = ChangeEvent("ks", "t", Op.UPSERT, 5, ("1", "1"), (("a", Cell("x", 5)),))
    null_a = ChangeEvent("ks", "t", Op.UPSERT, 10, ("1", "1"), (("a", Cell(None, 10)),))
    older = ChangeEvent("ks", "t", Op.UPSERT, 7, ("1", "1"), (("a", Cell("older", 7)),))
    target = Target(n_pk=1)
    for batch in ([set_a], [null_a], [older]):
        target.apply(reduce_events(batch, 1))
    assert target.materialize() == {} == reference([set_a, null_a, older])


def test_tie_rules():
    assert wins(Cell(None, 5), Cell("x", 5)) and not wins(Cell("x", 5), Cell(None, 5))
    assert wins(Cell("y", 5), Cell("x", 5)) and not wins(Cell("x", 5), Cell("y", 5))
    assert wins(Cell("a", 6), Cell("z", 5)) and not wins(Cell("z", 4), Cell("a", 5))


def test_range_bounds_are_prefixes_with_inclusivity():
    cmp = lambda i, a, b: (int(a) > int(b)) - (int(a) < int(b))  # noqa: E731
    r = (Bound(("1",), False), Bound(("5",), True))  # the range_delete fixture: ck > 1 AND ck <= 5
    assert [c for c in ("1", "2", "5", "6", "10") if in_range((c,), *r, cmp)] == ["2", "5"]
    assert in_range(("3",), None, None, cmp)


def test_reduce_keeps_the_newest_of_each_deletion():
    a = ChangeEvent("ks", "t", Op.PARTITION_DELETE, 5, ("1",))
    b = ChangeEvent("ks", "t", Op.PARTITION_DELETE, 9, ("1",))
    assert reduce_events([b, a, b], 1).tombstones == [Tombstone("partition", ("1",), 9)]


# --- Cassandra's tie rule (Cells.resolveRegular): TTL, expiry, then unsigned serialized bytes ---

def _int_bytes(text: str) -> bytes:
    from cassandra.cqltypes import Int32Type  # the oracle: the driver's own serializer

    return Int32Type.serialize(int(text), 4)


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1), st.integers(1, 5))
def test_at_equal_time_the_greater_unsigned_serialized_value_wins(a, b, t):
    from engine.cassandra_bytes import serializer
    from engine.types import parse_cql_type

    ser = serializer(parse_cql_type("int"))
    new, old = Cell(str(a), t), Cell(str(b), t)
    assert wins(new, old, ser) == (_int_bytes(str(a)) > _int_bytes(str(b)))
    # Exactly one of two different values wins, whichever arrives first.
    assert a == b or wins(new, old, ser) != wins(old, new, ser)


def test_the_issue_cassandra_kept_10_over_9_and_minus_1_over_1():
    from engine.cassandra_bytes import column_serializers
    from engine.schema import Column, TableSchema
    from engine.types import parse_cql_type

    schema = TableSchema("ks", "t", (Column("pk", "partition_key", 0, parse_cql_type("int")),), (),
                         (Column("a", "regular", -1, parse_cql_type("int")),
                          Column("b", "regular", -1, parse_cql_type("bigint"))), True)
    sers = column_serializers(schema)
    for first, second, kept in (("9", "10", "10"), ("1", "-1", "-1")):
        for order in ((first, second), (second, first)):
            evs = [ChangeEvent("ks", "t", Op.UPSERT, 7, ("1",), (("a", Cell(v, 7)), ("b", Cell(v, 7)))) for v in order]
            row = reduce_events(evs, 1, None, sers).rows[("1",)]
            assert row.cells["a"].value == row.cells["b"].value == kept
    # Without the column types the old text order would keep 9 and 1: that was the bug.
    assert not wins(Cell("10", 7), Cell("9", 7))


def test_at_equal_time_a_ttl_beats_no_ttl_and_the_later_expiry_wins_before_values():
    assert wins(Cell("a", 5, expires_us=9_000_000), Cell("z", 5))
    assert not wins(Cell("z", 5), Cell("a", 5, expires_us=9_000_000))
    assert wins(Cell("a", 5, expires_us=10_000_000), Cell("z", 5, expires_us=9_000_000))
    # Expiries in the same second (Cassandra's local deletion time has seconds): the value decides.
    assert wins(Cell("z", 5, expires_us=9_000_001), Cell("a", 5, expires_us=9_999_999))
    assert not wins(Cell("a", 5, expires_us=9_999_999), Cell("z", 5, expires_us=9_000_001))
    # A deletion still beats a value with a TTL.
    assert wins(Cell(None, 5), Cell("a", 5, expires_us=9_000_000))


# --- A cell dead on arrival is a deletion at its write time (Cassandra: an expired cell reads
# as a tombstone of the same timestamp; rule 5) ---

NOW = 5_000_000  # the batch's clock (µs); expiries in whole seconds around it
expiries = st.sampled_from([None, None, 3_000_000, 5_000_000, 6_000_000, 8_000_000])


def expired(value: str, t: int, exp: int = NOW - 1_000_000) -> Cell:
    return Cell(value, t, expires_us=exp)


def _cell_after(evs, now_us=NOW) -> Cell:
    return reduce_events(evs, 1, now_us=now_us).rows[("1", "1")].cells["a"]


def _up(cell: Cell) -> ChangeEvent:
    return ChangeEvent("ks", "t", Op.UPSERT, cell.ts, ("1", "1"), (("a", cell),))


def test_an_expired_cell_beats_an_older_live_value_as_a_deletion_at_its_timestamp():
    for order in ((Cell("old", 5), expired("ttl", 10)), (expired("ttl", 10), Cell("old", 5))):
        assert _cell_after([_up(c) for c in order]) == Cell(None, 10)


def test_an_expired_cell_loses_to_a_newer_write():
    for order in ((Cell("new", 15), expired("ttl", 10)), (expired("ttl", 10), Cell("new", 15))):
        assert _cell_after([_up(c) for c in order]) == Cell("new", 15)
    newer_deletion = Cell(None, 15)
    assert _cell_after([_up(expired("ttl", 10)), _up(newer_deletion)]) == newer_deletion


def test_at_an_equal_timestamp_an_expired_cell_beats_a_live_one_whatever_its_ttl():
    for live in (Cell("zzz", 10), Cell("zzz", 10, expires_us=NOW + 3_600_000_000)):
        for order in ((live, expired("a", 10)), (expired("a", 10), live)):
            assert _cell_after([_up(c) for c in order]) == Cell(None, 10)


def test_a_cell_is_dead_at_its_expiry_and_live_just_before():
    assert _cell_after([_up(expired("x", 10, exp=NOW))]) == Cell(None, 10)
    live = expired("x", 10, exp=NOW + 1)
    assert _cell_after([_up(live)]) == live, "written live with its expiry; the TTL sweep expires it"
    assert _cell_after([_up(expired("x", 10))], now_us=None) == expired("x", 10), "no clock: nothing judged"


def test_a_row_whose_only_cells_arrive_dead_keeps_them_as_deletions():
    """The writer removes such a row (no live cell, no marker) and keeps the cell deletions,
    so an older write arriving later still loses (lww_model.Target, step 4)."""
    target = Target(n_pk=1)
    target.apply(reduce_events([_up(expired("ttl", 10))], 1, now_us=NOW))
    assert target.materialize() == {} and ("cell", ("1", "1"), "a", 10) in target.tombs
    target.apply(reduce_events([_up(Cell("older", 7))], 1, now_us=NOW))
    assert target.materialize() == {}
    target.apply(reduce_events([_up(Cell("newer", 11))], 1, now_us=NOW))
    assert target.materialize() == {("1", "1"): {"a": "newer"}}


@st.composite
def ttl_events(draw) -> ChangeEvent:
    """:func:`events` with one expiry per write, some at or before :data:`NOW`, as a
    statement ``USING TTL`` gives it: on its live cells and, for an INSERT, on its row marker
    (the connector's event carries it on the cells; the decoder copies it to the marker)."""
    ev = draw(events())
    if ev.op is not Op.UPSERT:
        return ev
    exp = draw(expiries)
    cells = tuple((n, c if c.value is None else Cell(c.value, c.ts, exp)) for n, c in ev.cells)
    return ChangeEvent(ev.keyspace, ev.table, ev.op, ev.ts, ev.key, cells, row_marker=ev.row_marker,
                       marker_expires_us=exp if ev.row_marker else None)


def as_deletions(evs, now_us=NOW) -> list[ChangeEvent]:
    """The specification, written out: every cell expired at ``now_us`` replaced by a
    deletion at its write time (what Cassandra reads it as)."""
    out = []
    for e in evs:
        cells = tuple((n, Cell(None, c.ts) if c.expires_us is not None and c.expires_us <= now_us else c)
                      for n, c in e.cells)
        out.append(ChangeEvent(e.keyspace, e.table, e.op, e.ts, e.key, cells, e.row_marker,
                               e.range_start, e.range_end, marker_expires_us=e.marker_expires_us))
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(ttl_events(), max_size=25), st.randoms(use_true_random=False),
       st.lists(st.integers(min_value=0, max_value=30), max_size=6), st.integers(min_value=0, max_value=10))
def test_replayed_expired_cells_in_any_order_and_batching_read_as_deletions(evs, rnd, cuts, dups):
    shuffled = evs + [rnd.choice(evs) for _ in range(dups)] if evs else []
    rnd.shuffle(shuffled)
    cmp = lambda i, a, b: (int(a) > int(b)) - (int(a) < int(b))  # noqa: E731
    target = Target(n_pk=1, now_us=NOW)
    bounds = [0, *sorted({c % (len(shuffled) + 1) for c in cuts}), len(shuffled)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        if b > a:
            target.apply(reduce_events(shuffled[a:b], 1, cmp, now_us=NOW))
    # Expired cells read as deletions; an expired row marker keeps no row.
    assert target.materialize() == reference(as_deletions(evs), now_us=NOW)
    # No value that is dead at NOW is ever staged as a live value.
    for row in reduce_events(shuffled, 1, cmp, now_us=NOW).rows.values():
        assert all(c.value is None or c.expires_us is None or c.expires_us > NOW for c in row.cells.values())


def _insert(t: int, exp: int | None = None) -> ChangeEvent:
    return ChangeEvent("ks", "t", Op.UPSERT, t, ("1", "1"), (), row_marker=True, marker_expires_us=exp)


def test_row_markers_resolve_as_cassandra_liveness_does():
    """LivenessInfo.supersedes: newer time; at an equal time TTL over none, later expiry
    (whole seconds) — in any order of arrival."""
    cases = [
        ([_insert(10), _insert(9, 8_000_000)], (10, None)),
        ([_insert(10), _insert(10, 3_000_000)], (10, 3_000_000)),  # a TTL wins the tie, dead or not
        ([_insert(10, 3_000_000), _insert(10, 8_000_000)], (10, 8_000_000)),
    ]
    for evs, want in cases:
        for order in (evs, evs[::-1]):
            row = reduce_events(order, 1, now_us=NOW).rows[("1", "1")]
            assert (row.row_ts, row.row_exp) == want, order
    # Expiries within one second are equal to Cassandra: the marker held stays.
    for first, second in ((8_000_000, 8_400_000), (8_400_000, 8_000_000)):
        row = reduce_events([_insert(10, first), _insert(10, second)], 1, now_us=NOW).rows[("1", "1")]
        assert row.row_exp == first


def test_an_insert_dead_on_arrival_keeps_no_row_and_shadows_an_older_insert():
    target = Target(n_pk=1, now_us=NOW)
    target.apply(reduce_events([_insert(10, exp=NOW - 1_000_000)], 1, now_us=NOW))
    assert target.materialize() == {} and ("cell", ("1", "1"), "_c2pg_row_ts", 10) in target.tombs
    target.apply(reduce_events([_insert(9)], 1, now_us=NOW))
    assert target.materialize() == {}, "the older INSERT loses to the expired newer one"
    target.apply(reduce_events([_insert(11)], 1, now_us=NOW))
    assert target.materialize() == {("1", "1"): {}}


def test_inet_clustering_values_compare_by_address_bytes_as_in_cassandra():
    from engine.schema import Column, TableSchema
    from engine.types import parse_cql_type

    schema = TableSchema("ks", "t", (Column("pk", "partition_key", 0, parse_cql_type("int")),),
                         (Column("ck", "clustering", 0, parse_cql_type("inet")),), (), True)
    compare = typed_compare(schema)
    ordered = ["::1", "10.0.0.1", "10.0.0.9", "10.0.0.10", "192.168.0.1", "fe80::1"]  # InetAddressType: bytes
    for a, b in zip(ordered, ordered[1:]):
        assert compare(0, a, b) < 0 and compare(0, b, a) > 0
