"""Mirror comparison: status first, JSON compared as data (ignored fields left out), other bodies as bytes."""

from __future__ import annotations

import json

from mesh.core import mirror
from mesh.config import schema

J = "application/json"


def answer(status: int, body, ctype: str | None = J):
    return (status, ctype, json.dumps(body).encode() if not isinstance(body, bytes) else body)


def test_equal_answers_have_no_difference():
    assert mirror.difference(answer(200, {"a": 1, "b": 2}), answer(200, {"b": 2, "a": 1})) is None
    assert mirror.difference(answer(200, b"same", "text/plain"), answer(200, b"same", "text/plain")) is None


def test_status_differs_first():
    assert mirror.difference(answer(200, {}), answer(503, {})) == "status 200 vs 503"


def test_json_every_difference_is_named_in_document_order():
    a = {"items": [{"id": 1, "price": 49.9}], "v": "v1", "zone": "a"}
    b = {"items": [{"id": 1, "price_cents": 4990}], "v": "v1", "zone": None}
    assert mirror.difference(answer(200, a), answer(200, b)) == (
        'body differs at items[0].price: 49.9 vs (absent); items[0].price_cents: (absent) vs 4990; '
        'zone: "a" vs null')
    assert mirror.difference(answer(200, [1, 2]), answer(200, [1])) == "body differs at [1]: 2 vs (absent)"
    assert mirror.difference(answer(200, {"n": 1}), answer(200, {"n": 1.0})) == "body differs at n: 1 vs 1.0"


def test_a_long_list_of_differences_is_counted_past_the_first_twenty():
    a, b = {f"k{i:02}": i for i in range(25)}, {f"k{i:02}": -i for i in range(25)}
    text = mirror.difference(answer(200, a), answer(200, b))
    assert text.startswith("body differs at k01: 1 vs -1; k02: 2 vs -2;") and text.endswith("k20: 20 vs -20; and 4 more")


def test_ignored_fields_do_not_count():
    a = {"instance": "v1-1", "meta": {"at": 1, "ok": True}}
    b = {"instance": "v2-1", "meta": {"at": 2, "ok": True}}
    assert mirror.difference(answer(200, a), answer(200, b), (("instance",), ("meta", "at"))) is None
    assert mirror.difference(answer(200, a), answer(200, b), (("instance",),)) == "body differs at meta.at: 1 vs 2"


def test_other_bodies_compare_as_bytes():
    assert mirror.difference(answer(200, b"abc", "text/plain"), answer(200, b"abcd", "text/plain")) == \
        "body differs (3 vs 4 bytes)"
    assert mirror.difference(answer(200, b"{bad", J), answer(200, b"{bad2", J)) == "body differs (4 vs 5 bytes)"


def test_json_nested_past_the_parser_compares_as_bytes():
    """RecursionError, which is no ValueError, escaped the comparison (and the
    mirror's task)."""
    deep = b"[" * 5_000 + b"]" * 5_000
    assert mirror.difference(answer(200, deep, J), answer(200, deep + b" ", J)) == \
        "body differs (10000 vs 10001 bytes)"


def test_wanted_share():
    m = mirror.Mirror("s", ("s/v2",), 0.25, True, (), 1.0)
    assert m.wanted(0.1) and not m.wanted(0.25) and not m.wanted(0.9)
    assert sum(m.wanted() for _ in range(4000)) in range(850, 1150)


def test_log_lines_are_budgeted_per_route_and_second():
    budget = mirror.LineBudget(2)
    assert budget.lines("r", "a", now=10.1) == ["a"]
    assert budget.lines("r", "b", now=10.5) == ["b"]
    assert budget.lines("r", "c", now=10.9) == []
    assert budget.lines("other", "x", now=10.9) == ["x"]
    assert budget.lines("r", "d", now=11.0) == [
        "mirror differs: 1 more differences on route r were counted, not logged (see /status: mirror_diffs)", "d"]


def test_fields_that_differ_by_design_are_ignored_unless_the_list_is_replaced():
    """The demo's catalog v1 runs in zone a, v2 in none: that is no regression worth a line."""
    primary = {"item": {"id": 1}, "instance": "catalog-v1-1", "version": "v1", "zone": "a", "request_id": "r1"}
    copy = {"item": {"id": 1}, "instance": "catalog-v2-1", "version": "v2", "zone": None, "request_id": "r1"}
    default = tuple(tuple(p.split(".")) for p in schema.Mirror(service="catalog").ignore)
    assert schema.Mirror(service="catalog").ignore == ["request_id", "instance", "version", "zone"]
    assert mirror.difference(answer(200, primary), answer(200, copy), default) is None
    assert mirror.difference(answer(200, primary), answer(200, copy), ()) == (
        'body differs at instance: "catalog-v1-1" vs "catalog-v2-1"; version: "v1" vs "v2"; zone: "a" vs null')
