"""Inbound: on a sidecar's inbound listener, every request goes to the local app, the only way in."""

from __future__ import annotations

from mitmproxy import http

from mesh.core.routing import Route
from mesh.core.sidecar import inbound_route
from mesh.core.state import Snapshot

from . import keys


class Inbound:
    def __init__(self):
        self._route: Route | None = None
        self._built_for: Snapshot | None = None

    def requestheaders(self, flow: http.HTTPFlow):
        if flow.response or flow.error or not flow.live:
            return
        st = keys.get(flow)
        if st is None or st.direction != keys.INBOUND:
            return
        if self._built_for is not st.snapshot:
            self._route, self._built_for = inbound_route(st.snapshot), st.snapshot
        w = st.snapshot.workload
        st.route = self._route
        st.upstream_path = st.path or "/"
        flow.metadata[keys.ROUTE] = self._route.name
        st.decide("inbound", f"to the local app of {w.name} at {w.app[0]}:{w.app[1]}")
