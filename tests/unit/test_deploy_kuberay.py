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
        # The head's autoscaler sidecar needs the service account's token; workers do not.
        assert spec["serviceAccountName"] == "c2pg"
        assert spec["automountServiceAccountToken"] is ("headGroupSpec" in where)
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
        assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
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
