"""Tracing: server span continues the caller's trace (W3C or B3); each upstream attempt is a client
span whose traceparent the upstream receives."""

from __future__ import annotations

import contextlib
import json

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from mitmproxy.test import taddons

from addons import chain
from addons.tracing import Tracing
from mesh.core.state import MeshState
from tests.addons.conftest import Gateway

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@contextlib.asynccontextmanager
async def traced(write_config, text):
    exporter = InMemorySpanExporter()
    state = MeshState()
    addons = chain.gateway(state)
    tracing = next(a for a in addons if isinstance(a, Tracing))
    tracing.exporter = exporter
    with taddons.context(*addons) as tctx:
        tctx.options.update(mesh_config=str(write_config(text)), mesh_reload=False)
        try:
            yield Gateway(tctx, state, addons), tracing, exporter
        finally:
            tracing.provider.force_flush()
            await state.pool.close()


def config(port: int) -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  users: {{versions: {{v1: {{endpoints: ["127.0.0.1:{port}"]}}}}}}
routes:
  - {{name: users, match: {{path: {{prefix: /users}}}}, forward: {{service: users}}}}
"""


async def test_w3c_parent_server_and_client_spans(write_config, upstream_app):
    port = await upstream_app("users")
    async with traced(write_config, config(port)) as (gw, tracing, exporter):
        flow = await gw.send("/users/1", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        tracing.provider.force_flush()
        spans = {s.kind: s for s in exporter.get_finished_spans()}
        server, client = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
        assert format(server.context.trace_id, "032x") == TRACE
        assert format(server.parent.span_id, "016x") == PARENT
        assert client.parent.span_id == server.context.span_id
        assert server.name == "GET users" and server.attributes["mitmesh.route"] == "users"
        assert server.attributes["mitmesh.cluster"] == "users/v1"
        assert server.attributes["http.response.status_code"] == 200
        assert client.attributes["mitmesh.endpoint"] == f"127.0.0.1:{port}"
        sent = json.loads(flow.response.content)["headers"]["traceparent"]
        assert sent == f"00-{TRACE}-{client.context.span_id:016x}-01"


async def test_b3_is_accepted(write_config, upstream_app):
    port = await upstream_app("users")
    async with traced(write_config, config(port)) as (gw, tracing, exporter):
        await gw.send("/users/1", headers={"b3": f"{TRACE}-{PARENT}-1"})
        tracing.provider.force_flush()
        server = next(s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER)
        assert format(server.context.trace_id, "032x") == TRACE


async def test_no_endpoint_means_no_spans_and_headers_pass(gateway, upstream_app):
    port = await upstream_app("users")
    async with gateway(config(port)) as gw:
        tracing = next(a for a in gw.addons if isinstance(a, Tracing))
        flow = await gw.send("/users/1", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        assert tracing.tracer is None
        assert json.loads(flow.response.content)["headers"]["traceparent"] == f"00-{TRACE}-{PARENT}-01"
