"""Cassandra sessions built from the pipeline's ``cassandra`` settings.

Every c2pg process that reads Cassandra (snapshot read tasks, reconcile, the demo, health
checks) opens its session here, where the work runs: settings travel to Ray workers, live
sessions never do. Reads go to the configured data center only, token-aware, so a token
range read lands on a replica.
"""

from __future__ import annotations

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

from engine.config import CassandraConfig


def consistency_level(name: str) -> int:
    """``"LOCAL_QUORUM"`` → the driver's constant (names are validated by the config)."""
    return getattr(ConsistencyLevel, name)


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
    auth = (PlainTextAuthProvider(cfg.username, cfg.password.get() if cfg.password else None)
            if cfg.username else None)
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=cfg.local_dc)),
        consistency_level=consistency_level(cfg.consistency),
        request_timeout=cfg.request_timeout.total_seconds(),
        **({"row_factory": row_factory} if row_factory else {}),
    )
    cluster = Cluster(list(cfg.contact_points), port=cfg.port, auth_provider=auth,
                      protocol_version=cfg.protocol_version,
                      schema_metadata_enabled=metadata, token_metadata_enabled=metadata,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    return cluster, cluster.connect(keyspace)
