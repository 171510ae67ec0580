"""The control plane under load while a component check hangs (issue #18): ``/healthz`` and
``/readyz`` keep answering within a probe's budget, ``/readyz`` names the hung component,
and a hung check is never started twice.

The hang is aimed, not hoped for: the replica runs with the fault hook
``health.check:component=postgres,action=hold`` (:mod:`engine.faults`), so PostgreSQL's
check blocks inside the replica until the test releases it; :func:`engine.faults.wait_held`
proves it is blocked before the load starts. The other components stay real.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
import uuid

import pytest
import requests

from tests.integration.serve_helpers import Api, pipeline_file

# Deploys the control plane: runs with the other serve modules, in one process, on one Serve instance.
pytestmark = pytest.mark.serve

PROBE_BUDGET_S = 1.0  # a Kubernetes probe's timeoutSeconds: 1 by default
LOAD_S = 10.0
CLIENTS = 8


@pytest.fixture()
def hung_postgres_check(stack, serve_instance, tmp_path):
    """The control plane deployed with PostgreSQL's check held by the fault hook; yields the
    client and the fault directory (release with ``faults.release``)."""
    from ray import serve

    from engine import faults
    from engine.config import load_config
    from serve_app.app import ControlPlane
    from tests.integration.serve_helpers import _serve_port, wait_healthz

    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    name = f"c2pg-test-{uuid.uuid4().hex[:8]}"
    path = pipeline_file(tmp_path, f"hung-{uuid.uuid4().hex[:8]}", [f"t_{uuid.uuid4().hex[:8]}"],
                         api={"health_cache": "1s", "check_timeout": "2s"})
    env = {"C2PG_FAULTS": "health.check:component=postgres,action=hold,times=1,seconds=120",
           "C2PG_FAULTS_DIR": str(fault_dir)}
    deployment = ControlPlane.options(ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}})
    serve.run(deployment.bind(str(path)), name=name, route_prefix=f"/{name}", blocking=False)
    api = Api(f"http://127.0.0.1:{_serve_port()}", f"/{name}", load_config(path).api.token.get())
    try:
        wait_healthz(api, name)
        yield api, fault_dir
    finally:
        faults.release("health.check", directory=fault_dir)
        serve.delete(name)


def _hammer(api: Api, seconds: float) -> list[tuple[str, int, float, dict | None]]:
    """``CLIENTS`` threads asking /healthz and /readyz in turn for ``seconds``: (route,
    status, seconds, body) per request. A request that takes longer than the budget still
    counts (with its time); one that fails outright is recorded as status 0."""

    def client(i: int) -> list[tuple[str, int, float, dict | None]]:
        out = []
        session = requests.Session()
        end = time.monotonic() + seconds
        n = i
        while time.monotonic() < end:
            route = ("/healthz", "/readyz")[n % 2]
            n += 1
            t0 = time.perf_counter()
            try:
                r = session.get(api.url(route), timeout=10)
                out.append((route, r.status_code, time.perf_counter() - t0, r.json()))
            except requests.RequestException:
                out.append((route, 0, time.perf_counter() - t0, None))
        return out

    with cf.ThreadPoolExecutor(CLIENTS) as pool:
        return [x for f in [pool.submit(client, i) for i in range(CLIENTS)] for x in f.result()]


@pytest.mark.exclusive  # it judges the probes' latency budget, which another test's load would spend
def test_probes_answer_within_budget_while_a_check_hangs(hung_postgres_check):
    from engine import faults

    api, fault_dir = hung_postgres_check
    requests.get(api.url("/readyz"), timeout=30)  # the first round starts the checks
    held = faults.wait_held("health.check", timeout_s=60, directory=fault_dir)
    assert held["component"] == "postgres"

    results = _hammer(api, LOAD_S)

    assert len(results) > 100, f"only {len(results)} requests in {LOAD_S} s"
    assert all(status in (200, 503) for _, status, _, _ in results), {s for _, s, _, _ in results}
    slow = sorted((round(t, 3), route) for route, _, t, _ in results if t > PROBE_BUDGET_S)
    assert not slow, f"{len(slow)} of {len(results)} answers over {PROBE_BUDGET_S} s: {slow[-5:]}"
    assert all(s == 200 for route, s, _, _ in results if route == "/healthz")
    ready = [body for route, _, _, body in results if route == "/readyz"]
    # While the check hangs, readiness is 503 naming postgres, and only postgres: the other
    # checks of the same rounds were not held up by it.
    late = ready[-1]
    assert late["ready"] is False and late["failed"] == ["postgres"], late
    pg = next(c for c in late["components"] if c["name"] == "postgres")
    # The hung call is never started again: later rounds fail at once, naming it.
    assert "previous check has not returned" in pg["error"] or "timed out" in pg["error"], pg
    assert any("previous check has not returned" in next(c for c in b["components"] if c["name"] == "postgres")
               ["error"] for b in ready if b and not b["ready"])

    faults.release("health.check", directory=fault_dir)
    deadline = time.monotonic() + 60
    while True:
        body = requests.get(api.url("/readyz"), timeout=10).json()
        pg = next(c for c in body["components"] if c["name"] == "postgres")
        if pg["status"] == "up":
            break
        assert time.monotonic() < deadline, f"postgres still down 60 s after the release: {pg}"
        time.sleep(0.5)


def test_status_and_readiness_are_served_as_rendered_gzip_or_plain(stack, serve_instance, tmp_path):
    """The cached answers go out as the bytes their refresh made: gzipped for a client that
    accepts it (the same JSON once decompressed), plain for one that does not."""
    from tests.integration.serve_helpers import serve_app_running

    path = pipeline_file(tmp_path, f"gz-{uuid.uuid4().hex[:8]}", [f"t_{i}_{uuid.uuid4().hex[:6]}" for i in range(30)])
    with serve_app_running(path) as api:
        status_path = f"/v1/pipelines/{path.stem}/status"
        api.wait(status_path, lambda b: len(b["tables"]) == 30)
        gz = api.get(status_path, headers={"Accept-Encoding": "gzip"})
        plain = api.get(status_path, headers={"Accept-Encoding": "identity"})
        assert gz.status_code == plain.status_code == 200
        assert gz.headers.get("Content-Encoding") == "gzip"
        assert "Content-Encoding" not in plain.headers
        assert gz.json()["pipeline"] == plain.json()["pipeline"] == path.stem
        assert [t["table"] for t in gz.json()["tables"]] == [t["table"] for t in plain.json()["tables"]]
        # 30 topics that do not exist yet: counted and a few named, not listed one by one
        # (a round describes 25 of them: the second round has seen all 30)
        deadline = time.monotonic() + 30
        while True:
            r = requests.get(api.url("/readyz"), timeout=30, headers={"Accept-Encoding": "gzip"})
            kafka = next(c for c in r.json()["components"] if c["name"] == "kafka")
            if "and 25 more" in (kafka["detail"] or "") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert kafka["status"] == "up" and "and 25 more" in kafka["detail"], kafka
