"""The chaos suite's own pieces that need no server: the fault list and the oracle's verdict
(``benchmarks/chaos.py``; the suite itself runs against the stack, as a benchmark)."""

from __future__ import annotations

import pytest

from benchmarks.chaos import FAULTS, diff_rows, parse_faults


def test_all_is_every_fault_then_several_at_once():
    assert parse_faults("all") == [*FAULTS, "several"]
    assert len(set(FAULTS)) == 10


def test_a_fault_list_keeps_its_order_and_a_typo_names_itself():
    assert parse_faults("restart_kafka, kill_node") == ["restart_kafka", "kill_node"]
    with pytest.raises(SystemExit, match=r"unknown fault\(s\) \['kill_nod'\]"):
        parse_faults("kill_nod,restart_kafka")
    with pytest.raises(SystemExit, match="unknown fault"):
        parse_faults(" , ")


def test_the_oracle_counts_missing_extra_and_different_rows():
    cassandra = {(1, 1): ("a", 1), (1, 2): ("b", 2), (2, 1): ("c", None)}
    postgres = {(1, 1): ("a", 1), (1, 2): ("b", 3), (3, 3): ("x", 0)}
    d = diff_rows(cassandra, postgres)
    assert (d["missing"], d["extra"], d["different"]) == (1, 1, 1)
    assert d["sample"] == {"missing": [(2, 1)], "extra": [(3, 3)], "different": [(1, 2)]}
    assert diff_rows(cassandra, dict(cassandra)) == {"missing": 0, "extra": 0, "different": 0,
                                                      "sample": {"missing": [], "extra": [], "different": []}}
