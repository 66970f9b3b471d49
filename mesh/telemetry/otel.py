"""The OpenTelemetry API, SDK and propagators the tracing addon uses, in one module it imports only
when a config turns tracing on (`observability.tracing.otlp_endpoint`): a proxy without tracing
loads none of them (docs/performance.md)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["trace", "SpanKind", "Status", "StatusCode", "EXTRACT", "INJECT", "provider"]

EXTRACT = CompositePropagator([B3MultiFormat(), B3SingleFormat(), TraceContextTextMapPropagator()])
INJECT = TraceContextTextMapPropagator()


def provider(name: str, ratio: float, endpoint: str | None, exporter=None) -> TracerProvider:
    """A tracer provider for service `name`, sampling `ratio` of new traces (a parent's decision
    wins), exporting to `exporter` or else over OTLP/HTTP to `endpoint`, from a background thread
    (the event loop never waits on the collector)."""
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=5)
    p = TracerProvider(resource=Resource.create({"service.name": name}),
                       sampler=ParentBased(TraceIdRatioBased(ratio)))
    p.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return p
