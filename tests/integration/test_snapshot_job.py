"""The snapshot entry point runs as-is under ``ray job submit`` on the stack's Ray head."""

from __future__ import annotations

import time

import psycopg2
from ray.job_submission import JobStatus, JobSubmissionClient

from engine.stack.services import ray_auth_headers
from tests.conftest import EXAMPLE_PIPELINE, ROOT

KS = "c2pg_job_test"


def test_snapshot_submitted_as_a_ray_job_completes(stack, pipeline, monkeypatch):
    from engine import cql

    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    session.execute(f"CREATE KEYSPACE {KS} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(f"CREATE TABLE {KS}.t (id int PRIMARY KEY, v text) WITH cdc = true")
    for i in range(500):
        session.execute(f"INSERT INTO {KS}.t (id, v) VALUES (%s, %s)", (i, f"v{i}"))
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS public.t")
        cur.execute("DELETE FROM _c2pg.catalog WHERE target_schema = 'public' AND target_table = 't'")

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    client = JobSubmissionClient(stack.services["ray"].dashboard_url, headers=ray_auth_headers())
    # The config by absolute path: its secret files (../.stack/secrets) are not uploaded.
    logs = run_job(client, f"python -m jobs.snapshot --config {EXAMPLE_PIPELINE} --table {KS}.t --splits 4")
    assert f"snapshot {KS}.t → public.t: 500 rows" in logs
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM public.t")
        assert cur.fetchone()[0] == 500
        cur.execute("DROP TABLE public.t")
    conn.close()
    session.execute(f"DROP KEYSPACE {KS}")
    cluster.shutdown()


def run_job(client, entrypoint: str, timeout_s: float = 180) -> str:
    """Submit ``entrypoint`` with this checkout as working dir, wait, assert it succeeded;
    its logs."""
    job = _submit(client, entrypoint=entrypoint,
                  runtime_env={"working_dir": str(ROOT),
                               "excludes": [".stack", ".venv", ".git", "benchmarks/results", "test-artifacts"]})
    deadline = time.monotonic() + timeout_s
    while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job did not finish in {timeout_s:.0f} s"
        time.sleep(0.25)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-3000:]
    return logs


def _submit(client, **kwargs) -> str:
    """Submit, waiting while the head's job agent is still starting (a fresh head answers
    'No available agent' for a few seconds after its dashboard is up)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)
