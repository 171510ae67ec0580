"""Schema validation of c2pg's Kubernetes manifests, shared by the deployment tests.

Two sources of truth, both real schemas rather than hand-written expectations:

- the KubeRay CRDs, kept verbatim in ``kuberay/schemas/`` (version in the README there). A
  CRD's structural schema allows unknown fields, which the API server would silently prune,
  so a typo like ``minReplica`` would pass; :func:`strict` closes every object that lists its
  properties (``additionalProperties: false``), as ``kubectl apply --validate=strict`` does;
- the Kubernetes core schemas of the ``kubernetes-validate`` package (strict variant), for
  ConfigMaps, Secrets, ServiceAccounts, every object's metadata, and every pod template
  embedded in a KubeRay resource (validated as a ``v1/PodTemplate``).

What neither can check — KubeRay's controller-side rules and the CRDs' CEL rules — is covered
by :func:`kuberay_rules` for the rules c2pg's manifests touch.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "kuberay" / "schemas"
KUBERNETES_VERSION = "1.34"  # the oldest Kubernetes c2pg documents; KubeRay 1.7 supports it
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
# The Prometheus operator's CRDs for dashboards/podmonitor.yaml and prometheusrule.yaml
# (version in dashboards/schemas/README.md).
MONITORING_SCHEMAS = ROOT / "dashboards" / "schemas"
MONITORING_CRD_FILES = {"PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
                        "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml"}
API_VERSIONS = {**dict.fromkeys(CRD_FILES, "ray.io/v1"),
                **dict.fromkeys(MONITORING_CRD_FILES, "monitoring.coreos.com/v1")}


def strict(schema: Any) -> Any:
    """A copy of a CRD schema where every object with ``properties`` refuses other keys."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def load_crd(name: str) -> dict[str, Any]:
    """A CRD file of kuberay/schemas or dashboards/schemas (1 MB of YAML each: libyaml's loader
    when present)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    path = SCHEMAS / name if (SCHEMAS / name).exists() else MONITORING_SCHEMAS / name
    return yaml.load(path.read_text(), Loader=loader)  # a safe loader, C or Python


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    crd = load_crd({**CRD_FILES, **MONITORING_CRD_FILES}[kind])
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": API_VERSIONS[kind]}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return jsonschema.Draft7Validator(schema)


def core_errors(doc: dict[str, Any]) -> list[str]:
    """Errors of a core Kubernetes object against the strict core schemas (empty = valid)."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return [f"{doc.get('kind')}: {where}: {exc.message}"]
    return []


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every pod template inside a KubeRay resource."""
    spec = doc["spec"]
    clusters = {"RayCluster": [("spec", spec)],
                "RayService": [("spec.rayClusterConfig", spec.get("rayClusterConfig", {}))],
                "RayJob": [("spec.rayClusterSpec", spec.get("rayClusterSpec", {}))]}[doc["kind"]]
    for where, cluster in clusters:
        if "headGroupSpec" in cluster:
            yield f"{where}.headGroupSpec.template", cluster["headGroupSpec"]["template"]
        for i, group in enumerate(cluster.get("workerGroupSpecs", [])):
            yield f"{where}.workerGroupSpecs[{i}].template", group["template"]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in spec:
        yield "spec.submitterPodTemplate", spec["submitterPodTemplate"]


def cluster_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc["spec"]
    if doc["kind"] == "RayCluster":
        yield spec
    elif doc["kind"] == "RayService":
        yield spec["rayClusterConfig"]
    elif "rayClusterSpec" in spec:
        yield spec["rayClusterSpec"]


_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_NAME_LIMITS = {"RayCluster": 53, "RayService": 47, "RayJob": 47}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def kuberay_rules(doc: dict[str, Any]) -> list[str]:
    """KubeRay's controller-side checks (ray-operator/controllers/ray/utils/validation.go)."""
    errors = []
    name = doc["metadata"].get("name", "")
    if not _DNS1035.match(name) or len(name) > _NAME_LIMITS[doc["kind"]]:
        errors.append(f"metadata.name {name!r}: a DNS-1035 label of at most {_NAME_LIMITS[doc['kind']]}")
    for cluster in cluster_specs(doc):
        if not cluster["headGroupSpec"]["template"]["spec"].get("containers"):
            errors.append("headGroupSpec: no container")
        for group in cluster.get("workerGroupSpecs", []):
            lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
            if not 0 <= lo <= hi:
                errors.append(f"worker group {group['groupName']}: minReplicas {lo} > maxReplicas {hi}")
            if "replicas" in group and not lo <= group["replicas"] <= hi:
                errors.append(f"worker group {group['groupName']}: replicas outside [min, max]")
        if cluster.get("authOptions", {}).get("mode", "token") == "token" and "authOptions" in cluster:
            if _version(cluster.get("rayVersion", "0")) < (2, 52, 0):
                errors.append("authOptions.mode token needs rayVersion >= 2.52.0")
        if doc["kind"] != "RayCluster" and "upgradeStrategy" in cluster:
            errors.append("upgradeStrategy cannot be set on a cluster a RayJob/RayService creates")
    if doc["kind"] == "RayService":
        kind = doc["spec"].get("upgradeStrategy", {}).get("type")
        if kind not in (None, "NewCluster", "None", "NewClusterWithIncrementalUpgrade"):
            errors.append(f"upgradeStrategy.type {kind!r} is not one KubeRay knows")
    if doc["kind"] == "RayJob":
        spec = doc["spec"]
        if spec.get("ttlSecondsAfterFinished", 0) < 0:
            errors.append("ttlSecondsAfterFinished must be >= 0")
        if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
            errors.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes")
        if bool(spec.get("clusterSelector")) == bool(spec.get("rayClusterSpec")):
            errors.append("exactly one of rayClusterSpec or clusterSelector")
        if spec.get("clusterSelector") and "backoffLimit" in spec:
            errors.append("backoffLimit is incompatible with clusterSelector")
    return errors


def manifest_errors(doc: dict[str, Any]) -> list[str]:
    """Every schema and rule error of one manifest document (empty = valid)."""
    if doc.get("apiVersion") == "monitoring.coreos.com/v1" and doc.get("kind") in MONITORING_CRD_FILES:
        return [f"{doc['kind']}: {'.'.join(map(str, e.path))}: {e.message}"
                for e in crd_validator(doc["kind"]).iter_errors(doc)] + core_errors(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})})
    if doc.get("apiVersion") == "ray.io/v1" and doc.get("kind") in CRD_FILES:
        errors = [f"{doc['kind']}: {'.'.join(map(str, e.path))}: {e.message}"
                  for e in crd_validator(doc["kind"]).iter_errors(doc)]
        errors += core_errors({"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": doc.get("metadata", {})})
        if errors:
            return errors
        for where, template in pod_templates(doc):
            errors += [f"{where}: {e}" for e in core_errors(
                {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"},
                 "template": template})]
        return errors + kuberay_rules(doc)
    return core_errors(doc)


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- what the KubeRay 1.7 operator builds from a manifest ------------------------------------
# Small models of ray-operator's builders, for the properties the tests check (each names the
# function it follows). They read the manifests, never c2pg's renderer.
# test_deploy_kuberay_harness.py compares them with what the operator's own code builds
# (kuberay/harness, ray-operator 1.6.2: the newest release the Go module proxy serves).


def services_created(doc: dict[str, Any]) -> list[str]:
    """The Services KubeRay names after the resource (utils.GenerateHeadServiceName and
    GenerateServeServiceName; a RayJob's own head Service, common.BuildHeadServiceForRayJob).
    A RayJob's cluster, and a RayService's, get a random suffix, so the head Services named
    after those clusters cannot clash; these are the fixed names."""
    name, spec = doc["metadata"]["name"], doc["spec"]
    if doc["kind"] == "RayCluster":
        return [(spec["headGroupSpec"].get("headService") or {}).get("metadata", {}).get("name")
                or f"{name}-head-svc"]
    if doc["kind"] == "RayService":
        return [f"{name}-head-svc", f"{name}-serve-svc"]
    return [f"{name}-head-svc"] if "rayClusterSpec" in spec else []


def head_service_account(cluster: dict[str, Any], cluster_name: str) -> str:
    """The account KubeRay runs an autoscaled head as, and binds its Role (pods: get, list,
    watch, patch; rayclusters: get, patch) to: the template's, else one named after the
    cluster (utils.GetHeadGroupServiceAccountName, common.BuildRoleBinding)."""
    return cluster["headGroupSpec"]["template"]["spec"].get("serviceAccountName") or cluster_name


def containers_run(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod spec, container) for every container KubeRay starts for a resource: the pod
    templates' containers and init containers, the init container it adds to every worker
    (common.DefaultWorkerPodTemplate: wait-gcs-ready, with the Ray container's securityContext
    and mounts), the autoscaler sidecar of an autoscaled head (common.BuildAutoscaler-
    Container + mergeAutoscalerOverrides: autoscalerOptions.securityContext, volumeMounts), and a
    RayJob's submitter (common.GetSubmitterTemplate: the user's submitterPodTemplate, else a
    container with only an image and resources)."""
    for where, template in pod_templates(doc):
        spec = template["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            yield f"{where}/{c['name']}", spec, c
        if ".workerGroupSpecs[" in where:
            ray = spec["containers"][0]
            init = {"name": "wait-gcs-ready", "volumeMounts": ray.get("volumeMounts", [])}
            if "securityContext" in ray:
                init["securityContext"] = ray["securityContext"]
            yield f"{where}/wait-gcs-ready", spec, init
    for cluster in cluster_specs(doc):
        if cluster.get("enableInTreeAutoscaling"):
            options = cluster.get("autoscalerOptions") or {}
            sidecar = {"name": "autoscaler", "volumeMounts": options.get("volumeMounts", [])}
            if "securityContext" in options:
                sidecar["securityContext"] = options["securityContext"]
            yield "autoscaler", cluster["headGroupSpec"]["template"]["spec"], sidecar
    if doc["kind"] == "RayJob" and "submitterPodTemplate" not in doc["spec"]:
        yield "submitter (KubeRay's default)", {}, {"name": "ray-job-submitter"}


def restricted_errors(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """What Pod Security Standards "restricted" (Kubernetes 1.34) rejects in one container of a
    pod, the pod-level securityContext taken into account."""
    pod_sc, sc = pod.get("securityContext") or {}, container.get("securityContext") or {}
    errors = []
    if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
        errors.append("runAsNonRoot is not true")
    if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
        errors.append("runAsUser 0")
    if sc.get("allowPrivilegeEscalation") is not False:
        errors.append("allowPrivilegeEscalation is not false")
    if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
        errors.append("capabilities do not drop ALL")
    if set((sc.get("capabilities") or {}).get("add", [])) - {"NET_BIND_SERVICE"}:
        errors.append("capabilities added")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        errors.append("no seccompProfile RuntimeDefault or Localhost")
    return errors
