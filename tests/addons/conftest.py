"""Addon tests run our real chain inside mitmproxy's test context, with real hook dispatch."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiohttp import web
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpRequestHook, HttpResponseHook
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from addons import chain
from mesh.state import MeshState


class Gateway:
    def __init__(self, tctx, state: MeshState, addons: list):
        self.tctx = tctx
        self.state = state
        self.addons = addons

    async def send(self, path="/", *, method="GET", host="example.com", headers=None, body=b"", tls=False,
                   mode: str | None = None, target: str = "127.0.0.1"):
        """One flow through the chain; `mode` is the listener it came in on (a sidecar's inbound or
        outbound), `target` the host of a proxied request (`GET http://catalog/...`)."""
        req = tutils.treq(method=method.encode(), path=path.encode(), host=target, port=9,
                          authority=b"", content=body)
        req.headers.clear()
        req.headers["host"] = host
        for k, v in (headers or {}).items():
            req.headers[k] = v
        flow = tflow.tflow(req=req)
        if mode is not None:
            flow.client_conn.proxy_mode = ProxyMode.parse(mode)
        if not tls:
            flow.client_conn.tls = False
            flow.client_conn.timestamp_tls_setup = None
        manager = self.tctx.master.addons
        await manager.handle_lifecycle(HttpRequestHeadersHook(flow))
        await manager.handle_lifecycle(HttpRequestHook(flow))
        if flow.response:
            await manager.handle_lifecycle(HttpResponseHook(flow))
        return flow


@pytest.fixture
async def gateway(write_config):
    @contextlib.asynccontextmanager
    async def make(text=None):
        path = write_config(text) if text else write_config()
        state = MeshState()
        addons = chain.gateway(state)
        with taddons.context(*addons) as tctx:
            tctx.options.update(mesh_config=str(path), mesh_reload=False)
            try:
                yield Gateway(tctx, state, addons)
            finally:
                await state.pool.close()
    return make


@pytest.fixture
async def sidecar(write_config):
    """The sidecar chain for one workload: flows come in on its inbound or outbound listener."""
    @contextlib.asynccontextmanager
    async def make(text: str, workload: str):
        path = write_config(text)
        state = MeshState()
        addons = chain.sidecar(state)
        with taddons.context(*addons) as tctx:
            tctx.options.update(mesh_config=str(path), mesh_reload=False, mesh_workload=workload)
            try:
                yield Gateway(tctx, state, addons)
            finally:
                await state.pool.close()
    return make


@pytest.fixture
async def upstream_app():
    """Real HTTP upstreams on loopback: each answers JSON with its name, path and headers."""
    runners = []

    async def start(name: str, port: int = 0, handler=None):
        async def echo(request: web.Request):
            body = await request.read()
            return web.json_response({"name": name, "path": request.path_qs, "method": request.method,
                                      "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body.decode()})
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler or echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        runners.append(runner)
        return runner.addresses[0][1]

    yield start
    for r in runners:
        await r.cleanup()
    await asyncio.sleep(0)
