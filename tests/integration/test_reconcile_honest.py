"""Honest reconcile on the real stack (the "Honest reconcile" issue).

- Rows written in Cassandra a century ahead (``USING TIMESTAMP``) and missing from
  PostgreSQL are drift, flagged "future write time"; ``--fail-on-drift`` exits 3; ``--repair``
  writes them; the next run is clean.
- A repair the merge cannot win (PostgreSQL holds a newer write time than Cassandra's: a set
  whose element was removed in Cassandra, a value changed in PostgreSQL with a newer time) is
  reported "not repaired", with the reason, when the reads are below a quorum, and replaced
  under the authoritative rule at a quorum; the next run is clean.

The tables have no CDC and no sync runs: nothing moves but what the tests write. Every check
of the two sides reads them directly (CQL and SQL below), not through the code under test;
every key a run marks as repaired is checked that way.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from typing import NamedTuple

import psycopg2
import pytest

from engine import cql
from engine.config import TableConfig
from engine.reconcile import run_reconcile
from engine.snapshot import run_snapshot
from jobs import reconcile as reconcile_job
from tests.conftest import EXAMPLE_PIPELINE

KS = "c2pg_reconcile_honest_test"
SCHEMA = "public"  # the CLI's default target (postgres.schema), as in test_reconcile_job
CENTURY_US = 100 * 365 * 24 * 3600 * 1_000_000
ADDED_LATER = "added later"


@pytest.fixture(autouse=True)
def _drift_pages_in_tmp(monkeypatch, tmp_path):
    """A reconcile that finds drift writes its page to the working directory: keep the
    tests' pages out of the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def cass(stack, pipeline):
    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {KS} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    yield session
    cluster.shutdown()


@pytest.fixture()
def pg(pipeline):
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture()
def table(cass, pg, pipeline, ray_cluster):
    """A fresh table of 20 partitions × 3 rows, snapshotted. Row (1, 0) gained a set element
    after it was written, so PostgreSQL's write time for its set is that element's."""
    name = "h_" + uuid.uuid4().hex[:8]
    cass.execute(f"CREATE TABLE {KS}.{name} (pk int, ck int, a text, s set<text>, PRIMARY KEY (pk, ck))")
    insert = cass.prepare(f"INSERT INTO {KS}.{name} (pk, ck, a, s) VALUES (?, ?, ?, ?)")
    for pk in range(20):
        for ck in range(3):
            cass.execute(insert, (pk, ck, f"row {pk}/{ck}", {"x", f"t{ck}"}))
    time.sleep(0.01)
    cass.execute(f"UPDATE {KS}.{name} SET s = s + {{'{ADDED_LATER}'}} WHERE pk = 1 AND ck = 0")
    assert run_snapshot(pipeline, TableConfig(keyspace=KS, table=name, target_schema=SCHEMA, target_table=name),
                        splits=2).ok
    try:
        yield name
    finally:
        with pg.cursor() as cur:
            cur.execute(f'DROP TABLE IF EXISTS {SCHEMA}."{name}"')
            cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = %s AND target_table = %s", (SCHEMA, name))
        cass.execute(f"DROP TABLE IF EXISTS {KS}.{name}")


# --- both sides, read directly ----------------------------------------------------------------

class Side(NamedTuple):
    a: str | None
    s: frozenset
    wt_a: int | None  # the cell's write time: WRITETIME in Cassandra, its _c2pg_wt entry in PostgreSQL
    wt_s: int | None  # for the set, the newest element's (what c2pg stores for a collection)


def _cassandra(cass, name: str) -> dict[tuple[int, int], Side]:
    out = {}
    # MAXWRITETIME (Cassandra 5): a set's newest element's time (WRITETIME gives one per element).
    for r in cass.execute(f"SELECT pk, ck, a, s, writetime(a) AS wa, maxwritetime(s) AS ws FROM {KS}.{name}"):
        out[(r.pk, r.ck)] = Side(r.a, frozenset(r.s or ()), r.wa, r.ws)
    return out


def _positions(pg, name: str) -> dict[str, int]:
    """Each regular column's position in _c2pg_wt: the catalog's order (ADR 0002)."""
    with pg.cursor() as cur:
        cur.execute("SELECT columns FROM _c2pg.catalog WHERE target_schema = %s AND target_table = %s",
                    (SCHEMA, name))
        columns = cur.fetchone()[0]
    regular = [c["name"] for c in columns if c.get("kind") in ("regular", "static")]
    return {n: i for i, n in enumerate(regular, start=1)}


def _postgres(pg, name: str) -> dict[tuple[int, int], Side]:
    pos = _positions(pg, name)
    with pg.cursor() as cur:
        cur.execute(f'SELECT pk, ck, a, s, _c2pg_wt FROM {SCHEMA}."{name}"')
        rows = cur.fetchall()

    def at(wts, column):
        i = pos[column]
        return wts[i - 1] if wts is not None and len(wts) >= i else None

    return {(pk, ck): Side(a, frozenset(s or ()), at(wts, "a"), at(wts, "s")) for pk, ck, a, s, wts in rows}


def _differing(cass, pg, name: str) -> dict[tuple[int, int], str]:
    """Keys whose values differ between the two sides, by kind (write times aside)."""
    c, p = _cassandra(cass, name), _postgres(pg, name)
    out = {k: "missing" for k in c.keys() - p.keys()}
    out.update({k: "extra" for k in p.keys() - c.keys()})
    out.update({k: "mismatch" for k in c.keys() & p.keys() if (c[k].a, c[k].s) != (p[k].a, p[k].s)})
    return out


def _diff_rows(pg, run_id: str) -> dict[tuple[int, int], tuple]:
    with pg.cursor() as cur:
        cur.execute("SELECT key, detail, repaired, repair_note FROM _c2pg.reconcile_diffs WHERE run_id = %s",
                    (run_id,))
        return {(int(k[0]), int(k[1])): (detail, repaired, note) for k, detail, repaired, note in cur.fetchall()}


def _claims_hold(cass, pg, name: str, run_id: str) -> None:
    """Every key the run marked as repaired is equal on both sides, read directly."""
    differing = _differing(cass, pg, name)
    claimed = [k for k, (_, repaired, _) in _diff_rows(pg, run_id).items() if repaired]
    assert [k for k in claimed if k in differing] == [], f"marked repaired but still differing: {differing}"


# --- the tests ----------------------------------------------------------------------------------

def test_rows_written_a_century_ahead_are_drift_fail_the_run_and_are_repaired(table, cass, pg, monkeypatch,
                                                                              tmp_path):
    name = table
    ahead = int(time.time() * 1_000_000) + CENTURY_US
    for pk in (100, 101):
        cass.execute(f"INSERT INTO {KS}.{name} (pk, ck, a, s) VALUES (%s, 0, %s, {{'f'}}) USING TIMESTAMP {ahead}",
                     (pk, f"ahead {pk}"))
    assert _differing(cass, pg, name) == {(100, 0): "missing", (101, 0): "missing"}

    monkeypatch.setenv("C2PG__RECONCILE__RECHECK_DELAY", "1s")  # nothing is in flight here
    argv = ["--config", str(EXAMPLE_PIPELINE), "--table", f"{KS}.{name}", "--splits", "2", "--fail-on-drift"]
    found_json, page = tmp_path / "found.json", tmp_path / "drift.html"
    assert reconcile_job.main([*argv, "--output", str(found_json), "--html", str(page)]) == 3
    found = json.loads(found_json.read_text())
    assert found["differences"] == {"missing": 2, "extra": 0, "mismatch": 0} and found["unsettled"] == 0
    assert found["future_write_time"] == 2 and found["unrepaired"] == 2
    assert sorted(x["key"] for x in found["sample"]) == [["100", "0"], ["101", "0"]]
    assert all(x["flags"] == ["future write time"] for x in found["sample"])
    assert "future write time: 2" in page.read_text()
    rows = _diff_rows(pg, found["run_id"])
    assert sorted(rows) == [(100, 0), (101, 0)]
    assert all(detail["_c2pg_flags"] == ["future write time"] and not repaired for detail, repaired, _ in rows.values())

    fixed_json = tmp_path / "fixed.json"
    assert reconcile_job.main([*argv, "--repair", "--output", str(fixed_json)]) == 0
    fixed = json.loads(fixed_json.read_text())
    assert fixed["differences"]["missing"] == 2 and fixed["future_write_time"] == 2
    assert fixed["repaired"] == {"rows_written": 2, "rows_deleted": 0, "not_repaired": 0}
    assert all(repaired for _, repaired, _ in _diff_rows(pg, fixed["run_id"]).values())
    _claims_hold(cass, pg, name, fixed["run_id"])
    assert _differing(cass, pg, name) == {}
    c, p = _cassandra(cass, name), _postgres(pg, name)
    for key in ((100, 0), (101, 0)):  # stored at Cassandra's own (future) write times
        assert c[key].wt_a == ahead and (p[key].wt_a, p[key].wt_s) == (c[key].wt_a, c[key].wt_s)

    after_json = tmp_path / "after.json"
    assert reconcile_job.main([*argv, "--output", str(after_json)]) == 0
    after = json.loads(after_json.read_text())
    assert after["drift"] == 0 and after["unsettled"] == 0


def test_a_repair_the_merge_cannot_win_is_reported_or_overwritten_never_claimed(table, cass, pg, pipeline, caplog):
    name = table
    pos = _positions(pg, name)
    # The user's case: a set element removed in Cassandra. Cassandra's write time for the set
    # is now its newest REMAINING element's, older than the removed one PostgreSQL keeps.
    cass.execute(f"UPDATE {KS}.{name} SET s = s - {{'{ADDED_LATER}'}} WHERE pk = 1 AND ck = 0")
    # And a value changed in PostgreSQL at a write time newer than Cassandra's.
    with pg.cursor() as cur:
        cur.execute(f'UPDATE {SCHEMA}."{name}" SET a = %s, _c2pg_wt[{pos["a"]}] = _c2pg_wt[{pos["a"]}] + 1000000 '
                    "WHERE pk = 2 AND ck = 0", ("changed in PostgreSQL",))
    before_c, before_p = _cassandra(cass, name), _postgres(pg, name)
    assert _differing(cass, pg, name) == {(1, 0): "mismatch", (2, 0): "mismatch"}
    assert before_p[(1, 0)].wt_s > before_c[(1, 0)].wt_s  # last-write-wins keeps PostgreSQL's value
    assert before_p[(2, 0)].wt_a > before_c[(2, 0)].wt_a

    cfg = pipeline.model_copy(update={"reconcile": pipeline.reconcile.model_copy(
        update={"recheck_delay": timedelta(seconds=1)})})
    target = TableConfig(keyspace=KS, table=name, target_schema=SCHEMA, target_table=name)

    # Reads below a quorum may not overwrite a newer cell: "not repaired", with the reason.
    weak = run_reconcile(cfg, target, repair=True, consistency="ONE", splits=2, progress=False)
    assert weak.differences == {"missing": 0, "extra": 0, "mismatch": 2}
    assert weak.repaired == {"rows_written": 0, "rows_deleted": 0, "not_repaired": 2} and weak.unrepaired == 2
    rows = _diff_rows(pg, weak.run_id)
    assert sorted(rows) == [(1, 0), (2, 0)]
    for _, repaired, note in rows.values():
        assert not repaired and note.startswith("not repaired:") and "newer write time" in note and "ONE" in note
    _claims_hold(cass, pg, name, weak.run_id)
    assert _differing(cass, pg, name) == {(1, 0): "mismatch", (2, 0): "mismatch"}  # honestly left
    assert run_reconcile(cfg, target, splits=2, progress=False).differences["mismatch"] == 2

    # At a quorum the authoritative rule replaces them with Cassandra's values at Cassandra's times.
    with caplog.at_level("WARNING", logger="c2pg.reconcile"):
        fixed = run_reconcile(cfg, target, repair=True, splits=2, progress=False)
    assert fixed.differences == {"missing": 0, "extra": 0, "mismatch": 2}
    assert fixed.repaired == {"rows_written": 2, "rows_deleted": 0, "not_repaired": 0} and fixed.unrepaired == 0
    assert fixed.cells_overwritten == 2
    assert caplog.text.count("authoritative overwrite") >= 2
    for _, repaired, note in _diff_rows(pg, fixed.run_id).values():
        assert repaired and "authoritative overwrite" in note
    _claims_hold(cass, pg, name, fixed.run_id)
    assert _differing(cass, pg, name) == {}
    c, p = _cassandra(cass, name), _postgres(pg, name)
    assert c[(1, 0)].s == frozenset({"x", "t0"}) and p[(1, 0)].wt_s == c[(1, 0)].wt_s
    assert c[(2, 0)].a == p[(2, 0)].a == "row 2/0" and p[(2, 0)].wt_a == c[(2, 0)].wt_a

    after = run_reconcile(cfg, target, splits=2, progress=False)
    assert after.drift == 0 and after.unsettled == 0
