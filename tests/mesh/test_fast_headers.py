"""mesh/proxy/headers.py: the lean runtime's header lookups answer as mitmproxy's own do, and a
worker installs them."""

from __future__ import annotations

import random

import pytest
from mitmproxy import http

from mesh.proxy import headers
from tests.mesh.test_deferred import fresh

NAMES = [b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"Transfer-Encoding",
         b"Connection", b"X-Api-Key", b"x-api-key", b"Set-Cookie", b"RateLimit-Limit",
         b"ratelimit-limit", b"X-\xc3\xa9t\xc3\xa9", b"x-\xc3\xa9t\xc3\xa9", b"X-\xff",
         b"x-\xff", b"\xc3\x89T\xc3\x89", b"", b"_"]
VALUES = [b"", b"1", b"gzip, br", b"close", b"a b", b"\xc3\xa9", b"\xff\xfe", b"x" * 40,
          b" spaced "]


class Bytes(bytes):
    pass


class Text(str):
    pass


def keys_for(block: list[tuple[bytes, bytes]]) -> list:
    """Every kind of key a caller may pass: str and bytes in any case, non-ASCII and not UTF-8 (a
    surrogate-escaped str), subclasses, absent names, and what mitmproxy refuses."""
    found = [name for name, _ in block]
    keys: list = [b"absent", "absent", "", b"", None, 7, 1.5, ["host"]]
    for name in found + NAMES[:6]:
        text = name.decode("utf-8", "surrogateescape")
        keys += [name, name.upper(), name.lower(), text, text.upper(), text.swapcase(),
                 Bytes(name), Text(text)]
    return keys


def answer(method, h: http.Headers, *args):
    try:
        return "ok", method(h, *args)
    except Exception as e:  # the same exception type and arguments, as well as the same values
        return type(e).__name__, e.args


def test_the_lookups_answer_as_mitmproxys_own():
    rng = random.Random(1409)
    compared = 0
    for _ in range(400):
        block = [(rng.choice(NAMES), rng.choice(VALUES)) for _ in range(rng.randrange(0, 12))]
        h = http.Headers(block)
        assert answer(headers.ORIGINAL["__bytes__"], h) == answer(headers.FAST["__bytes__"], h)
        for key in rng.sample(keys_for(block), 12):
            for name in ("get_all", "__getitem__", "__contains__"):
                original = answer(headers.ORIGINAL[name], h, key)
                assert original == answer(headers.FAST[name], h, key), (name, key)
            for default in ((), (None,), ("fallback",)):
                assert answer(headers.ORIGINAL["get"], h, key, *default) == \
                       answer(headers.FAST["get"], h, key, *default), ("get", key, default)
            compared += 1
    assert compared == 400 * 12


@pytest.mark.parametrize("fields", [(), ((b"Host", b"a"), (b"host", b"b")), ((b"X", b""),)])
def test_edge_cases_answer_as_mitmproxys_own(fields):
    """No fields, a name twice (folded with ", "), an empty value (present, not the default)."""
    h = http.Headers(fields)
    for key in ("host", "HOST", b"x", "x", "absent"):
        for name in ("get_all", "__getitem__", "get", "__contains__"):
            assert answer(headers.ORIGINAL[name], h, key) == answer(headers.FAST[name], h, key)
    assert headers.FAST["get"](h, "absent", 5) == 5


def test_a_worker_installs_them():
    out = fresh("""
        import asyncio
        from mitmproxy import http
        from mesh.proxy import headers, master
        before = http.Headers.get is headers.get
        try:  # the worker's start, up to the config it cannot read
            asyncio.run(master.run("/nonexistent/mesh.yaml", "gateway", "warn"))
        except BaseException:
            pass
        print(json.dumps({"before": before, "after": {name: getattr(http.Headers, name) is fn
                                                       for name, fn in headers.FAST.items()}}))
    """)
    assert out["before"] is False
    assert out["after"] == {name: True for name in headers.FAST}
