"""Fixtures of the integration tests (the real local stack; see ``tests/conftest.py``).

``cdc_keyspaces`` makes, once per session, the keyspaces in which modules create tables
the Debezium connector must capture. A table created within about a second of its keyspace
is never captured (the connector's schema refresh misses it, docs/local-stack.md), so each
module used to wait 2 s after making its keyspace; made together at the session's start,
the keyspaces are long settled when a module creates its first table, and the wait is paid
once.
"""

from __future__ import annotations

import time

import pytest

# Dropped and created again at the start of every session that uses one of them: each
# module starts from an empty keyspace, as it did when it made its own.
CDC_KEYSPACES = (
    "c2pg_capture_test",
    "c2pg_capture_heal_test",
    "c2pg_element_ttl",
    "c2pg_reconcile_test",
    "c2pg_replay_exact",
    "c2pg_serve_test",
    "c2pg_sync_cli_test",
    "c2pg_sync_test",
    "c2pg_ttl_replay",
)


@pytest.fixture(scope="session")
def cdc_keyspaces(stack, pipeline) -> tuple[str, ...]:
    """The names of :data:`CDC_KEYSPACES`, each empty and past the connector's schema-refresh
    window. A module asserts its keyspace is among them (a new module adds its own here)."""
    from engine import cql

    cluster, session = cql.connect(pipeline.cassandra)
    try:
        for ks in CDC_KEYSPACES:
            session.execute(f"DROP KEYSPACE IF EXISTS {ks}")
            session.execute(f"CREATE KEYSPACE {ks} WITH replication = "
                            "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    finally:
        cluster.shutdown()
    time.sleep(2)  # the connector misses tables created in their keyspace's refresh window
    return CDC_KEYSPACES
