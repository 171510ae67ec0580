"""Fixtures shared by the integration modules (the session-wide ones are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def serve_instance(ray_cluster):
    """Ray Serve on the stack's head, shared by the ``test_serve_*`` modules: each module
    deploys and deletes its own application, and Serve itself (its controller and proxy
    actors, several seconds of start-up) starts once per session. At the session's end it is
    stopped if no application is left (another test process may still be using it)."""
    from tests.integration.serve_helpers import shutdown_serve

    yield
    shutdown_serve()
