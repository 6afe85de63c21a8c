"""deploy/compose: the file is valid Compose (``docker compose config`` or
``docker-compose config`` where a CLI is present, the Compose specification's JSON schema
where Debian's docker-compose ships it), and it agrees with the product: the mounted
configuration loads with the gateway's own loader, ports match it, only the front is a
trusted proxy and it replaces what clients say about themselves, Prometheus scrapes the
admin ports with the project's alert rules (equal to the PrometheusRule's), every container
is hardened, and Docker waits out the drain and the grace before SIGKILL.

``python -m tests.deploy.test_compose`` rewrites deploy/compose/prometheus/alerts.yaml from
the PrometheusRule after a change to the alerts."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from aiohttp import web

from gateway.config import Config, load_config
from gateway.core.client_ip import resolve_client_ip
from gateway.core.signing_keys import parse_keyset
from gateway.observability.decision_log import SECRET_FILE_ENV, load_secret
from tests.deploy.test_k8s_manifests import K8S, ROOT, admin_routes
from tests.support.processes import free_port, running
from tests.support.promtool import run_promtool

COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
CONFIG = COMPOSE_DIR / "config.yaml"
HAPROXY_CFG = COMPOSE_DIR / "haproxy.cfg"
PROMETHEUS_DIR = COMPOSE_DIR / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yaml"
PROMETHEUS_RULE = K8S / "components" / "monitoring" / "prometheusrule.yaml"
#: Debian's docker-compose package (1.29) vendors the Compose specification's schema
SCHEMA_PATHS = (Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json"),)
#: where the mounted configuration sits in the gateway's container
CONTAINER_CONFIG = "/etc/agent-gateway/config.yaml"
ALERTS_HEADER = """\
# The project's alerts for the Compose install: the groups of
# deploy/k8s/components/monitoring/prometheusrule.yaml, as a Prometheus rule file.
# Generated, do not edit: change the PrometheusRule, then run
#   python -m tests.deploy.test_compose
# (tests/deploy/test_compose.py fails while the two differ).
"""


# -- reading the files ---------------------------------------------------------------------
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def env_defaults() -> dict[str, str]:
    """deploy/compose/.env, which docker compose reads for interpolation."""
    pairs = (
        line.split("=", 1)
        for line in (COMPOSE_DIR / ".env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {name.strip(): value.strip() for name, value in pairs}


def interpolate(text: str) -> str:
    """``${NAME:-default}`` as Compose expands it, from .env."""
    values = env_defaults()
    return re.sub(
        r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: values.get(m.group(1), m.group(2) or ""), text
    )


def gateway_config() -> Config:
    """The mounted config.yaml as the gateway's own loader reads it in the container
    (the service sets no GATEWAY__ variables; any it set would apply here too)."""
    environment = services()["gateway"].get("environment", {})
    return load_config(CONFIG, environ=dict(environment))


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to deploy/compose) of the bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *options = volume.split(":")
        assert options == ["ro"] or not source.startswith("."), f"{volume}: not read-only"
        found[target] = source
    return found


def haproxy_lines() -> list[str]:
    return [
        line.split("#", 1)[0].strip()
        for line in HAPROXY_CFG.read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]


def haproxy_section(name: str) -> list[str]:
    lines = haproxy_lines()
    start = lines.index(name)
    section = []
    for line in lines[start + 1 :]:
        if re.match(r"(global|defaults|frontend|backend|resolvers|listen)\b", line):
            break
        section.append(line)
    return section


def seconds(duration: str) -> float:
    """A Compose or HAProxy duration: ``40s``, ``1m30s``, ``500ms``."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def prometheus_rule_groups() -> list[dict[str, Any]]:
    return list(yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"])


class _Dumper(yaml.SafeDumper):
    pass


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def rendered_alerts() -> str:
    """alerts.yaml as it must be: the PrometheusRule's groups, block literals kept."""
    body = yaml.dump(
        {"groups": prometheus_rule_groups()}, Dumper=_Dumper, sort_keys=False, width=1000
    )
    return ALERTS_HEADER + body


# -- the Compose file is valid -------------------------------------------------------------
def compose_cli() -> list[str] | None:
    """``docker compose`` (v2) when the plugin is there, else ``docker-compose``."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def test_ci_installs_a_compose_cli_and_the_schema() -> None:
    """The CLI and schema tests skip where neither is present: CI must never be such a
    place (.ci/run installs Debian's docker-compose, which brings both)."""
    script = (ROOT / ".ci" / "run").read_text()
    for package in ("docker-compose", "haproxy"):
        assert f"bare+=({package})" in script, package
    assert 'apt-get install -y -qq --no-install-recommends "${bare[@]}"' in script


def test_compose_cli_renders_the_file() -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI (Debian: apt-get install docker-compose; .ci/run does)")
    result = subprocess.run(
        [*cli, "--file", str(COMPOSE_FILE), "config"],
        cwd=COMPOSE_DIR,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) == {"gateway", "front", "redis", "chat-backend", "prometheus"}
    gateway = rendered["services"]["gateway"]
    assert gateway["deploy"]["replicas"] == 2
    # the shared hardening (a YAML merge key) reached every service
    for name, service in rendered["services"].items():
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
    published = [p for s in rendered["services"].values() for p in s.get("ports", [])]
    assert len(published) == 2, published
    assert Path(gateway["build"]["context"]).resolve() == ROOT


def compose_schema() -> dict[str, Any]:
    for path in SCHEMA_PATHS:
        if path.is_file():
            return dict(json.loads(path.read_text()))
    pytest.skip("no Compose schema (Debian: apt-get install docker-compose; .ci/run does)")


def test_compose_file_matches_the_compose_specification() -> None:
    schema = compose_schema()
    document = yaml.safe_load(interpolate(COMPOSE_FILE.read_text()))
    # the schema names draft 2019-09 (as http://...#, which jsonschema does not look up)
    assert "2019-09" in schema["$schema"]
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


# -- the gateway's configuration -----------------------------------------------------------
def test_the_gateway_loads_the_mounted_configuration() -> None:
    gateway = services()["gateway"]
    assert mounts(gateway)[CONTAINER_CONFIG] == "./config.yaml"
    assert gateway["command"] == ["serve", "--config", CONTAINER_CONFIG]
    config = gateway_config()
    assert config.store.type == "redis" and config.keys.type == "redis"
    # the store and the upstream are services of this file
    assert re.fullmatch(r"redis://redis:6379/\d+", config.store.url)
    assert config.upstream.url == "http://chat-backend:8081"
    assert "--port" in services()["chat-backend"]["command"]
    backend_port = services()["chat-backend"]["command"]
    assert backend_port[backend_port.index("--port") + 1] == "8081"
    # policies: the repository's, mounted read-only where the configuration reads them
    policies = mounts(gateway)[str(config.policies.path)]
    assert (COMPOSE_DIR / policies).resolve() == ROOT / "policies"


def test_the_agent_keys_survive_a_redis_restart() -> None:
    """keys.type redis: the agent keys live in this Redis, so it keeps an append-only
    file on a named volume (not a tmpfs, not the container's layer)."""
    assert gateway_config().keys.type == "redis"
    redis = services()["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    volume, target = redis["volumes"][0].split(":")
    assert target == "/data" and volume in compose()["volumes"]
    assert not any(t.startswith("/data") for t in redis.get("tmpfs", []))


def test_the_signing_keys_are_a_compose_secret() -> None:
    config = gateway_config()
    declared = compose()["secrets"]
    assert services()["gateway"]["secrets"] == ["signing_keys", "decision_log_secret"]
    # a secret without target is mounted at /run/secrets/<name>
    assert config.tokens.signing_keys_file == Path("/run/secrets/signing_keys")
    secret = COMPOSE_DIR / declared["signing_keys"]["file"]
    ignored = (secret.parent / ".gitignore").read_text().split()
    assert "*" in ignored and f"!{secret.name}" not in ignored, "the real key would enter git"
    example = secret.with_name(secret.name + ".example")
    keys = parse_keyset(example.read_text(), str(example))
    assert "EXAMPLE" in example.read_text() and len(keys.keys) == 1


def test_the_decision_log_secret_is_a_compose_secret() -> None:
    """GATEWAY_DECISION_LOG_SECRET_FILE names the mounted secret; the gateway reads it
    when observability.decision_log is on."""
    gateway = services()["gateway"]
    assert "decision_log_secret" in gateway["secrets"]
    file_env = gateway["environment"][SECRET_FILE_ENV]
    assert file_env == "/run/secrets/decision_log_secret"
    secret = COMPOSE_DIR / compose()["secrets"]["decision_log_secret"]["file"]
    assert secret.parent == COMPOSE_DIR / "secrets"  # ignored by git (test above)
    example = secret.with_name(secret.name + ".example")
    assert "EXAMPLE" in example.read_text()
    assert len(load_secret({SECRET_FILE_ENV: str(example)})) >= 16
    assert gateway_config().observability.decision_log is None, "the decision log is opt-in"
    assert SECRET_FILE_ENV in (ROOT / "docs" / "operations.md").read_text()


def test_the_configuration_is_kubernetes_but_for_the_compose_settings() -> None:
    """deploy/k8s/base/config.yaml is the reference: a setting changed there and not here
    (or the reverse) fails, except the two that differ by design (the store URL, a Secret
    there, is in the file here)."""
    environ = {"GATEWAY__STORE__URL": "redis://redis:6379/0"}  # a Secret in Kubernetes
    k8s_config = K8S / "base" / "config.yaml"
    reference = load_config(k8s_config, environ).model_dump(mode="json")
    mine = gateway_config().model_dump(mode="json")
    # relative paths are resolved against each file's own directory
    for dumped, base in ((reference, k8s_config.parent), (mine, CONFIG.parent)):
        dumped["keys"]["path"] = str(Path(dumped["keys"]["path"]).relative_to(base))
    for section, field in (("server", "trusted_proxies"), ("tokens", "signing_keys_file")):
        assert mine[section].pop(field) != reference[section].pop(field), (section, field)
    assert mine == reference


def test_ports_match_the_configuration() -> None:
    config = gateway_config()
    server, admin = config.server.port, config.admin.port
    gateway = services()["gateway"]
    assert "ports" not in gateway, "the gateways are reached through the front only"
    assert {str(server), str(admin)} <= set(gateway["expose"])
    assert config.server.host == "0.0.0.0" and config.admin.host == "0.0.0.0"
    backend = haproxy_section("backend gateways")
    template = next(line for line in backend if line.startswith("server-template"))
    assert template.split()[-1] == f"gateway:{server}"
    default_server = next(line for line in backend if line.startswith("default-server"))
    assert f"port {admin}" in default_server
    assert "http-check send meth GET uri /readyz" in backend and "/readyz" in admin_routes()
    bind = next(line for line in haproxy_section("frontend public") if line.startswith("bind"))
    container_port = bind.split(":")[-1]
    front_ports = [interpolate(p) for p in services()["front"]["ports"]]
    assert [p.rsplit(":", 1)[1] for p in front_ports] == [container_port]


def test_only_the_front_is_a_trusted_proxy() -> None:
    trusted = gateway_config().server.trusted_proxies
    edge_ip = ipaddress.ip_address(services()["front"]["networks"]["edge"]["ipv4_address"])
    assert trusted == [ipaddress.ip_network(f"{edge_ip}/32")]
    ipam = compose()["networks"]["edge"]["ipam"]["config"][0]
    subnet, dynamic = ipaddress.ip_network(ipam["subnet"]), ipaddress.ip_network(ipam["ip_range"])
    # in the network, out of the range Docker gives other containers, not the host's side
    assert edge_ip in subnet and edge_ip not in dynamic and edge_ip != subnet.network_address + 1
    for name, service in services().items():
        networks = service.get("networks", {})
        if name != "front":
            assert not any((n or {}).get("ipv4_address") for n in networks.values()), name
        if "edge" in networks:
            assert name in ("front", "gateway"), f"{name} shares the front's network"


def test_the_front_replaces_what_clients_say_about_themselves() -> None:
    frontend = haproxy_section("frontend public")
    forward = frontend.index("option forwardfor")
    for header in ("X-Forwarded-For", "Forwarded", "X-Request-Id"):
        assert frontend.index(f"http-request del-header {header}") < forward, header
    # what the gateway then makes of it: the front's appended address is the client, a
    # spoofed entry before it is ignored; any other peer's header is not believed at all
    trusted = gateway_config().server.trusted_proxies
    front = str(trusted[0].network_address)
    assert resolve_client_ip(front, ["198.51.100.9"], trusted) == "198.51.100.9"
    assert resolve_client_ip(front, ["6.6.6.6", "198.51.100.9"], trusted) == "198.51.100.9"
    assert resolve_client_ip("172.30.80.130", ["6.6.6.6"], trusted) == "172.30.80.130"


def test_haproxy_accepts_the_front_configuration() -> None:
    result = subprocess.run(
        [haproxy(), "-c", "-f", str(HAPROXY_CFG)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def haproxy() -> str:
    tool = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if tool is None:
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy; .ci/run does)")
    return tool


def local_front(public: int, admin: int, front: int, monitor: int) -> str:
    """haproxy.cfg with its addresses moved to the loopback: one gateway at ``public``
    (readiness on ``admin``) instead of Docker's DNS name, and a connection cap this
    machine's file limit allows (compose.yaml raises the container's); every rule as
    written."""
    text = HAPROXY_CFG.read_text()
    config = gateway_config()
    for old, new in (
        ("    maxconn 20000\n", "    maxconn 1000\n"),
        ("    bind :8080\n", f"    bind 127.0.0.1:{front}\n"),
        ("    bind 127.0.0.1:8404\n", f"    bind 127.0.0.1:{monitor}\n"),
        (f" check port {config.admin.port} ", f" check port {admin} "),
        (
            f"    server-template gateway 1-10 gateway:{config.server.port}\n",
            f"    server gateway1 127.0.0.1:{public}\n",
        ),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


@pytest.mark.slow
async def test_the_real_front_drops_spoofed_headers_and_drains_in_time(tmp_path: Path) -> None:
    """HAProxy with this haproxy.cfg in front of a stand-in gateway: what the gateway
    receives names the real peer only, and a gateway that stops being ready (the drain
    after SIGTERM) is out of rotation before server.drain_seconds have passed."""
    tool = haproxy()
    ready = {"now": True}
    seen: list[dict[str, list[str]]] = []

    async def echo(request: web.Request) -> web.Response:
        names = ("X-Forwarded-For", "Forwarded", "X-Request-Id")
        seen.append({name: request.headers.getall(name, []) for name in names})
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        return web.Response(status=200 if ready["now"] else 503)

    public_app, admin_app = web.Application(), web.Application()
    public_app.router.add_get("/{tail:.*}", echo)
    admin_app.router.add_get("/readyz", readyz)
    public, admin, front, monitor = free_port(), free_port(), free_port(), free_port()
    runners = [web.AppRunner(public_app), web.AppRunner(admin_app)]
    for runner, port in zip(runners, (public, admin), strict=True):
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(local_front(public, admin, front, monitor))
    health = f"http://127.0.0.1:{monitor}/healthz"
    try:
        with running([tool, "-db", "-f", str(cfg)], health):
            async with aiohttp.ClientSession() as session:
                await until_status(session, health, 200, within=10)
                spoofed = {
                    "X-Forwarded-For": "6.6.6.6",
                    "Forwarded": "for=6.6.6.6",
                    "X-Request-Id": "chosen-by-the-client-0001",
                }
                async with session.get(f"http://127.0.0.1:{front}/v1/x", headers=spoofed) as got:
                    assert got.status == 200
                assert seen == [
                    {"X-Forwarded-For": ["127.0.0.1"], "Forwarded": [], "X-Request-Id": []}
                ]
                trusted = [ipaddress.ip_network("127.0.0.1/32")]  # the front, as in config.yaml
                assert resolve_client_ip("127.0.0.1", seen[0]["X-Forwarded-For"], trusted) == (
                    "127.0.0.1"
                )
                ready["now"] = False
                started = time.monotonic()
                await until_status(session, health, 503, within=10)
                out_of_rotation = time.monotonic() - started
                assert out_of_rotation < gateway_config().server.drain_seconds, out_of_rotation
                async with session.get(f"http://127.0.0.1:{front}/v1/x") as got:
                    assert got.status == 503 and len(seen) == 1
    finally:
        for runner in runners:
            await runner.cleanup()


async def until_status(
    session: aiohttp.ClientSession, url: str, status: int, *, within: float
) -> None:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        async with session.get(url) as answer:
            last = answer.status
        if last == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url}: {last} after {within}s, not {status}")


# -- shutdown ------------------------------------------------------------------------------
def test_docker_waits_out_the_drain_and_the_grace() -> None:
    server = gateway_config().server
    needed = server.drain_seconds + server.shutdown_grace_seconds
    gateway = services()["gateway"]
    assert gateway["stop_signal"] == "SIGTERM"
    assert seconds(gateway["stop_grace_period"]) > needed
    # the front stops softly (SIGUSR1), within its own grace
    front = services()["front"]
    hard_stop = next(line for line in haproxy_section("global") if line.startswith("hard-stop"))
    assert front["stop_signal"] == "SIGUSR1"
    assert seconds(hard_stop.split()[-1]) < seconds(front["stop_grace_period"])
    # the front takes a draining gateway out of rotation before its listener closes
    defaults = haproxy_section("defaults")
    check_timeout = next(line for line in defaults if line.startswith("timeout check"))
    options = haproxy_section("backend gateways")
    default_server = next(line for line in options if line.startswith("default-server")).split()
    interval = seconds(default_server[default_server.index("inter") + 1])
    falls = int(default_server[default_server.index("fall") + 1])
    assert interval * falls + seconds(check_timeout.split()[-1]) < server.drain_seconds


# -- hardening -----------------------------------------------------------------------------
def test_every_container_is_hardened() -> None:
    for name, service in services().items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["restart"] in ("unless-stopped", "always"), name
        user = str(service["user"]).split(":")
        assert all(part.isdigit() and int(part) != 0 for part in user), (name, user)
        assert service["healthcheck"]["test"][0] == "CMD", name
        limits = service["deploy"]["resources"]["limits"]
        assert {"cpus", "memory"} <= set(limits) and service["pids_limit"] > 0, name
        assert not service.get("privileged") and "cap_add" not in service, name


def test_images_are_the_repository_targets_and_a_patched_redis() -> None:
    dockerfile = ROOT / "Dockerfile"
    for name, target in (("gateway", "gateway"), ("chat-backend", "chat-backend")):
        build = services()[name]["build"]
        assert (COMPOSE_DIR / build["context"]).resolve() / "Dockerfile" == dockerfile
        assert build["target"] == target
    image = services()["redis"]["image"]
    version = re.fullmatch(r"redis:(\d+)\.(\d+)\.(\d+)-alpine", image)
    assert version, image
    assert tuple(int(v) for v in version.groups()) >= (7, 4, 6), image


# -- Prometheus ----------------------------------------------------------------------------
def prometheus() -> dict[str, Any]:
    return dict(yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text()))


def test_prometheus_scrapes_every_gateways_admin_port() -> None:
    service = services()["prometheus"]
    assert mounts(service)["/etc/prometheus"] == "./prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]
    jobs = {job["job_name"]: job for job in prometheus()["scrape_configs"]}
    job = jobs["agent-gateway"]  # the job the alerts select
    assert job["metrics_path"] == "/metrics" and "/metrics" in admin_routes()
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["gateway"] and discovery["type"] == "A"
    assert discovery["port"] == gateway_config().admin.port
    # it reaches them: a network shared with the gateways
    assert set(service["networks"]) & set(services()["gateway"]["networks"])
    # the labels the alerts group by
    labels = {r["target_label"] for r in job["relabel_configs"]}
    assert {"namespace", "pod"} <= labels
    assert prometheus()["rule_files"] == [ALERTS.name]


def test_the_alerts_are_the_prometheus_rule() -> None:
    assert yaml.safe_load(ALERTS.read_text()) == {"groups": prometheus_rule_groups()}
    assert ALERTS.read_text() == rendered_alerts(), "run: python -m tests.deploy.test_compose"


def test_promtool_accepts_the_prometheus_configuration_and_rules() -> None:
    config = run_promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS_DIR)
    assert config.returncode == 0, config.stdout + config.stderr
    rules = run_promtool("check", "rules", ALERTS.name, cwd=PROMETHEUS_DIR)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    count = sum(len(group["rules"]) for group in prometheus_rule_groups())
    assert f"SUCCESS: {count} rules found" in rules.stdout


if __name__ == "__main__":
    ALERTS.write_text(rendered_alerts())
    print(f"wrote {ALERTS.relative_to(ROOT)}", file=sys.stderr)
