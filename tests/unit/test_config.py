"""engine.config / engine.secrets without servers: parsing, overrides, checks, masking.

Secrets here come from ``env:`` and ``file:`` references; Vault is covered by
tests/integration/test_config_vault.py against the real OpenBao.
"""

from __future__ import annotations

import pickle
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from engine.cli import main
from engine.config import (ENV_PREFIX, PipelineConfig, format_duration, format_size, load_config,
                           parse_duration, parse_env_overrides, parse_size)
from engine.errors import ConfigError, SecretError
from engine.secrets import CLEAR_TEXT_MESSAGE, Secret, SecretRef, parse_ref

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pipeline.local.yaml"

# A pipeline without Vault: every secret is an env: or file: reference.
MINIMAL = """\
pipeline:
  name: unit
cassandra:
  contact_points: [10.0.0.1, 10.0.0.2]
kafka:
  bootstrap_servers: k1:9092
postgres:
  host: db
  database: app
  user: app
  password: env:PGPASSWORD
tables:
  - keyspace: ks
    table: t1
"""
ENV = {"PGPASSWORD": "pg-s3cret"}
HYPO = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path, env: dict[str, str] | None = None, **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV if env is None else env, **kw)
    return info.value.problems


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    return write(tmp_path, MINIMAL)


# --- the example and the defaults ------------------------------------------------------


def test_example_validates_without_secrets():
    cfg = load_config(EXAMPLE, env={}, resolve_secrets=False)
    assert cfg.name == "local"
    assert cfg.postgres.port == 55432 and cfg.postgres.user == "c2pg"
    assert cfg.postgres.password.ref == SecretRef("vault", "c2pg/local", "postgres_password")
    assert cfg.vault is not None and cfg.vault.auth == "approle"
    assert [(t.keyspace, t.table, t.target_schema, t.target_table) for t in cfg.tables] == [
        ("demo", "users", "public", "users")]
    assert cfg.kafka.topic_for("demo", "users") == "c2pg.demo.users"
    assert cfg.schema_registry.url == "http://127.0.0.1:8081/apis/ccompat/v7"
    assert cfg.problems() == []


def test_defaults(minimal: Path):
    cfg = load_config(minimal, env=ENV)
    assert cfg.cassandra.contact_points == ("10.0.0.1", "10.0.0.2")
    assert (cfg.cassandra.port, cfg.cassandra.local_dc, cfg.cassandra.consistency) == (
        9042, "datacenter1", "LOCAL_QUORUM")
    assert cfg.cassandra.request_timeout == timedelta(seconds=30)
    assert cfg.cassandra.protocol_version == 5
    assert cfg.kafka.topic_prefix == "c2pg" and cfg.kafka.value_format == "json"
    assert cfg.postgres.schema == "public" and cfg.postgres.sslmode == "prefer"
    assert cfg.vault is None and cfg.api.token is None and cfg.api.rate_limit_per_minute == 600
    s = cfg.sync
    assert (s.workers, s.batch_max_events, s.batch_max_bytes) == (2, 5000, 8 * 2**20)
    assert s.batch_max_wait == timedelta(milliseconds=200)
    assert s.tombstone_retention == timedelta(days=7)
    assert s.ttl_sweep_interval == s.schema_check_interval == timedelta(seconds=60)
    assert s.poll_timeout == timedelta(milliseconds=100)
    assert (cfg.snapshot.split_size_mb, cfg.snapshot.splits, cfg.snapshot.page_size,
            cfg.snapshot.max_retries) == (64, None, 5000, 5)
    assert (cfg.reconcile.splits, cfg.reconcile.digest_rows, cfg.reconcile.repair) == (
        None, 64, False)
    assert cfg.reconcile.recheck_delay == timedelta(seconds=5)
    assert (cfg.reconcile.recheck_rounds, cfg.reconcile.consistency, cfg.reconcile.max_diffs) == (3, None, 100_000)


def test_target_schema_defaults_to_postgres_schema(tmp_path: Path):
    path = write(tmp_path, MINIMAL.replace("  user: app\n", "  user: app\n  schema: mirror\n")
                 + "  - keyspace: ks\n    table: t2\n    target_schema: other\n"
                 + "    target_table: renamed\n")
    cfg = load_config(path, env=ENV)
    assert [(t.target_schema, t.target_table) for t in cfg.tables] == [
        ("mirror", "t1"), ("other", "renamed")]


def test_connect_kwargs_and_client_conf(tmp_path: Path):
    path = write(tmp_path, MINIMAL.replace(
        "  bootstrap_servers: k1:9092\n",
        "  bootstrap_servers: [k1:9092, k2:9092]\n  security_protocol: sasl_ssl\n"
        "  sasl_mechanism: SCRAM-SHA-512\n  sasl_username: bob\n  sasl_password: env:KPASS\n"))
    cfg = load_config(path, env={**ENV, "KPASS": "k-pass"})
    assert cfg.postgres.connect_kwargs() == {
        "host": "db", "port": 5432, "dbname": "app", "user": "app", "password": "pg-s3cret",
        "connect_timeout": 10, "application_name": "c2pg", "sslmode": "prefer"}
    assert cfg.postgres.connect_kwargs(application_name="c2pg-sync-1")["application_name"] == (
        "c2pg-sync-1")
    assert cfg.kafka.client_conf() == {
        "bootstrap.servers": "k1:9092,k2:9092", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "bob", "sasl.password": "k-pass"}


def test_unresolved_secret_cannot_be_used(minimal: Path):
    cfg = load_config(minimal, env={}, resolve_secrets=False)
    assert not cfg.postgres.password.resolved
    with pytest.raises(SecretError, match="env:PGPASSWORD was not resolved"):
        cfg.postgres.connect_kwargs()


def test_config_is_frozen(minimal: Path):
    cfg = load_config(minimal, env=ENV)
    with pytest.raises(ValidationError):
        cfg.sync.workers = 9  # type: ignore[misc]


def test_pickle_round_trip_keeps_resolved_secrets(minimal: Path):
    cfg = load_config(minimal, env=ENV)
    copy = pickle.loads(pickle.dumps(cfg))
    assert copy == cfg
    assert copy.postgres.password.get() == "pg-s3cret"
    assert copy.masked_yaml() == cfg.masked_yaml()


# --- secrets -----------------------------------------------------------------------------


def test_file_secret_is_relative_to_the_config_file_and_stripped(tmp_path: Path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pg").write_text("from-file\n")
    path = write(tmp_path, MINIMAL.replace("env:PGPASSWORD", "file:secrets/pg"))
    assert load_config(path, env={}).postgres.password.get() == "from-file"


def test_missing_env_and_file_secrets_name_the_setting(tmp_path: Path):
    path = write(tmp_path, MINIMAL + "api:\n  token: file:nope.txt\n")
    assert problems_of(path, env={}) == [
        "postgres.password: environment variable PGPASSWORD is not set",
        f"api.token: secret file {tmp_path / 'nope.txt'} does not exist"]


@pytest.mark.parametrize("ref, expected", [
    ("vault:c2pg/local#postgres_password", SecretRef("vault", "c2pg/local", "postgres_password")),
    ("vault:/a/b/#k", SecretRef("vault", "a/b", "k")),
    ("env:VAULT_TOKEN", SecretRef("env", "VAULT_TOKEN")),
    ("file:../.stack/secrets/x", SecretRef("file", "../.stack/secrets/x")),
])
def test_parse_ref(ref: str, expected: SecretRef):
    assert parse_ref(ref) == expected
    assert parse_ref(expected.text) == expected


@pytest.mark.parametrize("ref, message", [
    ("vault:c2pg/local", "vault: reference must name a path and a key"),
    ("vault:#key", "vault: reference must name a path and a key"),
    ("env:", "env: reference needs a variable name"),
    ("env:A-B", "env: reference needs a variable name"),
    ("file:", "file: reference needs a path"),
])
def test_malformed_reference(tmp_path: Path, ref: str, message: str):
    path = write(tmp_path, MINIMAL.replace("env:PGPASSWORD", f"'{ref}'"))
    [problem] = problems_of(path)
    assert problem.startswith(f"postgres.password: {message}")


clear_values = st.one_of(
    st.text(min_size=1).filter(lambda s: not s.startswith(("vault:", "env:", "file:"))),
    st.integers(), st.booleans(), st.floats(allow_nan=False))


@HYPO
@given(value=clear_values)
def test_clear_text_secret_is_refused_without_echo(tmp_path: Path, value: object):
    """Whatever is written in clear, the only problem is the fixed message (no echo)."""
    data = yaml.safe_load(MINIMAL)
    data["postgres"]["password"] = value
    path = tmp_path / "clear.yaml"
    path.write_text(yaml.safe_dump(data))
    assert problems_of(path) == [f"postgres.password: {CLEAR_TEXT_MESSAGE}"]


secret_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=0, max_size=40).map(lambda s: "s3cr3t-" + s)


@HYPO
@given(pg=secret_values, token=secret_values)
def test_masking_never_shows_a_resolved_value(tmp_path: Path, pg: str, token: str):
    path = write(tmp_path, MINIMAL + "api:\n  token: env:API_TOKEN\n")
    cfg = load_config(path, env={"PGPASSWORD": pg, "API_TOKEN": token})
    assert cfg.postgres.password.get() == pg and cfg.api.token is not None
    shown = [cfg.masked_yaml(), repr(cfg), str(cfg), str(cfg.model_dump()),
             cfg.model_dump_json(), repr(cfg.postgres.password), str(cfg.api.token)]
    for text in shown:
        assert "s3cr3t-" not in text
    assert "password: 'env:PGPASSWORD (resolved: ****)'" in cfg.masked_yaml()
    assert "token: 'env:API_TOKEN (resolved: ****)'" in cfg.masked_yaml()


def test_masked_yaml_unresolved_and_effective(minimal: Path):
    text = load_config(minimal, env={"C2PG__SYNC__WORKERS": "7"}, resolve_secrets=False).masked_yaml()
    doc = yaml.safe_load(text)
    assert doc["postgres"]["password"] == "env:PGPASSWORD (unresolved)"
    assert doc["sync"]["workers"] == 7
    assert doc["sync"]["batch_max_bytes"] == "8MiB" and doc["sync"]["batch_max_wait"] == "200ms"
    assert doc["tables"] == [{"keyspace": "ks", "table": "t1", "target_schema": "public",
                              "target_table": "t1", "capture": "cdc", "reconcile_every": "15m"}]


def test_secret_repr_and_pickle():
    secret = Secret(parse_ref("env:X")).with_value("v@lue")
    assert "v@lue" not in repr(secret) and "v@lue" not in str(secret)
    assert pickle.loads(pickle.dumps(secret)).get() == "v@lue"


# --- environment overrides ---------------------------------------------------------------


def random_case(draw_text: str, flips: list[bool]) -> str:
    return "".join(c.upper() if f else c.lower() for c, f in zip(draw_text, flips))


@HYPO
@given(workers=st.integers(min_value=1, max_value=10**6),
       flips=st.lists(st.booleans(), min_size=12, max_size=12))
def test_int_override_any_key_case(minimal: Path, workers: int, flips: list[bool]):
    variable = f"{ENV_PREFIX}{random_case('sync', flips[:4])}__{random_case('workers', flips[4:11])}"
    cfg = load_config(minimal, env={**ENV, variable: str(workers)})
    assert cfg.sync.workers == workers


@HYPO
@given(flag=st.sampled_from([("true", True), ("false", False), ("True", True), ("no", False),
                             ("yes", True), ("off", False)]))
def test_bool_override(minimal: Path, flag: tuple[str, bool]):
    cfg = load_config(minimal, env={**ENV, "C2PG__RECONCILE__REPAIR": flag[0]})
    assert cfg.reconcile.repair is flag[1]


@HYPO
@given(hosts=st.lists(st.from_regex(r"[a-z][a-z0-9]{0,10}(\.[a-z]{2,5})?", fullmatch=True),
                      min_size=1, max_size=4))
def test_list_override(minimal: Path, hosts: list[str]):
    assume(all(h not in ("yes", "no", "on", "off", "true", "false", "null", "y", "n") for h in hosts))
    cfg = load_config(minimal, env={**ENV, "C2PG__CASSANDRA__CONTACT_POINTS": f"[{', '.join(hosts)}]"})
    assert cfg.cassandra.contact_points == tuple(hosts)


@HYPO
@given(wait=st.timedeltas(min_value=timedelta(milliseconds=1), max_value=timedelta(days=30)))
def test_duration_override(minimal: Path, wait: timedelta):
    cfg = load_config(minimal, env={**ENV, "C2PG__SYNC__BATCH_MAX_WAIT": format_duration(wait)})
    assert cfg.sync.batch_max_wait == wait


def test_override_creates_section_and_supplies_secret_reference(minimal: Path):
    env = {**ENV, "C2PG__API__TOKEN": "env:API_TOKEN", "API_TOKEN": "t0k3n",
           "C2PG__SCHEMA_REGISTRY__URL": "http://reg:8081/", "C2PG__KAFKA__DLQ_TOPIC": "dlq"}
    cfg = load_config(minimal, env=env)
    assert cfg.api.token is not None and cfg.api.token.get() == "t0k3n"
    assert cfg.schema_registry.url == "http://reg:8081"
    assert cfg.kafka.dlq_topic == "dlq"


def test_empty_override_restores_default(minimal: Path):
    path = write(minimal.parent, MINIMAL + "sync:\n  workers: 4\n", "p2.yaml")
    assert load_config(path, env={**ENV, "C2PG__SYNC__WORKERS": ""}).sync.workers == 2


@pytest.mark.parametrize("variable, expected", [
    ("C2PG__SYNC__WORKRS", "C2PG__SYNC__WORKRS: sync.workrs is not a setting (did you mean workers?)"),
    ("C2PG__NOPE", "C2PG__NOPE: nope is not a setting"),
    ("C2PG__TABLES", "C2PG__TABLES: the tables list cannot be overridden from the environment"),
    ("C2PG__TABLES__0__KEYSPACE", "C2PG__TABLES__0__KEYSPACE: the tables list cannot be overridden"),
    ("C2PG__KAFKA", "C2PG__KAFKA: kafka is a section; override its settings one by one"),
    ("C2PG__SYNC__WORKERS__X", "C2PG__SYNC__WORKERS__X: sync.workers is a setting, not a section"),
    ("C2PG__SYNC___WORKERS", "C2PG__SYNC___WORKERS: sync._workers is not a setting"),
    ("C2PG__SYNC____WORKERS", "C2PG__SYNC____WORKERS: empty part in the setting path"),
])
def test_bad_override_names_the_variable(minimal: Path, variable: str, expected: str):
    [problem] = problems_of(minimal, env={**ENV, variable: "1"})
    assert problem.startswith(expected)


def test_override_value_error_names_the_variable(minimal: Path):
    [problem] = problems_of(minimal, env={**ENV, "C2PG__SNAPSHOT__PAGE_SIZE": "-1"})
    assert problem == ("snapshot.page_size: Input should be greater than 0 "
                       "(set by C2PG__SNAPSHOT__PAGE_SIZE)")


def test_other_variables_are_ignored():
    overrides, problems = parse_env_overrides({"C2PG_STACK_DIR": "/x", "PATH": "/bin", "c2pg__x": "1"})
    assert overrides == [] and problems == []


# --- validation problems ---------------------------------------------------------------------


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path):
    path = write(tmp_path, "pipeline:\n  name: x\ncassandra: [1, 2\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: line 4, column 1: YAML syntax error")


def test_missing_file(tmp_path: Path):
    [problem] = problems_of(tmp_path / "absent.yaml")
    assert problem.startswith(f"{tmp_path / 'absent.yaml'}: cannot read the pipeline file")


def test_top_level_must_be_a_mapping(tmp_path: Path):
    [problem] = problems_of(write(tmp_path, "- a\n- b\n"))
    assert problem.endswith("the pipeline file must be a YAML mapping of sections")


def test_duplicate_yaml_key(tmp_path: Path):
    path = write(tmp_path, MINIMAL + "sync:\n  workers: 3\n  workers: 4\n")
    assert problems_of(path) == [f"{path}: line 17: duplicate key 'workers'"]


def test_list_index_in_error_path(tmp_path: Path):
    path = write(tmp_path, MINIMAL + "  - keyspace: ''\n    table: t2\n    colour: blue\n")
    assert problems_of(path) == [
        "tables[1].keyspace: must be a non-empty name without NUL characters",
        "tables[1].colour: unknown setting"]


BROKEN = """\
pipeline:
  name: Not Valid
cassandra:
  contact_points: [c1]
  username: reader
  consistency: any
kafka:
  bootstrap_servers: k1:9092
  bootstrap_server: typo
  value_format: avro
postgres:
  host: db
  database: app
  user: app
  password: hunter2
  connect_timeout: 5
vault:
  url: http://127.0.0.1:1
  auth: approle
  role_id: vault:c2pg/x#role
tables:
  - keyspace: ks
    table: t1
  - keyspace: ks
    table: t1
  - keyspace: ks
    table: t2
    target_table: t1
sync:
  batch_max_events: 0
  batch_max_bytes: 0
  batch_max_wait: soon
snapshot:
  consistency: QUORUMM
api:
  token: env:API_TOKEN
"""
BROKEN_PROBLEMS = [
    "C2PG__SYNC__WORKRS: sync.workrs is not a setting (did you mean workers?)",
    "pipeline.name: String should match pattern '^[a-z0-9_-]+$'",
    "kafka.bootstrap_server: unknown setting (did you mean bootstrap_servers?)",
    f"postgres.password: {CLEAR_TEXT_MESSAGE}",
    "postgres.connect_timeout: must be a duration with a unit, such as 200ms, 60s, 5m, 1h30m or 7d",
    "sync.batch_max_events: Input should be greater than 0",
    "sync.batch_max_bytes: Input should be greater than 0",
    "sync.batch_max_wait: must be a duration with a unit, such as 200ms, 60s, 5m, 1h30m or 7d",
    "snapshot.consistency: Input should be 'ANY', 'ONE', 'TWO', 'THREE', 'QUORUM', 'ALL', "
    "'LOCAL_QUORUM', 'EACH_QUORUM', 'SERIAL', 'LOCAL_SERIAL' or 'LOCAL_ONE'",
    "cassandra.password: required when cassandra.username is set",
    "cassandra.consistency: ANY is a write-only consistency level; c2pg reads from Cassandra",
    "vault.role_id: Vault credentials cannot come from Vault; use env:NAME or file:PATH",
    "vault.secret_id: required when vault.auth is approle",
    "tables[1]: ks.t1 is already listed as tables[0]",
    "tables[2].target_table: public.t1 is already the target of tables[0]",
    "api.token: environment variable API_TOKEN is not set",
]


def test_every_problem_is_reported_at_once(tmp_path: Path):
    path = write(tmp_path, BROKEN)
    assert problems_of(path, env={"C2PG__SYNC__WORKRS": "3"}) == BROKEN_PROBLEMS


def test_avro_needs_registry_and_sasl_settings(minimal: Path):
    env = {**ENV, "C2PG__KAFKA__VALUE_FORMAT": "avro", "C2PG__KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
           "C2PG__KAFKA__SASL_USERNAME": "u"}
    assert problems_of(minimal, env=env) == [
        "kafka.sasl_mechanism: required when kafka.security_protocol is SASL_SSL",
        "kafka.sasl_password: required when kafka.security_protocol is SASL_SSL",
        "schema_registry.url: required when kafka.value_format is avro"]


def test_sasl_settings_without_sasl_protocol(minimal: Path):
    assert problems_of(minimal, env={**ENV, "C2PG__KAFKA__SASL_USERNAME": "u"}) == [
        "kafka.sasl_username: only used with a SASL_* security_protocol (it is PLAINTEXT)"]


def test_vault_token_auth_requires_token_and_vault_refs_require_vault(tmp_path: Path):
    path = write(tmp_path, MINIMAL.replace("env:PGPASSWORD", "vault:c2pg/local#pw"))
    assert problems_of(path, resolve_secrets=False) == [
        "postgres.password: refers to Vault but there is no vault section"]
    env = {**ENV, "C2PG__VAULT__URL": "http://127.0.0.1:8200"}
    assert problems_of(path, env=env, resolve_secrets=False) == [
        "vault.token: required when vault.auth is token"]


def test_unused_vault_credentials_are_not_resolved(tmp_path: Path):
    """Switching auth by override leaves the other method's credentials alone (unresolved)."""
    path = write(tmp_path, MINIMAL + "vault:\n  url: http://127.0.0.1:1\n  auth: approle\n"
                 "  role_id: file:absent-role\n  secret_id: file:absent-secret\n")
    problems = problems_of(path)
    assert problems == [f"vault.role_id: secret file {tmp_path / 'absent-role'} does not exist",
                        f"vault.secret_id: secret file {tmp_path / 'absent-secret'} does not exist"]


def test_long_target_table_name(tmp_path: Path):
    path = write(tmp_path, MINIMAL + f"    target_table: {'x' * 64}\n")
    assert problems_of(path) == [
        "tables[0].target_table: longer than PostgreSQL's 63-byte identifier limit"]


def test_problems_of_a_directly_built_config(minimal: Path):
    cfg = load_config(minimal, env=ENV)
    data = {**cfg.model_dump(), "kafka": {"bootstrap_servers": "k", "value_format": "avro"},
            "postgres": {**cfg.model_dump()["postgres"], "password": "env:X"}}
    assert PipelineConfig.model_validate(data).problems() == [
        "schema_registry.url: required when kafka.value_format is avro"]


# --- durations and sizes ----------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("200ms", timedelta(milliseconds=200)), ("7d", timedelta(days=7)), ("60s", timedelta(seconds=60)),
    ("1h30m", timedelta(hours=1, minutes=30)), ("1.5s", timedelta(seconds=1.5)),
    ("250us", timedelta(microseconds=250))])
def test_parse_duration(text: str, expected: timedelta):
    assert parse_duration(text) == expected


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10_000)))
def test_duration_round_trip(value: timedelta):
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize("text, expected", [
    ("8MiB", 8 * 2**20), ("8 mib", 8 * 2**20), ("64KB", 64_000), ("1GiB", 2**30), (4096, 4096),
    ("1.5KiB", 1536), ("100", 100)])
def test_parse_size(text: object, expected: int):
    assert parse_size(text) == expected


@given(st.integers(min_value=1, max_value=2**50))
def test_size_round_trip(value: int):
    assert parse_size(format_size(value)) == value


@pytest.mark.parametrize("field, value", [("batch_max_wait", "5"), ("batch_max_wait", "5 sec"),
                                          ("batch_max_bytes", "8 MiBs"), ("batch_max_bytes", "eight")])
def test_bad_units(minimal: Path, field: str, value: str):
    [problem] = problems_of(minimal, env={**ENV, f"C2PG__SYNC__{field.upper()}": value})
    assert problem.startswith(f"sync.{field}: must be a ")


# --- the CLI -------------------------------------------------------------------------------


def test_cli_config_check_lists_every_problem(tmp_path: Path, capsys, monkeypatch):
    path = write(tmp_path, BROKEN)
    monkeypatch.setenv("C2PG__SYNC__WORKRS", "3")
    monkeypatch.delenv("API_TOKEN", raising=False)
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"({len(BROKEN_PROBLEMS)} problem(s))" in err
    for problem in BROKEN_PROBLEMS:
        assert f"  - {problem}\n" in err
    assert "hunter2" not in err


def test_cli_config_check_no_secrets_prints_masked_yaml(capsys):
    assert main(["config", "check", "--no-secrets", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["postgres"]["password"] == "vault:c2pg/local#postgres_password (unresolved)"
    assert load_config(EXAMPLE, env={}, resolve_secrets=False).masked_yaml() == out
