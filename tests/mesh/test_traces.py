"""mitmesh traces: a trace printed as a tree of hops, with durations and each proxy's decisions."""

from __future__ import annotations

import io

from tools.otlp import CLIENT, SERVER, Span
from tools.traces import Printer, tree

MS = 1_000_000
T = "4bf92f3577b34da6a3ce929d0e0e4736"


def span(sid, parent, service, name, kind, start, end, **attributes) -> Span:
    return Span(service, name, kind, T, sid, parent, attributes, start * MS, end * MS, error=end - start > 40)


SPANS = [  # out of order, as batches from several proxies arrive
    span("c2", "s2", "orders.sidecar", "local attempt 1", CLIENT, 3, 9, **{"http.response.status_code": 200,
                                                                          "mitmesh.endpoint": "127.0.0.4:9"}),
    span("s1", "", "mitmesh-gateway", "POST orders", SERVER, 0, 12, **{
        "http.response.status_code": 200, "mitmesh.decisions": ["router: route orders matched", "forward: ok"]}),
    span("c1", "s1", "mitmesh-gateway", "orders/v1 attempt 1", CLIENT, 1, 11, **{"mitmesh.endpoint": "127.0.0.4:1"}),
    span("s2", "c1", "orders.sidecar", "POST inbound", SERVER, 2, 10, **{"mitmesh.decisions": ["inbound: app"]}),
    span("c3", "s1", "mitmesh-gateway", "orders/v1 attempt 2", CLIENT, 11, 55),
]


def test_a_trace_is_a_tree_of_hops_with_durations_and_decisions():
    assert tree(SPANS) == [
        f"trace {T}: 5 spans, 55.0 ms",
        "└─ mitmesh-gateway  POST orders  200  12.0 ms  (+0.0 ms)",
        "   │  · router: route orders matched",
        "   │  · forward: ok",
        "   ├─ mitmesh-gateway  orders/v1 attempt 1 → 127.0.0.4:1  10.0 ms  (+1.0 ms)",
        "   │  └─ orders.sidecar  POST inbound  8.0 ms  (+2.0 ms)",
        "   │     │  · inbound: app",
        "   │     └─ orders.sidecar  local attempt 1 → 127.0.0.4:9  200  6.0 ms  (+3.0 ms)",
        "   └─ mitmesh-gateway  orders/v1 attempt 2  ERROR  44.0 ms  (+11.0 ms)",
    ]


def test_a_trace_prints_once_its_spans_stop_coming():
    out = io.StringIO()
    printer = Printer(settle=3600, out=out)
    printer.add(SPANS[:2])
    printer.flush()
    assert out.getvalue() == "" and printer.printed == 0  # more spans may come
    printer.add(SPANS[2:])
    printer.flush(everything=True)
    assert printer.printed == 1 and out.getvalue().startswith(f"trace {T}: 5 spans")
