"""The control plane's HTTP layer without servers: auth, rate limit, request ids, validation,
error bodies, the committed OpenAPI spec and serve config.

The routes run over a recording backend (``_Backend``) so these tests exercise the HTTP layer
itself — the guards, FastAPI's validation and our error rendering. The real backends are
covered against the live stack in ``tests/integration/test_serve_*.py``.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from starlette.testclient import TestClient

from serve_app import openapi
from serve_app.api import create_api
from serve_app.security import BearerAuth, RateLimiter
from tests.conftest import ROOT

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class _Cfg:
    name = "unit"


class _Backend:
    """Records calls; answers like Control does for a pipeline named ``unit``."""

    cfg = _Cfg()

    def __init__(self):
        self.calls: list[tuple] = []

    def readiness(self):
        return {"ready": False, "failed": ["kafka"], "components": []}

    def readiness_cached(self):
        return None  # a cold cache: the route falls back to readiness() in a thread

    def status_cached(self, name):
        self.status(name)  # the 404 check

    def status(self, name):
        from serve_app.security import ApiError

        if name != "unit":
            raise ApiError(404, f"no pipeline {name!r} here")
        return {"pipeline": name, "sync": {"state": "running"}, "tables": []}

    def pause(self, name, table, resume=False):
        self.calls.append(("resume" if resume else "pause", name, table))
        return {"pipeline": name, "action": "resumed" if resume else "paused", "table": table}

    def submit(self, kind, table, splits=None, repair=False):
        self.calls.append(("submit", kind, table, splits, repair))
        return {"id": "00000000-0000-0000-0000-000000000001", "kind": kind, "job_id": "j", "table": table,
                "state": "pending", "href": "/x"}

    def recent_runs(self, kind, limit):
        raise RuntimeError("connection to 10.0.0.7 refused\nTraceback (most recent call last): secret internals")


@pytest.fixture()
def backend():
    return _Backend()


@pytest.fixture()
def client(backend):
    return TestClient(create_api(backend, token=TOKEN, rate_limit_per_minute=1000), raise_server_exceptions=False)


def _v1_operations():
    spec = json.loads(openapi.SPEC_PATH.read_text())
    for path, ops in spec["paths"].items():
        if path.startswith("/v1/"):
            for method in ops:
                yield method.upper(), path.replace("{name}", "unit").replace(
                    "{run_id}", "00000000-0000-0000-0000-000000000001").replace("{id}", "1")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": TOKEN}])
def test_every_v1_route_of_the_spec_refuses_a_missing_or_wrong_token(client, backend, headers):
    ops = list(_v1_operations())
    assert len(ops) >= 12
    for method, path in ops:
        r = client.request(method, path, headers=headers, json={"table": "ks.t"})
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert "token" in r.json()["error"]
    assert backend.calls == []  # nothing ran


def test_health_routes_need_no_token(client):
    assert client.get("/healthz").json() == {"status": "alive"}
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["failed"] == ["kafka"]


def test_pause_with_and_without_a_table_reaches_the_backend(client, backend):
    assert client.post("/v1/pipelines/unit/pause", headers=AUTH).json()["action"] == "paused"
    assert client.post("/v1/pipelines/unit/resume", headers=AUTH, json={"table": "ks.t"}).status_code == 200
    assert backend.calls == [("pause", "unit", None), ("resume", "unit", "ks.t")]
    assert client.get("/v1/pipelines/other/status", headers=AUTH).status_code == 404


def test_bad_bodies_get_422_naming_the_field(client, backend):
    cases = {
        "/v1/snapshots": ({}, "body.table"),
        "/v1/reconciliations": ({"table": "no-dot"}, "body.table"),
    }
    for path, (body, field) in cases.items():
        r = client.post(path, headers=AUTH, json=body)
        assert r.status_code == 422, r.text
        assert field in r.json()["error"] and r.json()["problems"][0]["field"] == field
    r = client.post("/v1/snapshots", headers=AUTH, json={"table": "ks.t", "splits": 0})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "body.splits"
    r = client.post("/v1/snapshots", headers=AUTH, json={"table": "ks.t", "bogus": 1})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "body.bogus"
    r = client.get("/v1/runs?limit=0", headers=AUTH)
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "query.limit"
    r = client.get("/v1/snapshots/not-a-uuid", headers=AUTH)
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "path.run_id"
    assert backend.calls == []
    r = client.post("/v1/reconciliations", headers=AUTH, json={"table": "ks.t", "repair": True, "splits": 8})
    assert r.status_code == 202 and r.json()["id"]
    assert backend.calls == [("submit", "reconcile", "ks.t", 8, True)]


def test_an_unexpected_error_is_a_500_without_internals_and_with_the_request_id(client, caplog):
    r = client.get("/v1/runs", headers={**AUTH, "X-Request-ID": "req-77"})
    logged = [rec for rec in caplog.records if rec.name == "c2pg.serve"]
    assert logged and all(rec.msg.get("request_id") == "req-77" for rec in logged)  # bound to the log line
    assert "Traceback" in str(logged[0].msg.get("exception"))  # the trace goes to the log, not the client
    assert r.status_code == 500
    assert r.json() == {"error": "internal error; the server log has the details", "request_id": "req-77"}
    assert "Traceback" not in r.text and "10.0.0.7" not in r.text
    assert r.headers["X-Request-ID"] == "req-77"


def test_request_id_is_echoed_when_sane_and_made_otherwise(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc.DEF-1:2"}).headers["X-Request-ID"] == "abc.DEF-1:2"
    made = client.get("/healthz").headers["X-Request-ID"]
    assert len(made) == 32
    bad = client.get("/healthz", headers={"X-Request-ID": "x" * 200}).headers["X-Request-ID"]
    assert bad != "x" * 200 and len(bad) == 32
    body = client.get("/v1/runs", headers={"X-Request-ID": "rid-401"}).json()
    assert body["request_id"] == "rid-401"


def test_rate_limit_answers_429_with_retry_after_per_client():
    backend = _Backend()
    c = TestClient(create_api(backend, token=TOKEN, rate_limit_per_minute=3))
    codes = [c.get("/v1/pipelines/unit/status", headers=AUTH).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = c.get("/v1/pipelines/unit/status", headers=AUTH)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "rate limit" in r.json()["error"]
    assert c.get("/healthz").status_code == 200  # health is not rate limited


def test_token_bucket_refills_and_keys_clients_apart():
    now = [0.0]
    rl = RateLimiter(60, clock=lambda: now[0])  # one per second, bursts of 60
    assert all(rl.acquire("a") == 0 for _ in range(60))
    assert rl.acquire("a") == pytest.approx(1.0)
    assert rl.acquire("b") == 0  # another client has its own bucket
    now[0] += 2.5
    assert rl.acquire("a") == 0 and rl.acquire("a") == 0 and rl.acquire("a") > 0
    small = RateLimiter(10, max_clients=2, clock=lambda: now[0])
    for key in "xyz":
        small.acquire(key)
    assert list(small._buckets) == ["y", "z"]  # least recently used dropped


def test_bearer_auth_compares_the_whole_token():
    auth = BearerAuth("abc")
    auth.check("Bearer abc")
    auth.check("bearer abc")
    for bad in (None, "", "Bearer ab", "Bearer abcd", "Bearer  ", "Token abc"):
        with pytest.raises(Exception, match="bearer token"):
            auth.check(bad)


def test_committed_openapi_spec_is_what_the_code_generates():
    assert openapi.main(["--check"]) == 0, "run: python -m serve_app.openapi"


def test_committed_serve_config_is_what_serve_build_generates(tmp_path):
    out = tmp_path / "serve_config.yaml"
    serve = ROOT / ".venv" / "bin" / "serve"
    cmd = [str(serve) if serve.exists() else "serve", "build", "serve_app.app:app", "-o", str(out)]
    env = {"PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=env)
    committed = yaml.safe_load((ROOT / "serve_app" / "serve_config.yaml").read_text())
    assert yaml.safe_load(out.read_text()) == committed, (
        "rebuild: serve build serve_app.app:app -o serve_app/serve_config.yaml")
    app = committed["applications"][0]
    assert app["import_path"] == "serve_app.app:app" and app["route_prefix"] == "/"


def test_the_status_page_is_plain_html_polling_the_json_routes(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for route in ('"readyz"', '"v1/pipelines"', '"v1/runs?limit=15"'):
        assert route in r.text
    assert "<script src" not in r.text  # no front-end build, no external assets
