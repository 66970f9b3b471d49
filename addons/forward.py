"""Forward: the adapter between a routed flow and the forwarding engine
(mesh/resilience/forwarding.py, which decides attempts, retries, breakers, ejection and faults): it
sends each attempt through the shared upstream pool in a client span and turns the outcome into
the flow's response.

It always answers the flow itself (never lets mitmproxy connect), so every failure is a JSON
502/503/504 and every attempt is recorded in the decision log.
"""

from __future__ import annotations

import time

from mitmproxy import http

from mesh.core import health, upstream
from mesh.core.cluster import Cluster, Endpoint, HashKey
from mesh.core.routing import ForwardAction
from mesh.core.state import MeshState
from mesh.resilience import forwarding
from mesh.security.mtls import NoMtls
from mesh.telemetry import metrics

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


def upstream_path(st: keys.FlowState, action: ForwardAction) -> str:
    """The path sent upstream: the route's rewrite, unless an addon (Transform) set the final one."""
    return st.final_path if st.final_path is not None else action.rewrite(st.upstream_path or "/")


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
        headers = upstream.request_headers(req.headers.fields, req.host_header.encode() if req.host_header else b"")
        body = req.raw_content or b""

        async def send(endpoint: Endpoint, attempt: forwarding.Attempt) -> upstream.Response:
            st.attempts, st.endpoint = attempt.number, endpoint
            return await self._send(flow, st, cluster, endpoint, attempt, target, headers, body)

        call = forwarding.Call(req.method, hash_key(flow, cluster.hash_on) if cluster.hash_on else None,
                               header_fault, st.decide, self._eject, self._warm)
        out = await forwarding.forward(res, cluster, self.state.guards_for(cluster), send, call)
        st.attempts, st.endpoint = out.attempts, out.endpoint
        st.sent = out.sent
        if out.failure in ("no_healthy_upstream", "circuit_open"):
            return self._unavailable(flow, st, cname, out.error, open_circuit=out.failure == "circuit_open",
                                     logged=True)
        flow.metadata[keys.ATTEMPTS] = st.attempts
        if out.response is not None:
            resp = out.response
            # ours replaces the count of a proxy further upstream (a sidecar's): one header, this hop's
            drop = _EDGE_DROPS if st.direction is None else (_ATTEMPTS,)
            headers = [(n, v) for n, v in resp.headers if n.lower() not in drop]
            headers.append((_ATTEMPTS, str(st.attempts).encode()))
            flow.response = http.Response(resp.http_version, resp.status, resp.reason,
                                          tuple(headers), resp.body, None, time.time(), time.time())
            return
        kind = out.failure or "timeout"
        if out.deadline_passed:
            reason = f"{cname}: no response within the route's deadline of {res.deadline:g}s"
        else:
            reason = f"{cname}: {_TOLD[kind]} ({st.attempts} attempt{'s' if st.attempts > 1 else ''})"
            st.decide("forward", f"answered {_STATUS[kind]}: {cname} endpoint {st.endpoint}: {out.error}")
        replies.reply(flow, _STATUS[kind], _ERROR[kind], reason,
                      headers={ATTEMPTS_HEADER: str(st.attempts)})

    async def _warm(self, cluster: Cluster) -> None:
        """Wait for the first health checks of a cluster none of whose endpoints is checked yet."""
        if cluster.health_check is not None:
            await self.state.checker.first_checks(cluster.warming(), cluster.health_check)

    def _eject(self, endpoint: Endpoint, why: str) -> None:
        """Passive ejection (liveness): a refused endpoint leaves the rotation at once."""
        if health.eject(endpoint, why):
            self.state.refresh()

    async def _send(self, flow, st, cluster, endpoint, attempt: forwarding.Attempt, target, headers,
                    body) -> upstream.Response:
        """One attempt through the pool, in a client span; the flow shows the endpoint it went to."""
        span = tracing.client_span(self.tracer, st, cluster.name, str(endpoint), attempt.number)
        if span is not None:
            headers = span.inject(headers)
        request = flow.request.data
        request.host, request.port = endpoint.address, endpoint.port
        resp = kind = None
        started = endpoint.begin()  # in flight; its latency feeds peak EWMA
        try:
            try:  # mTLS to a service's sidecar (its config's mode, or announced https); read per attempt
                tls = self.state.upstream_tls(cluster, endpoint)  # so a renewed certificate is used at once
            except NoMtls as e:
                raise upstream.ConnectFailure(str(e)) from None
            request.scheme = b"https" if tls else b"http"
            resp = await self.state.pool.request(
                endpoint.address, endpoint.port, request.method, target, headers, body,
                timeout=attempt.timeout, connect_timeout=cluster.connect_timeout,
                ssl=tls[0] if tls else None, peer_identity=tls[1] if tls else None,
                fresh=attempt.fresh, idle_timeout=cluster.idle_timeout)
            return resp
        except upstream.UpstreamError as e:
            kind = e.kind
            raise
        finally:
            endpoint.end(started)
            if span is not None:
                span.end(resp.status if resp else None, kind)

    def _unavailable(self, flow, st, cname: str, reason: str, open_circuit: bool = False,
                     logged: bool = False) -> None:
        if not logged:
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
