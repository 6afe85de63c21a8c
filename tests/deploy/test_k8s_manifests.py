"""deploy/k8s: every rendered object is valid offline against the Kubernetes schemas, the
custom resources are well formed, and ports, probes, labels, names and the
configuration agree across files."""

import base64
import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import Config, load_config
from gateway.observability.decision_log import SECRET_ENV, load_secret
from gateway.server import SHUTDOWN_MARGIN_SECONDS
from gateway.web.admin import create_admin_app
from gateway.web.app import create_app
from tests.support.harness import SIGNING_ENV
from tests.support.kustomize import build, kubectl, render
from tests.support.processes import run_cli

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
#: the oldest and newest Kubernetes minor versions the manifests are checked against
K8S_VERSIONS = ("1.29", "1.37")
CRD_GROUPS = ("monitoring.coreos.com/",)
Objects = dict[tuple[str, str], dict[str, Any]]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


_RENDERED: dict[str, Objects] = {}


def objects(name: str) -> Objects:
    if name not in _RENDERED:
        _RENDERED[name] = {
            (o["kind"], o["metadata"]["name"]): o for o in render(K8S / "overlays" / name)
        }
    return _RENDERED[name]


def one(objs: Objects, kind: str, name: str) -> dict[str, Any]:
    """The object named ``name``, or ``name-<content hash>`` for generated ones."""
    pattern = re.compile(re.escape(name) + r"(-[a-z0-9]{10})?")
    found = [o for (k, n), o in objs.items() if k == kind and pattern.fullmatch(n)]
    assert len(found) == 1, (kind, name, list(objs))
    return found[0]


def match_labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["spec"]["selector"]["matchLabels"])


def gateway_config(objs: Objects, tmp_path: Path) -> Config:
    """The rendered ConfigMap's config.yaml, loaded as the pod would load it."""
    data = one(objs, "ConfigMap", "agent-gateway-config")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(data)
    return load_config(path, environ={"GATEWAY__STORE__URL": "redis://redis:6379/0"})


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"])


def container(objs: Objects, deployment: str = "agent-gateway") -> dict[str, Any]:
    return dict(pod_spec(one(objs, "Deployment", deployment))["containers"][0])


def pod_labels(objs: Objects, deployment: str = "agent-gateway") -> dict[str, str]:
    return dict(one(objs, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- schemas ------------------------------------------------------------------------------
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_core_object_is_valid_against_the_kubernetes_schemas(
    overlay: str, version: str
) -> None:
    checked = 0
    for obj in objects(overlay).values():
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 10


def test_the_validator_works_offline_and_catches_mistakes() -> None:
    deployment = copy.deepcopy(one(objects("prod"), "Deployment", "agent-gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_the_fallback_renderer_agrees_with_kubectl(overlay: str) -> None:
    if kubectl() is None:
        pytest.skip(
            "kubectl is not installed: manifests are rendered by tests/support/kustomize.py"
        )
    ours = {(o["kind"], o["metadata"]["name"]): o for o in build(K8S / "overlays" / overlay)}
    assert ours == objects(overlay)


# -- configuration ------------------------------------------------------------------------
def test_the_configmap_config_is_valid_and_fits_the_deployment(
    overlay: str, tmp_path: Path
) -> None:
    objs = objects(overlay)
    config = gateway_config(objs, tmp_path)
    gateway = container(objs)
    assert config.server.host == "0.0.0.0" and config.admin.host == "0.0.0.0"
    assert config.admin.enabled and config.store.type == "redis" and config.keys.type == "redis"
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"http": config.server.port, "admin": config.admin.port}

    mounts = {m["name"]: m for m in gateway["volumeMounts"]}
    assert gateway["args"] == ["serve", "--config", mounts["config"]["mountPath"]]
    assert mounts["config"]["subPath"] == "config.yaml"
    signing = config.tokens.signing_keys_file
    assert signing is not None
    assert signing.parent == Path(mounts["signing-keys"]["mountPath"])
    config_dir = Path(mounts["config"]["mountPath"]).parent
    assert mounts["policies"]["mountPath"] == str(config_dir / "policies")

    volumes = {v["name"]: v for v in pod_spec(one(objs, "Deployment", "agent-gateway"))["volumes"]}
    config_map = volumes["config"]["configMap"]["name"]
    assert config_map != "agent-gateway-config", "config.yaml changes must roll the pods"
    assert (("ConfigMap", config_map)) in objs
    policies = volumes["policies"]["configMap"]["name"]
    assert policies == "agent-gateway-policies", "policy edits must update pods in place"
    assert ("ConfigMap", policies) in objs
    assert signing.name == "keys"  # the key of the signing Secret (see operations.md)
    env = {e["name"]: e for e in gateway["env"]}
    assert env["GATEWAY__STORE__URL"]["valueFrom"]["secretKeyRef"]["key"] == "url"


def pre_stop_seconds(gateway: dict[str, Any]) -> float:
    """How long the container's preStop hook delays the SIGTERM (0 without one): a
    ``sleep`` action, or an ``exec`` of ``sleep N``; any other hook has no known length."""
    hook = gateway.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = " ".join(hook.get("exec", {}).get("command", []))
    found = re.fullmatch(r"(?:\S*/)?(?:sh -c )?(?:\S*/)?sleep (\d+(?:\.\d+)?)", command)
    assert found, f"a preStop hook of unknown length: {hook}"
    return float(found[1])


def shutdown_seconds(deployment: dict[str, Any], tmp_path: Path, objs: Objects) -> float:
    """From the pod's deletion to the gateway's exit at worst: the preStop hook, then
    (gateway/server.py) drain, grace and the shutdown margin, with the configuration the
    pod loads (the mounted config.yaml and the container's literal environment)."""
    spec = pod_spec(deployment)
    gateway = spec["containers"][0]
    data = one(objs, "ConfigMap", "agent-gateway-config")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(data)
    environ = {e["name"]: e["value"] for e in gateway.get("env", []) if "value" in e}
    config = load_config(path, environ={"GATEWAY__STORE__URL": "redis://r:6379/0", **environ})
    server = config.server
    return (
        pre_stop_seconds(gateway)
        + server.drain_seconds
        + server.shutdown_grace_seconds
        + SHUTDOWN_MARGIN_SECONDS
    )


def test_the_termination_grace_covers_the_whole_shutdown(overlay: str, tmp_path: Path) -> None:
    """Past terminationGracePeriodSeconds the kubelet kills the gateway, streams and all."""
    objs = objects(overlay)
    deployment = one(objs, "Deployment", "agent-gateway")
    needed = shutdown_seconds(deployment, tmp_path, objs)
    granted = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert granted >= needed, f"{overlay}: {granted} s granted, {needed:g} s needed"


def test_the_shutdown_budget_counts_a_pre_stop_hook(tmp_path: Path) -> None:
    objs = objects("prod")
    deployment = copy.deepcopy(one(objs, "Deployment", "agent-gateway"))
    before = shutdown_seconds(deployment, tmp_path, objs)
    gateway = pod_spec(deployment)["containers"][0]
    gateway["lifecycle"] = {"preStop": {"sleep": {"seconds": 7}}}
    assert shutdown_seconds(deployment, tmp_path, objs) == before + 7
    gateway["lifecycle"] = {"preStop": {"exec": {"command": ["/bin/sh", "-c", "sleep 3"]}}}
    assert shutdown_seconds(deployment, tmp_path, objs) == before + 3
    gateway["lifecycle"] = {"preStop": {"httpGet": {"path": "/drain", "port": "admin"}}}
    with pytest.raises(AssertionError, match="unknown length"):
        shutdown_seconds(deployment, tmp_path, objs)


def test_secrets_are_generated_for_dev_and_only_referenced_in_prod() -> None:
    for overlay in OVERLAYS:
        objs = objects(overlay)
        spec = pod_spec(one(objs, "Deployment", "agent-gateway"))
        names = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        names |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in spec["containers"][0]["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        present = {n for (k, n) in objs if k == "Secret"}
        if overlay == "dev":
            assert names <= present
            assert set(one(objs, "Secret", "agent-gateway-signing-keys")["data"]) == {"keys"}
            assert set(one(objs, "Secret", "agent-gateway-store")["data"]) == {"url"}
            assert set(one(objs, "Secret", "agent-gateway-decision-log")["data"]) == {"secret"}
        else:
            assert not present, "production secrets never live in git"
            assert names == {
                "agent-gateway-signing-keys",
                "agent-gateway-store",
                "agent-gateway-decision-log",
            }
            docs = (ROOT / "docs" / "operations.md").read_text()
            assert all(name in docs for name in names)


def test_dev_store_url_and_egress_reach_the_bundled_redis(tmp_path: Path) -> None:
    import base64

    objs = objects("dev")
    store = one(objs, "Secret", "agent-gateway-store")
    url = base64.b64decode(store["data"]["url"]).decode()
    redis_service = one(objs, "Service", "redis")
    assert url == f"redis://redis:{redis_service['spec']['ports'][0]['port']}/0"
    redis_pods = pod_labels(objs, "redis")
    assert selects(redis_service["spec"]["selector"], redis_pods)
    egress = one(objs, "NetworkPolicy", "agent-gateway")["spec"]["egress"]
    to_redis = egress_rules_to(egress, redis_pods)
    assert to_redis and to_redis[0]["ports"][0]["port"] == 6379
    # Redis itself accepts the gateway's pods only
    redis_policy = one(objs, "NetworkPolicy", "redis")["spec"]
    assert selects(redis_policy["podSelector"]["matchLabels"], redis_pods)
    sources = redis_policy["ingress"][0]["from"]
    assert [s["podSelector"]["matchLabels"] for s in sources] == [
        match_labels(one(objs, "Deployment", "agent-gateway"))
    ]
    # and the upstream named by the configuration is the reference backend, allowed too
    config = gateway_config(objs, tmp_path)
    backend = one(objs, "Service", "chat-backend")
    assert config.upstream.url == f"http://chat-backend:{backend['spec']['ports'][0]['port']}"
    to_backend = egress_rules_to(egress, pod_labels(objs, "chat-backend"))
    assert to_backend and to_backend[0]["ports"][0]["port"] == backend["spec"]["ports"][0]["port"]


def egress_rules_to(egress: list[dict[str, Any]], labels: dict[str, str]) -> list[Any]:
    """The egress rules whose pod selector picks pods with ``labels``."""
    return [
        rule
        for rule in egress
        for peer in rule["to"]
        if "podSelector" in peer
        and "namespaceSelector" not in peer
        and selects(peer["podSelector"]["matchLabels"], labels)
    ]


def test_the_configmap_policies_pass_gateway_policies_check(overlay: str, tmp_path: Path) -> None:
    objs = objects(overlay)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(one(objs, "ConfigMap", "agent-gateway-config")["data"]["config.yaml"])
    policies = tmp_path / "policies"
    policies.mkdir()
    for name, text in one(objs, "ConfigMap", "agent-gateway-policies")["data"].items():
        (policies / name).write_text(text)
    env = {**SIGNING_ENV, "GATEWAY__STORE__URL": "redis://redis:6379/0"}
    result = run_cli(
        "policies", "check", str(policies), "--strict", "--config", str(config_path), env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_policies_in_the_base_are_the_repository_policies() -> None:
    repository = ROOT / "policies"
    base = K8S / "base" / "policies"
    ours = {p.name: p.read_text() for p in base.glob("*.yaml")}
    theirs = {p.name: p.read_text() for p in repository.glob("*.yaml")}
    assert ours == theirs, "copy policies/*.yaml into deploy/k8s/base/policies/"
    listed = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    generators = {g["name"]: g for g in listed["configMapGenerator"]}
    generator = generators["agent-gateway-policies"]
    assert sorted(generator["files"]) == sorted(f"policies/{name}" for name in theirs)


# -- probes, ports, labels ----------------------------------------------------------------
def admin_routes() -> set[str]:
    app = create_app(
        Config.model_validate({"models": {"demo": {}}, "store": "memory"}), environ=SIGNING_ENV
    )
    return {r.canonical for r in create_admin_app(app).router.resources()}


def test_probes_point_at_the_admin_listener(overlay: str) -> None:
    gateway = container(objects(overlay))
    routes = admin_routes()
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        check = gateway[probe]["httpGet"]
        assert (check["path"], check["port"]) == (path, "admin")
        assert path in routes
    # readiness may wait for the upstream check (connect timeout 2 s) before answering
    assert gateway["readinessProbe"]["timeoutSeconds"] > 2


def test_services_select_the_pods_and_keep_admin_private(overlay: str) -> None:
    objs = objects(overlay)
    labels = pod_labels(objs)
    ports = {p["name"] for p in container(objs)["ports"]}
    public = one(objs, "Service", "agent-gateway")
    admin = one(objs, "Service", "agent-gateway-admin")
    for service in (public, admin):
        assert selects(service["spec"]["selector"], labels)
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]
    assert [p["targetPort"] for p in admin["spec"]["ports"]] == ["admin"]
    assert public["spec"]["type"] == "ClusterIP"

    deployment = one(objs, "Deployment", "agent-gateway")
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    for constraint in pod_spec(deployment)["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == match_labels(deployment)
    assert selects(match_labels(one(objs, "PodDisruptionBudget", "agent-gateway")), labels)
    hpa = one(objs, "HorizontalPodAutoscaler", "agent-gateway")["spec"]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "agent-gateway"}
    assert hpa["scaleTargetRef"] == target
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert hpa["minReplicas"] >= (3 if overlay == "prod" else 1)


def namespace_peer(name: str) -> list[dict[str, Any]]:
    return [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}]


def test_network_policy_admits_the_ingress_controller_and_monitoring_only(
    overlay: str,
) -> None:
    objs = objects(overlay)
    policy = one(objs, "NetworkPolicy", "agent-gateway")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels(objs))
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    # every ingress rule names its peers: no other workload can claim a client address
    # through X-Forwarded-For (the config trusts the proxies' network)
    assert all("from" in rule for rule in policy["ingress"])
    public = [r for r in policy["ingress"] if [p["port"] for p in r["ports"]] == ["http"]]
    assert [r["from"] for r in public] == [namespace_peer("ingress-nginx")]
    admin = [r for r in policy["ingress"] if [p["port"] for p in r["ports"]] == ["admin"]]
    assert [r["from"] for r in admin] == (
        [namespace_peer("monitoring")] if overlay == "prod" else []
    )
    assert len(public) + len(admin) == len(policy["ingress"])
    dns = policy["egress"][0]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}


#: the volume types Pod Security `restricted` allows
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}

SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What in a pod spec the Pod Security Standard `restricted` refuses (the checks of
    Kubernetes' pod-security admission, policy version 1.29 and later)."""
    found: list[str] = []
    pod = spec.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(field)
    unsafe = {s["name"] for s in pod.get("sysctls", [])} - SAFE_SYSCTLS
    if unsafe:
        found.append(f"sysctls {sorted(unsafe)}")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    for c in spec.get("initContainers", []) + spec["containers"]:
        own = c.get("securityContext", {})
        name = c["name"]

        def setting(field: str, own: dict[str, Any] = own) -> Any:
            return own.get(field, pod.get(field))

        if own.get("privileged"):
            found.append(f"{name}: privileged")
        if own.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        if setting("runAsNonRoot") is not True:
            found.append(f"{name}: runAsNonRoot is not true")
        if setting("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = setting("seccompProfile") or {}
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: no seccompProfile RuntimeDefault or Localhost")
        capabilities = own.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities not dropped")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities added")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{name}: hostPort")
        if own.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount")
        selinux = (setting("seLinuxOptions") or {}).get("type", "container_t")
        if selinux not in ("container_t", "container_init_t", "container_kvm_t"):
            found.append(f"{name}: SELinux type {selinux}")
    return found


def test_restricted_check_catches_what_pod_security_refuses() -> None:
    spec = copy.deepcopy(pod_spec(one(objects("prod"), "Deployment", "agent-gateway")))
    assert restricted_violations(spec) == []
    spec["hostNetwork"] = True
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    del spec["securityContext"]["seccompProfile"]
    spec["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]
    spec["securityContext"]["sysctls"] = [{"name": "kernel.msgmax", "value": "1"}]
    assert len(restricted_violations(spec)) == 5
    spec = copy.deepcopy(pod_spec(one(objects("prod"), "Deployment", "agent-gateway")))
    spec["hostUsers"] = False  # user namespaces: allowed
    spec["containers"][0]["securityContext"]["runAsUser"] = 0
    assert restricted_violations(spec) == ["gateway: runAsUser 0"]


def test_every_container_is_locked_down(overlay: str) -> None:
    objs = objects(overlay)
    deployments = [o for (k, _), o in objs.items() if k == "Deployment"]
    assert deployments
    for deployment in deployments:
        spec = pod_spec(deployment)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        # the namespace enforces Pod Security `restricted`: a pod it refuses never starts
        assert restricted_violations(spec) == [], deployment["metadata"]["name"]
        for c in spec["containers"]:
            security = c["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
            assert ":" in c["image"] and not c["image"].endswith(":latest")


def test_each_overlay_creates_its_namespace_under_pod_security_restricted(overlay: str) -> None:
    objs = objects(overlay)
    namespaces = [o for (k, _), o in objs.items() if k == "Namespace"]
    assert len(namespaces) == 1, "the overlay must create its namespace"
    namespace = namespaces[0]
    used = {o["metadata"]["namespace"] for (k, _), o in objs.items() if k != "Namespace"}
    assert used == {namespace["metadata"]["name"]}
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert f"pod-security.kubernetes.io/{mode}-version" in labels
    # the documented `kubectl apply -k ... -l app.kubernetes.io/component=namespace`
    # creates the namespace alone, before the Secrets
    selected = [
        o
        for o in objs.values()
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "namespace"
    ]
    assert selected == [namespace]
    steps = (ROOT / "docs" / "operations.md").read_text()
    assert "kubectl create namespace" not in steps, "the overlays create their namespace"
    assert "-l app.kubernetes.io/component=namespace" in steps


# -- Redis --------------------------------------------------------------------------------
#: the first 7.4 release with the fix for CVE-2025-49844 (use-after-free in the Lua
#: interpreter; the gateway runs its store operations as Lua scripts)
REDIS_MINIMUM = (7, 4, 6)
REDIS_TAG = re.compile(
    r"(?:[\w.-]+/)*redis:(\d+)\.(\d+)\.(\d+)(?:-[\w.]+)?(?:@sha256:[0-9a-f]{64})?"
)


def redis_version(image: str) -> tuple[int, int, int]:
    found = REDIS_TAG.fullmatch(image)
    assert found, f"{image}: pin Redis to a full x.y.z tag"
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


def test_redis_version_parsing_refuses_old_and_floating_tags() -> None:
    assert redis_version("redis:7.4.6-alpine") == (7, 4, 6)
    assert redis_version("docker.io/library/redis:8.0.4") == (8, 0, 4)
    assert redis_version("redis:7.4.2-alpine") < REDIS_MINIMUM
    for floating in ("redis:7.4-alpine", "redis:latest", "redis"):
        with pytest.raises(AssertionError):
            redis_version(floating)


def test_the_bundled_redis_has_the_lua_fix() -> None:
    path = K8S / "components" / "redis" / "deployment.yaml"
    deployment = yaml.safe_load(path.read_text())
    images = [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert images and all(redis_version(image) >= REDIS_MINIMUM for image in images), images
    assert container(objects("dev"), "redis")["image"] in images


# -- images -------------------------------------------------------------------------------
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def test_prod_never_runs_a_mutable_tag_it_may_not_pull() -> None:
    """A tag can be moved; with IfNotPresent each node keeps whatever it pulled first, so
    replicas run different code. Production names images by digest (or pulls Always)."""
    for obj in objects("prod").values():
        if obj["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        spec = pod_spec(obj)
        for c in spec.get("initContainers", []) + spec["containers"]:
            pinned = DIGEST.search(c["image"]) is not None
            assert pinned or c.get("imagePullPolicy") == "Always", (c["name"], c["image"])
    docs = (ROOT / "docs" / "operations.md").read_text()
    assert "kustomize edit set image agent-gateway=" in docs


#: the images the Dockerfile builds (its targets), by the program each one runs
IMAGE_PROGRAMS = {"agent-gateway": "gateway", "agent-gateway-chat-backend": "chat-backend"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_container_runs_the_image_target_that_has_its_program(overlay: str) -> None:
    """The gateway image carries no reference backend: a container running chat-backend
    from it would fail at start, so each program runs from its own image target."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    for program, target in (("gateway", "gateway"), ("chat-backend", "chat-backend")):
        assert re.search(rf"^FROM \S+ AS {target}$", dockerfile, re.M), target
        assert f'ENTRYPOINT ["{program}"]' in dockerfile
    for obj in objects(overlay).values():
        if obj["kind"] != "Deployment":
            continue
        for c in pod_spec(obj)["containers"]:
            name = c["image"].split("@")[0].rsplit(":", 1)[0]
            if name not in IMAGE_PROGRAMS:
                continue  # another project's image (redis)
            program = (c.get("command") or [IMAGE_PROGRAMS[name]])[0]
            assert program == IMAGE_PROGRAMS[name], (obj["metadata"]["name"], c["image"], program)
    if overlay == "dev":
        backend = pod_spec(one(objects("dev"), "Deployment", "chat-backend"))["containers"][0]
        assert backend["image"].startswith("agent-gateway-chat-backend:")


def test_the_decision_log_secret_comes_from_a_secret(overlay: str, tmp_path: Path) -> None:
    """GATEWAY_DECISION_LOG_SECRET from the Secret agent-gateway-decision-log: optional,
    since the log is off by default (a pod with the log on and no Secret refuses to start
    with a message naming the variable); in dev a generated one the gateway accepts."""
    objs = objects(overlay)
    env = {e["name"]: e for e in container(objs)["env"]}
    ref = env[SECRET_ENV]["valueFrom"]["secretKeyRef"]
    assert (ref["key"], ref["optional"]) == ("secret", True)
    assert re.fullmatch(r"agent-gateway-decision-log(-[a-z0-9]{10})?", ref["name"])
    config = gateway_config(objs, tmp_path)
    assert config.observability.decision_log is None, "the decision log is opt-in"
    if overlay == "dev":
        data = one(objs, "Secret", "agent-gateway-decision-log")["data"]["secret"]
        value = base64.b64decode(data).decode()
        assert len(load_secret({SECRET_ENV: value})) >= 16
    # without the Secret, turning the log on is refused with the variable's name
    with pytest.raises(ValueError, match=SECRET_ENV):
        load_secret({})
    docs = (ROOT / "docs" / "operations.md").read_text()
    assert "agent-gateway-decision-log" in docs and SECRET_ENV in docs
