"""Function routes through the whole gateway chain, with real instance processes."""

from __future__ import annotations

import asyncio
import json
import textwrap

import pytest

from addons.function import Function

# AWS's own Python example for an HTTP API Lambda proxy integration, unmodified
AWS_HANDLER = '''
import json

def lambda_handler(event, context):
    return {
        'statusCode': 200,
        'body': json.dumps('Hello from Lambda!')
    }
'''

HANDLERS = '''
import base64, os, time

def echo(event, context):
    return {"statusCode": 201, "headers": {"x-pid": str(os.getpid()), "content-type": "application/json"},
            "cookies": ["a=1; Path=/", "b=2"],
            "body": __import__("json").dumps({"event": event, "context": {
                "aws_request_id": context.aws_request_id, "function_name": context.function_name,
                "remaining": context.get_remaining_time_in_millis()}})}

def plain(event, context):
    return {"hello": event["queryStringParameters"]["name"]}

def binary(event, context):
    return {"statusCode": 200, "isBase64Encoded": True, "body": base64.b64encode(b"\\x00\\xff").decode(),
            "headers": {"content-type": "application/octet-stream"}}

def pid(event, context):
    print("a handler's print goes to stderr, never into the protocol")
    time.sleep(float((event.get("queryStringParameters") or {}).get("sleep", "0")))
    if event["rawPath"].endswith("/crash"):
        os._exit(7)
    return {"statusCode": 200, "body": str(os.getpid())}

def bad(event, context):
    return {"statusCode": "teapot"}

def raises(event, context):
    raise RuntimeError("boom")
'''


def config(functions: str, routes: str = "") -> str:
    return textwrap.dedent("""
        version: 1
        gateway:
          listeners: [{name: public, port: 18080}]
        functions:
        %s
        routes:
          - {name: hello, match: {path: {exact: /hello}, methods: [GET]}, function: hello}
          - {name: fn, match: {path: {prefix: /fn/}}, function: fn}
        %s
        """) % (textwrap.indent(textwrap.dedent(functions), "  "), textwrap.dedent(routes))


FUNCS = """
hello: {handler: "aws:lambda_handler"}
fn: {handler: "h:echo"}
"""


@pytest.fixture
def code(tmp_path):
    (tmp_path / "aws.py").write_text(AWS_HANDLER)
    (tmp_path / "h.py").write_text(HANDLERS)
    return tmp_path


def function_addon(gw) -> Function:
    return next(a for a in gw.addons if isinstance(a, Function))


async def test_an_unmodified_aws_handler_answers(gateway, code):
    async with gateway(config(FUNCS)) as gw:
        flow = await gw.send("/hello")
        assert flow.response.status_code == 200
        assert json.loads(flow.response.content) == "Hello from Lambda!"
        assert flow.metadata["mitmesh.route"] == "hello"
        actions = {r["name"]: r["action"] for r in gw.state.status()["routes"]}
        assert actions["hello"] == {"function": "hello"}  # the admin's /status shows it


async def test_the_event_is_payload_2_0_with_claims_and_context(gateway, code):
    async with gateway(config(FUNCS)) as gw:
        flow = await gw.send("/fn/items/7?a=1&a=2&b=x", method="POST", body=b"hi there",
                             headers={"content-type": "text/plain", "cookie": "s=1; t=2", "x-multi": "v"},
                             claims={"sub": "alice", "scope": "read write", "aud": ["x", "y"], "n": 3},
                             principal="alice")
        assert flow.response.status_code == 201
        assert flow.response.headers.get_all("set-cookie") == ["a=1; Path=/", "b=2"]
        out = json.loads(flow.response.content)
        ev, ctx = out["event"], out["context"]
        assert ev["version"] == "2.0"
        assert ev["routeKey"] == "ANY /fn/{proxy+}"
        assert ev["rawPath"] == "/fn/items/7" and ev["rawQueryString"] == "a=1&a=2&b=x"
        assert ev["queryStringParameters"] == {"a": "1,2", "b": "x"}
        assert ev["cookies"] == ["s=1", "t=2"] and "cookie" not in ev["headers"]
        assert ev["headers"]["x-multi"] == "v" and ev["headers"]["host"] == "example.com"
        assert ev["pathParameters"] == {"proxy": "items/7"}
        assert ev["body"] == "hi there" and ev["isBase64Encoded"] is False
        rc = ev["requestContext"]
        assert rc["http"]["method"] == "POST" and rc["http"]["path"] == "/fn/items/7"
        assert rc["requestId"] == flow.response.headers["x-request-id"] == ctx["aws_request_id"]
        assert isinstance(rc["timeEpoch"], int) and rc["stage"] == "$default"
        assert rc["authorizer"]["jwt"]["claims"] == {"sub": "alice", "scope": "read write", "aud": "[x y]", "n": "3"}
        assert rc["authorizer"]["jwt"]["scopes"] == ["read", "write"]
        assert ctx["function_name"] == "fn" and 0 < ctx["remaining"] <= 3000


@pytest.mark.parametrize("handler, path, status, body, ctype", [
    ("h:plain", "/fn/?name=bo", 200, b'{"hello": "bo"}', "application/json"),
    ("h:binary", "/fn/", 200, b"\x00\xff", "application/octet-stream"),
])
async def test_both_response_forms(gateway, code, handler, path, status, body, ctype):
    async with gateway(config(f'hello: {{handler: "aws:lambda_handler"}}\nfn: {{handler: "{handler}"}}')) as gw:
        flow = await gw.send(path)
        assert (flow.response.status_code, flow.response.content) == (status, body)
        assert flow.response.headers["content-type"] == ctype


@pytest.mark.parametrize("handler, status, error", [
    ("h:bad", 502, "function_bad_response"),
    ("h:raises", 502, "function_error"),
    ("h:missing", 502, "function_start_failed"),
])
async def test_failures_are_json_replies(gateway, code, handler, status, error):
    async with gateway(config(f'hello: {{handler: "aws:lambda_handler"}}\nfn: {{handler: "{handler}"}}')) as gw:
        flow = await gw.send("/fn/")
        assert flow.response.status_code == status
        assert json.loads(flow.response.content)["error"] == error


async def test_scales_from_zero_reuses_warm_and_stops_after_idle(gateway, code):
    async with gateway(config('hello: {handler: "aws:lambda_handler"}\nfn: {handler: "h:pid", idle: 0.5}')) as gw:
        pools = function_addon(gw).pools
        assert "fn" not in pools or not pools["fn"].instances  # scale to zero: nothing runs before a call
        first = await gw.send("/fn/")
        assert "cold start" in " ".join(d for _, d in first.metadata["mitmesh.decisions"])
        second = await gw.send("/fn/")
        assert "warm" in " ".join(d for _, d in second.metadata["mitmesh.decisions"])
        assert first.response.content == second.response.content  # the same instance process
        assert len(pools["fn"].instances) == 1
        for _ in range(40):
            await asyncio.sleep(0.1)
            if not pools["fn"].instances:
                break
        assert not pools["fn"].instances
        third = await gw.send("/fn/")
        assert third.response.status_code == 200 and third.response.content != first.response.content
        assert "cold start" in " ".join(d for _, d in third.metadata["mitmesh.decisions"])


async def test_min_instances_stay_warm(gateway, code):
    async with gateway(config('hello: {handler: "aws:lambda_handler"}\n'
                              'fn: {handler: "h:pid", idle: 0.2, min_instances: 1}')) as gw:
        first = await gw.send("/fn/")
        await asyncio.sleep(0.8)
        again = await gw.send("/fn/")
        assert again.response.content == first.response.content
        assert "warm" in " ".join(d for _, d in again.metadata["mitmesh.decisions"])


async def test_concurrency_cap_then_queue_then_429(gateway, code):
    funcs = 'hello: {handler: "aws:lambda_handler"}\nfn: {handler: "h:pid", max_instances: 2, queue: 1, timeout: 5}'
    async with gateway(config(funcs)) as gw:
        flows = await asyncio.gather(*(gw.send("/fn/?sleep=0.6") for _ in range(4)))
        codes = sorted(f.response.status_code for f in flows)
        assert codes == [200, 200, 200, 429]
        busy = next(f for f in flows if f.response.status_code == 429)
        assert json.loads(busy.response.content)["error"] == "function_busy"
        assert int(busy.response.headers["retry-after"]) >= 1
        assert len({f.response.content for f in flows if f.response.status_code == 200}) == 2  # 2 instances
        assert len(function_addon(gw).pools["fn"].instances) == 2


async def test_a_timeout_is_504_and_the_instance_is_replaced(gateway, code):
    async with gateway(config('hello: {handler: "aws:lambda_handler"}\nfn: {handler: "h:pid", timeout: 1}')) as gw:
        warm = await gw.send("/fn/")
        slow = await gw.send("/fn/?sleep=3")
        assert slow.response.status_code == 504
        assert json.loads(slow.response.content)["error"] == "function_timeout"
        after = await gw.send("/fn/")
        assert after.response.status_code == 200 and after.response.content != warm.response.content


async def test_a_crash_is_502_and_loses_no_other_call(gateway, code):
    funcs = 'hello: {handler: "aws:lambda_handler"}\nfn: {handler: "h:pid", max_instances: 2, timeout: 5}'
    async with gateway(config(funcs)) as gw:
        other = asyncio.ensure_future(gw.send("/fn/ok?sleep=0.8"))
        await asyncio.sleep(0.3)
        crash = await gw.send("/fn/crash?sleep=0.2")
        assert crash.response.status_code == 502
        assert json.loads(crash.response.content)["error"] == "function_crashed"
        assert (await other).response.status_code == 200
        assert (await gw.send("/fn/")).response.status_code == 200


async def test_gateway_policies_apply_to_function_routes(gateway, code):
    routes = """
    policies:
      once: {rate_limit: {minute: 1, key: ip}}
      tag: {transform: {response: {set: {headers: {x-served-by: function}}}}}
    """
    text = config(FUNCS, routes).replace("function: hello}", "function: hello, policies: [once, tag]}")
    async with gateway(text) as gw:
        ok = await gw.send("/hello")
        assert ok.response.status_code == 200 and ok.response.headers["x-served-by"] == "function"
        limited = await gw.send("/hello")
        assert limited.response.status_code == 429
        assert json.loads(limited.response.content)["error"] == "rate_limited"


async def test_a_reload_that_changes_the_function_lets_calls_in_flight_finish(gateway, code, write_config):
    async with gateway(config(FUNCS.replace('"h:echo"', '"h:pid", timeout: 5'))) as gw:
        first = await gw.send("/fn/")
        slow = asyncio.ensure_future(gw.send("/fn/?sleep=0.5"))
        await asyncio.sleep(0.2)
        write_config(config(FUNCS.replace('"h:echo"', '"h:pid", timeout: 4')))
        gw.tctx.options.update(mesh_config=str(code / "mesh.yaml"))
        fresh = await gw.send("/fn/")
        assert function_addon(gw).pools["fn"].spec.timeout == 4  # a new pool, with new instances
        assert fresh.response.status_code == 200 and fresh.response.content != first.response.content
        done = await slow
        assert done.response.status_code == 200 and done.response.content == first.response.content
