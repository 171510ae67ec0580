"""Reconcile's pure parts: digest texts, the merge-join's classification, the live-traffic
rule and the report (the re-check's verdicts and the repair's decisions:
test_reconcile_honest.py). (Against the real servers: tests/integration/test_reconcile.py,
test_reconcile_honest.py and test_digest.py.)"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from engine import digest
from engine.cassandra_source import _column_converter
from engine.reconcile import Diff, _Rows, diff_rows
from engine.reconcile_report import drift_svg, render_html
from engine.schema import Column, TableSchema
from engine.types import codec, parse_cql_type


def _schema() -> TableSchema:
    def t(s: str):
        return parse_cql_type(s, {})

    return TableSchema("ks", "t", (Column("pk", "partition_key", 0, t("int")),),
                       (Column("ck", "clustering", 0, t("int")),),
                       (Column("a", "regular", -1, t("text")), Column("m", "regular", -1, t("map<text, int>"))),
                       cdc=True)


def _c(token, key, a, m, wts=(10, 10)):
    rows = _Rows(_schema())
    texts = [*key, a, m]
    from engine.reconcile import _Row

    return rows, _Row(token, tuple(key), texts, list(wts), [None, None])


def _p(token, key, a, m, wts=(10, 10), row_ts=None):
    from engine.reconcile import _Row

    return _Row(token, tuple(key), [*key, a, m], list(wts), [None, None], row_ts)


def test_the_merge_join_classifies_missing_extra_and_mismatch_with_columns():
    rows, c1 = _c(1, ("1", "1"), "x", '{"k":1}')
    _, c2 = _c(2, ("2", "1"), "y", None)
    _, c3 = _c(3, ("3", "1"), "same", None)
    p2 = _p(2, ("2", "1"), "changed", '{"k": 1}', wts=(10, 20))
    p3 = _p(3, ("3", "1"), "same", None)
    p4 = _p(4, ("4", "1"), "extra", None, wts=(5, None), row_ts=7)
    diffs = diff_rows(rows, 0, [c1, c2, c3], [p2, p3, p4])
    assert [(d.kind, d.key, d.columns) for d in diffs] == [
        ("missing", ("1", "1"), ()), ("mismatch", ("2", "1"), ("a", "m")), ("extra", ("4", "1"), ())]
    assert diffs[1].detail["a"] == {"cassandra": "y", "postgres": "changed", "cassandra_wt": 10, "postgres_wt": 10}
    assert diffs[1].postgres_wt == 20 and diffs[2].postgres_wt == 7 and diffs[0].cassandra_wt == 10


def test_a_difference_is_live_when_either_side_was_written_at_or_after_the_run_start():
    assert Diff(0, 1, ("1",), "mismatch", cassandra_wt=100, postgres_wt=50).live(100)
    assert Diff(0, 1, ("1",), "extra", postgres_wt=100).live(100)
    assert not Diff(0, 1, ("1",), "missing", cassandra_wt=99).live(100)
    assert not Diff(0, 1, ("1",), "extra").live(100)


def test_jsonb_text_prints_like_postgres():
    # Outputs taken from PostgreSQL 15 (SELECT '<canonical>'::jsonb::text).
    assert digest.jsonb_text('{"street":"Main","zip":12345}') == '{"zip": 12345, "street": "Main"}'
    assert digest.jsonb_text('[{"a":1},{}]') == '[{"a": 1}, {}]'
    assert digest.jsonb_text('[1,"x","1969-07-20T20:17:40.123Z",1.000000000000000000000000000001,null]') == \
        '[1, "x", "1969-07-20T20:17:40.123Z", 1.000000000000000000000000000001, null]'
    assert digest.jsonb_text('{"t":"tab\\\\tq\\\\"","é":true}') == '{"t": "tab\\\\tq\\\\"", "é": true}'


_keys = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=8)


@settings(deadline=None)  # a loaded CI machine once took over the 200 ms default on one example
@given(st.dictionaries(_keys, st.one_of(st.integers(-2**63, 2**63 - 1), st.booleans(), _keys), min_size=1,
                       max_size=6))
def test_the_fast_map_printer_agrees_with_the_general_one(m):
    value_kind = {int: "bigint", bool: "boolean", str: "text"}
    for kind in {value_kind[type(v)] for v in m.values()}:
        sub = {k: v for k, v in m.items() if value_kind[type(v)] == kind}
        c = codec(parse_cql_type(f"map<text, {kind}>", {}))
        fast = digest.column_texts(digest.DigestForm.JSONB, c, [sub], _column_converter(c)).to_pylist()[0]
        assert fast == digest.jsonb_text(c.from_driver(sub))


def test_floats_digest_as_their_bits_and_nan_as_one_value():
    c = codec(parse_cql_type("double", {}))
    got = digest.column_texts(digest.DigestForm.FLOAT8, c, [1.0, -0.0, math.inf, math.nan, None],
                              _column_converter(c)).to_pylist()
    assert got == ["4607182418800017408", str(-2**63), "9218868437227405312", "NaN", None]
    f = codec(parse_cql_type("float", {}))
    assert digest.column_texts(digest.DigestForm.FLOAT4, f, [1.0], _column_converter(f)).to_pylist() == ["1065353216"]


def test_row_texts_are_length_prefixed_so_no_two_rows_print_alike():
    import pyarrow as pa

    def digests(*rows):
        cols = [pa.array(list(col), pa.string()) for col in zip(*rows)]
        return list(digest.row_digests(digest.row_text_array(cols)))

    a, b, c, d = digests(("ab", ""), ("a", "b"), ("a", None), ("a", "~"))
    assert len({a, b, c, d}) == 4
    assert digests(("ab", ""))[0] == a  # deterministic


def test_the_drift_picture_places_ranges_on_the_ring_and_stacks_kinds():
    ranges = [{"split_index": 0, "start_token": -2**63, "end_token": 0, "rows": 10, "missing": 2, "extra": 0,
               "mismatch": 1},
              {"split_index": 1, "start_token": 0, "end_token": 2**63 - 1, "rows": 10, "missing": 0, "extra": 0,
               "mismatch": 0}]
    svg = drift_svg(ranges)
    assert svg.count("<rect") == 3  # background + two kinds of range 0
    assert "2 missing of 10 rows" in svg and "1 mismatch of 10 rows" in svg and "max 3 differing rows" in svg


def test_the_drift_page_escapes_keys_and_values():
    from types import SimpleNamespace

    result = SimpleNamespace(table="ks.t", target="s.t", run_id="r1", rows_compared=10, ranges=1, seconds=1.0,
                             drift=1, unsettled=0, repaired={"rows_written": 0}, repair=False, future_write_time=0,
                             differences={"missing": 0, "extra": 0, "mismatch": 1}, drift_by_range=[])
    page = render_html(result, [Diff(0, 5, ("<b>",), "mismatch", ("a",), {"a": {"cassandra": "<script>"}})])
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;" in page
