"""x-request-id: passed on when the client sent a sane one, generated otherwise, echoed back."""

from __future__ import annotations

import re
import uuid

from mitmproxy import http

from . import keys

_SANE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestId:
    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is None:
            return
        rid = flow.request.headers.get("x-request-id")
        if rid is None or not _SANE.match(rid):
            rid = str(uuid.uuid4())
            flow.request.headers["x-request-id"] = rid
        st.request_id = rid
        flow.metadata[keys.REQUEST_ID] = rid

    def response(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is not None and st.request_id and flow.response is not None:
            flow.response.headers["x-request-id"] = st.request_id
