"""Synthetic decision logs, for the replay's size figure (a day of one busy replica).

``python -m tests.support.decision_logs OUT LINES`` writes LINES decision lines spread
over 24 hours: visitors behind many prefixes, each with a few conversations, and a
scraper that bursts from one prefix. The hashes are random stand-ins (the replay only
compares them)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

DAY_US = 86_400 * 1_000_000
START_US = 1_765_000_000 * 1_000_000


def _h(rng: random.Random) -> str:
    return f"{rng.getrandbits(96):024x}"


def write_log(path: Path, lines: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    prefixes = [f"10.{i // 256}.{i % 256}.0/24" for i in range(2_000)]
    clients = [(rng.choice(prefixes), _h(rng), _h(rng)) for _ in range(20_000)]
    step = DAY_US // lines
    ts = START_US
    conversations: dict[int, tuple[str, str]] = {}
    with path.open("w") as out:
        for _ in range(lines):
            ts += rng.randint(0, 2 * step)
            who = rng.randrange(len(clients)) if rng.random() > 0.05 else 0  # 0: the scraper
            prefix, ip, ua = clients[who]
            if rng.random() < 0.1 or who not in conversations:
                conversations[who] = (_h(rng), _h(rng))
            token, conversation = conversations[who]
            route = "send" if rng.random() < 0.6 else "messages" if rng.random() < 0.8 else "token"
            line = {
                "log": "decision",
                "v": 1,
                "ts_us": ts,
                "route": route,
                "method": "POST" if route == "send" else "GET",
                "model": "demo",
                "key_id": f"Key{who % 50:05d}",
                "token": token if route != "token" else None,
                "conversation": conversation if route != "token" else None,
                "ip_prefix": prefix,
                "ip": ip,
                "ua": ua,
                "outcome": "admitted",
                "code": None,
                "status": 200,
                "reached": True,
                "policies": [],
            }
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
            if len(conversations) > 50_000:
                conversations.clear()


if __name__ == "__main__":
    write_log(Path(sys.argv[1]), int(sys.argv[2]))
