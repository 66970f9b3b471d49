"""Mirror: a copy goes to the mirror cluster (host marked -shadow), the client gets the primary's
answer even when the mirror is slow or down, and differences are counted and kept with the request id."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from addons import keys
from mesh.runtime import procs


def config(primary: int, mirror: int, extra: str = "") -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  catalog: {{versions: {{v1: {{endpoints: ["127.0.0.1:{primary}"]}}, v2: {{endpoints: ["127.0.0.1:{mirror}"]}}}}}}
routes:
  - {{name: catalog, match: {{path: {{prefix: /c/}}}}, forward: {{service: catalog, version: v1}}, policies: [copy]}}
policies:
  copy:
    mirror: {{service: catalog, version: v2{extra}}}
"""


async def settle(gw, counters, count: int) -> None:
    for _ in range(200):
        if counters["mirror_requests"] >= count and not any(
                not t.done() for a in gw.addons if hasattr(a, "tasks") for t in a.tasks):
            return
        await asyncio.sleep(0.01)


async def test_copies_are_compared_and_differences_kept(gateway, upstream_app, counters):
    seen = []

    async def v2(request):
        seen.append((request.method, request.path_qs, request.headers["host"], await request.read()))
        return web.json_response({"name": "v2", "price_cents": 4990})

    async def v1(request):
        return web.json_response({"name": "v1", "price": 49.9})

    p, m = await upstream_app("v1", handler=v1), await upstream_app("v2", handler=v2)
    async with gateway(config(p, m, ", ignore: [name]")) as gw:
        flow = await gw.send("/c/items?x=1", method="POST", body=b'{"a": 1}', host="shop.test")
        assert json.loads(flow.response.content) == {"name": "v1", "price": 49.9}
        assert flow.metadata[keys.MIRROR] == "catalog/v2"
        await settle(gw, counters, 1)
        assert seen == [("POST", "/c/items?x=1", "shop.test-shadow", b'{"a": 1}')]
        assert (counters["mirror_requests"], counters["mirror_compared"], counters["mirror_diffs"]) == (1, 1, 1)
        diff = gw.state.mirror_diffs.latest()[-1]
        assert diff["request_id"] == flow.response.headers["x-request-id"]
        assert (diff["route"], diff["primary"], diff["mirror"]) == ("catalog", "catalog/v1", "catalog/v2")
        assert diff["difference"] == "body differs at price: 49.9 vs (absent); price_cents: (absent) vs 4990"


async def test_equal_answers_are_not_differences(gateway, upstream_app, counters):
    async def same(request):
        return web.json_response({"items": [1, 2]})

    p, m = await upstream_app("v1", handler=same), await upstream_app("v2", handler=same)
    async with gateway(config(p, m)) as gw:
        for _ in range(3):
            await gw.send("/c/items")
        await settle(gw, counters, 3)
        assert counters["mirror_compared"] == 3 and counters["mirror_diffs"] == 0


async def test_a_slow_or_dead_mirror_never_holds_or_fails_the_client(gateway, upstream_app, counters):
    async def slow(request):
        await asyncio.sleep(1.0)
        return web.json_response({})

    p = await upstream_app("v1")
    m = await upstream_app("v2", handler=slow)
    async with gateway(config(p, m, ", timeout: 300ms")) as gw:
        loop = asyncio.get_running_loop()
        start = loop.time()
        flow = await gw.send("/c/items")
        assert flow.response.status_code == 200 and loop.time() - start < 0.25
        await settle(gw, counters, 1)
        assert counters["mirror_errors"] == 1
        assert gw.state.mirror_diffs.latest()[-1]["difference"].startswith("mirror failed: timeout")
    async with gateway(config(p, procs.free_port())) as gw:
        flow = await gw.send("/c/items")
        assert flow.response.status_code == 200
        await settle(gw, counters, 2)
        assert gw.state.mirror_diffs.latest()[-1]["difference"].startswith("mirror failed: connect_failure")


async def test_percent_zero_copies_nothing(gateway, upstream_app, counters):
    p, m = await upstream_app("v1"), await upstream_app("v2")
    async with gateway(config(p, m, ", percent: 0")) as gw:
        flow = await gw.send("/c/items")
        assert keys.MIRROR not in flow.metadata and counters["mirror_requests"] == 0
