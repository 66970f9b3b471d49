"""Access log: one JSON line per request with ids, route and decisions; secrets never written."""

from __future__ import annotations

import json

from addons.accesslog import AccessLog
from tests.conftest import BASE

CONFIG = BASE + """
  - {name: health, match: {path: {exact: /healthz}}, direct: {status: 200}}
observability:
  access_log: {path: logs/access.log}
"""

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_one_json_line_per_request_with_secrets_redacted(gateway, tmp_path):
    async with gateway(CONFIG) as gw:
        log = next(a for a in gw.addons if isinstance(a, AccessLog))
        await gw.send("/healthz?api_key=s3cret&x=1", headers={"traceparent": TRACEPARENT,
                                                             "authorization": "Bearer abc.def.ghi"})
        await gw.send("/missing")
        log._flush()
    lines = (tmp_path / "logs" / "access.log").read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["route"] == "health" and first["status"] == 200 and first["method"] == "GET"
    assert first["path"] == "/healthz?api_key=[redacted]&x=1"
    assert first["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert len(first["request_id"]) == 36 and first["duration_ms"] >= 0
    assert first["decisions"] == ["router: route health matched GET /healthz on host example.com"]
    assert "s3cret" not in lines[0] and "abc.def.ghi" not in lines[0]
    assert second["route"] is None and second["status"] == 404
    assert {(e["proxy"], e["instance"]) for e in (first, second)} == {("gateway", "gateway")}


async def test_a_sidecars_lines_name_its_instance_and_service(sidecar, upstream_app, tmp_path):
    app = await upstream_app("the-app")
    config = ("version: 1\ngateway: {listeners: [{name: public, port: 18080}]}\n"
              "observability: {access_log: {path: logs/access.log}}\n")
    async with sidecar(config, f"service=users,app=127.0.0.1:{app},instance=users-7,inbound=16006") as sc:
        await sc.send("/users/alice", host="users", mode="reverse:http://127.0.0.1:9@127.0.0.1:16006")
        next(a for a in sc.addons if isinstance(a, AccessLog))._flush()
    line = json.loads((tmp_path / "logs" / "access.log").read_text())
    assert (line["proxy"], line["instance"], line["service"], line["cluster"]) == ("sidecar", "users-7", "users", "local")


async def test_access_log_off(gateway, tmp_path):
    async with gateway(CONFIG.replace("{path: logs/access.log}", "{enabled: false, path: logs/a.log}")) as gw:
        await gw.send("/healthz")
        next(a for a in gw.addons if isinstance(a, AccessLog))._flush()
    assert not (tmp_path / "logs" / "a.log").exists()


KEY = "mk_acme_7Hq2Lw9xRt4Vb8Nz3Kp6"
KEYS_CONFIG = """
version: 1
gateway: {listeners: [{name: public, port: 18080}], admin: {port: 19901}}
services:
  users: {versions: {v1: {endpoints: ["127.0.0.1:PORT"]}}}
routes:
  - {name: keys, match: {path: {prefix: /keys/}}, forward: {service: users}, policies: [partner]}
""" + f"""
policies:
  partner: {{api_key: {{consumers: {{acme: {{key_sha256: {__import__("hashlib").sha256(KEY.encode()).hexdigest()}}}}}}}}}
observability:
  access_log: {{path: logs/access.log}}
"""


async def test_an_api_key_requests_logs_carry_no_key_and_are_not_deep_scanned(gateway, upstream_app, tmp_path,
                                                                               monkeypatch):
    """The decision `authn: api_key: acme` names a credential but holds none: the access log line
    and the decision log are written as they are, not sent through redact.value() (the deep
    scan); a key in the query still is, and is masked."""
    from mesh.security import redact

    scanned = []
    deep = redact.value
    monkeypatch.setattr(redact, "value", lambda obj: scanned.append(obj) or deep(obj))
    users = await upstream_app("users")
    async with gateway(KEYS_CONFIG.replace("PORT", str(users))) as gw:
        log = next(a for a in gw.addons if isinstance(a, AccessLog))
        flow = await gw.send("/keys/a", headers={"x-api-key": KEY})
        assert flow.response.status_code == 200 and "authn: api_key: acme" in flow.comment
        assert scanned == []  # neither the access log entry nor the decision log
        assert KEY not in flow.comment and KEY not in json.dumps(flow.metadata.get("mitmesh.decisions"))
        flow = await gw.send(f"/keys/b?api_key={KEY}", headers={"x-api-key": KEY})
        assert flow.response.status_code == 200 and scanned  # the path holds the key: masked
        log._flush()
    lines = (tmp_path / "logs" / "access.log").read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["principal"] == "acme" and "authn: api_key: acme" in first["decisions"]
    assert second["path"] == "/keys/b?api_key=[redacted]"
    assert KEY not in "".join(lines)
