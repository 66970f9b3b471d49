"""Replay's comparison: volatile keys ignored, every differing JSON path named."""

from __future__ import annotations

from mitmproxy.test import tutils

from tools.replay import compare

IGNORE = frozenset({"request_id", "instance", "version"})


def resp(status: int, body: bytes):
    return tutils.tresp(status_code=status, content=body)


def test_same_document_but_volatile_keys():
    a = resp(200, b'{"instance": "a", "request_id": "1", "item": {"price": 1}}')
    assert compare(a, 200, b'{"instance": "b", "request_id": "2", "item": {"price": 1}}', IGNORE) == []


def test_differences_are_listed_by_path():
    a = resp(200, b'{"item": {"id": 1, "price": 49.9}}')
    found = compare(a, 200, b'{"item": {"id": 1, "price_cents": 4990, "currency": "EUR"}}', IGNORE)
    assert found == ["item.price: 49.9 vs (absent)", "item.price_cents: (absent) vs 4990",
                     'item.currency: (absent) vs "EUR"']
    assert compare(a, 503, b'{"item": {"id": 1, "price": 49.9}}', IGNORE) == ["status: 200 → 503"]


def test_non_json_bodies_compare_as_bytes():
    a = resp(200, b"plain text")
    assert compare(a, 200, b"plain text", IGNORE) == []
    assert compare(a, 200, b"other", IGNORE) == ["body: 10 bytes → 5 bytes, different"]


def test_lists_and_scalars():
    assert compare(resp(200, b"[1, 2]"), 200, b"[1, 3]", IGNORE) == ["[1]: 2 vs 3"]
    assert compare(resp(200, b"[1]"), 200, b"[1, 2]", IGNORE) == ["[1]: (absent) vs 2"]
