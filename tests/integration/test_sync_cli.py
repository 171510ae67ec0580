"""The sync entry points as an operator uses them: c2pg sync start/status/pause/resume/stop
and python -m jobs.sync --until-caught-up, on a pipeline file of its own."""

from __future__ import annotations

import uuid

import psycopg2
import ray
import yaml

from engine import cli, cql
from engine.compare import wait_equal
from engine.sync.supervisor import find
from jobs import sync as sync_job
from tests.conftest import EXAMPLE_PIPELINE, ROOT
from tests.integration.cdc_scenarios import TopicTail

KS = "c2pg_sync_cli_test"


def _pipeline_file(tmp_path, table: str) -> str:
    doc = yaml.safe_load(EXAMPLE_PIPELINE.read_text())
    doc["pipeline"]["name"] = f"cli-{table}"
    doc["tables"] = [{"keyspace": KS, "table": table, "target_schema": "sync_cli_test"}]
    secrets = ROOT / ".stack" / "secrets"
    doc["vault"]["role_id"] = f"file:{secrets / 'vault-role-id'}"
    doc["capture"]["connector_log"] = str(secrets.parent / "logs" / "debezium.log")
    doc["vault"]["secret_id"] = f"file:{secrets / 'vault-secret-id'}"
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_start_follow_pause_resume_status_stop(stack, pipeline, ray_cluster, cdc_keyspaces, tmp_path, capsys):
    assert KS in cdc_keyspaces  # past the connector's schema-refresh window
    table = "t_" + uuid.uuid4().hex[:8]
    cluster, session = cql.connect(pipeline.cassandra)
    session.execute(f"CREATE TABLE {KS}.{table} (id int PRIMARY KEY, v text) WITH cdc = true")
    with TopicTail(f"c2pg.{KS}.{table}", {"bootstrap.servers": "127.0.0.1:9092"}) as tail:
        assert tail.wait_for_capture(
            lambda: session.execute(f"INSERT INTO {KS}.{table} (id, v) VALUES (0, 'first')"), 60)
    config = _pipeline_file(tmp_path, table)
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    try:
        assert cli.main(["sync", "start", "--config", config]) == 0
        with TopicTail(f"c2pg.{KS}.{table}", {"bootstrap.servers": "127.0.0.1:9092"}) as tail:
            for i in range(1, 30):
                session.execute(f"INSERT INTO {KS}.{table} (id, v) VALUES (%s, %s)", (i, f"v{i}"))
            # Every write is in Kafka before --until-caught-up measures the lag: caught up
            # then means these were applied, not that they had not arrived yet.
            arrived = tail.read(29, 60, key_filter=lambda k: isinstance(k, dict) and 1 <= k.get("id", 0) < 30)
            assert len(arrived) == 29
        assert sync_job.main(["--config", config, "--until-caught-up", "--interval", "1", "--timeout", "90"]) == 0
        assert wait_equal(session, conn, KS, table, "sync_cli_test", table) == []
        assert cli.main(["sync", "pause", "--config", config, "--table", f"{KS}.{table}"]) == 0
        assert cli.main(["sync", "resume", "--config", config]) == 0
        capsys.readouterr()
        assert cli.main(["sync", "status", "--config", config]) == 0
        out = capsys.readouterr().out
        assert f"{KS}.{table}" in out and "remaining" in out
        assert cli.main(["sync", "stop", "--config", config]) == 0
        assert find(f"cli-{table}") is None
        assert cli.main(["sync", "status", "--config", config]) == 1  # nothing running any more
    finally:
        conn.close()
        cluster.shutdown()
        left = find(f"cli-{table}")  # a failed step must not leave a detached supervisor holding CPUs
        if left is not None:
            ray.kill(left, no_restart=True)
