"""Tracing: a server span per request and a client span per upstream attempt, over OTLP/HTTP.

W3C `traceparent` (and B3, single or multi header) is accepted from downstream; `traceparent` is
sent upstream. Without `observability.tracing.otlp_endpoint` no span is made and trace headers
pass through untouched, but the access log still carries an incoming trace id.

Alone: `mitmdump -s addons/tracing.py --set mesh_tracing='{otlp_endpoint: http://127.0.0.1:4318/v1/traces}'`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mitmproxy import http

from addons import alone, keys
from mesh.config import schema
from mesh.core.state import MeshState, Snapshot

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from mesh.telemetry import otel

log = logging.getLogger("mitmesh.tracing")

TRACE_HEADERS = frozenset({b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid",
                           b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags"})


def _trace_id_of(traceparent: str | None) -> str:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


class Tracing:
    def __init__(self, state: MeshState, service_name: str = "mitmesh-gateway", exporter=None):
        self.state = state
        self.service_name = service_name
        self.exporter = exporter  # tests pass an in-memory exporter; else OTLP from the config
        self.provider: TracerProvider | None = None
        self.tracer = None
        self._for: Snapshot | None = None
        self._settings: tuple | None = None

    def _ensure(self) -> None:
        snap = self.state.snapshot
        if snap is self._for:
            return
        self._for = snap
        cfg = snap.config.observability.tracing if snap else None
        settings = (cfg.otlp_endpoint, cfg.sampling) if cfg else (None, 1.0)
        if settings == self._settings:
            return
        self._settings = settings
        if self.provider is not None:
            self.provider.shutdown()
            self.provider = self.tracer = None
        endpoint, ratio = settings
        if endpoint is None and self.exporter is None:
            return
        global otel  # the OpenTelemetry SDK: imported when a config first turns tracing on
        from mesh.telemetry import otel

        # a sidecar's spans carry its service's name, as Istio's do; the gateway's its own
        name = f"{snap.workload.service}.sidecar" if snap and snap.workload else self.service_name
        self.provider = otel.provider(name, ratio, endpoint, self.exporter)
        self.tracer = self.provider.get_tracer("mitmesh")
        log.info(f"tracing: exporting to {endpoint or 'test exporter'}, sampling {ratio:g}")

    def configure(self, updated):
        self._ensure()

    def done(self):
        if self.provider is not None:
            self.provider.shutdown()

    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is None:
            return
        self._ensure()
        if self.tracer is None:
            st.trace_id = _trace_id_of(flow.request.headers.get("traceparent"))
            return
        parent = otel.EXTRACT.extract(flow.request.headers)
        req = flow.request
        span = self.tracer.start_span(
            f"{req.method} {st.direction or 'edge'}", context=parent, kind=otel.SpanKind.SERVER,
            attributes={"http.request.method": req.method, "url.path": st.path or req.path.partition("?")[0],
                        "server.address": req.host_header or "", "mitmesh.direction": st.direction or "edge",
                        "mitmesh.request_id": st.request_id},
        )
        st.span = span
        ctx = span.get_span_context()
        st.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
        # the upstream continues this span's trace when plain mitmproxy sends the request as it is;
        # in the chain, Forward sends each attempt with its client span's traceparent instead
        headers = flow.request.headers
        headers.fields = tuple(f for f in headers.fields if f[0].lower() not in TRACE_HEADERS)
        otel.INJECT.inject(headers, context=otel.trace.set_span_in_context(span))

    def response(self, flow: http.HTTPFlow):
        self._end(flow)

    def error(self, flow: http.HTTPFlow):
        self._end(flow)

    def _end(self, flow: http.HTTPFlow) -> None:
        st = keys.get(flow)
        if st is None or st.span is None:
            return
        span, st.span = st.span, None
        if st.route is not None:
            span.update_name(f"{flow.request.method} {st.route.name}")
            span.set_attribute("mitmesh.route", st.route.name)
        if st.cluster:
            span.set_attribute("mitmesh.cluster", st.cluster)
        if st.endpoint is not None:
            span.set_attribute("mitmesh.endpoint", str(st.endpoint))
        if st.principal:
            span.set_attribute("mitmesh.peer", st.principal)
        span.set_attribute("mitmesh.attempts", st.attempts)
        if st.decisions:  # the decision log, so a trace says why each hop did what it did
            span.set_attribute("mitmesh.decisions", [f"{who}: {what}" for who, what in st.decisions])
        if flow.response is not None:
            span.set_attribute("http.response.status_code", flow.response.status_code)
            if flow.response.status_code >= 500:
                span.set_status(otel.Status(otel.StatusCode.ERROR))
        elif flow.error is not None:
            span.set_status(otel.Status(otel.StatusCode.ERROR, flow.error.msg))
        span.end()


class ClientSpan:
    """One upstream attempt as a client span; `headers` gets the traceparent to send."""

    __slots__ = ("span",)

    def __init__(self, st: keys.FlowState, tracer, cluster: str, endpoint: str, attempt: int):
        parent = otel.trace.set_span_in_context(st.span)
        self.span = tracer.start_span(
            f"{cluster} attempt {attempt}", context=parent, kind=otel.SpanKind.CLIENT,
            attributes={"mitmesh.cluster": cluster, "mitmesh.endpoint": endpoint,
                        "mitmesh.attempt": attempt, "server.address": endpoint})

    def inject(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        carrier: dict[str, str] = {}
        otel.INJECT.inject(carrier, context=otel.trace.set_span_in_context(self.span))
        out = [(n, v) for n, v in headers if n.lower() not in TRACE_HEADERS]
        out += [(k.encode(), v.encode()) for k, v in carrier.items()]
        return out

    def end(self, status: int | None, error: str | None = None) -> None:
        if status is not None:
            self.span.set_attribute("http.response.status_code", status)
        if error is not None or (status or 0) >= 500:
            self.span.set_status(otel.Status(otel.StatusCode.ERROR, error))
        self.span.end()


def client_span(tracing: Tracing | None, st: keys.FlowState, cluster: str, endpoint: str,
                attempt: int) -> ClientSpan | None:
    if tracing is None or tracing.tracer is None or st.span is None:
        return None
    return ClientSpan(st, tracing.tracer, cluster, endpoint, attempt)


addons = alone.script(Tracing(alone.state(), "mitmdump"), blocks=[alone.Block(
    "mesh_tracing", "observability", "tracing", schema.Tracing,
    "Where spans go: an observability.tracing block of mesh.yaml in YAML flow style, e.g. "
    "'{otlp_endpoint: http://127.0.0.1:4318/v1/traces, sampling: 0.1}' (`mitmesh traces` runs a "
    "receiver that prints them). Empty: no spans, trace headers pass through.")])
