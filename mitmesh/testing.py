"""Test your plugins as mitmesh tests its own stages: pytest fixtures (a pytest plugin, on by default).

- `mitmesh_chain`: the real gateway (or sidecar) chain in-process around your plugins, with a given
  config; requests are mitmproxy test flows, no socket is opened, the upstream is a function.
- `mitmesh_gateway`: a real gateway process (`mitmesh gateway`) with your config and plugins, on
  free loopback ports, stopped after the test whatever happens.
- `mitmesh_upstream`: a real HTTP server on loopback that answers JSON echoing the request.

A config is YAML text or a dict; `gateway` may be left out (free loopback ports are filled in), and
relative plugin files are relative to the working directory (your project's root under pytest).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from mitmproxy import http
from mitmproxy.proxy.layers.http import (HttpRequestHeadersHook, HttpRequestHook, HttpResponseHeadersHook,
                                         HttpResponseHook)
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from addons import chain as chains
from addons.dispatch import Dispatch
from addons import keys, replies
from mesh.core.routing import ForwardAction
from mesh.core.state import MeshState
from mesh.runtime import procs

Upstream = Callable[[http.HTTPFlow], http.Response]


def echo(flow: http.HTTPFlow) -> http.Response:
    """The default upstream of `mitmesh_chain`: 200 with the request as the upstream got it."""
    body = {"method": flow.request.method, "path": flow.request.path,
            "headers": dict(flow.request.headers), "body": flow.request.get_text(strict=False)}
    return http.Response.make(200, json.dumps(body), {"content-type": "application/json"})


def prepare_config(config: str | dict, base: str | os.PathLike | None = None) -> dict:
    """The config as a dict, with free loopback ports for a missing `gateway` and plugin files made
    absolute (relative to `base`, default the working directory)."""
    data = yaml.safe_load(config) if isinstance(config, str) else json.loads(json.dumps(config))
    data.setdefault("version", 1)
    data.setdefault("gateway", {"listeners": [{"name": "public", "port": procs.free_port()}],
                                "admin": {"port": procs.free_port()}})
    root = Path(base or os.getcwd())
    for block in (data.get("plugins") or {}).values():
        target = block.get("plugin", "") if isinstance(block, dict) else ""
        path, sep, attr = target.rpartition(":") if ":" in target else (target, "", "")
        if path.endswith(".py") and not os.path.isabs(path):
            block["plugin"] = str(root / path) + sep + attr
    return data


class _Upstream:
    """Stands where Forward stands (same name, so plugins placed by it stay put): answers every
    routed request with `upstream(flow)` and records the cluster, without a socket."""

    name = "forward"

    def __init__(self, upstream: Upstream):
        self.upstream = upstream

    def request(self, flow: http.HTTPFlow):
        if flow.response or flow.error or not flow.live:
            return
        st = keys.get(flow)
        if st is None or st.route is None or not isinstance(st.route.action, ForwardAction):
            replies.reply(flow, 500, "unrouted", "request reached forwarding without a route")
            return
        st.cluster = st.cluster or st.route.action.pick_cluster()
        flow.response = self.upstream(flow)


class _Caller:
    """Stands right after authentication: the identity and claims a test says the caller has."""

    name = "mitmesh-testing-caller"

    def __init__(self):
        self.identity: str | None = None
        self.claims: dict | None = None

    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is not None and self.identity is not None:
            st.authenticated, st.claims = self.identity, self.claims  # as Authn would


class Chain:
    """A chain in-process. `send()` runs one request through it; `status()` is its /status."""

    def __init__(self, tctx, state: MeshState, addons: list, caller: _Caller | None):
        self.tctx = tctx
        self.state = state
        self.addons = addons
        self._caller = caller

    @property
    def plugins(self):
        """The Plugins addon (`.check()` reloads edited plugin files now, as the proxy does every 0.5s)."""
        return next(a for a in self.addons if type(a).__name__ == "Plugins")

    def status(self) -> dict:
        return self.state.status()

    async def send(self, path: str = "/", *, method: str = "GET", host: str = "example.com",
                   headers: dict[str, str] | None = None, body: bytes | str = b"",
                   client: str = "127.0.0.1", mode: str | None = None, target: str = "127.0.0.1",
                   identity: str | None = None, claims: dict | None = None) -> http.HTTPFlow:
        """One request through the chain, answered by the upstream function unless a stage (or a
        plugin) answers first. `identity`/`claims` stand for what authentication would verify;
        `mode` is a sidecar's listener spec (`mitmesh.testing.sidecar_mode(...)`)."""
        if self._caller is not None:
            self._caller.identity, self._caller.claims = identity, claims
        req = tutils.treq(method=method.encode(), path=path.encode(), host=target, port=9,
                          authority=b"", content=body.encode() if isinstance(body, str) else body)
        req.headers.clear()
        req.headers["host"] = host
        for k, v in (headers or {}).items():
            req.headers[k] = v
        flow = tflow.tflow(req=req)
        flow.client_conn.peername = (client, 40000)
        flow.client_conn.tls = False
        flow.client_conn.timestamp_tls_setup = None
        snap = self.state.snapshot
        if mode is not None:
            flow.client_conn.proxy_mode = ProxyMode.parse(mode)
        elif snap is not None and snap.listeners:
            flow.client_conn.proxy_mode = ProxyMode.parse(snap.listeners[0].mode)
        await run_request_hooks(self.tctx.master.addons, flow)
        return flow


async def run_request_hooks(manager, flow: http.HTTPFlow) -> None:
    """A request's hooks through an addon manager as mitmproxy fires them: requestheaders and
    request, then, when an addon answered, responseheaders and response."""
    await manager.handle_lifecycle(HttpRequestHeadersHook(flow))
    await manager.handle_lifecycle(HttpRequestHook(flow))
    if flow.response:
        await manager.handle_lifecycle(HttpResponseHeadersHook(flow))
        await manager.handle_lifecycle(HttpResponseHook(flow))


def decisions(flow: http.HTTPFlow) -> list[str]:
    """The flow's decision log, one `who: what` line per decision (plugins: `plugin NAME: …`)."""
    st = keys.get(flow)
    return [f"{who}: {what}" for who, what in st.decisions] if st is not None else []


def body(flow: http.HTTPFlow) -> Any:
    """The JSON body of the flow's response."""
    return json.loads(flow.response.content or b"null")


def sidecar_mode(snapshot, direction: str) -> str:
    """The listener spec a sidecar flow arrives on: `inbound` or `outbound`."""
    return next(b.mode for b in snapshot.listeners if b.direction == direction)


@contextlib.asynccontextmanager
async def run_chain(config: str | dict, directory: Path, *, role: str = "gateway", workload: str = "",
                    upstream: Upstream = echo, base: str | None = None):
    """The chain of `role` with this config, loaded as the proxy loads it (plugins included)."""
    path = directory / "mesh.yaml"
    path.write_text(yaml.safe_dump(prepare_config(config, base), sort_keys=False))
    state = MeshState()
    addons = chains.gateway(state) if role == "gateway" else chains.sidecar(state)
    i = next(i for i, a in enumerate(addons) if type(a).__name__ == "Forward")
    addons[i] = _Upstream(upstream)
    caller = None
    if role == "gateway":
        caller = _Caller()
        route_stages = next(a for a in addons if isinstance(a, Dispatch)).stages  # Authn is one of them
        route_stages.insert(next(i for i, a in enumerate(route_stages) if type(a).__name__ == "Authn") + 1, caller)
    old = os.getcwd()
    os.chdir(directory)  # the Config addon loads ./mesh.yaml as soon as it is added
    try:
        with taddons.context(*addons) as tctx:
            options: dict = {"mesh_config": str(path), "mesh_reload": False}
            if role != "gateway":
                options["mesh_workload"] = workload
            tctx.options.update(**options)
            chain = Chain(tctx, state, addons, caller)
            try:
                yield chain
            finally:
                for addon in addons:  # what the proxy does at shutdown
                    done = getattr(addon, "done", None)
                    if done is not None and inspect.isawaitable(result := done()):
                        await result
                await state.pool.close()
    finally:
        os.chdir(old)


class Gateway:
    """A real gateway process: `url` (its first listener), `admin`, `status()`, `write(config)`."""

    def __init__(self, directory: Path, config: dict):
        self.dir = directory
        self.path = directory / "mesh.yaml"
        self.config = config
        self.child: procs.Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config['gateway']['listeners'][0]['port']}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.config['gateway']['admin']['port']}"

    def write(self, config: dict | None = None) -> None:
        """Write the config (a running gateway reloads it)."""
        self.config = config or self.config
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.config, sort_keys=False))
        tmp.replace(self.path)

    def status(self) -> dict:
        from tools.testbed import get

        return get(self.admin + "/status")[1]

    def get(self, path: str, **kw) -> tuple[int, Any, dict]:
        """(status, JSON body, headers) of one request to the gateway."""
        from tools.testbed import get

        return get(self.url + path, **kw)

    def start(self, workers: int = 1) -> None:
        from tools.launcher import lean_argv

        self.write()
        self.child = procs.spawn("gateway", lean_argv(self.path, workers), log_dir=self.dir / "logs",
                                 cwd=str(self.dir))
        procs.wait_log(self.child, "gateway ready")

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


class _Echo(BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        data = self.rfile.read(length).decode(errors="replace") if length else ""
        out = json.dumps({"method": self.command, "path": self.path, "headers": dict(self.headers),
                          "body": data, "upstream": self.server.server_address[1]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def mitmesh_upstream():
    """Start real echo servers on loopback: `addr = mitmesh_upstream()` gives `127.0.0.1:PORT`."""
    servers = []

    def start() -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def mitmesh_chain(tmp_path):
    """`async with mitmesh_chain(config) as chain: flow = await chain.send("/path")` (see run_chain)."""
    def make(config: str | dict, **kw):
        return run_chain(config, tmp_path, **kw)
    return make


@pytest.fixture
def mitmesh_gateway(tmp_path):
    """`gw = mitmesh_gateway(config)`: a started gateway process, stopped after the test."""
    started: list[Gateway] = []

    def start(config: str | dict, workers: int = 1, base: str | None = None) -> Gateway:
        gw = Gateway(tmp_path, prepare_config(config, base))
        started.append(gw)
        gw.start(workers)
        return gw

    try:
        yield start
    finally:
        for gw in started:
            gw.stop()


__all__ = ["Chain", "Gateway", "body", "decisions", "echo", "mitmesh_chain", "mitmesh_gateway",
           "mitmesh_upstream", "prepare_config", "run_chain", "sidecar_mode"]
