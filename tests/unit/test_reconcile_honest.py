"""Honest reconcile, the pure parts: a difference that persists is drift whatever its write
time says (future ones flagged), a repair is judged by the re-read after it, the
authoritative overwrite's conditions, and the exit code of ``--fail-on-drift``. (Against the
real servers: tests/integration/test_reconcile_honest.py.)"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest

from engine.events import Cell
from engine.reconcile import (
    Diff,
    RepairPlan,
    SplitOutcome,
    Verdict,
    _plan_delete,
    _result,
    _Row,
    _row_repair,
    _Rows,
    diff_rows,
    recheck,
    verify_repair,
)
from engine.reconcile_report import render_html, summary
from engine.sync.reduce import Reduced
from engine.schema import Column, TableSchema
from engine.token_ranges import TokenSplit
from engine.types import parse_cql_type

RUN_START = 1_000
READ = 2_000
FUTURE = 10**16  # USING TIMESTAMP about a century ahead of RUN_START's clock


def _rows() -> _Rows:
    def t(s: str):
        return parse_cql_type(s, {})

    return _Rows(TableSchema("ks", "t", (Column("pk", "partition_key", 0, t("int")),),
                             (Column("ck", "clustering", 0, t("int")),),
                             (Column("a", "regular", -1, t("text")), Column("s", "regular", -1, t("set<text>"))),
                             cdc=False))


def _row(key, a, s, wts, row_ts=None) -> _Row:
    return _Row(1, tuple(key), [*key, a, s], list(wts), [None, None], row_ts)


class _Reads:
    """A stand-in for ``_KeyReader.diff``: each call returns the next prepared read."""

    def __init__(self, *reads: list[Diff]):
        self.reads = list(reads)
        self.calls = 0

    def diff(self, pending):
        self.calls += 1
        return self.reads.pop(0) if self.reads else []


def _missing(wt: int, key=("1", "1"), value="x") -> Diff:
    return Diff(0, 1, key, "missing", (), {"cassandra": {"a": value}}, wt, None)


# --- the re-check ---------------------------------------------------------------------------

def test_a_difference_written_in_the_future_is_drift_after_the_last_round_and_flagged():
    first = _missing(FUTURE)
    reads = _Reads([_missing(FUTURE)], [_missing(FUTURE)], [_missing(FUTURE)])
    drift, unsettled = recheck(reads, [first], RUN_START, 0, 3)  # type: ignore[arg-type]
    assert reads.calls == 3, "a write time after the run start waits for every round"
    assert [(x.kind, x.future) for x in drift] == [("missing", True)] and unsettled == []


def test_a_difference_still_changing_at_the_last_round_is_unsettled_not_drift():
    reads = _Reads([_missing(RUN_START + 1, value="v1")], [_missing(RUN_START + 2, value="v2")])
    drift, unsettled = recheck(reads, [_missing(RUN_START, value="v0")], RUN_START, 0, 2)  # type: ignore[arg-type]
    assert drift == [] and [x.cassandra_wt for x in unsettled] == [RUN_START + 2]


def test_a_difference_written_before_the_run_is_drift_at_the_first_re_read_unflagged():
    reads = _Reads([_missing(RUN_START - 1)])
    drift, unsettled = recheck(reads, [_missing(RUN_START - 1)], RUN_START, 0, 3)  # type: ignore[arg-type]
    assert reads.calls == 1 and [x.future for x in drift] == [False] and unsettled == []


def test_drift_found_early_is_not_counted_again_when_its_partition_is_read_again():
    settled, moving = _missing(RUN_START - 1, ("1", "1")), _missing(RUN_START + 5, ("1", "2"), "v1")
    reads = _Reads([settled, moving], [settled, _missing(RUN_START + 6, ("1", "2"), "v2")])
    drift, unsettled = recheck(reads, [settled, moving], RUN_START, 0, 2)  # type: ignore[arg-type]
    assert [x.key for x in drift] == [("1", "1")] and [x.key for x in unsettled] == [("1", "2")]


def test_a_difference_first_seen_in_the_last_round_is_unsettled():
    reads = _Reads([_missing(RUN_START + 5, ("1", "9"))])
    drift, unsettled = recheck(reads, [_missing(RUN_START + 5)], RUN_START, 0, 1)  # type: ignore[arg-type]
    assert drift == [] and [x.key for x in unsettled] == [("1", "9")]


# --- repair decisions -----------------------------------------------------------------------

def _seen(rows, c, p) -> Diff:
    """The re-check's view of the row: what diff_rows records."""
    (x,) = diff_rows(rows, 0, [c], [p])
    return x


def test_a_cell_the_merge_wins_is_written_and_a_cell_null_in_cassandra_deleted_at_its_stored_time():
    rows = _rows()
    c = _row(("1", "1"), "x", None, (30, None))
    p = _row(("1", "1"), "y", '{"a"}', (30, 25))
    r = _row_repair(rows, c, p, _seen(rows, c, p), read_us=READ, run_started_us=RUN_START, consistency="ONE")
    assert r.write.cells == {"a": Cell("x", 30, None), "s": Cell(None, 25)}
    assert r.write.row_ts is None and r.overwrite == {} and r.blocked == {}


def test_a_newer_postgres_cell_is_overwritten_at_cassandras_time_under_the_authoritative_rule():
    rows = _rows()  # e.g. set elements removed in Cassandra: its newest remaining element is older
    c = _row(("1", "1"), "x", '{"a"}', (30, 20))
    p = _row(("1", "1"), "x", '{"a","b"}', (30, 40))
    r = _row_repair(rows, c, p, _seen(rows, c, p), read_us=READ, run_started_us=RUN_START,
                    consistency="LOCAL_QUORUM")
    assert r.overwrite == {"s": Cell('{"a"}', 20, None)} and r.stored_wts == {"s": 40}
    assert "s" not in r.write.cells and r.write.row_ts is None  # live cells: no row marker invented
    assert r.blocked == {}


def test_a_newer_postgres_cell_is_left_with_the_reason_when_reads_are_below_quorum():
    rows = _rows()
    c = _row(("1", "1"), "x", '{"a"}', (30, 20))
    p = _row(("1", "1"), "x", '{"a","b"}', (30, 40))
    r = _row_repair(rows, c, p, _seen(rows, c, p), read_us=READ, run_started_us=RUN_START, consistency="ONE")
    assert r.overwrite == {} and "newer write time (40 > 20)" in r.blocked["s"] and "ONE" in r.blocked["s"]


def test_a_newer_postgres_cell_that_changed_since_the_re_check_is_in_flight_and_left():
    rows = _rows()
    c = _row(("1", "1"), "x", '{"a"}', (30, 20))
    seen = _seen(rows, c, _row(("1", "1"), "x", '{"a","b"}', (30, 40)))
    p = _row(("1", "1"), "x", '{"a","c"}', (30, 50))  # a sync write landed after the re-check
    r = _row_repair(rows, c, p, seen, read_us=READ, run_started_us=RUN_START, consistency="ALL")
    assert r.overwrite == {} and "changed since the re-check" in r.blocked["s"]


def test_a_cell_null_in_cassandra_set_after_the_run_start_is_deleted_only_if_unchanged_since_the_re_check():
    rows = _rows()
    c = _row(("1", "1"), "x", None, (30, None))
    p = _row(("1", "1"), "x", '{"a"}', (30, RUN_START + 5))
    r = _row_repair(rows, c, p, _seen(rows, c, p), read_us=READ, run_started_us=RUN_START, consistency="ONE")
    assert r.write.cells["s"] == Cell(None, RUN_START + 5)
    r = _row_repair(rows, c, p, None, read_us=READ, run_started_us=RUN_START, consistency="ONE")
    assert "s" not in r.write.cells and "since the re-check" in r.blocked["s"]


def test_a_row_with_only_its_marker_gets_the_read_time_as_marker():
    rows = _rows()
    r = _row_repair(rows, _row(("2", "1"), None, None, (None, None)), None, None, read_us=READ,
                    run_started_us=RUN_START, consistency="ONE")
    assert r.write.cells == {} and r.write.row_ts == READ


def test_an_extra_row_is_deleted_at_its_own_time_unless_future_or_in_flight():
    key = ("1", "1")
    p = _row(key, "x", None, (30, None))
    plan = RepairPlan(Reduced({}, []), {}, READ)
    _plan_delete(plan, (1, key), Diff(0, 1, key, "extra", postgres_wt=30), p, RUN_START, _rows())
    assert [t.ts for t in plan.batch.tombstones] == [30] and plan.deleted == {(1, key)}

    ahead = _row(key, "x", None, (FUTURE, None))
    plan = RepairPlan(Reduced({}, []), {}, READ)
    _plan_delete(plan, (1, key), Diff(0, 1, key, "extra", postgres_wt=FUTURE), ahead, RUN_START, _rows())
    assert plan.batch.tombstones == [] and "in the future" in plan.blocked[(1, key)]

    fresh = _row(key, "x", None, (RUN_START + 5, None))
    plan = RepairPlan(Reduced({}, []), {}, READ)
    _plan_delete(plan, (1, key), Diff(0, 1, key, "extra", postgres_wt=RUN_START + 1), fresh, RUN_START, _rows())
    assert plan.batch.tombstones == [] and "in flight" in plan.blocked[(1, key)]
    plan = RepairPlan(Reduced({}, []), {}, READ)
    _plan_delete(plan, (1, key), Diff(0, 1, key, "extra", postgres_wt=RUN_START + 5), fresh, RUN_START, _rows())
    assert [t.ts for t in plan.batch.tombstones] == [RUN_START + 5]


# --- the verdict: the re-read after the repair decides ---------------------------------------

def test_a_key_is_repaired_only_when_the_re_read_after_the_repair_finds_no_difference():
    a, b, c, e = ((1, (k, "1")) for k in "abce")
    plan = RepairPlan(Reduced({}, []), {a: "written from Cassandra", b: "written from Cassandra",
                                        c: "deleted (absent in Cassandra)"}, READ,
                      written={a, b}, deleted={c}, blocked={b: "s: PostgreSQL holds it at a newer write time"})
    drift = [Diff(0, t, k, "mismatch") for t, k in (a, b, c, e)]
    still_b = Diff(0, 1, b[1], "mismatch", ("s",), {}, 20, 40)
    verdicts = verify_repair(_Reads([still_b]), drift, plan, 0)  # type: ignore[arg-type]
    assert verdicts[a] == Verdict("written", "written from Cassandra")
    assert verdicts[b].outcome == "not_repaired" and not verdicts[b].repaired
    assert verdicts[b].note == "not repaired: s: PostgreSQL holds it at a newer write time"
    assert verdicts[c].outcome == "deleted" and verdicts[e].outcome == "equal"


def test_a_difference_left_by_a_write_after_the_repair_read_is_read_once_more():
    key = (1, ("a", "1"))
    plan = RepairPlan(Reduced({}, []), {key: "written from Cassandra"}, READ, written={key})
    in_flight = Diff(0, 1, key[1], "mismatch", ("a",), {}, READ + 10, 30)
    reads = _Reads([in_flight], [])
    verdicts = verify_repair(reads, [Diff(0, 1, key[1], "mismatch")], plan, 0)  # type: ignore[arg-type]
    assert reads.calls == 2 and verdicts[key].outcome == "written"
    reads = _Reads([in_flight], [in_flight])
    verdicts = verify_repair(reads, [Diff(0, 1, key[1], "mismatch")], plan, 0)  # type: ignore[arg-type]
    assert verdicts[key].outcome == "not_repaired" and "still differs after the repair in a" in verdicts[key].note


# --- the figures, the page and the exit code -------------------------------------------------

def _outcome() -> SplitOutcome:
    return SplitOutcome(TokenSplit(0, -2**63, 2**63 - 1), 10, 8, 1, 1, 18, (), 0, 0, 0.1)


def test_the_result_counts_future_drift_and_what_the_re_read_proved():
    drift = [Diff(0, 1, ("1", "1"), "missing", future=True), Diff(0, 2, ("2", "1"), "mismatch", ("s",)),
             Diff(0, 3, ("3", "1"), "extra")]
    verdicts = {(1, ("1", "1")): Verdict("written", "written from Cassandra"),
                (2, ("2", "1")): Verdict("not_repaired", "not repaired: s: …"),
                (3, ("3", "1")): Verdict("equal", "already equal (absent on both sides)")}
    r = _result("r", "ks.t", "s.t", [_outcome()], drift, [], True, verdicts, 0, 1.0, 0.5)
    assert r.repaired == {"rows_written": 1, "rows_deleted": 0, "not_repaired": 1}
    assert r.future_write_time == 1 and r.drift_by_range[0]["future"] == 1 and r.equal_at_repair == 1
    assert r.unrepaired == 1 and r.stats()["unrepaired"] == 1
    line = summary(r)
    assert "1 with a future write time" in line and "repaired 1 written, 0 deleted, 1 not repaired" in line
    page = render_html(r, drift, {(2, ("2", "1")): "not repaired: s: <newer>"})
    assert "future write time: 1" in page and "<td>future write time</td>" in page
    assert "<td>not repaired: s: &lt;newer&gt;</td>" in page and "1 not repaired" in page
    assert r.sample[0]["flags"] == ["future write time"]
    no_repair = _result("r", "ks.t", "s.t", [_outcome()], drift, [], False, {}, 0, 1.0, 0.5)
    assert no_repair.unrepaired == 3 and "repaired" not in summary(no_repair)


@pytest.mark.parametrize("repair, drift, not_repaired, fail, code", [
    (False, 2, 0, True, 3),   # drift without --repair (future write times included)
    (False, 2, 0, False, 0),  # without --fail-on-drift the run just reports
    (True, 2, 0, True, 0),    # everything repaired, as the re-read proved
    (True, 2, 1, True, 3),    # a repair that could not win
    (False, 0, 0, True, 0),
])
def test_fail_on_drift_exits_3_on_anything_not_repaired(monkeypatch, repair, drift, not_repaired, fail, code):
    import engine.config
    import engine.reconcile
    import jobs.reconcile

    result = _result("r", "ks.t", "s.t", [_outcome()], [Diff(0, i, (str(i),), "missing", future=True)
                                                        for i in range(drift)], [], repair,
                     {(i, (str(i),)): Verdict("not_repaired" if i < not_repaired else "written", "")
                      for i in range(drift)} if repair else {}, 0, 1.0, 0.5)
    monkeypatch.setattr(engine.config, "load_config", lambda path: SimpleNamespace(name="p"))
    monkeypatch.setattr(engine.reconcile, "find_table", lambda cfg, table: None)
    monkeypatch.setattr(engine.reconcile, "run_reconcile", lambda *a, **k: result)
    args = argparse.Namespace(config="x.yaml", table="ks.t", repair=repair, splits=None, consistency=None,
                              run_id=None, concurrency=None, html=None, output=None, fail_on_drift=fail)
    assert jobs.reconcile.run(args) == code
