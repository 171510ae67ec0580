"""The local stack's CDC path works end to end: Cassandra → Debezium → Kafka.

These tests pin the connector's contract that the sync decoder depends on: latency, the
write time in ``source.ts_us``, and, for every kind of write, the same ops and touched
cells as the events recorded in tests/fixtures/debezium (re-record with
``python -m tests.integration.cdc_scenarios`` after a connector upgrade).
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from tests.integration import cdc_scenarios as cdc

# exclusive: it judges the connector's latency (an event within 10 s), which another test's
# load would spend. (Making sure the scenarios' tables are captured may restart the
# connector: an exclusive section of its own, see cdc_scenarios.capture_with_restart.)
pytestmark = pytest.mark.exclusive


@pytest.fixture(scope="module")
def cql(stack):
    cluster, session = cdc.connect()
    cdc.ensure_captured(session, stack)
    yield session
    cluster.shutdown()


def test_write_reaches_kafka_within_10s_with_its_write_time(cql):
    tail = cdc.open_tail()
    try:
        key = int(time.time() * 1000) % 1_000_000 + 1000
        t0 = time.monotonic()
        cql.execute(f"INSERT INTO {cdc.T} (pk, ck, t) VALUES (%s, 1, 'latency probe')", (key,))
        events = tail.read(1, 10.0, key_filter=lambda k: isinstance(k, dict) and k.get("pk") == key)
    finally:
        tail.close()
    assert events, "no Debezium event within 10 s"
    latency = events[0].received_monotonic - t0
    assert latency < 10.0
    value = events[0].value
    assert value["op"] == "i"
    assert value["after"]["t"]["value"] == "latency probe"
    writetime = cql.execute(f"SELECT WRITETIME(t) AS wt FROM {cdc.T} WHERE pk = %s AND ck = 1",
                            (key,)).one().wt
    assert value["source"]["ts_us"] == writetime


def _shape(raw_value: str) -> tuple[str, tuple[str, ...]]:
    """An event's op and the cells it touched (non-null in ``after``)."""
    value = json.loads(raw_value)
    touched = tuple(sorted(k for k, cell in value["after"].items() if cell is not None))
    return value["op"], touched


@pytest.fixture(scope="module")
def scenario_events(cql) -> dict:
    """Every scenario's events, its writes made together and read with one settling wait
    (each scenario has its own partition key, so its events are told apart by key)."""
    return cdc.run_scenarios(cql, cdc.SCENARIOS, timeout_s=30.0)


@pytest.mark.parametrize("scenario", cdc.SCENARIOS, ids=lambda s: s.name)
def test_every_kind_of_write_produces_the_recorded_events(scenario_events, scenario):
    recorded = json.loads((cdc.FIXTURES / f"{scenario.name}.json").read_text())
    # The connector delivers at least once: after it re-reads a commit log segment (its
    # offsets are flushed periodically), a mutation it already sent comes again, the same
    # event with a later ts_ms. Such a copy (same key, commit log file and position, op,
    # write time and cells) is counted once; c2pg applies events idempotently (tested in
    # test_replay_exact and test_sync). Anything else extra still fails below.
    events = _without_redeliveries(scenario_events[scenario.name])
    # The Kafka key is the whole primary key, so a partition or range delete (clustering
    # columns null) lands on another Kafka partition than the rows it deletes: across
    # partitions there is no order, so compare as multisets.
    assert Counter(e.value["op"] for e in events) == Counter(scenario.expected_ops)
    assert (Counter(_shape(e.raw_value) for e in events)
            == Counter(_shape(e["raw_value"]) for e in recorded["events"]))
    for e in events:
        source = e.value["source"]
        assert source["keyspace"] == cdc.KEYSPACE and source["table"] == cdc.TABLE
        assert source["ts_us"] > 0


def _without_redeliveries(events: list) -> list:
    """``events`` with every repeat of an already seen mutation's event dropped (see the caller)."""
    seen: set[str] = set()
    out = []
    for e in events:
        source = e.value["source"]
        ident = json.dumps([e.key, source.get("file"), source.get("pos"), e.value["op"], source["ts_us"],
                            e.value.get("after")], sort_keys=True, default=str)
        if ident not in seen:
            seen.add(ident)
            out.append(e)
    return out
