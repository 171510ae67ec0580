"""The component checks answer from real round trips: healthy stack, and a dead endpoint."""

from __future__ import annotations

import json
import socket

from engine import cli
from engine.config import load_config
from engine.health import pipeline_checks, run_checks


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_component_of_the_example_pipeline_is_healthy(pipeline):
    results = run_checks(pipeline_checks(pipeline), timeout_s=10)
    assert {r.name for r in results} == {"postgres", "cassandra", "kafka", "schema_registry", "vault", "capture"}
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    assert all(r.latency_ms > 0 for r in results)


def test_a_dead_component_is_named_with_its_error_and_the_others_stay_ok(example_pipeline_path):
    port = _closed_port()
    cfg = load_config(example_pipeline_path, env={"C2PG__POSTGRES__PORT": str(port)})
    results = {r.name: r for r in run_checks(pipeline_checks(cfg), timeout_s=10)}
    assert not results["postgres"].ok
    assert "OperationalError" in results["postgres"].error
    assert all(r.ok for name, r in results.items() if name != "postgres")


def test_cli_health_exits_1_and_reports_json_when_a_component_is_down(example_pipeline_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setenv("C2PG__CASSANDRA__PORT", str(_closed_port()))
    code = cli.main(["health", "--config", str(example_pipeline_path), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert {r["name"]: r["ok"] for r in out}["cassandra"] is False


def test_cli_health_with_sync_reports_a_pipeline_without_supervisor(example_pipeline_path, ray_cluster,
                                                                      monkeypatch, capsys):
    import uuid

    name = f"health-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("C2PG__PIPELINE__NAME", name)
    assert cli.main(["health", "--config", str(example_pipeline_path), "--sync", "--json"]) == 1
    results = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert results["postgres"]["ok"] and results["kafka"]["ok"]
    assert not results["sync"]["ok"] and f"no sync supervisor running for pipeline '{name}'" in results["sync"]["error"]
