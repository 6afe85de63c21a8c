"""``gateway serve --workers N``: N worker processes sharing the public port.

With N > 1 this process is a supervisor. It starts N workers, each ``gateway serve``
with its public listener bound with ``SO_REUSEPORT`` (the kernel spreads connections
among them) and its admin listener on a private unix socket. It serves the configured
admin port itself, so Prometheus and the probes see one target:

- ``/healthz``: ok while the supervisor runs;
- ``/readyz``: ok only when every worker runs and answers its own ``/readyz`` with 200;
  503 from the first signal on;
- ``/metrics``: every worker's metrics, each series with a ``worker`` label (``0`` to
  ``N-1``; a restarted worker keeps its number), and the supervisor's own
  ``gateway_worker_up`` and ``gateway_worker_restarts_total``.

A worker that exits is started again after a backoff. A worker that dies within
``STABLE_SECONDS`` of its start ``CRASH_LOOP_FAILURES`` times in a row (a port already
taken, a configuration it cannot load) is a crash loop: logged as ``workers_crash_loop``,
the other workers are stopped and the supervisor exits 1.

On SIGTERM or SIGINT the supervisor forwards SIGTERM to every worker (each drains as a
single ``gateway serve`` does; a second signal is forwarded too and ends the drain wait
early), waits ``drain_seconds + shutdown_grace_seconds + SHUTDOWN_MARGIN_SECONDS``, kills
what is left, and exits 0 when every worker exited 0. Workers run in their own process
group, so a terminal's Ctrl-C reaches them once, through the supervisor; a worker whose
supervisor is gone stops by itself (:func:`gateway.server.watch_parent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway.config import Config
from gateway.config.signing_keys import ENV_KEYS, load_keyset
from gateway.web.early_answers import SERVER
from gateway.web.listener import Listener, ListenerRunner
from gateway.web.responses import NO_STORE, json_response

log = structlog.get_logger("gateway")

#: set in a worker's environment: its number (``0`` to ``N-1``)
WORKER_ENV = "GATEWAY_WORKER"
#: set in a worker's environment: the unix socket its admin listener binds
WORKER_ADMIN_ENV = "GATEWAY_WORKER_ADMIN_SOCKET"
#: a worker that lived this long before dying is not part of a crash loop
STABLE_SECONDS = 10.0
CRASH_LOOP_FAILURES = 5
#: the first restart waits this long, doubling with each consecutive early death
BACKOFF_SECONDS = 0.25
MAX_BACKOFF_SECONDS = 10.0
#: what one worker gets to answer the supervisor's /metrics or /readyz
WORKER_FETCH_SECONDS = 2.0
EXIT_CRASH_LOOP = 1


def worker_count(value: int | str) -> int:
    """``auto`` is the CPUs this process may run on; anything else a count of at least 1."""
    if value == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    count = int(value)
    if count < 1:
        raise ValueError("workers must be at least 1 (or auto)")
    return count


def memory_store_refusal(config: Config, workers: int) -> str | None:
    """Why ``workers`` processes must not start on this configuration, if they must not."""
    if workers > 1 and config.store.type == "memory" and not config.server.allow_per_worker_limits:
        return (
            f"server.workers is {workers} but store is memory: each worker would count "
            "rate limits and token state on its own. Use store: redis (shared by the "
            "workers), or set server.allow_per_worker_limits: true to accept limits "
            "counted per worker"
        )
    return None


def backoff(failures: int) -> float:
    """The wait before a restart, after ``failures`` consecutive early deaths."""
    if failures <= 0:
        return BACKOFF_SECONDS
    return float(min(BACKOFF_SECONDS * 2 ** (failures - 1), MAX_BACKOFF_SECONDS))


@dataclass
class Worker:
    index: int
    admin_socket: Path | None
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    #: consecutive deaths within STABLE_SECONDS of the start
    failures: int = 0
    returncode: int | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


@dataclass
class Supervisor:
    config: Config
    config_path: Path
    count: int
    environ: Mapping[str, str]
    workdir: Path
    workers: list[Worker] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    crashed: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    def __post_init__(self) -> None:
        admin = self.config.admin.enabled
        self.workers = [
            Worker(i, self.workdir / f"worker-{i}.sock" if admin else None)
            for i in range(self.count)
        ]
        self.port = self.config.server.port

    # -- the workers ------------------------------------------------------------

    def worker_environ(self, worker: Worker) -> dict[str, str]:
        env = {**self.environ, WORKER_ENV: str(worker.index)}
        env["GATEWAY__SERVER__PORT"] = str(self.port)
        if worker.admin_socket is not None:
            env[WORKER_ADMIN_ENV] = str(worker.admin_socket)
        return env

    async def spawn(self, worker: Worker, env: Mapping[str, str]) -> None:
        if worker.admin_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                worker.admin_socket.unlink()
        argv = [sys.executable, "-m", "gateway", "serve"]
        argv += ["--config", str(self.config_path), "--workers", "1"]
        worker.process = await asyncio.create_subprocess_exec(*argv, env=dict(env), process_group=0)
        worker.started = time.monotonic()
        log.info("worker_started", worker=worker.index, pid=worker.process.pid)
        if self.stopping.is_set():  # the signal came while it was being started
            worker.process.send_signal(signal.SIGTERM)

    async def keep(self, worker: Worker, env: Mapping[str, str]) -> None:
        """Run ``worker`` until the supervisor stops, restarting it when it dies."""
        while not self.stopping.is_set():
            await self.spawn(worker, env)
            assert worker.process is not None
            worker.returncode = await worker.process.wait()
            if self.stopping.is_set():
                return
            uptime = time.monotonic() - worker.started
            worker.failures = worker.failures + 1 if uptime < STABLE_SECONDS else 0
            if worker.failures >= CRASH_LOOP_FAILURES:
                log.critical(
                    "workers_crash_loop",
                    worker=worker.index,
                    returncode=worker.returncode,
                    deaths=worker.failures,
                    within_seconds=STABLE_SECONDS,
                    hint="see the worker's own error above (a port taken, a dependency down)",
                )
                self.crashed.set()
                return
            wait = backoff(worker.failures)
            log.error(
                "worker_exited",
                worker=worker.index,
                pid=worker.process.pid,
                returncode=worker.returncode,
                uptime_seconds=round(uptime, 3),
                restart_in_seconds=wait,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), wait)
            if not self.stopping.is_set():
                worker.restarts += 1

    def signal_workers(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            if worker.alive:
                assert worker.process is not None
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    def stop(self) -> None:
        """A signal to the supervisor: the first starts the drain, every one is forwarded."""
        if not self.stopping.is_set():
            log.info("stopping_workers", workers=self.count)
        self.stopping.set()
        self.signal_workers(signal.SIGTERM)

    async def finish(self, keepers: Iterable[asyncio.Task[None]]) -> bool:
        """Wait for every worker within the shutdown bound, kill the rest; True when
        every worker exited 0."""
        from gateway.server import SHUTDOWN_MARGIN_SECONDS

        server = self.config.server
        bound = server.drain_seconds + server.shutdown_grace_seconds + SHUTDOWN_MARGIN_SECONDS
        pending = [t for t in keepers if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=bound)
            if late:
                killed = [w.index for w in self.workers if w.alive]
                log.error("workers_killed", workers=killed, after_seconds=bound)
                self.signal_workers(signal.SIGKILL)
                await asyncio.wait(late, timeout=5)
        clean = True
        for worker in self.workers:
            if worker.alive or worker.returncode not in (0, None):
                clean = False
        return clean

    # -- the admin listener -----------------------------------------------------

    async def fetch(self, worker: Worker, path: str) -> tuple[int, str] | None:
        if worker.admin_socket is None or not worker.alive:
            return None
        connector = aiohttp.UnixConnector(path=str(worker.admin_socket))
        timeout = aiohttp.ClientTimeout(total=WORKER_FETCH_SECONDS)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.get(f"http://worker{path}") as resp,
            ):
                return resp.status, await resp.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    async def readyz(self, request: web.Request) -> web.Response:
        if self.stopping.is_set():
            return json_response({"status": "draining"}, 503)
        answers = await asyncio.gather(*(self.fetch(w, "/readyz") for w in self.workers))
        workers = {}
        for worker, answer in zip(self.workers, answers, strict=True):
            pid = worker.process.pid if worker.process is not None and worker.alive else None
            report: dict[str, object] = {
                "pid": pid,
                "ready": answer is not None and answer[0] == 200,
            }
            if answer is not None:
                with contextlib.suppress(ValueError, AttributeError):
                    report["checks"] = json.loads(answer[1]).get("checks")
            workers[str(worker.index)] = report
        ready = all(w["ready"] for w in workers.values())
        body = {"status": "ready" if ready else "not_ready", "workers": workers}
        return json_response(body, 200 if ready else 503)

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        answers = await asyncio.gather(*(self.fetch(w, "/metrics") for w in self.workers))
        texts = {
            w.index: a[1]
            for w, a in zip(self.workers, answers, strict=True)
            if a is not None and a[0] == 200
        }
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WorkerMetrics(texts, self.workers))
        headers = {"Content-Type": "text/plain; version=0.0.4; charset=utf-8", **NO_STORE}
        return web.Response(body=generate_latest(registry), headers=headers)

    def admin_app(self) -> web.Application:
        async def security_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
            response.headers["Server"] = SERVER
            response.headers["X-Content-Type-Options"] = "nosniff"

        app = web.Application()
        app.on_response_prepare.append(security_headers)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app


class WorkerMetrics(Collector):
    """The workers' exposition, merged: one family per name, a ``worker`` label added to
    every sample; then the supervisor's own gauges and counters."""

    def __init__(self, texts: Mapping[int, str], workers: list[Worker]) -> None:
        self._texts = texts
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for index, text in sorted(self._texts.items()):
            for family in text_string_to_metric_families(text):
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    labels = {**sample.labels, "worker": str(index)}
                    target.add_sample(sample.name, labels, sample.value, sample.timestamp)
        yield from merged.values()
        up = Metric("gateway_worker_up", "1 when the worker answered this scrape", "gauge")
        restarts = Metric(
            "gateway_worker_restarts", "Times the supervisor started a worker again", "counter"
        )
        for worker in self._workers:
            labels = {"worker": str(worker.index)}
            up.add_sample("gateway_worker_up", labels, 1.0 if worker.index in self._texts else 0.0)
            restarts.add_sample("gateway_worker_restarts_total", labels, float(worker.restarts))
        yield up
        yield restarts


def shared_signing_keys(config: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """On the memory store with no configured keys each process would generate its own
    and refuse the others' tokens: generate one here, for every worker."""
    keyset = load_keyset(
        environ, config.tokens.signing_keys_file, allow_generated=config.store.type == "memory"
    )
    if not keyset.generated:
        return {}
    key = keyset.active
    return {ENV_KEYS: f"{key.kid}:{key.secret.decode()}"}


def reserve_port(host: str) -> socket.socket:
    """``server.port: 0`` with several workers: one port, chosen here and held (bound with
    ``SO_REUSEPORT``, never listening) so the workers can all bind it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock


async def supervise(
    config: Config, config_path: Path, count: int, environ: Mapping[str, str]
) -> int:
    loop = asyncio.get_running_loop()
    with (
        tempfile.TemporaryDirectory(prefix="gateway-workers-") as workdir,
        contextlib.ExitStack() as held,
    ):
        supervisor = Supervisor(config, config_path, count, environ, Path(workdir))
        if config.server.port == 0:
            supervisor.port = held.enter_context(reserve_port(config.server.host)).getsockname()[1]
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, supervisor.stop)
        loop.add_signal_handler(signal.SIGHUP, supervisor.signal_workers, signal.SIGHUP)
        if config.store.type == "memory":
            log.warning(
                "per_worker_limits",
                workers=count,
                detail="store is memory: each worker counts rate limits and tokens on its own",
            )
        admin: web.AppRunner | None = None
        if config.admin.enabled:
            admin = ListenerRunner(
                supervisor.admin_app(),
                Listener.admin(config.server),
                access_log=None,
                shutdown_timeout=1,
            )
            await admin.setup()
            await web.TCPSite(admin, config.admin.host, config.admin.port).start()
        shared = shared_signing_keys(config, environ)
        keepers = [
            asyncio.create_task(
                supervisor.keep(w, {**supervisor.worker_environ(w), **shared}),
                name=f"worker-{w.index}",
            )
            for w in supervisor.workers
        ]
        log.info(
            "supervising",
            workers=count,
            public=f"http://{config.server.host}:{supervisor.port}",
            admin=f"http://{config.admin.host}:{config.admin.port}" if admin else None,
            pid=os.getpid(),
        )
        stopped = asyncio.create_task(supervisor.stopping.wait())
        crashed = asyncio.create_task(supervisor.crashed.wait())
        try:
            await asyncio.wait([stopped, crashed], return_when=asyncio.FIRST_COMPLETED)
            if supervisor.crashed.is_set():
                supervisor.stop()
            clean = await supervisor.finish(keepers)
        finally:
            for task in (stopped, crashed, *keepers):
                task.cancel()
            if admin is not None:
                await admin.cleanup()
        if supervisor.crashed.is_set():
            log.critical("supervisor_exiting", reason="workers_crash_loop")
            return EXIT_CRASH_LOOP
        log.info("stopped", workers_clean=clean)
        return 0 if clean else 1


def run_supervisor(
    config: Config, config_path: Path, count: int, environ: Mapping[str, str]
) -> int:
    from gateway.observability.logging import flush as flush_logs

    try:
        return asyncio.run(supervise(config, config_path.resolve(), count, environ))
    finally:
        flush_logs()
