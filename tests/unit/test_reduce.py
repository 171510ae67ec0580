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
from engine.reduce import Tombstone, in_range, reduce_events, wins
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


def reference(evs, compare=None) -> dict:
    model = Cassandra(n_pk=1) if compare is None else Cassandra(n_pk=1, compare=compare)
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
