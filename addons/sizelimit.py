"""SizeLimit: refuses request headers above the route's limit (431) and bodies above it (413),
by Content-Length before the body is read, or by the body's size once it is.

Alone: `mitmdump -s addons/sizelimit.py --set mesh_size_limit='{max_body: 1MiB}'`.
"""

from __future__ import annotations

from mitmproxy import http

from addons import alone, keys, replies
from mesh.config import schema


def _limit(flow: http.HTTPFlow):
    st = keys.get(flow)
    if st is None or st.route is None:
        return None, None
    return st, st.route.policies.get("size_limit")


class SizeLimit:
    def requestheaders(self, flow: http.HTTPFlow):
        if flow.response or flow.error or not flow.live:
            return
        st, limit = _limit(flow)
        if limit is None:
            return
        req = flow.request
        size = sum(len(k) + len(v) + 4 for k, v in req.headers.fields)
        if size > limit.max_headers:
            st.decide("sizelimit", f"headers of {size} bytes over {limit.max_headers}")
            replies.reply(flow, 431, "headers_too_large",
                          f"request headers of {size} bytes exceed the limit of {limit.max_headers}",
                          headers={"connection": "close"})
            return
        length = req.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit.max_body:
            st.decide("sizelimit", f"body of {length} bytes over {limit.max_body}")
            replies.reply(flow, 413, "body_too_large",
                          f"request body of {length} bytes exceeds the limit of {limit.max_body}",
                          headers={"connection": "close"})

    def request(self, flow: http.HTTPFlow):
        if flow.response or flow.error or not flow.live:
            return
        st, limit = _limit(flow)
        if limit is None:
            return
        size = len(flow.request.raw_content or b"")
        if size > limit.max_body:  # chunked bodies announce no length
            st.decide("sizelimit", f"body of {size} bytes over {limit.max_body}")
            replies.reply(flow, 413, "body_too_large",
                          f"request body of {size} bytes exceeds the limit of {limit.max_body}",
                          headers={"connection": "close"})


addons = alone.script(SizeLimit(), blocks=[alone.Block(
    "mesh_size_limit", "policies", "size_limit", schema.SizeLimit,
    "Refuse large requests: a size_limit policy of mesh.yaml in YAML flow style, e.g. "
    "'{max_body: 1MiB, max_headers: 16KiB}' (413 and 431). Empty: no limit.")])
