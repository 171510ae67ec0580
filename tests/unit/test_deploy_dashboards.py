"""The Grafana dashboard and the Prometheus scrape example chart metrics the engine really exports.

Ray exports a ``ray.util.metrics`` metric named ``x`` as ``ray_x`` (gauges), ``ray_x_total``
(counters) and ``ray_x_bucket|_sum|_count`` (histograms) — checked against a live Ray 2.60
node's ``/metrics`` while writing this. The engine's metric definitions are read from its
source, so a renamed metric breaks this test rather than the dashboard.
"""

from __future__ import annotations

import json
import re

import pytest
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
    # The capture heartbeat (engine/sync/supervisor.py), tags pipeline, node.
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


# --- alerts ---------------------------------------------------------------------------------------

RULES = ROOT / "dashboards" / "prometheus-rules.yaml"


def _alerts() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def _selectors(expr: str) -> list[tuple[str, dict[str, str], bool]]:
    """(metric, {label: value of an = matcher}, inside absent()) of every series an expression
    reads, from PromQL's own grammar (promql-parser); a syntax error raises."""
    import promql_parser as pp

    found: list[tuple[str, dict[str, str], bool]] = []

    def walk(node, in_absent: bool) -> None:
        if isinstance(node, pp.VectorSelector):
            labels = {m.name: m.value for m in node.matchers.matchers if m.op == pp.MatchOp.Equal}
            found.append((node.name, labels, in_absent))
        elif isinstance(node, pp.MatrixSelector):
            walk(node.vector_selector, in_absent)
        elif isinstance(node, pp.Call):
            for arg in node.args:
                walk(arg, in_absent or node.func.name == "absent")
        elif isinstance(node, pp.BinaryExpr):
            walk(node.lhs, in_absent)
            walk(node.rhs, in_absent)
        elif isinstance(node, pp.AggregateExpr | pp.ParenExpr | pp.UnaryExpr | pp.SubqueryExpr):
            walk(node.expr, in_absent)

    walk(pp.parse(expr), False)
    return found


def _ray_actor_classes() -> dict[str, str]:
    """{module path below engine/, dots for slashes: class} of every Ray actor class the
    engine defines (@ray.remote)."""
    found = {}
    for path in (ROOT / "engine").rglob("*.py"):
        for name in re.findall(r"^@ray\.remote[^\n]*\nclass (\w+)", path.read_text(), re.M):
            found[".".join(path.relative_to(ROOT / "engine").with_suffix("").parts)] = name
    return found


def _ray_actor_states() -> set[str]:
    """The actor states Ray's ``ray_actors`` metric reports (its State label)."""
    import typing

    from ray.util.state.common import ActorState

    return set(typing.get_args(typing.get_type_hints(ActorState)["state"]))


def test_alert_rules_read_only_series_that_exist_and_are_complete():
    """Every series an alert reads is one the engine exports (read from its source) or Ray's
    ``ray_actors`` about one of the engine's actor classes in a state Ray reports."""
    known = exported_names()
    classes, states = set(_ray_actor_classes().values()), _ray_actor_states()
    alerts = _alerts()
    for name, rule in alerts.items():
        selectors = _selectors(rule["expr"])
        assert selectors, name
        for metric, labels, _ in selectors:
            if metric == "ray_actors":
                assert labels.get("Name") in classes and labels.get("State") in states, (name, labels)
            else:
                assert metric in known, (name, metric)
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        # rate()/increase()/delta() on the right kind: counters for rate/increase, gauges for delta.
        for fn, metric in re.findall(r"\b(rate|increase|delta|deriv)\((ray_c2pg_[a-z0-9_]+)", rule["expr"]):
            assert metric.endswith("_total") == (fn in ("rate", "increase")), (name, fn, metric)


def _reads(rule: dict) -> set[tuple[str, str, str, bool]]:
    return {(m, labels.get("Name", ""), labels.get("State", ""), absent)
            for m, labels, absent in _selectors(rule["expr"])}


def test_alerts_cover_what_an_operator_must_hear_about():
    """One alert per failure an operator must act on, recognised by what it reads: growing
    consumer lag, dead letters, reconcile drift, sync workers restarting, no sync supervisor,
    sync paused (not applying) too long, stalled capture."""
    alerts = _alerts()
    actors = _ray_actor_classes()
    worker, supervisor = actors["sync.worker"], actors["sync.supervisor"]

    def find(test) -> list[str]:
        return [n for n, r in alerts.items() if test(r, _reads(r))]

    assert find(lambda r, s: any(m == "ray_c2pg_sync_lag" for m, *_ in s) and "delta(ray_c2pg_sync_lag" in r["expr"])
    assert find(lambda r, s: any(m == "ray_c2pg_sync_dead_letters_total" for m, *_ in s))
    assert find(lambda r, s: any(m == "ray_c2pg_reconcile_drift_rows" for m, *_ in s))
    assert find(lambda r, s: ("ray_actors", worker, "RESTARTING", False) in s)
    assert find(lambda r, s: ("ray_actors", supervisor, "ALIVE", True) in s)
    assert find(lambda r, s: {m for m, *_ in s} >= {"ray_c2pg_sync_lag", "ray_c2pg_sync_events_total"})
    assert "ray_c2pg_capture_stalled" in alerts["C2pgCaptureStalled"]["expr"]
    assert {"C2pgCaptureStalled", "C2pgCaptureDelayHigh"} <= set(alerts)


def test_a_broken_alert_fails():
    """The checks above catch a typo in a metric, an actor class, a state, or the syntax."""
    import promql_parser as pp

    known = exported_names()
    assert "ray_c2pg_sync_dead_letter_total" not in known
    assert "PartitionWorkers" not in _ray_actor_classes().values()
    assert "RESTARTED" not in _ray_actor_states()
    with pytest.raises(Exception):  # noqa: B017 - the binding raises its own parse error type
        pp.parse("sum by (table (ray_c2pg_sync_lag)")


# --- the Prometheus operator's objects ------------------------------------------------------------


def test_prometheusrule_is_the_rule_file_for_the_documented_prometheus():
    from tests.unit.deploy_validation import manifest_errors

    (rule,) = load_documents(ROOT / "dashboards" / "prometheusrule.yaml")
    assert manifest_errors(rule) == []
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    # kube-prometheus-stack's Prometheus loads the rules and monitors labelled with its release.
    release = _release()
    assert rule["metadata"]["labels"]["release"] == release


def _release() -> str:
    ops = (ROOT / "docs" / "operations.md").read_text()
    return re.search(r"helm install (\S+) prometheus-community/kube-prometheus-stack", ops).group(1)


def test_podmonitor_scrapes_every_ray_pod_on_its_metrics_port():
    from tests.unit.deploy_validation import load_documents as docs
    from tests.unit.deploy_validation import manifest_errors, pod_templates

    (monitor,) = load_documents(ROOT / "dashboards" / "podmonitor.yaml")
    assert manifest_errors(monitor) == []
    typo = json.loads(json.dumps(monitor))
    typo["spec"]["podMetricsEndpoint"] = typo["spec"].pop("podMetricsEndpoints")
    assert manifest_errors(typo), "the operator's CRD schema, made strict, catches a typo"
    assert monitor["metadata"]["labels"]["release"] == _release()
    spec = monitor["spec"]
    (endpoint,) = spec["podMetricsEndpoints"]
    # KubeRay labels every Ray pod ray.io/is-ray-node=yes; every Ray pod template of the
    # manifests declares the port by the name the monitor scrapes.
    assert spec["selector"] == {"matchLabels": {"ray.io/is-ray-node": "yes"}}
    for path in sorted((ROOT / "kuberay").glob("ray*.yaml")):
        for doc in docs(path):
            assert spec["namespaceSelector"]["matchNames"] == [doc["metadata"]["namespace"]]
            for where, template in pod_templates(doc):
                if where == "spec.submitterPodTemplate":
                    continue
                ports = template["spec"]["containers"][0]["ports"]
                assert {"containerPort": 8080, "name": endpoint["port"]} in ports, (path.name, where)
