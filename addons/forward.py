"""Forward: sends the routed request to an endpoint of its cluster through the shared upstream pool,
with the route's deadline and per-try timeout, retries (each to an endpoint not tried yet, within the
cluster's retry budget), per-endpoint circuit breakers, outlier ejection and injected faults.

It always answers the flow itself (never lets mitmproxy connect), so every failure is a JSON
502/503/504 and every attempt is recorded in the decision log.
"""

from __future__ import annotations

import asyncio
import time

import pybreaker

from mitmproxy import http

from mesh.core import health, upstream
from mesh.telemetry import metrics
from mesh.core.cluster import HashKey
from mesh.resilience.faults import ABORT_BODY, NONE, Fault, describe
from mesh.security.mtls import NoMtls
from mesh.resilience.retry import retry_after
from mesh.core.routing import ForwardAction
from mesh.core.state import MeshState

from . import faults, keys, replies, tracing

_STATUS = {"connect_failure": 503, "reset": 502, "protocol_error": 502, "timeout": 504,
           "per_try_timeout": 504}
_ERROR = {"connect_failure": "upstream_connect_failure", "reset": "upstream_reset",
          "protocol_error": "upstream_protocol_error", "timeout": "upstream_timeout",
          "per_try_timeout": "upstream_timeout"}
# what a client is told; endpoint addresses and library messages stay in the decision log and logs
_TOLD = {"connect_failure": "no endpoint could be connected to", "reset": "the upstream reset the connection",
         "protocol_error": "the upstream answered with invalid HTTP", "timeout": "the upstream did not answer in time",
         "per_try_timeout": "the upstream did not answer in time"}
ATTEMPTS_HEADER = "x-mitmesh-attempts"
_ATTEMPTS = ATTEMPTS_HEADER.encode()
# what software answered behind the gateway is nobody's business outside (Envoy overwrites Server too)
_EDGE_DROPS = frozenset({_ATTEMPTS, b"server", b"x-powered-by"})
MAX_REFUSED = 3  # endpoints tried when each refuses the connection, before answering 503


def upstream_path(st: keys.FlowState, action: ForwardAction) -> str:
    """The path sent upstream: the route's rewrite, unless an addon (Transform) set the final one."""
    return st.final_path if st.final_path is not None else action.rewrite(st.upstream_path or "/")


class _Failed(Exception):
    """A 5xx answer: counted as a failure by the endpoint's breaker."""

    def __init__(self, resp: upstream.Response):
        self.resp = resp


class Forward:
    def __init__(self, state: MeshState, tracer: tracing.Tracing | None = None):
        self.state = state
        self.tracer = tracer
        state.on_breaker = self._breaker_changed

    @staticmethod
    def _breaker_changed(cluster: str, endpoint: str, old: str | None, new: str) -> None:
        metrics.BREAKER_TRANSITIONS.labels(cluster, new).inc()
        metrics.BREAKER_OPEN.labels(cluster, endpoint).set({"open": 1.0, "half-open": 0.5}.get(new, 0.0))

    def request(self, flow: http.HTTPFlow):
        if flow.response or flow.error or not flow.live:
            return None
        if keys.EGRESS in flow.metadata:  # a pod's call outside the mesh, allowed: mitmproxy connects
            return None
        st = keys.get(flow)
        if st is None or st.route is None or not isinstance(st.route.action, ForwardAction):
            # never let mitmproxy open a connection of its own to the placeholder target
            replies.reply(flow, 500, "unrouted", "request reached forwarding without a route")
            return None
        return self._forward(flow, st, st.route.action)

    async def _forward(self, flow: http.HTTPFlow, st: keys.FlowState, action: ForwardAction):
        # the one choice of the cluster: the API version's, else where the sticky key hashed, else the weights
        cname = st.version_cluster or action.pick_cluster(st.sticky_point)
        cluster = st.snapshot.clusters.get(cname)
        st.cluster = cname
        flow.metadata[keys.CLUSTER] = cname
        if cluster is None:
            return self._unavailable(flow, st, cname, "no such cluster")
        guards = self.state.guards_for(cluster)
        key = hash_key(flow, cluster.hash_on) if cluster.hash_on else None
        res = st.route.plan.forward
        req = flow.request
        header_fault = faults.from_header(flow, res)
        if header_fault is None:
            return  # a malformed fault header, answered 400
        path = upstream_path(st, action)
        query = req.path.partition("?")[2]
        target = (path + "?" + query if query else path).encode()
        flow.metadata[keys.UPSTREAM_PATH] = target.decode("latin-1")
        flow.request.data.path = target  # the flow shows what the upstream got (mitmweb, saved flows)
        base_headers = upstream.request_headers(req.headers.fields, req.host_header.encode() if req.host_header else b"")
        body = req.raw_content or b""
        policy = res.retry
        retries_allowed = policy is not None and policy.allows_method(req.method)
        attempts = policy.attempts if retries_allowed else 1
        deadline = time.monotonic() + res.deadline
        guards.budget.request()
        tried: list = []
        refused: list = []
        last_resp: upstream.Response | None = None
        last_kind: str | None = None
        last_error = ""
        while True:
            avoid = tuple(tried) + guards.ejected(cluster.endpoints)
            endpoint = cluster.pick(exclude=avoid, key=key, usable=guards.usable)
            if endpoint is not None and endpoint in refused:
                break  # it refused the connection already: answer with that
            if endpoint is None:
                if last_resp is not None or last_kind is not None:
                    break  # nothing left to retry on: answer with the last outcome
                if cluster.endpoints and guards.breakers is not None:
                    return self._unavailable(flow, st, cname, "every endpoint's circuit breaker is open",
                                             open_circuit=True)
                return self._unavailable(flow, st, cname, "no healthy endpoint")
            tried.append(endpoint)
            st.attempts = len(tried)
            st.endpoint = endpoint
            remaining = deadline - time.monotonic()
            per_try = min(res.per_try, remaining) if res.per_try else remaining
            fault = self._fault(st, guards, res, header_fault)
            resp, kind, last_error = await self._attempt(flow, st, cluster, guards, endpoint, target,
                                                         base_headers, body, per_try, fault)
            last_resp, last_kind = resp, kind
            if kind == "timeout" and time.monotonic() < deadline - 0.001:
                kind = last_kind = "per_try_timeout"
            if kind == "connect_failure":
                # passive ejection (liveness): a refused endpoint leaves the rotation at once; the
                # request was never sent, so another endpoint may take it whatever the retry policy
                if health.eject(endpoint, f"{kind}: {last_error}"):
                    self.state.refresh()
                refused.append(endpoint)
                if len(refused) < MAX_REFUSED and time.monotonic() < deadline and (
                        policy is None or len(tried) >= attempts or not policy.retriable_failure(kind)):
                    st.decide("forward", f"{endpoint} refused the connection; ejected it, trying another endpoint")
                    attempts = max(attempts, len(tried) + 1)
                    continue
            # --- retry?
            if len(tried) >= attempts or policy is None:
                break
            if resp is not None and not policy.retriable_status(resp.status):
                break
            if resp is None and not policy.retriable_failure(kind):
                break
            wait = policy.backoff(len(tried))
            hinted = retry_after(_header(resp, b"retry-after")) if resp is not None else None
            if hinted is not None:
                wait = max(wait, hinted)
            if time.monotonic() + wait >= deadline:
                st.decide("retry", f"no retry: waiting {wait * 1000:.0f} ms would pass the deadline")
                break
            if not guards.budget.try_retry():
                metrics.RETRY_BUDGET_EXHAUSTED.labels(cname).inc()
                st.decide("retry", f"no retry: the retry budget of {cname} is spent")
                break
            metrics.RETRIES.labels(cname).inc()
            outcome = f"status {resp.status}" if resp is not None else kind
            st.decide("retry", f"attempt {len(tried)} got {outcome}; retrying after {wait * 1000:.0f} ms "
                               f"on another endpoint ({len(tried) + 1} of {attempts})")
            await asyncio.sleep(wait)
        flow.metadata[keys.ATTEMPTS] = st.attempts
        if last_resp is not None:
            # ours replaces the count of a proxy further upstream (a sidecar's): one header, this hop's
            drop = _EDGE_DROPS if st.direction is None else (_ATTEMPTS,)
            headers = [(n, v) for n, v in last_resp.headers if n.lower() not in drop]
            headers.append((_ATTEMPTS, str(st.attempts).encode()))
            flow.response = http.Response(last_resp.http_version, last_resp.status, last_resp.reason,
                                          tuple(headers), last_resp.body, None, time.time(), time.time())
            return
        kind = last_kind or "timeout"
        if time.monotonic() >= deadline:
            kind = "timeout"
            reason = f"{cname}: no response within the route's deadline of {res.deadline:g}s"
        else:
            reason = f"{cname}: {_TOLD[kind]} ({st.attempts} attempt{'s' if st.attempts > 1 else ''})"
            st.decide("forward", f"answered {_STATUS[kind]}: {cname} endpoint {st.endpoint}: {last_error}")
        replies.reply(flow, _STATUS[kind], _ERROR[kind], reason,
                      headers={ATTEMPTS_HEADER: str(st.attempts)})

    def _fault(self, st, guards, res, header_fault: Fault) -> Fault:
        if header_fault:
            return header_fault
        for state in (res.fault, guards.fault):
            if state is not None:
                fault = state.next()
                if fault:
                    return fault
        return NONE

    async def _attempt(self, flow, st, cluster, guards, endpoint, target, headers, body, timeout: float,
                       fault: Fault) -> tuple[upstream.Response | None, str | None, str]:
        """One try: (response, None, "") or (None, failure kind, why). Feeds breaker, outliers, metrics."""
        cname = cluster.name
        span = tracing.client_span(self.tracer, st, cname, str(endpoint), st.attempts)
        if span is not None:
            headers = span.inject(headers)
        flow.request.data.host, flow.request.data.port = endpoint.address, endpoint.port
        resp: upstream.Response | None = None
        kind: str | None = None
        error = ""
        endpoint.active += 1
        try:
            with guards.breakers.calling(endpoint.key) if guards.breakers else _nothing():
                resp = await self._send(st, flow.request.data, endpoint, target, headers, body,
                                        timeout, fault, cluster)
                if resp.status >= 500:
                    raise _Failed(resp)
        except _Failed:
            pass
        except pybreaker.CircuitBreakerError as e:  # opened by a concurrent request meanwhile
            kind, resp, error = "connect_failure", None, f"circuit breaker open ({e})"
        except upstream.UpstreamError as e:
            kind, resp, error = e.kind, None, str(e)
            metrics.UPSTREAM_FAILURES.labels(cname, e.kind).inc()
        finally:
            endpoint.active -= 1
        if span is not None:
            span.end(resp.status if resp else None, kind)
        outcome = f"status {resp.status}" if resp is not None else f"{kind}: {error}"
        state = f", breaker {guards.breakers.state(endpoint.key)}" if guards.breakers else ""
        st.decide("forward", f"attempt {st.attempts}: {cname} endpoint {endpoint} ({cluster.policy}) → {outcome}{state}")
        if guards.outlier is not None:
            if resp is not None and resp.status < 500:
                guards.outlier.success(endpoint.key)
            else:
                ejected = guards.outlier.failure(endpoint.key, status=resp.status if resp else None,
                                                 cluster_size=len(cluster.endpoints))
                if ejected is not None:
                    metrics.EJECTIONS.labels(cname).inc()
                    st.decide("outlier", f"{cname} endpoint {endpoint} ejected for {ejected:g}s")
        return resp, kind, error

    async def _send(self, st, request: http.RequestData, endpoint, target, headers, body, timeout,
                    fault: Fault, cluster):
        if fault:
            st.decide("fault", describe(fault))
        if fault.delay:
            if fault.delay >= timeout:
                await asyncio.sleep(timeout)
                raise upstream.Timeout(f"no response within {timeout:g}s (injected delay {fault.delay:g}s)")
            await asyncio.sleep(fault.delay)
            timeout -= fault.delay
        if fault.abort is not None:
            return upstream.Response(fault.abort, b"Injected Fault", [(b"content-type", b"text/plain"),
                                     (b"content-length", str(len(ABORT_BODY)).encode())], ABORT_BODY)
        try:  # mTLS to a service's sidecar (its config's mode, or announced https); read per attempt
            tls = self.state.upstream_tls(cluster, endpoint)  # so a renewed certificate is used at once
        except NoMtls as e:
            raise upstream.ConnectFailure(str(e)) from None
        request.scheme = b"https" if tls else b"http"
        resp = await self.state.pool.request(
            endpoint.address, endpoint.port, request.method, target, headers, body,
            timeout=timeout, connect_timeout=cluster.connect_timeout,
            ssl=tls[0] if tls else None, peer_identity=tls[1] if tls else None)
        if fault.reset_after is not None and len(resp.body) > fault.reset_after:
            raise upstream.Reset(f"connection reset after {fault.reset_after} body bytes (injected)")
        if fault.drip:
            wait = len(resp.body) / fault.drip
            if wait >= timeout:
                await asyncio.sleep(timeout)
                raise upstream.Timeout(f"body not complete within {timeout:g}s (injected drip {fault.drip:g} B/s)")
            await asyncio.sleep(wait)
        return resp

    def _unavailable(self, flow, st, cname: str, reason: str, open_circuit: bool = False) -> None:
        st.decide("forward", f"{cname}: {reason}")
        replies.reply(flow, 503, "circuit_open" if open_circuit else "no_healthy_upstream",
                      f"cluster {cname}: {reason}", cluster=cname)


def hash_key(flow: http.HTTPFlow, on: HashKey) -> str | None:
    """The consistent-hash key of a request: a header, a cookie or the downstream IP."""
    if on.kind == "header":
        return flow.request.headers.get(on.name)
    if on.kind == "cookie":
        return flow.request.cookies.get(on.name)
    return flow.client_conn.peername[0] if flow.client_conn.peername else None


def _header(resp: upstream.Response, name: bytes) -> str | None:
    for n, v in resp.headers:
        if n.lower() == name:
            return v.decode("latin-1")
    return None


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
