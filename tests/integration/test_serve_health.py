"""The checks /readyz adds to engine/health.py, against the real stack: Kafka metadata of the
pipeline's topics, the sync supervisor check, and a quiet Cassandra probe of a dead port."""

from __future__ import annotations

import logging
import socket
import uuid

import pytest

from engine.health import check_cassandra, check_kafka, check_sync_supervisor, pipeline_checks, run_checks


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kafka_check_reports_each_pipeline_topic_with_its_partitions(stack):
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"c2pg.serve_health.t_{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": "127.0.0.1:9092"})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    try:
        missing = f"c2pg.serve_health.none_{uuid.uuid4().hex[:8]}"
        detail = check_kafka(bootstrap_servers="127.0.0.1:9092", topics=[topic, missing], require_topics=False)
        assert f"{topic}: 2 partition(s)" in detail
        assert f"no topic yet for {missing}" in detail
        with pytest.raises(RuntimeError, match=f"topics missing: {missing}"):
            check_kafka(bootstrap_servers="127.0.0.1:9092", topics=[missing])
    finally:
        admin.delete_topics([topic])[topic].result(30)


def test_sync_check_fails_naming_the_pipeline_when_no_supervisor_runs(ray_cluster):
    with pytest.raises(RuntimeError, match="no sync supervisor running for pipeline 'nobody-here'"):
        check_sync_supervisor("nobody-here", timeout_s=3)


def test_pipeline_checks_with_sync_include_the_supervisor(pipeline, ray_cluster):
    results = {r.name: r for r in run_checks(pipeline_checks(pipeline, sync=True, timeout_s=3), timeout_s=5)}
    assert set(results) == {"postgres", "cassandra", "kafka", "schema_registry", "vault", "capture", "sync"}
    assert results["sync"].status in ("up", "down") and results["kafka"].status == "up"
    assert results["kafka"].as_dict()["status"] == "up" and results["kafka"].latency_ms > 0


def test_a_dead_cassandra_is_reported_without_the_driver_logging_tracebacks(stack, caplog):
    driver = logging.getLogger("cassandra")
    before = driver.level
    with caplog.at_level(logging.DEBUG):
        result = run_checks({"cassandra": lambda: check_cassandra(contact_points=["127.0.0.1"],
                                                                   port=_closed_port(), timeout_s=2)},
                            timeout_s=5)[0]
    assert not result.ok and "NoHostAvailable" in result.error and result.status == "down"
    assert not [r for r in caplog.records if r.name.startswith("cassandra") and r.levelno >= logging.WARNING]
    assert driver.level == before  # put back after the probe
