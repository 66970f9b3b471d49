"""Transformations end to end, one route per operation, through a real gateway to the demo echo
service: each operation on request headers, query and JSON body, on response headers and JSON body,
and each path rewrite; Content-Length stays right."""

from __future__ import annotations

import json
import urllib.request

import pytest

from .conftest import Mesh
from .traffic import config, running, service


def route(name: str, request: dict | None = None, response: dict | None = None, match: dict | None = None) -> tuple:
    transform = {k: v for k, v in (("request", request), ("response", response)) if v is not None}
    return ({"name": name, "match": {"path": match or {"prefix": f"/{name}/"}},
             "forward": {"service": "echo"}, "policies": [name]}, {name: {"transform": transform}})


ROUTES = [
    route("remove", {"remove": {"headers": ["x-drop"], "query": ["drop"], "body": ["drop"]}},
          {"remove": {"headers": ["x-resp"], "body": ["instance"]}}),
    route("rename", {"rename": {"headers": {"x-old": "x-new"}, "query": {"old": "new"}, "body": {"old": "new"}}},
          {"rename": {"headers": {"x-resp": "x-resp-renamed"}, "body": {"service": "svc"}}}),
    route("replace", {"replace": {"headers": {"x-r": "r-$(headers.x-r)", "x-absent": "no"},
                                  "query": {"q": "$(query.q)-2", "absent": "no"},
                                  "body": {"b": "$(headers.x-r)", "absent": "no"}}},
          {"replace": {"headers": {"x-resp": "replaced"}, "body": {"version": "replaced", "absent": "no"}}}),
    route("set", {"set": {"headers": {"x-s": "s"}, "query": {"s": "1"}, "body": {"deep.s": "$(query.q)"}}},
          {"set": {"headers": {"x-resp": "set", "x-new": "set"}, "body": {"meta.gateway": "mitmesh"}}}),
    route("add", {"add": {"headers": {"x-a": "a", "x-present": "ignored"}, "query": {"a": "1", "present": "x"},
                          "body": {"a": [1, 2], "present": "x"}}},
          {"add": {"headers": {"x-resp": "ignored", "x-added": "yes"}, "body": {"added": True, "service": "x"}}}),
    route("append", {"append": {"headers": {"x-ap": "two"}, "query": {"ap": "2"}, "body": {"list": 3, "one": 2}}},
          {"append": {"headers": {"x-resp": "second"}, "body": {"tags": "gw"}}}),
    route("strip", {"path": {"strip_prefix": "/strip"}}),
    route("regex", {"path": {"regex": r"^/regex/items/([0-9]+)$", "substitution": r"/item/\1/detail"}}),
    route("setpath", {"path": {"set": "/users/$(path.id)/profile"}}, match={"regex": "/setpath/(?P<id>[a-z]+)"}),
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transform")
    policies = {}
    for _, p in ROUTES:
        policies.update(p)
    yield from running(tmp, config({"echo": service("echo", "v1")}, [r for r, _ in ROUTES], policies))


def send(mesh: Mesh, path: str, body: dict | None = None, headers: dict | None = None):
    """(the echo service's answer, as the client got it, and the response headers as pairs). The
    answer says what the service received (headers, query, json) and is itself changed by the
    response transforms."""
    data = json.dumps(body).encode() if body is not None else None
    h = {"content-type": "application/json", **(headers or {})} if body is not None else (headers or {})
    req = urllib.request.Request(mesh.url + path, data=data, headers=h, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=5) as r:
        raw = r.read()
        assert int(r.headers["content-length"]) == len(raw)  # right after every seen change
        answer = json.loads(raw)
        return answer, [(k.lower(), v) for k, v in r.headers.items()]


def received_headers(seen: dict) -> dict:
    return {k: v for k, v in seen["headers"]}


def test_remove(mesh):
    seen, headers = send(mesh, "/remove/x?drop=1&keep=2&respond=x-resp:1", {"drop": 1, "keep": 2},
                               {"x-drop": "d", "x-keep": "k"})
    h = received_headers(seen)
    assert "x-drop" not in h and h["x-keep"] == "k"
    assert ["drop", "1"] not in seen["query"] and ["keep", "2"] in seen["query"]
    assert seen["json"] == {"keep": 2}
    assert "x-resp" not in dict(headers) and "instance" not in seen and seen["service"] == "echo"


def test_rename(mesh):
    seen, headers = send(mesh, "/rename/x?old=1&respond=x-resp:1", {"old": 1}, {"x-old": "o"})
    h = received_headers(seen)
    assert "x-old" not in h and h["x-new"] == "o"
    assert ["new", "1"] in seen["query"] and ["old", "1"] not in seen["query"]
    assert seen["json"] == {"new": 1}
    assert dict(headers)["x-resp-renamed"] == "1" and "x-resp" not in dict(headers)
    assert seen["svc"] == "echo" and "service" not in seen


def test_replace(mesh):
    seen, headers = send(mesh, "/replace/x?q=a&respond=x-resp:1", {"b": 0}, {"x-r": "v"})
    h = received_headers(seen)
    assert h["x-r"] == "r-v" and "x-absent" not in h
    assert ["q", "a-2"] in seen["query"] and not any(k == "absent" for k, _ in seen["query"])
    assert seen["json"] == {"b": "v"}
    assert dict(headers)["x-resp"] == "replaced"
    assert seen["version"] == "replaced" and "absent" not in seen


def test_set(mesh):
    seen, headers = send(mesh, "/set/x?q=z&s=0", {"deep": {"k": 1}}, {"x-s": "old"})
    assert received_headers(seen)["x-s"] == "s"
    assert ["s", "1"] in seen["query"] and ["s", "0"] not in seen["query"]
    assert seen["json"] == {"deep": {"k": 1, "s": "z"}}
    assert dict(headers)["x-resp"] == "set" and dict(headers)["x-new"] == "set"
    assert seen["meta"] == {"gateway": "mitmesh"}


def test_add(mesh):
    seen, headers = send(mesh, "/add/x?present=client&respond=x-resp:upstream", {"present": "client"},
                               {"x-present": "client"})
    h = received_headers(seen)
    assert h["x-a"] == "a" and h["x-present"] == "client"
    assert ["a", "1"] in seen["query"] and ["present", "client"] in seen["query"]
    assert seen["json"] == {"present": "client", "a": [1, 2]}
    assert dict(headers)["x-resp"] == "upstream" and dict(headers)["x-added"] == "yes"
    assert seen["added"] is True and seen["service"] == "echo"


def test_append(mesh):
    seen, headers = send(mesh, "/append/x?ap=1&respond=x-resp:first", {"list": [1, 2], "one": 1},
                               {"x-ap": "one"})
    assert [v for k, v in seen["headers"] if k == "x-ap"] == ["one", "two"]
    assert ["ap", "1"] in seen["query"] and ["ap", "2"] in seen["query"]
    assert seen["json"] == {"list": [1, 2, 3], "one": [1, 2]}
    assert [v for k, v in headers if k == "x-resp"] == ["first", "second"]
    assert seen["tags"] == ["gw"]


@pytest.mark.parametrize("sent, upstream", [
    ("/strip/items/1?x=1", "/items/1?x=1"),
    ("/regex/items/42", "/item/42/detail"),
    ("/setpath/bob", "/users/bob/profile"),
])
def test_path_rewrites(mesh, sent, upstream):
    seen, _ = send(mesh, sent)
    assert seen["path"] == upstream


def test_non_json_bodies_pass_untouched(mesh):
    req = urllib.request.Request(mesh.url + "/remove/x", data=b"drop=1", method="POST",
                                 headers={"content-type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.loads(r.read())["body"] == "drop=1"


def test_invalid_transform_is_a_validate_error_with_its_line(tmp_path):
    import subprocess
    import sys

    import yaml

    cfg = config({"echo": service("echo", "v1")}, [r for r, _ in ROUTES[:1]],
                 {"remove": {"transform": {"request": {"add": {"headers": {"x-user": "$(claim.sub)"}},
                                                       "path": {"strip_prefix": "api"}}}}})
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = subprocess.run([sys.executable, "-m", "mesh.cli", "validate", str(path)], capture_output=True, text=True)
    assert out.returncode == 1
    lines = path.read_text().splitlines()
    found = out.stdout.strip().splitlines()
    assert found == [
        f"{path}:{lines.index('            x-user: $(claim.sub)') + 1}: policies.remove.transform.request.add.headers."
        "x-user: invalid template: unknown source 'claim'; expected $(headers.NAME), $(query.NAME), $(path.NAME) "
        "or $(claims.NAME) (got '$(claim.sub)')",
        f"{path}:{lines.index('        path:') + 1}: policies.remove.transform.request.path: strip_prefix: expected "
        "a path starting with '/' (got 'api')",
    ]
