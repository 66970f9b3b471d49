"""Metrics: one observation per answered request, from what the chain recorded in FlowState.

Alone: `mitmdump -s addons/metrics.py --set mesh_admin='{port: 9464}'` serves /metrics there.
"""

from __future__ import annotations

import asyncio
import time

from mitmproxy import http

from addons import alone, keys
from addons.admin import Admin
from mesh.core.loops import Loop
from mesh.telemetry import metrics
from mesh.config import schema
from mesh.core.state import MeshState


# the proxy's own refusals counted as authentication/authorization failures, by their `error`
AUTH_ERRORS = frozenset({"missing_credentials", "invalid_token", "invalid_api_key", "insufficient_scope",
                         "insufficient_claims", "access_denied", "authn_unavailable", "ip_denied",
                         "mtls_required"})


class Metrics:
    def __init__(self, state: MeshState):
        self.state = state
        self._children: dict[tuple, tuple] = {}  # label values → (requests by code, duration, sizes)
        self._loop = Loop("mitmesh-metrics", self._refresh)
        state.admin_handlers["/metrics"] = self._serve

    def _serve(self, method: str, query: str):
        snap = self.state.snapshot
        if snap is not None and not snap.config.observability.metrics:
            return 404, "text/plain", b"metrics are off (observability.metrics: false)\n"
        self._gauges()
        body, ctype = metrics.render()
        return 200, ctype, body

    def running(self):
        self._loop.start()

    async def done(self):
        await self._loop.stop()

    async def _refresh(self):
        while True:  # gauges of the registry, so a scrape of any worker sees fresh values
            self._gauges()
            await asyncio.sleep(1.0)

    def _gauges(self) -> None:
        snap = self.state.snapshot
        if snap is None:
            return
        for name, cluster in snap.clusters.items():
            metrics.REGISTRY_ENDPOINTS.labels(name).set(len(cluster.endpoints))
            metrics.ENDPOINTS_HEALTHY.labels(name).set(sum(1 for e in cluster.endpoints if e.healthy))
            metrics.UPSTREAM_ACTIVE.labels(name).set(sum(e.active for e in cluster.endpoints))

    def response(self, flow: http.HTTPFlow):
        self._observe(flow, flow.response.status_code if flow.response else None)

    def error(self, flow: http.HTTPFlow):
        if flow.response is None:
            self._observe(flow, None)

    def _observe(self, flow: http.HTTPFlow, status: int | None) -> None:
        st = keys.get(flow)
        if st is None:
            return
        route = st.route.name if st.route else ""
        direction = st.direction or "edge"  # edge: the gateway; inbound/outbound: a sidecar
        cluster = st.cluster or ""
        service, version = st.destination()
        key = (direction, route, cluster, service)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                {},
                metrics.DURATION.labels(direction, route, service, cluster, version),
                metrics.REQUEST_BYTES.labels(direction, route),
                metrics.RESPONSE_BYTES.labels(direction, route),
                version,
            )
        by_code, duration, req_bytes, resp_bytes, version = children
        if st.error is not None:
            if st.error == "rate_limited":
                metrics.RATELIMIT_REJECTIONS.labels(route).inc()
            elif st.error in AUTH_ERRORS:
                metrics.AUTH_FAILURES.labels(st.error).inc()
        counter = by_code.get(status)
        if counter is None:
            counter = by_code[status] = metrics.REQUESTS.labels(direction, route, service, cluster, version,
                                                               metrics.code(status))
        counter.inc()
        duration.observe(time.monotonic() - st.started)
        req_bytes.observe(len(flow.request.raw_content or b""))
        if flow.response is not None:
            resp_bytes.observe(len(flow.response.raw_content or b""))


addons = alone.script(Admin(alone.state(), role="mitmdump"), Metrics(alone.state()), blocks=[alone.Block(
    "mesh_admin", "gateway", "admin", schema.Admin,
    "The listener serving /metrics (and /status): an admin block of mesh.yaml in YAML flow style, "
    "e.g. '{address: 127.0.0.1, port: 9464}'. Empty: 127.0.0.1:9901.")])
