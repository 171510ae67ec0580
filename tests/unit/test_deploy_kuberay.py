"""The KubeRay manifests: current with their sources, valid against the KubeRay CRDs and the
Kubernetes core schemas, and saying what c2pg needs (no Kubernetes cluster involved)."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import re
import shlex
from typing import Any

import pytest
import yaml

from tests.unit.deploy_validation import ROOT, SCHEMAS, load_crd, load_documents, manifest_errors, pod_templates

KUBERAY = ROOT / "kuberay"
MANIFESTS = sorted(p for p in KUBERAY.glob("*.yaml") if p.name != "pipeline.yaml") + [
    ROOT / "dashboards" / "grafana-dashboard-configmap.yaml"]



@pytest.fixture(autouse=True)
def _default_image(monkeypatch):
    """kuberay/render.py takes C2PG_IMAGE as its default image; the committed files do not."""
    monkeypatch.delenv("C2PG_IMAGE", raising=False)

def _render():
    spec = importlib.util.spec_from_file_location("c2pg_kuberay_render", KUBERAY / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render()


def _doc(name: str, kind: str | None = None) -> dict[str, Any]:
    docs = load_documents(KUBERAY / name)
    return next(d for d in docs if kind is None or d["kind"] == kind)


def _containers(doc: dict[str, Any]):
    for where, template in pod_templates(doc):
        for c in template["spec"]["containers"]:
            yield where, c


# --- current and valid ---------------------------------------------------------------------


def test_committed_manifests_are_what_render_py_writes(capsys):
    assert render.main(["--check"]) == 0, capsys.readouterr().err


def test_schemas_are_kuberay_1x_crds_with_their_version_noted():
    readme = (SCHEMAS / "README.md").read_text()
    version = re.search(r"KubeRay (v1\.\d+\.\d+)", readme)
    assert version, "kuberay/schemas/README.md names the KubeRay version"
    for name in ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml", "ray.io_rayservices.yaml"):
        crd = load_crd(name)
        assert crd["kind"] == "CustomResourceDefinition"
        assert any(v["name"] == "v1" and v["storage"] for v in crd["spec"]["versions"])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_validates(path):
    docs = load_documents(path)
    assert docs
    for doc in docs:
        assert manifest_errors(doc) == [], f"{path.name}: {doc['kind']}"


def test_the_vault_agent_variant_validates_and_reads_secrets_from_files(tmp_path):
    assert render.main(["--secrets", "vault-agent", "--out", str(tmp_path)]) == 0
    cluster = load_documents(tmp_path / "raycluster.yaml")[0]
    assert manifest_errors(cluster) == []
    for _, template in pod_templates(cluster):
        notes = template["metadata"]["annotations"]
        assert notes["vault.hashicorp.com/agent-inject"] == "true"
        assert all("secret" not in v for v in template["spec"]["volumes"])  # no Kubernetes Secret
    pipeline = load_documents(tmp_path / "pipeline-configmap.yaml")[0]["data"]["pipeline.yaml"]
    assert not re.search(r"^\s*\w+: file:/etc/c2pg/secrets/", pipeline, re.M)
    refs = re.findall(r"^\s*\w+: file:/vault/secrets/([a-z-]+)$", pipeline, re.M)
    injected = {k.rsplit("agent-inject-secret-", 1)[1] for k in notes if "agent-inject-secret-" in k}
    assert refs and set(refs) <= injected


# A broken manifest must fail: one mutation per kind of mistake, each caught by a schema or rule.
BROKEN = {
    "typo in a KubeRay field": lambda d: d["spec"]["workerGroupSpecs"][0].update(
        minReplica=d["spec"]["workerGroupSpecs"][0].pop("minReplicas")),
    "string where the CRD wants an integer": lambda d: d["spec"]["workerGroupSpecs"][0].update(maxReplicas="8"),
    "unknown container field (core PodSpec)": lambda d: d["spec"]["headGroupSpec"]["template"]["spec"][
        "containers"][0].update(resourcez={}),
    "container without an image name": lambda d: d["spec"]["headGroupSpec"]["template"]["spec"][
        "containers"][0].pop("name"),
    "non-string label": lambda d: d["metadata"].update(labels={"tier": 1}),
    "min above max replicas (KubeRay rule)": lambda d: d["spec"]["workerGroupSpecs"][0].update(
        minReplicas=9, replicas=9),
    "name that is not a DNS-1035 label": lambda d: d["metadata"].update(name="C2PG_sync"),
    "token auth with a Ray too old for it": lambda d: d["spec"].update(rayVersion="2.40.0"),
}


@pytest.mark.parametrize("mistake", BROKEN)
def test_a_broken_raycluster_fails_validation(mistake):
    doc = copy.deepcopy(_doc("raycluster.yaml"))
    BROKEN[mistake](doc)
    assert manifest_errors(doc), mistake


def test_a_broken_rayjob_and_core_objects_fail_validation():
    job = copy.deepcopy(_doc("rayjob-snapshot.yaml"))
    job["spec"]["shutdownAfterJobFinishes"] = "yes"
    assert manifest_errors(job)
    job = copy.deepcopy(_doc("rayjob-snapshot.yaml"))
    job["spec"]["clusterSelector"] = {"ray.io/cluster": "c2pg"}
    assert any("rayClusterSpec or clusterSelector" in e for e in manifest_errors(job))
    job = copy.deepcopy(_doc("rayjob-snapshot.yaml"))
    job["spec"]["shutdownAfterJobFinishes"] = False  # the TTL would never apply
    assert any("needs shutdownAfterJobFinishes" in e for e in manifest_errors(job))
    cm = copy.deepcopy(_doc("pipeline-configmap.yaml"))
    cm["data"]["pipeline.yaml"] = {"not": "a string"}
    assert manifest_errors(cm)
    secret = copy.deepcopy(_doc("secrets.example.yaml"))
    secret["stringdata"] = secret.pop("stringData")
    assert manifest_errors(secret)


# --- what c2pg needs from the clusters ---------------------------------------------------------


def _clusters():
    yield "raycluster", _doc("raycluster.yaml")["spec"]
    yield "rayservice", _doc("rayservice.yaml")["spec"]["rayClusterConfig"]
    for kind in ("snapshot", "reconcile"):
        yield f"rayjob-{kind}", _doc(f"rayjob-{kind}.yaml")["spec"]["rayClusterSpec"]


@pytest.mark.parametrize("name,cluster", list(_clusters()), ids=lambda v: v if isinstance(v, str) else "")
def test_head_runs_no_work_and_workers_autoscale(name, cluster):
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is True
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
    assert group["maxReplicas"] >= 4
    assert cluster["rayVersion"] == render.project_versions()[1]
    # The Ray container comes first in every pod template (KubeRay uses index 0).
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["name"] == "ray-head"


def test_sync_cluster_has_a_sync_worker_group():
    (group,) = _doc("raycluster.yaml")["spec"]["workerGroupSpecs"]
    assert group["groupName"] == "sync" and group["minReplicas"] >= 1


@pytest.mark.parametrize("path", [p for p in MANIFESTS if "ray" in p.name], ids=lambda p: p.name)
def test_memory_and_cpu_requests_equal_limits(path):
    doc = load_documents(path)[0]
    resources = [(w, c["resources"]) for w, c in _containers(doc)]
    for cluster in ([doc["spec"]] if doc["kind"] == "RayCluster" else
                    [doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]]):
        resources.append(("autoscalerOptions", cluster["autoscalerOptions"]["resources"]))
    assert resources
    for where, res in resources:
        assert res["requests"]["memory"] == res["limits"]["memory"], where
        assert res["requests"]["cpu"] == res["limits"]["cpu"], where


@pytest.mark.parametrize("path", [p for p in MANIFESTS if "ray" in p.name], ids=lambda p: p.name)
def test_pods_run_the_engine_image_as_non_root_with_config_and_secrets(path):
    from engine.config import load_config

    doc = load_documents(path)[0]
    secret_keys = set(_doc("secrets.example.yaml", "Secret")["stringData"])
    cfg = load_config(KUBERAY / "pipeline.yaml", resolve_secrets=False)
    files = {s.ref.target for _, s in cfg.secrets()}
    # Every secret of the pipeline is a file of the mounted Secret, and every key is used.
    assert {f.rsplit("/", 1)[0] for f in files} == {"/etc/c2pg/secrets"}
    assert {f.rsplit("/", 1)[1] for f in files} == secret_keys
    for where, template in pod_templates(doc):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        if where == "spec.submitterPodTemplate":  # runs `ray job submit` only
            continue
        # The head's account is KubeRay's (one per cluster, for the autoscaler); the workers'
        # has no rights; no Ray container mounts a token (test_only_the_autoscaler_holds_...).
        assert spec.get("serviceAccountName") == (None if "headGroupSpec" in where else "c2pg-worker")
        assert spec["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["pipeline"]["configMap"] == {"name": "c2pg-pipeline"}
        assert volumes["secrets"]["secret"]["secretName"] == "c2pg-secrets"
        c = spec["containers"][0]
        assert c["image"] == render.image(), where
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts["/etc/c2pg"]["name"] == "pipeline" and mounts["/etc/c2pg"]["readOnly"] is True
        assert mounts["/etc/c2pg/secrets"]["name"] == "secrets" and mounts["/etc/c2pg/secrets"]["readOnly"] is True
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["C2PG_PIPELINE_CONFIG"] == "/etc/c2pg/pipeline.yaml"  # read by serve_app/app.py


def test_ray_token_auth_uses_the_one_shared_secret():
    names = {d["metadata"]["name"]: d for d in load_documents(KUBERAY / "secrets.example.yaml")}
    assert "auth_token" in names["c2pg-ray-auth"]["stringData"]  # the key KubeRay reads
    for _, cluster in _clusters():
        assert cluster["authOptions"] == {"mode": "token", "secretName": "c2pg-ray-auth"}


def test_pipeline_configmap_is_the_pipeline_file_and_it_validates():
    from engine.config import load_config

    data = _doc("pipeline-configmap.yaml")["data"]["pipeline.yaml"]
    assert data == (KUBERAY / "pipeline.yaml").read_text()
    cfg = load_config(KUBERAY / "pipeline.yaml", resolve_secrets=False)
    assert all(s.ref.kind == "file" for _, s in cfg.secrets())


# --- the RayService: the Serve app's config, probes -------------------------------------------


def test_rayservice_serve_config_is_the_serve_apps_committed_config():
    committed = ROOT / "serve_app" / "serve_config.yaml"
    embedded = yaml.safe_load(_doc("rayservice.yaml")["spec"]["serveConfigV2"])
    if not committed.exists():
        pytest.skip("serve_app/serve_config.yaml is not committed yet (issue #6); the RayService "
                    "holds kuberay/render.py's provisional config")
    assert embedded == yaml.safe_load(committed.read_text())


def test_rayservice_serve_app_is_importable_and_probed_where_kuberay_allows():
    config = yaml.safe_load(_doc("rayservice.yaml")["spec"]["serveConfigV2"])
    port = config.get("http_options", {}).get("port", 8000)
    if (ROOT / "serve_app" / "serve_config.yaml").exists():
        for app in config["applications"]:
            module = app["import_path"].split(":", 1)[0]
            assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module
    cluster = _doc("rayservice.yaml")["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    # KubeRay deploys the Serve app only once the head pod is Ready: a head probe that waits
    # for the app would never let it deploy. The head keeps KubeRay's own probes.
    assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(head)
    assert {"containerPort": port, "name": "serve"} in head["ports"]
    for group in cluster["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        assert {"containerPort": port, "name": "serve"} in worker["ports"]  # KubeRay's port name
        # No liveness on the app: restarting a Ray pod would take its sync workers with it.
        assert "livenessProbe" not in worker and "startupProbe" not in worker
    assert "/healthz" in (ROOT / "docker" / "compose.yaml").read_text()  # the app's liveness check there


# --- the RayJobs --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["snapshot", "reconcile"])
def test_rayjob_runs_the_job_module_with_arguments_it_accepts(kind):
    import argparse

    spec = _doc(f"rayjob-{kind}.yaml")["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", f"jobs.{kind}"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))  # raises on an invalid runtime env
    config = argv[argv.index("--config") + 1]
    assert config == "/etc/c2pg/pipeline.yaml"
    table = argv[argv.index("--table") + 1]
    listed = {f"{t['keyspace']}.{t['table']}"
              for t in yaml.safe_load((KUBERAY / "pipeline.yaml").read_text())["tables"]}
    assert table in listed
    if not (ROOT / "jobs" / f"{kind}.py").exists():
        pytest.skip(f"jobs/{kind}.py is not committed yet")
    module = importlib.import_module(f"jobs.{kind}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    parser.parse_args(argv[3:])  # SystemExit(2) on an argument the job does not take


@pytest.mark.parametrize("kind,repair", [("snapshot", False), ("reconcile", True)])
def test_render_job_prints_a_valid_rayjob_for_any_table(kind, repair, capsys):
    argv = ["--job", kind, "--table", "Shop.Order_Items"] + (["--repair"] if repair else [])
    assert render.main(argv) == 0
    (doc,) = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert manifest_errors(doc) == []
    assert doc["metadata"]["name"] == f"c2pg-{kind}-shop-order-items"
    assert doc["spec"]["entrypoint"].endswith("--table Shop.Order_Items" + (" --repair" if repair else ""))


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayservice.yaml"])
def test_sync_cluster_head_runs_ray_and_the_sync_keeper(name, tmp_path):
    import argparse
    import subprocess

    from jobs import sync as sync_job

    spec = _doc(name)["spec"]
    cluster = spec.get("rayClusterConfig", spec)
    template = cluster["headGroupSpec"]["template"]
    # KubeRay keeps a command only when asked to, and then hands its own `ray start` over in
    # KUBERAY_GEN_RAY_START_CMD (ray-operator/controllers/ray/common/pod.go).
    assert template["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    assert template["metadata"]["labels"]["c2pg/sync-keeper"] == "true"  # docs/operations.md: kubectl logs -l
    head = template["spec"]["containers"][0]
    assert head["command"] == ["/bin/bash", "-c", "--"]
    (script,) = head["args"]
    (tmp_path / "head.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "head.sh")]).returncode == 0
    assert 'eval "$KUBERAY_GEN_RAY_START_CMD" &' in script
    (keeper,) = re.findall(r"python -m jobs\.sync ([^&\n]*)", script)
    parser = argparse.ArgumentParser()
    sync_job.add_arguments(parser)
    args = parser.parse_args(shlex.split(keeper))
    assert str(args.config) == "/etc/c2pg/pipeline.yaml" and not args.until_caught_up
    assert template["spec"]["terminationGracePeriodSeconds"] >= 60  # time to drain


@pytest.mark.parametrize("kind", ["snapshot", "reconcile"])
def test_job_clusters_run_no_sync(kind):
    head = _doc(f"rayjob-{kind}.yaml")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert "command" not in head["spec"]["containers"][0]
    assert "ray.io/overwrite-container-cmd" not in head["metadata"].get("annotations", {})


# --- what the KubeRay operator makes of the manifests ----------------------------------------


def _all_kuberay_docs(directory=KUBERAY):
    for path in sorted(directory.glob("*.yaml")):
        for doc in load_documents(path):
            if doc.get("apiVersion") == "ray.io/v1":
                yield path.name, doc


def test_the_services_kuberay_creates_have_unique_names():
    """Two resources whose Services share a name fight over one object in the namespace."""
    from tests.unit.deploy_validation import services_created

    names = [s for _, doc in _all_kuberay_docs() for s in services_created(doc)]
    assert names and len(names) == len(set(names)), sorted(names)


def test_vault_agent_runs_as_the_ray_containers_user(tmp_path):
    """The injector's agent-run-as-same-user copies runAsUser from the pod's first container
    (not the pod) and refuses the pod without it; the files must be readable by that user."""
    assert render.main(["--secrets", "vault-agent", "--out", str(tmp_path)]) == 0
    checked = 0
    for _, doc in _all_kuberay_docs(tmp_path):
        for where, template in pod_templates(doc):
            notes = template["metadata"].get("annotations", {})
            if notes.get("vault.hashicorp.com/agent-run-as-same-user") != "true":
                continue
            first = template["spec"]["containers"][0]
            user = (first.get("securityContext") or {}).get("runAsUser")
            assert user not in (None, 0), where
            assert user == template["spec"]["securityContext"]["runAsUser"], where
            checked += 1
    assert checked


@pytest.mark.parametrize("variant", ["kubernetes", "vault-agent"])
def test_every_container_kuberay_starts_passes_pod_security_restricted(variant, tmp_path):
    """Namespaces that enforce Pod Security "restricted" admit only pods whose every container
    (the autoscaler sidecar and a RayJob's submitter included) is locked down."""
    from tests.unit.deploy_validation import containers_run, restricted_errors

    directory = KUBERAY
    if variant != "kubernetes":
        assert render.main(["--secrets", variant, "--out", str(tmp_path)]) == 0
        directory = tmp_path
    problems = {f"{name}: {where}": errors for name, doc in _all_kuberay_docs(directory)
                for where, pod, c in containers_run(doc) if (errors := restricted_errors(pod, c))}
    assert not problems, problems
    job = _doc("rayjob-snapshot.yaml")
    assert manifest_errors(job) == []  # the submitter template validates as a PodTemplate too


def test_only_the_autoscaler_holds_a_kubernetes_token_and_no_cluster_shares_its_account():
    """KubeRay binds its pod-patching Role to the head's service account; the drivers c2pg runs
    on the head (sync, the jobs, the Serve app) must not hold that token, and one cluster's
    head must not get rights over another cluster's pods through a shared account."""
    from tests.unit.deploy_validation import containers_run, head_service_account

    token_path = "/var/run/secrets/kubernetes.io/serviceaccount"
    accounts = []
    for name, doc in _all_kuberay_docs():
        for i, cluster in enumerate(cluster_specs_of(doc)):
            accounts.append(head_service_account(cluster, f"{doc['metadata']['name']}-{i}"))
            head = cluster["headGroupSpec"]["template"]["spec"]
            assert head.get("automountServiceAccountToken") is False, name  # kubelet mounts it in every container
            workers = {g["template"]["spec"].get("serviceAccountName") for g in cluster["workerGroupSpecs"]}
            assert head_service_account(cluster, "") not in workers, name
        for where, _pod, c in containers_run(doc):
            mounted = any(m["mountPath"].rstrip("/") == token_path for m in c.get("volumeMounts", []))
            assert mounted is (where == "autoscaler"), f"{name}: {where}"
    assert len(accounts) == len(set(accounts)), accounts


def cluster_specs_of(doc):
    from tests.unit.deploy_validation import cluster_specs

    return list(cluster_specs(doc))


def test_serve_traffic_follows_the_proxy_health_kuberay_checks():
    """KubeRay puts a pod behind c2pg-serve-svc while its Serve proxy is healthy: the head by
    the operator's own proxy check (never its readiness), the workers by the readiness probe
    it writes (raylet and proxy) — unless the template brings its own, which replaces both. An
    application-level probe there (/readyz: every component of the pipeline) would take every
    worker out together whenever Kafka or Vault blinks, while the head kept serving, and with
    failureThreshold 1 it would flap on one slow answer."""
    cluster = _doc("rayservice.yaml")["spec"]["rayClusterConfig"]
    for group in cluster["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        probe = worker.get("readinessProbe")
        assert probe is None, "KubeRay writes the worker's readiness (raylet + Serve proxy /-/healthz)"
        assert {"containerPort": 8000, "name": "serve"} in worker["ports"]  # where KubeRay's check looks
    probes = (KUBERAY / "README.md").read_text().split("## Probes", 1)[1].split("\n## ", 1)[0]
    assert "/-/healthz" in probes and "Readiness, `/readyz`" not in probes  # says what KubeRay does


GRAFANA_ENV = ("RAY_GRAFANA_HOST", "RAY_PROMETHEUS_HOST", "RAY_GRAFANA_IFRAME_HOST")


def test_ray_dashboards_metrics_pane_knows_grafana_and_prometheus():
    """The Ray dashboard (on the head) embeds Grafana and queries Prometheus only when these
    are set in the head container; the hosts are the monitoring stack the docs install."""
    from urllib.parse import urlparse

    ops = (ROOT / "docs" / "operations.md").read_text()
    # The release docs/operations.md installs, and the Services kube-prometheus-stack names
    # after it (<release>-grafana; <release>-kube-prometheus-prometheus).
    release, namespace = re.search(
        r"helm install (\S+) prometheus-community/kube-prometheus-stack --namespace (\S+)", ops).groups()
    expected = {"RAY_GRAFANA_HOST": f"{release}-grafana.{namespace}.svc",
                "RAY_PROMETHEUS_HOST": f"{release}-kube-prometheus-prometheus.{namespace}.svc"}
    for name, doc in _all_kuberay_docs():
        for cluster in cluster_specs_of(doc):
            head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
            env = {e["name"]: e.get("value") for e in head["env"]}
            for key in GRAFANA_ENV:
                url = urlparse(env.get(key) or "")
                assert url.scheme in ("http", "https") and url.hostname, (name, key)
            for key, host in expected.items():
                assert urlparse(env[key]).hostname == host, (name, key)
            assert "RAY_PROMETHEUS_NAME" in env  # the Grafana data source the dashboard's panels name


def test_namespaced_applies_in_the_docs_match_the_manifests_namespace():
    """`kubectl -n NS apply -f FILE` fails when FILE hard-codes another namespace."""
    ops = (ROOT / "docs" / "operations.md").read_text()
    applies = re.findall(r"kubectl -n (\S+) apply -f ((?:kuberay|dashboards)/\S+)", ops)
    assert applies
    for namespace, file in applies:
        for doc in load_documents(ROOT / file):
            assert doc["metadata"].get("namespace", namespace) == namespace, (file, namespace)
