"""Inbound: on a sidecar's inbound listener, every request goes to the local app, the only way in."""

from __future__ import annotations

from mitmproxy import http

from mesh.core.sidecar import inbound_route

from . import keys


class Inbound:
    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.unanswered(flow)
        if st is None or st.direction != keys.INBOUND:
            return
        w = st.snapshot.workload
        st.route = route = inbound_route(st.snapshot)
        flow.metadata[keys.ROUTE] = route.name
        st.decide("inbound", f"to the local app of {w.name} at {w.app[0]}:{w.app[1]}")
