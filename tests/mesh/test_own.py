"""A proxy's own addresses: which discovered addresses reach its listeners, admin or etcd."""

from __future__ import annotations

import pytest

from mesh.core import own

GATEWAY = own.own([("127.0.0.1", 8080, "gateway listener 'public'"), ("0.0.0.0", 8443, "gateway listener 'tls'")],
                  ("127.0.0.1", 9901), ("http://127.0.0.1:2379", "http://localhost:2380"))
SIDECAR = own.own([("127.0.0.7", 15001, "outbound listener 'outbound'")], ("127.0.0.7", 15000),
                  inbound=("127.0.0.7", 15006, "inbound listener 'inbound'"), service="payments")


@pytest.mark.parametrize("target, bound, reached", [
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.2", "127.0.0.1", False),  # a socket bound to one loopback address gets no other
    ("0.0.0.0", "127.0.0.1", True),  # a connection to the unspecified address goes to the loopback
    ("::ffff:127.0.0.1", "127.0.0.1", True),
    ("[::1]", "::1", True),
    ("localhost", "127.0.0.1", True),
    ("LocalHost.", "::1", True),
    ("127.9.9.9", "0.0.0.0", True),  # a wildcard socket gets every local connection
    ("localhost", "0.0.0.0", True),
    ("10.0.0.5", "0.0.0.0", False),  # its other host addresses are not known here
    ("127.0.0.1", "localhost", True),
    ("db.internal", "db.internal", True),
    ("db.internal", "127.0.0.1", False),
    ("127.0.0.7", "127.0.0.8", False),
])
def test_reaches(target, bound, reached):
    assert own.reaches(target, bound) is reached


@pytest.mark.parametrize("who, service, address, port, why", [
    (GATEWAY, "catalog", "127.0.0.1", 9901, "it is this proxy's admin listener"),
    (GATEWAY, "catalog", "0.0.0.0", 9901, "it is this proxy's admin listener"),
    (GATEWAY, "catalog", "127.0.0.1", 8080, "it is this proxy's gateway listener 'public'"),
    (GATEWAY, "catalog", "127.3.3.3", 8443, "it is this proxy's gateway listener 'tls'"),
    (GATEWAY, "catalog", "127.0.0.1", 2379,
     "it is this proxy's control plane's etcd (http://127.0.0.1:2379)"),
    (GATEWAY, "catalog", "127.0.0.1", 2380,
     "it is this proxy's control plane's etcd (http://localhost:2380)"),
    (GATEWAY, "catalog", "127.0.0.2", 9901, None),  # another host's admin (here: loopback address)
    (GATEWAY, "catalog", "127.0.0.1", 19101, None),
    (SIDECAR, "orders", "127.0.0.7", 15000, "it is this proxy's admin listener"),
    (SIDECAR, "orders", "127.0.0.7", 15001, "it is this proxy's outbound listener 'outbound'"),
    (SIDECAR, "payments", "127.0.0.7", 15001, "it is this proxy's outbound listener 'outbound'"),
    (SIDECAR, "orders", "127.0.0.7", 15006,
     "it is this proxy's inbound listener 'inbound' (of service payments)"),
    # its own announcement: a pod may call its own service, through its own inbound
    (SIDECAR, "payments", "127.0.0.7", 15006, None),
])
def test_refusal(who, service, address, port, why):
    assert who.refusal(service, address, port) == why
