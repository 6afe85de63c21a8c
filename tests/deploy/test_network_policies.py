"""deploy/k8s network settings: every combination of an overlay and the network
components renders, validates, and its NetworkPolicy allows exactly the flows that
combination needs (computed from the rendered policy: nothing more, nothing less)."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from gateway.config import load_config
from tests.deploy.test_k8s_manifests import K8S, K8S_VERSIONS, ROOT, one, pod_spec
from tests.support import kustomize
from tests.support.kustomize import render

Objects = dict[tuple[str, str], dict[str, Any]]
#: (direction, peer, port, protocol)
Flow = tuple[str, str, str, str]

GATEWAY_PODS = "pods:app.kubernetes.io/component=gateway,app.kubernetes.io/name=agent-gateway"
DNS = {
    ("egress", "ns:kube-system&pods:k8s-app=kube-dns", "53", protocol)
    for protocol in ("UDP", "TCP")
}
BUNDLED_REDIS = {
    ("egress", "pods:app.kubernetes.io/name=redis,app.kubernetes.io/part-of=agent-gateway",
     "6379", "TCP")
}  # fmt: skip
IN_CLUSTER_UPSTREAM = {("egress", "pods:app.kubernetes.io/name=chat-backend", "8081", "TCP")}
#: the placeholders the components ship (docs/operations.md tells where to set yours)
REDIS_NETWORK = "cidr:10.0.0.0/8"
REDIS = {
    "redis-external": {("egress", REDIS_NETWORK, port, "TCP") for port in ("6379", "6380")},
    "redis-sentinel": {("egress", REDIS_NETWORK, port, "TCP") for port in ("26379", "6379")},
    "redis-cluster": {("egress", REDIS_NETWORK, "6379", "TCP")},
}
EXTERNAL_UPSTREAM = {("egress", "cidr:203.0.113.0/24", "443", "TCP")}
IDENTITY_PROVIDER = {("egress", "cidr:198.51.100.0/24", "443", "TCP")}


@dataclass(frozen=True)
class Combination:
    overlay: str
    redis: str | None  # a redis-* component, or the overlay's own choice
    external_upstream: bool
    identity_provider: bool
    #: the documented patch that names your ingress controller's and Prometheus's
    #: namespaces and the trusted proxies (docs/operations.md)
    own_namespaces: bool

    @property
    def components(self) -> list[str]:
        names = [self.redis] if self.redis else []
        names += ["upstream-external"] if self.external_upstream else []
        names += ["identity-provider"] if self.identity_provider else []
        return names

    @property
    def name(self) -> str:
        parts = [self.overlay, *self.components]
        return "+".join(parts + (["own-namespaces"] if self.own_namespaces else []))

    def expected(self) -> set[Flow]:
        ingress_ns, monitoring_ns = (
            ("traefik", "observability") if self.own_namespaces else ("ingress-nginx", "monitoring")
        )
        flows = {("ingress", f"ns:{ingress_ns}", "http", "TCP")} | DNS
        if self.overlay == "prod":  # the monitoring component: Prometheus scrapes admin
            flows.add(("ingress", f"ns:{monitoring_ns}", "admin", "TCP"))
        if self.redis:
            flows |= REDIS[self.redis]
        else:
            flows |= BUNDLED_REDIS if self.overlay == "dev" else REDIS["redis-external"]
        flows |= EXTERNAL_UPSTREAM if self.external_upstream else IN_CLUSTER_UPSTREAM
        if self.identity_provider:
            flows |= IDENTITY_PROVIDER
        return flows


COMBINATIONS = [
    Combination(overlay, redis, upstream, idp, own)
    for overlay, redis, upstream, idp, own in itertools.product(
        ("dev", "prod"), (None, *REDIS), (False, True), (False, True), (False, True)
    )
    if not (overlay == "dev" and redis)  # dev bundles its Redis
]


# -- the documented patches ---------------------------------------------------------------
def documented_patch(marker: str) -> list[dict[str, Any]]:
    """The kustomize ``patches`` entries in the YAML block after ``<!-- marker -->`` in
    docs/operations.md, so the test applies what the documentation tells operators."""
    docs = (ROOT / "docs" / "operations.md").read_text()
    found = re.search(rf"<!-- {marker} -->\s*```yaml\n(.*?)```", docs, re.DOTALL)
    assert found, f"docs/operations.md: no YAML block after <!-- {marker} -->"
    return list(yaml.safe_load(found.group(1))["patches"])


def render_combination(combination: Combination, where: Path) -> Objects:
    where.mkdir()
    patches = []
    if combination.own_namespaces:
        patches += documented_patch("patch: ingress namespace")
        if combination.overlay == "prod":
            patches += documented_patch("patch: monitoring namespace")

    def relative(path: Path) -> str:
        return os.path.relpath(path, where)

    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [relative(K8S / "overlays" / combination.overlay)],
        "components": [relative(K8S / "components" / c) for c in combination.components],
        "patches": patches,
    }
    (where / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return {(o["kind"], o["metadata"]["name"]): o for o in render(where)}


# -- the flows a policy allows ------------------------------------------------------------
def peer_name(peer: dict[str, Any]) -> str:
    def labels(selector: dict[str, Any]) -> str:
        assert set(selector) <= {"matchLabels"}, selector  # no matchExpressions here
        return ",".join(f"{k}={v}" for k, v in sorted(selector.get("matchLabels", {}).items()))

    if "ipBlock" in peer:
        block = peer["ipBlock"]
        excepted = "".join(f"-{e}" for e in block.get("except", []))
        return f"cidr:{block['cidr']}{excepted}"
    parts = []
    if "namespaceSelector" in peer:
        selector = peer["namespaceSelector"]
        names = selector.get("matchLabels", {})
        if set(names) == {"kubernetes.io/metadata.name"}:
            parts.append(f"ns:{names['kubernetes.io/metadata.name']}")
        else:
            parts.append(f"ns:{labels(selector) or '*'}")
    if "podSelector" in peer:
        parts.append(f"pods:{labels(peer['podSelector']) or '*'}")
    return "&".join(parts)


def allowed_flows(policy: dict[str, Any]) -> set[Flow]:
    """Every (direction, peer, port, protocol) the policy allows; a rule without peers
    or without ports allows any (``*``), which shows up as such."""
    flows: set[Flow] = set()
    for direction, side in (("ingress", "from"), ("egress", "to")):
        for rule in policy["spec"].get(direction, []):
            peers = [peer_name(p) for p in rule.get(side, [])] or ["*"]
            ports = [
                (str(p.get("port", "*")), p.get("protocol", "TCP")) for p in rule.get("ports", [])
            ] or [("*", "*")]
            for peer, (port, protocol) in itertools.product(peers, ports):
                assert "endPort" not in rule, "port ranges: say which flows they are for"
                flows.add((direction, peer, port, protocol))
    return flows


def test_allowed_flows_sees_everything_a_rule_opens() -> None:
    policy = {
        "spec": {
            "ingress": [{"ports": [{"port": 80}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}],
        }
    }
    assert allowed_flows(policy) == {
        ("ingress", "*", "80", "TCP"),
        ("egress", "cidr:0.0.0.0/0-10.0.0.0/8", "*", "*"),
    }


# -- each combination ---------------------------------------------------------------------
@pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda c: c.name)
def test_each_combination_allows_exactly_the_flows_it_needs(
    combination: Combination, tmp_path: Path
) -> None:
    objs = render_combination(combination, tmp_path / "overlay")
    policy = one(objs, "NetworkPolicy", "agent-gateway")
    assert peer_name({"podSelector": policy["spec"]["podSelector"]}) == GATEWAY_PODS
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert allowed_flows(policy) == combination.expected()
    for obj in objs.values():
        if not obj["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)

    # the upstream the gateway calls is the one the policy lets it reach
    deployment = one(objs, "Deployment", "agent-gateway")
    container = pod_spec(deployment)["containers"][0]
    environ = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    environ["GATEWAY__STORE__URL"] = "redis://redis:6379/0"  # from a Secret
    config_path = tmp_path / "config.yaml"
    config_path.write_text(one(objs, "ConfigMap", "agent-gateway-config")["data"]["config.yaml"])
    config = load_config(config_path, environ=environ)
    upstream = urlsplit(str(config.upstream.url))
    port = upstream.port or {"http": 80, "https": 443}[upstream.scheme]
    to_upstream = IN_CLUSTER_UPSTREAM if not combination.external_upstream else EXTERNAL_UPSTREAM
    assert {flow[2] for flow in to_upstream} == {str(port)}
    if combination.own_namespaces:  # the documented trusted proxies replace the base's
        assert [str(n) for n in config.server.trusted_proxies] == ["10.42.0.0/16"]


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_fallback_renderer_agrees_on_the_combinations(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kustomize.kubectl() is None:
        pytest.skip("kubectl is not installed: nothing to compare with")
    redis = "redis-sentinel" if overlay == "prod" else None
    combination = Combination(overlay, redis, True, True, True)
    theirs = render_combination(combination, tmp_path / "kubectl")
    monkeypatch.setattr(kustomize, "kubectl", lambda: None)
    assert render_combination(combination, tmp_path / "fallback") == theirs


def test_the_components_exist_and_document_themselves() -> None:
    docs = (ROOT / "docs" / "operations.md").read_text()
    for name in ("redis-external", "redis-sentinel", "redis-cluster", "upstream-external",
                 "identity-provider"):  # fmt: skip
        text = (K8S / "components" / name / "kustomization.yaml").read_text()
        assert text.startswith("# ") and "kind: Component" in text
        assert f"components/{name}" in docs, f"{name}: not in docs/operations.md"
