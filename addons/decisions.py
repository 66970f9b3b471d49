"""Decisions: what every addon decided about a flow, saved with the flow and shown in mitmweb.

The list goes into flow.metadata (saved flows, `mitmesh record`) and, one line per decision, into
flow.comment, which mitmweb shows in the flow's Comment tab (credentials in a decision masked by
mesh/security/redact.py). A flow that was denied, limited,
retried, faulted, mirrored, failed by a user plugin or slowed by one is marked (an emoji in mitmweb's list, found by `~marked`) and its
comment starts with the outcomes as tags (`#limited`, found by `~comment #limited`).

Alone, after other mitmesh addons: `mitmdump -s addons/ratelimit.py -s addons/decisions.py
--set mesh_decisions_log=true`.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, http

from addons import alone, keys, replies
from mesh.security import redact

log = logging.getLogger("mitmesh.decisions")

# outcome → its marker, most telling first: a flow shows the first of its outcomes
MARKERS = {"denied": ":no_entry:", "limited": ":hourglass_flowing_sand:", "plugin_failed": ":jigsaw:",
           "faulted": ":boom:", "retried": ":repeat:", "slow_plugin": ":snail:",
           "mirrored": ":busts_in_silhouette:"}
# mitmweb shows a comment as one inline run of text; this keeps its lines apart
COMMENT_STYLE = b"<style>section.timing > .inline-input.kv-value { white-space: pre-line; }</style>"


def outcomes(flow: http.HTTPFlow, st: keys.FlowState) -> list[str]:
    """What happened to the flow, from what the chain recorded (in MARKERS' order)."""
    found = set()
    if st.error in replies.DENIED:
        found.add("denied")
    elif st.error in replies.LIMITED:
        found.add("limited")
    if st.attempts > 1:
        found.add("retried")
    if st.error in replies.PLUGIN_FAILED:
        found.add("plugin_failed")
    for who, what in st.decisions:
        if who == "fault":
            found.add("faulted")
        if what.endswith(replies.OVER_BUDGET):
            found.add("slow_plugin")
    if keys.MIRROR in flow.metadata:
        found.add("mirrored")
    return [o for o in MARKERS if o in found]


class Decisions:
    def load(self, loader):
        loader.add_option("mesh_decisions_log", bool, False,
                          "Also write each flow's decision log to the event log (mitmdump's output).")

    def running(self):
        web = getattr(ctx.master, "app", None)  # mitmweb's tornado application
        if web is not None and hasattr(web, "add_handlers"):
            web.add_handlers(r".*", [(r"/", _index_handler())])

    def response(self, flow: http.HTTPFlow):
        self._keep(flow)

    def error(self, flow: http.HTTPFlow):
        self._keep(flow)

    def _keep(self, flow: http.HTTPFlow) -> None:
        st = keys.get(flow)
        if st is None or not st.decisions:
            return
        decisions = [list(d) for d in st.decisions]
        lines = [f"{who}: {what}" for who, what in st.decisions]
        # rarely: a decision quoting a credential (or a stage named like one: value() masks the pair)
        if (redact.masks("\n".join(lines))
                or not redact.SECRET_NAMES.isdisjoint([who.lower() for who, _ in st.decisions])):
            decisions, lines = redact.value(decisions), redact.value(lines)
        flow.metadata[keys.DECISIONS] = decisions
        st.decision_lines = lines
        found = outcomes(flow, st)
        text = "\n".join(lines)
        if found:
            flow.metadata[keys.OUTCOMES] = found
            if not flow.marked:
                flow.marked = MARKERS[found[0]]
            text = " ".join(f"#{o}" for o in found) + "\n" + text
        flow.comment = f"{flow.comment}\n{text}" if flow.comment else text
        if ctx.options.mesh_decisions_log:
            answer = flow.response.status_code if flow.response else flow.error
            log.info(f"decisions of {st.request_id} ({flow.request.method} → {answer}):\n"
                     + "\n".join(f"  {line}" for line in lines))


def _index_handler():
    """mitmweb's page with COMMENT_STYLE added (imported here: only mitmweb has tornado loaded)."""
    from mitmproxy.tools.web.app import IndexHandler

    class Index(IndexHandler):
        def get(self):
            page = self.render_string("../index.html")
            self.finish(page.replace(b"</head>", COMMENT_STYLE + b"</head>", 1))

    return Index


addons = alone.script(Decisions())
