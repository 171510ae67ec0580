"""c2pg's own state for a target that no longer matches the target, the source or the topic
(engine/state_check.py), and a status that tells the truth after a server came back.

A pipeline of four tables is synced, stopped, and then each table's state is made wrong in
its own way, the way an operator or an accident would: the target dropped; a column dropped
in PostgreSQL; the offsets left behind by a topic that was deleted and created again.
``c2pg sync start`` must then fail naming each table that cannot be trusted with its fix,
sync the others, and never crash-loop; each fix must bring its table back without a
restart. A target dropped with its Cassandra table recreated under another key starts
clean. The other cases are checked where the supervisor checks them (``verify``).
"""

from __future__ import annotations

import time
import uuid

import pytest
import ray
import yaml

from engine import cli, health
from engine.compare import wait_equal
from engine.state_check import StateMismatch, Watermarks, verify
from engine.schema import read_table
from engine.sync.supervisor import find
from engine.target import ensure_target
from tests.conftest import EXAMPLE_PIPELINE, ROOT, alive_pg, exclusive_section
from tests.integration.cdc_scenarios import (
    TopicTail,
    capture_with_restart,
    fresh_sync_pipeline,
    stop_sync,
    wait_for_table_capture,
)

KS = "c2pg_state_test"
SCHEMA = "state_test"


@pytest.fixture(scope="module")
def cass(cql_session, cdc_keyspaces):
    assert KS in cdc_keyspaces  # past the connector's schema-refresh window
    return cql_session


def _pipeline_file(tmp_path, name: str, tables: list[str]) -> str:
    doc = yaml.safe_load(EXAMPLE_PIPELINE.read_text())
    doc["pipeline"]["name"] = name
    doc["tables"] = [{"keyspace": KS, "table": t, "target_schema": SCHEMA} for t in tables]
    secrets = ROOT / ".stack" / "secrets"
    doc["vault"]["role_id"] = f"file:{secrets / 'vault-role-id'}"
    doc["vault"]["secret_id"] = f"file:{secrets / 'vault-secret-id'}"
    doc["capture"]["connector_log"] = str(secrets.parent / "logs" / "debezium.log")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _new_table(cass, name: str, columns: str = "pk int, ck int, a text, PRIMARY KEY (pk, ck)",
               sentinel: str = "(pk, ck, a) VALUES (-1, -1, 'sentinel')") -> None:
    cass.execute(f"CREATE TABLE {KS}.{name} ({columns}) WITH cdc = true")
    wait_for_table_capture(cass, KS, name, f"INSERT INTO {KS}.{name} {sentinel}")


def _write(cass, name: str, start: int, rows: int) -> None:
    stmt = cass.prepare(f"INSERT INTO {KS}.{name} (pk, ck, a) VALUES (?, ?, ?)")
    for i in range(start, start + rows):
        cass.execute(stmt, (i % 7, i, f"v{i}"))


def _equal(cass, pg, name: str, timeout_s: float = 60) -> None:
    assert wait_equal(cass, pg, KS, name, SCHEMA, name, timeout_s=timeout_s) == [], name


def _status(name: str) -> dict:
    return ray.get(find(name).status.remote(), timeout=30)


def _wait_refused(name: str, want: set[str], timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = _status(name)
        if {r["table"] for r in status["refused"]} == want:
            return status
        assert time.monotonic() < deadline, f"refused {status['refused']}, wanted {want}"
        time.sleep(0.2)


def test_state_that_no_longer_matches_is_rebuilt_or_refused_never_crash_looped(
        stack, cass, pg, pipeline, ray_cluster, tmp_path, capsys):
    run = uuid.uuid4().hex[:6]
    names = {k: f"{k}_{run}" for k in ("ok", "dropped", "lostcol", "newtopic")}
    for n in names.values():  # made together: one wait for the connector's schema refresh
        cass.execute(f"CREATE TABLE {KS}.{n} (pk int, ck int, a text, PRIMARY KEY (pk, ck)) WITH cdc = true")
    for n in names.values():
        wait_for_table_capture(cass, KS, n, f"INSERT INTO {KS}.{n} (pk, ck, a) VALUES (-1, -1, 'sentinel')")
    cfg = fresh_sync_pipeline(pg, pipeline, KS, SCHEMA, *names.values())
    config = _pipeline_file(tmp_path, cfg.name, list(names.values()))
    try:
        for n in names.values():
            _write(cass, n, 0, 20)
        assert cli.main(["sync", "start", "--config", config]) == 0
        for n in names.values():
            _equal(cass, pg, n)
        assert cli.main(["sync", "stop", "--config", config]) == 0

        # Each table's state made wrong, as an owner or an accident would.
        dropped, lostcol, newtopic = names["dropped"], names["lostcol"], names["newtopic"]
        with pg, pg.cursor() as cur:
            cur.execute(f'DROP TABLE "{SCHEMA}"."{dropped}"')
            cur.execute(f'ALTER TABLE "{SCHEMA}"."{lostcol}" DROP COLUMN a')
            # Offsets of a topic that was deleted and created again: past the new topic's end.
            cur.execute("UPDATE _c2pg.offsets SET next_offset = next_offset + 1000 WHERE pipeline = %s "
                        "AND topic = %s", (cfg.name, f"c2pg.{KS}.{newtopic}"))

        capsys.readouterr()
        assert cli.main(["sync", "start", "--config", config]) == 2
        err = capsys.readouterr().err
        for table, words in ((dropped, ["was dropped", "c2pg snapshot", f"--table {KS}.{dropped}"]),
                             (lostcol, ["were dropped in PostgreSQL", "ADD COLUMN", "--repair"]),
                             (newtopic, ["past the partition's end", "DELETE FROM _c2pg.offsets"])):
            line = next((x for x in err.splitlines() if f"table {KS}.{table} refused" in x), "")
            assert all(w in line for w in words), (table, err)

        # The others sync, and nothing restarts.
        _write(cass, names["ok"], 100, 20)
        _equal(cass, pg, names["ok"])
        status = _wait_refused(cfg.name, {f"{KS}.{t}" for t in (dropped, lostcol, newtopic)})
        assert all(w["restarts"] == 0 for w in status["workers"]), status["workers"]
        with pytest.raises(RuntimeError, match=f"table {KS}.{dropped} refused"):
            health.describe_sync(status)
        capsys.readouterr()
        assert cli.main(["sync", "status", "--config", config]) == 0
        out = capsys.readouterr().out
        assert f"REFUSED {KS}.{lostcol}" in out and "; REFUSED:" in out

        # The fixes the errors name bring their tables back, without a restart.
        from engine.reconcile import run_reconcile

        with pg, pg.cursor() as cur:
            cur.execute(f'ALTER TABLE "{SCHEMA}"."{lostcol}" ADD COLUMN a text')
            cur.execute("DELETE FROM _c2pg.offsets WHERE pipeline = %s AND topic = %s",
                        (cfg.name, f"c2pg.{KS}.{newtopic}"))
        _wait_refused(cfg.name, {f"{KS}.{dropped}"})
        lost_cfg = next(t for t in cfg.tables if t.table == lostcol)
        assert run_reconcile(cfg, lost_cfg, repair=True, progress=False).status == "completed"
        _equal(cass, pg, lostcol)
        _write(cass, newtopic, 200, 5)
        _equal(cass, pg, newtopic)
        status = _status(cfg.name)
        assert all(w["restarts"] == 0 for w in status["workers"]), status["workers"]
    finally:
        stop_sync(cfg.name)


def test_a_target_dropped_and_its_table_recreated_with_another_key_starts_clean(
        stack, cass, pg, pipeline, ray_cluster, tmp_path, capsys):
    """The issue's case: every worker crash-looped on ``column "pk" does not exist`` (the old
    tombstone table's index) while ``sync start`` said "running"."""
    name = f"rekey_{uuid.uuid4().hex[:6]}"
    _new_table(cass, name)
    cfg = fresh_sync_pipeline(pg, pipeline, KS, SCHEMA, name)
    config = _pipeline_file(tmp_path, cfg.name, [name])
    try:
        _write(cass, name, 0, 20)
        cass.execute(f"DELETE FROM {KS}.{name} WHERE pk = 1 AND ck = 1")  # a deletion left in _c2pg
        assert cli.main(["sync", "start", "--config", config]) == 0
        _equal(cass, pg, name)
        assert cli.main(["sync", "stop", "--config", config]) == 0
        with pg, pg.cursor() as cur:
            cur.execute(f'DROP TABLE "{SCHEMA}"."{name}"')
        # Debezium 3.4.1 rejects the new definition ("Partition key column mismatch") until
        # it restarts (docs/local-stack.md): no other test's writes meanwhile.
        with exclusive_section("the connector restarts: it takes a table recreated with another key only then"):
            cass.execute(f"DROP TABLE {KS}.{name}")
            cass.execute(f"CREATE TABLE {KS}.{name} (id text PRIMARY KEY, a text) WITH cdc = true")
            with TopicTail(f"c2pg.{KS}.{name}", {"bootstrap.servers": "127.0.0.1:9092"}) as tail:
                capture_with_restart(stack, tail, lambda: cass.execute(
                    f"INSERT INTO {KS}.{name} (id, a) VALUES ('sentinel', 's')"), name, new_type=True)
        pg = alive_pg(pg, pipeline)
        for i in range(10):
            cass.execute(f"INSERT INTO {KS}.{name} (id, a) VALUES (%s, %s)", (f"k{i}", f"new{i}"))

        capsys.readouterr()
        assert cli.main(["sync", "start", "--config", config]) == 0
        _equal(cass, pg, name)
        status = _status(cfg.name)
        assert status["refused"] == [] and all(w["restarts"] == 0 for w in status["workers"]), status
        with pg, pg.cursor() as cur:  # the old offsets kept: none of the old table's events applied
            cur.execute(f'SELECT count(*) FROM "{SCHEMA}"."{name}"')
            assert cur.fetchone() == (11,)
    finally:
        stop_sync(cfg.name)


def test_a_tombstone_table_of_another_key_is_rebuilt_and_a_column_of_another_type_refused(cass, pg):
    """Checked where the supervisor checks, without a pipeline: ``verify`` against the real
    target and Cassandra table."""
    name = f"tomb_{uuid.uuid4().hex[:6]}"
    cass.execute(f"CREATE TABLE {KS}.{name} (pk int, ck int, a text, PRIMARY KEY (pk, ck))")
    schema = read_table(cass, KS, name)
    with pg, pg.cursor() as cur:
        cur.execute(f'DROP TABLE IF EXISTS "{SCHEMA}"."{name}"')
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = %s AND target_table = %s", (SCHEMA, name))
    target = ensure_target(pg, schema, SCHEMA, name, evolve=True)
    with pg, pg.cursor() as cur:  # deletions recorded for another key (id text) than the target's
        cur.execute(f'DROP TABLE _c2pg."{target.tomb_table}"')
        cur.execute(f'CREATE TABLE _c2pg."{target.tomb_table}" (_c2pg_id bigserial, id text, '
                    "_c2pg_kind text, _c2pg_deleted_at bigint)")
        cur.execute(f'INSERT INTO _c2pg."{target.tomb_table}" (id, _c2pg_kind, _c2pg_deleted_at) '
                    "VALUES ('x', 'row', 1)")
    done = verify(pg, schema, SCHEMA, name, pipeline="t", topic="none", watermarks=lambda: {})
    assert len(done) == 1 and "1 deletion(s) of another key" in done[0]
    ensure_target(pg, schema, SCHEMA, name, evolve=True)  # made again, keyed by (pk, ck)
    assert verify(pg, schema, SCHEMA, name, pipeline="t", topic="none", watermarks=lambda: {}) == []

    with pg, pg.cursor() as cur:
        cur.execute(f'ALTER TABLE "{SCHEMA}"."{name}" ALTER COLUMN a TYPE varchar(3)')
    with pytest.raises(StateMismatch) as err:
        verify(pg, schema, SCHEMA, name, pipeline="t", topic="none")
    assert f"{KS}.{name}" in str(err.value) and "a is character varying(3), c2pg writes text" in str(err.value)
    assert f'ALTER TABLE "{SCHEMA}"."{name}" ALTER COLUMN "a" TYPE text' in str(err.value)

    # Offsets before the oldest event Kafka holds: retention deleted events never applied.
    with pg, pg.cursor() as cur:
        cur.execute(f'ALTER TABLE "{SCHEMA}"."{name}" ALTER COLUMN a TYPE text')
        cur.execute("INSERT INTO _c2pg.offsets (pipeline, topic, kafka_partition, next_offset) VALUES "
                    "('t-retention', 'c2pg.x', 0, 5) ON CONFLICT DO NOTHING")
    try:
        with pytest.raises(StateMismatch, match="3 event\\(s\\) were deleted by retention"):
            verify(pg, schema, SCHEMA, name, pipeline="t-retention", topic="c2pg.x",
                   watermarks=lambda: {0: Watermarks(8, 20)})
    finally:
        with pg, pg.cursor() as cur:
            cur.execute("DELETE FROM _c2pg.offsets WHERE pipeline = 't-retention'")


def _heartbeat_offsets(status: dict) -> dict:
    return {(p["topic"], p["partition"]): p["offset"] for w in status["workers"] for p in w["partitions"]
            if p["heartbeat"]}


def test_after_a_postgres_restart_every_worker_is_running_again_at_its_real_rate(
        stack, cass, pg, pipeline, ray_cluster, tmp_path):
    """The restart lands on an idle pipeline just after a burst: the tables have nothing to
    redo, so only a worker that notices its closed connection by itself writes again (its
    heartbeats failed for ever while it said ``running``, and capture looked stalled)."""
    name = f"honest_{uuid.uuid4().hex[:6]}"
    _new_table(cass, name)
    cfg = fresh_sync_pipeline(pg, pipeline, KS, SCHEMA, name)
    config = _pipeline_file(tmp_path, cfg.name, [name])
    try:
        assert cli.main(["sync", "start", "--config", config]) == 0
        _write(cass, name, 0, 300)
        _equal(cass, pg, name)
        before = _status(cfg.name)
        assert any(p["events_per_s"] for w in before["workers"] for p in w["partitions"] if not p["heartbeat"])
        with exclusive_section("PostgreSQL goes down for every test"):
            stack.down(["postgres"], on_event=lambda m: None)
            try:
                deadline = time.monotonic() + 60
                while not any(w["state"] == "retrying" for w in _status(cfg.name)["workers"]):
                    assert time.monotonic() < deadline, "no worker said it could not write"
                    time.sleep(0.2)
            finally:
                stack.up(["postgres"], on_event=lambda m: None)
        # Back: every worker running without an error, the rate the real one (0: idle) once
        # the 10 s window has passed, and the heartbeats applied again (their offsets move).
        deadline = time.monotonic() + 40
        while True:
            status = _status(cfg.name)
            workers = status["workers"]
            rates = [p["events_per_s"] for w in workers for p in w["partitions"] if not p["heartbeat"]]
            # One node: its heartbeats all go to one partition of the heartbeat topic.
            moved = any(off is not None and off > (_heartbeat_offsets(before).get(k) or -1)
                        for k, off in _heartbeat_offsets(status).items())
            if {(w["state"], w["error"]) for w in workers} == {("running", None)} and not any(rates) and moved:
                break
            assert time.monotonic() < deadline, [(w["state"], w["error"], w["partitions"]) for w in workers]
            time.sleep(0.5)
        assert all(w["restarts"] == 0 for w in workers)
        assert not status["capture"]["stalled"]
    finally:
        stop_sync(cfg.name)


def test_a_table_not_in_cassandra_yet_waits_and_is_synced_once_created(stack, cass, pg, pipeline, ray_cluster,
                                                                      tmp_path, capsys):
    """A pipeline may list a table before it is created: nothing of it is at risk (it has no
    topic), so it is not refused (``/readyz`` stays up) but waiting, and synced without a
    restart from the round after it exists."""
    run = uuid.uuid4().hex[:6]
    here, later = f"here_{run}", f"later_{run}"
    _new_table(cass, here)
    cfg = fresh_sync_pipeline(pg, pipeline, KS, SCHEMA, here, later)
    config = _pipeline_file(tmp_path, cfg.name, [here, later])
    try:
        capsys.readouterr()
        assert cli.main(["sync", "start", "--config", config]) == 0
        status = _status(cfg.name)
        assert status["refused"] == [] and [w["table"] for w in status["waiting"]] == [f"{KS}.{later}"], status
        assert "does not exist in Cassandra" in status["waiting"][0]["reason"]
        deadline = time.monotonic() + 60
        while {w["state"] for w in status["workers"]} != {"running"}:  # started, not yet running
            assert time.monotonic() < deadline, status["workers"]
            time.sleep(0.5)
            status = _status(cfg.name)
        health.describe_sync(status)  # raises when sync is unhealthy: a waiting table is not
        assert cli.main(["sync", "status", "--config", config]) == 0
        assert f"WAITING {KS}.{later}" in capsys.readouterr().out

        _new_table(cass, later)
        _write(cass, later, 0, 20)
        _equal(cass, pg, later)
        _write(cass, here, 0, 20)
        _equal(cass, pg, here)
        status = _status(cfg.name)
        assert status["waiting"] == [] and status["refused"] == [], status
        assert all(w["restarts"] == 0 for w in status["workers"]), status["workers"]
    finally:
        stop_sync(cfg.name)
