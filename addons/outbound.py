"""Outbound: the local app's HTTP proxy. `GET http://catalog/items` goes to a healthy instance of the
service `catalog` (found by discovery or in the config), through that instance's own sidecar."""

from __future__ import annotations

from mitmproxy import http, tcp

from mesh.core.routing import Route
from mesh.core.sidecar import outbound_route, service_of_address, service_of_host
from mesh.core.state import MeshState, Snapshot

from . import keys, replies


class Outbound:
    def __init__(self, state: MeshState | None = None):
        self.state = state
        self._routes: dict[str, Route] = {}
        self._built_for: Snapshot | None = None

    def http_connect(self, flow: http.HTTPFlow):
        # only the outbound listener is a forward proxy; the hop to the other sidecar is ours to
        # secure (mTLS), so the app speaks plain HTTP to us and never tunnels through
        replies.reply(flow, 405, "connect_not_supported",
                      "the outbound listener forwards plain HTTP: call http://SERVICE/PATH "
                      "and the sidecars secure the hop")

    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.unanswered(flow)
        if st is None or st.direction != keys.OUTBOUND:
            return
        snap = st.snapshot
        if self._built_for is not snap:
            self._routes, self._built_for = {}, snap
        host = flow.request.host
        if flow.client_conn.proxy_mode.type_name == "transparent":  # captured in a pod
            host = self._captured(flow, st, snap)
            if host is None:
                return
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
        flow.metadata[keys.ROUTE] = route.name
        st.decide("outbound", f"service {route.action.service}, every version")

    @staticmethod
    def _captured(flow: http.HTTPFlow, st: keys.FlowState, snap: Snapshot) -> str | None:
        """The service a captured connection was for, from its original destination (a virtual
        address of the pod's hosts file); a destination outside the mesh follows the egress policy
        of this sidecar's service: passed through to where the app was going, or refused."""
        address, port = flow.client_conn.sockname[:2]
        service = service_of_address(snap, address)
        if service is not None:
            return service
        own = snap.config.services.get(snap.workload.service) if snap.workload else None
        if own is not None and own.egress == "allow":
            st.decide("outbound", f"{address}:{port} is not in the mesh; egress allow: passed through")
            flow.metadata[keys.EGRESS] = f"{address}:{port}"
            flow.request.host, flow.request.port = address, port
            return None
        st.decide("outbound", f"{address}:{port} is not in the mesh; egress deny")
        replies.reply(flow, 403, "egress_denied",
                      f"{flow.request.host_header or address}:{port} is not a service of mesh "
                      f"{snap.config.mesh.id!r}, and {snap.workload.service if snap.workload else 'this service'}'s "
                      "egress policy is deny (services.NAME.egress: allow lets it through)")
        return None

    def tcp_start(self, flow: tcp.TCPFlow):
        """Captured traffic that is not HTTP: only where the egress policy allows it."""
        if flow.client_conn.proxy_mode.type_name != "transparent":
            return
        snap = self.state.snapshot if self.state is not None else None
        own = snap.config.services.get(snap.workload.service) if snap and snap.workload else None
        if own is None or own.egress != "allow":
            flow.kill()
