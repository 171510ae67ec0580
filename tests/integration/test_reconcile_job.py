"""The reconcile entry points: ``python -m jobs.reconcile`` under ``ray job submit`` on the
stack's Ray head, and ``c2pg reconcile`` with its exit codes, JSON report and drift page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import psycopg2
from ray.job_submission import JobSubmissionClient

from engine import cql
from engine.config import TableConfig
from engine.snapshot import run_snapshot
from engine.stack.services import ray_auth_headers
from tests.conftest import EXAMPLE_PIPELINE, ROOT
from tests.integration.test_snapshot_job import run_job

KS = "c2pg_reconcile_job_test"


def test_reconcile_as_a_ray_job_and_from_the_cli(stack, pipeline, ray_cluster, monkeypatch, tmp_path):
    name = "t_" + uuid.uuid4().hex[:8]
    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {KS} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    session.execute(f"CREATE TABLE {KS}.{name} (id int PRIMARY KEY, v text, tags set<text>)")
    for i in range(300):
        session.execute(f"INSERT INTO {KS}.{name} (id, v, tags) VALUES (%s, %s, %s)", (i, f"v{i}", {f"t{i % 4}"}))
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    conn.autocommit = True
    try:
        assert run_snapshot(pipeline, TableConfig(keyspace=KS, table=name, target_schema="public",
                                                  target_table=name)).ok

        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        client = JobSubmissionClient(stack.services["ray"].dashboard_url, headers=ray_auth_headers())
        logs = run_job(client, f"python -m jobs.reconcile --config {EXAMPLE_PIPELINE} --table {KS}.{name} "
                               "--splits 4 --fail-on-drift")
        assert f"reconcile {KS}.{name} ↔ public.{name}: 300 rows compared in 4 ranges" in logs
        assert "drift 0 (0 missing, 0 extra, 0 mismatch)" in logs

        with conn.cursor() as cur:
            cur.execute(f'UPDATE public."{name}" SET v = \'changed\' WHERE id = 7')
        cli = [str(ROOT / ".venv/bin/c2pg"), "reconcile", "--config", str(EXAMPLE_PIPELINE), "--table", f"{KS}.{name}",
               "--output", str(tmp_path / "report.json"), "--html", str(tmp_path / "drift.html"), "--fail-on-drift"]
        # As after `eval "$(c2pg stack env)"`: the CLI joins the stack's Ray head.
        env = {**os.environ, "C2PG__RECONCILE__RECHECK_DELAY": "1s", "RAY_AUTH_MODE": "token",
               "RAY_ADDRESS": stack.services["ray"].gcs_address}
        found = subprocess.run(cli, check=False, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
        assert found.returncode == 3, found.stderr[-2000:]
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["differences"] == {"missing": 0, "extra": 0, "mismatch": 1}
        assert report["sample"][0]["key"] == ["7"] and report["sample"][0]["columns"] == ["v"]
        assert "<svg" in (tmp_path / "drift.html").read_text()
        fixed = subprocess.run([*cli, "--repair"], check=False, capture_output=True, text=True, env=env, timeout=300,
                               cwd=ROOT)
        assert fixed.returncode == 0, fixed.stderr[-2000:]
        assert "repaired 1 written, 0 deleted" in fixed.stdout
        with conn.cursor() as cur:
            cur.execute(f'SELECT v FROM public."{name}" WHERE id = 7')
            assert cur.fetchone()[0] == "v7"
        bad = subprocess.run([sys.executable, "-m", "jobs.reconcile", "--config", str(EXAMPLE_PIPELINE),
                              "--table", f"{KS}.nope"], check=False, capture_output=True, text=True, timeout=120,
                             cwd=ROOT)
        assert bad.returncode == 2 and "nope" in bad.stderr
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP TABLE IF EXISTS public."{name}"')
            cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = 'public' AND target_table = %s", (name,))
        conn.close()
        session.execute(f"DROP TABLE IF EXISTS {KS}.{name}")
        cluster.shutdown()
