from gateway.core.breaker import BreakerState, CircuitBreaker


def test_opens_after_consecutive_failures_and_probes_after_the_pause() -> None:
    breaker = CircuitBreaker(failure_threshold=3, open_seconds=1.0)
    assert breaker.allow(0.0)
    assert not breaker.failure(0.0)
    breaker.success()  # a success resets the count
    assert not breaker.failure(0.1) and not breaker.failure(0.2)
    assert breaker.failure(0.3)  # third in a row opens
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow(1.0)
    assert breaker.allow(1.31)  # half-open: one probe
    assert not breaker.allow(1.32)  # only one at a time
    assert breaker.failure(1.4)  # the probe failed: open again
    assert not breaker.allow(2.0)
    assert breaker.allow(2.41)
    assert breaker.success()  # the probe succeeded: closed
    assert breaker.state is BreakerState.CLOSED and breaker.allow(2.5)
