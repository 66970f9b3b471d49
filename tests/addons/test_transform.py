"""Transform in the chain: request headers, query, path and JSON body changed before Forward, with
templates from headers, query, path captures and claims; responses changed before they leave;
Content-Length right; non-JSON and large bodies untouched."""

from __future__ import annotations

import json
import logging

from aiohttp import web


def config(port: int, transform: str, path_match: str = "{prefix: /api/}") -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  api: {{versions: {{v1: {{endpoints: ["127.0.0.1:{port}"]}}}}}}
routes:
  - name: api
    match: {{path: {path_match}}}
    forward: {{service: api}}
    policies: [t]
policies:
  t:
    transform:
{transform}
"""


REQUEST = """
      request:
        remove: {headers: [x-internal], query: [debug], body: [password]}
        rename: {headers: {x-old: x-new}, query: {q: search}, body: {userName: user_name}}
        replace: {headers: {x-tier: "tier-$(headers.x-tier)"}, query: {page: "p$(query.page)"}, body: {role: user}}
        set: {headers: {x-user: "$(claims.sub|anonymous)"}, query: {source: gateway}, body: {meta.by: "$(claims.sub)"}}
        add: {headers: {x-id: "$(path.id)", x-tier: ignored}, query: {lang: en}, body: {roles: "$(claims.roles)"}}
        append: {headers: {x-trace: gw}, query: {tag: b}, body: {tags: gw}}
        path: {set: "/users/$(path.id)/profile"}
"""


async def test_request_operations_in_kong_order(gateway, upstream_app):
    port = await upstream_app("api")
    async with gateway(config(port, REQUEST, "{regex: '/api/u/(?P<id>[0-9]+)'}")) as gw:
        body = json.dumps({"userName": "al", "password": "pw", "role": "admin", "tags": ["web"]}).encode()
        flow = await gw.send("/api/u/42?debug=1&q=shoes&page=2&tag=a", method="POST", body=body,
                             headers={"x-internal": "secret", "x-old": "o", "x-tier": "gold",
                                      "x-trace": "client", "content-type": "application/json"},
                             principal="alice", claims={"sub": "alice", "roles": ["admin", "dev"]})
        seen = json.loads(flow.response.content)
        h = seen["headers"]
        assert "x-internal" not in h and "x-old" not in h and h["x-new"] == "o"
        assert h["x-tier"] == "tier-gold" and h["x-user"] == "alice" and h["x-id"] == "42"
        path, _, query = seen["path"].partition("?")
        assert path == "/users/42/profile"
        assert sorted(query.split("&")) == sorted(["page=p2", "tag=a", "search=shoes", "source=gateway",
                                                   "lang=en", "tag=b"])
        assert json.loads(seen["body"]) == {"user_name": "al", "role": "user", "tags": ["web", "gw"],
                                            "meta": {"by": "alice"}, "roles": ["admin", "dev"]}


async def test_templates_without_values_skip_and_defaults_fill(gateway, upstream_app):
    port = await upstream_app("api")
    async with gateway(config(port, REQUEST, "{regex: '/api/u/(?P<id>[0-9]+)'}")) as gw:
        flow = await gw.send("/api/u/7", method="POST", body=b'{"a": 1}',
                             headers={"content-type": "application/json"})  # no claims at all
        seen = json.loads(flow.response.content)
        assert seen["headers"]["x-user"] == "anonymous"
        assert json.loads(seen["body"]) == {"a": 1, "tags": ["gw"]}  # meta.by and roles need claims


async def test_path_strip_prefix_and_regex(gateway, upstream_app):
    port = await upstream_app("api")
    for spec, sent, expected in [
        ("{strip_prefix: /api}", "/api/items/1?x=1", "/items/1?x=1"),
        ("{regex: '^/api/items/([0-9]+)$', substitution: '/item/\\1/detail'}", "/api/items/9", "/item/9/detail"),
    ]:
        async with gateway(config(port, f"      request:\n        path: {spec}\n")) as gw:
            flow = await gw.send(sent)
            assert json.loads(flow.response.content)["path"] == expected


async def test_non_json_and_large_bodies_pass_untouched(gateway, upstream_app):
    port = await upstream_app("api")
    spec = "      request: {set: {body: {x: 1}}}\n      max_body: 64"
    async with gateway(config(port, spec)) as gw:
        flow = await gw.send("/api/a", method="POST", body=b"x=1&y=2",
                             headers={"content-type": "application/x-www-form-urlencoded"})
        assert json.loads(flow.response.content)["body"] == "x=1&y=2"
        big = json.dumps({"pad": "p" * 100}).encode()
        flow = await gw.send("/api/a", method="POST", body=big, headers={"content-type": "application/json"})
        assert json.loads(flow.response.content)["body"] == big.decode()
        flow = await gw.send("/api/a", method="POST", body=b'{"y": 2}', headers={"content-type": "application/json"})
        assert json.loads(json.loads(flow.response.content)["body"]) == {"y": 2, "x": 1}


async def test_a_json_body_nested_past_the_parser_passes_untouched(gateway, upstream_app, caplog):
    """A body nested deeper than Python's json parses (RecursionError, which is
    no ValueError, escaped the transform stage) is not JSON to transform: it goes as it came."""
    port = await upstream_app("api")
    async with gateway(config(port, "      request: {set: {body: {x: 1}}}")) as gw:
        deep = b'{"a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"  # 10 KB, under max_body
        flow = await gw.send("/api/a", method="POST", body=deep,
                             headers={"content-type": "application/json"})
        assert flow.response.status_code == 200, flow.response.content
        assert json.loads(flow.response.content)["body"] == deep.decode()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


RESPONSE = """
      response:
        remove: {headers: [server, x-powered-by], body: [internal]}
        rename: {headers: {x-old: x-new}, body: {price: price_eur}}
        replace: {headers: {x-tier: "tier-$(headers.x-tier)"}, body: {status: ok}}
        set: {headers: {x-served-to: "$(claims.sub|anonymous)"}, body: {meta.api: v1}}
        add: {headers: {cache-control: no-store}, body: {currency: EUR, status: never}}
        append: {headers: {via: mitmesh}, body: {tags: gw}}
"""


async def test_response_operations_and_content_length(gateway, upstream_app):
    async def item(request):
        return web.json_response({"price": 4.5, "internal": "x", "status": "fine", "tags": "a"},
                                 headers={"x-powered-by": "aiohttp", "x-old": "o", "x-tier": "gold",
                                          "via": "1.1 upstream"})

    async def text(request):
        return web.Response(text="plain", headers={"x-old": "o"})

    port = await upstream_app("api", handler=item)
    async with gateway(config(port, RESPONSE)) as gw:
        flow = await gw.send("/api/item", headers={"x-tier": "silver"}, principal="bob", claims={"sub": "bob"})
        r = flow.response
        assert "server" not in r.headers and "x-powered-by" not in r.headers
        assert r.headers["x-new"] == "o" and "x-old" not in r.headers
        assert r.headers["x-tier"] == "tier-silver"  # templates read the request
        assert r.headers["x-served-to"] == "bob" and r.headers["cache-control"] == "no-store"
        assert r.headers.get_all("via") == ["1.1 upstream", "mitmesh"]
        assert json.loads(r.content) == {"price_eur": 4.5, "status": "ok", "tags": ["a", "gw"],
                                         "meta": {"api": "v1"}, "currency": "EUR"}
        assert r.headers["content-length"] == str(len(r.raw_content))
    port = await upstream_app("text", handler=text)
    async with gateway(config(port, RESPONSE)) as gw:
        r = (await gw.send("/api/x")).response
        assert r.content == b"plain" and r.headers["x-new"] == "o"  # headers change, the body does not


async def test_gateway_answers_are_not_transformed(gateway):
    from mesh.runtime import procs

    spec = "      response: {set: {headers: {x-t: 'yes'}}}"
    async with gateway(config(procs.free_port(), spec).replace(
            "policies: [t]", "policies: [t]\n  - {name: d, match: {path: {prefix: /d}}, direct: {status: 204}}")) as gw:
        r = (await gw.send("/api/x")).response
        assert r.status_code == 503 and r.headers["x-t"] == "yes"  # the request went upstream (and failed)
        assert "x-t" not in (await gw.send("/nowhere")).response.headers
