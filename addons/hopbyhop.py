"""HopByHop: removes the fields a client's Connection header nominates (RFC 9110 §7.6.1) from the
request as it is received, before any stage reads a header or adds one, so no header the proxy sets
(claims, X-Forwarded-*, x-request-id, a transform's) can be nominated away on its way upstream."""

from __future__ import annotations

from mitmproxy import http

from mesh.core import hopbyhop

from . import keys


class HopByHop:
    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.unanswered(flow)
        if st is None:
            return
        stripped = hopbyhop.strip(flow.request.headers.fields)
        if stripped is None:
            return
        if stripped.removed:
            flow.request.headers.fields = stripped.fields
            st.decide("hopbyhop", f"removed {', '.join(stripped.removed)}: nominated by the client's "
                                  f"Connection header (RFC 9110 §7.6.1)")
        if stripped.kept:
            st.decide("hopbyhop", f"kept {', '.join(stripped.kept)} though Connection nominates it: "
                                  f"the proxy routes and frames by it, and sends its own upstream")
