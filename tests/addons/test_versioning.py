"""Versioning: each API version reaches its own cluster, deprecated versions' responses carry
Deprecation, Sunset and Link, unknown versions are a JSON 400 listing the supported ones."""

from __future__ import annotations

import json

from addons import keys


def config(v1: int, v2: int) -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  catalog: {{versions: {{v1: {{endpoints: ["127.0.0.1:{v1}"]}}, v2: {{endpoints: ["127.0.0.1:{v2}"]}}}}}}
routes:
  - name: catalog
    match: {{path: {{prefix: /catalog/}}}}
    forward: {{service: catalog, rewrite: {{prefix: /}}}}
    policies: [versions]
policies:
  versions:
    versioning:
      default: v1
      versions:
        v1: {{deprecated: 2025-01-01, sunset: 2027-06-30, successor: v2}}
        v2: {{}}
"""


async def test_each_version_reaches_its_cluster(gateway, upstream_app):
    v1, v2 = await upstream_app("v1"), await upstream_app("v2")
    async with gateway(config(v1, v2)) as gw:
        for path, headers, name in [
            ("/catalog/v2/items?x=1", {}, "v2"),
            ("/catalog/items", {"api-version": "v2"}, "v2"),
            ("/catalog/items", {"accept": "application/vnd.mitmesh.v2+json"}, "v2"),
            ("/catalog/items?api-version=v2", {}, "v2"),
            ("/catalog/items", {}, "v1"),
            ("/catalog/v1/items", {}, "v1"),
        ]:
            flow = await gw.send(path, headers=headers)
            body = json.loads(flow.response.content)
            assert body["name"] == name, (path, headers)
            assert body["path"].startswith("/items"), body["path"]  # version segment stripped, then rewrite
            assert flow.metadata[keys.API_VERSION] == name
            assert flow.metadata[keys.CLUSTER] == f"catalog/{name}"


async def test_deprecated_version_headers(gateway, upstream_app):
    v1, v2 = await upstream_app("v1"), await upstream_app("v2")
    async with gateway(config(v1, v2)) as gw:
        flow = await gw.send("/catalog/v1/items/3?page=2")
        h = flow.response.headers
        assert h["Deprecation"] == "@1735689600"
        assert h["Sunset"] == "Wed, 30 Jun 2027 00:00:00 GMT"
        assert h["Link"] == '</catalog/v2/items/3?page=2>; rel="successor-version"'
        flow = await gw.send("/catalog/v2/items/3")
        assert "Deprecation" not in flow.response.headers and "Link" not in flow.response.headers


async def test_unknown_version_is_json_400_listing_the_supported(gateway, upstream_app):
    v1, v2 = await upstream_app("v1"), await upstream_app("v2")
    async with gateway(config(v1, v2)) as gw:
        for path, headers, source in [("/catalog/v9/items", {}, "path"),
                                      ("/catalog/items", {"api-version": "v3"}, "header"),
                                      ("/catalog/items", {"accept": "application/vnd.mitmesh.v7+json"}, "media type")]:
            flow = await gw.send(path, headers=headers)
            assert flow.response.status_code == 400
            body = json.loads(flow.response.content)
            assert body["error"] == "unsupported_api_version" and body["supported"] == ["v1", "v2"]
            assert f"(from the {source}) is not supported; supported: v1, v2" in body["reason"]
            assert body["request_id"] == flow.response.headers["x-request-id"]
