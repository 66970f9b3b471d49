"""Faults: injected delays, aborts, slow bodies and resets (mesh/resilience/faults.py decides which) for plain
mitmproxy, which calls the upstream itself. In the chain, Forward injects them into each upstream
attempt instead, so retries, breakers and ejection react to them; it shares `from_header`.

Alone: `mitmdump -s addons/faults.py --set mesh_fault='{abort: {status: 503, percentage: 10}}'`.
"""

from __future__ import annotations

import asyncio

from mitmproxy import http

from addons import alone, keys, replies
from mesh.config import schema
from mesh.resilience.faults import ABORT_BODY, HEADER, NONE, Fault, describe, parse_header
from mesh.resilience.settings import RouteResilience


def from_header(flow: http.HTTPFlow, res: RouteResilience) -> Fault | None:
    """The fault a client asked for in x-mitmesh-fault, where the route honours it (NONE otherwise);
    None after answering 400 to a malformed one. The header never goes upstream."""
    raw = flow.request.headers.get(HEADER)
    if raw is None:
        return NONE
    del flow.request.headers[HEADER]
    if not res.header_faults:
        return NONE
    try:
        return parse_header(raw)
    except ValueError as e:
        replies.reply(flow, 400, "bad_fault_header", f"{HEADER}: {e}")
        return None


class Faults:
    async def request(self, flow: http.HTTPFlow):
        st = keys.routed(flow)
        if st is None:
            return
        res = st.route.plan.forward
        fault = from_header(flow, res)
        if fault is None:
            return
        if not fault and res.fault is not None:
            fault = res.fault.next()
        if not fault:
            return
        st.decide("fault", describe(fault))
        st.fault = fault
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.abort is not None:
            flow.response = http.Response.make(fault.abort, ABORT_BODY, {"content-type": "text/plain"})

    async def response(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        fault = st.fault if st is not None else None
        if fault is None or fault.abort is not None or flow.response is None:
            return
        size = len(flow.response.raw_content or b"")
        if fault.reset_after is not None and size > fault.reset_after:
            flow.kill()  # the client's connection closes without the response, as after a reset
        elif fault.drip:
            await asyncio.sleep(size / fault.drip)


addons = alone.script(Faults(), blocks=[alone.Block(
    "mesh_fault", "policies", "fault", schema.Fault,
    "Inject faults: a fault policy of mesh.yaml in YAML flow style, e.g. '{abort: {status: 503, "
    "percentage: 10}}', '{delay: {fixed: 200ms, percentage: 50}}', '{abort: {status: 500, "
    "every_nth: 3}}', '{drip: 1000}' (bytes/s) or '{header_triggered: true}' (the client asks with "
    "x-mitmesh-fault: delay=200ms,abort=503). Empty: off.")])
