"""The supervisor's pure parts: worker counts, refusals, backoff, merged metrics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from gateway.cli import main
from gateway.config import Config
from gateway.supervisor import (
    BACKOFF_SECONDS,
    MAX_BACKOFF_SECONDS,
    Worker,
    WorkerMetrics,
    backoff,
    memory_store_refusal,
    worker_count,
)


def test_worker_count() -> None:
    assert worker_count(3) == 3
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="at least 1"):
        worker_count(0)


def config(**sections: object) -> Config:
    return Config.model_validate({"models": {"demo": {}}, **sections})


def test_workers_field() -> None:
    assert config().server.workers == 1
    assert config(server={"workers": "auto"}).server.workers == "auto"
    assert config(server={"workers": 4}).server.workers == 4
    for bad in (0, "many", 1000):
        with pytest.raises(ValidationError):
            config(server={"workers": bad})


def test_the_flag_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "two"):
        with pytest.raises(SystemExit) as exited:
            main(["serve", "--workers", bad])
        assert exited.value.code == 2
        assert "a number of at least 1, or auto" in capsys.readouterr().err


def test_memory_store_refusal() -> None:
    memory = config()
    assert memory_store_refusal(memory, 1) is None
    refusal = memory_store_refusal(memory, 2)
    assert refusal is not None and "server.allow_per_worker_limits: true" in refusal
    opted = config(server={"allow_per_worker_limits": True})
    assert memory_store_refusal(opted, 2) is None
    redis = config(store="redis")
    assert memory_store_refusal(redis, 8) is None


def test_backoff_doubles_up_to_a_ceiling() -> None:
    waits = [backoff(n) for n in range(0, 10)]
    assert waits[:4] == [BACKOFF_SECONDS, BACKOFF_SECONDS, 2 * BACKOFF_SECONDS, 4 * BACKOFF_SECONDS]
    assert max(waits) == MAX_BACKOFF_SECONDS == waits[-1]


def _exposition(requests: int, latency: float) -> str:
    registry = CollectorRegistry()
    counter = Counter("demo_requests", "Requests.", ["route"], registry=registry)
    counter.labels(route="/a").inc(requests)
    histogram = Histogram("demo_seconds", "Latency.", buckets=(0.1, 1.0), registry=registry)
    histogram.observe(latency)
    return generate_latest(registry).decode()


def test_worker_metrics_are_merged_with_a_worker_label() -> None:
    workers = [Worker(0, Path("/nonexistent/0")), Worker(1, Path("/nonexistent/1"), restarts=2)]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerMetrics({0: _exposition(3, 0.05), 1: _exposition(5, 0.5)}, workers))
    text = generate_latest(registry).decode()
    assert text.count("# TYPE demo_requests_total counter") == 1
    assert 'demo_requests_total{route="/a",worker="0"} 3.0' in text
    assert 'demo_requests_total{route="/a",worker="1"} 5.0' in text
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    histogram = parsed["demo_seconds"]
    assert histogram.type == "histogram"
    buckets = {
        (s.labels["worker"], s.labels["le"]): s.value
        for s in histogram.samples
        if s.name == "demo_seconds_bucket"
    }
    assert buckets[("0", "0.1")] == 1.0 and buckets[("1", "0.1")] == 0.0
    assert buckets[("1", "1.0")] == 1.0
    up = {s.labels["worker"]: s.value for s in parsed["gateway_worker_up"].samples}
    assert up == {"0": 1.0, "1": 1.0}
    restarts = {s.labels["worker"]: s.value for s in parsed["gateway_worker_restarts"].samples}
    assert restarts == {"0": 0.0, "1": 2.0}


def test_a_worker_missing_from_the_scrape_is_down() -> None:
    workers = [Worker(0, None), Worker(1, None)]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerMetrics({1: _exposition(1, 0.05)}, workers))
    parsed = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    up = {s.labels["worker"]: s.value for s in parsed["gateway_worker_up"].samples}
    assert up == {"0": 0.0, "1": 1.0}
    assert {s.labels["worker"] for s in parsed["demo_requests"].samples} == {"1"}
