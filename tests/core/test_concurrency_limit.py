"""The adaptive concurrency limit, driven by a scripted clock and latencies."""

from __future__ import annotations

import itertools

import pytest

from gateway.core.concurrency_limit import GradientLimit, Slots

WINDOW = 0.1


def run_windows(limit: GradientLimit, start: float, windows: int, rtt: float) -> float:
    """``windows`` windows in which the limit is full and ten requests taking ``rtt``
    each end; the tenth ends the window."""
    now = start
    for _ in range(windows):
        while limit.try_acquire():
            pass
        for i in range(10):
            now = start + WINDOW * (i + 1) / 10
            limit.release(rtt, now)
        start = now
    return now


def test_grows_while_latency_stays_at_its_usual_level() -> None:
    limit = GradientLimit(10, 500, now=0.0, initial_limit=20, window_seconds=WINDOW)
    seen = [limit.limit]
    now = 0.0
    for _ in range(30):
        now = run_windows(limit, now, 1, rtt=0.010)
        seen.append(limit.limit)
    assert seen[-1] > 40
    assert all(b >= a for a, b in itertools.pairwise(seen))  # never shrinks


def test_shrinks_when_latency_rises_and_recovers_when_it_falls() -> None:
    limit = GradientLimit(10, 500, now=0.0, initial_limit=200, window_seconds=WINDOW)
    now = run_windows(limit, 0.0, 20, rtt=0.010)  # learns the usual latency
    before = limit.limit
    now = run_windows(limit, now, 10, rtt=0.050)  # five times slower: queueing
    shrunk = limit.limit
    assert shrunk < before * 0.5
    now = run_windows(limit, now, 40, rtt=0.010)
    assert limit.limit > shrunk


def test_a_window_shrinks_the_limit_by_at_most_a_tenth() -> None:
    """Gradient floored at 0.5, smoothed by 0.2: at worst 0.9 of the limit (plus the
    queue allowance) per window."""
    limit = GradientLimit(1, 1000, now=0.0, initial_limit=400, window_seconds=WINDOW)
    now = run_windows(limit, 0.0, 12, rtt=0.010)
    before = limit.estimate
    run_windows(limit, now, 1, rtt=10.0)
    assert limit.estimate >= before * 0.9


def test_stays_within_the_floor_and_the_ceiling() -> None:
    limit = GradientLimit(25, 60, now=0.0, initial_limit=30, window_seconds=WINDOW)
    now = run_windows(limit, 0.0, 200, rtt=0.010)
    assert limit.limit == 60
    seen = []
    for _ in range(50):
        now = run_windows(limit, now, 1, rtt=5.0)
        seen.append(limit.limit)
    assert min(seen) == 25
    assert all(25 <= s <= 60 for s in seen)


def test_a_replica_that_is_not_busy_keeps_its_limit() -> None:
    """Fewer than half the limit in flight: latency says nothing about the limit."""
    limit = GradientLimit(10, 1000, now=0.0, window_seconds=WINDOW)
    now = 0.0
    for step in range(1000):
        now += 0.001
        assert limit.try_acquire()
        limit.release(0.010 if step < 500 else 1.0, now)
    assert limit.limit == 1000
    assert limit.in_flight == 0


def test_admission_counts_places() -> None:
    limit = GradientLimit(2, 2, now=0.0)
    assert limit.try_acquire() and limit.try_acquire()
    assert not limit.try_acquire()
    limit.release_unsampled()
    assert limit.try_acquire()
    assert limit.in_flight == 2


def test_a_window_needs_enough_samples() -> None:
    limit = GradientLimit(1, 100, now=0.0, initial_limit=50, window_seconds=WINDOW)
    for _ in range(50):
        limit.try_acquire()
    for _ in range(5):  # far past the window, but only 5 samples
        limit.release(5.0, 10.0)
    assert limit.long_rtt == 0.0
    for _ in range(5):
        limit.release(5.0, 10.0)
    assert limit.long_rtt == pytest.approx(5.0)


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="min_limit"):
        GradientLimit(10, 5, now=0.0)
    with pytest.raises(ValueError, match="min_limit"):
        GradientLimit(0, 5, now=0.0)


def test_stream_slots() -> None:
    slots = Slots(2)
    assert slots.try_take() and slots.try_take()
    assert not slots.try_take()
    slots.give_back()
    assert slots.try_take()


def lagging_window(limit: GradientLimit, start: float, in_flight: int, lag: float) -> float:
    """One window with ``in_flight`` requests taking 10 ms each (the usual latency, so
    the latency alone changes nothing) while the loop ran its timers ``lag`` late."""
    while limit.in_flight < in_flight and limit.try_acquire():
        pass
    for _ in range(20):
        limit.observe_lag(lag)
    now = start
    for i in range(10):
        now = start + WINDOW * (i + 1) / 10
        limit.release(0.010, now)
        limit.try_acquire()  # the next request takes the place
    return now


def test_a_lagging_loop_shrinks_the_limit_from_what_was_in_flight_at_once() -> None:
    """1000 places, 200 in flight, the loop twice as late as the target: one window
    brings the limit to half of the 200 (not 0.9 of 1000, as the latency alone would)."""
    limit = GradientLimit(10, 1000, now=0.0, window_seconds=WINDOW, lag_target=0.002)
    now = lagging_window(limit, 0.0, 200, lag=0.0005)
    assert limit.limit == 1000  # on time: not busy enough to judge, unchanged
    lagging_window(limit, now, 200, lag=0.004)
    assert limit.limit == 100


def test_the_lag_shrinks_by_its_ratio_at_most_by_half_and_never_below_the_floor() -> None:
    limit = GradientLimit(40, 1000, now=0.0, window_seconds=WINDOW, lag_target=0.002)
    now = lagging_window(limit, 0.0, 100, lag=0.0025)
    assert limit.estimate == pytest.approx(80)  # 100 x 2 / 2.5
    seen = []
    for _ in range(5):
        now = lagging_window(limit, now, 1000, lag=0.050)  # 25 times late: half at most
        seen.append(limit.limit)
    assert seen == [40, 40, 40, 40, 40]


def test_once_the_loop_is_on_time_again_the_limit_grows_back() -> None:
    limit = GradientLimit(10, 1000, now=0.0, window_seconds=WINDOW, lag_target=0.002)
    now = lagging_window(limit, 0.0, 200, lag=0.010)
    shrunk = limit.limit
    for _ in range(40):
        now = lagging_window(limit, now, 1000, lag=0.001)
    assert limit.limit > shrunk * 1.5


def test_without_a_lag_target_the_lag_is_ignored() -> None:
    limit = GradientLimit(10, 1000, now=0.0, window_seconds=WINDOW)
    lagging_window(limit, 0.0, 200, lag=1.0)
    assert limit.limit == 1000
