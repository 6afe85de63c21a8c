from gateway.core.gcra import LimitSpec, evaluate


def run(spec: LimitSpec, times: list[float]) -> list[bool]:
    tat: float | None = None
    out = []
    for now in times:
        state = evaluate(spec, tat, now)
        out.append(state.allowed)
        if state.allowed:
            tat = state.new_tat
    return out


def test_burst_then_steady_rate() -> None:
    spec = LimitSpec("k", interval_ms=1000, burst=3)  # 1/s, burst 3
    assert run(spec, [0, 0, 0, 0]) == [True, True, True, False]
    assert run(spec, [0, 0, 0, 1000, 1000]) == [True, True, True, True, False]


def test_no_window_edge_doubling() -> None:
    spec = LimitSpec("k", interval_ms=100, burst=10)  # 10/s
    # 10 at t=999 ms then 10 at t=1001 ms: a fixed window would admit 20
    times = [999.0] * 10 + [1001.0] * 10
    assert sum(run(spec, times)) == 10


def test_retry_after_is_exact() -> None:
    spec = LimitSpec("k", interval_ms=500, burst=2)
    first = evaluate(spec, None, 0)
    second = evaluate(spec, first.new_tat, 0)
    third = evaluate(spec, second.new_tat, 0)
    assert (first.remaining, second.remaining) == (1, 0)
    assert not third.allowed and third.retry_ms == 500
    assert evaluate(spec, second.new_tat, 500).allowed
    assert not evaluate(spec, second.new_tat, 499).allowed
