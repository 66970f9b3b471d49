"""HttpGuard's connection end: a client connection mitmproxy's handler left open is closed once
mitmproxy is done with it, after what was written to it (the layer itself: tests/security/)."""

from __future__ import annotations

import asyncio
import contextlib

from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.proxy.server import SimpleConnectionHandler
from mitmproxy.test import taddons

from addons.httpguard import HttpGuard
from mesh.core.state import MeshState


@contextlib.asynccontextmanager
async def client_connection():
    """A real loopback connection: the client's reader, and the server side's reader and writer
    as mitmproxy gets them."""
    accepted = asyncio.get_running_loop().create_future()
    server = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)), "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        try:
            yield reader, await accepted
        finally:
            writer.close()
    finally:
        server.close()


async def test_a_client_connection_its_handler_left_open_is_closed_after_the_answer():
    proxyserver, guard = Proxyserver(), HttpGuard(MeshState())
    async with client_connection() as (client, accepted):
        with taddons.context(proxyserver, guard) as tctx:
            handler = SimpleConnectionHandler(*accepted, tctx.options, ProxyMode.parse("regular"), {})
            proxyserver.connections[handler.client.id] = handler
            handler.transports[handler.client].writer.write(b"the answer")
            guard.client_disconnected(handler.client)
            assert await asyncio.wait_for(client.read(), 2) == b"the answer"  # then the end

