"""The config store's pure parts: where a proxy reads its config, and which revision it runs."""

from __future__ import annotations

import pytest

from mesh.runtime.store import Location, Revision, parse_location, wanted_revision


def test_location_round_trip():
    loc = parse_location("etcd://127.0.0.1:2379,127.0.0.2:2379/demo")
    assert loc == Location(("http://127.0.0.1:2379", "http://127.0.0.2:2379"), "demo")
    assert str(loc) == "etcd://127.0.0.1:2379,127.0.0.2:2379/demo"


@pytest.mark.parametrize("text, error", [
    ("mesh.yaml", "expected etcd[s]://HOST:PORT[,HOST:PORT]/MESH (got 'mesh.yaml')"),
    ("etcd://127.0.0.1:2379", "the mesh id after the hosts (got 'etcd://127.0.0.1:2379')"),
    ("etcd://127.0.0.1:2379/a/b", "the mesh id after the hosts"),
    ("etcd://127.0.0.1/demo", "expected host:port or http://host:port (got '127.0.0.1')"),
])
def test_bad_locations(text, error):
    with pytest.raises(ValueError) as e:
        parse_location(text)
    assert error in str(e.value)


@pytest.mark.parametrize("current, proxy, wanted", [
    ({"revision": 3}, "gw-a", 3),
    ({"revision": 3, "canary": {"revision": 4, "proxies": ["gw-a"]}}, "gw-a", 4),
    ({"revision": 3, "canary": {"revision": 4, "proxies": ["gw-a"]}}, "gw-b", 3),
    ({}, "gw-a", None),
])
def test_wanted_revision(current, proxy, wanted):
    assert wanted_revision(current, proxy) == wanted


def test_revision_json_and_label():
    rev = Revision(7, "version: 1\n", "abc", "mesh.yaml", 1.5, "note", rollback_of=3)
    assert Revision.from_json(rev.to_json()) == rev
    assert rev.label == "mesh.yaml@r7"
