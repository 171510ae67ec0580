"""The supervisor's spreading of schema rounds and sweeps (``engine.sync.supervisor.Pass``):
every table once per interval, never all of them in one round after the first pass."""

from __future__ import annotations

import math

from engine.sync.supervisor import ROUND_S, Pass


def _run(tables: list[str], interval_s: float, seconds: float) -> list[tuple[float, list[str], bool]]:
    """What a supervisor asks of a Pass every ROUND_S for ``seconds``: (time, tables, ends pass)."""
    p, out, now = Pass(interval_s), [], 0.0
    while now < seconds:
        due = p.take(now, tables)
        if due is not None:
            out.append((now, *due))
        now += ROUND_S
    return out


def test_the_first_pass_takes_every_table_at_once_then_passes_are_spread_over_the_interval():
    tables = [f"t{i:03d}" for i in range(200)]
    rounds = _run(tables, 60, 180)
    assert rounds[0] == (0.0, tables, True)  # a starting supervisor makes every target at once
    later = rounds[1:]
    assert max(len(batch) for _, batch, _ in later) == math.ceil(200 * ROUND_S / 60) == 7
    passes, current = [], []
    for t, batch, ends in later:
        current += batch
        if ends:
            passes.append((t, current))
            current = []
    starts = [later[0][0]] + [t for t, batch, _ in later if batch and batch[0] == tables[0]][1:]
    for (end, handled), start in zip(passes, starts, strict=False):
        assert handled == tables  # every table, once, in order
        assert end - start < 60  # within its interval
    assert [b - a for a, b in zip(starts, starts[1:], strict=False)] == [60.0] * (len(starts) - 1)


def test_an_interval_shorter_than_a_round_takes_every_table_every_round():
    rounds = _run(["a", "b", "c"], 1, 10)
    assert rounds == [(t, ["a", "b", "c"], True) for t in (0.0, 2.0, 4.0, 6.0, 8.0)]


def test_no_tables_still_ends_each_pass():
    assert _run([], 10, 30) == [(0.0, [], True), (10.0, [], True), (20.0, [], True)]
