"""A small OTLP/HTTP trace receiver on loopback, built on opentelemetry-proto: what `mitmesh traces`
runs, and what tests read exported spans from."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int  # SERVER or CLIENT
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict
    start: int = 0  # unix nanoseconds
    end: int = 0
    error: bool = False  # the span's status is ERROR

    @property
    def ms(self) -> float:
        return (self.end - self.start) / 1e6


def _value(v: AnyValue):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def spans_of(body: bytes) -> list[Span]:
    """The spans of one OTLP/HTTP protobuf export request."""
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(Span(service, s.name, s.kind, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                {a.key: _value(a.value) for a in s.attributes}, s.start_time_unix_nano,
                                s.end_time_unix_nano, s.status.code == 2))
    return out


class Receiver:
    """Accepts OTLP/HTTP exports on 127.0.0.1 (`port` 0: any free one) and keeps every span in
    `spans`, or hands each batch to `on_spans` instead."""

    def __init__(self, port: int = 0, on_spans: Callable[[list[Span]], None] | None = None):
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                got = spans_of(self.rfile.read(int(self.headers.get("content-length", 0))))
                if on_spans is not None:
                    on_spans(got)
                else:
                    with receiver.lock:
                        receiver.spans.extend(got)
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]
