"""Router: 404 JSON for no route, direct and redirect answers, route recorded on the flow."""

from __future__ import annotations

import json

from addons import keys
from tests.conftest import BASE

CONFIG = BASE + """
  - name: health
    match: {path: {exact: /healthz}}
    direct: {status: 200, body: {ok: true}, headers: {x-from: gateway}}
  - name: old
    match: {path: {prefix: /old}}
    redirect: {location: /new, status: 308}
"""


async def test_no_route_is_json_404(gateway):
    async with gateway(CONFIG) as gw:
        flow = await gw.send("/nowhere?x=1")
        assert flow.response.status_code == 404
        body = json.loads(flow.response.content)
        assert body["error"] == "no_route"
        assert "GET /nowhere" in body["reason"]
        assert body["request_id"] == flow.response.headers["x-request-id"]


async def test_direct_and_redirect(gateway):
    async with gateway(CONFIG) as gw:
        flow = await gw.send("/healthz")
        assert flow.response.status_code == 200
        assert json.loads(flow.response.content) == {"ok": True}
        assert flow.response.headers["x-from"] == "gateway"
        assert flow.metadata[keys.ROUTE] == "health"
        flow = await gw.send("/old/page")
        assert flow.response.status_code == 308 and flow.response.headers["location"] == "/new"


async def test_dot_segments_cannot_dodge_routes(gateway):
    async with gateway(CONFIG) as gw:
        flow = await gw.send("/nothing/../healthz")
        assert flow.metadata[keys.ROUTE] == "health"
