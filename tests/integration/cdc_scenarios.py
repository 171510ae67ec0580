"""Writes of every kind to a CDC table, and the Debezium events they produce on Kafka.

Used two ways:
- by ``test_cdc_events.py``, which runs the scenarios against the live stack and checks the
  events against the recorded fixtures (same ops, same cells touched);
- as a recorder: ``python -m tests.integration.cdc_scenarios`` rewrites
  ``tests/fixtures/debezium/*.json`` from the live stack. The decoder tests (sync issue)
  read those files, so they hold the connector's real bytes, not hand-written JSON.

Each scenario uses its own partition key, so its events are told apart by key.

No ``vector`` column: the Java driver inside Debezium 3.4.1 cannot parse ``vector<float, n>``,
fails the schema refresh of the whole keyspace, and so never captures such a table (see
docs/local-stack.md). Vector tables are kept by snapshot and reconcile.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cassandra.cluster import Cluster, Session

from engine.topic_tail import TailedEvent, TopicTail

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "debezium"
KEYSPACE = "c2pg_fixtures"
TABLE = "kitchen_sink"
TOPIC = f"c2pg.{KEYSPACE}.{TABLE}"

SCHEMA = [
    f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
    "{'class': 'SimpleStrategy', 'replication_factor': 1}",
    f"CREATE TYPE IF NOT EXISTS {KEYSPACE}.address (street text, zip int)",
    f"""CREATE TABLE IF NOT EXISTS {KEYSPACE}.{TABLE} (
        pk int, ck int,
        t text, big bigint, i int, sm smallint, ti tinyint, vi varint, dec decimal,
        f float, d double, bo boolean, b blob, ip inet,
        ts timestamp, dt date, tm time, dur duration, u uuid, tu timeuuid,
        l list<int>, s set<text>, m map<text, int>, fl frozen<list<int>>,
        addr frozen<address>, tup tuple<int, text>,
        PRIMARY KEY (pk, ck)
    ) WITH cdc = true""",
]

FULL_ROW = (
    "t, big, i, sm, ti, vi, dec, f, d, bo, b, ip, ts, dt, tm, dur, u, tu, l, s, m, fl, addr, tup",
    "'héllo 🌍', 9223372036854775807, -42, 7, -3, 123456789012345678901234567890, "
    "-12345.678901234567890123, 1.5, -2.25e300, true, 0xcafe, '192.168.0.1', "
    "'1969-07-20 20:17:40.123+0000', '1900-01-01', '23:59:59.123456789', 1h2m3s4ms5us6ns, "
    "6f1c6d2c-5b3c-4d1e-9f7a-0123456789ab, 50554d6e-29bb-11e5-b345-feff819cdc9f, "
    "[1, 2, 3], {'a', 'b'}, {'k1': 1, 'k2': 2}, [4, 5], {street: 'Main', zip: 12345}, "
    "(7, 'seven')",
)


@dataclass(frozen=True)
class Scenario:
    name: str
    pk: int
    statements: tuple[str, ...]
    expected_ops: tuple[str, ...]  # one Debezium op per statement, in order


def _ins(pk: int, ck: int, extra: str = "") -> str:
    return f"INSERT INTO {KEYSPACE}.{TABLE} (pk, ck, {FULL_ROW[0]}) VALUES ({pk}, {ck}, {FULL_ROW[1]}){extra}"


T = f"{KEYSPACE}.{TABLE}"
SCENARIOS = [
    Scenario("insert_all_types", 1, (_ins(1, 1),), ("i",)),
    Scenario("insert_nulls_and_empties", 2,
             (f"INSERT INTO {T} (pk, ck, t, b, l, s, m) VALUES (2, 1, '', 0x, [], {{}}, {{}})",
              f"INSERT INTO {T} (pk, ck, t, big) VALUES (2, 2, null, null)"), ("i", "i")),
    Scenario("partial_update", 3,
             (_ins(3, 1), f"UPDATE {T} SET t = 'changed', i = 1 WHERE pk = 3 AND ck = 1"), ("i", "u")),
    Scenario("column_delete", 4,
             (_ins(4, 1), f"DELETE t, big FROM {T} WHERE pk = 4 AND ck = 1",
              f"UPDATE {T} SET i = null WHERE pk = 4 AND ck = 1"), ("i", "u", "u")),
    Scenario("row_delete", 5, (_ins(5, 1), f"DELETE FROM {T} WHERE pk = 5 AND ck = 1"), ("i", "d")),
    Scenario("partition_delete", 6,
             (_ins(6, 1), _ins(6, 2), f"DELETE FROM {T} WHERE pk = 6"), ("i", "i", "d")),
    Scenario("range_delete", 7,
             (_ins(7, 1), _ins(7, 5), f"DELETE FROM {T} WHERE pk = 7 AND ck > 1 AND ck <= 5"),
             ("i", "i", "r")),
    Scenario("ttl_write", 8,
             (_ins(8, 1, " USING TTL 3600"), f"UPDATE {T} USING TTL 60 SET t = 'short' WHERE pk = 8 AND ck = 1"),
             ("i", "u")),
    Scenario("collections", 9,
             (_ins(9, 1),
              f"UPDATE {T} SET l = l + [4], s = s + {{'c'}}, m['k3'] = 3 WHERE pk = 9 AND ck = 1",
              f"UPDATE {T} SET l = l - [1], s = s - {{'a'}} WHERE pk = 9 AND ck = 1",
              f"DELETE m['k1'] FROM {T} WHERE pk = 9 AND ck = 1",
              f"UPDATE {T} SET l = [9], s = {{'z'}}, m = {{'only': 1}} WHERE pk = 9 AND ck = 1"),
             ("i", "u", "u", "u", "u")),
    Scenario("udt_and_tuple", 10,
             (_ins(10, 1), f"UPDATE {T} SET addr = {{street: 'Elm', zip: 1}}, tup = (8, 'eight') "
                           "WHERE pk = 10 AND ck = 1"), ("i", "u")),
    Scenario("explicit_timestamps", 11,
             (f"INSERT INTO {T} (pk, ck, t) VALUES (11, 1, 'newer') USING TIMESTAMP 2000000",
              f"INSERT INTO {T} (pk, ck, t) VALUES (11, 1, 'older') USING TIMESTAMP 1000000",
              f"DELETE FROM {T} USING TIMESTAMP 1500000 WHERE pk = 11 AND ck = 1"), ("i", "i", "d")),
]


def connect(host: str = "127.0.0.1", port: int = 9042) -> tuple[Cluster, Session]:
    from cassandra.auth import PlainTextAuthProvider

    from engine.cql import IDLE_HEARTBEAT_S, reconnection_policy
    from engine.stack.services import cassandra_login

    # The stack's login: its node asks for one in TLS mode only (the driver sends it when asked).
    cluster = Cluster([host], port=port, protocol_version=5, auth_provider=PlainTextAuthProvider(*cassandra_login()),
                      reconnection_policy=reconnection_policy(), idle_heartbeat_interval=IDLE_HEARTBEAT_S)
    return cluster, cluster.connect()


def create_schema(session: Session) -> bool:
    """Keyspace first, then a pause, then the table; True when the UDT is new.

    The connector learns tables from the driver's schema events; a table created in the
    same refresh window as its keyspace is never announced (Debezium 3.4 listener), so the
    keyspace must exist for a moment before the table is created.
    """
    new_keyspace = session.execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
                                   (KEYSPACE,)).one() is None
    session.execute(SCHEMA[0])
    if new_keyspace:
        time.sleep(2)
    new_type = type_is_new(session, KEYSPACE, "address")
    for stmt in SCHEMA[1:]:
        session.execute(stmt)
    return new_type


def type_is_new(session: Session, keyspace: str, name: str) -> bool:
    """Whether UDT ``keyspace.name`` does not exist yet (call before creating it)."""
    return session.execute("SELECT type_name FROM system_schema.types WHERE keyspace_name = %s AND type_name = %s",
                           (keyspace, name)).one() is None


def open_tail() -> TopicTail:
    return TopicTail(TOPIC, {"bootstrap.servers": "127.0.0.1:9092"})


def wait_until_captured(session: Session, timeout_s: float = 60.0) -> None:
    """Write a sentinel row until its event shows up: the connector now knows the table."""
    with open_tail() as tail:
        if not tail.wait_for_capture(
                lambda: session.execute(f"INSERT INTO {T} (pk, ck, t) VALUES (-1, 0, 'sentinel')"), timeout_s,
                key_filter=lambda k: isinstance(k, dict) and k.get("pk") == -1):
            raise TimeoutError(f"no Debezium event for {T} within {timeout_s}s")


def capture_with_restart(stack, tail: TopicTail, write, what: str, *, new_type: bool = False) -> None:
    """Wait for the connector to capture a table; if it does not within 15 s, flush
    system_schema and restart the connector, which then learns UDTs it missed
    (Debezium 3.4.1 only reads them from the node's SSTables at start). With ``new_type``
    (the table uses a UDT created just now, after the connector started) the connector
    cannot know it: restart without waiting."""
    from tests.conftest import exclusive_section

    if not new_type and tail.wait_for_capture(write, 15):
        return
    with exclusive_section("restarts the connector every CDC test depends on"):
        stack.services["cassandra"].nodetool("flush", "system_schema")
        stack.down(["debezium"], on_event=lambda m: None)
        stack.up(["debezium"], on_event=lambda m: None)
        if not tail.wait_for_capture(write, 60):
            raise TimeoutError(f"the connector never captured {what}")


def ensure_captured(session: Session, stack=None) -> None:
    """Create the schema and make sure the connector captures the table (it has a UDT,
    so the connector may need the restart of :func:`capture_with_restart`)."""
    from engine.stack.launcher import Stack

    new_type = create_schema(session)
    with open_tail() as tail:
        capture_with_restart(stack or Stack(), tail,
                             lambda: session.execute(f"INSERT INTO {T} (pk, ck, t) VALUES (-1, 0, 'sentinel')"), T,
                             new_type=new_type)


def run_scenario(session: Session, scenario: Scenario, timeout_s: float = 20.0) -> list[TailedEvent]:
    """Execute the scenario's statements (each after the previous one's write time) and
    return its events, in Kafka order."""
    return run_scenarios(session, [scenario], timeout_s)[scenario.name]


def run_scenarios(session: Session, scenarios: list[Scenario], timeout_s: float = 20.0,
                  settle_s: float = 2.0) -> dict[str, list[TailedEvent]]:
    """Execute every scenario's statements (each after the previous one's write time), then
    read the events of all of them at once: each scenario's by its partition key, in Kafka
    order. After the last expected event, reading goes on ``settle_s`` more, so an extra
    event of any scenario is caught (one wait for all, not one per scenario)."""
    pks = {sc.pk: sc.name for sc in scenarios}
    assert len(pks) == len(scenarios), "each scenario needs its own partition key"
    tail = open_tail()
    try:
        for sc in scenarios:
            for stmt in sc.statements:
                session.execute(stmt)
                time.sleep(0.002)  # distinct microsecond write times, in statement order
        events = tail.read(sum(len(sc.statements) for sc in scenarios), timeout_s,
                           key_filter=lambda k: isinstance(k, dict) and k.get("pk") in pks, settle_s=settle_s)
    finally:
        tail.close()
    out: dict[str, list[TailedEvent]] = {sc.name: [] for sc in scenarios}
    for e in events:
        out[pks[e.key["pk"]]].append(e)  # type: ignore[index]  # the key filter kept dict keys only
    return out


def record(into: Path = FIXTURES) -> None:
    """Rewrite the fixture files from the live stack."""
    cluster, session = connect()
    try:
        ensure_captured(session)
        into.mkdir(parents=True, exist_ok=True)
        for sc in SCENARIOS:
            events = [{"topic": e.topic, "partition": e.partition, "offset": e.offset,
                       "raw_key": e.raw_key, "raw_value": e.raw_value} for e in run_scenario(session, sc)]
            doc = {"scenario": sc.name, "table": T, "schema": SCHEMA, "statements": list(sc.statements),
                   "expected_ops": list(sc.expected_ops), "events": events}
            (into / f"{sc.name}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
            ops = [json.loads(e["raw_value"])["op"] for e in events if e["raw_value"]]
            print(f"{sc.name}: {len(events)} event(s), ops {ops}")
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    record(Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES)


def fresh_sync_pipeline(pg, pipeline, keyspace: str, target_schema: str, name: str, *more: str):
    """An empty PostgreSQL side for ``keyspace.name`` (and each of ``more``) and a pipeline
    ``t-<name>`` syncing only them (own offsets, own supervisor)."""
    from engine.config import TableConfig
    from engine.target import ensure_state

    ensure_state(pg)  # a test run alone on a new stack: nothing has made c2pg's schema yet
    tables = []
    with pg, pg.cursor() as cur:
        cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{target_schema}"')
        for t in (name, *more):
            cur.execute(f'DROP TABLE IF EXISTS "{target_schema}"."{t}"')
            cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = %s AND target_table = %s",
                        (target_schema, t))
            tables.append(TableConfig(keyspace=keyspace, table=t, target_schema=target_schema, target_table=t))
        cur.execute("DELETE FROM _c2pg.offsets WHERE pipeline = %s", (f"t-{name}",))
    return pipeline.model_copy(update={"pipeline": pipeline.pipeline.model_copy(update={"name": f"t-{name}"}),
                                       "tables": tuple(tables)})


def wait_for_table_capture(session: Session, keyspace: str, name: str, sentinel: str, timeout_s: float = 60) -> None:
    """Write ``sentinel`` (an INSERT) until the connector's event for it arrives: the
    connector knows the table, so the test's writes count from now on."""
    with TopicTail(f"c2pg.{keyspace}.{name}", {"bootstrap.servers": "127.0.0.1:9092"}) as tail:
        if not tail.wait_for_capture(lambda: session.execute(sentinel), timeout_s):
            raise TimeoutError(f"the connector never captured {keyspace}.{name}")


def stop_sync(pipeline: str) -> None:
    """Drain and remove ``pipeline``'s supervisor if one runs (a test's cleanup)."""
    import ray

    from engine.sync.supervisor import find

    sup = find(pipeline)
    if sup is not None:
        try:
            ray.get(sup.stop.remote(), timeout=60)
        finally:
            ray.kill(sup, no_restart=True)
