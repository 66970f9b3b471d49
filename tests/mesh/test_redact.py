"""Redaction: credentials never reach a log line."""

from __future__ import annotations

import logging

import pytest

from mesh.security import redact

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJkZW1vLWFwcCJ9.c2lnbmF0dXJlLXZhbHVl"


@pytest.mark.parametrize("line, expected", [
    ("Authorization: Bearer abc.def.ghi", "Authorization: [redacted]"),
    ("headers {'authorization': 'Basic ZGVtbzpzZWNyZXQ=', 'host': 'a'}",
     "headers {'authorization': '[redacted]', 'host': 'a'}"),
    ("Cookie: session=abc; theme=dark", "Cookie: [redacted]"),
    ("set-cookie=sid=123", "set-cookie=[redacted]"),
    ("x-api-key: mk_abcdefghijklmnopqrstuvwxyz", "x-api-key: [redacted]"),
    ("GET /partner/items?apikey=mk_secret123&page=2 200", "GET /partner/items?apikey=[redacted]&page=2 200"),
    ("POST /oauth/token?client_secret=s3cret", "POST /oauth/token?client_secret=[redacted]"),
    (f"rejected token {JWT} (expired)", "rejected token [redacted] (expired)"),
    ("sent bearer 0123456789abcdef to idp", "sent bearer [redacted] to idp"),
    ("consumer acme used mk_0123456789abcdefghijkl", "consumer acme used [redacted]"),
    ("route catalog matched GET /catalog/items", "route catalog matched GET /catalog/items"),
    ("grant_type=client_credentials&client_secret=s3cret", "grant_type=client_credentials&client_secret=[redacted]"),
    ("password=hunter2&user=ann", "password=[redacted]&user=ann"),
    ('{"access_token": "opaque-123", "token_type": "Bearer"}',
     '{"access_token": "[redacted]", "token_type": "Bearer"}'),
    ("GET /x?access_token=a&apikey=b&api_key=c&token=d&key=e&page=2",
     "GET /x?access_token=[redacted]&apikey=[redacted]&api_key=[redacted]&token=[redacted]&key=[redacted]&page=2"),
])
def test_lines(line, expected):
    assert redact.text(line) == expected


def test_headers_and_urls():
    fields = [("Host", "a"), ("Authorization", "Bearer x"), ("X-Partner-Key", "k"), ("Cookie", "c=1")]
    assert redact.headers(fields, extra=["x-partner-key"]) == [
        ("Host", "a"), ("Authorization", "[redacted]"), ("X-Partner-Key", "[redacted]"), ("Cookie", "[redacted]")]
    assert redact.url("/x?a=1&token=abc&b=2") == "/x?a=1&token=[redacted]&b=2"


def test_every_logger_is_masked_once_installed(caplog):
    redact.install()
    redact.install()  # idempotent
    with caplog.at_level(logging.INFO):
        logging.getLogger("some.library").info("calling %s with Authorization: %s", "idp", "Bearer xyz123456789")
    assert caplog.messages == ["calling idp with Authorization: [redacted]"]


def test_value_masks_records_of_any_shape():
    record = {"path": "/x?access_token=abc", "decisions": [["authn", f"jwt {JWT}"]],
              "headers": [("Authorization", "Basic ZGVtbzpzZWNyZXQ="), ("Host", "a")],
              "client_secret": "s", "status": 200}
    assert redact.value(record) == {
        "path": "/x?access_token=[redacted]", "decisions": [["authn", "jwt [redacted]"]],
        "headers": [("Authorization", "[redacted]"), ("Host", "a")], "client_secret": "[redacted]",
        "status": 200}
    assert redact.suspect("Cookie: a") and not redact.suspect("route catalog matched GET /items")


def _every_pattern(line: str) -> str:
    """What text() does once its first look lets a line through: every pattern, unconditionally."""
    line = redact._HEADER_LINE.sub(redact._masked_value, line)
    line = redact._QUERY.sub(lambda m: m.group(1) + redact.MASK, line)
    line = redact._JSON_FIELD.sub(lambda m: f'{m.group(1)}"{redact.MASK}"', line)
    line = redact._BEARER.sub(lambda m: m.group(1) + " " + redact.MASK, line)
    line = redact._JWT.sub(redact.MASK, line)
    return redact._API_KEY.sub(redact.MASK, line)


@pytest.mark.parametrize("line, masks", [
    ("authn: api_key: acme", False),  # a decision naming the method, holding no key
    ("consumer token-service on route orders", False),
    ("ratelimit: api_key:0f3a9c on route catalog: allowed", False),
    ("basically a session of 3 keys", False),
    ("route: the header it reads is x-api-key", False),  # a name no separator follows
    ("forward: set the cookie", False), ("authn: sent token", False),
    ("x-api-key  : abc", True), ("'cookie' = c", True), ("a: b\nauthorization:x", True),
    ("GET /x?api_key=mk_1234567890abcdefgh", True),
    ("x-api-key: abc", True), ('{"client_secret" : "s"}', True), ("Basic\tdXNlcjpwYXNz", True),
    ("sessionid=1", True), ("eyJhbGciOi.eyJzdWIi.sig", True),
])
def test_masks_is_precise(line, masks):
    assert redact.masks(line) is masks
    assert (redact.text(line) != line) is masks


def test_masks_has_no_false_negatives():
    """Whenever a pattern would mask part of a line, `masks` says so (random lines of names,
    separators and token-like pieces; the first look `suspect` is broader still)."""
    import random

    pieces = sorted(redact.SECRET_NAMES) + [
        "bearer", "Basic", "eyJhbGciOi", ".eyJzdWIi", ".sig", "mk_", "abcdefghijklmnopqrstu", "=", ":",
        ": ", '"', "'", "?", "&", ";", " ", "\t", "\n", "x", "-", "_", "/", "{", "}", ",", "12345678",
        "BEARER", "Authorization", "EYJ", "Token", "KEY"]
    rng = random.Random(14)
    for _ in range(40_000):
        line = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        if _every_pattern(line) != line:
            assert redact.suspect(line) and redact.masks(line), line
