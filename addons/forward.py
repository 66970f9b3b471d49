"""Forward: sends the routed request to an endpoint of its cluster through the shared upstream pool.

It always answers the flow itself (never lets mitmproxy connect), so failures become JSON
502/503/504 and later policies (retries, deadlines, breakers) can decide per attempt.
"""

from __future__ import annotations

import time

from mitmproxy import http

from mesh import upstream
from mesh.routing import ForwardAction
from mesh.state import MeshState

from . import keys, replies

DEFAULT_TIMEOUT = 15.0  # Envoy's default route timeout

_STATUS = {"connect_failure": 503, "reset": 502, "protocol_error": 502, "timeout": 504}
_ERROR = {"connect_failure": "upstream_connect_failure", "reset": "upstream_reset",
          "protocol_error": "upstream_protocol_error", "timeout": "upstream_timeout"}


def upstream_path(st: keys.FlowState, action: ForwardAction) -> str:
    """The path sent upstream: the route's rewrite, unless an addon (Transform) set the final one."""
    return st.final_path if st.final_path is not None else action.rewrite(st.upstream_path or "/")


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
        cname = st.cluster or action.pick_cluster()  # an addon before may have chosen (versioning, canary)
        cluster = st.snapshot.clusters.get(cname)
        st.cluster = cname
        flow.metadata[keys.CLUSTER] = cname
        endpoint = cluster.pick() if cluster is not None else None
        if endpoint is None:
            st.decide("forward", f"cluster {cname} has no healthy endpoint")
            replies.reply(flow, 503, "no_healthy_upstream", f"cluster {cname} has no healthy endpoint")
            return
        st.decide("forward", f"cluster {cname}, endpoint {endpoint} ({cluster.policy})")
        st.endpoint = endpoint
        st.attempts = 1
        flow.metadata[keys.ENDPOINT] = str(endpoint)
        req = flow.request
        path = upstream_path(st, action)
        query = req.path.partition("?")[2]
        target = (path + "?" + query if query else path).encode()
        host = (req.host_header or f"{endpoint.address}:{endpoint.port}").encode()
        headers = upstream.request_headers(req.headers.fields, host)
        timeout_policy = st.route.policies.get("timeout") if st.route else None
        timeout = timeout_policy.request if timeout_policy else DEFAULT_TIMEOUT
        # show the real upstream in mitmweb and saved flows
        req.data.host, req.data.port = endpoint.address, endpoint.port
        endpoint.active += 1
        try:
            resp = await self.state.pool.request(
                endpoint.address, endpoint.port, req.data.method, target, headers,
                req.raw_content or b"", timeout=timeout, connect_timeout=cluster.connect_timeout,
            )
        except upstream.UpstreamError as e:
            st.decide("forward", f"attempt to {endpoint} failed: {e.kind}: {e}")
            replies.reply(flow, _STATUS[e.kind], _ERROR[e.kind],
                          f"{cname} endpoint {endpoint}: {e}")
            return
        finally:
            endpoint.active -= 1
        flow.response = http.Response(
            resp.http_version, resp.status, resp.reason, tuple(resp.headers), resp.body, None,
            time.time(), time.time(),
        )
