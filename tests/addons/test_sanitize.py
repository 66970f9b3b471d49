"""Sanitize: a claim header sent by the client is removed in every spelling a CGI/WSGI upstream
reads as it (case, `-` or `_`), even where underscores are allowed."""

from __future__ import annotations

import hashlib
import json

from addons import keys

KEY = "mk_test_acme_0123456789abcdef"


def config(port: int, action: str) -> str:
    return f"""
version: 1
gateway:
  listeners: [{{name: public, port: 18080}}]
  http: {{headers_with_underscores_action: {action}}}
services:
  api: {{versions: {{v1: {{endpoints: ["127.0.0.1:{port}"]}}}}}}
routes:
  - {{name: open, match: {{path: {{prefix: /}}}}, forward: {{service: api}}}}
policies:
  partner:
    api_key:
      consumers: {{acme: {{key_sha256: {hashlib.sha256(KEY.encode()).hexdigest()}}}}}
      forward_claims: {{consumer: x-consumer, tier: X_Tier}}
"""


async def test_every_spelling_of_a_claim_header_is_removed_even_when_underscores_are_allowed(
        gateway, upstream_app):
    port = await upstream_app("api")
    async with gateway(config(port, "ALLOW")) as gw:
        flow = await gw.send("/x", headers=[("x_consumer", "bigcorp"), ("X-CONSUMER", "b"),
                                            ("X_Consumer", "c"), ("x-tier", "gold"), ("x_other", "kept")])
        seen = json.loads(flow.response.content)["headers"]
        assert "x-consumer" not in seen and "x_consumer" not in seen and "x-tier" not in seen
        assert seen["x_other"] == "kept"  # ALLOW: not a claim, so forwarded
        assert [d for d in keys.get(flow).decisions if d[0] == "sanitize"] == [
            ("sanitize", f"removed {name} sent by the client") for name in ("x_consumer", "X-CONSUMER",
                                                                             "X_Consumer", "x-tier")]
