"""Retry policy (Envoy's retry_on), full-jitter back-off, Retry-After and the retry budget."""

from __future__ import annotations

import pytest

from mesh.resilience.retry import RetryBudget, RetryPolicy, retry_after


def policy(*on, codes=(), non_idempotent=False):
    return RetryPolicy(3, frozenset(on), frozenset(codes), 0.025, 0.25, non_idempotent)


@pytest.mark.parametrize("on, kind, retried", [
    (("5xx",), "connect_failure", True), (("5xx",), "reset", True), (("5xx",), "per_try_timeout", True),
    (("gateway-error",), "connect_failure", True), (("gateway-error",), "reset", False),
    (("reset",), "reset", True), (("reset",), "connect_failure", False),
    (("connect-failure",), "connect_failure", True), (("connect-failure",), "timeout", False),
    (("retriable-status-codes",), "reset", False),
])
def test_failures(on, kind, retried):
    assert policy(*on).retriable_failure(kind) is retried


@pytest.mark.parametrize("on, codes, status, retried", [
    (("5xx",), (), 500, True), (("5xx",), (), 503, True), (("5xx",), (), 404, False),
    (("gateway-error",), (), 500, False), (("gateway-error",), (), 502, True),
    (("retriable-status-codes",), (409,), 409, True), (("retriable-status-codes",), (409,), 500, False),
    (("reset",), (), 503, False),
])
def test_statuses(on, codes, status, retried):
    assert policy(*on, codes=codes).retriable_status(status) is retried


def test_methods():
    assert policy("5xx").allows_method("GET") and not policy("5xx").allows_method("POST")
    assert policy("5xx", non_idempotent=True).allows_method("POST")


def test_full_jitter_backoff_is_bounded_and_grows():
    p = policy("5xx")
    assert p.backoff(1, rnd=lambda: 1.0) == pytest.approx(0.025)
    assert p.backoff(3, rnd=lambda: 1.0) == pytest.approx(0.1)
    assert p.backoff(10, rnd=lambda: 1.0) == pytest.approx(0.25)
    assert p.backoff(2, rnd=lambda: 0.0) == 0.0


def test_retry_after():
    assert retry_after("3") == 3.0
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now


def test_budget_ratio_plus_floor_within_ttl():
    now = [1000.0]
    budget = RetryBudget(ratio=0.2, min_per_second=1, ttl=10, clock=lambda: now[0])
    for _ in range(100):
        budget.request()
    allowed = sum(budget.try_retry() for _ in range(100))
    assert allowed == 20 + 10  # 20 % of 100 requests plus 1/s over 10 s
    assert budget.exhausted == 70
    now[0] += 11  # everything slid out of the window: only the floor is left
    assert sum(budget.try_retry() for _ in range(50)) == 10
