"""Each mitmesh addon alone in plain mitmdump (`mitmdump -s addons/X.py --set mesh_…`), in reverse
mode in front of a real demo service: its option stands in for mesh.yaml."""

from __future__ import annotations

import contextlib
import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tools import launcher
from mesh.runtime import procs
from mesh.policies.httpclient import basic_auth
from tools.otlp import Receiver

from .conftest import get as _get
from .conftest import wait_until

ADDONS = launcher.ROOT / "addons"


def get(url: str, **kw):
    """A request with room for a loaded machine: a fresh mitmdump's first answer can take seconds."""
    return _get(url, timeout=15, **kw)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The echo service (shows what the upstream got) and the demo authorization server."""
    tmp = tmp_path_factory.mktemp("alone")
    children = []
    try:
        urls = {}
        for app in ("echo", "auth"):
            port = procs.free_port()
            child = procs.spawn(app, procs.python("-m", f"services.{app}", "--port", str(port)), log_dir=tmp)
            children.append(child)
            procs.wait_ports(child, [("127.0.0.1", port)])
            urls[app] = f"http://127.0.0.1:{port}"
        yield {"tmp": tmp, **urls}
    finally:
        procs.stop_all(children)


@contextlib.contextmanager
def mitmdump(demo, tmp: Path, *scripts: str, **options: str):
    """`mitmdump --mode reverse:<echo> -s addons/<script>.py --set k=v` on a free port; yields its
    URL and process, and stops it whatever happens."""
    port = procs.free_port()
    argv = [procs.tool("mitmdump"), "--mode", f"reverse:{demo['echo']}", "--listen-host", "127.0.0.1",
            "--listen-port", str(port), "--set", f"confdir={demo['tmp'] / 'mitmproxy'}"]
    for script in scripts:
        argv += ["-s", str(ADDONS / f"{script}.py")]
    for name, value in options.items():
        argv += ["--set", f"{name}={value}"]
    child = procs.spawn("mitmdump", argv, log_dir=tmp, cwd=str(tmp))
    try:
        procs.wait_ports(child, [("127.0.0.1", port)])
        # listening is not ready: mitmdump loads `-s` scripts after it binds (a request meanwhile
        # waits for the load, seconds on a loaded machine); each script says when it is in place
        for script in scripts:
            procs.wait_log(child, f"mitmesh-alone-{script} ready")
        yield f"http://127.0.0.1:{port}", child
    finally:
        child.stop()


def upstream_headers(body: dict) -> dict:
    return dict(body["headers"])


def test_rate_limit(demo, tmp_path):
    with mitmdump(demo, tmp_path, "ratelimit", mesh_rate_limit="{minute: 2, key: ip}") as (url, _):
        first, second, third = (get(url + "/items") for _ in range(3))
    assert [first[0], second[0], third[0]] == [200, 200, 429]
    assert first[2]["ratelimit-remaining"] == "1" and first[2]["ratelimit-policy"] == "2;w=60"
    assert third[1]["error"] == "rate_limited" and int(third[2]["retry-after"]) >= 1
    assert third[1]["request_id"] == third[2]["x-request-id"]


def test_bad_option_is_refused_with_the_schemas_message(demo, tmp_path):
    port = procs.free_port()
    child = procs.spawn("mitmdump", [procs.tool("mitmdump"), "--mode", f"reverse:{demo['echo']}",
                                     "--listen-host", "127.0.0.1", "--listen-port", str(port),
                                     "-s", str(ADDONS / "ratelimit.py"), "--set", "mesh_rate_limit={minute: 0}"],
                        log_dir=tmp_path)
    try:
        assert child.proc.wait(20) != 0
    finally:
        child.stop()
    assert "mesh_rate_limit:1: minute: expected a value >= 1 (got 0)" in child.log.read_text()


def test_jwt(demo, tmp_path):
    issuer = demo["auth"]
    jwt = f"{{issuer: '{issuer}', jwks_uri: '{issuer}/.well-known/jwks.json', audiences: [mitmesh], " \
          "forward_claims: {sub: x-user}}"
    req = urllib.request.Request(issuer + "/oauth/token", data=b"grant_type=client_credentials",
                                 headers={"authorization": basic_auth("demo-app", "demo-secret")})
    with urllib.request.urlopen(req, timeout=5) as r:
        token = json.load(r)["access_token"]
    with mitmdump(demo, tmp_path, "authn", mesh_jwt=jwt) as (url, _):
        missing = get(url + "/items")
        bad = get(url + "/items", headers={"authorization": "Bearer not-a-jwt"})
        good = get(url + "/items", headers={"authorization": f"Bearer {token}"})
    assert missing[0] == 401 and missing[1]["error"] == "missing_credentials"
    assert missing[2]["www-authenticate"].startswith('Bearer realm="mitmdump"')
    assert bad[0] == 401 and bad[1]["error"] == "invalid_token"
    assert good[0] == 200
    seen = upstream_headers(good[1])
    assert seen["x-user"] == "demo-app" and "authorization" not in seen  # the token stays at the proxy


def test_api_key(demo, tmp_path):
    digest = hashlib.sha256(b"k-acme-1").hexdigest()
    with mitmdump(demo, tmp_path, "authn", mesh_api_key=f"{{consumers: {{acme: {{key_sha256: {digest}}}}}}}") \
            as (url, _):
        wrong = get(url + "/items", headers={"x-api-key": "k-other"})
        right = get(url + "/items", headers={"x-api-key": "k-acme-1"})
    assert wrong[0] == 401 and wrong[1]["error"] == "invalid_api_key"
    assert right[0] == 200 and "x-api-key" not in upstream_headers(right[1])


def test_cors(demo, tmp_path):
    def preflight(url, origin):
        req = urllib.request.Request(url + "/items", method="OPTIONS", headers={
            "origin": origin, "access-control-request-method": "GET"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}

    with mitmdump(demo, tmp_path, "cors", mesh_cors="{allow_origins: ['https://app.example']}") as (url, _):
        allowed = preflight(url, "https://app.example")
        refused = preflight(url, "https://evil.example")
        simple = get(url + "/items", headers={"origin": "https://app.example"})
    assert allowed[0] == 204 and allowed[1]["access-control-allow-origin"] == "https://app.example"
    assert refused[0] == 403
    assert simple[2]["access-control-allow-origin"] == "https://app.example"


def test_size_limit(demo, tmp_path):
    with mitmdump(demo, tmp_path, "sizelimit", mesh_size_limit="{max_body: 1KiB}") as (url, _):
        small = get(url + "/items", data=b"x" * 1000)
        large = get(url + "/items", data=b"x" * 2000)
    assert small[0] == 200 and large[0] == 413 and large[1]["error"] == "body_too_large"


def test_transform(demo, tmp_path):
    spec = ("{request: {path: {strip_prefix: /api}, set: {headers: {x-env: test}}}, "
            "response: {set: {headers: {x-transformed: 'on'}}}}")
    with mitmdump(demo, tmp_path, "transform", mesh_transform=spec) as (url, _):
        status, body, headers = get(url + "/api/items/1?q=2")
    assert status == 200 and body["path"] == "/items/1?q=2"
    assert upstream_headers(body)["x-env"] == "test" and headers["x-transformed"] == "on"


def test_fault_injection(demo, tmp_path):
    with mitmdump(demo, tmp_path, "faults", mesh_fault="{abort: {status: 503, every_nth: 2}, "
                                                       "header_triggered: true}") as (url, _):
        statuses = [get_status(url + "/items") for _ in range(4)]
        asked = get_status(url + "/items", headers={"x-mitmesh-fault": "abort=418"})
        malformed = get(url + "/items", headers={"x-mitmesh-fault": "melt=1"})
    assert statuses == [200, 503, 200, 503] and asked == 418
    assert malformed[0] == 400 and malformed[1]["error"] == "bad_fault_header"


def get_status(url: str, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_access_log(demo, tmp_path):
    with mitmdump(demo, tmp_path, "accesslog", mesh_access_log="{path: logs/access.log}") as (url, _):
        rid = get(url + "/items?api_key=secret")[2]["x-request-id"]
        log = tmp_path / "logs" / "access.log"
        line = json.loads(wait_until(lambda: log.exists() and log.read_text(), timeout=5).splitlines()[0])
    assert line["request_id"] == rid and line["status"] == 200 and line["route"] == "mitmdump"
    assert line["path"] == "/items?api_key=[redacted]"
    assert line["upstream"] == demo["echo"].removeprefix("http://")


def test_metrics(demo, tmp_path):
    admin = procs.free_port()
    with mitmdump(demo, tmp_path, "metrics", mesh_admin=f"{{port: {admin}}}") as (url, child):
        procs.wait_ports(child, [("127.0.0.1", admin)])
        for _ in range(3):
            get(url + "/items")
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
            text = r.read().decode()
    assert ('mitmesh_requests_total{cluster="",code="200",direction="edge",route="mitmdump",service="mitmdump",'
            'version=""} 3.0') in text


def test_tracing(demo, tmp_path):
    with Receiver() as receiver, mitmdump(demo, tmp_path, "tracing",
                                          mesh_tracing=f"{{otlp_endpoint: '{receiver.url}'}}") as (url, _):
        body = get(url + "/items")[1]
        traceparent = upstream_headers(body)["traceparent"]
        trace_id, span_id = traceparent.split("-")[1:3]
        spans = wait_until(lambda: receiver.trace(trace_id), timeout=10)
    assert [(s.service, s.span_id, s.kind) for s in spans] == [("mitmdump", span_id, 2)]  # the server span


def test_decision_log_after_other_addons(demo, tmp_path):
    with mitmdump(demo, tmp_path, "ratelimit", "decisions", mesh_rate_limit="{minute: 1, key: ip}",
                  mesh_decisions_log="true") as (url, child):
        get(url + "/items")
        rid = get(url + "/items")[2]["x-request-id"]
        wait_until(lambda: rid in child.log.read_text(), timeout=5)
    text = child.log.read_text()
    assert f"decisions of {rid} (GET → 429):\n" in text
    assert "  ratelimit: ip:127.0.0.1 on route mitmdump: over 1 per minute, retry after" in text


def test_scripts_loaded_together_share_one_route(demo, tmp_path):
    """Authentication first, then a rate limit keyed by the consumer it verified."""
    digest = hashlib.sha256(b"k-acme-1").hexdigest()
    with mitmdump(demo, tmp_path, "authn", "ratelimit",
                  mesh_api_key=f"{{consumers: {{acme: {{key_sha256: {digest}}}}}}}",
                  mesh_rate_limit="{minute: 1, key: consumer}") as (url, _):
        anonymous = get(url + "/items")
        statuses = [get(url + "/items", headers={"x-api-key": "k-acme-1"})[0] for _ in range(2)]
    assert anonymous[0] == 401 and statuses == [200, 429]

