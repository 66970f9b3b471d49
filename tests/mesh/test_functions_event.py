"""Payload format 2.0: the event of a request, and a handler's result read as API Gateway reads it."""

from __future__ import annotations

import base64

import pytest

from mesh.functions.event import Response, RouteKey, build, response, route_key


def test_route_keys():
    assert route_key([], None, None) == RouteKey("$default")
    assert route_key(["GET"], "/a", None) == RouteKey("GET /a")
    assert route_key(["GET", "POST"], None, "/fn") == RouteKey("ANY /fn/{proxy+}", "/fn")


def test_empty_fields_are_left_out_and_binary_bodies_are_base64():
    ev = build(route=RouteKey("$default"), method="PUT", path="/", query="", body=b"\xff\x00",
               headers=[("Host", "api.example.com"), ("Content-Type", "application/octet-stream")],
               source_ip="127.0.0.9", request_id="r1", now=1583348638.390)
    assert "cookies" not in ev and "queryStringParameters" not in ev and "pathParameters" not in ev
    assert ev["body"] == base64.b64encode(b"\xff\x00").decode() and ev["isBase64Encoded"] is True
    rc = ev["requestContext"]
    assert "authorizer" not in rc
    assert (rc["domainName"], rc["domainPrefix"]) == ("api.example.com", "api")
    assert rc["time"] == "04/Mar/2020:19:03:58 +0000" and rc["timeEpoch"] == 1583348638390
    assert rc["http"] == {"method": "PUT", "path": "/", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.9", "userAgent": ""}


def test_repeated_headers_are_joined_by_commas():
    ev = build(route=RouteKey("$default"), method="GET", path="/", query="", body=b"",
               headers=[("X-A", "1"), ("x-a", "2")], source_ip="", request_id="")
    assert ev["headers"] == {"x-a": "1,2"} and ev["isBase64Encoded"] is False and "body" not in ev


@pytest.mark.parametrize("result, expected", [
    ("Hello from Lambda!", Response(200, (("content-type", "application/json"),), b"Hello from Lambda!")),
    ({"a": 1}, Response(200, (("content-type", "application/json"),), b'{"a": 1}')),
    ([1, 2], Response(200, (("content-type", "application/json"),), b"[1, 2]")),
    (None, Response(200, (("content-type", "application/json"),), b"null")),
    ({"statusCode": 204}, Response(204, (), b"")),
    ({"statusCode": "404", "body": "no", "headers": {"x": "y"}, "cookies": ["c=1"]},
     Response(404, (("x", "y"), ("set-cookie", "c=1")), b"no")),
    ({"statusCode": 200, "body": "AAE=", "isBase64Encoded": True}, Response(200, (), b"\x00\x01")),
    # a tab and text beyond ASCII are field content (RFC 9110 §5.5); a number is sent as JSON
    ({"statusCode": 200, "headers": {"x-a": "a\tb", "x-b": "café", "x-n": 3}},
     Response(200, (("x-a", "a\tb"), ("x-b", "café"), ("x-n", "3")), b"")),
])
def test_both_response_forms(result, expected):
    assert response(result) == expected


@pytest.mark.parametrize("result, error", [
    ({"statusCode": 99}, "statusCode: expected an HTTP status from 100 to 599 (got 99)"),
    ({"statusCode": True}, "statusCode: expected an HTTP status from 100 to 599 (got True)"),
    ({"statusCode": 200, "headers": []}, "headers: expected an object (got list)"),
    ({"statusCode": 200, "cookies": "a=1"}, "cookies: expected a list of strings (got str)"),
    ({"statusCode": 200, "body": "%%", "isBase64Encoded": True}, "body: isBase64Encoded is true but the body is not base64"),
    # response splitting: the handler's value never reaches the reason, only the field's name
    ({"statusCode": 302, "headers": {"location": "/\r\nSet-Cookie: s=evil"}},
     "headers: header 'location' holds a control character (RFC 9110 §5.5)"),
    ({"statusCode": 302, "headers": {"location": "/\nSet-Cookie: s=evil"}},
     "headers: header 'location' holds a control character (RFC 9110 §5.5)"),
    ({"statusCode": 200, "headers": {"x-a": "a\x00b"}},
     "headers: header 'x-a' holds a control character (RFC 9110 §5.5)"),
    ({"statusCode": 200, "headers": {"x-a": "a\x7fb"}},
     "headers: header 'x-a' holds a control character (RFC 9110 §5.5)"),
    ({"statusCode": 200, "headers": {"x-a\r\nset-cookie": "s=evil"}},
     "headers: header name 'x-a\\r\\nset-cookie' is not a token (RFC 9110 §5.1)"),
    ({"statusCode": 200, "headers": {"x a": "1"}}, "headers: header name 'x a' is not a token (RFC 9110 §5.1)"),
    ({"statusCode": 200, "headers": {"": "1"}}, "headers: header name '' is not a token (RFC 9110 §5.1)"),
    ({"statusCode": 200, "headers": {"x-a": "\ud800"}}, "headers: header 'x-a' is not encodable as UTF-8"),
    ({"statusCode": 200, "cookies": ["a=1", "b=2\r\nX-Injected: 1"]},
     "cookies: header 'set-cookie' holds a control character (RFC 9110 §5.5)"),
])
def test_results_that_cannot_be_a_response(result, error):
    with pytest.raises(ValueError) as e:
        response(result)
    assert str(e.value) == error
