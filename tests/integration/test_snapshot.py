"""Snapshot end to end: real Cassandra → Ray Data → real PostgreSQL.

One keyspace per test module; every test makes its own table so they stay independent.
"""

from __future__ import annotations

import hashlib
import time
from decimal import Decimal

import psycopg2
import pytest
from cassandra.concurrent import execute_concurrent, execute_concurrent_with_args
from cassandra.query import BatchStatement, BatchType

from engine import cql
from engine.compare import differences
from engine.config import TableConfig
from engine.snapshot import run_snapshot
from jobs import snapshot as snapshot_job

KS = "c2pg_snapshot_test"


@pytest.fixture(scope="module")
def cass(stack, pipeline):
    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    session.execute(f"CREATE KEYSPACE {KS} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    yield session
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    cluster.shutdown()


@pytest.fixture()
def pg(pipeline):
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    conn.autocommit = True
    yield conn
    conn.close()


def _target(pipeline, table: str) -> TableConfig:
    return TableConfig(keyspace=KS, table=table, target_schema="snap_test", target_table=table)


def _drop_target(pg, table: str) -> None:
    with pg.cursor() as cur:
        cur.execute("CREATE SCHEMA IF NOT EXISTS snap_test")
        cur.execute(f'DROP TABLE IF EXISTS snap_test."{table}"')
        if _has_state(cur):
            from engine.pg_dialect import tombstone_table_name

            cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = 'snap_test' AND target_table = %s",
                        (table,))
            cur.execute(f"DROP TABLE IF EXISTS _c2pg.{tombstone_table_name('snap_test', table)}")


def _has_state(cur) -> bool:
    cur.execute("SELECT to_regclass('_c2pg.catalog') IS NOT NULL")
    return cur.fetchone()[0]


def _checksum(rows) -> str:
    h = hashlib.sha256()
    for row in sorted(rows):
        h.update(repr(row).encode())
    return h.hexdigest()


def _fill_events(cass, table: str, partitions: int, per_partition: int) -> None:
    # No CDC: the snapshot reads the same either way, and 100,000 change events would keep the
    # connector and Kafka busy well into the tests after this one.
    cass.execute(f"CREATE TABLE {KS}.{table} (pk int, ck int, payload text, n bigint, amount decimal, "
                 f"tags set<text>, PRIMARY KEY (pk, ck))")
    stmt = cass.prepare(f"INSERT INTO {KS}.{table} (pk, ck, payload, n, amount, tags) VALUES (?, ?, ?, ?, ?, ?)")
    # One unlogged batch per partition (a single-partition batch is one mutation): ten times
    # faster to write than one statement per row, from a Python client on two cores.
    batches = []
    for p in range(partitions):
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for c in range(per_partition):
            batch.add(stmt, (p, c, f"row {p}/{c} \t with tab", p * 1_000_000 + c, Decimal(f"{p}.{c:04d}"),
                             {f"t{c % 3}"}))
        batches.append((batch, ()))
    execute_concurrent(cass, batches, concurrency=50, raise_on_first_error=True)


def test_100k_rows_over_many_partitions_copy_completely(cass, pg, pipeline, ray_cluster):
    _drop_target(pg, "events")
    _fill_events(cass, "events", partitions=2000, per_partition=50)
    result = run_snapshot(pipeline, _target(pipeline, "events"), splits=8)
    assert result.ok, result
    assert result.rows == 100_000 and result.splits == result.splits_done >= 4
    assert result.mode == "direct"

    src = [(r.pk, r.ck, r.payload, r.n, r.amount, tuple(sorted(r.tags)))
           for r in cass.execute(f"SELECT pk, ck, payload, n, amount, tags FROM {KS}.events")]
    with pg.cursor() as cur:
        cur.execute("SELECT pk, ck, payload, n, amount, tags FROM snap_test.events")
        dst = [(pk, ck, p, n, a, tuple(sorted(t))) for pk, ck, p, n, a, t in cur.fetchall()]
        cur.execute("SELECT count(*) FROM snap_test.events WHERE _c2pg_token IS NULL OR _c2pg_wt[1] IS NULL")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT status, (stats->>'rows')::bigint FROM _c2pg.runs WHERE run_id = %s", (result.run_id,))
        assert cur.fetchone() == ("succeeded", 100_000)
        cur.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'snap_test' AND tablename = 'events'")
        assert any("_c2pg_token" in d for (d,) in cur.fetchall()), "token index built after the load"
    assert len(dst) == len(src) == 100_000
    assert _checksum(dst) == _checksum(src)


def test_resnapshot_never_overwrites_newer_cells(cass, pg, pipeline, ray_cluster):
    _drop_target(pg, "resnap")
    cass.execute(f"CREATE TABLE {KS}.resnap (id int PRIMARY KEY, a text, b text) WITH cdc = true")
    for i in range(100):
        cass.execute(f"INSERT INTO {KS}.resnap (id, a, b) VALUES (%s, %s, %s)", (i, f"a{i}", f"b{i}"))
    first = run_snapshot(pipeline, _target(pipeline, "resnap"), splits=4)
    assert first.ok and first.rows == 100
    future = int(time.time() * 1_000_000) + 3_600_000_000
    with pg.cursor() as cur:  # what sync does for a newer write: a newer value, a newer time
        cur.execute("SELECT array_position(ARRAY(SELECT c->>'name' FROM _c2pg.catalog, "
                    "jsonb_array_elements(columns) c WHERE target_table = 'resnap' AND c->>'kind' = 'regular'), 'a')")
        pos = cur.fetchone()[0]
        cur.execute(f"UPDATE snap_test.resnap SET a = 'newer', _c2pg_wt[{pos}] = %s WHERE id < 10", (future,))
    # Cassandra changes meanwhile, with write times older than `future`.
    for i in range(100):
        cass.execute(f"UPDATE {KS}.resnap SET a = %s, b = %s WHERE id = %s", (f"A{i}", f"B{i}", i))
    second = run_snapshot(pipeline, _target(pipeline, "resnap"), splits=4)
    assert second.ok and second.mode == "merge"
    with pg.cursor() as cur:
        cur.execute("SELECT id, a, b FROM snap_test.resnap ORDER BY id")
        rows = cur.fetchall()
    assert rows[:10] == [(i, "newer", f"B{i}") for i in range(10)], "newer cells kept, others updated"
    assert rows[10:] == [(i, f"A{i}", f"B{i}") for i in range(10, 100)]


def test_unknown_table_exits_2_and_names_it(pipeline, example_pipeline_path, capsys, ray_cluster):
    code = snapshot_job.main(["--config", str(example_pipeline_path), "--table", f"{KS}.no_such_table"])
    assert code == 2
    assert "no_such_table" in capsys.readouterr().err


def _faults(monkeypatch, tmp_path, spec: str) -> None:
    """Turn on a fault point for this test (Ray workers inherit the environment)."""
    monkeypatch.setenv("C2PG_FAULTS", spec)
    monkeypatch.setenv("C2PG_FAULTS_DIR", str(tmp_path / "faults"))


def _small_table(cass, pg, name: str, rows: int = 3000) -> list[tuple]:
    _drop_target(pg, name)
    cass.execute(f"CREATE TABLE {KS}.{name} (pk int, ck int, v text, PRIMARY KEY (pk, ck)) WITH cdc = true")
    stmt = cass.prepare(f"INSERT INTO {KS}.{name} (pk, ck, v) VALUES (?, ?, ?)")
    args = [(i % 300, i, f"v{i}") for i in range(rows)]
    execute_concurrent_with_args(cass, stmt, args, concurrency=100, raise_on_first_error=True)
    return sorted(args)


def _pg_rows(pg, name: str) -> list[tuple]:
    with pg.cursor() as cur:
        cur.execute(f'SELECT pk, ck, v FROM snap_test."{name}" ORDER BY pk, ck')
        return cur.fetchall()


def test_a_read_task_whose_worker_dies_mid_split_still_ends_complete(cass, pg, pipeline, ray_cluster,
                                                                       monkeypatch, tmp_path):
    expected = _small_table(cass, pg, "crash")
    _faults(monkeypatch, tmp_path, "snapshot.read:split=1,after=100,action=crash,times=1")
    result = run_snapshot(pipeline, _target(pipeline, "crash"), splits=4)
    assert len(list((tmp_path / "faults" / "snapshot.read").iterdir())) == 1, "the worker did die once"
    assert result.ok and result.rows == len(expected)
    assert _pg_rows(pg, "crash") == expected


def test_a_cassandra_timeout_mid_split_is_retried_from_the_last_partition(cass, pg, pipeline, ray_cluster,
                                                                         monkeypatch, tmp_path):
    expected = _small_table(cass, pg, "timeout")
    _faults(monkeypatch, tmp_path, "snapshot.read:split=0,after=150,action=timeout,times=2")
    result = run_snapshot(pipeline, _target(pipeline, "timeout"), splits=4)
    assert result.retries == 2
    assert result.ok and result.rows == len(expected)
    assert _pg_rows(pg, "timeout") == expected


def test_resume_redoes_only_the_unfinished_splits(cass, pg, pipeline, ray_cluster, monkeypatch, tmp_path):
    expected = _small_table(cass, pg, "resume")
    _faults(monkeypatch, tmp_path, "snapshot.read:split=2,action=error,times=-1")
    with pytest.raises(Exception, match="injected fault"):
        run_snapshot(pipeline, _target(pipeline, "resume"), splits=4)
    with pg.cursor() as cur:
        cur.execute("SELECT run_id, status FROM _c2pg.runs WHERE source_table = 'resume' "
                    "ORDER BY started_at DESC LIMIT 1")
        run_id, status = cur.fetchone()
        cur.execute("SELECT split_index FROM _c2pg.run_splits WHERE run_id = %s AND status = 'done'", (run_id,))
        done_before = {i for (i,) in cur.fetchall()}
    assert status == "failed" and 2 not in done_before
    monkeypatch.delenv("C2PG_FAULTS")
    resumed = run_snapshot(pipeline, _target(pipeline, "resume"), resume=str(run_id))
    assert resumed.run_id == str(run_id) and resumed.ok
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FILTER (WHERE status = 'done'), count(*) FROM _c2pg.run_splits "
                    "WHERE run_id = %s", (run_id,))
        assert cur.fetchone() == (4, 4)
    assert _pg_rows(pg, "resume") == expected


def test_unconvertible_values_go_to_dead_letters_and_the_rest_is_copied(cass, pg, pipeline, ray_cluster):
    _drop_target(pg, "poison")
    cass.execute(f"CREATE TABLE {KS}.poison (id int PRIMARY KEY, t text) WITH cdc = true")
    for i in range(50):
        cass.execute(f"INSERT INTO {KS}.poison (id, t) VALUES (%s, %s)", (i, "nul\x00byte" if i in (7, 8) else f"t{i}"))
    result = run_snapshot(pipeline, _target(pipeline, "poison"), splits=4)
    assert not result.ok and result.dead_letters == 2 and result.rows == 48
    with pg.cursor() as cur:
        cur.execute("SELECT row_key, error_class, error FROM _c2pg.dead_letters WHERE run_id = %s ORDER BY row_key",
                    (result.run_id,))
        dead = cur.fetchall()
        cur.execute("SELECT count(*) FROM snap_test.poison")
        assert cur.fetchone()[0] == 48
    assert [k for k, _, _ in dead] == ["id=7", "id=8"]
    assert all(cls == "ValueConversionError" and "NUL" in err for _, cls, err in dead)


def test_a_table_without_cdc_is_copied_with_a_warning(cass, pg, pipeline, ray_cluster, caplog):
    _drop_target(pg, "nocdc")
    cass.execute(f"CREATE TABLE {KS}.nocdc (id int PRIMARY KEY, t text)")
    cass.execute(f"INSERT INTO {KS}.nocdc (id, t) VALUES (1, 'x')")
    with caplog.at_level("WARNING", logger="c2pg.snapshot"):
        result = run_snapshot(pipeline, _target(pipeline, "nocdc"), splits=4)
    assert result.ok and result.rows == 1
    assert "sync will not see its changes" in caplog.text


def test_a_target_that_differs_is_refused_and_evolve_adds_the_missing_column(cass, pg, pipeline, ray_cluster):
    from engine.target import TargetMismatch

    _drop_target(pg, "evolving")
    cass.execute(f"CREATE TABLE {KS}.evolving (id int PRIMARY KEY, a text) WITH cdc = true")
    cass.execute(f"INSERT INTO {KS}.evolving (id, a) VALUES (1, 'one')")
    assert run_snapshot(pipeline, _target(pipeline, "evolving"), splits=4).ok
    cass.execute(f"ALTER TABLE {KS}.evolving ADD (b bigint, c set<text>)")
    cass.execute(f"UPDATE {KS}.evolving SET b = 7, c = {{'x'}} WHERE id = 1")
    with pytest.raises(TargetMismatch) as err:
        run_snapshot(pipeline, _target(pipeline, "evolving"), splits=4)
    assert "'b' (bigint → bigint) is missing" in str(err.value) and "'c'" in str(err.value)
    assert "--evolve" in str(err.value) and err.value.exit_code == 2
    assert run_snapshot(pipeline, _target(pipeline, "evolving"), splits=4, evolve=True).ok
    with pg.cursor() as cur:
        cur.execute("SELECT id, a, b, c FROM snap_test.evolving")
        assert cur.fetchall() == [(1, "one", 7, ["x"])]


def test_a_dropped_cassandra_column_is_kept_and_write_time_positions_do_not_move(cass, pg, pipeline, ray_cluster):
    _drop_target(pg, "dropping")
    cass.execute(f"CREATE TABLE {KS}.dropping (id int PRIMARY KEY, a text, b text, c text) WITH cdc = true")
    cass.execute(f"INSERT INTO {KS}.dropping (id, a, b, c) VALUES (1, 'a1', 'b1', 'c1')")
    assert run_snapshot(pipeline, _target(pipeline, "dropping"), splits=4).ok
    with pg.cursor() as cur:
        cur.execute("SELECT _c2pg_wt FROM snap_test.dropping")
        (wt_before,) = cur.fetchone()
    cass.execute(f"ALTER TABLE {KS}.dropping DROP b")
    cass.execute(f"UPDATE {KS}.dropping SET c = 'c2' WHERE id = 1")
    second = run_snapshot(pipeline, _target(pipeline, "dropping"), splits=4)
    assert second.ok
    with pg.cursor() as cur:
        cur.execute("SELECT a, b, c, _c2pg_wt FROM snap_test.dropping")
        a, b, c, wt_after = cur.fetchone()
        cur.execute("SELECT columns FROM _c2pg.catalog WHERE target_schema = 'snap_test' AND target_table = 'dropping'")
        catalog = {col["name"]: col for col in cur.fetchone()[0]}
    assert (a, b, c) == ("a1", "b1", "c2"), "b kept as it was, c updated"
    assert wt_after[0] == wt_before[0] and wt_after[1] == wt_before[1] and wt_after[2] > wt_before[2]
    assert catalog["b"].get("dropped") is True and catalog["b"]["cql"] == "text"


def test_bad_arguments_exit_2_and_name_the_argument(cass, pipeline, example_pipeline_path, capsys, ray_cluster):
    cass.execute(f"CREATE TABLE IF NOT EXISTS {KS}.args_check (id int PRIMARY KEY)")
    assert snapshot_job.main(["--config", str(example_pipeline_path), "--table", "no_dot"]) == 2
    assert "--table must be KEYSPACE.TABLE" in capsys.readouterr().err
    assert snapshot_job.main(["--config", str(example_pipeline_path), "--table", f"{KS}.args_check",
                              "--consistency", "SOMETIMES"]) == 2
    assert "--consistency 'SOMETIMES'" in capsys.readouterr().err
    assert snapshot_job.main(["--config", str(example_pipeline_path), "--table", f"{KS}.args_check",
                              "--resume", "00000000-0000-0000-0000-000000000000"]) == 2
    assert "no such snapshot run" in capsys.readouterr().err


def test_static_columns_are_copied_per_row_and_a_rowless_partition_is_its_static_row(cass, pg, pipeline,
                                                                                        ray_cluster):
    _drop_target(pg, "statics")
    cass.execute(f"CREATE TABLE {KS}.statics (pk int, ck int, s text static, v text, PRIMARY KEY (pk, ck))")
    cass.execute(f"INSERT INTO {KS}.statics (pk, ck, s, v) VALUES (1, 1, 'shared', 'v1')")
    cass.execute(f"INSERT INTO {KS}.statics (pk, ck, v) VALUES (1, 2, 'v2')")
    cass.execute(f"INSERT INTO {KS}.statics (pk, s) VALUES (2, 'alone')")  # static only, no row
    result = run_snapshot(pipeline, _target(pipeline, "statics"), splits=4)
    assert result.rows == 3 and result.dead_letters == 0 and result.ok
    assert differences(cass, pg, KS, "statics", "snap_test", "statics") == []
    with pg, pg.cursor() as cur:
        cur.execute("SELECT pk, ck, s, v, _c2pg_row_ts IS NULL FROM snap_test.statics ORDER BY pk, ck")
        assert cur.fetchall() == [(1, 1, "shared", "v1", True), (1, 2, "shared", "v2", True),
                                  (2, None, "alone", None, True)]  # the static row: no marker
        # A target made before static rows existed (primary key, clustering NOT NULL) is
        # changed to the static-row layout when c2pg next checks it.
        cur.execute("TRUNCATE snap_test.statics")
        cur.execute("ALTER TABLE snap_test.statics DROP CONSTRAINT statics_pk_ck_key, ADD PRIMARY KEY (pk, ck)")
    result = run_snapshot(pipeline, _target(pipeline, "statics"), splits=2)
    assert result.ok and differences(cass, pg, KS, "statics", "snap_test", "statics") == []
    with pg, pg.cursor() as cur:
        cur.execute("SELECT contype FROM pg_constraint WHERE conrelid = 'snap_test.statics'::regclass")
        assert [r[0] for r in cur.fetchall()] == ["u"]


def test_a_small_table_is_planned_as_one_split_per_range_and_a_larger_one_by_min_splits(cass, monkeypatch):
    """Split planning sizes a table that has no size estimate yet by a bounded row count
    (engine.token_ranges.has_fewer_rows): below the threshold one task per owned range,
    at or above it ``min_splits``. The threshold is lowered so the tables stay small."""
    from engine import token_ranges

    monkeypatch.setattr(token_ranges, "SMALL_TABLE_ROWS", 50)
    cluster = cass.cluster
    owned = len(token_ranges.ring_ranges([t.value for t in cluster.metadata.token_map.ring]))
    for name, rows in (("plan_small", 49), ("plan_large", 50)):
        cass.execute(f"CREATE TABLE {KS}.{name} (p int, c int, v text, PRIMARY KEY (p, c))")
        execute_concurrent_with_args(cass, cass.prepare(f"INSERT INTO {KS}.{name} (p, c, v) VALUES (?, ?, 'x')"),
                                     [(i // 5, i % 5) for i in range(rows)])
    # No refresh_schema_metadata(): a DDL statement returns after the driver refreshed that
    # table's metadata, as it does for run_snapshot (a full refresh can time out under load).
    assert token_ranges.has_fewer_rows(cluster, KS, "plan_small", 50)
    assert not token_ranges.has_fewer_rows(cluster, KS, "plan_large", 50)
    small = token_ranges.plan_splits(cluster, KS, "plan_small", split_size_mb=64, min_splits=16)
    large = token_ranges.plan_splits(cluster, KS, "plan_large", split_size_mb=64, min_splits=16)
    assert len(small) == owned
    assert len(large) >= 16
    # Either plan covers the whole ring exactly once.
    for plan in (small, large):
        spans = sorted((s.start, s.end) for s in plan)
        assert spans[0][0] == token_ranges.MIN_TOKEN and spans[-1][1] == token_ranges.MAX_TOKEN
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
