"""Transform operations, one by one, on headers, query parameters, JSON bodies and paths, in Kong's
order (remove → rename → replace → set → add → append)."""

from __future__ import annotations

import json
import re

import pytest
from mitmproxy.coretypes.multidict import MultiDict
from mitmproxy.http import Headers

from mesh.policies import transform
from mesh.config import load_text
from mesh.config.schema import RequestTransform
from mesh.config.template import compile_value, parse

VALUES = {("claims", "sub"): "alice", ("headers", "x-tier"): "gold", ("path", "id"): "42"}


def ops(**kw) -> transform.Ops:
    def pairs(d):
        return tuple((k, compile_value(v)) for k, v in d.items())
    return transform.Ops(remove=tuple(kw.get("remove", ())), rename=tuple(kw.get("rename", {}).items()),
                         replace=pairs(kw.get("replace", {})), set=pairs(kw.get("set", {})),
                         add=pairs(kw.get("add", {})), append=pairs(kw.get("append", {})))


def headers(**kw) -> Headers:
    return Headers([(k.replace("_", "-").encode(), v.encode()) for k, v in kw.items()])


def fields(h: Headers) -> list[tuple[str, str]]:
    return [(k.decode(), v.decode()) for k, v in h.fields]


HEADER_CASES = [
    ("remove", dict(remove=["x-a"]), [("x-b", "2")]),
    ("remove absent", dict(remove=["x-zz"]), [("x-a", "1"), ("x-b", "2")]),
    ("rename", dict(rename={"x-a": "x-new"}), [("x-b", "2"), ("x-new", "1")]),
    ("rename absent", dict(rename={"x-zz": "x-new"}), [("x-a", "1"), ("x-b", "2")]),
    ("replace present", dict(replace={"x-a": "r-$(claims.sub)"}), [("x-a", "r-alice"), ("x-b", "2")]),
    ("replace absent", dict(replace={"x-zz": "r"}), [("x-a", "1"), ("x-b", "2")]),
    ("set present", dict(set={"x-a": "s"}), [("x-a", "s"), ("x-b", "2")]),
    ("set absent", dict(set={"x-c": "$(headers.x-tier)"}), [("x-a", "1"), ("x-b", "2"), ("x-c", "gold")]),
    ("add absent", dict(add={"x-c": "$(claims.sub)"}), [("x-a", "1"), ("x-b", "2"), ("x-c", "alice")]),
    ("add present", dict(add={"x-a": "no"}), [("x-a", "1"), ("x-b", "2")]),
    ("append", dict(append={"x-a": "more"}), [("x-a", "1"), ("x-b", "2"), ("x-a", "more")]),
    ("missing template value skips", dict(add={"x-c": "$(claims.email)"}), [("x-a", "1"), ("x-b", "2")]),
    ("kong order: rename then add", dict(rename={"x-a": "x-c"}, add={"x-a": "fresh"}),
     [("x-b", "2"), ("x-c", "1"), ("x-a", "fresh")]),
    ("kong order: remove then append", dict(remove=["x-b"], append={"x-b": "3"}), [("x-a", "1"), ("x-b", "3")]),
]


@pytest.mark.parametrize("name, spec, expected", HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_header_operations(name, spec, expected):
    h = headers(x_a="1", x_b="2")
    transform.apply_multi(ops(**spec), h, VALUES)
    assert fields(h) == expected


def test_header_names_are_blind_to_case():
    h = headers(X_Api_Key="k")
    transform.apply_multi(ops(remove=["x-api-key"]), h, VALUES)
    assert fields(h) == []


QUERY_CASES = [
    ("remove", dict(remove=["a"]), [("b", "2")]),
    ("rename", dict(rename={"a": "q"}), [("b", "2"), ("q", "1")]),
    ("replace", dict(replace={"a": "x", "zz": "y"}), [("a", "x"), ("b", "2")]),
    ("set", dict(set={"c": "$(path.id)"}), [("a", "1"), ("b", "2"), ("c", "42")]),
    ("add", dict(add={"a": "no", "c": "yes"}), [("a", "1"), ("b", "2"), ("c", "yes")]),
    ("append", dict(append={"a": "again"}), [("a", "1"), ("b", "2"), ("a", "again")]),
]


@pytest.mark.parametrize("name, spec, expected", QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_query_operations(name, spec, expected):
    q = MultiDict([("a", "1"), ("b", "2")])
    transform.apply_multi(ops(**spec), q, VALUES)
    assert list(q.items(multi=True)) == expected


BODY_CASES = [
    ("remove", dict(remove=["password", "user.secret", "nope.x"]), {"user": {"name": "al"}, "n": 1}),
    ("rename", dict(rename={"n": "count", "user.name": "login"}),
     {"user": {"secret": "s"}, "password": "p", "count": 1, "login": "al"}),
    ("replace", dict(replace={"n": 2, "absent": 3}), {"user": {"name": "al", "secret": "s"}, "password": "p", "n": 2}),
    ("set", dict(set={"n": "$(claims.sub)", "meta.by": "$(claims.sub)"}),
     {"user": {"name": "al", "secret": "s"}, "password": "p", "n": "alice", "meta": {"by": "alice"}}),
    ("add", dict(add={"n": 9, "user.tier": "$(headers.x-tier)"}),
     {"user": {"name": "al", "secret": "s", "tier": "gold"}, "password": "p", "n": 1}),
    ("append", dict(append={"n": 2, "tags": "x"}),
     {"user": {"name": "al", "secret": "s"}, "password": "p", "n": [1, 2], "tags": ["x"]}),
    ("typed values", dict(set={"flags": {"beta": True, "who": ["$(claims.sub)"]}}),
     {"user": {"name": "al", "secret": "s"}, "password": "p", "n": 1, "flags": {"beta": True, "who": ["alice"]}}),
]


@pytest.mark.parametrize("name, spec, expected", BODY_CASES, ids=[c[0] for c in BODY_CASES])
def test_json_body_operations(name, spec, expected):
    doc = {"user": {"name": "al", "secret": "s"}, "password": "p", "n": 1}
    transform.apply_json(ops(**spec), doc, VALUES)
    assert doc == expected


def test_bodies_that_pass_untouched():
    o = ops(set={"a": 1})
    body = b'{"a": 0}'
    assert json.loads(transform.transform_body(o, body, "application/json; charset=utf-8", 100, {})) == {"a": 1}
    assert transform.transform_body(o, body, "application/problem+json", 100, {}) is not None
    assert transform.transform_body(o, body, "text/plain", 100, {}) is None  # not JSON
    assert transform.transform_body(o, body, "application/json", 7, {}) is None  # over max_body
    assert transform.transform_body(o, b"[1, 2]", "application/json", 100, {}) is None  # not an object
    assert transform.transform_body(o, b"{nope", "application/json", 100, {}) is None  # not valid JSON
    deep = b'{"a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"  # nested past the parser (RecursionError)
    assert transform.transform_body(o, deep, "application/json", 20_000, {}) is None
    assert transform.transform_body(o, b"", "application/json", 100, {}) is None  # empty
    assert transform.transform_body(ops(), body, "application/json", 100, {}) is None  # nothing to do


@pytest.mark.parametrize("spec, path, expected", [
    ({"strip_prefix": "/api"}, "/api/items/1", "/items/1"),
    ({"strip_prefix": "/api"}, "/api", "/"),
    ({"strip_prefix": "/api"}, "/other", "/other"),
    ({"regex": r"^/items/(\d+)$", "substitution": r"/item?id=\1"}, "/items/42", "/item?id=42"),
    ({"regex": r"^/u/(?P<name>[a-z]+)", "substitution": r"/users/\g<name>"}, "/u/bob/x", "/users/bob/x"),
    ({"set": "/v2/users/$(path.id)"}, "/whatever", "/v2/users/42"),
    ({"set": "/v2/$(claims.email)"}, "/keep", "/keep"),  # missing value: path unchanged
])
def test_path_operations(spec, path, expected):
    model = RequestTransform.model_validate({"path": spec}).path
    op = transform.PathOp(model.strip_prefix, re.compile(model.regex) if model.regex else None,
                          model.substitution or "", parse(model.set) if model.set else None)
    assert op.apply(path, VALUES) == expected


def test_compile_collects_every_value_the_templates_read():
    config = load_text("""
version: 1
gateway: {listeners: [{name: p, port: 18080}]}
services: {s: {versions: {v1: {endpoints: ["127.0.0.1:1"]}}}}
routes:
  - {name: r, match: {path: {regex: '/u/(?P<id>[0-9]+)'}}, forward: {service: s}, policies: [t]}
policies:
  t:
    transform:
      request:
        add: {headers: {x-user: "$(claims.sub)"}, query: {id: "$(path.id)"}}
        path: {set: "/users/$(path.id)"}
      response:
        set: {body: {served_to: "$(headers.X-Client)"}}
""", "t.yaml")
    t = transform.compile(config.policies["t"].transform, config.routes[0])
    assert {r.key for r in t.refs} == {("claims", "sub"), ("path", "id"), ("headers", "x-client")}
    assert transform.captures(t.path_regex, "/u/7") == {"1": "7", "id": "7"}
    assert transform.captures(t.path_regex, "/x") == {}
    assert transform.claim({"realm": {"roles": ["a"]}}, "realm.roles") == ["a"]
    assert transform.claim(None, "sub") is None
