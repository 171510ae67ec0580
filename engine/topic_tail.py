"""Read what arrives on a Kafka topic from now on, without a consumer group.

Callers: the README demo (to show Debezium events as they arrive) and the CDC
integration tests. It is a watcher, not the sync consumer: it commits nothing and keeps
no state, so it can never move a pipeline's offsets.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


@dataclass(frozen=True, slots=True)
class TailedEvent:
    """One record as it arrived, with the raw bytes kept as text (Debezium writes JSON)."""

    topic: str
    partition: int
    offset: int
    raw_key: str | None
    raw_value: str | None
    received_monotonic: float

    @property
    def key(self) -> object:
        return json.loads(self.raw_key) if self.raw_key else None

    @property
    def value(self) -> object:
        return json.loads(self.raw_value) if self.raw_value else None


class TopicTail:
    """All partitions of ``topic``, positioned at their current end when constructed."""

    def __init__(self, topic: str, client_conf: Mapping[str, object]):
        self.topic = topic
        self._consumer = Consumer({**client_conf, "group.id": f"c2pg-tail-{uuid.uuid4()}",
                                   "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        self._assigned = False
        self._assign(at_end=True)

    def _assign(self, at_end: bool) -> None:
        """Assign every partition: at its current end, or (for a topic that appeared after
        we started watching) at its beginning, so its first events are not missed."""
        md = self._consumer.list_topics(self.topic, timeout=10)
        topic_md = md.topics.get(self.topic)
        if topic_md is None or topic_md.error is not None or not topic_md.partitions:
            return
        tps = []
        for p in sorted(topic_md.partitions):
            tp = TopicPartition(self.topic, p)
            # Resolve "the end" now, not at the first poll: an event produced in between
            # must be read, not skipped.
            tp.offset = (self._consumer.get_watermark_offsets(tp, timeout=10)[1] if at_end
                         else OFFSET_BEGINNING)
            tps.append(tp)
        self._consumer.assign(tps)
        self._assigned = True

    def read(self, want: int, timeout_s: float, key_filter: Callable[[object], bool] | None = None,
             settle_s: float = 0.0) -> list[TailedEvent]:
        """Up to ``want`` events whose key passes ``key_filter``, waiting at most ``timeout_s``;
        after the ``want``-th, keep reading ``settle_s`` more to catch extra events."""
        out: list[TailedEvent] = []
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < (settle_until or deadline):
            if not self._assigned:
                self._assign(at_end=False)
                if not self._assigned:
                    time.sleep(0.2)
                    continue
            msg = self._consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            # A consumed message without an error always carries its position.
            assert topic is not None and partition is not None and offset is not None
            key, value = msg.key(), msg.value()
            event = TailedEvent(topic, partition, offset, key.decode() if key else None,
                                value.decode() if value else None, time.monotonic())
            if key_filter is not None and not key_filter(event.key):
                continue
            out.append(event)
            if len(out) >= want and settle_until is None:
                settle_until = time.monotonic() + settle_s
        return out

    def wait_for_capture(self, write: Callable[[], object], timeout_s: float,
                         key_filter: Callable[[object], bool] | None = None) -> bool:
        """Make a write (``write()``) and wait a second for its event, again and again, until
        one arrives (True) or ``timeout_s`` passes (False): proof that the Debezium connector
        captures the table, before writes that must be seen are made. Writes made before the
        connector knew the table are never captured, so a short round finds out sooner (a
        new table: ~2.8 s instead of ~5 s with 3-s rounds); an event that is merely slow is
        still counted when it arrives during a later round."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            write()
            if self.read(1, min(1.0, max(0.1, deadline - time.monotonic())), key_filter=key_filter):
                return True
        return False

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicTail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
