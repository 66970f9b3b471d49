"""Canary: a sticky key (cookie, header or claim) always reaches the same version; without a key the
split is random; a cookie with ttl is handed out; routes can match cookies."""

from __future__ import annotations

import collections
import json

from addons import keys


def config(v1: int, v2: int, sticky: str) -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  catalog: {{versions: {{v1: {{endpoints: ["127.0.0.1:{v1}"]}}, v2: {{endpoints: ["127.0.0.1:{v2}"]}}}}}}
routes:
  - name: beta-testers
    match: {{path: {{prefix: /c/}}, cookies: {{group: beta}}}}
    forward: {{service: catalog, version: v2}}
  - name: catalog
    match: {{path: {{prefix: /c/}}}}
    forward: {{service: catalog, weights: {{v1: 50, v2: 50}}, sticky: {sticky}}}
"""


async def names(gw, n: int, **kw) -> collections.Counter:
    seen = collections.Counter()
    for _ in range(n):
        flow = await gw.send("/c/items", **kw)
        seen[json.loads(flow.response.content)["name"]] += 1
    return seen


async def test_sticky_keys_always_reach_one_version(gateway, upstream_app):
    v1, v2 = await upstream_app("v1"), await upstream_app("v2")
    for sticky, kw_for in [
        ("{cookie: uid}", lambda u: dict(headers={"cookie": f"theme=dark; uid={u}"})),
        ("{header: x-user}", lambda u: dict(headers={"x-user": u})),
        ("{claim: sub}", lambda u: dict(principal=u, claims={"sub": u})),
    ]:
        async with gateway(config(v1, v2, sticky)) as gw:
            both = collections.Counter()
            for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
                seen = await names(gw, 8, **kw_for(user))
                assert len(seen) == 1, (sticky, user, seen)
                both.update(seen.keys())
            assert set(both) == {"v1", "v2"}, sticky  # different users land on both versions
            flow = await gw.send("/c/items", **kw_for("alice"))
            assert keys.get(flow).decisions[-2][0] == "canary"


async def test_without_a_key_the_split_is_random(gateway, upstream_app):
    v1, v2 = await upstream_app("v1"), await upstream_app("v2")
    async with gateway(config(v1, v2, "{cookie: uid}")) as gw:
        seen = await names(gw, 40)
        assert set(seen) == {"v1", "v2"}


async def test_cookie_with_ttl_is_handed_out_and_then_sticks(gateway, upstream_app):
    v1, v2 = await upstream_app("v1"), await upstream_app("v2")
    async with gateway(config(v1, v2, "{cookie: uid, ttl: 24h}")) as gw:
        first = await gw.send("/c/items")
        cookie = first.response.headers["set-cookie"]
        assert cookie.startswith("uid=") and "Max-Age=86400" in cookie and "HttpOnly" in cookie
        value = cookie.split(";")[0]
        version = json.loads(first.response.content)["name"]
        seen = await names(gw, 10, headers={"cookie": value})
        assert seen == {version: 10}
        again = await gw.send("/c/items", headers={"cookie": value})
        assert "set-cookie" not in again.response.headers


async def test_cookie_matched_route(gateway, upstream_app):
    v1, v2 = await upstream_app("v1"), await upstream_app("v2")
    async with gateway(config(v1, v2, "{cookie: uid}")) as gw:
        flow = await gw.send("/c/items", headers={"cookie": "a=1; group=beta"})
        assert flow.metadata[keys.ROUTE] == "beta-testers"
        assert json.loads(flow.response.content)["name"] == "v2"
        flow = await gw.send("/c/items", headers={"cookie": "group=alpha"})
        assert flow.metadata[keys.ROUTE] == "catalog"
