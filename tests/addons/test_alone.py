"""Addons alone: an option holds a block of mesh.yaml; every flow takes the one route carrying it."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpRequestHook
from mitmproxy.test import taddons, tflow

from addons import alone, keys
from addons.ratelimit import RateLimit
from mesh.config import schema

BLOCK = alone.Block("mesh_rate_limit", "policies", "rate_limit", schema.RateLimit, "help")


async def send(tctx) -> tflow.tflow:
    flow = tflow.tflow()
    flow.request.headers["host"] = "example.com"  # as every HTTP/1.1 request has (Normalize checks it)
    await tctx.master.addons.handle_lifecycle(HttpRequestHeadersHook(flow))
    await tctx.master.addons.handle_lifecycle(HttpRequestHook(flow))  # rate limits count complete requests
    return flow


async def test_the_option_becomes_the_routes_compiled_policy():
    with taddons.context(*alone.script(RateLimit(alone.state()), blocks=[BLOCK])) as tctx:
        tctx.options.update(mesh_rate_limit="{minute: 1, key: ip}")
        first, second = await send(tctx), await send(tctx)
    st = keys.get(first)
    assert st.route.name == "mitmdump" and st.route.plan.rate_limit.policy_header == "1;w=60"
    assert st.request_id and first.request.headers["x-request-id"] == st.request_id
    assert first.response is None and second.response.status_code == 429


async def test_a_bad_value_is_refused_and_the_last_good_one_stays():
    with taddons.context(*alone.script(RateLimit(alone.state()), blocks=[BLOCK])) as tctx:
        tctx.options.update(mesh_rate_limit="{minute: 5}")
        with pytest.raises(exceptions.OptionsError, match=r"mesh_rate_limit:1: minute: expected a value "
                                                          r">= 1 \(got 0\)"):
            tctx.options.update(mesh_rate_limit="{minute: 0}")
        assert tctx.options.mesh_rate_limit == "{minute: 5}"
        flow = await send(tctx)
    assert keys.get(flow).route.plan.rate_limit.policy_header == "5;w=60"


async def test_an_empty_option_turns_the_policy_off():
    with taddons.context(*alone.script(RateLimit(alone.state()), blocks=[BLOCK])) as tctx:
        tctx.options.update(mesh_rate_limit="{minute: 5}")
        tctx.options.update(mesh_rate_limit="")
        flow = await send(tctx)
    assert keys.get(flow).route.plan.rate_limit is None
