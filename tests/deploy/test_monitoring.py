"""deploy/k8s/components/monitoring: the ServiceMonitor scrapes the admin service, the
alerts and the dashboard use only metrics the gateway exports."""

import re

from prometheus_client.registry import CollectorRegistry

from gateway.observability.metrics import Metrics
from tests.deploy.test_k8s_manifests import K8S, ROOT, admin_routes, objects, one, selects


# -- monitoring ---------------------------------------------------------------------------
def exported_names() -> set[str]:
    """Every series name the gateway can export (labelled families have no samples
    until first use, so names are derived from the family type)."""
    registry: CollectorRegistry = Metrics(process=True).registry
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    names = {"up"}
    for family in registry.collect():
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names


METRIC_NAME = re.compile(r"\b((?:gateway|process)_[a-z0-9_]+|up)\b(?=\s*[{\[)])")


def referenced_metrics(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


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


def test_alerts_are_well_formed_and_use_real_metrics() -> None:
    rule = one(objects("prod"), "PrometheusRule", "agent-gateway")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    exported = exported_names()
    docs = (ROOT / "docs" / "operations.md").read_text().lower()
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names))
    for required in (
        "AgentGatewayRateLimitSurge",
        "AgentGatewaySuspiciousReuseSurge",
        "AgentGatewayUpstreamErrors",
        "AgentGatewayStoreErrors",
        "AgentGatewayStoreFailOpen",
    ):
        assert required in names
    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description", "runbook"} <= set(alert["annotations"])
        anchor = alert["annotations"]["runbook"].split("#")[1]
        assert f"### {alert['alert'].lower()}" in docs, f"{anchor}: no section in operations.md"
        used = referenced_metrics(alert["expr"])
        assert used and used <= exported, used - exported
        assert alert["expr"].count("(") == alert["expr"].count(")")


def test_grafana_dashboard_uses_real_metrics() -> None:
    import json

    dashboard_map = one(objects("prod"), "ConfigMap", "agent-gateway-dashboard")
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["agent-gateway.json"])
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exported = exported_names()
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert len(exprs) >= 20
    for expr in exprs:
        used = referenced_metrics(expr)
        assert used and used <= exported, (expr, used - exported)


def test_every_metric_is_on_the_dashboard_and_documented() -> None:
    import json

    dashboard = (K8S / "components" / "monitoring" / "grafana-dashboard.json").read_text()
    docs = (ROOT / "docs" / "metrics.md").read_text()
    registry = Metrics().registry
    for family in registry.collect():
        if family.name == "gateway_build_info":
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in docs, f"{name} is not in docs/metrics.md"
        assert family.name in json.dumps(json.loads(dashboard)), f"{family.name}: no panel"
