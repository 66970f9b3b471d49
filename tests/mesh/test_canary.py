"""Canary: sticky points are stable and spread evenly; weight edits keep the file's comments, are
validated before writing, and leave the file alone when they cannot be made."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.core import canary
from mesh.config import load
from mesh.core.routing import ForwardAction, compile_routes

MESH = """\
# the demo mesh
version: 1
gateway:
  listeners: [{name: public, port: 18080}]
services:
  catalog:
    versions:
      v1: {endpoints: ["127.0.0.1:1"]}
      v2: {endpoints: ["127.0.0.1:2"]}
      v3: {endpoints: ["127.0.0.1:3"]}
routes:
  # testers opt in
  - name: catalog-canary
    match: {path: {prefix: /c/}, headers: {x-canary: always}}
    forward: {service: catalog, version: v2}
  - name: catalog
    match: {path: {prefix: /c/}}
    forward:
      service: catalog
      weights: {v1: 90, v2: 10}   # the rollout
"""


def test_points_are_stable_and_even():
    assert canary.point("alice", "catalog") == canary.point("alice", "catalog")
    assert canary.point("alice", "catalog") != canary.point("alice", "users")
    points = [canary.point(f"user-{i}", "catalog") for i in range(4000)]
    assert all(0 <= p < 1 for p in points)
    assert 0.07 <= sum(p >= 0.9 for p in points) / len(points) <= 0.13


def test_a_growing_canary_keeps_its_users():
    small = ForwardAction("c", ("c/v1", "c/v2"), (90, 100))
    large = ForwardAction("c", ("c/v1", "c/v2"), (75, 100))
    for i in range(2000):
        p = canary.point(f"u{i}", "c")
        if small.pick_cluster(p) == "c/v2":
            assert large.pick_cluster(p) == "c/v2"


@pytest.mark.parametrize("current, wanted, expected", [
    ({"v1": 90, "v2": 10}, {"v2": 25}, {"v1": 75, "v2": 25}),
    ({"v1": 90, "v2": 10}, {"v2": 100}, {"v1": 0, "v2": 100}),
    ({"v1": 90, "v2": 10}, {"v3": 10}, {"v1": 81, "v2": 9, "v3": 10}),
    ({"v1": 50, "v2": 50}, {"v1": 70, "v2": 30}, {"v1": 70, "v2": 30}),
    ({"v1": 0, "v2": 100}, {"v2": 40}, {"v1": 60, "v2": 40}),
])
def test_new_weights(current, wanted, expected):
    after = canary.new_weights(current, wanted, ["v1", "v2", "v3"])
    assert after == expected and sum(after.values()) == 100


@pytest.mark.parametrize("items, error", [
    (["v2"], "expected VERSION=PERCENT such as v2=25 (got 'v2')"),
    (["v2=x"], "expected VERSION=PERCENT such as v2=25 (got 'v2=x')"),
    (["v2=101"], "expected a percentage from 0 to 100 (got 'v2=101')"),
    (["v1=60", "v2=50"], "the percentages add up to more than 100 (got v1=60, v2=50)"),
])
def test_bad_assignments(items, error):
    with pytest.raises(canary.CanaryError) as e:
        canary.parse_assignments(items)
    assert str(e.value) == error


def test_set_weights_edits_in_place_keeping_comments(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH)
    changes = canary.set_weights(path, "catalog", {"v2": 25})
    assert [(c.route, c.before, c.after) for c in changes] == [
        ("catalog", {"v1": 90, "v2": 10}, {"v1": 75, "v2": 25})]
    text = path.read_text()
    assert text == MESH.replace("weights: {v1: 90, v2: 10}", "weights: {v1: 75, v2: 25}")
    route = compile_routes(load(path)).routes[1]
    assert route.action.clusters == ("catalog/v1", "catalog/v2") and route.action.cumulative == (75, 100)


def test_set_weights_refuses_what_it_cannot_do(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH)
    for service, wanted, route, error in [
        ("users", {"v2": 5}, None, "unknown service; expected one of catalog (got 'users')"),
        ("catalog", {"v9": 5}, None, "unknown version; expected one of v1, v2, v3 (got 'v9')"),
        ("catalog", {"v2": 5}, "catalog-canary", f"route 'catalog-canary' splits catalog by weights "
                                                 f"(forward.weights) in {path}"),
    ]:
        with pytest.raises(canary.CanaryError) as e:
            canary.set_weights(path, service, wanted, route)
        assert error in str(e.value)
        assert path.read_text() == MESH


def test_set_weights_validates_before_writing(tmp_path):
    path = tmp_path / "mesh.yaml"
    broken = MESH.replace("port: 18080", "port: 99999")  # someone's half-done edit
    path.write_text(broken)
    with pytest.raises(canary.CanaryError) as e:
        canary.set_weights(path, "catalog", {"v2": 25})
    assert str(e.value) == ("the change would make the config invalid, nothing written:\n"
                            f"{path}:4: gateway.listeners[0].port: expected a value <= 65535 (got 99999)")
    assert path.read_text() == broken


def test_set_weights_keeps_other_indentation_styles(tmp_path):
    path = tmp_path / "mesh.yaml"
    flat = MESH.replace("  - name", "- name").replace("\n    match", "\n  match").replace(
        "\n    forward:\n      service: catalog\n      weights", "\n  forward:\n    service: catalog\n    weights")
    flat = flat.replace("\n    forward: {service", "\n  forward: {service")
    path.write_text(flat)
    load(path)
    canary.set_weights(path, "catalog", {"v2": 50})
    assert path.read_text() == flat.replace("{v1: 90, v2: 10}", "{v1: 50, v2: 50}")


def _changed_bytes(before: bytes, after: bytes) -> tuple[bytes, bytes]:
    """The one differing stretch of two byte strings: (what it was, what it became)."""
    head = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
    tail = 0
    while tail < min(len(before), len(after)) - head and before[-1 - tail] == after[-1 - tail]:
        tail += 1
    return before[head:len(before) - tail], after[head:len(after) - tail]


def test_set_weights_changes_only_the_weights_bytes_of_the_demo(tmp_path):
    """The demo's mesh.yaml has flow lists of mappings (`allow: [{principals: …}]`), comments and
    quoted strings that a YAML round trip rewrites; only the two numbers may change."""
    demo = (Path(__file__).resolve().parents[2] / "mesh.yaml").read_bytes()
    (tmp_path / "certs").symlink_to(Path(__file__).resolve().parents[2] / "certs")
    path = tmp_path / "mesh.yaml"
    path.write_bytes(demo)
    canary.set_weights(path, "catalog", {"v2": 25})
    after = path.read_bytes()
    assert len(after) == len(demo)
    assert after == demo.replace(b"weights: {v1: 90, v2: 10}", b"weights: {v1: 75, v2: 25}")
    assert _changed_bytes(demo, after) == (b"90, v2: 10", b"75, v2: 25")


@pytest.mark.parametrize("weights, wanted, expected", [
    # block style, CRLF line ends and a comment after the last entry are kept
    ("weights:\r\n        v1: 90  # stable\r\n        v2: 10  # canary\r\n", {"v2": 30},
     "weights:\r\n        v1: 70  # stable\r\n        v2: 30  # canary\r\n"),
    # a version not listed yet is appended in the mapping's own style
    ("weights: {v1: 100}\n", {"v3": 5}, "weights: {v1: 95, v3: 5}\n"),
    ("weights:\n        v1: 100   # all\n      sticky: {cookie: u}\n", {"v2": 10},
     "weights:\n        v1: 90   # all\n        v2: 10\n      sticky: {cookie: u}\n"),
    # an unchanged value keeps its spelling
    ("weights: {v1: +50, v2: 0x32}\n", {"v2": 50}, "weights: {v1: +50, v2: 0x32}\n"),
])
def test_set_weights_edits_each_style_in_place(tmp_path, weights, wanted, expected):
    head = MESH.split("      weights:")[0]
    path = tmp_path / "mesh.yaml"
    path.write_bytes((head + "      " + weights).encode())
    canary.set_weights(path, "catalog", wanted)
    assert path.read_bytes() == (head + "      " + expected).encode()
