"""Recent: the last flows this proxy answered and every decision made about them, for /flows.

Under a supervisor every worker's are kept where any worker can read them (mesh/telemetry/records.py).
"""

from __future__ import annotations

import os
import time

from mitmproxy import http

from mesh.core.state import MeshState

from . import keys


class Recent:
    def __init__(self, state: MeshState):
        self.state = state
        self.pid = os.getpid()

    def response(self, flow: http.HTTPFlow):
        self._keep(flow, flow.response.status_code if flow.response else None)

    def error(self, flow: http.HTTPFlow):
        self._keep(flow, None)

    def _keep(self, flow: http.HTTPFlow, status: int | None) -> None:
        st = keys.get(flow)
        if st is None:
            return
        req = flow.request
        self.state.recent.append({
            "time": time.time(), "request_id": st.request_id, "direction": st.direction,
            "listener": st.listener.name if st.listener else None,
            "client": "%s:%s" % flow.client_conn.peername[:2] if flow.client_conn.peername else None,
            "peer": st.peer,  # the verified mTLS peer's SPIFFE ID
            "method": req.method, "host": req.host_header or req.host, "path": st.downstream_path,
            "route": st.route.name if st.route else None, "cluster": st.cluster,
            "endpoint": str(st.endpoint) if st.endpoint else None, "attempts": st.attempts,
            "status": status, "error": flow.error.msg if flow.error else None,
            "ms": round((time.monotonic() - st.started) * 1000, 2), "decisions": st.decisions,
            "pid": self.pid,  # the worker that answered
        })
