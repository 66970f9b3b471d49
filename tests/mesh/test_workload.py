"""A sidecar's workload spec: parsed once, and every mistake named with the key and value."""

from __future__ import annotations

import pytest

from mesh.core.workload import Workload, parse_workload


def test_full_spec_round_trips():
    w = parse_workload("service=catalog, version=v2, app=127.0.0.1:9101, address=127.0.0.3, zone=a, "
                       "weight=3, instance=catalog-2, inbound=15006, outbound=15001, admin=15000, region=eu")
    assert w == Workload("catalog", ("127.0.0.1", 9101), "v2", "127.0.0.3", "a", 3, "catalog-2",
                         15006, 15001, 15000, region="eu")
    assert parse_workload(w.spec()) == w
    assert parse_workload("service=users,app=127.0.0.1:1").name == "users-v1-127.0.0.1"


@pytest.mark.parametrize("spec, error", [
    ("app=127.0.0.1:9101", "workload: service is required (got 'app=127.0.0.1:9101')"),
    ("service=catalog", "workload: app is required (got 'service=catalog')"),
    ("service=catalog,app=127.0.0.1:9101,colour=red",
     "workload: unknown key; expected one of service, version, app, address, zone, region, weight, "
     "instance, inbound, outbound, admin, capture (got 'colour=red')"),
    ("service=a,app=127.0.0.1:1,capture=tproxy",
     "workload: capture: expected one of proxy, transparent (got 'tproxy')"),
    ("service=Catalog,app=127.0.0.1:1",
     "workload: service: expected a name of lowercase letters, digits, '.', '-' or '_' (got 'Catalog')"),
    ("service=a,app=localhost", "workload: app: expected host:port such as 127.0.0.1:9101 (got 'localhost')"),
    ("service=a,app=127.0.0.1:99999", "workload: app: expected host:port such as 127.0.0.1:9101; expected a port from 1 to 65535 (got '99999')"),
    ("service=a,app=127.0.0.1:1,address=here",
     "workload: address: expected an IP address such as 127.0.0.1 (got 'here')"),
    ("service=a,app=127.0.0.1:1,weight=0", "workload: weight: expected an integer from 1 to 10000 (got '0')"),
    ("service=a,app=127.0.0.1:1,inbound=x", "workload: inbound: expected a port from 1 to 65535 (got 'x')"),
    ("service=a,service=b,app=127.0.0.1:1", "workload: service given twice (got 'service=b')"),
])
def test_errors_name_the_key(spec, error):
    with pytest.raises(ValueError) as e:
        parse_workload(spec)
    assert str(e.value) == error
