"""deploy/k8s/examples: the public entry in front of the gateway. The Ingress is valid
against the Kubernetes schemas and keeps streams flowing; the Gateway API objects (no
schema offline) are checked for the fields the API requires; both send traffic to the
rendered public Service over TLS."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.test_k8s_manifests import K8S, K8S_VERSIONS, ROOT, gateway_config, objects, one

EXAMPLES = K8S / "examples"
NGINX = "nginx.ingress.kubernetes.io/"
#: Gateway API's Duration (GEP-2257)
DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def public_service() -> dict[str, Any]:
    return one(objects("prod"), "Service", "agent-gateway")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_ingress_is_valid(version: str) -> None:
    (ingress,) = documents("ingress-nginx.yaml")
    kubernetes_validate.validate(ingress, version, strict=True)


def test_the_ingress_terminates_tls_and_lets_streams_through(tmp_path: Path) -> None:
    (ingress,) = documents("ingress-nginx.yaml")
    spec = ingress["spec"]
    hosts = {rule["host"] for rule in spec["rules"]}
    assert hosts <= {h for tls in spec["tls"] for h in tls["hosts"]}, "every host over TLS"
    annotations = ingress["metadata"]["annotations"]
    assert annotations[NGINX + "proxy-buffering"] == "off"
    assert annotations[NGINX + "force-ssl-redirect"] == "true"
    timeouts = gateway_config(objects("prod"), tmp_path).upstream.timeouts
    longest_wait = max(timeouts.read, timeouts.stream_idle)
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[NGINX + name]) > longest_wait, name
    service = public_service()
    assert ingress["metadata"]["namespace"] == service["metadata"]["namespace"]
    ports = {p["name"] for p in service["spec"]["ports"]}
    for rule in spec["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in ports
    docs = (ROOT / "docs" / "operations.md").read_text()
    for annotation in annotations:
        assert f"`{annotation.removeprefix(NGINX)}`" in docs, f"{annotation}: not documented"


def required(obj: dict[str, Any], *fields: str) -> None:
    for field in fields:
        assert obj.get(field) not in (None, "", [], {}), f"{field} is required: {obj}"


def seconds_of(duration: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|h|m|s)", duration))


def test_the_gateway_api_route_is_well_formed(tmp_path: Path) -> None:
    stream_max = gateway_config(objects("prod"), tmp_path).upstream.timeouts.stream_max
    docs = {d["kind"]: d for d in documents("gateway-api.yaml")}
    assert set(docs) == {"Gateway", "HTTPRoute"}
    for obj in docs.values():
        assert obj["apiVersion"] == "gateway.networking.k8s.io/v1"
        required(obj["metadata"], "name", "namespace")
        required(obj, "spec")

    gateway = docs["Gateway"]
    required(gateway["spec"], "gatewayClassName", "listeners")
    listeners = {listener["name"]: listener for listener in gateway["spec"]["listeners"]}
    for listener in listeners.values():
        required(listener, "name", "protocol", "port")
        assert listener["protocol"] == "HTTPS", "TLS is terminated at the Gateway"
        assert listener["tls"]["mode"] == "Terminate"
        required(listener["tls"], "certificateRefs")
        assert HOSTNAME.match(listener["hostname"])

    route = docs["HTTPRoute"]
    service = public_service()
    assert route["metadata"]["namespace"] == service["metadata"]["namespace"]
    required(route["spec"], "parentRefs", "rules")
    for parent in route["spec"]["parentRefs"]:
        assert parent["name"] == gateway["metadata"]["name"]
        assert (
            parent.get("namespace", route["metadata"]["namespace"])
            == (gateway["metadata"]["namespace"])
        )
        assert parent["sectionName"] in listeners
    allowed = listeners[route["spec"]["parentRefs"][0]["sectionName"]]["allowedRoutes"]
    selector = allowed["namespaces"]["selector"]["matchLabels"]
    assert selector == {"kubernetes.io/metadata.name": route["metadata"]["namespace"]}
    for hostname in route["spec"]["hostnames"]:
        assert HOSTNAME.match(hostname)
    ports = {p["port"] for p in service["spec"]["ports"]}
    for rule in route["spec"]["rules"]:
        required(rule, "backendRefs")
        for backend in rule["backendRefs"]:
            assert backend.get("kind", "Service") == "Service"
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"] in ports
        for match in rule.get("matches", []):
            assert match["path"]["type"] in ("Exact", "PathPrefix", "RegularExpression")
            assert match["path"]["value"].startswith("/")
        # the gateway ends an overlong stream itself (stream_max), before the proxy cuts it
        for name, value in rule.get("timeouts", {}).items():
            assert name in ("request", "backendRequest") and DURATION.match(value)
            seconds = seconds_of(value)
            assert seconds == 0 or seconds > stream_max, f"timeouts.{name} cuts long streams"
