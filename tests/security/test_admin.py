"""The admin port: state changes need the admin token, an admin listener answers only loopback
Host names (and its own address), no request a proxy forwarded to it, and no credential shows in /flows, the access log, the decision log or a
recording (unless `--include-secrets` asks). Against a real gateway and a real sidecar."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import stat
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from discovery.mdns import MdnsSource
from discovery.registry import Instance, Registry
from mesh.runtime import procs
from tools.testbed import Mesh, get, sidecar_config, wait_until

pytestmark = pytest.mark.e2e

MITMESH = [sys.executable, "-m", "mesh.cli"]
BASIC = "Basic " + base64.b64encode(b"demo-app:demo-secret").decode()
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
# every credential below, as the echo app reflects it into its answers too
SECRETS = ["ZGVtby1hcHA6ZGVtby1zZWNyZXQ", "SESSIONSECRET", "mk_live_0123456789abcdefXYZ", "QSECRET1",
           "QSECRET2", "QSECRET3", "QSECRET4", "QSECRET5", "FORMSECRET", "PWSECRET", "JSONSECRET", JWT]
QUERY = "access_token=QSECRET1&apikey=QSECRET2&api_key=QSECRET3&token=QSECRET4&key=QSECRET5&page=2"


@pytest.fixture(scope="module")
def admin_mesh(tmp_path_factory):
    """A gateway and one echo instance behind its sidecar, access log to a file."""
    tmp = tmp_path_factory.mktemp("admin")
    m = Mesh(tmp, {})
    config = sidecar_config(f"{m.net}.1")
    config["services"]["echo"] = {"versions": {"v1": {}}}
    config["routes"].append({"name": "echo", "match": {"path": {"prefix": "/echo/"}},
                             "forward": {"service": "echo", "rewrite": {"prefix": "/"}}})
    config["observability"] = {"access_log": {"path": "logs/access.log"}}
    m.write(config)
    try:
        m.echo = m.start_instances({"service": "echo", "app": "echo"})[0]
        m.start_gateway()
        m.wait_instances(1)
        yield m
    finally:
        m.stop()


def admin_of(m, which: str) -> str:
    return m.admin if which == "gateway" else m.echo.admin


def call(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, dict]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null"), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def send_secrets(m) -> None:
    """Requests carrying credentials every way a client sends them."""
    headers = {"authorization": BASIC, "cookie": "session=SESSIONSECRET; theme=dark",
               "x-api-key": "mk_live_0123456789abcdefXYZ"}
    assert get(f"{m.url}/echo/items?{QUERY}", headers=headers)[0] == 200
    assert get(m.url + "/echo/login", data=b"client_secret=FORMSECRET&password=PWSECRET&user=ann",
               headers={"content-type": "application/x-www-form-urlencoded"})[0] == 200
    assert get(m.url + "/echo/token", data=b'{"access_token": "JSONSECRET", "n": 1}',
               headers={"content-type": "application/json"})[0] == 200
    assert get(f"{m.url}/echo/magic/{JWT}")[0] == 200  # a token in the path reaches the decision log


def leaked(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


@pytest.mark.parametrize("which", ["gateway", "sidecar"])
def test_record_without_token(admin_mesh, which):
    status, body, headers = call(admin_of(admin_mesh, which) + "/record?seconds=5", "POST")
    assert (status, body["error"]) == (401, "unauthorized")
    assert body["reason"] == "POST changes state: send the admin token: Authorization: Bearer <token>"
    assert headers["www-authenticate"] == 'Bearer realm="mitmesh-admin"'
    assert call(admin_of(admin_mesh, which) + "/record")[1]["recording"] is False


@pytest.mark.parametrize("authorization", ["Bearer not-the-token", "Basic {token}", "Bearer {token}x",
                                           "Token {token}"],
                         ids=["record-with-a-guessed-token", "record-with-the-token-as-basic-credentials",
                              "record-with-a-longer-token", "record-with-another-scheme"])
def test_record_with_wrong_token(admin_mesh, authorization):
    value = authorization.format(token=admin_mesh.admin_token())
    status, body, _ = call(admin_mesh.admin + "/record?seconds=5", "POST", {"authorization": value})
    assert status == 401 and body["error"] == "unauthorized"
    assert call(admin_mesh.admin + "/record")[1]["recording"] is False


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_state_change_through_another_method(admin_mesh, method):
    status, body, _ = call(admin_mesh.admin + "/record?seconds=5", method)
    assert status == 401 and body["reason"].startswith(f"{method} changes state")


def test_post_to_a_read_only_endpoint(admin_mesh):
    for path in ("/status", "/flows", "/metrics"):
        assert call(admin_mesh.admin + path, "POST")[0] == 401


@pytest.mark.parametrize("which", ["gateway", "sidecar"])
def test_dns_rebinding_host_header(admin_mesh, which):
    """A web page whose own name resolves to 127.0.0.1 reads nothing: the Host is not loopback."""
    url = admin_of(admin_mesh, which)
    port = urllib.parse.urlsplit(url).port
    status, body, _ = call(url + "/flows", headers={"host": f"attacker.example:{port}"})
    assert (status, body["error"]) == (403, "host_not_allowed")
    assert call(url + "/flows", headers={"host": f"localhost:{port}"})[0] == 200


@pytest.mark.parametrize("which", ["gateway", "sidecar"])
def test_admin_reached_through_the_gateway_by_a_rogue_announcement(admin_mesh, which):
    """A process with no certificate and no token announces over mDNS an instance of `catalog` at a
    proxy's admin listener; the gateway then forwards `/catalog/status` there from loopback, with
    `Host: localhost`. The admin answers no request a proxy forwarded; and the gateway does not
    even send there when the address is its own admin listener (mesh/core/own.py)."""
    m = admin_mesh
    admin = urllib.parse.urlsplit(admin_of(m, which))
    rogue = f"{m.net}.77"  # the announcer's own address: not the one it names

    async def attack() -> list[tuple[int, dict]]:
        src = MdnsSource(m.config["mesh"]["id"], [rogue])
        await src.start(Registry())
        try:
            await src.announce(Instance(name=f"rogue-{which}", service="catalog", version="v1",
                                        address=admin.hostname, port=admin.port, weight=10000,
                                        source="mdns"), f"rogue-{which}")
            await asyncio.to_thread(wait_until, lambda: any(
                i["address"] == f"{admin.hostname}:{admin.port}" for i in m.registry()),
                timeout=15)
            return [await asyncio.to_thread(get, m.url + path, {"host": host})
                    for path, host in (("/catalog/status", "localhost"),
                                       ("/catalog/flows", "127.0.0.1"))]
        finally:
            await src.stop()

    for status, body, _ in asyncio.run(attack()):
        if which == "gateway":  # its own admin listener is no endpoint: nothing is forwarded
            assert (status, body["error"]) == (503, "no_healthy_upstream"), (status, str(body)[:300])
            continue
        assert (status, body["error"]) == (403, "forwarded_request"), (status, str(body)[:300])
        assert body["reason"].endswith("(x-forwarded-for)")
    # and the listener still answers whoever calls it directly, as the CLI does
    assert call(admin_of(m, which) + "/status")[0] == 200


def test_record_when_the_token_file_is_gone(admin_mesh):
    token = admin_mesh.tmp / "certs" / "admin.token"
    kept = token.read_text().strip()
    token.unlink()
    try:
        status, body, _ = call(admin_mesh.admin + "/record?seconds=5", "POST", {"authorization": f"Bearer {kept}"})
        assert (status, body["reason"]) == (401, "POST changes state: no admin token is set up; "
                                                 "`mitmesh certs init` makes one")
    finally:
        token.write_text(kept + "\n")
        os.chmod(token, 0o600)


def test_admin_token_readable_by_others(admin_mesh, tmp_path):
    assert stat.S_IMODE((admin_mesh.tmp / "certs" / "admin.token").stat().st_mode) == 0o600
    out = subprocess.run(MITMESH + ["certs", "init", "--dir", str(tmp_path / "certs")], capture_output=True,
                         text=True, cwd=tmp_path)
    assert f"wrote {tmp_path / 'certs' / 'admin.token'}" in out.stdout
    assert stat.S_IMODE((tmp_path / "certs" / "admin.token").stat().st_mode) == 0o600


@pytest.mark.parametrize("which", ["gateway", "sidecar"])
def test_credentials_in_flows(admin_mesh, which):
    send_secrets(admin_mesh)
    flows = call(admin_of(admin_mesh, which) + "/flows")[1]["flows"]
    text = json.dumps(flows)
    assert "access_token=[redacted]&apikey=[redacted]&api_key=[redacted]&token=[redacted]&key=[redacted]&page=2" in text
    assert leaked(text) == []


def test_credentials_in_the_access_log(admin_mesh):
    send_secrets(admin_mesh)
    log = admin_mesh.tmp / "logs" / "access.log"
    wait_until(lambda: log.exists() and "/echo/magic/" in log.read_text(), timeout=5)
    time.sleep(0.5)  # every proxy's buffered lines are out
    text = log.read_text()
    assert "/echo/items?access_token=[redacted]" in text
    assert leaked(text) == []


def test_jwt_in_the_path_in_the_decision_log(admin_mesh):
    assert get(f"{admin_mesh.url}/echo/magic/{JWT}")[0] == 200
    flows = call(admin_mesh.admin + "/flows")[1]["flows"]
    decisions = [what for f in flows if f["path"].startswith("/echo/magic/") for _, what in f["decisions"]]
    assert any("route echo matched GET /echo/magic/[redacted]" in d for d in decisions), decisions
    assert leaked(json.dumps(decisions)) == []


def record(m, out, *extra: str) -> str:
    """`mitmesh record` of the gateway and the echo sidecar while credentials go through."""
    rec = subprocess.Popen(MITMESH + ["record", "--config", str(m.path), "--admin", m.admin, "--admin",
                                      m.echo.admin, "--seconds", "8", "-o", str(out), *extra],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # the recorder is a new process: under load its start alone can take seconds
        wait_until(lambda: call(m.admin + "/record")[1]["recording"] and call(m.echo.admin + "/record")[1]["recording"],
                   timeout=30)
        time.sleep(0.3)
        send_secrets(m)
        output, _ = rec.communicate(timeout=20)
    finally:
        if rec.poll() is None:
            rec.kill()
    assert rec.returncode == 0 and "wrote " in output, output
    return output


def test_recording_captures_credentials(admin_mesh, tmp_path):
    out = tmp_path / "flows.mitm"
    assert "wrote 8 flows" in record(admin_mesh, out)  # 4 requests, each at the gateway and the sidecar
    data = out.read_bytes().decode("latin-1")
    assert "[redacted]" in data and "theme=dark" not in data  # the whole Cookie header is masked
    assert leaked(data) == []
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    kept = tmp_path / "with-secrets.mitm"
    output = record(admin_mesh, kept, "--include-secrets")
    assert "credentials are saved in clear" in output
    assert sorted(leaked(kept.read_bytes().decode("latin-1"))) == sorted(SECRETS)


def test_recording_readable_by_others(admin_mesh, tmp_path):
    token = admin_mesh.admin_token()
    status, control, _ = call(admin_mesh.admin + "/record?seconds=1", "POST", {"authorization": f"Bearer {token}"})
    assert status == 200
    send_secrets(admin_mesh)
    files = wait_until(lambda: [f for f in os.listdir(control["dir"]) if f.endswith(".mitm")], timeout=5)
    assert stat.S_IMODE(os.stat(control["dir"]).st_mode) == 0o700
    for name in files:
        assert stat.S_IMODE(os.stat(os.path.join(control["dir"], name)).st_mode) == 0o600
    stale = tmp_path / "old.mitm"  # an existing output file loses its group and world bits
    stale.write_bytes(b"")
    os.chmod(stale, 0o644)
    record(admin_mesh, stale)
    assert stat.S_IMODE(stale.stat().st_mode) == 0o600
