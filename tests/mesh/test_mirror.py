"""Mirror comparison: status first, JSON compared as data (ignored fields left out), other bodies as bytes."""

from __future__ import annotations

import json

from mesh import mirror

J = "application/json"


def answer(status: int, body, ctype: str | None = J):
    return (status, ctype, json.dumps(body).encode() if not isinstance(body, bytes) else body)


def test_equal_answers_have_no_difference():
    assert mirror.difference(answer(200, {"a": 1, "b": 2}), answer(200, {"b": 2, "a": 1})) is None
    assert mirror.difference(answer(200, b"same", "text/plain"), answer(200, b"same", "text/plain")) is None


def test_status_differs_first():
    assert mirror.difference(answer(200, {}), answer(503, {})) == "status 200 vs 503"


def test_json_first_difference_is_named():
    a = {"items": [{"id": 1, "price": 49.9}], "v": "v1"}
    b = {"items": [{"id": 1, "price_cents": 4990}], "v": "v1"}
    assert mirror.difference(answer(200, a), answer(200, b)) == \
        "body differs at items[0].price: 49.9 vs (absent)"
    assert mirror.difference(answer(200, [1, 2]), answer(200, [1])) == "body differs at [1]: 2 vs (absent)"
    assert mirror.difference(answer(200, {"n": 1}), answer(200, {"n": 1.0})) == "body differs at n: 1 vs 1.0"


def test_ignored_fields_do_not_count():
    a = {"instance": "v1-1", "meta": {"at": 1, "ok": True}}
    b = {"instance": "v2-1", "meta": {"at": 2, "ok": True}}
    assert mirror.difference(answer(200, a), answer(200, b), (("instance",), ("meta", "at"))) is None
    assert mirror.difference(answer(200, a), answer(200, b), (("instance",),)) == "body differs at meta.at: 1 vs 2"


def test_other_bodies_compare_as_bytes():
    assert mirror.difference(answer(200, b"abc", "text/plain"), answer(200, b"abcd", "text/plain")) == \
        "body differs (3 vs 4 bytes)"
    assert mirror.difference(answer(200, b"{bad", J), answer(200, b"{bad2", J)) == "body differs (4 vs 5 bytes)"


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
