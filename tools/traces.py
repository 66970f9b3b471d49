"""`mitmesh traces`: a trace without a collector. A local OTLP/HTTP receiver (tools/otlp.py) takes the
spans the proxies export and prints each trace, once its spans stop arriving, as a tree of hops
with durations and the decisions each proxy made."""

from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict

from tools.otlp import SERVER, Receiver, Span


def tree(spans: list[Span]) -> list[str]:
    """One trace as lines: a header, then each span under its parent (by start), server spans
    (a proxy taking a request) with their decisions, client spans (its attempts upstream)."""
    by_id = {s.span_id: s for s in spans}
    children: dict[str, list[Span]] = defaultdict(list)
    roots = []
    for s in sorted(spans, key=lambda s: s.start):
        (children[s.parent_id] if s.parent_id in by_id else roots).append(s)
    first, last = min(s.start for s in spans), max(s.end for s in spans)
    lines = [f"trace {spans[0].trace_id}: {len(spans)} spans, {(last - first) / 1e6:.1f} ms"]

    def walk(span: Span, prefix: str, last_child: bool) -> None:
        a = span.attributes
        to = f" → {a['mitmesh.endpoint']}" if span.kind != SERVER and "mitmesh.endpoint" in a else ""
        fields = (span.service, span.name + to, str(a.get("http.response.status_code", "")),
                  "ERROR" if span.error else "", f"{span.ms:.1f} ms", f"(+{(span.start - first) / 1e6:.1f} ms)")
        lines.append(f"{prefix}{'└─' if last_child else '├─'} " + "  ".join(f for f in fields if f))
        inner = prefix + ("   " if last_child else "│  ")
        kids = children[span.span_id]
        if span.kind == SERVER:
            for decision in span.attributes.get("mitmesh.decisions") or []:
                lines.append(f"{inner}{'│' if kids else ' '}  · {decision}")
        for i, kid in enumerate(kids):
            walk(kid, inner, i == len(kids) - 1)

    for i, root in enumerate(roots):
        walk(root, "", i == len(roots) - 1)
    return lines


class Printer:
    """Collects spans by trace and prints a trace once none of its spans came for `settle` seconds
    (each proxy exports in its own batches)."""

    def __init__(self, settle: float, out=None):
        self.settle = settle
        self.out = out or sys.stdout
        self.pending: dict[str, list[Span]] = defaultdict(list)
        self.last: dict[str, float] = {}
        self.printed = 0
        self.lock = threading.Lock()

    def add(self, spans: list[Span]) -> None:
        with self.lock:
            for s in spans:
                self.pending[s.trace_id].append(s)
                self.last[s.trace_id] = time.monotonic()

    def flush(self, everything: bool = False) -> None:
        now = time.monotonic()
        with self.lock:
            ready = [t for t, at in self.last.items() if everything or now - at >= self.settle]
            traces = [self.pending.pop(t) for t in sorted(ready, key=self.last.get)]
            for t in ready:
                del self.last[t]
        for spans in traces:
            print("\n".join(tree(spans)) + "\n", file=self.out, flush=True)
            self.printed += 1


def run(port: int, settle: float, count: int, seconds: float) -> int:
    printer = Printer(settle)
    try:
        receiver = Receiver(port, on_spans=printer.add)
    except OSError as e:
        print(f"mitmesh traces: cannot listen on 127.0.0.1:{port}: {e.strerror}", file=sys.stderr)
        return 1
    with receiver:
        print(f"listening on {receiver.url}: set observability.tracing.otlp_endpoint to it "
              f"(each trace prints {settle:g}s after its last span; Ctrl-C stops)", flush=True)
        deadline = time.monotonic() + seconds if seconds else None
        try:
            while (not count or printer.printed < count) and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.1)
                printer.flush()
        except KeyboardInterrupt:
            pass
        printer.flush(everything=True)
    return 0
