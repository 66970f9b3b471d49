"""AWS API Gateway HTTP API payload format 2.0: the event a request becomes, and how a handler's
result becomes a response (both forms: a statusCode object, or any JSON value meaning 200).

Pure data in, data out: the addon gives the request's parts, the pool carries the dicts.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

from mesh.config.types import field_refusal

# framing is the proxy's own; whatever a handler says about it is dropped
FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})
_TEXT = ("text/", "application/json", "application/xml", "application/javascript",
         "application/x-www-form-urlencoded", "+json", "+xml")


@dataclass(frozen=True, slots=True)
class RouteKey:
    """What a route tells its function: AWS's routeKey, and the prefix whose rest is {proxy+}."""

    key: str  # "$default", "GET /hello", "ANY /fn/{proxy+}"
    prefix: str | None = None


def route_key(methods: list[str], exact: str | None, prefix: str | None) -> RouteKey:
    method = methods[0] if len(methods) == 1 else "ANY"
    if exact is not None:
        return RouteKey(f"{method} {exact}")
    if prefix is not None and prefix != "/":
        base = prefix if prefix.endswith("/") else prefix + "/"
        return RouteKey(f"{method} {base}{{proxy+}}", prefix)
    return RouteKey("$default" if method == "ANY" else f"{method} /{{proxy+}}", prefix)


def _claim(value: object) -> str:
    # API Gateway's JWT authorizer hands claims over as strings: arrays as "[a b]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_claim(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _is_text(content_type: str) -> bool:
    ct = content_type.split(";", 1)[0].strip().lower()
    return not ct or ct.startswith(_TEXT[0]) or ct in _TEXT or ct.endswith(_TEXT[-2:])


def build(*, route: RouteKey, method: str, path: str, query: str, headers: list[tuple[str, str]],
          body: bytes, source_ip: str, request_id: str, claims: dict | None = None,
          protocol: str = "HTTP/1.1", stage: str = "$default", api_id: str = "mitmesh",
          now: float | None = None) -> dict:
    """The payload 2.0 event of one request (header names lower case, repeats joined by commas,
    cookies apart, empty fields left out as API Gateway does)."""
    now = time.time() if now is None else now
    joined: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        name = name.lower()
        if name == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        joined[name] = f"{joined[name]},{value}" if name in joined else value
    host = joined.get("host", "")
    params: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        params[k] = f"{params[k]},{v}" if k in params else v
    event: dict = {"version": "2.0", "routeKey": route.key, "rawPath": path, "rawQueryString": query}
    if cookies:
        event["cookies"] = cookies
    event["headers"] = joined
    if params:
        event["queryStringParameters"] = params
    context: dict = {
        "accountId": "anonymous", "apiId": api_id,
        "domainName": host, "domainPrefix": host.split(".", 1)[0],
        "http": {"method": method, "path": path, "protocol": protocol, "sourceIp": source_ip,
                 "userAgent": joined.get("user-agent", "")},
        "requestId": request_id, "routeKey": route.key, "stage": stage,
        "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "timeEpoch": int(now * 1000),
    }
    if claims:
        jwt: dict = {"claims": {k: _claim(v) for k, v in claims.items()}}
        scope = claims.get("scope")
        if isinstance(scope, str) and scope:
            jwt["scopes"] = scope.split()
        context["authorizer"] = {"jwt": jwt}
    event["requestContext"] = context
    if route.prefix is not None and path.startswith(route.prefix):
        rest = path[len(route.prefix):].lstrip("/")
        if rest:
            event["pathParameters"] = {"proxy": rest}
    if body:
        if _is_text(joined.get("content-type", "")):
            try:
                event["body"] = body.decode()
                event["isBase64Encoded"] = False
            except UnicodeDecodeError:
                pass
        if "body" not in event:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
    else:
        event["isBase64Encoded"] = False
    return event


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _field(key: str, name: str, value: str) -> tuple[str, str]:
    """One response field as the handler gave it, or ValueError naming it (never its value): a CR
    or LF in a value would end the field and start one the handler's caller chose (response
    splitting: `location` from a query parameter), so API Gateway answers 502 and so do we. The
    rules are those of a request's fields (mesh/core/heads.py)."""
    try:
        why = field_refusal(name.encode("utf-8", "surrogateescape"),
                            value.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        why = f"header {name[:40]!r} is not encodable as UTF-8"
    if why is not None:
        raise ValueError(f"{key}: {why}")
    return name, value


def response(result: object) -> Response:
    """A handler's result as API Gateway reads it; ValueError when it cannot be a response."""
    if not (isinstance(result, dict) and "statusCode" in result):
        body = result if isinstance(result, str) else json.dumps(result)
        return Response(200, (("content-type", "application/json"),), body.encode())
    status = result["statusCode"]
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ValueError(f"statusCode: expected an HTTP status from 100 to 599 (got {status!r})")
    headers: list[tuple[str, str]] = []
    raw_headers = result.get("headers")
    raw_headers = {} if raw_headers is None else raw_headers
    if not isinstance(raw_headers, dict):
        raise ValueError(f"headers: expected an object (got {type(raw_headers).__name__})")
    for name, value in raw_headers.items():
        if str(name).lower() in FRAMING:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        headers.append(_field("headers", str(name), text))
    cookies = result.get("cookies")
    cookies = [] if cookies is None else cookies
    if not isinstance(cookies, list):
        raise ValueError(f"cookies: expected a list of strings (got {type(cookies).__name__})")
    headers.extend(_field("cookies", "set-cookie", str(c)) for c in cookies)
    body = result.get("body")
    if body is None:
        data = b""
    elif not isinstance(body, str):
        data = json.dumps(body).encode()
    elif result.get("isBase64Encoded"):
        try:
            data = base64.b64decode(body, validate=True)
        except ValueError:
            raise ValueError("body: isBase64Encoded is true but the body is not base64") from None
    else:
        data = body.encode()
    return Response(status, tuple(headers), data)
