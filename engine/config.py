"""The pipeline configuration: one YAML file, ``C2PG__...`` overrides, secrets by reference.

:func:`load_config` is the one entry point (the CLI, the Ray job driver, the Serve app and
the tests call it). It validates once, at the edge, and reports *every* problem at once in a
single :class:`~engine.errors.ConfigError`, each problem naming its setting
(``tables[0].keyspace: ...``, ``postgres.password: ...``). The result,
:class:`PipelineConfig`, is frozen and picklable: the driver loads it and ships it to Ray
workers, which open their own connections from it (``postgres.connect_kwargs()``,
``kafka.client_conf()``) where the work runs.

Order of work in :func:`load_config`:

1. read the YAML (a syntax error stops here: nothing else can be checked);
2. apply environment overrides ``C2PG__SECTION__KEY[__SUBKEY]=value`` (:mod:`engine.config`
   checks each path against the models, the value is parsed as YAML);
3. validate with the pydantic models (field rules), then the cross-field checks;
4. resolve every secret (:mod:`engine.secrets`) unless ``resolve_secrets=False``.

Steps 2-4 add to one list of problems. When the file breaks a field rule, each top-level
section is also validated on its own, and the cross-field checks and secret resolution run
on the sections that are valid, so one round shows every problem.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
import types
import typing
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer,
                      TypeAdapter, ValidationError, model_validator)
from pydantic_core import PydanticCustomError

from engine.errors import ConfigError, SecretError
from engine.secrets import (CLEAR_TEXT_MESSAGE, Secret, SecretRefSyntaxError, SecretResolver, VaultLoginError,
                            VaultSettings, parse_ref)

__all__ = [
    "ApiConfig", "CassandraConfig", "CassandraSslConfig", "ENV_PREFIX", "KafkaConfig", "PipelineConfig",
    "PipelineSection", "PostgresConfig", "ReconcileConfig", "SchemaRegistryConfig", "Secret",
    "CaptureConfig", "SnapshotConfig", "SyncConfig", "TableConfig", "VaultConfig", "format_duration",
    "format_size", "load_config", "parse_duration", "parse_size",
]

ENV_PREFIX = "C2PG__"

# --- value types: durations, sizes, identifiers -------------------------------------------

_DURATION_UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1),
                   "s": timedelta(seconds=1), "ms": timedelta(milliseconds=1),
                   "us": timedelta(microseconds=1)}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|d|h|m|s)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|us|d|h|m|s))+")


def parse_duration(value: object) -> timedelta:
    """``"200ms"``, ``"60s"``, ``"1h30m"``, ``"7d"`` → ``timedelta``; units d h m s ms us.

    A bare number is refused: ``5`` could mean seconds or milliseconds, so say which.
    Raises ``PydanticCustomError`` (it runs inside validation).
    """
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str) or not _DURATION.fullmatch(value.strip()):
        raise PydanticCustomError(
            "duration", "must be a duration with a unit, such as 200ms, 60s, 5m, 1h30m or 7d")
    total = timedelta()
    for number, unit in _DURATION_PART.findall(value.strip()):
        total += _DURATION_UNITS[unit] * float(number)
    return total


def format_duration(value: timedelta) -> str:
    """The inverse of :func:`parse_duration`, largest units first: ``1h30m``, ``200ms``, ``0s``."""
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    if micros == 0:
        return "0s"
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    parts = []
    for unit in ("d", "h", "m", "s", "ms", "us"):
        step = _DURATION_UNITS[unit] // timedelta(microseconds=1)
        count, micros = divmod(micros, step)
        if count:
            parts.append(f"{count}{unit}")
    return sign + "".join(parts)


_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_size(value: object) -> int:
    """``"8MiB"`` → 8388608; ``"64KB"`` → 64000; an int is bytes. Fractions round down."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if match is None or match.group(2) not in {"", *_SIZE_UNITS}:
        raise PydanticCustomError(
            "size", "must be a size in bytes or with a unit, such as 8MiB, 512KiB or 1GB")
    try:
        return int(Decimal(match.group(1)) * _SIZE_UNITS.get(match.group(2) or "b", 1))
    except InvalidOperation:  # pragma: no cover - the regex admits only decimal numbers
        raise PydanticCustomError("size", "must be a size such as 8MiB") from None


def format_size(value: int) -> str:
    """The inverse of :func:`parse_size` for display: the largest binary unit that divides."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def _positive_duration(value: timedelta) -> timedelta:
    if value <= timedelta():
        raise PydanticCustomError("duration", "must be a duration greater than 0")
    return value


def _non_negative_duration(value: timedelta) -> timedelta:
    if value < timedelta():
        raise PydanticCustomError("duration", "must not be negative")
    return value


def _identifier(value: str) -> str:
    # Names are always quoted (psycopg2.sql.Identifier, CQL double quotes), so any character
    # is safe; only emptiness and NUL (which neither server accepts) are refused.
    if not value or "\x00" in value:
        raise PydanticCustomError("identifier", "must be a non-empty name without NUL characters")
    return value


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise PydanticCustomError("url", "must be an http:// or https:// URL")
    return value.rstrip("/")


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _join_servers(value: object) -> object:
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return value


# librdkafka settings ``kafka.properties`` may carry (librdkafka 2.x CONFIGURATION.md): the
# connection, security and tuning settings of its clients. What c2pg decides itself (group
# ids, offset handling) and what has its own typed setting is refused, naming the setting.
KAFKA_PROPERTIES = frozenset({
    "client.id", "client.rack", "client.dns.lookup", "broker.address.family", "broker.address.ttl",
    "socket.timeout.ms", "socket.keepalive.enable", "socket.nagle.disable", "socket.send.buffer.bytes",
    "socket.receive.buffer.bytes", "socket.connection.setup.timeout.ms", "socket.max.fails",
    "connections.max.idle.ms", "reconnect.backoff.ms", "reconnect.backoff.max.ms",
    "retry.backoff.ms", "retry.backoff.max.ms", "metadata.max.age.ms",
    "topic.metadata.refresh.interval.ms", "topic.metadata.refresh.fast.interval.ms",
    "api.version.request", "api.version.request.timeout.ms", "statistics.interval.ms", "debug",
    "message.max.bytes", "receive.message.max.bytes", "fetch.min.bytes", "fetch.max.bytes",
    "fetch.wait.max.ms", "fetch.error.backoff.ms", "max.partition.fetch.bytes",
    "queued.min.messages", "queued.max.messages.kbytes", "session.timeout.ms",
    "heartbeat.interval.ms", "max.poll.interval.ms", "partition.assignment.strategy",
    "group.protocol", "group.remote.assignor", "compression.type", "linger.ms",
    "request.timeout.ms", "message.timeout.ms", "retries",
    "ssl.key.location", "ssl.key.password", "ssl.key.pem", "ssl.certificate.location",
    "ssl.certificate.pem", "ssl.ca.pem", "ssl.ca.certificate.stores", "ssl.crl.location",
    "ssl.keystore.location", "ssl.keystore.password", "ssl.cipher.suites", "ssl.curves.list",
    "ssl.sigalgs.list", "ssl.providers", "ssl.engine.id", "ssl.engine.location",
    "ssl.endpoint.identification.algorithm", "enable.ssl.certificate.verification",
    "sasl.kerberos.service.name", "sasl.kerberos.principal", "sasl.kerberos.kinit.cmd",
    "sasl.kerberos.keytab", "sasl.kerberos.min.time.before.relogin",
    "sasl.oauthbearer.config", "sasl.oauthbearer.method", "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.client.secret", "sasl.oauthbearer.scope", "sasl.oauthbearer.extensions",
    "sasl.oauthbearer.token.endpoint.url", "enable.sasl.oauthbearer.unsecure.jwt",
})
# Their values are secrets: references (vault:, env:, file:), resolved with the others.
KAFKA_SECRET_PROPERTIES = frozenset({"ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
                                     "sasl.oauthbearer.client.secret"})
# Files librdkafka opens: made absolute (relative to the pipeline file) and checked on load.
KAFKA_FILE_PROPERTIES = frozenset({"ssl.key.location", "ssl.certificate.location",
                                   "ssl.crl.location", "ssl.keystore.location"})
_KAFKA_TYPED = {"bootstrap.servers": "kafka.bootstrap_servers",
                "security.protocol": "kafka.security_protocol", "sasl.mechanism": "kafka.sasl_mechanism",
                "sasl.mechanisms": "kafka.sasl_mechanism", "sasl.username": "kafka.sasl_username",
                "sasl.password": "kafka.sasl_password",  # pragma: allowlist secret - setting names
                "ssl.ca.location": "kafka.ssl_ca_location"}


_C2PG_KAFKA_KEYS = frozenset({"group.id", "group.instance.id", "enable.auto.commit",
                              "enable.auto.offset.store", "auto.offset.reset", "enable.partition.eof",
                              "isolation.level", "enable.idempotence", "auto.commit.interval.ms"})


class _ClearSecret(str):
    """A secret ``kafka.properties`` value written in clear: kept only to be reported
    (``_kafka_property_problems``), never shown."""

    def __repr__(self) -> str:
        return "<secret in clear>"


def _kafka_properties(value: object) -> dict[str, Any]:
    """``kafka.properties`` → ``{key: str | Secret}``. Keys are judged by the cross-field
    check (each problem naming its key); only the shape is checked here."""
    if not isinstance(value, Mapping):
        raise PydanticCustomError("kafka_properties", "must be a mapping of librdkafka settings")
    out: dict[str, Any] = {}
    for key, raw in value.items():
        if not isinstance(key, str) or not isinstance(raw, (str, int, float, bool, Secret)):
            raise PydanticCustomError("kafka_properties",
                                      "each librdkafka setting must be a name and a string or number")
        if isinstance(raw, Secret):
            out[key] = raw
        elif key in KAFKA_SECRET_PROPERTIES:
            try:
                out[key] = Secret(parse_ref(raw))
            except SecretRefSyntaxError:
                out[key] = _ClearSecret()
        else:
            out[key] = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
    return out


def _kafka_property_problems(properties: Mapping[str, Any]) -> Iterator[str]:
    for key, value in properties.items():
        setting = f"kafka.properties.{key}"
        if key in _KAFKA_TYPED:
            yield f"{setting}: has its own setting, use {_KAFKA_TYPED[key]}"
        elif key in _C2PG_KAFKA_KEYS:
            yield f"{setting}: set by c2pg itself (consumer groups and offsets are c2pg's own)"
        elif key not in KAFKA_PROPERTIES:
            yield (f"{setting}: not a librdkafka setting c2pg passes on"
                   f"{_did_you_mean(key, sorted(KAFKA_PROPERTIES))}")
        elif isinstance(value, _ClearSecret):
            yield f"{setting}: {CLEAR_TEXT_MESSAGE}"


Duration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_positive_duration),
                     PlainSerializer(format_duration, return_type=str, when_used="json")]
NonNegativeDuration = Annotated[timedelta, BeforeValidator(parse_duration),
                                AfterValidator(_non_negative_duration),
                                PlainSerializer(format_duration, return_type=str, when_used="json")]
Size = Annotated[int, BeforeValidator(parse_size), Field(gt=0),
                 PlainSerializer(format_size, return_type=str, when_used="json")]
Identifier = Annotated[str, AfterValidator(_identifier)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
KafkaTopic = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,200}$")]
PositiveInt = Annotated[int, Field(gt=0)]
Consistency = Annotated[
    Literal["ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM",
            "SERIAL", "LOCAL_SERIAL", "LOCAL_ONE"],
    BeforeValidator(_upper)]


class _Section(BaseModel):
    """Every section: unknown keys are errors, and a loaded config cannot be changed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sections -----------------------------------------------------------------------------


class PipelineSection(_Section):
    """``pipeline``: the pipeline's name, used in Kafka group ids, state tables and metrics."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9_-]+$")]


class CassandraSslConfig(_Section):
    """``cassandra.ssl``: client encryption (present: every connection is TLS).

    The server's certificate is checked against ``ca_file`` (and its host name against the
    contact point, unless ``verify_hostname: false``). ``cert_file``/``key_file`` present a
    client certificate, for servers with ``require_client_auth``; ``key_password`` is the
    key's passphrase, by reference. Paths are relative to the pipeline file and must be
    readable where c2pg runs (every Ray worker): :func:`load_config` makes them absolute.
    """

    ca_file: NonEmptyStr
    verify_hostname: bool = True
    cert_file: NonEmptyStr | None = None
    key_file: NonEmptyStr | None = None
    key_password: Secret | None = None


class CassandraConfig(_Section):
    """``cassandra``: where the source tables live. c2pg only reads from Cassandra."""

    contact_points: Annotated[tuple[NonEmptyStr, ...], Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 9042
    local_dc: NonEmptyStr = "datacenter1"
    username: NonEmptyStr | None = None
    password: Secret | None = None
    ssl: CassandraSslConfig | None = None
    consistency: Consistency = "LOCAL_QUORUM"
    request_timeout: Duration = timedelta(seconds=30)
    protocol_version: Annotated[int, Field(ge=3, le=5)] = 5


class KafkaConfig(_Section):
    """``kafka``: the change-event topics (one per table, :meth:`topic_for`) and the DLQ.

    SASL supports the username/password mechanisms (PLAIN, SCRAM-*).
    """

    bootstrap_servers: Annotated[NonEmptyStr, BeforeValidator(_join_servers)]
    topic_prefix: KafkaTopic = "c2pg"
    value_format: Literal["json", "avro"] = "json"
    security_protocol: Annotated[Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"],
                                 BeforeValidator(_upper)] = "PLAINTEXT"
    sasl_mechanism: Annotated[Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
                              BeforeValidator(_upper)] | None = None
    sasl_username: NonEmptyStr | None = None
    sasl_password: Secret | None = None
    ssl_ca_location: NonEmptyStr | None = None
    dlq_topic: KafkaTopic | None = None
    # Further librdkafka settings for every Kafka client of c2pg (consumers, the DLQ
    # producer, admin clients), as Kafka Connect's ``consumer.override.*``: client
    # certificates, SASL/OAUTHBEARER, timeouts. Keys are checked against KAFKA_PROPERTIES;
    # secret keys (KAFKA_SECRET_PROPERTIES) hold references. See docs/operations.md, TLS.
    properties: Annotated[dict[str, Any], BeforeValidator(_kafka_properties)] = Field(default_factory=dict)

    def topic_for(self, keyspace: str, table: str) -> str:
        """The change-event topic of a Cassandra table: ``<topic_prefix>.<keyspace>.<table>``."""
        return f"{self.topic_prefix}.{keyspace}.{table}"

    def client_conf(self) -> dict[str, str]:
        """confluent-kafka settings (producer, consumer or admin); callers add group ids etc.

        Needs a resolved config when SASL is used (``SecretError`` otherwise).
        """
        conf = {"bootstrap.servers": self.bootstrap_servers,
                "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        for key, value in self.properties.items():
            conf[key] = value.get() if isinstance(value, Secret) else value
        return conf


class SchemaRegistryConfig(_Section):
    """``schema_registry``: Confluent-compatible registry; required for ``value_format: avro``."""

    url: HttpUrl | None = None
    username: NonEmptyStr | None = None
    password: Secret | None = None

    def client_conf(self) -> dict[str, str]:
        """confluent-kafka ``SchemaRegistryClient`` settings (needs ``url``; resolved secrets)."""
        if self.url is None:
            raise ConfigError(["schema_registry.url: not set"])
        conf = {"url": self.url}
        if self.username and self.password:
            conf["basic.auth.user.info"] = f"{self.username}:{self.password.get()}"
        return conf


with warnings.catch_warnings():
    # ``schema`` is the setting's natural name; it shadows pydantic's deprecated
    # ``BaseModel.schema()`` classmethod, which nothing in c2pg uses.
    warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

    class PostgresConfig(_Section):
        """``postgres``: the target database. Connections are opened by the caller.

        ``schema`` is the default target schema of every table.
        """

        host: NonEmptyStr
        port: Annotated[int, Field(ge=1, le=65535)] = 5432
        database: NonEmptyStr
        user: NonEmptyStr
        password: Secret
        schema: Identifier = "public"  # type: ignore[assignment]  # shadows BaseModel.schema (deprecated)
        connect_timeout: Duration = timedelta(seconds=10)
        sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca",
                         "verify-full"] = "prefer"
        # libpq's TLS files (made absolute by load_config, relative to the pipeline file);
        # sslkey must not be readable by group or others (libpq refuses it otherwise).
        sslrootcert: NonEmptyStr | None = None
        sslcert: NonEmptyStr | None = None
        sslkey: NonEmptyStr | None = None
        sslpassword: Secret | None = None
        application_name: NonEmptyStr = "c2pg"

        def connect_kwargs(self, *, application_name: str | None = None) -> dict[str, Any]:
            """Keyword arguments for ``psycopg2.connect`` (needs a resolved config).

            Callers that run many connections pass an ``application_name`` naming their role
            (``c2pg-sync-3``), which shows in ``pg_stat_activity``. libpq takes whole seconds
            for ``connect_timeout``, so it is rounded up.
            """
            return {"host": self.host, "port": self.port, "dbname": self.database,
                    "user": self.user, "password": self.password.get(),
                    "connect_timeout": max(1, math.ceil(self.connect_timeout.total_seconds())),
                    "application_name": application_name or self.application_name,
                    "sslmode": self.sslmode, **self.ssl_kwargs()}

        def ssl_kwargs(self) -> dict[str, str]:
            """The libpq TLS file settings that are set (and the key's passphrase, resolved)."""
            files = {"sslrootcert": self.sslrootcert, "sslcert": self.sslcert, "sslkey": self.sslkey}
            kwargs = {k: v for k, v in files.items() if v is not None}
            if self.sslpassword is not None:
                kwargs["sslpassword"] = self.sslpassword.get()
            return kwargs


class VaultConfig(_Section):
    """``vault``: the Vault/OpenBao server that ``vault:PATH#KEY`` secrets are read from.

    The credentials are references too (``env:`` or ``file:``; not ``vault:``). Only those of
    the chosen ``auth`` are resolved.
    """

    url: HttpUrl
    auth: Literal["token", "approle"] = "token"
    token: Secret | None = None
    role_id: Secret | None = None
    secret_id: Secret | None = None
    mount: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")] = "secret"
    timeout: Duration = timedelta(seconds=5)

    def credential_fields(self) -> tuple[str, ...]:
        """The settings the chosen ``auth`` needs."""
        return ("token",) if self.auth == "token" else ("role_id", "secret_id")


class TableConfig(_Section):
    """One replicated table: Cassandra ``keyspace.table`` → PostgreSQL ``target_schema.target_table``.

    ``target_schema`` defaults to ``postgres.schema`` and ``target_table`` to ``table`` (both
    filled in while the pipeline validates).
    """

    keyspace: Identifier
    table: Identifier
    target_schema: Identifier | None = None
    target_table: Identifier | None = None
    # How changes reach PostgreSQL: ``cdc`` (the change stream, kept by sync) or
    # ``reconcile`` for a table the connector can never capture (counters, cdc = false that
    # cannot be changed): the sync supervisor reconciles it with repair every
    # ``reconcile_every``, so PostgreSQL is at most that (plus one run) behind. See
    # docs/operations.md, "Tables the connector cannot capture".
    capture: Literal["cdc", "reconcile"] = "cdc"
    reconcile_every: Duration = timedelta(minutes=15)

    @model_validator(mode="before")
    @classmethod
    def _default_target_table(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("target_table") is None and "table" in data:
            return {**data, "target_table": data["table"]}
        return data


class SyncConfig(_Section):
    """``sync``: the streaming apply of change events (Kafka → PostgreSQL).

    A batch is flushed when it reaches ``batch_max_events`` or ``batch_max_bytes``, or is
    ``batch_max_wait`` old, whichever comes first.

    ``read_back``: read from Cassandra (at ``cassandra.consistency``) the current value of
    cells the connector cannot describe exactly — non-frozen collections and UDTs, whose
    events carry only the touched elements, and ``duration``, which it folds — before each
    batch is merged (``engine.readback``). Off: such cells are applied as the events carry
    them (an append replaces the collection with the appended elements; a duration loses
    its months and days) until reconcile repairs them.

    ``kafka_group_commit``: after each PostgreSQL commit, also commit the batch's offsets to
    the Kafka consumer group ``c2pg-<pipeline>`` (asynchronously, never read back) so that
    Kafka's tools see c2pg's progress. Off: the group shows nothing.

    ``columnar``: decode, reduce and stage a batch as columns (``engine.sync``, ADR 0010)
    for tables whose cells need no read-back (no non-frozen collection, UDT or duration, no
    static column) and JSON values; the per-event path applies the others. Off: the
    per-event path applies every table (the same result, slower).
    """

    workers: PositiveInt = 2
    batch_max_events: PositiveInt = 5000
    batch_max_bytes: Size = 8 * 2**20
    batch_max_wait: Duration = timedelta(milliseconds=200)
    tombstone_retention: Duration = timedelta(days=7)
    ttl_sweep_interval: Duration = timedelta(seconds=60)
    schema_check_interval: Duration = timedelta(seconds=60)
    poll_timeout: Duration = timedelta(milliseconds=100)
    read_back: bool = True
    kafka_group_commit: bool = True
    columnar: bool = True


class SnapshotConfig(_Section):
    """``snapshot``: the initial copy, split by token range (``splits: null`` = from size)."""

    split_size_mb: PositiveInt = 64
    splits: PositiveInt | None = None
    consistency: Consistency = "LOCAL_QUORUM"
    page_size: PositiveInt = 5000
    max_retries: Annotated[int, Field(ge=0)] = 5
    # Ray CPUs reserved per read/write task. Tasks mostly wait on Cassandra and PostgreSQL,
    # so a fraction of a CPU lets more run at once than there are cores.
    task_cpus: Annotated[float, Field(gt=0, le=16)] = 0.5


class ReconcileConfig(_Section):
    """``reconcile``: digest comparison of source and target; ``repair`` rewrites differences.

    ``digest_rows``: rows per digested sub-range (smaller: less re-read around a difference,
    more digests). ``recheck_delay``/``recheck_rounds``: how long and how often a difference
    is read again: one still changing at the last round is unsettled, one unchanged is drift
    whatever its write time says (set the delay above the sync lag: a write sync has not
    delivered within the rounds is reported as drift). ``consistency``: reads and repairs
    (default: ``snapshot.consistency``).
    ``max_diffs``: differences kept in detail per token range (all are counted).
    """

    splits: PositiveInt | None = None
    digest_rows: PositiveInt = 64
    recheck_delay: NonNegativeDuration = timedelta(seconds=5)
    recheck_rounds: Annotated[int, Field(ge=1, le=100)] = 3
    consistency: Consistency | None = None
    max_diffs: PositiveInt = 100_000
    repair: bool = False


class CaptureConfig(_Section):
    """``capture``: the end-to-end capture heartbeat (``engine.capture``).

    While sync runs, its supervisor writes one heartbeat row per Cassandra node every
    ``heartbeat_interval`` into ``<heartbeat_keyspace>.heartbeat`` (created by c2pg, CDC on,
    one replica, each node's row keyed onto that node), and the sync workers record each
    one's arrival from Kafka. A node whose heartbeat written more than ``stall_after`` ago
    has not arrived is *stalled*: its connector is not delivering changes, whatever its own
    health says. ``/readyz`` and ``c2pg health`` then fail naming the node.

    ``heal_after_stall``: when a stalled node's heartbeats arrive again, reconcile every
    table of the pipeline with repair (the writes made during the stall may never arrive).
    ``connector_log`` / ``connector_health_url``: where to read the connector's cause when
    capture stalls (its log file, where c2pg can read it — relative to the pipeline file —
    and its ``/health``), shown with it. The log also tells which tables the running
    connector has loaded, so tables it never learnt of are named.
    """

    heartbeat: bool = True
    heartbeat_keyspace: Identifier = "c2pg"
    heartbeat_interval: Duration = timedelta(seconds=5)
    stall_after: Duration = timedelta(seconds=30)
    heal_after_stall: bool = False
    connector_log: NonEmptyStr | None = None
    connector_health_url: HttpUrl | None = None


class ApiConfig(_Section):
    """``api``: the Serve control plane (``serve_app``).

    Every ``/v1`` request needs ``Authorization: Bearer <token>``; the app refuses to start
    without ``token``. ``rate_limit_per_minute`` is per client address and per replica.
    Health results are reused for ``health_cache`` and the sync status for ``status_cache``
    (0s: never), so a burst of probes or page refreshes costs one round trip per peer.
    ``check_timeout`` bounds each component check of ``/readyz``. ``sync_required`` makes a
    missing or failing sync supervisor turn ``/readyz`` 503 (otherwise it is only reported).
    """

    token: Secret | None = None
    rate_limit_per_minute: PositiveInt = 600
    health_cache: NonNegativeDuration = timedelta(seconds=1)
    status_cache: NonNegativeDuration = timedelta(seconds=1)
    check_timeout: Duration = timedelta(seconds=2)
    sync_required: bool = False


class PipelineConfig(_Section):
    """The whole pipeline, as :func:`load_config` returns it: frozen, picklable, secrets inside.

    Constructed directly (tests), it runs the field rules only; call :meth:`problems` for the
    cross-field checks, as :func:`load_config` does.
    """

    pipeline: PipelineSection
    cassandra: CassandraConfig
    kafka: KafkaConfig
    schema_registry: SchemaRegistryConfig = SchemaRegistryConfig()
    postgres: PostgresConfig
    vault: VaultConfig | None = None
    tables: Annotated[tuple[TableConfig, ...], Field(min_length=1)]
    sync: SyncConfig = SyncConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    reconcile: ReconcileConfig = ReconcileConfig()
    capture: CaptureConfig = CaptureConfig()
    api: ApiConfig = ApiConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_target_schema(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("tables"), list):
            return data
        pg = data.get("postgres")
        schema = pg.get("schema", "public") if isinstance(pg, dict) else "public"
        tables = [{**t, "target_schema": schema}
                  if isinstance(t, dict) and t.get("target_schema") is None else t
                  for t in data["tables"]]
        return {**data, "tables": tables}

    @property
    def name(self) -> str:
        return self.pipeline.name

    def secrets(self) -> Iterator[tuple[str, Secret]]:
        """Every secret setting that is set, as ``(dotted setting name, Secret)``."""
        return _walk_sections(self.sections())

    def sections(self) -> dict[str, Any]:
        """``{section name: value}`` for every top-level section (``tables`` a tuple)."""
        return {name: getattr(self, name) for name in type(self).model_fields}

    def problems(self) -> list[str]:
        """The cross-field checks, each problem naming a setting; empty if all hold."""
        return _cross_checks(self.sections())

    def masked_yaml(self) -> str:
        """The effective config as YAML, every secret as ``<ref> (resolved: ****)``; for logs."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False,
                              default_flow_style=False, allow_unicode=True)


# --- cross-field checks -----------------------------------------------------------------
#
# Each check reads only the sections it names in _CHECKS and runs when those sections are
# valid, so a file with a broken ``postgres`` section still gets its Kafka checks: all
# problems are reported in one round. ``sections`` maps a top-level name to its validated
# value (``vault`` maps to None when absent); a section that failed validation is missing.


def _check_cassandra(cassandra: CassandraConfig) -> Iterator[str]:
    if cassandra.username is not None and cassandra.password is None:
        yield "cassandra.password: required when cassandra.username is set"
    if cassandra.password is not None and cassandra.username is None:
        yield "cassandra.username: required when cassandra.password is set"
    ssl = cassandra.ssl
    if ssl is not None:
        if (ssl.cert_file is None) != (ssl.key_file is None):
            missing, given = ("key_file", "cert_file") if ssl.key_file is None else ("cert_file", "key_file")
            yield f"cassandra.ssl.{missing}: required with cassandra.ssl.{given}"
        if ssl.key_password is not None and ssl.key_file is None:
            yield "cassandra.ssl.key_password: only used with cassandra.ssl.key_file"
    yield from _check_read_consistency("cassandra.consistency", cassandra.consistency)


def _check_snapshot(snapshot: SnapshotConfig) -> Iterator[str]:
    yield from _check_read_consistency("snapshot.consistency", snapshot.consistency)


def _check_read_consistency(setting: str, level: str) -> Iterator[str]:
    if level == "ANY":
        yield f"{setting}: ANY is a write-only consistency level; c2pg reads from Cassandra"


def _check_kafka(kafka: KafkaConfig, schema_registry: SchemaRegistryConfig) -> Iterator[str]:
    sasl_settings = {"sasl_mechanism": kafka.sasl_mechanism, "sasl_username": kafka.sasl_username,
                     "sasl_password": kafka.sasl_password}
    protocol = kafka.security_protocol
    for name, value in sasl_settings.items():
        if protocol.startswith("SASL_") and value is None:
            yield f"kafka.{name}: required when kafka.security_protocol is {protocol}"
        if not protocol.startswith("SASL_") and value is not None:
            yield f"kafka.{name}: only used with a SASL_* security_protocol (it is {protocol})"
    if kafka.value_format == "avro" and schema_registry.url is None:
        yield "schema_registry.url: required when kafka.value_format is avro"
    yield from _kafka_property_problems(kafka.properties)
    if not protocol.endswith("SSL"):
        for key in kafka.properties:
            if key.startswith("ssl.") or key == "enable.ssl.certificate.verification":
                yield f"kafka.properties.{key}: only used with an SSL security_protocol (it is {protocol})"
        if kafka.ssl_ca_location is not None:
            yield f"kafka.ssl_ca_location: only used with an SSL security_protocol (it is {protocol})"


def _check_postgres(postgres: PostgresConfig) -> Iterator[str]:
    if (postgres.sslcert is None) != (postgres.sslkey is None):
        missing, given = ("sslkey", "sslcert") if postgres.sslkey is None else ("sslcert", "sslkey")
        yield f"postgres.{missing}: required with postgres.{given}"
    if postgres.sslpassword is not None and postgres.sslkey is None:
        yield "postgres.sslpassword: only used with postgres.sslkey"
    if postgres.sslmode in ("verify-ca", "verify-full") and postgres.sslrootcert is None:
        # libpq would look in ~/.postgresql/root.crt: a file of whoever runs the worker.
        yield f"postgres.sslrootcert: required when postgres.sslmode is {postgres.sslmode}"
    if postgres.sslmode == "disable":
        for name in ("sslrootcert", "sslcert", "sslkey"):
            if getattr(postgres, name) is not None:
                yield f"postgres.{name}: not used when postgres.sslmode is disable"


def _check_registry(schema_registry: SchemaRegistryConfig) -> Iterator[str]:
    r = schema_registry
    if r.username is not None and r.password is None:
        yield "schema_registry.password: required when schema_registry.username is set"
    if r.password is not None and r.username is None:
        yield "schema_registry.username: required when schema_registry.password is set"
    if r.url is None and r.username is not None:
        yield "schema_registry.url: required when schema_registry.username is set"


def _check_vault(vault: VaultConfig | None) -> Iterator[str]:
    if vault is None:
        return
    for name in vault.credential_fields():
        secret = getattr(vault, name)
        if secret is None:
            yield f"vault.{name}: required when vault.auth is {vault.auth}"
        elif secret.ref.kind == "vault":
            yield f"vault.{name}: Vault credentials cannot come from Vault; use env:NAME or file:PATH"


def _check_vault_refs(sections: Mapping[str, Any]) -> Iterator[str]:
    if "vault" in sections and sections["vault"] is None:
        for setting, secret in _walk_sections(sections):
            if secret.ref.kind == "vault":
                yield f"{setting}: refers to Vault but there is no vault section"


def _check_tables(tables: tuple[TableConfig, ...]) -> Iterator[str]:
    sources: dict[tuple[str, str], int] = {}
    targets: dict[tuple[str, str], int] = {}
    for i, t in enumerate(tables):
        first = sources.setdefault((t.keyspace, t.table), i)
        if first != i:
            yield f"tables[{i}]: {t.keyspace}.{t.table} is already listed as tables[{first}]"
            continue
        target = (t.target_schema or "", t.target_table or t.table)  # schema filled in on load
        first = targets.setdefault(target, i)
        if first != i:
            yield (f"tables[{i}].target_table: {target[0]}.{target[1]} is already the target "
                   f"of tables[{first}]")
        for name in ("target_schema", "target_table"):
            value = getattr(t, name)
            # PostgreSQL silently truncates longer names, which would merge two tables.
            if value is not None and len(value.encode()) > 63:
                yield f"tables[{i}].{name}: longer than PostgreSQL's 63-byte identifier limit"


def _check_capture(capture: CaptureConfig, tables: tuple[TableConfig, ...]) -> Iterator[str]:
    if capture.stall_after <= capture.heartbeat_interval:
        yield (f"capture.stall_after: must be longer than capture.heartbeat_interval "
               f"({format_duration(capture.heartbeat_interval)}), or every pause between two "
               "heartbeats is a stall")
    for t in tables:
        if capture.heartbeat and t.keyspace == capture.heartbeat_keyspace:
            yield (f"tables: {t.keyspace}.{t.table} is in capture.heartbeat_keyspace "
                   f"{capture.heartbeat_keyspace!r}, which c2pg owns; use another keyspace or set "
                   "capture.heartbeat_keyspace")


_CHECKS: tuple[tuple[Any, tuple[str, ...]], ...] = (
    (_check_capture, ("capture", "tables")),
    (_check_cassandra, ("cassandra",)),
    (_check_snapshot, ("snapshot",)),
    (_check_kafka, ("kafka", "schema_registry")),
    (_check_postgres, ("postgres",)),
    (_check_registry, ("schema_registry",)),
    (_check_vault, ("vault",)),
    (_check_tables, ("tables",)),
)


def _cross_checks(sections: Mapping[str, Any]) -> list[str]:
    problems = list(_check_vault_refs(sections))
    for check, names in _CHECKS:
        if all(n in sections for n in names):
            problems.extend(check(*(sections[n] for n in names)))
    return problems


# --- walking the model --------------------------------------------------------------------


def _walk_sections(sections: Mapping[str, Any]) -> Iterator[tuple[str, Secret]]:
    for name, value in sections.items():
        yield from _walk_value(value, name)


def _walk_value(value: Any, path: str) -> Iterator[tuple[str, Secret]]:
    if isinstance(value, Secret):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk_value(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, tuple):
        for i, item in enumerate(value):
            yield from _walk_value(item, f"{path}[{i}]")
    elif isinstance(value, dict):  # kafka.properties
        for key, item in value.items():
            yield from _walk_value(item, f"{path}.{key}")


def _with_secrets(model: BaseModel, resolved: Mapping[str, Secret], prefix: str = "") -> Any:
    """A copy of ``model`` with the secrets at the dotted paths in ``resolved`` replaced.

    Sections hold no secrets inside lists (``tables``), so only nested sections are followed.
    """
    update: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if path in resolved:
            update[name] = resolved[path]
        elif isinstance(value, dict) and any(f"{path}.{k}" in resolved for k in value):
            update[name] = {k: resolved.get(f"{path}.{k}", v) for k, v in value.items()}
        elif isinstance(value, BaseModel):
            copy = _with_secrets(value, resolved, f"{path}.")
            if copy is not value:
                update[name] = copy
    return model.model_copy(update=update) if update else model


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section class behind ``X`` or ``X | None``; ``None`` for a plain setting."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if _section_model(a) is not None]
        return models[0] if models else None
    return None


def _fields_at(path: tuple[str | int, ...]) -> list[str]:
    """The setting names of the section at ``path`` (for "did you mean"); [] if unknown."""
    cls: type[BaseModel] | None = PipelineConfig
    for part in path:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part) if cls else None
        if field is None:
            return []
        annotation = field.annotation
        if part == "tables":
            annotation = TableConfig
        cls = _section_model(annotation)
    return list(cls.model_fields) if cls else []


# --- step 1: YAML -------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys (PyYAML keeps the last one silently)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, typing.Hashable) and key in seen:
                self.duplicates.append(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The file's top-level mapping and its duplicate-key problems.

    Raises :class:`ConfigError` at once when the file cannot be read or parsed, or is not
    a mapping: nothing else can be checked then.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read the pipeline file: {exc}"]) from exc
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        raise ConfigError([f"{path}: {where}: YAML syntax error: {exc.problem or exc.context}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: YAML syntax error: {exc}"]) from exc
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the pipeline file must be a YAML mapping of sections"])
    return data, [f"{path}: {d}" for d in loader.duplicates]


# --- step 2: environment overrides ------------------------------------------------------


_UNSET: Any = object()  # the value of an empty override: remove the setting, use the default


@dataclass(frozen=True, slots=True)
class EnvOverride:
    """One ``C2PG__A__B=value`` variable: the setting path (lower case) and the parsed value."""

    variable: str
    path: tuple[str, ...]
    value: Any

    @property
    def setting(self) -> str:
        return ".".join(self.path)


def parse_env_overrides(env: Mapping[str, str]) -> tuple[list[EnvOverride], list[str]]:
    """The ``C2PG__...`` variables of ``env`` that name a setting, and problems for the rest.

    Path parts are case-insensitive; the value is parsed as YAML (``5``, ``true``,
    ``[a, b]``), falling back to the raw string when it is not valid YAML. An empty value
    unsets the setting, so its default applies (``null`` sets it to null). Only settings can be
    overridden, not whole sections, and nothing under the top-level ``tables`` list.
    """
    overrides, problems = [], []
    for variable in sorted(env):
        if not variable.startswith(ENV_PREFIX):
            continue
        path = tuple(part.lower() for part in variable[len(ENV_PREFIX):].split("__"))
        problem = _override_problem(path)
        if problem:
            problems.append(f"{variable}: {problem}")
        else:
            overrides.append(EnvOverride(variable, path, _parse_env_value(env[variable])))
    return overrides, problems


def _parse_env_value(text: str) -> Any:
    if text == "":
        return _UNSET
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _override_problem(path: tuple[str, ...]) -> str | None:
    """Why ``path`` cannot be overridden, or ``None`` if it names a setting."""
    if not all(path):
        return "empty part in the setting path (use exactly two underscores between parts)"
    if path[0] == "tables":
        return "the tables list cannot be overridden from the environment; edit the file"
    cls: type[BaseModel] = PipelineConfig
    for depth, part in enumerate(path):
        field = cls.model_fields.get(part)
        dotted = ".".join(path[:depth + 1])
        if field is None:
            return f"{dotted} is not a setting{_did_you_mean(part, list(cls.model_fields))}"
        section = _section_model(field.annotation)
        last = depth == len(path) - 1
        if last and section is not None:
            return f"{dotted} is a section; override its settings one by one"
        if not last and section is None:
            return f"{dotted} is a setting, not a section"
        if section is not None:
            cls = section
    return None


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def apply_env_overrides(data: dict[str, Any], overrides: list[EnvOverride]
                        ) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``data`` with the overrides applied (sections created as needed)."""
    result = _copy_mappings(data)
    problems = []
    for o in overrides:
        node = result
        for depth, part in enumerate(o.path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(f"{o.variable}: cannot set {o.setting}: "
                                f"{'.'.join(o.path[:depth + 1])} is not a mapping in the file")
                break
            node = child
        else:
            if o.value is _UNSET:
                node.pop(o.path[-1], None)
            else:
                node[o.path[-1]] = o.value
    return result, problems


def _copy_mappings(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy_mappings(v) if isinstance(v, dict) else v for k, v in data.items()}


# --- step 3: validation -----------------------------------------------------------------


def _validate(data: dict[str, Any], overrides: list[EnvOverride]
              ) -> tuple[PipelineConfig | None, dict[str, Any], list[str]]:
    """The model (or ``None``), its valid sections, and the field-rule problems.

    When the whole does not validate, each top-level section is validated on its own so
    the cross-field checks and secret resolution can still run on the valid ones.
    """
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        origin = {o.path: o.variable for o in overrides}
        return None, _valid_sections(data), [_format_error(err, origin) for err in exc.errors()]
    return cfg, cfg.sections(), []


def _valid_sections(data: dict[str, Any]) -> dict[str, Any]:
    data = PipelineConfig._default_target_schema(data)  # type: ignore[operator]  # the validator's function
    sections: dict[str, Any] = {}
    for name, field in PipelineConfig.model_fields.items():
        if name not in data and field.is_required():
            continue
        try:
            sections[name] = (_adapter(name).validate_python(data[name]) if name in data
                              else field.get_default(call_default_factory=True))
        except ValidationError:
            continue  # reported by the validation of the whole
    return sections


@functools.cache
def _adapter(section: str) -> TypeAdapter[Any]:
    annotation = PipelineConfig.model_fields[section].annotation
    assert annotation is not None
    return TypeAdapter(annotation)


def _format_error(err: Mapping[str, Any], origin: Mapping[tuple[str, ...], str]) -> str:
    """``"<dotted.path>: <message>"``, naming the ``C2PG__`` variable when one set the value."""
    loc: tuple[str | int, ...] = tuple(err["loc"])
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        name = str(loc[-1])
        message = f"unknown setting{_did_you_mean(name, _fields_at(loc[:-1]))}"
    elif err["type"] == "missing":
        message = "required setting is missing"
    names = tuple(p for p in loc if isinstance(p, str))
    variable = origin.get(names)
    if variable:
        message += f" (set by {variable})"
    return f"{path or '(top level)'}: {message}"


# --- step 4: secrets ------------------------------------------------------------------------


def _resolve_secrets(sections: Mapping[str, Any], resolver: SecretResolver
                     ) -> tuple[dict[str, Secret], list[str]]:
    """Every resolvable secret of ``sections`` by setting name, and one problem per failure.

    Vault credentials are resolved first (from env/file); if Vault cannot be used (bad
    section, unreachable, login refused), that is one problem and the ``vault:`` secrets are
    left unresolved rather than each reported again. Vault credentials the chosen ``auth``
    does not use are not resolved.
    """
    resolved: dict[str, Secret] = {}
    problems: list[str] = []
    vault_ok = _connect_vault(sections.get("vault"), resolver, resolved, problems)
    for setting, secret in _walk_sections(sections):
        if setting.startswith("vault."):
            continue
        if secret.ref.kind == "vault" and not vault_ok:
            continue
        try:
            resolved[setting] = secret.with_value(resolver.resolve(secret.ref))
        except SecretError as exc:
            problems.append(f"{setting}: {exc}")
    return resolved, problems


def _connect_vault(vault: VaultConfig | None, resolver: SecretResolver,
                   resolved: dict[str, Secret], problems: list[str]) -> bool:
    """Resolve the Vault credentials into ``resolved`` and log in; ``True`` if Vault is usable."""
    if vault is None:
        return False
    values: dict[str, str] = {}
    for name in vault.credential_fields():
        secret = getattr(vault, name)
        if secret is None or secret.ref.kind == "vault":
            return False  # already a problem from the cross-field checks
        try:
            values[name] = resolver.resolve(secret.ref)
        except SecretError as exc:
            problems.append(f"vault.{name}: {exc}")
            continue
        resolved[f"vault.{name}"] = secret.with_value(values[name])
    if len(values) < len(vault.credential_fields()):
        return False
    settings = VaultSettings(url=vault.url, auth=vault.auth, mount=vault.mount,
                             timeout_s=vault.timeout.total_seconds(), **values)
    try:
        resolver.connect_vault(settings)
    except VaultLoginError as exc:
        problems.append(f"{exc.setting}: {exc}")
        return False
    return True


# --- step 5: TLS files -------------------------------------------------------------------


def _tls_files(cfg: PipelineConfig) -> list[tuple[str, str, bool]]:
    """Every TLS file the config names: ``(setting, path, is a private key)``."""
    files: list[tuple[str, str, bool]] = []
    ssl = cfg.cassandra.ssl
    if ssl is not None:
        files += [(f"cassandra.ssl.{n}", getattr(ssl, n), n == "key_file")
                  for n in ("ca_file", "cert_file", "key_file") if getattr(ssl, n)]
    if cfg.kafka.ssl_ca_location:
        files.append(("kafka.ssl_ca_location", cfg.kafka.ssl_ca_location, False))
    files += [(f"kafka.properties.{k}", v, k == "ssl.key.location")
              for k, v in cfg.kafka.properties.items() if k in KAFKA_FILE_PROPERTIES]
    files += [(f"postgres.{n}", getattr(cfg.postgres, n), n == "sslkey")
              for n in ("sslrootcert", "sslcert", "sslkey") if getattr(cfg.postgres, n)]
    return files


def _absolute_tls_files(cfg: PipelineConfig, base: Path) -> PipelineConfig:
    """``cfg`` with relative TLS paths anchored at the pipeline file's directory (like
    ``file:`` secrets), so that Ray workers, whose working directory differs, open the
    same files."""
    def fix(value: str) -> str:
        return value if os.path.isabs(value) else str(base / value)

    ssl = cfg.cassandra.ssl
    if ssl is not None:
        ssl = ssl.model_copy(update={n: fix(getattr(ssl, n)) for n in ("ca_file", "cert_file", "key_file")
                                     if getattr(ssl, n)})
    kafka_update: dict[str, Any] = {"properties": {k: fix(v) if k in KAFKA_FILE_PROPERTIES else v
                                                   for k, v in cfg.kafka.properties.items()}}
    if cfg.kafka.ssl_ca_location:
        kafka_update["ssl_ca_location"] = fix(cfg.kafka.ssl_ca_location)
    pg = cfg.postgres.model_copy(update={n: fix(getattr(cfg.postgres, n))
                                         for n in ("sslrootcert", "sslcert", "sslkey") if getattr(cfg.postgres, n)})
    return cfg.model_copy(update={"cassandra": cfg.cassandra.model_copy(update={"ssl": ssl}),
                                  "kafka": cfg.kafka.model_copy(update=kafka_update), "postgres": pg})


def _file_problem(path: Path, private_key: bool) -> str | None:
    """Why ``path`` cannot serve as a TLS file here, or ``None``."""
    try:
        mode = path.stat().st_mode
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        return f"no such file: {path}"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if private_key and mode & 0o077:
        # libpq refuses such a key outright; for the other clients it is a leak all the same.
        return f"{path} is readable by group or others (mode {mode & 0o777:o}); chmod 600 it"
    return None


# --- the entry point ----------------------------------------------------------------------


def load_config(path: Path | str, *, env: Mapping[str, str] | None = None,
                resolve_secrets: bool = True) -> PipelineConfig:
    """Read, override, validate and (by default) resolve the secrets of a pipeline file.

    ``env`` supplies both the ``C2PG__...`` overrides and ``env:NAME`` secrets
    (``os.environ`` if ``None``). With ``resolve_secrets=False`` nothing is read from
    Vault, the environment or secret files, and every secret stays unresolved
    (``Secret.get()`` raises); ``c2pg config check --no-secrets`` uses that.

    Raises :class:`ConfigError` listing every problem found; returns a frozen, picklable
    :class:`PipelineConfig` otherwise.
    """
    path = Path(path)
    environ = os.environ if env is None else env
    data, problems = _read_yaml(path)
    overrides, override_problems = parse_env_overrides(environ)
    data, apply_problems = apply_env_overrides(data, overrides)
    cfg, sections, validation_problems = _validate(data, overrides)
    problems += override_problems + apply_problems + validation_problems
    problems += _cross_checks(sections)
    if resolve_secrets:
        with SecretResolver(base_dir=path.resolve().parent, env=environ) as resolver:
            resolved, secret_problems = _resolve_secrets(sections, resolver)
        problems += secret_problems
        if cfg is not None:
            cfg = _with_secrets(cfg, resolved)
    if problems:
        raise ConfigError(problems)
    assert cfg is not None  # no problems means validation produced a model
    cfg = _absolute_tls_files(cfg, path.resolve().parent)
    if resolve_secrets:
        tls_problems = [f"{setting}: {p}" for setting, file, key in _tls_files(cfg)
                        if (p := _file_problem(Path(file), key))]
        if tls_problems:
            raise ConfigError(tls_problems)
    log_path = cfg.capture.connector_log
    if log_path and not os.path.isabs(log_path):  # like file: secrets, relative to the file
        capture = cfg.capture.model_copy(update={"connector_log": str(path.resolve().parent / log_path)})
        cfg = cfg.model_copy(update={"capture": capture})
    return cfg
