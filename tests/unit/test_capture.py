"""The capture heartbeat's verdict, the connector-log follower and the capture settings.

The verdict (:func:`engine.capture.assess`) is pure: every case states the clock. The log
follower reads a file written here in the connector's own line format (copied from the local
stack's log, see docs/troubleshooting.md).
"""

from __future__ import annotations

import pytest

from engine.capture import ConnectorLog, Finding, assess, describe
from engine.config import ConfigError, PipelineConfig

NOW = 1_800_000_000.0
BOUND = 30.0


def row(**kw):
    base = {"node": "n1", "address": "10.0.0.1", "since": NOW - 600, "written_us": None, "written_at": None,
            "write_error": None, "seen_us": None, "seen_at": None}
    return {**base, **kw}


def us(t: float) -> int:
    return int(t * 1_000_000)


def test_heartbeats_arriving_are_ok_with_their_age_and_transit():
    [n] = assess([row(written_us=us(NOW - 1), written_at=NOW - 1, seen_us=us(NOW - 1), seen_at=NOW - 0.6)],
                 NOW, BOUND)
    assert n.state == "ok" and not n.stalled
    assert n.delay_s == pytest.approx(1.0) and n.transit_s == pytest.approx(0.4)


def test_a_heartbeat_not_arrived_within_the_bound_is_a_stall_naming_the_node_and_the_last_seen():
    [n] = assess([row(written_us=us(NOW - 1), written_at=NOW - 1, seen_us=us(NOW - 31), seen_at=NOW - 30.5)],
                 NOW, BOUND)
    assert n.stalled
    assert "10.0.0.1" in n.reason and "31 s" in n.reason and n.last_seen in n.reason
    assert n.waiting_since == pytest.approx(NOW - 31)


def test_within_the_bound_a_late_heartbeat_is_not_yet_a_stall():
    [n] = assess([row(written_us=us(NOW - 1), written_at=NOW - 1, seen_us=us(NOW - 29), seen_at=NOW - 28)],
                 NOW, BOUND)
    assert n.state == "ok"


def test_a_new_writer_gets_the_bound_before_old_arrivals_count_against_it():
    # The supervisor restarted 10 s ago; the newest heartbeat seen is from an hour ago.
    rows = [row(since=NOW - 10, written_us=us(NOW - 1), written_at=NOW - 1, seen_us=us(NOW - 3600),
                seen_at=NOW - 3599)]
    assert assess(rows, NOW, BOUND)[0].state == "ok"
    assert assess(rows, NOW + 25, BOUND)[0].stalled


def test_nothing_seen_yet_is_starting_then_stalled():
    rows = [row(since=NOW - 5, written_us=us(NOW - 1), written_at=NOW - 1)]
    assert assess(rows, NOW, BOUND)[0].state == "starting"
    later = [row(since=NOW - 40, written_us=us(NOW - 1), written_at=NOW - 1)]
    [n] = assess(later, NOW, BOUND)
    assert n.stalled and "none has arrived" in n.reason


def test_no_heartbeat_written_is_not_measured_not_stalled():
    [n] = assess([row(written_us=us(NOW - 300), written_at=NOW - 300, seen_us=us(NOW - 300), seen_at=NOW - 299)],
                 NOW, BOUND)
    assert n.state == "not measured" and "sync not running" in n.reason
    [failing] = assess([row(written_us=us(NOW - 300), written_at=NOW - 300, write_error="Unavailable: node down")],
                       NOW, BOUND)
    assert failing.state == "not measured" and "Unavailable: node down" in failing.reason


def test_describe_raises_naming_stalls_causes_and_errors_and_keeps_warnings_in_the_detail():
    stalled = assess([row(written_us=us(NOW - 1), written_at=NOW - 1, seen_us=us(NOW - 60), seen_at=NOW - 59)],
                     NOW, BOUND)
    with pytest.raises(RuntimeError, match=r"capture: no heartbeat from node 10\.0\.0\.1.*; connector says X"):
        describe(stalled, [], "connector says X")
    ok = assess([row(written_us=us(NOW - 1), written_at=NOW - 1, seen_us=us(NOW - 1), seen_at=NOW)], NOW, BOUND)
    warn = Finding("ks.v", "column e is a vector", "drop it", "warning")
    assert "ks.v: column e is a vector" in describe(ok, [warn])
    # A table that will not be captured is named, but only a stall fails the check: the
    # table may be configured for snapshot and reconcile alone (config check fails on it).
    off = Finding("ks.t", "cdc is off", "ALTER TABLE ks.t WITH cdc = true", "error")
    assert "error: ks.t: cdc is off. Fix: ALTER TABLE" in describe(ok, [off])
    with pytest.raises(RuntimeError, match=r"capture: no heartbeat.*; error: ks\.t: cdc is off"):
        describe(stalled, [off])
    assert describe([], []).startswith("not measured")


LOG = """\
INFO  [main] 2026-12-04 04:39:25,466 Config.java:1286 - Node configuration:[allocate_tokens_for_keyspace=null]
INFO  [main] 2026-12-04 04:39:27,000 SchemaHolder.java:49 - Added the schema for ks.a to table schema cache.
WARN  [s0-admin-0] 2026-12-04 04:39:28,632 Cassandra5SchemaChangeListener.java:166 - Error happened while adding table ks.udt_table to schema instance.
org.apache.cassandra.exceptions.InvalidRequestException: Unknown type ks.address
\tat org.apache.cassandra.cql3.types.Foo(Foo.java:1)
INFO  [s0-admin-0] 2026-12-04 04:40:00,000 SchemaHolder.java:49 - Added the schema for ks.b to table schema cache.
"""  # noqa: E501 - the connector's lines, as logged

ERROR = """\
ERROR [pool-1-thread-1] 2026-12-04 04:41:47,451 CommitLogIdxParser.java:102 - Processing of LogicalCommitLog{log=CommitLog-7-1.log} errored out
io.debezium.DebeziumException: Error occurred while processing commit log CommitLog-7-1.log
\tat io.debezium.Foo(Foo.java:1)
Caused by: io.debezium.DebeziumException: Failed to process PartitionUpdate [ks.m] key=1
Caused by: org.apache.cassandra.serializers.MarshalException: Not enough bytes to read a list
\t... 3 more
WARN  [s0-admin-0] 2026-12-04 04:41:50,000 Loggers.java:39 - [s0] Unexpected error while refreshing schema for a SCHEMA_CHANGE event, keeping previous version (CompletionException: java.lang.IllegalArgumentException: Could not parse type name vector<float, 3>)
"""  # noqa: E501 - the connector's lines, as logged


def test_the_log_follower_knows_loaded_and_failed_tables_since_the_last_start(tmp_path):
    path = tmp_path / "debezium.log"
    path.write_text("INFO  [main] 2026-12-04 01:00:00,000 SchemaHolder.java:49 - Added the schema for ks.old to "
                    "table schema cache.\n" + LOG)
    st = ConnectorLog(path).update()
    assert st.started == "2026-12-04 04:39:25"
    assert st.loaded == {"ks.a", "ks.b"}  # ks.old was loaded by an earlier run of the connector
    assert st.failed == {"ks.udt_table": "org.apache.cassandra.exceptions.InvalidRequestException: Unknown type "
                                         "ks.address"}
    assert st.last_error is None


def test_the_log_follower_reads_only_what_was_appended_and_finds_the_root_cause(tmp_path):
    path = tmp_path / "debezium.log"
    path.write_text(LOG)
    follower = ConnectorLog(path)
    follower.update()
    with path.open("a") as f:
        f.write(ERROR)
    st = follower.update()
    assert st.last_error.startswith("Processing of LogicalCommitLog")
    assert st.last_error.endswith("cause: org.apache.cassandra.serializers.MarshalException: Not enough bytes "
                                  "to read a list")
    assert st.vector_refresh_failed == "2026-12-04 04:41:50"
    assert st.loaded == {"ks.a", "ks.b"}
    path.write_text(LOG[:200] + "\n")  # rotated: shorter than what was read, so read again from the start
    assert follower.update().loaded == set()


def _cfg(**capture) -> dict:
    return {"pipeline": {"name": "p"}, "cassandra": {"contact_points": ["127.0.0.1"]},
            "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
            "postgres": {"host": "127.0.0.1", "database": "d", "user": "u", "password": "env:PGPASS"},
            "tables": [{"keyspace": "ks", "table": "t"}], "capture": capture}


def test_settings_stall_after_must_exceed_the_interval_and_the_heartbeat_keyspace_is_c2pgs(tmp_path):
    import yaml

    from engine.config import load_config

    bad = {**_cfg(heartbeat_interval="10s", stall_after="10s"),
           "tables": [{"keyspace": "c2pg", "table": "t"}]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as err:
        load_config(path, resolve_secrets=False)
    text = str(err.value)
    assert "capture.stall_after: must be longer than capture.heartbeat_interval (10s)" in text
    assert "c2pg.t is in capture.heartbeat_keyspace 'c2pg'" in text
    path.write_text(yaml.safe_dump(_cfg(connector_log="logs/debezium.log")))
    cfg = load_config(path, resolve_secrets=False)
    assert cfg.capture.connector_log == str(tmp_path / "logs" / "debezium.log")
    assert cfg.capture.heartbeat and cfg.capture.stall_after.total_seconds() == 30
    assert PipelineConfig.model_validate(_cfg()).tables[0].capture == "cdc"


def test_the_wait_counts_from_the_first_heartbeat_missing_and_a_stopped_writer_is_not_a_stall():
    # Healthy at a 5 s interval: the newest seen is one interval and a transit old.
    rows = [row(written_us=us(NOW - 0.2), written_at=NOW - 0.2, seen_us=us(NOW - 5.6), seen_at=NOW - 5.2)]
    assert assess(rows, NOW, 5.5, interval_s=5.0)[0].state == "ok"
    assert assess(rows, NOW + 5.2, 5.5, interval_s=5.0)[0].stalled
    # `sync stop` clears written_at: the last heartbeat, written but never seen, is no stall.
    stopped = [row(written_us=us(NOW - 40), written_at=None, seen_us=us(NOW - 45), seen_at=NOW - 44)]
    assert assess(stopped, NOW, BOUND, interval_s=5.0)[0].state == "not measured"


def test_an_errors_causes_read_later_still_count(tmp_path):
    path = tmp_path / "debezium.log"
    head, tail = ERROR.split("Caused by: org.apache", 1)
    path.write_text(LOG + head)
    follower = ConnectorLog(path)
    assert follower.update().last_error.endswith("Failed to process PartitionUpdate [ks.m] key=1")
    with path.open("a") as f:
        f.write("Caused by: org.apache" + tail)
    assert follower.update().last_error.endswith("MarshalException: Not enough bytes to read a list")
