"""What the KubeRay operator's own code builds from c2pg's manifests.

``kuberay/harness`` is a Go program that imports the ray-operator module (the version in its
go.mod; see kuberay/README.md for why not 1.7) and prints the Pods, Services, RayJob
submitter templates and validation errors that the operator's builders produce for each
manifest. These tests build it once per session and check those objects: the checks the
schema tests in test_deploy_kuberay.py make on the templates, made again on what the
operator would really create, and the small Python models of deploy_validation.py compared
with the real code.

No Go or no module: the tests fail (never skip), with the command that installs it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess  # nosec B404 - runs the Go toolchain and our own harness binary
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy_validation import (
    ROOT,
    containers_run,
    head_service_account,
    load_documents,
    restricted_errors,
    services_created,
)
from tests.unit.test_deploy_kuberay import render

HARNESS = ROOT / "kuberay" / "harness"
KUBERAY = ROOT / "kuberay"
# The harness names the cluster of a RayService or RayJob <owner>-xxxxx where the operator
# appends five random characters (utils.GenerateRayClusterName).
CLUSTER_SUFFIX = "-xxxxx"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
AUTH_SECRET = "c2pg-ray-auth"  # the Secret's name, not a secret  # pragma: allowlist secret


def _operator_version() -> str:
    match = re.search(r"github\.com/ray-project/kuberay/ray-operator (v\S+)", (HARNESS / "go.mod").read_text())
    assert match, "kuberay/harness/go.mod names no ray-operator version"
    return match.group(1)


@pytest.fixture(scope="session")
def harness(tmp_path_factory) -> Path:
    """The harness binary, built once per session (a few seconds once the Go build cache is
    warm; scripts/bootstrap.sh warms it, a cold build takes about 3.5 minutes on 2 cores)."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("the KubeRay harness needs Go (1.25 or newer): `apt-get install golang-go`, "
                    "or run scripts/bootstrap.sh, which says what is missing")
    binary = tmp_path_factory.mktemp("kuberay-harness") / "harness"
    build = subprocess.run([go, "build", "-o", str(binary), "."], cwd=HARNESS,  # nosec B603
                           capture_output=True, text=True, timeout=1200, check=False)
    if build.returncode != 0:
        pytest.fail(f"`go build` of kuberay/harness failed (the module proxy must serve "
                    f"ray-operator {_operator_version()} and its dependencies):\n{build.stderr}")
    return binary


def run_harness(binary: Path, directory: Path = KUBERAY) -> dict[str, Any]:
    """The harness's output for every Ray resource in a directory of manifests."""
    paths = [str(p) for p in sorted(directory.glob("*.yaml"))
             if any(d.get("apiVersion") == "ray.io/v1" for d in load_documents(p))]
    assert paths, directory
    out = subprocess.run([str(binary), *paths], capture_output=True, text=True,  # nosec B603
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _containers(pod: dict[str, Any]):
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


# --- the checks: each returns the problems it finds (empty = good) -------------------------
# A planted defect must make them return something (test_a_planted_defect_fails_the_checks).


def operator_problems(output: dict[str, Any]) -> list[str]:
    """The operator's own validation, and fields its API types do not know (it drops them)."""
    problems = []
    for r in output["results"]:
        problems += [f"{r['kind']} {r['name']}: {e}" for e in r["validation"]]
        if r.get("unknownFields"):
            problems.append(f"{r['kind']} {r['name']}: unknown to the operator: {r['unknownFields']}")
    return problems


def service_name_problems(output: dict[str, Any]) -> list[str]:
    """Two resources whose Services share a name fight over one object in the namespace."""
    names = Counter((s["metadata"]["namespace"] or r["namespace"], s["metadata"]["name"])
                    for r in output["results"] for s in r["services"])
    return [f"Service {ns}/{name} is created {n} times" for (ns, name), n in names.items() if n > 1]


def restricted_problems(output: dict[str, Any]) -> list[str]:
    """Pod Security "restricted" over every container the operator starts: Ray containers,
    the init container it injects on workers, the autoscaler sidecar, the job submitter."""
    problems = []
    for r in output["results"]:
        pods = [(p["metadata"].get("generateName") or p["metadata"]["name"], p) for p in r["pods"]]
        if r.get("submitter"):
            pods.append(("submitter", r["submitter"]))
        for where, pod in pods:
            for c in _containers(pod):
                problems += [f"{r['name']}: {where}{c['name']}: {e}" for e in restricted_errors(pod["spec"], c)]
    return problems


def token_problems(output: dict[str, Any]) -> list[str]:
    """Only the autoscaler holds the head's Kubernetes token; the drivers c2pg runs on the head
    (sync, the jobs, the Serve app) must not, and no two clusters share a head account.
    Workers run as c2pg-worker, bound to no Role (the Vault-agent variant mounts its token)."""
    problems, accounts = [], []
    for r in output["results"]:
        for pod in r["pods"]:
            spec = pod["spec"]
            head = pod["metadata"]["labels"]["ray.io/node-type"] == "head"
            if head and spec.get("automountServiceAccountToken") is not False:
                problems.append(f"{r['name']}: the head mounts its token in every container")
            if not head and spec.get("serviceAccountName") != "c2pg-worker":
                problems.append(f"{r['name']}: a worker runs as {spec.get('serviceAccountName')}")
            for c in _containers(pod):
                mounted = any(m["mountPath"].rstrip("/") == TOKEN_PATH for m in c.get("volumeMounts", []))
                if mounted != (c["name"] == "autoscaler"):
                    problems.append(f"{r['name']}: {c['name']} token mounted: {mounted}")
            if head:
                accounts.append(spec.get("serviceAccountName"))
    shared = [a for a, n in Counter(accounts).items() if n > 1]
    return problems + [f"head account {a} shared between clusters" for a in shared]


def mount_problems(output: dict[str, Any]) -> list[str]:
    """Every mount names a volume of its pod; every Ray container reads the pipeline file."""
    problems = []
    for r in output["results"]:
        for pod in r["pods"]:
            volumes = {v["name"] for v in pod["spec"].get("volumes", [])}
            for c in _containers(pod):
                problems += [f"{r['name']}: {c['name']}: no volume {m['name']}"
                             for m in c.get("volumeMounts", []) if m["name"] not in volumes]
            ray = pod["spec"]["containers"][0]
            paths = {m["mountPath"] for m in ray.get("volumeMounts", [])}
            if "/etc/c2pg" not in paths and "/etc/c2pg/pipeline.yaml" not in paths:
                problems.append(f"{r['name']}: {ray['name']} does not mount the pipeline file")
    return problems


def auth_problems(output: dict[str, Any]) -> list[str]:
    """Ray's token authentication: every container that talks to Ray (Ray containers, the
    init container that waits for GCS, the autoscaler, the submitter) gets the token from the
    one shared Secret."""
    problems = []
    for r in output["results"]:
        templates = [*r["pods"], *([r["submitter"]] if r.get("submitter") else [])]
        for pod in templates:
            for c in _containers(pod):
                env = _env(c)
                ref = (env.get("RAY_AUTH_TOKEN", {}).get("valueFrom") or {}).get("secretKeyRef") or {}
                if env.get("RAY_AUTH_MODE", {}).get("value") != "token" or ref.get("name") != AUTH_SECRET:
                    problems.append(f"{r['name']}: {c['name']}: token auth {env.get('RAY_AUTH_MODE')}, {ref}")
    return problems


CHECKS = [operator_problems, service_name_problems, restricted_problems, token_problems,
          mount_problems, auth_problems]


# --- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def output(harness) -> dict[str, Any]:
    return run_harness(harness)


@pytest.fixture(scope="module")
def vault_output(harness, tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("vault-agent")
    assert render.main(["--secrets", "vault-agent", "--out", str(out)]) == 0
    return run_harness(harness, out)


def test_the_harness_runs_the_pinned_operator_on_every_ray_manifest(output):
    assert output["operatorVersion"] == _operator_version()
    built = {(r["kind"], r["name"]) for r in output["results"]}
    assert built == {("RayCluster", "c2pg-sync"), ("RayService", "c2pg"),
                     ("RayJob", "c2pg-snapshot"), ("RayJob", "c2pg-reconcile")}
    for r in output["results"]:
        assert r["pods"] and r["services"], r["name"]


def test_the_harness_source_is_gofmt_clean(harness):
    gofmt = Path(shutil.which("go") or "go").with_name("gofmt")
    out = subprocess.run([str(gofmt), "-l", "."], cwd=HARNESS, capture_output=True,  # nosec B603
                         text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_what_the_operator_builds_passes(check, output, vault_output):
    assert check(output) == []
    assert check(vault_output) == []


def test_probes_are_kuberays(output):
    """c2pg adds no probe (kuberay/README.md, Probes): the operator writes liveness and
    readiness on every Ray container, and on a RayService's workers the readiness also asks
    the Serve proxy (/-/healthz), which is what puts them behind c2pg-serve-svc."""
    for r in output["results"]:
        for pod in r["pods"]:
            ray = pod["spec"]["containers"][0]
            assert ray.get("livenessProbe") and ray.get("readinessProbe"), (r["name"], ray["name"])
            serve_checked = "/-/healthz" in json.dumps(ray["readinessProbe"])
            is_serve_worker = r["kind"] == "RayService" and pod["metadata"]["labels"]["ray.io/node-type"] == "worker"
            assert serve_checked == is_serve_worker, (r["name"], ray["name"])


def test_ray_address_and_the_dashboards_metrics_hosts(output):
    """Drivers on the head (sync, the jobs) find Ray by RAY_ADDRESS, which the operator sets
    on every Ray container; the head's dashboard is told where Grafana and Prometheus are."""
    for r in output["results"]:
        for pod in r["pods"]:
            env = _env(pod["spec"]["containers"][0])
            assert env.get("RAY_ADDRESS", {}).get("value"), (r["name"], pod["metadata"])
            if pod["metadata"]["labels"]["ray.io/node-type"] == "head":
                for key in ("RAY_GRAFANA_HOST", "RAY_PROMETHEUS_HOST"):
                    assert env[key]["value"].startswith("http"), (r["name"], key)
            else:
                head_svc = f"{r['cluster']}-head-svc.{r['namespace']}.svc.cluster.local:"
                assert env["RAY_ADDRESS"]["value"].startswith(head_svc), r["name"]


def test_head_service_account_is_the_clusters_own_and_workers_run_as_c2pg_worker(output):
    for r in output["results"]:
        for pod in r["pods"]:
            account = pod["spec"].get("serviceAccountName")
            if pod["metadata"]["labels"]["ray.io/node-type"] == "head":
                assert account == r["cluster"], r["name"]
            else:
                assert account == "c2pg-worker", r["name"]


# --- the Python models of deploy_validation.py against the real code -----------------------


def _docs(directory: Path = KUBERAY):
    for path in sorted(directory.glob("*.yaml")):
        for doc in load_documents(path):
            if doc.get("apiVersion") == "ray.io/v1":
                yield doc


def service_model_disagreements(output: dict[str, Any], docs: list[dict[str, Any]],
                                model=services_created) -> set[str]:
    """Fixed Service names the model and the operator disagree on (the cluster-named ones get
    a random suffix from the operator, and the model leaves them out)."""
    real = {s["metadata"]["name"] for r in output["results"] for s in r["services"]
            if CLUSTER_SUFFIX not in s["metadata"]["name"]}
    return real ^ {name for doc in docs for name in model(doc)}


def container_model_disagreements(output: dict[str, Any], docs: list[dict[str, Any]],
                                  model=containers_run) -> dict[str, Any]:
    """Per resource, the (container, securityContext) pairs the model and the operator's Pods
    disagree on: containers_run is what the Pod Security test reads."""
    def pairs(containers):
        return Counter((c["name"], json.dumps(c.get("securityContext"), sort_keys=True)) for c in containers)

    real = {r["name"]: pairs(c for pod in [*r["pods"], *([r["submitter"]] if r.get("submitter") else [])]
                             for c in _containers(pod))
            for r in output["results"]}
    modelled = {doc["metadata"]["name"]: pairs(c for _, _, c in model(doc)) for doc in docs}
    return {name: (real.get(name, Counter()) - modelled.get(name, Counter()),
                   modelled.get(name, Counter()) - real.get(name, Counter()))
            for name in {*real, *modelled} if real.get(name) != modelled.get(name)}


def test_the_service_model_names_the_services_the_operator_names(output):
    assert service_model_disagreements(output, list(_docs())) == set()


def test_the_container_model_lists_the_containers_the_operator_starts(output):
    assert container_model_disagreements(output, list(_docs())) == {}


def test_the_comparisons_catch_a_model_that_disagrees(output):
    """The models as they were before the harness showed them wrong: no head Service for a
    RayJob, no wait-gcs-ready init container on workers. Both comparisons must fail them."""
    def old_services(doc):
        return [] if doc["kind"] == "RayJob" else services_created(doc)

    def old_containers(doc):
        return [run for run in containers_run(doc) if run[2]["name"] != "wait-gcs-ready"]

    docs = list(_docs())
    assert service_model_disagreements(output, docs, old_services) == {
        "c2pg-snapshot-head-svc", "c2pg-reconcile-head-svc"}
    assert set(container_model_disagreements(output, docs, old_containers)) == {
        "c2pg", "c2pg-sync", "c2pg-snapshot", "c2pg-reconcile"}


def test_the_head_account_model_is_the_operators(output):
    by_name = {r["name"]: r for r in output["results"]}
    for doc in _docs():
        r = by_name[doc["metadata"]["name"]]
        head = next(p for p in r["pods"] if p["metadata"]["labels"]["ray.io/node-type"] == "head")
        for cluster in _cluster_specs(doc):
            assert head_service_account(cluster, r["cluster"]) == head["spec"]["serviceAccountName"]


def _cluster_specs(doc):
    from tests.unit.deploy_validation import cluster_specs

    return list(cluster_specs(doc))


# --- a planted defect fails the checks -----------------------------------------------------


def _plant(tmp_path: Path, name: str, change) -> Path:
    """A copy of kuberay/'s manifests with one document of NAME changed by CHANGE(doc)."""
    for path in KUBERAY.glob("*.yaml"):
        docs = load_documents(path)
        for doc in docs:
            if doc.get("metadata", {}).get("name") == name and doc.get("apiVersion") == "ray.io/v1":
                change(doc)
        (tmp_path / path.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return tmp_path


def _rename_cluster(doc):
    doc["metadata"]["name"] = "c2pg"  # its head Service becomes c2pg-head-svc: the RayService's


def _drop_autoscaler_lockdown(doc):
    del doc["spec"]["autoscalerOptions"]["securityContext"]


def _workers_max_below_min(doc):
    group = doc["spec"]["workerGroupSpecs"][0]
    group["minReplicas"], group["maxReplicas"] = 3, 2


def _typo_field(doc):
    doc["spec"]["workerGroupSpecs"][0]["minReplica"] = 1


def _mount_the_token_in_ray(doc):
    template = doc["spec"]["headGroupSpec"]["template"]["spec"]
    template["automountServiceAccountToken"] = True


def _wrong_auth_secret(doc):
    doc["spec"]["authOptions"]["secretName"] = "another-secret"


@pytest.mark.parametrize(("change", "check"), [
    (_rename_cluster, service_name_problems),
    (_drop_autoscaler_lockdown, restricted_problems),
    (_workers_max_below_min, operator_problems),
    (_typo_field, operator_problems),
    (_mount_the_token_in_ray, token_problems),
    (_wrong_auth_secret, auth_problems),
], ids=lambda v: getattr(v, "__name__", ""))
def test_a_planted_defect_fails_the_checks(change, check, harness, tmp_path):
    directory = _plant(tmp_path, "c2pg-sync", change)
    assert check(run_harness(harness, directory)), f"{change.__name__} passed {check.__name__}"
