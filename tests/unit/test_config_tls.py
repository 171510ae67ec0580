"""TLS and authentication settings without servers: cassandra.ssl, kafka.properties, postgres ssl*."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from engine.config import load_config
from engine.cql import ssl_context
from engine.errors import ConfigError
from engine.stack.tls import ensure_certificates

BASE = """\
pipeline: {name: unit}
cassandra:
  contact_points: [127.0.0.1]
  %s
kafka:
  bootstrap_servers: k:9094
  %s
postgres:
  host: db
  database: app
  user: app
  password: env:PGPASSWORD
  %s
tables: [{keyspace: ks, table: t}]
"""
ENV = {"PGPASSWORD": "pw", "KEYPW": "kpw"}  # pragma: allowlist secret - test values


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return ensure_certificates(tmp_path_factory.mktemp("stack"), "unit-store-pw")


def write(tmp_path: Path, cassandra: str = "", kafka: str = "", postgres: str = "") -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(BASE % (cassandra, kafka, postgres))  # continuation lines carry their indent
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    return info.value.problems


def test_a_full_tls_config_loads_with_absolute_paths_and_pickles(tmp_path, certs):
    (tmp_path / "tls").symlink_to(certs.dir)
    path = write(tmp_path,
                 cassandra="ssl: {ca_file: tls/ca.crt, cert_file: tls/client.crt, key_file: tls/client.key}",
                 kafka="security_protocol: SSL\n  ssl_ca_location: tls/ca.crt\n  properties: "
                       "{ssl.key.location: tls/client.key, ssl.certificate.location: tls/client.crt, "
                       "ssl.key.password: env:KEYPW, socket.keepalive.enable: true}",
                 postgres="sslmode: verify-full\n  sslrootcert: tls/ca.crt\n  sslcert: tls/client.crt\n"
                          "  sslkey: tls/client.key")
    cfg = pickle.loads(pickle.dumps(load_config(path, env=ENV)))
    assert cfg.cassandra.ssl.ca_file == str(tmp_path / "tls" / "ca.crt")
    conf = cfg.kafka.client_conf()
    assert conf["ssl.key.location"] == str(tmp_path / "tls" / "client.key")
    assert conf["ssl.key.password"] == "kpw" and conf["socket.keepalive.enable"] == "true"  # pragma: allowlist secret
    kwargs = cfg.postgres.connect_kwargs()
    assert kwargs["sslrootcert"] == str(tmp_path / "tls" / "ca.crt") and kwargs["sslmode"] == "verify-full"
    ctx = ssl_context(cfg.cassandra.ssl)
    assert ctx is not None and ctx.check_hostname
    assert "kpw" not in cfg.masked_yaml()


def test_unknown_owned_typed_and_clear_text_kafka_properties_are_each_named(tmp_path):
    path = write(tmp_path, kafka="security_protocol: SASL_SSL\n  sasl_mechanism: PLAIN\n  sasl_username: u\n"
                                 "  sasl_password: env:PGPASSWORD\n  properties: {sll.key.location: x, "
                                 "group.id: g, security.protocol: SSL, ssl.key.password: hunter2}")
    found = problems(path)
    assert any(p.startswith("kafka.properties.sll.key.location: not a librdkafka setting")
               and "did you mean ssl.key.location" in p for p in found)
    assert any(p.startswith("kafka.properties.group.id: set by c2pg itself") for p in found)
    assert any(p.startswith("kafka.properties.security.protocol: has its own setting") for p in found)
    assert any(p.startswith("kafka.properties.ssl.key.password: secrets must not be written in clear")
               for p in found)
    assert not any("hunter2" in p for p in found)


def test_ssl_properties_without_an_ssl_protocol_are_refused(tmp_path):
    found = problems(write(tmp_path, kafka="properties: {ssl.key.location: /x}"))
    assert any(p.startswith("kafka.properties.ssl.key.location: only used with an SSL") for p in found)


def test_missing_files_and_open_keys_name_the_setting(tmp_path, certs):
    key = tmp_path / "open.key"
    key.write_bytes(certs.client_key.read_bytes())
    key.chmod(0o644)
    found = problems(write(tmp_path, cassandra="ssl: {ca_file: nowhere.crt}",
                           postgres=f"sslmode: require\n  sslcert: {certs.client_cert}\n  sslkey: {key}"))
    assert any(p.startswith("cassandra.ssl.ca_file: no such file") for p in found)
    assert any(p.startswith("postgres.sslkey:") and "chmod 600" in p for p in found)


def test_pairs_and_modes_are_checked(tmp_path):
    found = problems(write(tmp_path, cassandra="ssl: {ca_file: a, key_file: k}",
                           postgres="sslmode: verify-ca\n  sslkey: k\n  sslpassword: env:KEYPW"))
    assert "cassandra.ssl.cert_file: required with cassandra.ssl.key_file" in found
    assert "postgres.sslcert: required with postgres.sslkey" in found
    assert "postgres.sslrootcert: required when postgres.sslmode is verify-ca" in found


def test_certificates_are_kept_while_valid(tmp_path):
    first = ensure_certificates(tmp_path, "unit-store-pw")
    before = first.server_cert.read_bytes()
    assert ensure_certificates(tmp_path, "unit-store-pw").server_cert.read_bytes() == before
    assert oct(first.server_key.stat().st_mode & 0o777) == "0o600"
    assert oct(first.trust_store.stat().st_mode & 0o777) == "0o600"
    first.client_key.unlink()  # a missing file: everything issued again
    assert ensure_certificates(tmp_path, "unit-store-pw").server_cert.read_bytes() != before
