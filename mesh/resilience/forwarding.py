"""The forwarding engine: one request to the endpoints of a cluster within the route's deadline, with
per-try timeouts, retries (Envoy's retry_on, back-off, Retry-After, the cluster's retry budget),
circuit breakers, passive and outlier ejection and injected faults. Data in, `Outcome` out: the
proxy's side is the `send` it is given, so every rule here is tested without a proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from mesh.resilience.breaker import pybreaker
from mesh.resilience.attempt import Reset, Response, Stale, Timeout, UpstreamError
from mesh.resilience.faults import ABORT_BODY, NONE, Fault, describe
from mesh.resilience.retry import IDEMPOTENT, retry_after
from mesh.resilience.settings import Guards, RouteResilience
from mesh.telemetry import metrics

MAX_REFUSED = 3  # endpoints tried when each refuses the connection, before answering 503


class Endpoint(Protocol):
    """What the engine uses of an endpoint (mesh/core/cluster.Endpoint)."""

    key: tuple[str, int]
    active: int  # requests in flight, for least_request


class Cluster(Protocol):
    """What the engine uses of a cluster (mesh/core/cluster.Cluster)."""

    name: str
    policy: str
    endpoints: list

    def pick(self, exclude: tuple = (), key: str | None = None, usable=None) -> Endpoint | None: ...

    def warming(self) -> list: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """What `send` is asked to do: the attempt's number (1 = the first), the time it may take, and
    whether it must use a new connection (re-sending after a stale pooled one)."""

    number: int
    timeout: float
    fresh: bool = False


Send = Callable[[Endpoint, Attempt], Awaitable[Response]]


def _ignore(_who: str, _what: str) -> None:
    pass


def _keep(_endpoint: Endpoint, _why: str) -> None:
    pass


async def _cold(_cluster: Cluster) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Call:
    """What is particular to one request: its method, its consistent-hash key, a fault it asked for
    (the fault header), where decisions are written, how an endpoint that refused the connection
    leaves the rotation (passive ejection: the proxy's health records), and how to wait for the
    first health checks of a cluster none of whose endpoints has been checked yet (the checker)."""

    method: str = "GET"
    key: str | None = None
    fault: Fault = NONE
    decide: Callable[[str, str], None] = _ignore
    eject: Callable[[Endpoint, str], None] = _keep
    warm: Callable[[Cluster], Awaitable[None]] = _cold


@dataclass(slots=True)
class Outcome:
    """How it ended: the last response, or the failure (`connect_failure`, `reset`, `protocol_error`,
    `timeout`, `per_try_timeout`, `no_healthy_upstream`, `circuit_open`) and why."""

    response: Response | None = None
    failure: str | None = None
    error: str = ""
    attempts: int = 0
    endpoint: Endpoint | None = None
    sent: bool = False  # a byte of the request reached some upstream: it may have acted on it
    deadline_passed: bool = False
    retries: int = 0  # attempts after the first, each paid from the budget
    tried: list[Endpoint] = field(default_factory=list)


class _Failed(Exception):
    """A 5xx answer: counted as a failure by the endpoint's breaker."""

    def __init__(self, resp: Response):
        self.resp = resp


async def forward(plan: RouteResilience, cluster: Cluster, guards: Guards, send: Send,
                  call: Call = Call()) -> Outcome:
    """Send until an answer may be kept: each retry to an endpoint not tried yet (a stale pooled
    connection's re-send to the same one, on a new connection), while the deadline and the budget
    allow."""
    policy, decide, cname = plan.retry, call.decide, cluster.name
    attempts = policy.attempts if policy is not None else 1
    deadline = time.monotonic() + plan.deadline
    guards.budget.request()
    out = Outcome()
    refused: list[Endpoint] = []
    again: Endpoint | None = None  # re-send here on a new connection (a stale keep-alive connection)
    resent_stale = False
    warmed = False
    while True:
        if again is not None:
            endpoint = again
        else:
            avoid = tuple(out.tried) + guards.ejected(cluster.endpoints)
            endpoint = cluster.pick(exclude=avoid, key=call.key, usable=guards.usable)
            if endpoint is not None and endpoint in refused:
                break  # it refused the connection already: answer with that
            if endpoint is None:
                if out.response is not None or out.failure is not None:
                    break  # nothing left to retry on: answer with the last outcome
                if not warmed and (waiting := cluster.warming()):
                    # every endpoint is new (awaiting its first health check, not chosen until it
                    # passes): wait for those checks, within the deadline, and pick again
                    warmed = True
                    decide("forward", f"{cname}: no endpoint checked yet; waiting for the first "
                                      f"health check of {len(waiting)}")
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                            await call.warm(cluster)
                    continue
                if cluster.endpoints and guards.breakers is not None:
                    return _unavailable(out, decide, cname, "circuit_open", "every endpoint's circuit breaker is open")
                return _unavailable(out, decide, cname, "no_healthy_upstream", "no healthy endpoint")
            out.tried.append(endpoint)
        out.attempts += 1
        out.endpoint = endpoint
        remaining = deadline - time.monotonic()
        per_try = min(plan.per_try, remaining) if plan.per_try else remaining
        attempt = Attempt(out.attempts, per_try, fresh=again is not None)
        again = None
        resp, kind, error, sent, stale = await _attempt(cluster, guards, endpoint, attempt,
                                                        _fault(plan, guards, call.fault), send, decide)
        out.response, out.failure, out.error = resp, kind, error
        out.sent = out.sent or sent
        if kind == "timeout" and time.monotonic() < deadline - 0.001:
            kind = out.failure = "per_try_timeout"
        if kind == "connect_failure":
            # passive ejection (liveness): a refused endpoint leaves the rotation at once; the
            # request was never sent, so another endpoint may take it whatever the retry policy
            call.eject(endpoint, f"{kind}: {error}")
            refused.append(endpoint)
            if len(refused) < MAX_REFUSED and time.monotonic() < deadline and (
                    policy is None or not policy.allows_method(call.method) or len(out.tried) >= attempts
                    or not policy.retriable_failure(kind)):
                decide("forward", f"{endpoint} refused the connection; ejected it, trying another endpoint")
                attempts = max(attempts, len(out.tried) + 1)
                continue
        if stale and not resent_stale and plan.stale == "idempotent" and call.method in IDEMPOTENT:
            # Go's rule for a reused connection that ended without a byte of response: an idempotent
            # request is sent once more, on a new connection; it is an attempt like any other
            resent_stale = True
            if time.monotonic() < deadline and _spend(out, guards, decide, cname):
                decide("retry", f"attempt {out.attempts}: a reused keep-alive connection to {endpoint} closed "
                                f"before any response; sending again on a new connection ({call.method} is idempotent)")
                again = endpoint
                continue
            break
        # --- retry?
        if len(out.tried) >= attempts or policy is None:
            break
        if resp is not None and not (policy.allows_method(call.method) and policy.retriable_status(resp.status)):
            break
        if resp is None and not policy.retriable(kind, sent, call.method):
            break
        wait = policy.backoff(len(out.tried))
        hinted = retry_after(_header(resp, b"retry-after")) if resp is not None else None
        if hinted is not None:
            wait = max(wait, hinted)
        if time.monotonic() + wait >= deadline:
            decide("retry", f"no retry: waiting {wait * 1000:.0f} ms would pass the deadline")
            break
        if not _spend(out, guards, decide, cname):
            break
        outcome = (f"status {resp.status}" if resp is not None else kind if sent
                   else f"{kind} before the request was sent")
        decide("retry", f"attempt {out.attempts} got {outcome}; retrying after {wait * 1000:.0f} ms "
                        f"on another endpoint ({len(out.tried) + 1} of {attempts})")
        await asyncio.sleep(wait)
    if out.response is None and time.monotonic() >= deadline:
        out.failure, out.deadline_passed = "timeout", True
    return out


def _spend(out: Outcome, guards: Guards, decide, cname: str) -> bool:
    """One retry from the cluster's budget, counted in the metrics; False (and why) when spent."""
    if not guards.budget.try_retry():
        metrics.RETRY_BUDGET_EXHAUSTED.labels(cname).inc()
        decide("retry", f"no retry: the retry budget of {cname} is spent")
        return False
    metrics.RETRIES.labels(cname).inc()
    out.retries += 1
    return True


def _unavailable(out: Outcome, decide, cname: str, failure: str, reason: str) -> Outcome:
    decide("forward", f"{cname}: {reason}")
    out.failure, out.error = failure, reason
    return out


def _fault(plan: RouteResilience, guards: Guards, asked: Fault) -> Fault:
    """The fault of this attempt: the one the request asked for, else the route's, else the cluster's."""
    if asked:
        return asked
    for state in (plan.fault, guards.fault):
        if state is not None:
            fault = state.next()
            if fault:
                return fault
    return NONE


async def _attempt(cluster: Cluster, guards: Guards, endpoint: Endpoint, attempt: Attempt, fault: Fault,
                   send: Send, decide) -> tuple[Response | None, str | None, str, bool, bool]:
    """One try: (response, None, "", sent, False) or (None, failure kind, why, sent, stale). Feeds the
    breaker, the outlier detector and the failure metrics."""
    cname = cluster.name
    resp: Response | None = None
    kind: str | None = None
    error = ""
    sent = stale = False
    endpoint.active += 1
    try:
        with guards.breakers.calling(endpoint.key) if guards.breakers else _NoBreaker():
            resp = await _faulted(endpoint, attempt, fault, send, decide)
            sent = True
            if resp.status >= 500:
                raise _Failed(resp)
    except _Failed:
        pass
    except pybreaker.CircuitBreakerError as e:  # opened by a concurrent request meanwhile
        kind, resp, error = "connect_failure", None, f"circuit breaker open ({e})"
    except UpstreamError as e:
        kind, resp, error, sent = e.kind, None, str(e), e.sent
        stale = isinstance(e, Stale)
        metrics.UPSTREAM_FAILURES.labels(cname, e.kind).inc()
    finally:
        endpoint.active -= 1
    outcome = f"status {resp.status}" if resp is not None else f"{kind}: {error}" + ("" if sent else " (nothing sent)")
    state = f", breaker {guards.breakers.state(endpoint.key)}" if guards.breakers else ""
    decide("forward", f"attempt {attempt.number}: {cname} endpoint {endpoint} ({cluster.policy}) → {outcome}{state}")
    if guards.outlier is not None:
        if resp is not None and resp.status < 500:
            guards.outlier.success(endpoint.key)
        else:
            ejected = guards.outlier.failure(endpoint.key, status=resp.status if resp else None,
                                             cluster_size=len(cluster.endpoints))
            if ejected is not None:
                metrics.EJECTIONS.labels(cname).inc()
                decide("outlier", f"{cname} endpoint {endpoint} ejected for {ejected:g}s")
    return resp, kind, error, sent, stale


async def _faulted(endpoint: Endpoint, attempt: Attempt, fault: Fault, send: Send, decide) -> Response:
    """`send`, with the attempt's injected fault acting on it as a broken upstream would."""
    if not fault:
        return await send(endpoint, attempt)
    decide("fault", describe(fault))
    timeout = attempt.timeout
    if fault.delay:
        if fault.delay >= timeout:
            await asyncio.sleep(timeout)
            raise Timeout(f"no response within {timeout:g}s (injected delay {fault.delay:g}s)")
        await asyncio.sleep(fault.delay)
        timeout -= fault.delay
    if fault.abort is not None:
        return Response(fault.abort, b"Injected Fault", [(b"content-type", b"text/plain"),
                                 (b"content-length", str(len(ABORT_BODY)).encode())], ABORT_BODY)
    resp = await send(endpoint, Attempt(attempt.number, timeout, attempt.fresh))
    if fault.reset_after is not None and len(resp.body) > fault.reset_after:
        raise Reset(f"connection reset after {fault.reset_after} body bytes (injected)").on(True, False)
    if fault.drip:
        wait = len(resp.body) / fault.drip
        if wait >= timeout:
            await asyncio.sleep(timeout)
            raise Timeout(f"body not complete within {timeout:g}s "
                                   f"(injected drip {fault.drip:g} B/s)").on(True, False)
        await asyncio.sleep(wait)
    return resp


def _header(resp: Response, name: bytes) -> str | None:
    for n, v in resp.headers:
        if n.lower() == name:
            return v.decode("latin-1")
    return None


class _NoBreaker:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
