"""The control plane's API contract, live on the stack's Ray head: the served spec is the
committed one, every /v1 route refuses a missing or wrong token, the rate limit answers 429,
request ids travel, and a schemathesis run over every operation finds no 5xx."""

from __future__ import annotations

import json
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from serve_app import openapi
from tests.integration.serve_helpers import Api, pipeline_file, serve_app_running


# Deploys the control plane: runs with the other serve modules, in one process, on one Serve instance.
pytestmark = pytest.mark.serve

@pytest.fixture(scope="module")
def api(stack, serve_instance, tmp_path_factory):
    name = f"serve-api-{uuid.uuid4().hex[:8]}"
    # Generous limit: the contract run must not be throttled (the limit has its own app below).
    path = pipeline_file(tmp_path_factory.mktemp("serve-api"), name, [f"t_{uuid.uuid4().hex[:8]}"],
                         api={"rate_limit_per_minute": 100_000})
    with serve_app_running(path) as app:
        yield app


def test_served_openapi_spec_is_the_committed_one(api: Api):
    served = api.get("/openapi.json", auth=False).json()
    assert served == json.loads(openapi.SPEC_PATH.read_text())


def test_every_v1_route_refuses_a_missing_or_wrong_token(api: Api):
    spec = api.get("/openapi.json", auth=False).json()
    ops = [(m.upper(), p) for p, methods in spec["paths"].items() if p.startswith("/v1/") for m in methods]
    assert len(ops) >= 12
    for method, template in ops:
        path = (template.replace("{name}", "x").replace("{run_id}", str(uuid.uuid4())).replace("{id}", "1"))
        for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": f"Basic {api.token}"}):
            r = api.call(method, path, auth=False, headers=headers, json={"table": "a.b"})
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
            assert r.headers["WWW-Authenticate"] == "Bearer" and "token" in r.json()["error"]
    assert api.get("/readyz", auth=False).status_code in (200, 503)  # open, answers with the checks
    assert api.get("/healthz", auth=False).json() == {"status": "alive"}


def test_exceeding_the_rate_limit_gets_429_with_retry_after(api: Api, tmp_path):
    path = pipeline_file(tmp_path, f"serve-rl-{uuid.uuid4().hex[:8]}", ["t_rl"], api={"rate_limit_per_minute": 20})
    with serve_app_running(path) as limited:
        codes = [limited.get("/v1/runs?limit=1").status_code for _ in range(25)]
        assert codes[:20] == [200] * 20, codes
        assert 429 in codes[20:], codes
        r = limited.get("/v1/runs?limit=1")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "rate limit of 20 requests per minute" in r.json()["error"]
        assert limited.get("/healthz", auth=False).status_code == 200  # only /v1 is limited


def test_request_id_is_returned_and_named_in_error_bodies(api: Api):
    r = api.get("/v1/pipelines/nope/status", headers={"X-Request-ID": "it-req-1"})
    assert r.status_code == 404
    assert r.headers["X-Request-ID"] == "it-req-1" and r.json()["request_id"] == "it-req-1"
    made = api.get("/healthz").headers["X-Request-ID"]
    assert made and made != api.get("/healthz").headers["X-Request-ID"]


def test_bad_input_is_a_422_naming_the_field_without_a_traceback(api: Api):
    r = api.post("/v1/snapshots", json={"table": "not_a_table_of_this_pipeline.x"})
    assert r.status_code == 422 and r.json()["error"].startswith("table: ")
    r = api.post("/v1/reconciliations", json={"table": "ks.t", "repair": "maybe"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "body.repair"
    r = api.post("/v1/dead-letters/replay", data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "Traceback" not in r.text


def test_schemathesis_finds_no_server_error_on_any_operation(api: Api):
    schema = schemathesis.openapi.from_url(api.url("/openapi.json"))
    headers = {"Authorization": f"Bearer {api.token}"}
    failures: list[str] = []
    calls = [0]
    operations = 0
    for result in schema.get_all_operations():
        op = result.ok()
        operations += 1
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                _exercise(api, op, mode, headers, failures, calls)
            except Unsatisfiable:
                # No invalid request exists for an operation without inputs (GET /healthz).
                assert mode is schemathesis.GenerationMode.NEGATIVE, op.label
    assert operations >= 14 and calls[0] > 300
    assert failures == []


def _exercise(api: Api, op, mode, headers: dict, failures: list[str], calls: list[int]) -> None:
    """Up to 25 generated requests of one kind (valid or not) for one operation; every 5xx
    is recorded, and no answer may carry a traceback."""

    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case):
        calls[0] += 1
        response = case.call(base_url=api.base, headers=headers, timeout=60)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} {mode.value}: {response.status_code} "
                            f"{response.text[:300]}")
        assert "Traceback" not in response.text

    run()
