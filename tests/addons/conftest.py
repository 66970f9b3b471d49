"""Addon tests run our real chain inside mitmproxy's test context, with real hook dispatch."""

from __future__ import annotations

import asyncio
import contextlib
import inspect

import pytest
from aiohttp import web
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from addons import chain, dispatch, keys
from addons.router import Router
from mesh.telemetry import metrics
from mesh.core import modes
from mesh.core.state import MeshState
from mitmesh.testing import run_request_hooks


class Gateway:
    def __init__(self, tctx, state: MeshState, addons: list):
        self.tctx = tctx
        self.state = state
        self.addons = addons
        self.auth: Authenticated | None = None  # the stand-in for authentication, when inserted

    async def send(self, path="/", *, method="GET", host="example.com", headers=None, body=b"", tls=False,
                   client: str | None = None, listener: int | None = None, principal=None, claims=None,
                   mode: str | None = None, target: str = "127.0.0.1", sockname: tuple | None = None,
                   credential: str | None = None):
        """One request through the chain; `client` sets the downstream address, `listener` the
        port of the config's listener it arrives on (default: no listener), `mode` a sidecar's
        listener spec (inbound or outbound), `target` the host of a proxied request
        (`GET http://catalog/...`); `principal`, `claims` and `credential` stand for what
        authentication would have verified."""
        req = tutils.treq(method=method.encode(), path=path.encode(), host=target, port=9,
                          authority=b"", content=body)
        req.headers.clear()
        req.headers["host"] = host
        if isinstance(headers, list):  # (name, value) pairs: a repeated name is two fields
            for k, v in headers:
                req.headers.add(k, v)
        else:
            for k, v in (headers or {}).items():
                req.headers[k] = v
        flow = tflow.tflow(req=req)
        flow.client_conn.peername = (client or "127.0.0.1", 40000)
        if mode is not None:
            flow.client_conn.proxy_mode = ProxyMode.parse(mode)
        if sockname is not None:  # a transparent listener's: where the connection was going
            flow.client_conn.sockname = sockname
        if not tls:
            flow.client_conn.tls = False
            flow.client_conn.timestamp_tls_setup = None
        if listener is not None:
            flow.client_conn.proxy_mode = ProxyMode.parse(modes.reverse("127.0.0.1", listener))
        if self.auth is not None:
            self.auth.principal, self.auth.claims = principal, claims
            self.auth.credential = credential
        await run_request_hooks(self.tctx.master.addons, flow)
        return flow


class Authenticated:
    """Stands where authentication sits (right after the Router) and records what an authentication
    addon records: the verified consumer, its claims and the credential's identity, as given to
    `send`."""

    def __init__(self):
        self.principal, self.claims, self.credential = None, None, None

    def requestheaders(self, flow):
        st = keys.get(flow)
        if st is not None and st.route is not None:
            st.authenticated, st.claims = self.principal, self.claims
            st.credential = self.credential


class Counted:
    """The /status counters from when it was made on (they are metrics, counted for the process)."""

    def __init__(self):
        self.base = metrics.totals()

    def __getitem__(self, name: str) -> int:
        return metrics.totals()[name] - self.base[name]


@pytest.fixture
def counters() -> Counted:
    return Counted()


@pytest.fixture
async def gateway(write_config, tmp_path, monkeypatch):
    # the Config addon loads its default `mesh.yaml` (from the working directory) when added:
    # make that the test's own file, never the repository's demo
    monkeypatch.chdir(tmp_path)

    @contextlib.asynccontextmanager
    async def make(text=None):
        path = write_config(text) if text else write_config()
        state = MeshState()
        addons = chain.gateway(state)
        auth = Authenticated()
        addons.insert(next(i for i, a in enumerate(addons) if isinstance(a, Router)) + 1, auth)
        with taddons.context(*addons) as tctx:
            tctx.options.update(mesh_config=str(path), mesh_reload=False)
            try:
                gw = Gateway(tctx, state, dispatch.stages(addons))  # the route stages too
                gw.auth = auth
                yield gw
            finally:
                for addon in addons:  # what the proxy does at shutdown: close sessions, stop tasks
                    if (done := getattr(addon, "done", None)) is not None and inspect.isawaitable(r := done()):
                        await r
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
                yield Gateway(tctx, state, dispatch.stages(addons))
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
