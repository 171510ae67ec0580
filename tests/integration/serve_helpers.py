"""Running the control plane for the integration tests: a pipeline file of the test's own,
the Serve app on the stack's Ray head (127.0.0.1, port 8000 or a free one), a small client.

Used by ``tests/integration/test_serve_*.py``. A Ray cluster has one Serve instance, and
several test processes (developers sharing the stack) may use it at once, so each app gets
its own name and route prefix (``/c2pg-test-<hex>``) and is deleted after its tests.
Serve itself (controller and proxy) is started once, by the ``serve_instance`` fixture of
``tests/integration/conftest.py`` that every module marked ``serve`` requests; those modules
run together, in one process (``tests/conftest.py``), and :func:`shutdown_serve` stops Serve
after the last of them if no application is left; the Ray cluster stays up.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from tests.conftest import EXAMPLE_PIPELINE, ROOT

KS = "c2pg_serve_test"
TARGET_SCHEMA = "serve_test"


def free_port(preferred: int = 8000) -> int:
    """``C2PG_TEST_SERVE_PORT``, else ``preferred`` if nothing listens there, else any free one."""
    if os.environ.get("C2PG_TEST_SERVE_PORT"):
        return int(os.environ["C2PG_TEST_SERVE_PORT"])
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pipeline_file(directory: Path, name: str, tables: list[str], **sections) -> Path:
    """The example pipeline renamed ``name`` with ``tables`` (in :data:`KS`, target schema
    :data:`TARGET_SCHEMA`); secret files by absolute path; ``sections`` merged on top."""
    doc = yaml.safe_load(EXAMPLE_PIPELINE.read_text())
    doc["pipeline"]["name"] = name
    doc["tables"] = [{"keyspace": KS, "table": t, "target_schema": TARGET_SCHEMA} for t in tables]
    secrets = ROOT / ".stack" / "secrets"
    doc["vault"]["role_id"] = f"file:{secrets / 'vault-role-id'}"
    doc["capture"]["connector_log"] = str(secrets.parent / "logs" / "debezium.log")
    doc["vault"]["secret_id"] = f"file:{secrets / 'vault-secret-id'}"
    for section, values in sections.items():
        doc.setdefault(section, {}).update(values)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass
class Api:
    """A JSON client of one deployed app: ``origin`` (http://127.0.0.1:PORT) + ``prefix``."""

    origin: str
    prefix: str
    token: str

    @property
    def base(self) -> str:
        return self.origin + self.prefix

    def url(self, path: str) -> str:
        """``path`` under the app (``/v1/runs``), or a link the app returned (it carries the prefix)."""
        if self.prefix and path.startswith(self.prefix + "/"):
            return self.origin + path
        return self.base + path

    def call(self, method: str, path: str, *, auth: bool = True, **kwargs) -> requests.Response:
        headers = {**({"Authorization": f"Bearer {self.token}"} if auth else {}), **kwargs.pop("headers", {})}
        return requests.request(method, self.url(path), headers=headers, timeout=60, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.call("POST", path, **kwargs)

    def wait(self, path: str, done, timeout_s: float = 120, interval_s: float = 0.25) -> dict:
        """GET ``path`` until ``done(json)``; the last answer is returned (or the test fails)."""
        deadline = time.monotonic() + timeout_s
        while True:
            r = self.get(path)
            body = r.json()
            if r.status_code == 200 and done(body):
                return body
            assert time.monotonic() < deadline, f"{path} not done after {timeout_s}s: {r.status_code} {body}"
            time.sleep(interval_s)


@contextlib.contextmanager
def serve_app_running(config: Path, *, env: dict[str, str] | None = None) -> Iterator[Api]:
    """Deploy :class:`serve_app.app.ControlPlane` on ``config`` as an application of its own
    (name and route prefix ``c2pg-test-<hex>``) and wait for its ``/healthz``; delete it
    after. Starts Serve on 127.0.0.1 (:func:`free_port`) unless it runs already."""
    from ray import serve

    from engine.config import load_config
    from serve_app.app import ControlPlane

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})  # joins a running Serve as it is
    name = f"c2pg-test-{uuid.uuid4().hex[:8]}"
    serve.run(ControlPlane.bind(str(config), env or {}), name=name, route_prefix=f"/{name}", blocking=False)
    api = Api(f"http://127.0.0.1:{_serve_port()}", f"/{name}",
              load_config(config, env={**os.environ, **(env or {})}).api.token.get())
    wait_healthz(api, name)
    try:
        yield api
    finally:
        serve.delete(name)


def wait_healthz(api: Api, name: str, timeout_s: float = 120) -> None:
    """Until the deployed app ``name`` answers ``/healthz`` with 200; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(api.url("/healthz"), timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"the control plane {name} did not come up in {timeout_s:.0f} s"
        time.sleep(0.2)


def _serve_port() -> int:
    """The HTTP port of the running Serve instance (it may have been started by another call)."""
    from ray.serve.context import _get_global_client

    return _get_global_client().http_config.port


serve_running = False  # this process started Serve (``serve_instance``) and has not stopped it


def shutdown_serve() -> None:
    """Stop Serve if no application is left (another test process may still use it).

    Called after the process's last serve module (``tests/conftest.py``) and again, doing
    nothing, when the session ends (``serve_instance``). Starting Serve costs several seconds
    per module that starts it, hence one instance for all; kept up after them it costs CPU
    while idle, which made every later test slower (the unit tests 36 s -> 64 s in CI)."""
    global serve_running
    from ray import serve

    if not serve_running:
        return
    serve_running = False
    if not serve.status().applications:
        serve.shutdown()
