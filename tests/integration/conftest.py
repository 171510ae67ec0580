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

from tests.run_locks import once_per_run

# Keyspace → whether it is dropped first: the modules that dropped theirs at their start
# (each starts from an empty keyspace) still do; the others only create theirs if missing,
# as they did (their tables have names of their own per run).
CDC_KEYSPACES = {
    "c2pg_capture_test": True,
    "c2pg_capture_heal_test": True,
    "c2pg_element_ttl": True,
    "c2pg_ray_nodes_test": True,
    "c2pg_reconcile_test": False,
    "c2pg_replay_exact": True,
    "c2pg_serve_test": False,
    "c2pg_sync_cli_test": False,
    "c2pg_state_test": True,
    "c2pg_sync_test": True,
    "c2pg_ttl_replay": True,
    "tls_ks": False,
}


@pytest.fixture(scope="session")
def cdc_keyspaces(stack, pipeline) -> tuple[str, ...]:
    """The names of :data:`CDC_KEYSPACES`, each past the connector's schema-refresh window
    (and empty where dropped). A module asserts its keyspace is among them (a new module
    adds its own here)."""
    from engine import cql

    with once_per_run("cdc-keyspaces") as first:  # not dropped under another test process's feet
        if first:
            cluster, session = cql.connect(pipeline.cassandra)
            try:
                for ks, drop in CDC_KEYSPACES.items():
                    if drop:
                        session.execute(f"DROP KEYSPACE IF EXISTS {ks}")
                    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = "
                                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
            finally:
                cluster.shutdown()
            time.sleep(2)  # the connector misses tables created in their keyspace's refresh window
    return tuple(CDC_KEYSPACES)


@pytest.fixture(scope="module")
def cql_session(stack, pipeline):
    """A Cassandra session of the module's own (closed after it), with c2pg's reconnection
    settings: a module's ``cass`` fixture returns it after its own checks."""
    from engine import cql

    cluster, session = cql.connect(pipeline.cassandra)
    yield session
    cluster.shutdown()


@pytest.fixture(scope="session")
def serve_instance(ray_cluster):
    """Ray Serve (controller and HTTP proxy on 127.0.0.1), started once for the modules marked
    ``serve`` and stopped after the last of them (if no other process's application is left).

    Those modules run one after the other in one process (``tests/conftest.py`` orders them),
    so one Serve instance serves them all instead of one started and stopped per module
    (several seconds each); it is stopped after the last of them, so no module of another
    kind runs beside an idle Serve."""
    from ray import serve

    from tests.integration import serve_helpers
    from tests.integration.serve_helpers import free_port, shutdown_serve

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})  # joins a running Serve as it is
    serve_helpers.serve_running = True
    yield
    shutdown_serve()
