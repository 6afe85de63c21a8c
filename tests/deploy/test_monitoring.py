"""deploy/k8s/components/monitoring: the ServiceMonitor scrapes the admin port, the alerts
pass ``promtool check rules`` and their unit tests (``promtool test rules``), every alert and
panel is grouped by namespace and job, links to its runbook with an absolute address, and
uses only metrics the gateway exports; the documented monitoring settings apply."""

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.registry import CollectorRegistry

from gateway.observability.metrics import Metrics
from tests.deploy.test_k8s_manifests import K8S, ROOT, admin_routes, objects, one, selects
from tests.support.kustomize import render
from tests.support.promtool import run_promtool

COMPONENT = K8S / "components" / "monitoring"
UNIT_TESTS = Path(__file__).parent / "promtool" / "alerts.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
#: where the runbook links point until an overlay sets its own copy's address
RUNBOOK_BASE = "https://github.com/example/agent-gateway/blob/main/docs/operations.md"
GROUPING = {"namespace", "job"}


def exported_names() -> set[str]:
    """Every series name the gateway can export (labelled families have no samples
    until first use, so names are derived from the family type)."""
    registry: CollectorRegistry = Metrics(process=True).registry
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    names = {"up"}
    for family in registry.collect():
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names


METRIC_NAME = re.compile(r"\b((?:gateway|process)_[a-z0-9_]+|up)\b(?=\s*[{\[),])")
AGGREGATION = re.compile(
    r"\b(sum|min|max|avg|count|group|stddev|stdvar|topk|bottomk|quantile)\s*"
    r"(?:(by|without)\s*\(([^)]*)\))?\s*\("
)


def referenced_metrics(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


def rules() -> list[dict[str, Any]]:
    """Every rule (alerting or recording) of the rendered PrometheusRule."""
    rule = one(objects("prod"), "PrometheusRule", "agent-gateway")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def dashboard() -> dict[str, Any]:
    dashboard_map = one(objects("prod"), "ConfigMap", "agent-gateway-dashboard")
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    return dict(json.loads(dashboard_map["data"]["agent-gateway.json"]))


def panel_queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


# -- promtool ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rendered PrometheusRule's groups as a Prometheus rule file, with the unit tests."""
    path = tmp_path_factory.mktemp("promtool")
    rule = one(objects("prod"), "PrometheusRule", "agent-gateway")
    (path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(UNIT_TESTS, path / UNIT_TESTS.name)
    return path


def test_ci_installs_promtool() -> None:
    """The promtool tests skip where it is missing: CI must never be such a place."""
    assert (
        "command -v promtool >/dev/null 2>&1 || packages+=(prometheus)"
        in (ROOT / ".ci" / "run").read_text()
    )


def test_promtool_accepts_the_rules(rules_dir: Path) -> None:
    result = run_promtool("check", "rules", "rules.yaml", cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_the_alerts_pass_their_promtool_unit_tests(rules_dir: Path) -> None:
    result = run_promtool("test", "rules", UNIT_TESTS.name, cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_unit_tests_where_it_fires_and_where_it_must_not() -> None:
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for alert in alerts():
        name = alert["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no case where it stays silent"
        fired = [a for c in mine for a in c["exp_alerts"]]
        assert fired, f"{name}: no case where it fires"
        for expected in fired:
            assert set(expected["exp_labels"]) >= alert_grouping(alert) | {"severity"}, name
            assert set(expected["exp_annotations"]) == set(alert["annotations"]), name


def alert_grouping(alert: dict[str, Any]) -> set[str]:
    """The labels an alert must carry: namespace and job, or job alone when it reports
    that the job has no target anywhere."""
    return {"job"} if alert["expr"].strip().startswith("absent(") else GROUPING


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    variables = {"$__rate_interval": "5m", "$namespace": "shop", "$job": "agent-gateway"}
    records = []
    for number, expr in enumerate(panel_queries()):
        for variable, value in variables.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        records.append({"record": f"dashboard_query_{number}", "expr": expr})
    (tmp_path / "panels.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "panels", "rules": records}]})
    )
    result = run_promtool("check", "rules", "panels.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the objects ---------------------------------------------------------------------------
def test_service_monitor_scrapes_the_admin_service() -> None:
    objs = objects("prod")
    monitor = one(objs, "ServiceMonitor", "agent-gateway")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    admin = one(objs, "Service", "agent-gateway-admin")
    assert selects(monitor["spec"]["selector"]["matchLabels"], admin["metadata"]["labels"])
    public = one(objs, "Service", "agent-gateway")
    assert not selects(monitor["spec"]["selector"]["matchLabels"], public["metadata"]["labels"])
    port_names = {p["name"] for p in admin["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
        assert endpoint["path"] in admin_routes()
    # the job label the alerts and dashboard use
    job_label = monitor["spec"]["jobLabel"]
    assert admin["metadata"]["labels"][job_label] == "agent-gateway"


def test_operator_objects_carry_the_release_label() -> None:
    objs = objects("prod")
    for kind in ("ServiceMonitor", "PrometheusRule"):
        labels = one(objs, kind, "agent-gateway")["metadata"]["labels"]
        assert labels["release"] == "kube-prometheus-stack", kind


def test_alerts_are_well_formed_and_use_real_metrics() -> None:
    anchors = heading_anchors(OPERATIONS.read_text())
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names))
    for required in (
        "AgentGatewayRateLimitSurge",
        "AgentGatewaySuspiciousReuseSurge",
        "AgentGatewayUpstreamErrors",
        "AgentGatewayStoreErrors",
        "AgentGatewayStoreFailOpen",
        "AgentGatewayDown",
    ):
        assert required in names
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert set(alert["annotations"]) == {"summary", "description", "runbook_url"}, name
        url = alert["annotations"]["runbook_url"]
        assert url == f"{RUNBOOK_BASE}#{name.lower()}", url
        assert name.lower() in anchors, f"{name}: no section in docs/operations.md"
        assert alert["expr"].count("(") == alert["expr"].count(")")


def test_every_rule_uses_only_metrics_the_gateway_exports() -> None:
    exported = exported_names()
    for rule in rules():
        used = referenced_metrics(rule["expr"])
        assert used and used <= exported, (rule.get("alert", rule.get("record")), used - exported)


def test_every_alert_is_grouped_by_namespace_and_job() -> None:
    for alert in alerts():
        name, expr = alert["alert"], alert["expr"]
        if alert_grouping(alert) != GROUPING:
            # absent() knows only the matchers' labels: the job, stated on the rule too
            assert alert["labels"]["job"] == "agent-gateway", name
            continue
        aggregations = AGGREGATION.findall(expr)
        assert aggregations, name
        for operator, clause, labels in aggregations:
            grouped = {label.strip() for label in labels.split(",")}
            assert clause == "by" and grouped >= GROUPING, (name, operator, clause, labels)


# -- the dashboard -------------------------------------------------------------------------
def test_grafana_dashboard_uses_real_metrics() -> None:
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exported = exported_names()
    queries = panel_queries() + [
        v["query"]["query"] for v in variables().values() if v["type"] == "query"
    ]
    assert len(queries) >= 20
    for expr in queries:
        used = referenced_metrics(expr)
        assert used and used <= exported, (expr, used - exported)


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def test_dashboard_variables_filter_every_panel() -> None:
    found = variables()
    assert found["datasource"]["type"] == "datasource"
    assert found["datasource"]["query"] == "prometheus"
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    for name in ("job", "namespace"):
        assert found[name]["type"] == "query" and found[name]["datasource"] == datasource
    assert found["job"]["current"]["value"] == "agent-gateway"
    assert '{job="$job"}' in found["namespace"]["query"]["query"]
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == datasource, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == datasource, panel["title"]
            for metric in METRIC_NAME.finditer(target["expr"]):
                selector = re.match(r"\{([^}]*)\}", target["expr"][metric.end() :])
                assert selector, (panel["title"], metric.group(1), "no label matchers")
                matchers = set(selector.group(1).split(","))
                assert {'namespace="$namespace"', 'job="$job"'} <= matchers, panel["title"]


def test_every_metric_is_on_the_dashboard_and_documented() -> None:
    text = (COMPONENT / "grafana-dashboard.json").read_text()
    docs = (ROOT / "docs" / "metrics.md").read_text()
    registry = Metrics().registry
    for family in registry.collect():
        if family.name == "gateway_build_info":
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in docs, f"{name} is not in docs/metrics.md"
        assert family.name in json.dumps(json.loads(text)), f"{family.name}: no panel"


# -- the documented settings ---------------------------------------------------------------
def documented_settings() -> list[dict[str, Any]]:
    """The ``patches`` block of docs/operations.md's "Monitoring settings"."""
    section = OPERATIONS.read_text().split("### Monitoring settings", 1)[1].split("\n#", 1)[0]
    block = re.search(r"```yaml\n(patches:.*?)```", section, re.DOTALL)
    assert block, "no patches block in docs/operations.md, Monitoring settings"
    return list(yaml.safe_load(block.group(1))["patches"])


def test_the_documented_monitoring_settings_apply(tmp_path: Path) -> None:
    patches = documented_settings()
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes relative paths only
                "resources": [os.path.relpath(K8S / "overlays" / "prod", tmp_path)],
                "patches": patches,
            }
        )
    )
    objs = {(o["kind"], o["metadata"]["name"]): o for o in render(tmp_path)}
    values = {op["value"] for p in patches for op in yaml.safe_load(p["patch"])}
    for kind in ("ServiceMonitor", "PrometheusRule"):
        release = objs[(kind, "agent-gateway")]["metadata"]["labels"]["release"]
        assert release != "kube-prometheus-stack" and release in values, kind
    rule = objs[("PrometheusRule", "agent-gateway")]
    for alert in (r for group in rule["spec"]["groups"] for r in group["rules"]):
        url = alert["annotations"]["runbook_url"]
        assert not url.startswith(RUNBOOK_BASE), f"{alert['alert']}: not in the documented patch"
        assert url.endswith("#" + alert["alert"].lower()), url
