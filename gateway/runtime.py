"""Process-wide runtime settings of a serving process."""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Collect once, then move every object that startup built (modules, configuration,
    compiled policies, clients) into the collector's permanent generation.

    They live as long as the process, yet a full collection would walk them all: tens of
    milliseconds on the loop, often enough to push an in-flight store call past its
    deadline. After this, full collections walk only what requests allocate; and the
    young generation is collected every 10,000 net allocations instead of 700, which
    cuts the collector's share of a busy process's CPU (about 4% to under 1% under the
    POST benchmark) while each pass stays well under a millisecond."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
