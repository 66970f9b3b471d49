"""Response splitting through a function: a handler that copies request input into a response
header (a redirect's `location` from `?next=`) must not let a CR or LF start a header, or a whole
response, of the client's choosing. Answered 502 `function_bad_response`, as API Gateway answers a
malformed Lambda response, at a real gateway (both HTTP/1.1 engines and HTTP/2) and at a real
`mitmesh function` host (a function as a mesh service, behind a sidecar)."""

from __future__ import annotations

import contextlib
from urllib.parse import quote

import pytest

from mesh.runtime import procs
from tools.testbed import wait_until

from .conftest import H2, Target, assert_refused, request, targets

pytestmark = pytest.mark.e2e

# the handler echoes `v` where `where` says: a redirect's location, a cookie, or a header's name
HANDLER = '''
def handler(event, context):
    q = event.get("queryStringParameters") or {}
    where, value = q.get("where", "location"), q.get("v", "/")
    if where == "cookie":
        return {"statusCode": 200, "cookies": [value], "body": "ok"}
    if where == "name":
        return {"statusCode": 200, "headers": {value: "1"}, "body": "ok"}
    return {"statusCode": 302, "headers": {"location": value}, "body": ""}
'''
FUNCTION = {"redir": {"handler": "fnredir:handler", "code": "."}}
ROUTE = {"name": "go", "match": {"path": {"prefix": "/go"}}, "function": "redir"}

SPLITS = {
    "crlf-in-a-redirect-location": ("location", "/\r\nSet-Cookie: session=evil\r\nX-Injected: 1"),
    "bare-lf-in-a-redirect-location": ("location", "/\nSet-Cookie: session=evil"),
    "bare-cr-in-a-redirect-location": ("location", "/\rSet-Cookie: session=evil"),
    "nul-in-a-redirect-location": ("location", "/\x00evil"),
    "crlf-in-a-cookie": ("cookie", "a=1\r\nSet-Cookie: session=evil"),
    "crlf-in-a-header-name": ("name", "x-a: 1\r\nSet-Cookie: session=evil\r\nx-b"),
    "colon-in-a-header-name": ("name", "set-cookie: session=evil\r\nx"),
}


def _go(where: str, value: str) -> str:
    return f"/go?where={where}&v={quote(value, safe='')}"


@pytest.fixture(scope="module")
def fn_mesh(tmp_path_factory, engine):
    tmp = tmp_path_factory.mktemp("fnsplit")
    (tmp / "fnredir.py").write_text(HANDLER)
    with targets(tmp, routes=[ROUTE], functions=FUNCTION, sidecar=False, tls=True,
                 engine=engine) as m:
        yield m


@pytest.fixture(scope="module")
def fn_host(fn_mesh):
    """The same function served by `mitmesh function` (what a sidecar sends a function service's
    requests to)."""
    port = procs.free_port()
    child = procs.spawn("fn-host", procs.python("-m", "mesh.cli", "function", "redir", "--config",
                                                str(fn_mesh.path), "--port", str(port)),
                        log_dir=fn_mesh.tmp / "logs", cwd=str(fn_mesh.tmp))
    try:
        procs.wait_log(child, "listening")
        yield Target("function-host", "127.0.0.1", port, ("127.0.0.1", port), log=child.log)
    finally:
        child.stop()


def assert_not_split(raw: bytes) -> None:
    low = raw.lower()
    assert b"session=evil" not in low and b"x-injected" not in low, raw[:400]


@pytest.mark.parametrize("where, value", SPLITS.values(), ids=SPLITS.keys())
def test_response_splitting_through_a_function_at_the_gateway(fn_mesh, where, value):
    gw = fn_mesh.targets["gateway"]
    reply = gw.send(request("GET", _go(where, value)))
    assert_refused(reply, 502, "function_bad_response")
    assert_not_split(reply.raw)
    # the log names the handler's field, never its value
    said = f"function redir: not a valid response: {'cookies' if where == 'cookie' else 'headers'}: "
    text = wait_until(lambda: said in (t := gw.log.read_text()) and t, timeout=5)
    assert "session=evil" not in text


def test_a_redirect_without_controls_still_answers(fn_mesh):
    """The control case: the same handler, a clean value, a tab inside a cookie (field content)."""
    gw = fn_mesh.targets["gateway"]
    reply = gw.send(request("GET", _go("location", "/ok")))
    assert (reply.status, reply.header("location")) == (302, "/ok")
    reply = gw.send(request("GET", _go("cookie", "a=1;\tpath=/")))
    assert (reply.status, reply.header("set-cookie")) == (200, "a=1;\tpath=/")


def test_response_splitting_through_a_function_over_http2(fn_mesh):
    h2 = H2(fn_mesh.targets["gateway-tls"])
    with contextlib.closing(h2):
        status, headers, body = h2.response(h2.headers(_go(*SPLITS["crlf-in-a-redirect-location"])))
    assert status == 502 and b'"function_bad_response"' in body, (status, body)
    assert "set-cookie" not in headers and "x-injected" not in headers


@pytest.mark.parametrize("where, value", SPLITS.values(), ids=SPLITS.keys())
def test_response_splitting_through_a_function_service(fn_host, where, value):
    reply = fn_host.send(request("GET", _go(where, value)))
    assert reply.status == 502 and reply.json["error"] == "function_bad_response", reply.raw[:300]
    assert_not_split(reply.raw)
