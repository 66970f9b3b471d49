"""The forwarding engine with a fake `send`: every retry_on condition, what was sent, stale pooled
connections, the retry budget, the deadline, ejection, breakers and Retry-After; no proxy."""

from __future__ import annotations

import asyncio

import pytest

from mesh.core import health, upstream
from mesh.core.cluster import Cluster, Endpoint
from mesh.config.schema import HealthCheck
from mesh.resilience.breaker import BreakerPolicy, Breakers
from mesh.resilience.faults import Fault
from mesh.resilience.forwarding import Attempt, Call, forward
from mesh.resilience.outlier import OutlierDetector, OutlierPolicy
from mesh.resilience.retry import RetryBudget, RetryPolicy
from mesh.resilience.settings import Guards, RouteResilience

ON = ("5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-status-codes")


def ok(status=200, headers=()):
    return upstream.Response(status, b"", [(b"content-length", b"0"), *headers], b"")


def fail(cls, sent=True, reused=False):
    return cls("test").on(sent, reused)


class Upstreams:
    """A fake `send`: each endpoint answers from its script (responses, errors, or seconds to hang),
    its last entry over and over; every call is recorded."""

    def __init__(self, *scripts):
        self.endpoints = [Endpoint("127.0.0.1", 10000 + i) for i in range(len(scripts))]
        self.scripts = {e: list(s) for e, s in zip(self.endpoints, scripts)}
        self.calls: list[tuple[int, int, bool]] = []  # (endpoint index, attempt number, fresh)

    async def __call__(self, endpoint: Endpoint, attempt: Attempt):
        self.calls.append((self.endpoints.index(endpoint), attempt.number, attempt.fresh))
        script = self.scripts[endpoint]
        step = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(step, (int, float)):
            if step >= attempt.timeout:
                await asyncio.sleep(attempt.timeout)
                raise fail(upstream.Timeout)
            await asyncio.sleep(step)
            return ok()
        if isinstance(step, Exception):
            raise step
        return step

    def cluster(self) -> Cluster:
        c = Cluster("svc/v1", "svc", "v1", endpoints=list(self.endpoints))
        c.refresh()
        return c


def plan(*on, attempts=3, codes=(), non_idempotent=False, deadline=5.0, per_try=None, stale="idempotent",
         base=0.001):
    retry = RetryPolicy(attempts, frozenset(on), frozenset(codes), base, base * 10, non_idempotent) if on else None
    return RouteResilience(deadline, per_try, retry, None, False, stale)


def guards(budget=None, breakers=None, outlier=None):
    return Guards((), breakers, outlier, budget or RetryBudget(), None)


async def run(ups: Upstreams, p: RouteResilience, method="GET", g: Guards | None = None, **call):
    log: list[tuple[str, str]] = []
    out = await forward(p, ups.cluster(), g or guards(), ups,
                        Call(method, decide=lambda who, what: log.append((who, what)), **call))
    return out, log


# ---- every retry_on condition, for the method it applies to


@pytest.mark.parametrize("on, codes, first, retried", [
    ("5xx", (), ok(500), True),
    ("5xx", (), ok(404), False),
    ("gateway-error", (), ok(503), True),
    ("gateway-error", (), ok(500), False),
    ("retriable-status-codes", (409,), ok(409), True),
    ("retriable-status-codes", (409,), ok(500), False),
    ("reset", (), fail(upstream.Reset), True),
    ("reset", (), fail(upstream.ProtocolError), True),
    ("5xx", (), fail(upstream.Reset), True),
    ("gateway-error", (), fail(upstream.Reset), False),
    ("reset-before-request", (), fail(upstream.Reset, sent=False), True),
    ("reset-before-request", (), fail(upstream.Reset, sent=True), False),
    ("connect-failure", (), fail(upstream.Reset), False),
])
async def test_each_retry_on_condition(on, codes, first, retried):
    ups = Upstreams([first], [ok()])
    out, _ = await run(ups, plan(on, codes=codes))
    assert out.attempts == (2 if retried else 1)
    assert [c[0] for c in ups.calls] == ([0, 1] if retried else [0])
    assert (out.response is not None and out.response.status == 200) is retried


async def test_connect_failure_tries_another_endpoint_whatever_the_policy_and_ejects():
    ups = Upstreams([fail(upstream.ConnectFailure, sent=False)], [ok()])
    ejected = []
    out, log = await run(ups, plan(), method="POST", eject=lambda ep, why: ejected.append((ep, why)))
    assert out.response.status == 200 and out.attempts == 2 and ejected == [(ups.endpoints[0], "connect_failure: test")]
    assert any("refused the connection; ejected it" in what for _, what in log)


async def test_per_try_timeout_is_retried_and_the_deadline_ends_it():
    ups = Upstreams([1.0], [1.0], [1.0])
    out, log = await run(ups, plan("5xx", per_try=0.05, deadline=0.12))
    assert out.response is None and out.failure == "timeout" and out.deadline_passed
    assert 2 <= out.attempts <= 3


async def test_per_try_timeout_then_an_answer():
    ups = Upstreams([1.0], [ok()])
    out, _ = await run(ups, plan("gateway-error", per_try=0.05))
    assert out.response.status == 200 and out.attempts == 2


# ---- what was sent decides for methods that are not idempotent


@pytest.mark.parametrize("method, error, retried", [
    ("POST", fail(upstream.Reset, sent=True), False),   # it may have run: never twice
    ("POST", fail(upstream.Reset, sent=False), True),   # nothing was written: safe whatever the method
    ("POST", fail(upstream.Timeout, sent=True), False),
    ("PUT", fail(upstream.Reset, sent=True), True),
])
async def test_post_is_retried_only_when_nothing_was_sent(method, error, retried):
    ups = Upstreams([error], [ok()])
    out, _ = await run(ups, plan(*ON, per_try=0.05), method=method)
    assert out.attempts == (2 if retried else 1)
    assert out.sent  # the answer, or the attempt that may have run


async def test_non_idempotent_true_retries_post_even_after_it_was_sent():
    ups = Upstreams([fail(upstream.Reset, sent=True)], [ok()])
    out, _ = await run(ups, plan("reset", non_idempotent=True), method="POST")
    assert out.attempts == 2 and out.sent


async def test_status_retries_only_for_methods_the_policy_allows():
    ups = Upstreams([ok(503)], [ok()])
    out, _ = await run(ups, plan("5xx"), method="POST")
    assert out.attempts == 1 and out.response.status == 503


# ---- a stale pooled connection: one counted re-send on a new connection, idempotent methods only


async def test_stale_connection_resend_is_an_attempt_on_the_same_endpoint():
    budget = RetryBudget(ratio=0.0, min_per_second=1.0, ttl=1.0)
    ups = Upstreams([fail(upstream.Stale, reused=True), ok()], [ok()])
    out, log = await run(ups, plan(), method="PUT", g=guards(budget))
    assert out.response.status == 200 and out.attempts == 2 and out.retries == 1
    assert ups.calls == [(0, 1, False), (0, 2, True)]
    assert budget.retries == 1
    assert any("reused keep-alive connection" in what for who, what in log if who == "retry")


async def test_stale_connection_resend_counts_on_top_of_the_policys_attempts():
    ups = Upstreams([fail(upstream.Stale, reused=True), ok(503)], [ok(503)], [ok(503)])
    out, _ = await run(ups, plan("5xx", attempts=3), method="PUT")
    assert out.attempts == 4 and [c[0] for c in ups.calls] == [0, 0, 1, 2]


@pytest.mark.parametrize("method, stale, resent", [
    ("GET", "idempotent", True), ("GET", "never", False), ("POST", "idempotent", False)])
async def test_stale_connection_resend_follows_the_method_and_the_route(method, stale, resent):
    ups = Upstreams([fail(upstream.Stale, reused=True), ok()], [ok()])
    out, _ = await run(ups, plan(stale=stale), method=method)
    assert out.attempts == (2 if resent else 1)
    assert (out.response is not None) is resent and out.sent


async def test_stale_connection_resend_needs_the_budget():
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, ttl=1.0)
    ups = Upstreams([fail(upstream.Stale, reused=True), ok()])
    out, log = await run(ups, plan(), g=guards(budget))
    assert out.attempts == 1 and out.failure == "reset" and budget.exhausted == 1
    assert ("retry", "no retry: the retry budget of svc/v1 is spent") in log


# ---- the budget, Retry-After, the deadline


async def test_budget_refusal_stops_retries():
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, ttl=10.0)  # one retry in all
    ups = Upstreams([ok(503)], [ok(503)], [ok(503)])
    out, log = await run(ups, plan("5xx"), g=guards(budget))
    assert out.attempts == 2 and out.retries == 1 and out.response.status == 503
    assert ("retry", "no retry: the retry budget of svc/v1 is spent") in log


async def test_retry_after_is_waited_for():
    ups = Upstreams([ok(503, [(b"retry-after", b"1")])], [ok()])
    loop = asyncio.get_running_loop()
    started = loop.time()
    out, log = await run(ups, plan("5xx"))
    assert out.response.status == 200 and loop.time() - started >= 1.0
    assert any("retrying after 1000 ms" in what for _, what in log)


async def test_retry_after_past_the_deadline_is_no_retry():
    ups = Upstreams([ok(503, [(b"retry-after", b"5")])], [ok()])
    out, log = await run(ups, plan("5xx", deadline=1.0))
    assert out.attempts == 1 and out.response.status == 503
    assert ("retry", "no retry: waiting 5000 ms would pass the deadline") in log


# ---- breakers, outlier ejection, nothing to pick


async def test_outlier_ejection_keeps_the_endpoint_out():
    detector = OutlierDetector(OutlierPolicy(consecutive_5xx=2, max_ejection_percent=50))
    ups = Upstreams([ok(500)], [ok()])
    g = guards(outlier=detector)
    log = []
    for _ in range(6):
        out, lines = await run(ups, plan(), g=g)
        log += lines
    assert detector.ejected(ups.endpoints[0].key)
    assert any(who == "outlier" for who, _ in log)
    ups.calls.clear()
    for _ in range(4):
        await run(ups, plan(), g=g)
    assert {c[0] for c in ups.calls} == {1}


async def test_open_breakers_everywhere_answer_circuit_open():
    breakers = Breakers("svc/v1", BreakerPolicy(fail_max=1, reset_timeout=30))
    ups = Upstreams([ok(500)])
    g = guards(breakers=breakers)
    await run(ups, plan(), g=g)
    out, log = await run(ups, plan(), g=g)
    assert out.failure == "circuit_open" and out.attempts == 0
    assert ("forward", "svc/v1: every endpoint's circuit breaker is open") in log


async def test_no_endpoint_is_no_healthy_upstream():
    ups = Upstreams()
    out, _ = await run(ups, plan())
    assert out.failure == "no_healthy_upstream" and out.attempts == 0


async def test_injected_abort_is_an_answer_and_retried_like_one():
    ups = Upstreams([ok()], [ok()])
    out, log = await run(ups, plan("5xx", attempts=2), fault=Fault(abort=503))
    assert out.response.status == 503 and out.attempts == 2 and ups.calls == []
    assert ("fault", "injected abort 503") in log


async def test_a_cluster_with_no_endpoint_checked_yet_waits_for_their_first_checks():
    """Envoy's cluster warming, on first use: no 503 at once, and never an unchecked endpoint."""
    ups = Upstreams([ok()], [ok()])
    for e in ups.endpoints:
        health.await_first_check(e)
    warmed = []

    async def warm(cluster):  # the checker: the first endpoint passes, the second fails
        warmed.append([str(e) for e in cluster.warming()])
        health.record(cluster.endpoints[0], True, "", HealthCheck())
        health.record(cluster.endpoints[1], False, "refused", HealthCheck())
        cluster.refresh()

    out, log = await run(ups, plan(), warm=warm)
    assert out.response.status == 200 and ups.calls == [(0, 1, False)]
    assert warmed == [["127.0.0.1:10000", "127.0.0.1:10001"]]
    assert ("forward", "svc/v1: no endpoint checked yet; waiting for the first health check "
                       "of 2") in log
    await run(ups, plan(), warm=warm)
    assert len(warmed) == 1  # checked now: no waiting


async def test_waiting_for_first_checks_ends_at_the_deadline():
    ups = Upstreams([ok()])
    health.await_first_check(ups.endpoints[0])

    async def hang(_cluster):
        await asyncio.sleep(30)

    started = asyncio.get_running_loop().time()
    out, _ = await run(ups, plan(deadline=0.1), warm=hang)
    assert out.failure == "no_healthy_upstream" and ups.calls == []
    assert asyncio.get_running_loop().time() - started < 1.0
