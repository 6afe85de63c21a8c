"""In-process micro-benchmarks of the gateway's per-request CPU path (no sockets, no load).

``python -m bench.micro`` times, in one process and for a few seconds at most:

* ``request``: one admitted ``POST /v1/chat/conversation/public/message`` through the
  real application (router, middlewares, CORS, handler, response signals, the JSON access
  line), with the Redis store's script call answered by a stub and the upstream replaced
  by a stub that answers at once: what the gateway itself spends, without the network;
* ``admit``: ``_admit_token`` alone (token decode, binding, policies, store arguments,
  headers); ``payload``: reading and validating the JSON body; ``access_line``: the
  middleware with a handler that does nothing;
* ``request_dpop``: ``request`` with a token bound to a key (``cnf.jkt``) and a fresh
  DPoP proof on each call; ``dpop_verify``: checking one ES256 proof (its key parsed
  once, as the verifier's cache keeps it); ``dpop_verify_cold``: the same with a key
  never seen (the JWK parsed too).

The lowest of several rounds is reported, in microseconds per call. To compare two trees
in one session, run the file with each tree first on the path (the file's own directory
holds no package): ``PYTHONPATH=<tree> .venv/bin/python bench/micro.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from redis.asyncio import Redis

from bench.gateway_setup import raised_policies
from bench.proof_mode import BenchKey
from gateway.config import Config
from gateway.core.breaker import CircuitBreaker
from gateway.core.dpop import ProofVerifier
from gateway.keystore.base import Found, KeyRecord, utcnow
from gateway.observability import logging as gateway_logging
from gateway.store.guarded import GuardedStore
from gateway.store.redis import RedisStore
from gateway.upstream import BufferedAnswer
from gateway.web import public
from gateway.web.app import create_app
from gateway.web.state import SERVICES

SIGNING = {"GATEWAY_SIGNING_KEYS": "bench:" + "b" * 64}
KEY_ID = "AbCdEf012345"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) bench/1.0"


class StubPipe:
    """Answers the admit script like Redis would for an admitted request."""

    def __init__(self, limits: int) -> None:
        self.reply: list[Any] = [0, b"ok", b"", 0] + [1, 100, 1000, 0] * limits

    async def evalsha(self, sha: Any, script: Any, keys: Any, args: Any) -> Any:
        return self.reply

    async def close(self) -> None:
        return None


class StartedRedisStore(RedisStore):
    async def start(self) -> None:  # nothing to connect to
        return None


class StubKeys:
    """A key store holding one active record."""

    def __init__(self, record: KeyRecord) -> None:
        self._records = {record.key_id: record}

    def lookup(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    def snapshot(self) -> dict[str, KeyRecord]:
        return self._records

    async def find(self, key_id: str) -> Found:
        record = self._records.get(key_id)
        return Found(record, "snapshot" if record is not None else "disabled")

    async def refresh(self) -> None:
        return None

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()

    async def close(self) -> None:
        return None


class StubResponse:
    status = 200
    content_type = "application/json"

    def __enter__(self) -> StubResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class StubUpstream:
    async def send_message(self, ctx: Any, payload: Any) -> StubResponse:
        return StubResponse()

    async def buffer(self, resp: Any) -> BufferedAnswer:
        headers = CIMultiDict({"Content-Type": "application/json"})
        return BufferedAnswer(200, headers, b'{"answer": "hello"}')


class Writer:
    """The least a response needs to be prepared and finished."""

    buffer_size = 0
    output_size = 0
    length: int | None = None

    def enable_chunking(self) -> None:
        return None

    def enable_compression(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def write_headers(self, status_line: str, headers: Any) -> None:
        return None

    def send_headers(self) -> None:
        return None

    async def write(self, data: bytes) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None

    async def drain(self) -> None:
        return None


class Transport:
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default

    def is_closing(self) -> bool:
        return False


class Protocol:
    max_field_size = 8190
    max_line_length = 8190
    max_headers = 128
    ssl_context = None
    peername = ("127.0.0.1", 40000)
    sockname = ("127.0.0.1", 8080)

    def __init__(self) -> None:
        self.transport = Transport()
        self.writer = Writer()


async def build(work: Path) -> tuple[web.Application, str]:
    config = Config.model_validate(
        {
            "store": {"type": "redis", "url": "redis://127.0.0.1:1/0"},
            "keys": {"type": "file", "path": str(work / "keys.yaml")},
            "models": {"demo": {}},
            "policies": {"path": str(raised_policies(work / "policies")), "watch": False},
            "upstream": {"url": "http://127.0.0.1:1"},
        }
    )
    record = KeyRecord(
        key_id=KEY_ID, hash="$argon2id$v=19$m=8,t=1,p=1$x$y", models=("demo",), created_at=utcnow()
    )
    store = GuardedStore(
        StartedRedisStore(Redis(), pipe=StubPipe(limits=3)),  # type: ignore[arg-type]
        timeout=0.05,
        breaker=CircuitBreaker(5, 5.0),
    )
    keys = StubKeys(record)
    app = create_app(config, environ=SIGNING, store=store, keystore=keys)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    services = app[SERVICES]
    services.upstream = StubUpstream()  # type: ignore[assignment]
    token = services.codec.issue(
        key_id=KEY_ID, model_id="demo", now=services.admissions.now()
    ).token
    return app, token


def send_request(
    app: web.Application, token: str, protocol: Protocol, proof: str | None = None
) -> web.Request:
    body = orjson.dumps({"client_token": token, "message": "hello there", "stream": False})
    loop = asyncio.get_running_loop()
    payload = StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    payload.feed_data(body)
    payload.feed_eof()
    headers = {
        "Host": "gateway",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "User-Agent": USER_AGENT,
    }
    if proof is not None:
        headers["DPoP"] = proof
    return make_mocked_request(
        "POST",
        public.SEND_PATH,
        headers,
        app=app,
        protocol=protocol,
        writer=protocol.writer,
        transport=protocol.transport,
        payload=payload,
    )


Timed = Callable[[int], Awaitable[float]]


async def best_of(timed: Timed, count: int, rounds: int) -> float:
    await timed(min(count, 500))  # warm the caches
    return min([await timed(count) for _ in range(rounds)]) / count * 1e6


async def main(count: int, rounds: int) -> None:
    import tempfile

    out = io.BytesIO()
    gateway_logging.configure("info", "json", out=out)
    with tempfile.TemporaryDirectory() as work:
        app, token = await build(Path(work))
        protocol = Protocol()

        async def request(n: int) -> float:
            return await handled([send_request(app, token, protocol) for _ in range(n)])

        async def handled(requests: list[web.Request]) -> float:
            """Each request through the application, in turn: the time it took."""
            started = time.perf_counter()
            for i, req in enumerate(requests):
                resp = await app._handle(req)
                await resp.prepare(req)
                await resp.write_eof()
                if resp.status != 200:
                    raise SystemExit(f"unexpected status {resp.status}")
                if i % 64 == 63:
                    await asyncio.sleep(0)  # the batched log lines leave
            elapsed = time.perf_counter() - started
            out.seek(0)
            out.truncate()
            return elapsed

        async def admit(n: int) -> float:
            req = send_request(app, token, protocol)
            await app._handle(req)  # sets the request's context (client IP, id, route)
            started = time.perf_counter()
            for _ in range(n):
                await public._admit_token(req, token, "send")
            return time.perf_counter() - started

        async def payload(n: int) -> float:
            from gateway.web.payloads import parse_send_message, read_json_object

            requests = [send_request(app, token, protocol) for _ in range(n)]
            started = time.perf_counter()
            for req in requests:
                data = await read_json_object(req, 65536)
                parse_send_message(data, 8000)
            return time.perf_counter() - started

        async def access_line(n: int) -> float:
            """The context middleware around a handler that answers at once."""
            middleware = app.middlewares[0]
            answer = web.Response()

            async def handler(request: web.Request) -> web.StreamResponse:
                return answer

            requests = [send_request(app, token, protocol) for _ in range(n)]
            for req in requests:
                req._match_info = await app.router.resolve(req)
            started = time.perf_counter()
            for i, req in enumerate(requests):
                await middleware(req, handler)
                if i % 64 == 63:
                    await asyncio.sleep(0)
            elapsed = time.perf_counter() - started
            out.seek(0)
            out.truncate()
            return elapsed

        key = BenchKey()
        services = app[SERVICES]
        bound = services.codec.issue(
            key_id=KEY_ID, model_id="demo", now=services.admissions.now(), jkt=key.jkt
        ).token
        url = "http://gateway" + public.SEND_PATH

        async def request_dpop(n: int) -> float:
            proofs = key.proofs(n, "POST", url, bound)
            return await handled([send_request(app, bound, protocol, p) for p in proofs])

        async def dpop_verify(n: int) -> float:
            verifier = ProofVerifier()
            proofs = key.proofs(n, "POST", url, bound)
            now = time.time()
            started = time.perf_counter()
            for proof in proofs:
                verifier.verify(proof, method="POST", url=url, now=now, token=bound, jkt=key.jkt)
            return time.perf_counter() - started

        async def dpop_verify_cold(n: int) -> float:
            keys = [BenchKey() for _ in range(n)]
            proofs = [k.proofs(1, "POST", url)[0] for k in keys]
            verifier = ProofVerifier()
            now = time.time()
            started = time.perf_counter()
            for proof in proofs:
                verifier.verify(proof, method="POST", url=url, now=now)
            return time.perf_counter() - started

        for name, timed in [
            ("request", request),
            ("request_dpop", request_dpop),
            ("dpop_verify", dpop_verify),
            ("dpop_verify_cold", dpop_verify_cold),
            ("admit", admit),
            ("payload", payload),
            ("access_line", access_line),
        ]:
            print(f"{name:16s} {await best_of(timed, count, rounds):8.2f} us")
        await app.shutdown()
        await app.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.rounds))
