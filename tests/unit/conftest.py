"""Fixtures of the unit tests (no server; see ``tests/conftest.py``)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _no_ray_left_running():
    """A unit test must not start Ray: asking Ray's runtime context outside a Ray process
    quietly starts a whole local instance (raylet, GCS, dashboard: seconds of CPU), which then
    stays connected, and the process's later integration tests fail to connect to the stack's
    Ray ("called ray.init twice"). Fails the test that did it, and stops that instance. (Ray
    connected before the test, by the session's ``ray_cluster``, is not the test's doing.)"""

    def connected() -> bool:
        ray = sys.modules.get("ray")
        return ray is not None and ray.is_initialized()

    before = connected()
    yield
    if not before and connected():
        ray = sys.modules["ray"]
        ray.shutdown()
        pytest.fail("this unit test started Ray (e.g. ray.get_runtime_context() outside Ray)")
