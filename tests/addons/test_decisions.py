"""Decisions: the decision log lands in flow metadata and in the comment mitmweb shows."""

from __future__ import annotations

from addons import keys
from tests.conftest import BASE


async def test_decisions_in_metadata_and_comment(gateway):
    async with gateway(BASE) as gw:
        flow = await gw.send("/nowhere")
        assert flow.metadata[keys.DECISIONS] == [["router", "no route for GET /nowhere on host example.com"]]
        assert flow.comment == "router: no route for GET /nowhere on host example.com"


def config(up: int, copy: int) -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  cat: {{versions: {{v1: {{endpoints: ["127.0.0.1:{up}"]}}, v2: {{endpoints: ["127.0.0.1:{copy}"]}}}}}}
routes:
  - {{name: plain, match: {{path: {{prefix: /catalog/}}}}, forward: {{service: cat, version: v1, rewrite: {{prefix: /}}}}}}
  - {{name: limited, match: {{path: {{prefix: /limited}}}}, forward: {{service: cat, version: v1}}, policies: [one]}}
  - {{name: keyed, match: {{path: {{prefix: /keyed}}}}, forward: {{service: cat, version: v1}}, policies: [keys]}}
  - {{name: flaky, match: {{path: {{prefix: /flaky}}}}, forward: {{service: cat, version: v1}}, policies: [flaky]}}
  - {{name: copied, match: {{path: {{prefix: /copied}}}}, forward: {{service: cat, version: v1}}, policies: [copy]}}
policies:
  one: {{rate_limit: {{minute: 1, key: ip}}}}
  keys: {{api_key: {{consumers: {{acme: {{key_sha256: '{"0" * 64}'}}}}}}}}
  flaky:
    retries: {{attempts: 2, retry_on: [5xx], backoff: {{base: 1ms, max: 1ms}}}}
    fault: {{abort: {{status: 503, every_nth: 1}}, header_triggered: true}}
  copy: {{mirror: {{service: cat, version: v2}}}}
"""


async def test_a_forwarded_flow_shows_the_upstream_url_after_rewrites(gateway, upstream_app):
    up = await upstream_app("up")
    async with gateway(config(up, up)) as gw:
        flow = await gw.send("/catalog/items?q=1", listener=18080)
    req = flow.request
    assert (req.scheme, req.host, req.port, req.path) == ("http", "127.0.0.1", up, "/items?q=1")
    assert req.host_header == "example.com"  # what the upstream got, as the client sent it
    assert keys.get(flow).downstream_path == "/catalog/items?q=1"
    assert not flow.marked and keys.OUTCOMES not in flow.metadata


async def test_answers_of_the_proxy_show_the_address_the_client_called(gateway, upstream_app):
    up = await upstream_app("up")
    async with gateway(config(up, up)) as gw:
        missing = await gw.send("/nowhere", listener=18080)
        await gw.send("/limited", listener=18080)
        limited = await gw.send("/limited", listener=18080)
        denied = await gw.send("/keyed", listener=18080)
    for flow in (missing, limited, denied):
        assert (flow.request.host, flow.request.port) == flow.client_conn.sockname != ("127.0.0.1", 9)
    assert [f.response.status_code for f in (missing, limited, denied)] == [404, 429, 401]


async def test_outcomes_mark_the_flow_and_tag_its_comment_one_line_per_decision(gateway, upstream_app):
    up, copy = await upstream_app("up"), await upstream_app("copy")
    async with gateway(config(up, copy)) as gw:
        await gw.send("/limited")
        limited = await gw.send("/limited")
        denied = await gw.send("/keyed", headers={"x-api-key": "wrong"})
        faulted = await gw.send("/flaky")  # every attempt aborted: retried, then the last 503
        copied = await gw.send("/copied")
    expected = {limited: ("limited", ":hourglass_flowing_sand:"), denied: ("denied", ":no_entry:"),
                copied: ("mirrored", ":busts_in_silhouette:")}
    for flow, (outcome, marker) in expected.items():
        assert flow.metadata[keys.OUTCOMES] == [outcome] and flow.marked == marker
        assert flow.comment.split("\n") == [f"#{outcome}"] + [f"{w}: {d}" for w, d in keys.get(flow).decisions]
    assert faulted.response.status_code == 503
    assert faulted.metadata[keys.OUTCOMES] == ["faulted", "retried"] and faulted.marked == ":boom:"
    assert faulted.comment.startswith("#faulted #retried\nrouter: route flaky matched GET /flaky")
