"""Forward: sends the routed request to an endpoint of its cluster through the shared upstream pool.

It always answers the flow itself (never lets mitmproxy connect), so failures become JSON
502/503/504 and later policies (retries, deadlines, breakers) can decide per attempt.
"""

from __future__ import annotations

import time

from mitmproxy import http

from mesh import health, upstream
from mesh.cluster import HashKey
from mesh.routing import ForwardAction
from mesh.state import MeshState

from . import keys, replies

DEFAULT_TIMEOUT = 15.0  # Envoy's default route timeout
MAX_REFUSED = 3  # endpoints tried when each refuses the connection, before answering 503

_STATUS = {"connect_failure": 503, "reset": 502, "protocol_error": 502, "timeout": 504}
_ERROR = {"connect_failure": "upstream_connect_failure", "reset": "upstream_reset",
          "protocol_error": "upstream_protocol_error", "timeout": "upstream_timeout"}


class Forward:
    def __init__(self, state: MeshState):
        self.state = state

    def request(self, flow: http.HTTPFlow):
        if flow.response or flow.error or not flow.live:
            return None
        st = keys.get(flow)
        if st is None or st.route is None or not isinstance(st.route.action, ForwardAction):
            # never let mitmproxy open a connection of its own to the placeholder target
            replies.reply(flow, 500, "unrouted", "request reached forwarding without a route")
            return None
        return self._forward(flow, st, st.route.action)

    async def _forward(self, flow: http.HTTPFlow, st: keys.FlowState, action: ForwardAction):
        cname = action.pick_cluster()
        cluster = st.snapshot.clusters.get(cname)
        st.cluster = cname
        flow.metadata[keys.CLUSTER] = cname
        key = hash_key(flow, cluster.hash_on) if cluster is not None and cluster.hash_on else None
        endpoint = cluster.pick(key=key) if cluster is not None else None
        if endpoint is None:
            st.decide("forward", f"cluster {cname} has no healthy endpoint")
            replies.reply(flow, 503, "no_healthy_upstream", f"cluster {cname} has no healthy endpoint")
            return
        req = flow.request
        path = action.rewrite(st.upstream_path or "/")
        query = req.path.partition("?")[2]
        target = (path + "?" + query if query else path).encode()
        host = (req.host_header or f"{endpoint.address}:{endpoint.port}").encode()
        headers = upstream.request_headers(req.headers.fields, host)
        timeout_policy = st.route.policies.get("timeout") if st.route else None
        timeout = timeout_policy.request if timeout_policy else DEFAULT_TIMEOUT
        refused: tuple = ()
        while True:
            ep = endpoint
            st.decide("forward", f"cluster {cname}, endpoint {ep} ({cluster.policy})")
            st.endpoint = ep
            st.attempts += 1
            flow.metadata[keys.ENDPOINT] = str(ep)
            # show the real upstream in mitmweb and saved flows
            req.data.host, req.data.port = ep.address, ep.port
            ep.active += 1
            try:
                resp = await self.state.pool.request(
                    ep.address, ep.port, req.data.method, target, headers,
                    req.raw_content or b"", timeout=timeout, connect_timeout=cluster.connect_timeout,
                )
                break
            except upstream.ConnectFailure as e:
                # passive ejection; the request was never sent, so another endpoint may take it
                # (this is liveness, not retries: those come with their own policy)
                if health.eject(ep, f"{e.kind}: {e}"):
                    self.state.refresh()
                refused += (ep,)
                endpoint = cluster.pick(exclude=refused, key=key)
                if endpoint is None or endpoint in refused or len(refused) >= MAX_REFUSED:
                    st.decide("forward", f"attempt to {ep} failed: {e.kind}: {e}")
                    replies.reply(flow, 503, _ERROR[e.kind], f"{cname} endpoint {ep}: {e}")
                    return
                st.decide("forward", f"{ep} refused the connection ({e}); ejected it")
            except upstream.UpstreamError as e:
                st.decide("forward", f"attempt to {ep} failed: {e.kind}: {e}")
                replies.reply(flow, _STATUS[e.kind], _ERROR[e.kind], f"{cname} endpoint {ep}: {e}")
                return
            finally:
                ep.active -= 1
        flow.response = http.Response(
            resp.http_version, resp.status, resp.reason, tuple(resp.headers), resp.body, None,
            time.time(), time.time(),
        )


def hash_key(flow: http.HTTPFlow, on: HashKey) -> str | None:
    """The consistent-hash key of a request: a header, a cookie or the downstream IP."""
    if on.kind == "header":
        return flow.request.headers.get(on.name)
    if on.kind == "cookie":
        return flow.request.cookies.get(on.name)
    return flow.client_conn.peername[0] if flow.client_conn.peername else None
