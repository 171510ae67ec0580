"""Snapshot, sync and reconcile through TLS and authentication on all three servers, and the
refusals: a wrong CA, a wrong password, plaintext where only TLS is accepted.

The stack must be in TLS mode (``c2pg stack up --tls``; ``scripts/test.sh`` starts it so):
Cassandra with client encryption (a client certificate required of TLS clients) and logins,
Kafka's SASL_SSL listener with SCRAM-SHA-512, PostgreSQL's TLS-only role ``c2pg_tls``. The
pipeline is ``examples/pipeline.tls.yaml``: the events come from the real connector (which
produces through SASL_SSL too), c2pg reads them through SASL_SSL and writes through TLS.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psycopg2
import pytest
import yaml

from engine import cql
from engine.config import PipelineConfig, TableConfig, load_config
from engine.health import pipeline_checks, run_checks
from engine.stack.tls import ensure_certificates
from engine.topic_tail import TopicTail
from tests.conftest import ROOT
from tests.integration.cdc_scenarios import fresh_sync_pipeline, stop_sync

KS = "tls_ks"
SCHEMA = "tls"


def tls_pipeline_file(directory: Path, stack_root: Path, **changes) -> Path:
    """``examples/pipeline.tls.yaml`` with the stack's directory wherever it says ``../.stack``
    (the stack may live elsewhere: ``C2PG_STACK_DIR``) and ``changes`` merged per section."""
    text = (ROOT / "examples" / "pipeline.tls.yaml").read_text().replace("../.stack", str(stack_root))
    doc = yaml.safe_load(text)
    for section, values in changes.items():
        doc.setdefault(section, {}).update(values)
    path = directory / f"tls-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def tls_cfg(stack, tmp_path_factory) -> PipelineConfig:
    if not stack.tls:
        pytest.skip("the stack is not in TLS mode: .venv/bin/c2pg stack up --tls (scripts/test.sh does)")
    return load_config(tls_pipeline_file(tmp_path_factory.mktemp("tls"), stack.paths.root))


@pytest.fixture(scope="module")
def tls_cass(tls_cfg, cdc_keyspaces):
    """A session through TLS and the stack's login; the keyspace is made with the suite's
    others, past the connector's schema-refresh window (tests/integration/conftest.py)."""
    assert KS in cdc_keyspaces
    cluster, session = cql.connect(tls_cfg.cassandra)
    yield session
    cluster.shutdown()


def _failures(cfg: PipelineConfig) -> dict[str, str]:
    results = run_checks({k: f for k, f in pipeline_checks(cfg, timeout_s=5).items()
                          if k in ("cassandra", "kafka", "postgres")}, timeout_s=15)
    return {r.name: r.error or "" for r in results if not r.ok}


def test_every_server_answers_through_tls_and_auth(tls_cfg):
    assert _failures(tls_cfg) == {}
    # what the session really negotiated, not only that it connected
    conn = psycopg2.connect(**tls_cfg.postgres.connect_kwargs())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cur.fetchone() == (True, "/CN=c2pg_tls")
    finally:
        conn.close()


def test_a_wrong_ca_fails_naming_each_server_and_the_certificate(tls_cfg, stack, tmp_path):
    other = ensure_certificates(tmp_path, "another-ca-pw", ca_name="not the stack's CA")
    path = tls_pipeline_file(tmp_path, stack.paths.root, cassandra={},
                             kafka={"ssl_ca_location": str(other.ca_cert)},
                             postgres={"sslrootcert": str(other.ca_cert)})
    doc = yaml.safe_load(path.read_text())
    doc["cassandra"]["ssl"]["ca_file"] = str(other.ca_cert)
    path.write_text(yaml.safe_dump(doc))
    failures = _failures(load_config(path))
    assert set(failures) == {"cassandra", "kafka", "postgres"}, failures
    for name, error in failures.items():
        assert "certificate verify failed" in error.lower(), (name, error)


def test_a_wrong_password_fails_naming_each_server(tls_cfg, stack, tmp_path, monkeypatch):
    monkeypatch.setenv("C2PG_TLS_TEST_WRONG", "not-the-password")
    wrong = "env:C2PG_TLS_TEST_WRONG"
    failures = _failures(load_config(tls_pipeline_file(
        tmp_path, stack.paths.root, cassandra={"password": wrong}, kafka={"sasl_password": wrong},
        postgres={"password": wrong})))
    assert set(failures) == {"cassandra", "kafka", "postgres"}, failures
    assert "AuthenticationFailed" in failures["cassandra"] or "credentials" in failures["cassandra"].lower()
    assert "authentication" in failures["kafka"].lower()
    assert "password authentication failed" in failures["postgres"]


def test_plaintext_is_refused_by_the_tls_only_role_and_listener(tls_cfg):
    kwargs = {**tls_cfg.postgres.connect_kwargs(), "sslmode": "disable"}
    for key in ("sslrootcert", "sslcert", "sslkey"):
        kwargs.pop(key, None)
    with pytest.raises(psycopg2.OperationalError, match="pg_hba.conf rejects connection"):
        psycopg2.connect(**kwargs)
    # TLS without the client certificate: refused too (clientcert=verify-full)
    kwargs = {**tls_cfg.postgres.connect_kwargs()}
    kwargs.pop("sslcert"), kwargs.pop("sslkey")
    with pytest.raises(psycopg2.OperationalError, match="certificate"):
        psycopg2.connect(**kwargs)
    from engine.health import check_kafka

    with pytest.raises(Exception):  # noqa: B017 - librdkafka reports a transport failure, not a type
        check_kafka(bootstrap_servers=tls_cfg.kafka.bootstrap_servers, timeout_s=3)


def test_snapshot_sync_and_reconcile_through_tls(tls_cfg, tls_cass, ray_cluster):
    from engine.reconcile import run_reconcile
    from engine.snapshot import run_snapshot
    from engine.sync.supervisor import get_or_start

    name = f"t_{uuid.uuid4().hex[:8]}"
    tls_cass.execute(f"CREATE TABLE {KS}.{name} (pk int PRIMARY KEY, v text) WITH cdc = true")
    for i in range(50):
        tls_cass.execute(f"INSERT INTO {KS}.{name} (pk, v) VALUES (%s, %s)", (i, f"row {i}"))
    pg = psycopg2.connect(**tls_cfg.postgres.connect_kwargs(application_name="c2pg-tls-test"))
    try:
        cfg = fresh_sync_pipeline(pg, tls_cfg, KS, SCHEMA, name)
        table = cfg.tables[0]
        assert isinstance(table, TableConfig)

        run_snapshot(cfg, table, splits=4)
        assert _pg_rows(pg, name) == {i: f"row {i}" for i in range(50)}

        # The connector knows the table once an event of it arrives (read through SASL_SSL).
        with TopicTail(cfg.kafka.topic_for(KS, name), cfg.kafka.client_conf()) as tail:
            assert tail.wait_for_capture(lambda: tls_cass.execute(
                f"INSERT INTO {KS}.{name} (pk, v) VALUES (-1, 'sentinel')"), 60)
        get_or_start(cfg)
        try:
            for i in range(50, 70):
                tls_cass.execute(f"INSERT INTO {KS}.{name} (pk, v) VALUES (%s, %s)", (i, f"row {i}"))
            tls_cass.execute(f"UPDATE {KS}.{name} SET v = 'changed' WHERE pk = 3")
            tls_cass.execute(f"DELETE FROM {KS}.{name} WHERE pk = 4")
            expected = {i: f"row {i}" for i in range(70) if i != 4} | {3: "changed", -1: "sentinel"}
            deadline = time.monotonic() + 60
            while _pg_rows(pg, name) != expected and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _pg_rows(pg, name) == expected
        finally:
            stop_sync(cfg.name)

        # Drift made behind c2pg's back is found and repaired, reading both sides through TLS.
        with pg, pg.cursor() as cur:
            cur.execute(f'DELETE FROM "{SCHEMA}"."{name}" WHERE pk = 7')
        outcome = run_reconcile(cfg, table, repair=True, splits=2, progress=False)
        assert sum(outcome.differences.values()) >= 1
        assert _pg_rows(pg, name) == expected
    finally:
        pg.close()
        tls_cass.execute(f"DROP TABLE IF EXISTS {KS}.{name}")


def _pg_rows(pg, name: str) -> dict[int, str]:
    with pg, pg.cursor() as cur:
        cur.execute(f'SELECT pk, v FROM "{SCHEMA}"."{name}"')
        return dict(cur.fetchall())
