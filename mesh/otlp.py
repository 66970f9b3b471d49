"""A small OTLP/HTTP trace receiver on loopback, built on opentelemetry-proto: what `mitmesh traces`
runs, and what tests read exported spans from."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int  # 2 server, 3 client (opentelemetry.proto.trace.v1.Span.SpanKind)
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict


class Receiver:
    def __init__(self):
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                got = []
                for rs in req.resource_spans:
                    service = next((a.value.string_value for a in rs.resource.attributes
                                    if a.key == "service.name"), "")
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            attrs = {a.key: (a.value.string_value or a.value.int_value) for a in s.attributes}
                            got.append(Span(service, s.name, s.kind, s.trace_id.hex(), s.span_id.hex(),
                                            s.parent_span_id.hex(), attrs))
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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
