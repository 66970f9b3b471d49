"""Normalize: one checked head and one normalized path, before any decision, on the gateway and at a
sidecar's inbound; what the upstream gets is that path."""

from __future__ import annotations

import json

from addons import keys


def config(port: int, http: str = "{}") -> str:
    return f"""
version: 1
gateway:
  listeners: [{{name: public, port: 18080}}]
  http: {http}
services:
  api: {{versions: {{v1: {{endpoints: ["127.0.0.1:{port}"]}}}}}}
routes:
  - name: all
    match: {{path: {{prefix: /}}}}
    forward: {{service: api}}
    policies: [guard]
policies:
  guard:
    authz: {{deny: [{{paths: ["/admin*"]}}]}}
"""


async def test_spellings_of_a_denied_path_are_denied_and_the_upstream_gets_the_normalized_one(gateway, upstream_app):
    port = await upstream_app("api")
    async with gateway(config(port)) as gw:
        for raw in ("/%61dmin/x", "//admin/x", "/a/../admin/x", "/./admin", "/a\\..\\admin"):
            flow = await gw.send(raw)
            assert flow.response.status_code == 403, raw
            assert keys.get(flow).path.startswith("/admin"), raw
        flow = await gw.send("/%75sers//alice/./?q=%2F")
        assert flow.response.status_code == 200
        assert json.loads(flow.response.content)["path"] == "/users/alice/?q=%2F"  # the query is untouched
        st = keys.get(flow)
        assert st.path == "/users/alice/" and flow.request.path == "/users/alice/?q=%2F"
        assert st.decisions[0] == ("normalize", "path '/%75sers//alice/./' normalized to '/users/alice/'")


async def test_refusals_are_json_and_name_the_problem(gateway, upstream_app):
    port = await upstream_app("api")
    async with gateway(config(port)) as gw:
        flow = await gw.send("/a%2Fb")
        assert flow.response.status_code == 400 and flow.response.headers["connection"] == "close"
        body = json.loads(flow.response.content)
        assert body["error"] == "escaped_slash_in_path" and body["request_id"] == flow.response.headers["x-request-id"]
        flow = await gw.send("/users", headers={"x-a": "a\rb"})
        assert json.loads(flow.response.content)["error"] == "invalid_header"
        assert keys.get(flow).route is None  # refused before routing


async def test_method_query_and_host_are_checked_and_the_host_loses_its_roots_dot(gateway,
                                                                                 upstream_app):
    port = await upstream_app("api")
    async with gateway(config(port)) as gw:
        for kwargs, error in (({"method": "GET /admin"}, "invalid_method"),
                              ({"method": "G\x01ET"}, "invalid_method"),
                              ({"path": "/users?q=a HTTP/1.1\tb"}, "invalid_query"),
                              ({"path": "/users?q=\x1b[31m"}, "invalid_query"),
                              ({"path": "/users?q=a#b"}, "invalid_query"),
                              ({"host": "api.example.com,x"}, "invalid_host")):
            flow = await gw.send(**{"path": "/users", **kwargs})
            assert flow.response.status_code == 400, kwargs
            assert json.loads(flow.response.content)["error"] == error, kwargs
            assert keys.get(flow).route is None and keys.get(flow).attempts == 0, kwargs
        flow = await gw.send("/users", host="Api.Example.com.:8080")
        assert flow.response.status_code == 200
        assert flow.request.host_header == "Api.Example.com:8080"
        assert dict(json.loads(flow.response.content)["headers"])["host"] == "Api.Example.com:8080"
        assert ("normalize", "host 'Api.Example.com.:8080' without its trailing dot: "
                             "'Api.Example.com:8080'") in keys.get(flow).decisions


async def test_escaped_slash_actions_from_config(gateway, upstream_app):
    port = await upstream_app("api")
    async with gateway(config(port, "{path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT}")) as gw:
        flow = await gw.send("/users%2Falice?x=1")
        assert flow.response.status_code == 307 and flow.response.headers["location"] == "/users/alice?x=1"
    async with gateway(config(port, "{path_with_escaped_slashes_action: KEEP_UNCHANGED, merge_slashes: false}")) as gw:
        flow = await gw.send("/users//a%2fb")
        assert json.loads(flow.response.content)["path"] == "/users//a%2Fb"


async def test_header_names_with_underscores_are_dropped_by_default_or_refused(gateway, upstream_app):
    port = await upstream_app("api")
    async with gateway(config(port)) as gw:
        flow = await gw.send("/users", headers=[("x_user", "admin"), ("X_Forwarded_For", "10.0.0.1"),
                                                ("x-user", "alice")])
        seen = json.loads(flow.response.content)["headers"]
        assert "x_user" not in seen and "x_forwarded_for" not in seen and seen["x-user"] == "alice"
        assert keys.get(flow).decisions[0] == (
            "normalize", "dropped header 'x_user', 'X_Forwarded_For': an underscore in its name "
                         "(headers_with_underscores_action: DROP_HEADER)")
    async with gateway(config(port, "{headers_with_underscores_action: REJECT_REQUEST}")) as gw:
        flow = await gw.send("/users", headers={"x_user": "admin"})
        body = json.loads(flow.response.content)
        assert flow.response.status_code == 400 and body["error"] == "invalid_header"
        assert body["reason"] == ("header name 'x_user' holds an underscore "
                                  "(headers_with_underscores_action: REJECT_REQUEST)")
        assert keys.get(flow).route is None


def sidecar_config(other: int) -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  users:
    versions: {{v1: {{endpoints: ["127.0.0.1:{other}"]}}}}
    policies: [guard]
policies:
  guard:
    authz: {{deny: [{{paths: ["/admin*"]}}]}}
"""


async def test_the_sidecar_inbound_decides_on_the_normalized_path(sidecar, upstream_app):
    app = await upstream_app("the-app")
    mode = "reverse:http://127.0.0.1:9@127.0.0.1:16006"
    async with sidecar(sidecar_config(app), f"service=users,app=127.0.0.1:{app},inbound=16006") as sc:
        for raw in ("/./admin", "/x/../admin", "/%61dmin", "//admin"):
            flow = await sc.send(raw, host="users", mode=mode)
            assert flow.response.status_code == 403, raw
        flow = await sc.send("/x/../users", host="users", mode=mode)
        assert json.loads(flow.response.content)["path"] == "/users"
