"""The whole suite as two pytest processes side by side (``make test``).

Most tests wait on sockets, child processes, Redis servers and timers rather than on the
CPU (a serial run keeps pytest's process at about 15% of a core), so two processes finish
in a little over half the time of one. The tests already isolate themselves for this:
each starts its own Redis servers and gateways on free ports, and each shard gets its own
temporary directory. The first shard (the multi-process tests) streams its output; the
second's is printed when it ends. Arguments are passed to both (``-m "not slow"``, ``-x``).

Exit status: 0 when both pass; else the first shard's failure status, then the second's
(pytest's 5, no test collected, counts only when neither shard collected a test).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
#: the tests that start gateway, replica or Chromium processes: about half the wall time
FIRST = ("e2e", "distributed", "browser")
#: what is not a test module or package of its own
NOT_TESTS = {"support", "fixtures", "__pycache__"}


def shards() -> tuple[list[str], list[str]]:
    first: list[str] = []
    second: list[str] = []
    for path in sorted(TESTS.iterdir()):
        if path.name in NOT_TESTS or path.name.startswith((".", "__")):
            continue
        if path.is_dir() or (path.name.startswith("test_") and path.suffix == ".py"):
            target = first if path.name in FIRST else second
            target.append(str(path.relative_to(ROOT)))
    return first, second


def main(argv: list[str]) -> int:
    first, second = shards()
    with tempfile.TemporaryDirectory(prefix="gateway-tests-") as scratch:
        log = Path(scratch) / "second.log"

        def command(paths: list[str], name: str) -> list[str]:
            temp = Path(scratch) / name
            return [sys.executable, "-m", "pytest", f"--basetemp={temp}", *argv, *paths]

        with log.open("wb") as out:
            background = subprocess.Popen(
                command(second, "second"), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
            try:
                print(f"== shard 1 of 2: {' '.join(first)}", flush=True)
                one = subprocess.run(command(first, "first"), cwd=ROOT, check=False).returncode
                two = background.wait()
            except BaseException:
                background.kill()
                background.wait()
                raise
        print(f"\n== shard 2 of 2: {' '.join(second)}", flush=True)
        sys.stdout.write(log.read_text(errors="replace"))
    if one == two == 5:
        return 5
    for status in (one, two):
        if status not in (0, 5):
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
