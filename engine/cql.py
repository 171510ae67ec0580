"""Cassandra sessions built from the pipeline's ``cassandra`` settings.

Every c2pg process that reads Cassandra (snapshot read tasks, reconcile, the demo, health
checks) opens its session here, where the work runs: settings travel to Ray workers, live
sessions never do. Reads go to the configured data center only, token-aware, so a token
range read lands on a replica.

With ``cassandra.ssl`` set every connection is TLS: :func:`ssl_context` builds the context
where the session opens (an ``SSLContext`` cannot be pickled to a worker; the settings can).
A wrong CA or password surfaces as the driver's ``NoHostAvailable`` naming the host and the
TLS or authentication error (docs/troubleshooting.md, "TLS and authentication").
"""

from __future__ import annotations

import ssl

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy

from engine.config import CassandraConfig, CassandraSslConfig


RECONNECT_MAX_S = 2.0
"""The longest wait between a session's attempts to reach a node it lost (a node restart, a
network blip). The driver's default waits up to 10 minutes, and gives up for good after 64
attempts: a long-lived session (the sync supervisor's, a worker's, the control plane's) then
stayed blind to a Cassandra that had been back for minutes (``NoHostAvailable``). Here:
0.5 s doubling to 2 s, never giving up: an attempt is one connection try per lost node,
cheap enough every 2 s, and a node that is back is in use again within 2 s."""

IDLE_HEARTBEAT_S = 3.0
"""How often the driver checks a session's idle connections. A connection the node closed is
only noticed when used or checked; with the driver's 30 s an idle session's first query after
a node restart failed (``ConnectionShutdown ... is defunct``). Checked every 3 s (an
``OPTIONS`` request per idle connection), the node is
marked down during the outage and reconnected by the schedule above: an idle session works
again at most ``IDLE_HEARTBEAT_S + RECONNECT_MAX_S`` after the node is back
(``RECOVERY_BOUND_S``)."""

RECOVERY_BOUND_S = IDLE_HEARTBEAT_S + RECONNECT_MAX_S


def reconnection_policy() -> ExponentialReconnectionPolicy:
    """The driver's reconnection schedule for every c2pg session (see ``RECONNECT_MAX_S``)."""
    return ExponentialReconnectionPolicy(0.5, RECONNECT_MAX_S, max_attempts=None)


def consistency_level(name: str) -> int:
    """``"LOCAL_QUORUM"`` → the driver's constant (names are validated by the config)."""
    return getattr(ConsistencyLevel, name)


def ssl_context(cfg: CassandraSslConfig | None) -> ssl.SSLContext | None:
    """The client TLS context of ``cassandra.ssl`` (``None``: plain connections).

    TLS 1.2 or newer; the server's chain must lead to ``ca_file``; with ``verify_hostname``
    the driver passes the contact point as the name to check (the server certificate needs
    it as a DNS or IP subject alternative name).
    """
    if cfg is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = cfg.verify_hostname
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file,
                            password=cfg.key_password.get() if cfg.key_password else None)
    return ctx


def auth_provider(cfg: CassandraConfig) -> PlainTextAuthProvider | None:
    """The driver's username/password login (``None`` without ``cassandra.username``); the
    driver only uses it when the server asks for authentication."""
    if not cfg.username:
        return None
    return PlainTextAuthProvider(cfg.username, cfg.password.get() if cfg.password else None)


def connect(cfg: CassandraConfig, *, keyspace: str | None = None,
            row_factory=None, metadata: bool = True) -> tuple[Cluster, Session]:
    """A new cluster object and session; the caller owns both (``cluster.shutdown()``).

    ``row_factory`` (e.g. ``cassandra.query.tuple_factory`` for bulk reads, which skips
    building a named tuple per row) defaults to the driver's named tuples.
    ``metadata=False`` skips the driver's schema and token maps: a connect then costs one
    round trip instead of reading every keyspace's schema (which grows with the cluster's
    table count and costs the server CPU too). Split readers use it, as each Ray task opens
    its own session and routes by the replicas its split already names; anything that
    reads ``cluster.metadata`` keyspaces or plans by token needs the default.
    """
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=cfg.local_dc)),
        consistency_level=consistency_level(cfg.consistency),
        request_timeout=cfg.request_timeout.total_seconds(),
        **({"row_factory": row_factory} if row_factory else {}),
    )
    cluster = Cluster(list(cfg.contact_points), port=cfg.port, auth_provider=auth_provider(cfg),
                      ssl_context=ssl_context(cfg.ssl), protocol_version=cfg.protocol_version,
                      reconnection_policy=reconnection_policy(), idle_heartbeat_interval=IDLE_HEARTBEAT_S,
                      schema_metadata_enabled=metadata, token_metadata_enabled=metadata,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    return cluster, cluster.connect(keyspace)
