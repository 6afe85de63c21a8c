"""`gateway serve --workers N` as real processes: a supervisor and its workers sharing the
public port with SO_REUSEPORT, one admin port for probes and Prometheus."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import SIGNING_ENV
from tests.support.processes import BIN, free_port, run_cli, running
from tests.support.promtool import promtool
from tests.support.readers import Reader
from tests.support.replicas import SEND, TOKEN, burst, write_replica_config

pytestmark = pytest.mark.slow  # supervisor and worker processes

N = 10
PER_TOKEN = f"""
policies:
  - name: send-per-token
    match: {{routes: [send]}}
    partition: [token]
    limit: {{rate: {N}, per: 1h, burst: {N}}}
"""
GENEROUS = """
policies:
  - name: send-per-ip
    match: {routes: [send]}
    partition: [client_ip]
    limit: {rate: 1000, per: 1m, burst: 1000}
"""
DRAIN = 1.0
GRACE = 8.0
#: the supervisor's bound: drain + grace + the shutdown margin of gateway.server
BOUND = DRAIN + GRACE + 5.0


@dataclass
class Workers:
    proc: subprocess.Popen[bytes]
    config: Path
    public: str
    admin: str

    def log(self) -> str:
        return Path(self.proc.log_path).read_text()  # type: ignore[attr-defined]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def readyz(self) -> httpx.Response:
        return httpx.get(self.admin + "/readyz", timeout=5)

    def pids(self) -> dict[str, int | None]:
        return {k: v["pid"] for k, v in self.readyz().json()["workers"].items()}

    def metrics(self) -> str:
        resp = httpx.get(self.admin + "/metrics", timeout=5)
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return resp.text

    def key(self) -> str:
        created = run_cli(
            "keys", "create", "--model", "demo", "--json", "--config", str(self.config)
        )
        assert created.returncode == 0, created.stderr
        return str(json.loads(created.stdout)["key"])

    def token(self, key: str) -> str:
        """A token, once the key reached the worker that answers (bounded)."""
        deadline = time.monotonic() + 10
        while True:
            # a new connection each time: any worker may answer
            resp = httpx.get(
                self.public + TOKEN.format(model="demo"),
                headers={"Authorization": f"Bearer {key}"},
                timeout=5,
            )
            if resp.status_code == 200:
                return str(resp.json()["token"])
            assert time.monotonic() < deadline, resp.text
            time.sleep(0.25)


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def write_config(
    tmp_path: Path,
    upstream: str,
    *,
    store: dict[str, Any],
    policies: str = GENEROUS,
    server: dict[str, Any] | None = None,
) -> tuple[Path, int, int]:
    config, _ = write_replica_config(
        tmp_path, store_url="", upstream=upstream, policies=policies, store={}
    )
    data = yaml.safe_load(config.read_text())
    public_port, admin_port = free_port(), free_port()
    data["store"] = store
    data["server"] = {
        "host": "127.0.0.1",
        "port": public_port,
        "drain_seconds": DRAIN,
        "shutdown_grace_seconds": GRACE,
        **(server or {}),
    }
    data["admin"] = {"enabled": True, "host": "127.0.0.1", "port": admin_port}
    data["logging"] = {"level": "info"}
    config.write_text(yaml.safe_dump(data))
    return config, public_port, admin_port


@contextmanager
def workers(
    tmp_path: Path,
    upstream: str,
    *,
    store: dict[str, Any],
    policies: str = GENEROUS,
    server: dict[str, Any] | None = None,
    flag: tuple[str, ...] = ("--workers", "2"),
) -> Iterator[Workers]:
    config, public_port, admin_port = write_config(
        tmp_path, upstream, store=store, policies=policies, server=server
    )
    admin = f"http://127.0.0.1:{admin_port}"
    argv = [str(BIN / "gateway"), "serve", "--config", str(config), *flag]
    with running(argv, admin + "/healthz", env=SIGNING_ENV) as proc:
        stack = Workers(proc, config, f"http://127.0.0.1:{public_port}", admin)
        eventually(lambda: stack.readyz().status_code == 200, 30, "every worker ready")
        yield stack


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sends_by_worker(text: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for sample in families(text)["gateway_http_requests"].samples:
        if sample.name == "gateway_http_requests_total" and sample.labels["route"] == SEND:
            worker = sample.labels["worker"]
            counts[worker] = counts.get(worker, 0.0) + sample.value
    return counts


# -- the memory store ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "flag"),
    [({}, ("--workers", "2")), ({"workers": 2}, ()), ({"workers": 1}, ("--workers", "auto"))],
)
def test_memory_store_with_workers_is_refused(
    tmp_path: Path, server: dict[str, Any], flag: tuple[str, ...]
) -> None:
    if "auto" in flag and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: auto is one worker")
    config, _, _ = write_config(
        tmp_path, "http://127.0.0.1:9", store={"type": "memory"}, server=server
    )
    result = run_cli("serve", "--config", str(config), *flag, env=SIGNING_ENV, timeout=30)
    assert result.returncode == 2, result.stderr
    message = result.stderr
    assert "server.workers" in message and "store is memory" in message, message
    assert "store: redis" in message and "server.allow_per_worker_limits: true" in message


def test_the_flag_wins_over_the_configured_workers(tmp_path: Path, backend_process: str) -> None:
    """server.workers: 2 on the memory store is refused, but --workers 1 runs one process."""
    with workers(
        tmp_path,
        backend_process,
        store={"type": "memory"},
        server={"workers": 2},
        flag=("--workers", "1"),
    ) as gw:
        assert "workers" not in gw.readyz().json()  # a single gateway's own readiness
        events = [e["event"] for e in gw.events()]
        assert "supervising" not in events and "listening" in events


def test_memory_store_with_the_opt_in_runs_and_warns(tmp_path: Path, backend_process: str) -> None:
    """Accepted with server.allow_per_worker_limits, with a warning; the workers share one
    generated signing key, so a token from one is honoured by the other."""
    server = {"workers": 2, "allow_per_worker_limits": True}
    env_without_keys = {k: v for k, v in os.environ.items() if k != "GATEWAY_SIGNING_KEYS"}
    config, public_port, admin_port = write_config(
        tmp_path, backend_process, store={"type": "memory"}, server=server
    )
    admin = f"http://127.0.0.1:{admin_port}"
    with tempfile.NamedTemporaryFile(prefix="workers-", suffix=".log", delete=False) as handle:
        log_path = Path(handle.name)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "gateway"), "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env_without_keys,
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
    gw = Workers(proc, config, f"http://127.0.0.1:{public_port}", admin)
    try:
        eventually(lambda: _answers(gw.admin + "/readyz", 200), 30, "every worker ready")
        key = gw.key()
        tokens = [gw.token(key) for _ in range(20)]  # new connections: both workers issue
        statuses = asyncio.run(burst([(gw.public, t) for t in tokens]))
        assert statuses == [200] * 20, statuses
        by_worker = sends_by_worker(gw.metrics())
        assert sorted(by_worker) == ["0", "1"] and sum(by_worker.values()) == 20, by_worker
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=BOUND) == 0
    warned = [e for e in gw.events() if e["event"] == "per_worker_limits"]
    assert warned and warned[0]["level"] == "warning" and warned[0]["workers"] == 2


def _answers(url: str, status: int) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == status
    except httpx.HTTPError:
        return False


# -- Redis -----------------------------------------------------------------------------


def test_two_workers_serve_one_port_with_exact_limits_and_one_scrape(
    tmp_path: Path, redis_url: str, backend_process: str
) -> None:
    """Both worker processes answer connections on the one port; a limit of N holds
    exactly across them (Redis); /metrics on the admin port is every worker's, labelled."""
    store = {"type": "redis", "url": redis_url, "timeout_ms": 250}
    with workers(tmp_path, backend_process, store=store, policies=PER_TOKEN) as gw:
        pids = gw.pids()
        assert len(set(pids.values())) == 2 and None not in pids.values(), pids
        assert gw.proc.pid not in pids.values()
        token = gw.token(gw.key())
        statuses = asyncio.run(burst([(gw.public, token)] * (5 * N)))
        assert statuses.count(200) == N and statuses.count(429) == 4 * N, statuses
        text = gw.metrics()

    by_worker = sends_by_worker(text)
    # 50 connections at once: both processes answered some (all on one: odds 2**-49)
    assert sorted(by_worker) == ["0", "1"] and all(v > 0 for v in by_worker.values()), by_worker
    assert sum(by_worker.values()) == 5 * N
    parsed = families(text)
    ups = {s.labels["worker"]: s.value for s in parsed["gateway_worker_up"].samples}
    assert ups == {"0": 1.0, "1": 1.0}
    # every series is unique: the worker label keeps the two processes' series apart
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for family in parsed.values():
        for sample in family.samples:
            series = (sample.name, tuple(sorted(sample.labels.items())))
            assert series not in seen, series
            seen.add(series)
    cpu = [s for s in parsed["process_cpu_seconds"].samples]
    assert sorted(s.labels["worker"] for s in cpu) == ["0", "1"]
    # Prometheus's own parser accepts the scrape
    checked = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr


def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(
    tmp_path: Path, redis_url: str, backend_process: str
) -> None:
    store = {"type": "redis", "url": redis_url, "timeout_ms": 250}
    with workers(tmp_path, backend_process, store=store) as gw:
        key = gw.key()
        gw.token(key)
        before = gw.pids()
        killed = int(before["0"] or 0)
        os.kill(killed, signal.SIGKILL)
        # once the process is gone its listening socket is out of the group: the port
        # answers throughout the restart, on new connections (the survivor takes them)
        eventually(lambda: _dead(killed), 5, "the killed worker gone")
        for _ in range(30):
            resp = httpx.get(
                gw.public + TOKEN.format(model="demo"),
                headers={"Authorization": f"Bearer {key}"},
                timeout=5,
            )
            assert resp.status_code == 200, resp.text
        eventually(
            lambda: gw.readyz().status_code == 200 and gw.pids()["0"] not in (None, before["0"]),
            30,
            "worker 0 restarted and ready",
        )
        assert gw.pids()["1"] == before["1"]
        restarts = {
            s.labels["worker"]: s.value
            for s in families(gw.metrics())["gateway_worker_restarts"].samples
        }
        assert restarts == {"0": 1.0, "1": 0.0}, restarts
        exited = [e for e in gw.events() if e["event"] == "worker_exited"]
        assert len(exited) == 1 and exited[0]["worker"] == 0
        assert exited[0]["returncode"] == -signal.SIGKILL and exited[0]["level"] == "error"


def _dead(pid: int) -> bool:
    """Exited (a zombie until its parent reaps it counts: its sockets are closed)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_sigterm_drains_streams_in_flight_then_exits_0(tmp_path: Path, redis_url: str) -> None:
    """SIGTERM to the supervisor: /readyz turns 503, every worker drains, the streams in
    flight finish whole, and the supervisor exits 0 within drain + grace + margin."""
    backend_port = free_port()
    backend = [str(BIN / "chat-backend"), "--port", str(backend_port), "--word-delay", "0.05"]
    store = {"type": "redis", "url": redis_url, "timeout_ms": 250}
    with ExitStack() as stack:
        stack.enter_context(running(backend, f"http://127.0.0.1:{backend_port}/healthz"))
        gw = stack.enter_context(workers(tmp_path, f"http://127.0.0.1:{backend_port}", store=store))
        key = gw.key()
        words = " ".join(f"w{i}" for i in range(40))
        streams = [
            Reader(gw.public, gw.token(key), stream=True, message=words) for _ in range(6)
        ]  # ~2 s each
        for stream in streams:
            stream.start()
        for stream in streams:
            assert stream.started.wait(10), "no event arrived"
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        eventually(lambda: _answers(gw.admin + "/readyz", 503), DRAIN, "not ready while draining")
        code = gw.proc.wait(timeout=BOUND + 5)
        exited_after = time.monotonic() - signalled
        for stream in streams:
            stream.join(5)
    log = gw.log()
    assert code == 0, log[-3000:]
    assert exited_after < BOUND, exited_after
    for stream in streams:
        assert stream.error is None, stream.error
        assert "w39" in stream.body and "event: done" in stream.body, stream.body[-300:]
        assert "shutting_down" not in stream.body
    events = [e for e in gw.events()]
    stopped = sorted(e.get("worker", -1) for e in events if e["event"] == "stopped")
    assert stopped == [-1, 0, 1], stopped  # both workers, then the supervisor
    access = [e for e in events if e["event"] == "request"]
    assert len(access) >= len(streams), events
    assert {e.get("worker") for e in access} <= {0, 1}, access  # each names its worker
    assert not [e for e in events if e["event"] in ("worker_exited", "workers_killed")]


def test_workers_that_cannot_start_are_a_crash_loop(tmp_path: Path, backend_process: str) -> None:
    """The port is taken by another program: the workers die at start, again and again;
    the supervisor says so loudly and exits 1 instead of restarting for ever."""
    config, public_port, _ = write_config(
        tmp_path,
        backend_process,
        store={"type": "memory"},
        server={"allow_per_worker_limits": True},
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", public_port))
        taken.listen()
        started = time.monotonic()
        result = run_cli(
            "serve", "--config", str(config), "--workers", "2", env=SIGNING_ENV, timeout=60
        )
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    loops = [e for e in lines if e["event"] == "workers_crash_loop"]
    assert loops and loops[0]["level"] == "critical" and loops[0]["deaths"] == 5
    assert took < 45, took


def test_workers_stop_when_the_supervisor_is_killed(
    tmp_path: Path, redis_url: str, backend_process: str
) -> None:
    """SIGKILL leaves no orphans: each worker notices its parent is gone and drains."""
    store = {"type": "redis", "url": redis_url, "timeout_ms": 250}
    with workers(tmp_path, backend_process, store=store) as gw:
        pids = [int(p or 0) for p in gw.pids().values()]
        gw.proc.kill()
        gw.proc.wait(timeout=5)

        def gone() -> bool:
            for pid in pids:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    continue
                return False
            return True

        try:
            eventually(gone, BOUND + 2, "workers exited")
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        assert [e for e in gw.events() if e["event"] == "supervisor_gone"]


def test_port_0_is_one_port_for_every_worker(tmp_path: Path, backend_process: str) -> None:
    """``server.port: 0``: the supervisor picks one free port and every worker binds it."""
    config, _, admin_port = write_config(
        tmp_path,
        backend_process,
        store={"type": "memory"},
        server={"port": 0, "allow_per_worker_limits": True},
    )
    admin = f"http://127.0.0.1:{admin_port}"
    argv = [str(BIN / "gateway"), "serve", "--config", str(config), "--workers", "2"]
    with running(argv, admin + "/healthz", env=SIGNING_ENV) as proc:
        gw = Workers(proc, config, "", admin)
        eventually(lambda: gw.readyz().status_code == 200, 30, "every worker ready")
        checks = [w["checks"] for w in gw.readyz().json()["workers"].values()]
        assert all(c["store"] == "ok" and c["upstream"] == "ok" for c in checks), checks
        events = gw.events()
        public = next(e["public"] for e in events if e["event"] == "supervising")
        assert not public.endswith(":0")
        listening = {e["public"] for e in events if e["event"] == "listening"}
        assert listening == {public}, listening
        for _ in range(20):
            assert httpx.get(public + "/", timeout=5).status_code == 404
        answered = {
            s.labels["worker"]
            for s in families(gw.metrics())["gateway_http_requests"].samples
            if s.labels.get("route") == "unmatched"
        }
        assert answered == {"0", "1"}, answered
