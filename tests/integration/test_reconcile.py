"""Reconcile end to end on the real stack: equal tables, damage on either side, live sync
traffic, and a repair racing a newer write.

Tables that need no sync are loaded by a snapshot; tables that do are CDC tables of one
pipeline and supervisor (``TestUnderSync``, a table per test), as in ``test_sync``.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import psycopg2
import pytest
import ray
from cassandra.concurrent import execute_concurrent, execute_concurrent_with_args
from cassandra.query import BatchStatement, BatchType

from engine import cql
from engine.compare import wait_equal
from engine.config import TableConfig
from engine.reconcile import _KeyReader, apply_repair, plan_repair, recheck, run_reconcile
from engine.schema import read_table
from engine.snapshot import run_snapshot
from engine.sync.supervisor import get_or_start
from engine.target import ensure_target
from tests.integration.cdc_scenarios import fresh_sync_pipeline, stop_sync, wait_for_table_capture

KS = "c2pg_reconcile_test"
SCHEMA = "reconcile_test"
COLUMNS = "pk int, ck int, a text, n bigint, m map<text, int>, s set<text>, d double, PRIMARY KEY (pk, ck)"


@pytest.fixture(autouse=True)
def _drift_pages_in_tmp(monkeypatch, tmp_path):
    """A reconcile that finds drift writes its page to the working directory: keep the
    tests' pages out of the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def cass(cql_session, cdc_keyspaces):
    assert KS in cdc_keyspaces  # past the connector's schema-refresh window
    return cql_session


@pytest.fixture()
def pg(pipeline):
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    yield conn
    conn.close()


def _quick(cfg):
    """Short re-check delay: the tests without sync need none, the others wait for sync."""
    return cfg.model_copy(update={"reconcile": cfg.reconcile.model_copy(
        update={"recheck_delay": timedelta(seconds=1)})})


def _fill(cass, name: str, partitions: int, per_partition: int, *, one_statement_per_row: bool = False) -> None:
    """Write the rows; by default one unlogged batch per partition (a single mutation: far
    fewer round trips). A CDC table under sync gets one statement per row, the change
    stream's usual shape."""
    stmt = cass.prepare(f"INSERT INTO {KS}.{name} (pk, ck, a, n, m, s, d) VALUES (?, ?, ?, ?, ?, ?, ?)")
    rows = [[(p, c, f"row {p}/{c}", p * 1000 + c, {"k": c, f"p{p}": p}, {f"t{c % 3}", "x"}, p + c / 8)
             for c in range(per_partition)] for p in range(partitions)]
    if one_statement_per_row:
        execute_concurrent_with_args(cass, stmt, [r for part in rows for r in part], concurrency=100,
                                     raise_on_first_error=True)
        return
    batches = []
    for part in rows:
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for r in part:
            batch.add(stmt, r)
        batches.append((batch, ()))
    execute_concurrent(cass, batches, concurrency=50, raise_on_first_error=True)


@pytest.fixture()
def snapshotted(cass, pg, pipeline, ray_cluster):
    """A fresh table of 400 partitions × 10 rows, snapshotted into PostgreSQL."""
    name = "snap_" + uuid.uuid4().hex[:8]
    cass.execute(f"CREATE TABLE {KS}.{name} ({COLUMNS})")
    _fill(cass, name, 400, 10)
    table = TableConfig(keyspace=KS, table=name, target_schema=SCHEMA, target_table=name)
    assert run_snapshot(pipeline, table).ok
    yield _quick(pipeline), table, name
    cass.execute(f"DROP TABLE IF EXISTS {KS}.{name}")


# The tests of :class:`TestUnderSync`, by the name of the table each one uses.
SYNCED = ("paused", "load", "race")


@pytest.fixture(scope="class")
def synced_tables(cass, pipeline, ray_cluster):
    """A fresh CDC table per test in :data:`SYNCED`, 50 partitions × 10 rows each, and one
    running sync that has them all (one supervisor start for the class, not one per test);
    removed after the class."""
    run = uuid.uuid4().hex[:8]
    names = {key: f"sync_{key}_{run}" for key in SYNCED}
    for name in names.values():
        cass.execute(f"CREATE TABLE {KS}.{name} ({COLUMNS}) WITH cdc = true")
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        cfg = fresh_sync_pipeline(conn, pipeline, KS, SCHEMA, *names.values())
        for name in names.values():
            wait_for_table_capture(cass, KS, name, f"INSERT INTO {KS}.{name} (pk, ck, a) VALUES (-1, -1, 'sentinel')")
        sup = get_or_start(cfg)
        try:
            for name in names.values():
                _fill(cass, name, 50, 10, one_statement_per_row=True)
            for name in names.values():
                assert wait_equal(cass, conn, KS, name, SCHEMA, name, timeout_s=90) == []
            yield _quick(cfg), names, sup
        finally:
            stop_sync(cfg.name)
    finally:
        conn.close()


def _synced(synced_tables, key: str):
    """(config, table config, table name, supervisor) of the table ``key`` of :data:`SYNCED`."""
    cfg, names, sup = synced_tables
    name = names[key]
    return cfg, next(t for t in cfg.tables if t.table == name), name, sup


def _diff_rows(pg, run_id: str) -> list[tuple]:
    with pg.cursor() as cur:
        cur.execute("SELECT kind, key, columns, repaired FROM _c2pg.reconcile_diffs WHERE run_id = %s "
                    "ORDER BY kind, key::text", (run_id,))
        return cur.fetchall()


def test_an_equal_table_reports_zero_drift_from_digests_alone(snapshotted, pg):
    cfg, table, _ = snapshotted
    result = run_reconcile(cfg, table)
    assert result.drift == 0 and result.unsettled == 0
    assert result.rows_compared == result.postgres_rows == 4000
    assert result.sub_ranges >= 4000 // cfg.reconcile.digest_rows
    assert result.sub_ranges_differing == 0 and result.rows_compared_exactly == 0  # digests decided
    assert result.report_html is None
    with pg.cursor() as cur:
        cur.execute("SELECT status, stats FROM _c2pg.runs WHERE run_id = %s", (result.run_id,))
        status, stats = cur.fetchone()
        cur.execute("SELECT count(*), count(*) FILTER (WHERE status = 'done') FROM _c2pg.run_splits "
                    "WHERE run_id = %s", (result.run_id,))
        total, done = cur.fetchone()
    assert status == "completed" and stats["differences"] == {"missing": 0, "extra": 0, "mismatch": 0}
    assert stats["rows_compared"] == 4000 and total == done == result.ranges
    assert _diff_rows(pg, result.run_id) == []


def test_damage_in_postgres_is_found_classified_and_repaired(snapshotted, pg, tmp_path):
    cfg, table, name = snapshotted
    t = f'{SCHEMA}."{name}"'
    with pg.cursor() as cur:
        cur.execute(f"DELETE FROM {t} WHERE (pk, ck) IN ((1, 1), (2, 2), (3, 3))")                 # missing
        cur.execute(f"INSERT INTO {t} (pk, ck, a, _c2pg_token, _c2pg_wt) "                          # extra, no
                    f"SELECT pk, 99, 'made up', _c2pg_token, '{{}}' FROM {t} WHERE pk = 4 AND ck = 0")  # write time
        cols = "a, n, m, s, d, _c2pg_token, _c2pg_wt, _c2pg_exp, _c2pg_row_ts"
        cur.execute(f"INSERT INTO {t} (pk, ck, {cols}) SELECT pk, 98, {cols} FROM {t} "              # extra, old
                    f"WHERE pk = 5 AND ck = 0")                                                     # write time
        cur.execute(f"UPDATE {t} SET a = 'changed' WHERE pk = 6 AND ck = 6")                        # changed cell
        cur.execute(f"UPDATE {t} SET n = n + 1, d = 0.5 WHERE pk = 7 AND ck = 7")                   # two cells
        cur.execute(f"""UPDATE {t} SET m = '{{"k": 100}}' WHERE pk = 8 AND ck = 8""")              # a collection
        cur.execute(f"UPDATE {t} SET s = NULL WHERE pk = 9 AND ck = 9")                             # emptied set
    found = run_reconcile(cfg, table, html_path=str(tmp_path / "drift.html"))
    assert found.differences == {"missing": 3, "extra": 2, "mismatch": 4}
    assert found.repaired == {"rows_written": 0, "rows_deleted": 0, "not_repaired": 0}
    diffs = _diff_rows(pg, found.run_id)
    assert [(k, key, cols) for k, key, cols, _ in diffs] == [
        ("extra", ["4", "99"], []), ("extra", ["5", "98"], []),
        ("mismatch", ["6", "6"], ["a"]), ("mismatch", ["7", "7"], ["d", "n"]),
        ("mismatch", ["8", "8"], ["m"]), ("mismatch", ["9", "9"], ["s"]),
        ("missing", ["1", "1"], []), ("missing", ["2", "2"], []), ("missing", ["3", "3"], [])]
    page = (tmp_path / "drift.html").read_text()
    assert found.report_html == str(tmp_path / "drift.html") and "<svg" in page and "mismatch: 4" in page
    assert sum(r["missing"] + r["extra"] + r["mismatch"] for r in found.drift_by_range) == 9

    repaired = run_reconcile(cfg, table, repair=True)
    assert repaired.drift == 9
    assert repaired.repaired == {"rows_written": 7, "rows_deleted": 2, "not_repaired": 0}
    assert all(r for *_, r in _diff_rows(pg, repaired.run_id))
    after = run_reconcile(cfg, table)
    assert after.drift == 0 and after.sub_ranges_differing == 0


class TestUnderSync:
    """Reconcile beside a running sync: the tests share one pipeline (:func:`synced_tables`),
    a table each; the one that pauses sync resumes it before it ends."""

    def test_writes_made_in_cassandra_while_sync_is_paused_are_found_and_repaired(self, synced_tables, cass, pg):
        cfg, table, name, sup = _synced(synced_tables, "paused")
        ray.get(sup.pause.remote())
        try:
            # "paused" is set at the top of the worker's loop: a batch in flight has committed.
            deadline = time.monotonic() + 60
            while {w["state"] for w in ray.get(sup.status.remote())["workers"]} != {"paused"}:
                assert time.monotonic() < deadline, "the workers did not pause within 60 s"
                time.sleep(0.1)
            cass.execute(f"UPDATE {KS}.{name} SET a = 'while paused' WHERE pk = 1 AND ck = 1")
            # (An overwrite: an append would come back wrong when sync resumes and replays it, the
            # documented Debezium limit that the next scheduled reconcile repairs.)
            cass.execute(f"UPDATE {KS}.{name} SET m = {{'new': 1}} WHERE pk = 2 AND ck = 2")
            cass.execute(f"DELETE FROM {KS}.{name} WHERE pk = 3 AND ck = 3")
            cass.execute(f"INSERT INTO {KS}.{name} (pk, ck, a) VALUES (1000, 1, 'new row')")
            cass.execute(f"DELETE FROM {KS}.{name} WHERE pk = 4")  # a whole partition: 10 rows
            # Written before the run starts, so they are drift, not in-flight changes.
            time.sleep(0.01)
            found = run_reconcile(cfg, table, repair=True)
            assert found.differences == {"missing": 1, "extra": 11, "mismatch": 2}
            assert found.repaired["rows_written"] == 3 and found.repaired["rows_deleted"] == 11
            assert run_reconcile(cfg, table).drift == 0
        finally:
            # Sync then applies the same changes again: LWW makes that a no-op. (Resumed
            # whatever happened: the next tests share this pipeline.)
            ray.get(sup.resume.remote())
        cass.execute(f"INSERT INTO {KS}.{name} (pk, ck, a) VALUES (1001, 1, 'after resume')")
        assert wait_equal(cass, pg, KS, name, SCHEMA, name, timeout_s=90) == []
        assert run_reconcile(cfg, table).drift == 0

    def test_reconcile_during_a_steady_write_load_reports_no_false_drift(self, synced_tables, cass, pg):
        cfg, table, name, _ = _synced(synced_tables, "load")
        stop = threading.Event()
        written = []

        def load() -> None:  # ~100 writes/s of every kind until stopped (at most 60 s)
            stmt = cass.prepare(f"UPDATE {KS}.{name} SET a = ?, n = ? WHERE pk = ? AND ck = ?")
            deadline = time.monotonic() + 60
            i = 0
            while not stop.is_set() and time.monotonic() < deadline:
                pk, ck = i % 60, i % 13
                if i % 17 == 0:
                    cass.execute(f"DELETE FROM {KS}.{name} WHERE pk = %s AND ck = %s", (pk, ck))
                else:
                    cass.execute(stmt, (f"load {i}", i, pk, ck))
                written.append(i)
                i += 1
                time.sleep(0.01)

        writer = threading.Thread(target=load, daemon=True)
        writer.start()
        try:
            time.sleep(3)
            during = run_reconcile(cfg.model_copy(update={"reconcile": cfg.reconcile.model_copy(
                update={"recheck_delay": timedelta(seconds=3)})}), table)
        finally:
            stop.set()
            writer.join(timeout=10)
        assert len(written) > 200
        print(f"under load: {during.rechecked} differences re-checked, {during.unsettled} unsettled")
        assert during.rechecked > 0, "the load left nothing in flight to re-check: the test proves nothing"
        assert during.drift == 0, during.sample
        assert wait_equal(cass, pg, KS, name, SCHEMA, name, timeout_s=90) == []
        assert run_reconcile(cfg, table).drift == 0

    def test_a_repair_racing_a_newer_sync_write_keeps_the_newer_value(self, synced_tables, cass, pg):
        cfg, table, name, _ = _synced(synced_tables, "race")
        with pg.cursor() as cur:
            cur.execute(f"UPDATE {SCHEMA}.\"{name}\" SET a = 'damaged' WHERE pk = 5 AND ck = 5")
        run_started_us = int(time.time() * 1_000_000)
        cluster, session = cql.connect(cfg.cassandra)
        conn = psycopg2.connect(**cfg.postgres.connect_kwargs())
        try:
            target = ensure_target(conn, read_table(session, KS, name), SCHEMA, name)
            reader = _KeyReader(target, "LOCAL_QUORUM", session, conn)
            with conn.cursor() as cur:
                cur.execute(f"SELECT _c2pg_token FROM {SCHEMA}.\"{name}\" WHERE pk = 5 AND ck = 5")
                token = cur.fetchone()[0]
            from engine.reconcile import Diff

            drift, _ = recheck(reader, [Diff(0, token, ("5", "5"), "mismatch")], run_started_us, 0, 1)
            assert [(x.kind, x.columns) for x in drift] == [("mismatch", ("a",))]
            plan = plan_repair(reader, drift, run_started_us)     # reads Cassandra: a = 'row 5/5'
            cass.execute(f"UPDATE {KS}.{name} SET a = 'newer' WHERE pk = 5 AND ck = 5")
            deadline = time.monotonic() + 60
            while True:                                           # sync applies the newer write first
                with conn, conn.cursor() as cur:
                    cur.execute(f"SELECT a FROM {SCHEMA}.\"{name}\" WHERE pk = 5 AND ck = 5")
                    if cur.fetchone()[0] == "newer":
                        break
                assert time.monotonic() < deadline, "sync did not apply the newer write"
                time.sleep(0.2)
            apply_repair(conn, target, cfg.name, plan)            # ... then the stale repair lands
            with conn, conn.cursor() as cur:
                cur.execute(f"SELECT a FROM {SCHEMA}.\"{name}\" WHERE pk = 5 AND ck = 5")
                assert cur.fetchone()[0] == "newer"
        finally:
            conn.close()
            cluster.shutdown()
        assert run_reconcile(cfg, table).drift == 0


def test_reconcile_of_a_table_without_target_is_a_usage_error(cass, pipeline):
    from engine.reconcile import ReconcileUsageError

    name = "never_" + uuid.uuid4().hex[:8]
    cass.execute(f"CREATE TABLE {KS}.{name} (id int PRIMARY KEY, v text)")
    try:
        with pytest.raises(ReconcileUsageError, match="run a snapshot"):
            run_reconcile(pipeline, TableConfig(keyspace=KS, table=name, target_schema=SCHEMA, target_table=name))
    finally:
        cass.execute(f"DROP TABLE {KS}.{name}")


def test_the_last_reconcile_drift_is_exported_as_a_metric_by_the_supervisor(snapshotted, pg):
    """A reconcile job ends before Ray exports its gauge; the supervisor publishes the drift
    of each table's last reconcile (``ray_c2pg_reconcile_drift_rows``) for Grafana."""
    import urllib.request

    cfg, table, name = snapshotted
    with pg.cursor() as cur:
        cur.execute(f"UPDATE {SCHEMA}.\"{name}\" SET a = 'changed' WHERE pk = 1 AND ck = 1")
    assert run_reconcile(cfg, table).differences["mismatch"] == 1
    sync_cfg = cfg.model_copy(update={
        "pipeline": cfg.pipeline.model_copy(update={"name": f"t-{name}"}), "tables": (table,),
        "sync": cfg.sync.model_copy(update={"schema_check_interval": timedelta(seconds=2)})})
    with pg.cursor() as cur:  # the run belongs to the pipeline that reconciled it
        cur.execute("UPDATE _c2pg.runs SET pipeline = %s WHERE kind = 'reconcile' AND source_table = %s",
                    (sync_cfg.name, name))
    sup = get_or_start(sync_cfg)
    port = ray.nodes()[0]["MetricsExportPort"]
    want = f'table="{KS}.{name}"'
    try:
        deadline = time.monotonic() + 90
        while True:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            lines = [line for line in body.splitlines()
                     if line.startswith("ray_c2pg_reconcile_drift_rows{") and want in line
                     and 'kind="mismatch"' in line]
            if lines:
                break
            assert time.monotonic() < deadline, "no drift metric for the table after 90 s"
            time.sleep(1)
        assert float(lines[0].rsplit(" ", 1)[1]) == 1.0
    finally:
        try:
            ray.get(sup.stop.remote(), timeout=60)
        finally:
            ray.kill(sup, no_restart=True)
