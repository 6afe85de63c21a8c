from gateway.core.gcra import LimitSpec, evaluate

S = 1_000_000  # one second in microseconds
MS = 1000


def run(spec: LimitSpec, times: list[int]) -> list[bool]:
    tat: int | None = None
    out = []
    for now in times:
        state = evaluate(spec, tat, now)
        out.append(state.allowed)
        if state.allowed:
            tat = state.new_tat
    return out


def test_burst_then_steady_rate() -> None:
    spec = LimitSpec("k", interval_us=S, burst=3)  # 1/s, burst 3
    assert run(spec, [0, 0, 0, 0]) == [True, True, True, False]
    assert run(spec, [0, 0, 0, S, S]) == [True, True, True, True, False]


def test_no_window_edge_doubling() -> None:
    spec = LimitSpec("k", interval_us=100 * MS, burst=10)  # 10/s
    # 10 at t=999 ms then 10 at t=1001 ms: a fixed window would admit 20
    times = [999 * MS] * 10 + [1001 * MS] * 10
    assert sum(run(spec, times)) == 10


def test_retry_after_is_exact() -> None:
    spec = LimitSpec("k", interval_us=500 * MS, burst=2)
    first = evaluate(spec, None, 0)
    second = evaluate(spec, first.new_tat, 0)
    third = evaluate(spec, second.new_tat, 0)
    assert (first.remaining, second.remaining) == (1, 0)
    assert not third.allowed and third.retry_ms == 500
    assert evaluate(spec, second.new_tat, 500 * MS).allowed
    assert not evaluate(spec, second.new_tat, 500 * MS - 1).allowed


def test_any_interval_admits_exactly_the_burst() -> None:
    """Integer microseconds: no rounding can cost a request of the burst."""
    for rate in range(1, 40):
        for per in (1, 2, 3, 7, 60):
            for burst in (1, 2, 3, 5, 6, 10):
                spec = LimitSpec("k", interval_us=round(per * S / rate), burst=burst)
                now = 1_234_567_891_011
                assert run(spec, [now] * (burst + 1)) == [True] * burst + [False]
