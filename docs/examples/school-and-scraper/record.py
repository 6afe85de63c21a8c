"""Record decisions.jsonl, the traffic of the worked example in docs/policies.md.

Starts a real ``gateway serve`` (and the reference chat backend) with the decision log on
and baseline.yaml as its policies, then plays two clients against it at once, for about
80 seconds of real time:

- a school behind one NAT (every request from 203.0.113.17): 24 pupils open the chat
  within 5 s, each with its own browser (User-Agent), token and conversation, and send 4
  messages each, 12 to 18 s apart (a person typing);
- a scraper (198.51.100.23): 8 forged tokens in a burst, then 2 real tokens sending a
  message a second each for 30 s (machine pace).

The gateway trusts 127.0.0.1 as its proxy, so each request's ``X-Forwarded-For`` is the
client's address. Run from a checkout (it uses the test suite's process helpers):

    PYTHONPATH=. .venv/bin/python docs/examples/school-and-scraper/record.py \\
        docs/examples/school-and-scraper/decisions.jsonl
"""

from __future__ import annotations

import asyncio
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.stack import SEND, TOKEN, stack

HERE = Path(__file__).resolve().parent
SCHOOL_IP = "203.0.113.17"
SCRAPER_IP = "198.51.100.23"
PUPILS = 24
MESSAGES = 4
SCRAPER_START_S = 10.0
SCRAPER_TOKENS = 2
SCRAPER_SECONDS = 30
FORGED = 8


def browser(n: int) -> str:
    """A different browser for each pupil (versions vary as on a school's machines)."""
    engines = [
        "Windows NT 10.0; Win64; x64",
        "Macintosh; Intel Mac OS X 14_5",
        "X11; CrOS x86_64 15917.71.0",
    ]
    return (
        f"Mozilla/5.0 ({engines[n % 3]}) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{126 + n % 4}.0.{6478 + n}.{n * 7 % 150} Safari/537.36"
    )


async def token(http: httpx.AsyncClient, key: str, ip: str, agent: str) -> str:
    resp = await http.get(
        TOKEN,
        headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": ip, "User-Agent": agent},
    )
    resp.raise_for_status()
    return str(resp.json()["token"])


async def send(http: httpx.AsyncClient, client_token: str, ip: str, agent: str, text: str) -> int:
    resp = await http.post(
        SEND,
        json={"client_token": client_token, "message": text},
        headers={"X-Forwarded-For": ip, "User-Agent": agent},
    )
    return resp.status_code


async def pupil(
    http: httpx.AsyncClient, key: str, n: int, start: float, rng: random.Random
) -> list[int]:
    agent = browser(n)
    await asyncio.sleep(max(start + n * 0.2 - time.monotonic(), 0))
    mine = await token(http, key, SCHOOL_IP, agent)
    statuses = []
    await asyncio.sleep(rng.uniform(5, 12))  # reading the page, typing
    for i in range(MESSAGES):
        statuses.append(
            await send(http, mine, SCHOOL_IP, agent, f"question {i + 1} about photosynthesis")
        )
        if i + 1 < MESSAGES:
            await asyncio.sleep(rng.uniform(12, 18))
    return statuses


async def scraper(http: httpx.AsyncClient, key: str, start: float) -> list[int]:
    agent = "python-requests/2.32.3"
    await asyncio.sleep(max(start + SCRAPER_START_S - time.monotonic(), 0))
    statuses = []
    for i in range(FORGED):  # probing: tokens it made up
        forged = f"eyJhbGciOiJIUzI1NiJ9.{secrets.token_urlsafe(24)}.{secrets.token_urlsafe(32)}"
        statuses.append(await send(http, forged, SCRAPER_IP, agent, f"probe {i}"))
        await asyncio.sleep(0.2)
    tokens = [await token(http, key, SCRAPER_IP, agent) for _ in range(SCRAPER_TOKENS)]
    began = time.monotonic()
    for second in range(SCRAPER_SECONDS):
        for n, mine in enumerate(tokens):
            statuses.append(await send(http, mine, SCRAPER_IP, agent, f"list item {second}-{n}"))
        await asyncio.sleep(max(began + second + 1 - time.monotonic(), 0))
    return statuses


async def play(public: str, key: str) -> None:
    rng = random.Random(13)
    async with httpx.AsyncClient(base_url=public, timeout=30) as http:
        # a new key reaches the gateway within seconds
        for _ in range(40):
            probe = await http.get(
                TOKEN, headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": "192.0.2.1"}
            )
            if probe.status_code == 200:
                break
            await asyncio.sleep(0.25)
        start = time.monotonic() + 1
        school = [pupil(http, key, n, start, random.Random(rng.random())) for n in range(PUPILS)]
        results = await asyncio.gather(scraper(http, key, start), *school)
    scraped, pupils = results[0], results[1:]
    print(f"scraper: {len(scraped)} requests, statuses {sorted(set(scraped))}", file=sys.stderr)
    print(
        f"school: {sum(map(len, pupils))} messages, "
        f"statuses {sorted({s for p in pupils for s in p})}",
        file=sys.stderr,
    )


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as room:
        tmp = Path(room)
        log = tmp / "decisions.jsonl"
        with stack(
            tmp,
            env={"GATEWAY_DECISION_LOG_SECRET": secrets.token_urlsafe(32)},
            sections={
                "observability": {"decision_log": str(log)},
                "policies": {"path": str(HERE / "baseline.yaml"), "watch": False},
            },
            trusted_proxies=["127.0.0.1/32"],
        ) as gw:
            key, _ = gw.create_key()
            asyncio.run(play(gw.public, key))
        # the gateway has stopped: its writer flushed the log; the probe line goes
        lines = [
            line for line in log.read_text().splitlines(keepends=True) if "192.0.2.0/24" not in line
        ]
        out.write_text("".join(lines))
    print(f"{out}: {len(lines)} lines", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
