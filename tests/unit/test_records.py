"""``Records``: the sync worker's polled batch as columns must read exactly like the list of
``Record`` it replaced (the appliers, the slow lane and the dead letters index into it)."""

from __future__ import annotations

import confluent_kafka
import pytest

from engine.sync.apply import Record, Records


def _messages() -> list:
    rows = [("a", 0, 10, b"k1", b"v1", (1, 1000)), ("b", 2, 7, None, None, (0, -1)),
            ("a", 1, 3, b"k2", b"v2", (2, 2000)), ("a", 0, 11, b"k3", b"v3", (1, 1001)),
            ("b", 2, 8, b"k4", b"v4", (1, 5))]
    return [confluent_kafka.Message(topic=t, partition=p, offset=o, key=k, value=v, timestamp=ts)
            for t, p, o, k, v, ts in rows]


def _expected() -> list[Record]:
    # A timestamp of type 0 (TIMESTAMP_NOT_AVAILABLE) is no time at all.
    return [Record("a", 0, 10, b"k1", b"v1", 1000), Record("b", 2, 7, None, None, None),
            Record("a", 1, 3, b"k2", b"v2", 2000), Record("a", 0, 11, b"k3", b"v3", 1001),
            Record("b", 2, 8, b"k4", b"v4", 5)]


def test_from_messages_reads_like_the_records_it_replaced():
    recs = Records.from_messages(_messages())
    assert len(recs) == 5
    assert list(recs) == _expected()
    assert [recs[i] for i in range(5)] == _expected()
    assert recs[-1] == _expected()[-1]
    assert list(recs[1:3]) == _expected()[1:3]
    assert recs.values == [r.value for r in _expected()]
    with pytest.raises(IndexError):
        recs[5]


def test_split_by_topic_keeps_poll_order_and_offsets_point_after_the_greatest():
    recs = Records.from_messages(_messages())
    parts = recs.by_topic()
    assert sorted(parts) == ["a", "b"]
    assert list(parts["a"]) == [r for r in _expected() if r.topic == "a"]
    assert list(parts["b"]) == [r for r in _expected() if r.topic == "b"]
    assert recs.next_offsets() == {("a", 0): 12, ("a", 1): 4, ("b", 2): 9}
    # Out of order within a partition (after a rewind), the greatest offset still decides.
    assert recs.take([3, 0, 4, 1]).next_offsets() == {("a", 0): 12, ("b", 2): 9}


def test_one_topic_is_not_copied_and_an_empty_batch_has_no_parts():
    recs = Records.from_messages([m for m in _messages() if m.topic() == "a"])
    assert recs.by_topic()["a"] is recs
    assert Records.from_messages([]).by_topic() == {}
    assert Records.from_messages([]).next_offsets() == {}
