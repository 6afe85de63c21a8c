"""Copy the latest results into the README's Performance section:
``python -m bench.readme`` (between the ``bench:start`` and ``bench:end`` markers)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
KEPT = (
    "Machine",
    "Throughput",
    "Streamed answer",
    "Keys, Redis and memory",
    "Overload",
    "Targets",
)


def excerpt(results: str) -> str:
    """The run's date and the kept sections, their headings one level down."""
    date = results.splitlines()[0].removeprefix("# Benchmark results, ")
    out = [f"Latest run ({date}):", ""]
    for block in re.split(r"\n(?=## )", results):
        title = block.splitlines()[0].removeprefix("## ")
        if title.startswith(KEPT):
            out.append("#" + block.strip())
            out.append("")
    return "\n".join(out).strip()


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    latest = (Path(__file__).with_name("results") / "latest.md").read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{excerpt(latest)}\n{END}{tail}")
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
