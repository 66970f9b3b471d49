"""Canary analysis: Prometheus text as the proxies write it → error rate and p99, and the verdict."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from mesh.telemetry.metrics import LATENCY_BUCKETS
from mesh.telemetry.analysis import Sample, Thresholds, parse, verdict


def metrics(ok: int, failed: int, latency: float) -> str:
    reg = CollectorRegistry()
    requests = Counter("mitmesh_requests_total", "", ["direction", "route", "code"], registry=reg)
    duration = Histogram("mitmesh_request_duration_seconds", "", ["direction", "route"],
                         buckets=LATENCY_BUCKETS, registry=reg)
    requests.labels("gateway", "users", "200").inc(ok)
    requests.labels("gateway", "users", "502").inc(failed / 2)
    requests.labels("gateway", "orders", "error").inc(failed / 2)
    for _ in range(ok + failed):
        duration.labels("gateway", "users").observe(latency)
    return generate_latest(reg).decode()


def test_parse_sums_routes_and_counts_5xx_and_no_response():
    s = parse(metrics(90, 10, 0.003))
    assert (s.requests, s.errors, s.error_rate) == (100, 10, 0.1)
    assert s.quantile(0.99) == 0.005


def test_window_is_a_difference():
    before, after = parse(metrics(10, 0, 0.003)), parse(metrics(100, 10, 0.003))
    d = after - before
    assert (d.requests, d.errors) == (100, 10)
    assert (Sample() + d).requests == 100


T = Thresholds(max_error_increase=0.02, p99_ratio=2.0, p99_slack=0.1, min_requests=20)


@pytest.mark.parametrize("canary, baseline, final, result, why", [
    ((90, 10, 0.003), (100, 0, 0.003), False, "fail", "error rate 10.0% > baseline 0.0% + 2.0%"),
    ((100, 0, 0.4), (100, 0, 0.003), False, "fail", "p99 <= 500 ms > max(2 x <= 5 ms"),
    ((100, 0, 0.04), (100, 0, 0.003), True, "pass", "canary 100 requests"),  # within the slack
    ((100, 1, 0.003), (100, 0, 0.003), True, "pass", "canary 101 requests, 1.0% errors"),
    ((5, 0, 0.003), (100, 0, 0.003), False, "wait", "canary 5 requests"),
    ((5, 0, 0.003), (100, 0, 0.003), True, "fail", "too little canary traffic to judge: 5 < 20"),
    ((5, 5, 0.003), (100, 0, 0.003), False, "wait", "canary 10 requests"),  # too few to judge yet
])
def test_verdict(canary, baseline, final, result, why):
    got, text = verdict(parse(metrics(*canary)), parse(metrics(*baseline)), T, final)
    assert got == result and why in text, text
