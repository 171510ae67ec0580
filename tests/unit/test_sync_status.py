"""The sync status figures that cannot mislead: events/s over a recent window (0 when idle) and
write times in the future flagged — the pure rules (``engine/sync_status.py``), then how
``c2pg sync status`` and the control plane's status render them."""

from __future__ import annotations

import contextlib
import time

import pytest

from engine.sync_status import (
    FUTURE_TOLERANCE_S,
    RATE_WINDOW_S,
    WindowRate,
    describe_duration,
    format_write_time,
    in_future,
    iso_write_time,
    seconds_ahead,
)

NOW = 1_796_000_000.0  # 2026-11-30, a wall clock for the future-write rules
YEAR_S = 365.25 * 86400


# --- events/s over the window -----------------------------------------------------------------


def test_rate_is_the_events_of_the_last_window_over_the_window():
    r = WindowRate(started_at=0.0)
    for t in range(100, 110):  # 1,000 events a second for 10 s
        r.add(1_000, float(t))
    assert r.per_second(109.5) == pytest.approx(1_000.0)
    assert r.events_in_window(109.5) == 10_000


def test_rate_falls_to_zero_once_the_window_has_passed_without_a_batch():
    """The reported bug: a fast batch, then idle, kept showing 54,682 events/s."""
    r = WindowRate(started_at=0.0)
    r.add(54_682, 100.0)
    assert r.per_second(100.0) == pytest.approx(5_468.2)  # over the window, not the batch's speed
    assert r.per_second(100.0 + RATE_WINDOW_S / 2) == pytest.approx(5_468.2)
    assert r.per_second(100.0 + RATE_WINDOW_S) == 0.0
    assert r.per_second(100_000.0) == 0.0


def test_rate_counts_only_what_is_inside_the_window_as_it_slides():
    r = WindowRate(started_at=0.0, window_s=10.0)
    r.add(500, 100.0)
    r.add(300, 105.0)
    assert r.events_in_window(109.9) == 800
    assert r.events_in_window(110.0) == 300  # (100, 110]: the first batch has left
    assert r.per_second(112.0) == pytest.approx(30.0)


def test_a_meter_younger_than_the_window_divides_by_its_age_but_at_least_one_second():
    r = WindowRate(started_at=100.0)
    r.add(2_000, 102.0)
    assert r.per_second(104.0) == pytest.approx(500.0)  # 2,000 events in the 4 s it has existed
    young = WindowRate(started_at=100.0)
    young.add(5_000, 100.05)
    assert young.per_second(100.05) == pytest.approx(5_000.0)  # not 100,000/s after 50 ms


def test_batches_closer_than_the_resolution_share_a_sample_so_the_ring_stays_small():
    r = WindowRate(started_at=0.0, window_s=10.0, resolution_s=0.1)
    t = 100.0
    for _ in range(20_000):  # a batch every millisecond for 20 s
        r.add(1, t)
        t += 0.001
    assert len(r._samples) <= 10.0 / 0.1 + 2
    # 1 event/ms: 1,000/s, off by at most the resolution over the window (1 %).
    assert r.per_second(t) == pytest.approx(1_000.0, rel=0.011)


def test_empty_batches_and_bad_windows():
    r = WindowRate(started_at=0.0)
    r.add(0, 1.0)
    r.add(-3, 1.0)
    assert r.per_second(1.0) == 0.0 and r.events_in_window(1.0) == 0
    with pytest.raises(ValueError, match="resolution"):
        WindowRate(0.0, window_s=1.0, resolution_s=2.0)
    with pytest.raises(ValueError, match="resolution"):
        WindowRate(0.0, window_s=0.0)


# --- write times in the future -----------------------------------------------------------------


def test_a_write_time_beyond_the_tolerance_is_in_the_future():
    us = int(NOW * 1e6)
    assert not in_future(None, NOW) and not in_future(0, NOW)
    assert not in_future(us - 3_600_000_000, NOW)  # the past
    assert not in_future(us + int(FUTURE_TOLERANCE_S * 1e6), NOW)  # clock skew within tolerance
    assert in_future(us + int(FUTURE_TOLERANCE_S * 1e6) + 1_000_000, NOW)
    assert in_future(4_950_000_000_000_000, NOW)  # 2126-11-10: the reported case
    assert seconds_ahead(us - 5_000_000, NOW) == 0.0
    assert seconds_ahead(us + 5_000_000, NOW) == pytest.approx(5.0)


@pytest.mark.parametrize(("seconds", "text"), [
    (100 * YEAR_S, "100 y"), (2.5 * YEAR_S, "2.5 y"), (3.5 * 86400, "3.5 d"), (2 * 3600, "2.0 h"),
    (90, "1.5 min"), (45, "45 s"),
])
def test_describe_duration(seconds, text):
    assert describe_duration(seconds) == text


@pytest.mark.parametrize(("ts_us", "shown", "iso"), [
    (None, "-", None),
    (1_796_000_000_123_456, "2026-11-30 00:53:20", "2026-11-30T00:53:20.123456+00:00"),
    (4_950_000_000_000_000, "2126-11-10 16:00:00", "2126-11-10T16:00:00+00:00"),
    # a nanosecond timestamp written as microseconds: past datetime's year 9999
    (1_780_000_000_000_000_000, "58375-12-15 20:26:40", "+058375-12-15T20:26:40+00:00"),
    (2**63 - 1, "294247-01-10 04:00:54", "+294247-01-10T04:00:54+00:00"),  # Cassandra's largest
])
def test_write_times_are_shown_whatever_their_year(ts_us, shown, iso):
    assert format_write_time(ts_us) == shown
    assert iso_write_time(ts_us) == iso


# --- c2pg sync status ---------------------------------------------------------------------------


def _supervisor_status(**partition) -> dict:
    p = {"topic": "c2pg.demo.users", "partition": 0, "table": "demo.users", "offset": 42, "high_watermark": 42,
         "lag": 0, "last_write_ts_us": None, "last_write_in_future": False, "events": 42, "events_per_s": 0.0}
    p.update(partition)
    return {"pipeline": "unit", "started_at": NOW - 60, "paused_all": False, "paused_tables": [],
            "workers": [{"worker": 0, "state": "running", "error": None, "partitions": [p]}]}


def _cli_line(capsys, status: dict) -> str:
    from engine.cli import _print_sync_status

    _print_sync_status(status, NOW)
    return capsys.readouterr().out.splitlines()[1]


def test_cli_remarks_a_last_write_in_the_future(capsys):
    line = _cli_line(capsys, _supervisor_status(last_write_ts_us=4_950_000_000_000_000, last_write_in_future=True))
    assert line.endswith("2126-11-10 16:00:00 (future: 100 y ahead of this clock)")


def test_cli_shows_a_present_write_plainly_and_trusts_the_workers_flag(capsys):
    present = int((NOW - 5) * 1e6)
    assert _cli_line(capsys, _supervisor_status(last_write_ts_us=present)).endswith("2026-11-30 00:53:15")
    line = _cli_line(capsys, _supervisor_status(last_write_ts_us=present, last_write_in_future=True))
    assert line.endswith("(future by the worker's clock)")
    assert _cli_line(capsys, _supervisor_status()).endswith("  -")


def test_cli_shows_each_workers_node_and_the_moves(capsys):
    from engine.cli import _print_sync_status
    from engine.sync_status import node_label

    status = _supervisor_status()
    status["workers"][0].update(node_id="a8d795606eba301abf0c8ed80bc57bb0", node_ip="10.0.0.2")
    status["moves"] = [{"at": "2026-11-30T00:50:00+00:00", "worker": 0, "partitions": ["c2pg.demo.users/0"],
                        "from_node": "98554699ca32f025", "to_node": "a8d795606eba301a",  # pragma: allowlist secret
                        "reason": "worker ended: ActorDiedError: ..."}]
    _print_sync_status(status, NOW)
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:2] == ["0", "a8d79560@10.0.0.2"]
    assert out[-1] == ("moved 2026-11-30T00:50:00+00:00: worker 0 (c2pg.demo.users/0) from node 98554699 to "
                       "a8d79560: worker ended: ActorDiedError: ...")
    assert node_label(None) == "-" and node_label("abcdef0123", None) == "abcdef01"


# --- the control plane's status ------------------------------------------------------------------


@pytest.fixture()
def control():
    from engine.config import load_config
    from serve_app.control import Control
    from serve_app.security import ApiError
    from tests.conftest import EXAMPLE_PIPELINE

    c = Control(load_config(EXAMPLE_PIPELINE, resolve_secrets=False), EXAMPLE_PIPELINE, env={})

    @contextlib.contextmanager
    def no_postgres():
        raise ApiError(503, "postgres unavailable (unit test)")
        yield

    c.pg = no_postgres  # type: ignore[method-assign]
    return c


def _serve_status(control, *partitions: dict) -> dict:
    topic = control.cfg.kafka.topic_for("demo", "users")
    workers = [{"worker": i, "state": "running", "partitions": [{"topic": topic, "partition": i, **p}]}
               for i, p in enumerate(partitions)]

    class _Sync:
        def get(self):
            return "running", {"workers": workers, "paused_all": False, "paused_tables": []}, None

    control._sync = _Sync()
    return next(t for t in control._build_status()["tables"] if t["table"] == "demo.users")


def test_serve_status_flags_the_future_per_partition_and_table_and_keeps_the_rates(control):
    present = int((time.time() - 5) * 1e6)
    table = _serve_status(
        control,
        {"lag": 0, "last_write_ts_us": present, "last_write_in_future": False, "events": 10, "events_per_s": 1.5},
        {"lag": 3, "last_write_ts_us": 1_780_000_000_000_000_000, "events": 5, "events_per_s": 2.0},
    )
    p0, p1 = table["partitions"]
    assert p0["last_write_in_future"] is False and p0["last_write_ts_us"] == present
    # The second worker sent no flag (an older worker): the replica's clock decides.
    assert p1["last_write_in_future"] is True and p1["last_write_applied"] == "+058375-12-15T20:26:40+00:00"
    assert table["last_write_in_future"] is True
    assert table["last_write_applied"] == p1["last_write_applied"]  # the newest by time, not by text
    assert table["events_per_s"] == 3.5 and table["lag"] == 3


def test_serve_status_without_a_future_write_is_not_flagged(control):
    present = int((time.time() - 5) * 1e6)
    table = _serve_status(control, {"last_write_ts_us": present, "last_write_in_future": False, "events_per_s": 0.0},
                          {"last_write_ts_us": None})
    assert table["last_write_in_future"] is False
    assert table["last_write_applied"] == iso_write_time(present)
    assert [p["last_write_in_future"] for p in table["partitions"]] == [False, False]


# --- the worker's status ---------------------------------------------------------------------------


def test_worker_status_reports_the_window_rate_and_the_future_flag(monkeypatch):
    """``PartitionWorker.status`` on the plain class (no Ray): a batch, then idle."""
    import types

    from engine.sync import worker as sync_worker
    from engine.config import load_config
    from tests.conftest import EXAMPLE_PIPELINE

    clock = {"mono": 1_000.0}
    monkeypatch.setattr(sync_worker, "time", types.SimpleNamespace(monotonic=lambda: clock["mono"],
                                                                   time=lambda: NOW))
    cfg = load_config(EXAMPLE_PIPELINE, resolve_secrets=False)
    topic = cfg.kafka.topic_for("demo", "users")
    worker = sync_worker.PartitionWorker.__ray_actor_class__(cfg, 0, [(topic, 0), (topic, 1)])
    clock["mono"] += 30  # connected, then the first batch
    st = worker.parts[(topic, 0)]
    st.rate.add(54_682, clock["mono"])
    st.last_write_ts_us = 4_950_000_000_000_000

    p0, p1 = worker.status()["partitions"]
    assert p0["events_per_s"] == 5_468.2 and p0["last_write_in_future"] is True
    assert p1["events_per_s"] == 0.0 and p1["last_write_in_future"] is False
    clock["mono"] += RATE_WINDOW_S
    assert worker.status()["partitions"][0]["events_per_s"] == 0.0  # idle: no stale figure


def test_a_partition_with_lag_that_does_not_move_is_read_again_from_its_committed_offset(monkeypatch):
    """``PartitionWorker._unstick`` on the plain class: the decision, and that the consumer is
    given the committed offsets by a new assignment (what the apply loop then fetches from)."""
    import types

    from confluent_kafka import OFFSET_BEGINNING

    from engine.config import load_config
    from engine.sync import worker as sync_worker
    from tests.conftest import EXAMPLE_PIPELINE

    clock = {"mono": 1_000.0}
    monkeypatch.setattr(sync_worker, "time", types.SimpleNamespace(monotonic=lambda: clock["mono"],
                                                                   time=lambda: NOW))
    cfg = load_config(EXAMPLE_PIPELINE, resolve_secrets=False)
    topic = cfg.kafka.topic_for("demo", "users")
    worker = sync_worker.PartitionWorker.__ray_actor_class__(cfg, 0, [(topic, 0), (topic, 1), (topic, 2)])
    stuck, moving, fresh = (worker.parts[(topic, p)] for p in range(3))
    stuck.next_offset, stuck.high_watermark, stuck.progress_at = 40, 90, clock["mono"]
    moving.next_offset, moving.high_watermark, moving.progress_at = 10, 20, clock["mono"]
    fresh.high_watermark = 5  # nothing committed yet: read from the beginning

    class Consumer:  # records what the worker asks of the real consumer
        def __init__(self):
            self.assigned = None

        def assign(self, partitions):
            self.assigned = {(tp.topic, tp.partition): tp.offset for tp in partitions}

    consumer = Consumer()
    clock["mono"] += sync_worker.STUCK_AFTER_S - 1
    moving.progress_at = clock["mono"]  # committed a moment ago
    worker._unstick(consumer)
    assert consumer.assigned is None, "nothing has been still for STUCK_AFTER_S yet"

    clock["mono"] += 2
    worker._unstick(consumer)
    assert consumer.assigned == {(topic, 0): 40, (topic, 1): 10, (topic, 2): OFFSET_BEGINNING}
    assert all(st.progress_at == clock["mono"] for st in (stuck, moving, fresh))

    consumer.assigned = None
    worker._paused = {(topic, 0)}  # a paused table is not fetched: its lag is not a stall
    stuck.progress_at = fresh.progress_at = clock["mono"] - 2 * sync_worker.STUCK_AFTER_S
    fresh.high_watermark = 0
    moving.progress_at = clock["mono"]
    worker._unstick(consumer)
    assert consumer.assigned is None
