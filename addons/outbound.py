"""Outbound: the local app's HTTP proxy. `GET http://catalog/items` goes to a healthy instance of the
service `catalog` (found by discovery or in the config), through that instance's own sidecar."""

from __future__ import annotations

from mitmproxy import http

from mesh.core.routing import Route
from mesh.core.sidecar import outbound_route, service_of_host
from mesh.core.state import Snapshot

from . import keys, replies


class Outbound:
    def __init__(self):
        self._routes: dict[str, Route] = {}
        self._built_for: Snapshot | None = None

    def http_connect(self, flow: http.HTTPFlow):
        # only the outbound listener is a forward proxy; the hop to the other sidecar is ours to
        # secure (mTLS), so the app speaks plain HTTP to us and never tunnels through
        replies.reply(flow, 405, "connect_not_supported",
                      "the outbound listener forwards plain HTTP: call http://SERVICE/PATH "
                      "and the sidecars secure the hop")

    def requestheaders(self, flow: http.HTTPFlow):
        if flow.response or flow.error or not flow.live:
            return
        st = keys.get(flow)
        if st is None or st.direction != keys.OUTBOUND:
            return
        snap = st.snapshot
        if self._built_for is not snap:
            self._routes, self._built_for = {}, snap
        host = flow.request.host
        route = self._routes.get(host)
        if route is None:
            route = outbound_route(snap, host)
            if route is None:
                known = sorted(n for n in snap.clusters if "/" not in n and n != "local")
                st.decide("outbound", f"no service named {host!r}")
                replies.reply(flow, 404, "no_route",
                              f"no service named {service_of_host(host)!r} in mesh {snap.config.mesh.id!r}; "
                              f"known services: {', '.join(known) or 'none'}")
                return
            self._routes[host] = route
        st.route = route
        st.upstream_path = st.path or "/"
        flow.metadata[keys.ROUTE] = route.name
        st.decide("outbound", f"service {route.action.service}, every version")
