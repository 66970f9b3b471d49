"""headerfields: one-pass header reads and edits, the same as mitmproxy's Headers methods."""

from __future__ import annotations

import pytest
from mitmproxy import http

from addons import headerfields

FIELDS = ((b"Host", b"a"), (b"X-Api-Key", b"k1"), (b"accept", b"*/*"), (b"x-api-key", b"k2"),
          (b"X-Caf\xc3\xa9", b"\xc3\xa9t\xc3\xa9"), (b"x-raw", b"\xff"))


@pytest.mark.parametrize("name", ["x-api-key", "X-API-KEY", "accept", "x-café", "x-raw", "missing"])
def test_get_and_remove_are_headers_get_and_pop(name):
    ours, theirs = http.Headers(fields=FIELDS), http.Headers(fields=FIELDS)
    assert headerfields.get(ours, name) == theirs.get(name)
    headerfields.remove(ours, name)
    theirs.pop(name, None)
    assert ours.fields == theirs.fields


@pytest.mark.parametrize("name", ["x-consumer", "X-Api-Key", "accept", "x-café"])
def test_put_is_headers_setitem(name):
    ours, theirs = http.Headers(fields=FIELDS), http.Headers(fields=FIELDS)
    headerfields.put(ours, name, "acme")
    theirs[name] = "acme"
    assert ours.fields == theirs.fields
