"""Decisions: what every addon decided about a flow, saved with the flow and shown in mitmweb.

The list goes into flow.metadata (saved flows, `mitmesh record`) and, as text, into flow.comment,
which mitmweb shows in the flow's Comment tab.

Alone, after other mitmesh addons: `mitmdump -s addons/ratelimit.py -s addons/decisions.py
--set mesh_decisions_log=true`.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, http

from addons import alone, keys

log = logging.getLogger("mitmesh.decisions")


class Decisions:
    def load(self, loader):
        loader.add_option("mesh_decisions_log", bool, False,
                          "Also write each flow's decision log to the event log (mitmdump's output).")

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
        if ctx.options.mesh_decisions_log:
            answer = flow.response.status_code if flow.response else flow.error
            log.info(f"decisions of {st.request_id} ({flow.request.method} → {answer}):\n"
                     + "\n".join(f"  {who}: {what}" for who, what in st.decisions))


addons = alone.script(Decisions())
