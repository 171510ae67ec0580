"""The Grafana dashboard and the Prometheus scrape example chart metrics the engine really exports.

Ray exports a ``ray.util.metrics`` metric named ``x`` as ``ray_x`` (gauges), ``ray_x_total``
(counters) and ``ray_x_bucket|_sum|_count`` (histograms) — checked against a live Ray 2.60
node's ``/metrics`` while writing this. The engine's metric definitions are read from its
source, so a renamed metric breaks this test rather than the dashboard.
"""

from __future__ import annotations

import json
import re

import yaml

from tests.unit.deploy_validation import ROOT, load_documents

DASHBOARD = ROOT / "dashboards" / "c2pg.json"
SCRAPE = ROOT / "dashboards" / "prometheus-scrape.yaml"
_DEFINITION = re.compile(r"\b(Counter|Gauge|Histogram)\(\s*\"(c2pg_[a-z0-9_]+)\"")
_SUFFIXES = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count")}


def engine_metrics() -> dict[str, str]:
    """{metric name: kind} for every ray.util.metrics metric defined under engine/, jobs/, serve_app/."""
    found: dict[str, str] = {}
    for folder in ("engine", "jobs", "serve_app"):
        for path in (ROOT / folder).rglob("*.py"):
            for kind, name in _DEFINITION.findall(path.read_text()):
                found[name] = kind
    return found


def exported_names() -> dict[str, str]:
    """{name as Prometheus sees it: engine metric}."""
    return {f"ray_{name}{suffix}": name
            for name, kind in engine_metrics().items() for suffix in _SUFFIXES[kind]}


def _queries(dashboard: dict) -> list[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            queries.append(var["definition"])
    return queries


def test_the_engine_defines_the_metrics_the_docs_promise():
    metrics = engine_metrics()
    for name in ("c2pg_sync_events", "c2pg_sync_rows_applied", "c2pg_sync_dead_letters",
                 "c2pg_sync_apply_seconds", "c2pg_sync_batch_events", "c2pg_sync_lag",
                 "c2pg_sync_delay_seconds"):
        assert name in metrics, name
    # Exported by the reconcile job (engine/reconcile.py), tags pipeline, table, kind.
    assert metrics.get("c2pg_reconcile_drift_rows") == "Gauge"
    # The capture heartbeat (engine/sync_supervisor.py), tags pipeline, node.
    for name in ("c2pg_capture_delay_seconds", "c2pg_capture_transit_seconds", "c2pg_capture_stalled"):
        assert metrics.get(name) == "Gauge", name


def test_every_metric_the_dashboard_queries_is_one_the_engine_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported_names()
    used = {m for q in _queries(dashboard) for m in re.findall(r"\bray_c2pg_[a-z0-9_]+", q)}
    assert used, "the dashboard queries c2pg's metrics"
    assert used <= set(known), f"not exported by the engine: {sorted(used - set(known))}"
    # ... and it charts each of them: events/s, lag, latency, dead letters, drift, delay, batches.
    assert {known[m] for m in used} == set(engine_metrics())


def test_dashboard_panels_are_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("events", "lag", "latency", "dead letters", "drift", "capture"):
        assert topic in titles, topic
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            # rate()/increase() only on counters and histogram series; gauges are read as they are.
            for fn, name in re.findall(r"\b(rate|increase)\((ray_c2pg_[a-z0-9_]+)", expr):
                assert name.endswith(("_total", "_bucket", "_sum", "_count")), (fn, name)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "pipeline", "table"} <= variables


def test_grafana_configmap_holds_the_dashboard():
    (cm,) = load_documents(ROOT / "dashboards" / "grafana-dashboard-configmap.yaml")
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["c2pg.json"]) == json.loads(DASHBOARD.read_text())


def test_prometheus_scrape_example_targets_the_ray_metrics_port():
    config = yaml.safe_load(SCRAPE.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    pods = jobs["c2pg-ray-pods"]
    keep = {r["source_labels"][0]: r["regex"] for r in pods["relabel_configs"] if r.get("action") == "keep"}
    assert keep["__meta_kubernetes_pod_label_ray_io_is_ray_node"] == "yes"
    port_name = keep["__meta_kubernetes_pod_container_port_name"]
    # Every Ray pod template declares that port (8080, KubeRay's default metrics export port).
    for name in ("raycluster.yaml", "rayservice.yaml"):
        (doc,) = load_documents(ROOT / "kuberay" / name)
        spec = doc["spec"].get("rayClusterConfig", doc["spec"])
        for template in [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]:
            ports = template["spec"]["containers"][0]["ports"]
            assert {"containerPort": 8080, "name": port_name} in ports
    files = jobs["c2pg-ray-nodes"]["file_sd_configs"][0]["files"]
    from ray._private import ray_constants

    assert files == [f"/tmp/ray/{ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE}"]


def test_alert_rules_use_exported_metrics_and_are_complete():
    rules_file = ROOT / "dashboards" / "prometheus-rules.yaml"
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    known = exported_names()
    alerts = {r["alert"]: r for g in groups for r in g["rules"]}
    assert {"C2pgCaptureStalled", "C2pgCaptureDelayHigh"} <= set(alerts)
    for name, rule in alerts.items():
        used = set(re.findall(r"\bray_c2pg_[a-z0-9_]+", rule["expr"]))
        assert used and used <= set(known), (name, used - set(known))
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
    assert "ray_c2pg_capture_stalled" in alerts["C2pgCaptureStalled"]["expr"]
