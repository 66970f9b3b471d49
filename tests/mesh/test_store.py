"""The config store's pure parts: where a proxy reads its config, which revision it runs, and
whether the operator signed it."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from discovery.etcdtls import EtcdTls
from mesh.runtime.store import (Floor, Location, Revision, check_revision, on_loopback,
                                operator_tls_defaults, parse_location, proxy_location,
                                wanted_revision)
from mesh.security import pki
from mesh.security.signing import Signer

ENV = ("MITMESH_IDENTITY_DIR", "MITMESH_ETCD_CACERT", "MITMESH_ETCD_CERT", "MITMESH_ETCD_KEY")


def test_location_round_trip():
    loc = parse_location("etcd://127.0.0.1:2379,127.0.0.2:2379/demo")
    assert loc == Location(("http://127.0.0.1:2379", "http://127.0.0.2:2379"), "demo")
    assert str(loc) == "etcd://127.0.0.1:2379,127.0.0.2:2379/demo"


def test_etcds_is_https_to_every_member():
    loc = parse_location("etcds://127.0.0.1:2379,127.0.0.2:2379/demo")
    assert loc.endpoints == ("https://127.0.0.1:2379", "https://127.0.0.2:2379") and loc.secure
    assert str(loc) == "etcds://127.0.0.1:2379,127.0.0.2:2379/demo"
    assert not parse_location("etcd://127.0.0.1:2379/demo").secure


def test_a_proxy_presents_its_workload_certificate(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    tls = proxy_location("etcds://127.0.0.1:2379/demo", "catalog").tls
    assert (tls.ca, tls.cert, tls.key) == ("certs/mesh-ca.pem", "certs/workload/catalog.pem",
                                           "certs/workload/catalog.key")
    assert proxy_location("etcd://127.0.0.1:2379/demo", "catalog").tls is None  # plain: no files
    monkeypatch.setenv("MITMESH_IDENTITY_DIR", "/srv/mesh")
    monkeypatch.setenv("MITMESH_ETCD_CERT", "/srv/other.pem")
    tls = proxy_location("etcds://127.0.0.1:2379/demo", "catalog").tls
    assert (tls.ca, tls.cert, tls.key) == ("/srv/mesh/mesh-ca.pem", "/srv/other.pem",
                                           "/srv/mesh/workload/catalog.key")


def test_the_operator_presents_the_operator_certificate(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    assert operator_tls_defaults() == {"cacert": "certs/mesh-ca.pem", "cert": "certs/operator.pem",
                                       "key": "certs/operator.key"}
    monkeypatch.setenv("MITMESH_ETCD_KEY", "/k")
    assert operator_tls_defaults()["key"] == "/k"


@pytest.mark.parametrize("text, local", [
    ("etcd://127.0.0.1:2379,127.0.0.9:2379/m", True),
    ("etcd://localhost:2379/m", True),
    ("etcd://127.0.0.1:2379,10.0.0.7:2379/m", False),
    ("etcd://etcd.example:2379/m", False),
])
def test_on_loopback(text, local):
    assert on_loopback(parse_location(text)) is local


@pytest.mark.parametrize("text, error", [
    ("etcds://127.0.0.1/demo", "expected host:port or https://host:port (got '127.0.0.1')"),
    ("etc://127.0.0.1:2379/demo", "expected etcd[s]://HOST:PORT[,HOST:PORT]/MESH"),
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
    rev = Revision(7, "version: 1\n", "abc", "mesh.yaml", 1.5, "note", rollback_of=3,
                   signature="c2ln", certificate="PEM")
    assert Revision.from_json(rev.to_json()) == rev
    assert rev.label == "mesh.yaml@r7"
    old = '{"revision": 7, "text": "", "digest": "abc", "file": "m.yaml", "pushed_at": 1.5}'
    assert Revision.from_json(old).signature == ""  # stored before revisions were signed


@pytest.fixture
def signed(tmp_path):
    """(revision 7 signed by the operator, the etcds:// store of mesh demo trusting its CA)."""
    certs = tmp_path / "certs"
    pki.init_mesh(certs, "mitmesh.local")
    pki.ensure_operator(certs)
    cert, key = map(str, pki.operator_paths(certs))
    location = parse_location("etcds://127.0.0.1:2379/demo").with_tls(
        EtcdTls(str(pki.mesh_ca_cert(certs)), cert, key))
    rev = Revision(7, "version: 1\n", DIGEST, "mesh.yaml", 1.5, "note", rollback_of=3)
    return rev.signed("demo", Signer.load(cert, key)), location


DIGEST = hashlib.sha256(b"version: 1\n").hexdigest()[:12]


def test_an_operator_signed_revision_is_run(signed):
    rev, location = signed
    check_revision(rev, 7, location)


@pytest.mark.parametrize("change", [
    {"text": "version: 1\nroutes: []\n"}, {"file": "other.yaml"}, {"revision": 8},
    {"digest": "abd"}, {"message": "hi"}, {"pushed_at": 2.5}, {"rollback_of": None},
])
def test_the_signature_covers_what_a_proxy_applies(signed, change):
    rev, location = signed
    with pytest.raises(ValueError, match="not signed by the operator, refused: the signature does "
                                         "not match its content"):
        check_revision(dataclasses.replace(rev, **change), change.get("revision", 7), location)


def test_a_revision_whose_digest_is_another_texts_is_refused(signed):
    """`history` and /status name a revision by its digest: a record signed with another text's
    (the one it replaced, say) would read as that one. Refused in a plain store too."""
    rev, location = signed
    certs = Path(location.tls.ca).parent
    other = dataclasses.replace(rev, digest="0123456789ab").signed(
        "demo", Signer.load(*pki.operator_paths(certs)))
    message = (f"mesh.yaml@r7: its digest '0123456789ab' is not its text's ({DIGEST}), refused")
    for where in (location, parse_location("etcd://127.0.0.1:2379/demo")):
        with pytest.raises(ValueError) as e:
            check_revision(other, 7, where)
        assert str(e.value) == message


def test_a_revision_signed_for_another_mesh_is_refused(signed):
    rev, location = signed
    with pytest.raises(ValueError, match="the signature does not match"):
        check_revision(rev, 7, dataclasses.replace(location, mesh="other"))


def test_a_revision_stored_under_another_number_is_refused(signed):
    rev, location = signed
    with pytest.raises(ValueError) as e:
        check_revision(rev, 9, location)
    assert str(e.value) == "mesh.yaml@r7: stored as revision 9, refused (got revision 7)"


def test_an_unsigned_revision_asks_for_a_push(signed):
    rev, location = signed
    unsigned = dataclasses.replace(rev, signature="", certificate="")
    with pytest.raises(ValueError) as e:
        check_revision(unsigned, 7, location)
    assert str(e.value) == (
        "mesh.yaml@r7: not signed by the operator, refused: it is not signed (stored before "
        "mitmesh signed revisions, or around `mitmesh config`): push the file again with "
        "`mitmesh config push FILE --store etcds://127.0.0.1:2379/demo`")
    check_revision(unsigned, 7, parse_location("etcd://127.0.0.1:2379/demo"))  # plain: trusted


def test_an_etcds_store_without_a_ca_refuses_everything(signed):
    rev, location = signed
    with pytest.raises(ValueError, match="no mesh CA to check its signature against"):
        check_revision(rev, 7, location.with_tls(None))


def test_a_signature_near_its_end_is_exported_and_warned_about(tmp_path, caplog):
    """A proxy that starts after the signing certificate's end refuses the revision (as TUF refuses
    expired metadata): the end is a metric, and in its last 14 days a warning says to push again."""
    import datetime as dt
    import logging
    import time

    from mesh.runtime.reload import note_signature
    from mesh.runtime.store import signed_until
    from mesh.telemetry import metrics

    certs = tmp_path / "certs"
    pki.init_mesh(certs, "mitmesh.local")
    location = parse_location("etcds://127.0.0.1:2379/demo")
    for days, warned in ((90, False), (5, True)):
        pki.issue_operator(certs, lifetime=dt.timedelta(days=days))
        signer = Signer.load(*map(str, pki.operator_paths(certs)))
        rev = Revision(7, "version: 1\n", "abc", "mesh.yaml", 1.5).signed("demo", signer)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mitmesh.config"):
            until = note_signature(rev, location)
        assert until == signed_until(rev) and abs(until - time.time() - days * 86400) < 3600
        assert metrics.CONFIG_SIGNED_UNTIL._value.get() == until
        assert ("push the config again" in caplog.text) is warned
    unsigned = Revision(7, "version: 1\n", "abc", "mesh.yaml", 1.5)
    assert signed_until(unsigned) is None and note_signature(unsigned, location) is None


def test_a_floor_keeps_the_newest_selection_followed(tmp_path, monkeypatch):
    """What a proxy followed last, per store and etcd cluster: an older selection is a problem,
    the same or a newer one is not and raises it; an unreadable file is no floor."""
    monkeypatch.setenv("MITMESH_STATE_DIR", str(tmp_path / "state"))
    secure = parse_location("etcds://127.0.0.1:2379/demo")
    assert Floor.of(parse_location("etcd://127.0.0.1:2379/demo"), "7") is None  # trusted whole
    assert Floor.of(secure, None) is None
    floor = Floor.of(secure, "7")
    assert floor.path == tmp_path / "state" / "selection-demo-7.json"
    assert floor.read() is None and floor.problem({"latest": 1, "at": 5.0}) is None
    floor.raise_to({"revision": 3, "latest": 4, "at": 50.0})
    floor.raise_to({"revision": 1, "latest": 2, "at": 60.0})  # older: not lowered
    assert floor.read() == (4, 50.0)
    assert floor.problem({"latest": 4, "at": 50.0}) is None
    assert floor.problem({"latest": 5, "at": 1.0}) is None
    older = floor.problem({"latest": 4, "at": 49.0})
    assert older.startswith("the selection was made before the one this host followed last "
                            "(latest revision 4 at 50, kept in ")
    assert Floor.of(secure, "8").problem({"latest": 1, "at": 1.0}) is None  # another cluster
    floor.path.write_text("not json")
    assert floor.read() is None
