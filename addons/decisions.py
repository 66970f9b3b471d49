"""Decisions: what every addon decided about a flow, saved with the flow and shown in mitmweb.

The list goes into flow.metadata (saved flows, `mitmesh record`) and, as text, into flow.comment,
which mitmweb shows in the flow's Comment tab.
"""

from __future__ import annotations

from mitmproxy import http

from . import keys


class Decisions:
    def response(self, flow: http.HTTPFlow):
        self._keep(flow)

    def error(self, flow: http.HTTPFlow):
        self._keep(flow)

    def _keep(self, flow: http.HTTPFlow) -> None:
        st = keys.get(flow)
        if st is None or not st.decisions:
            return
        flow.metadata[keys.DECISIONS] = [list(d) for d in st.decisions]
        text = "\n".join(f"{who}: {what}" for who, what in st.decisions)
        flow.comment = f"{flow.comment}\n{text}" if flow.comment else text
