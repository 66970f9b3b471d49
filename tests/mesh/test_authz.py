"""Authorization rules, Istio semantics: DENY first, then one ALLOW rule must match if any exist."""

from __future__ import annotations

import pytest

from mesh.policies import authz
from mesh.config.security import Authz

ORDERS = "spiffe://mitmesh.local/ns/demo/sa/orders"
USERS = "spiffe://mitmesh.local/ns/demo/sa/users"
PROD = "spiffe://mitmesh.local/ns/prod/sa/orders"


def req(peer=None, ip="10.1.2.3", method="GET", path="/charge", claims=None):
    return authz.Request(peer, ip, method, path, claims)


def decide(spec: dict, request: authz.Request) -> bool:
    return authz.compile_policy(Authz.model_validate(spec), "route r").decide(request)[0]


ONLY_ORDERS = {"allow": [{"principals": ["mitmesh.local/ns/demo/sa/orders"]}]}


@pytest.mark.parametrize("spec, request_, allowed", [
    ({}, req(), True),  # no rules: everything not denied passes
    ({"allow": []}, req(ORDERS), False),  # an empty ALLOW list allows nothing
    (ONLY_ORDERS, req(ORDERS), True),
    (ONLY_ORDERS, req(USERS), False),
    (ONLY_ORDERS, req(None), False),  # no mTLS identity never matches a principal
    ({"allow": [{"principals": [ORDERS]}]}, req(ORDERS), True),  # spiffe:// form too
    ({"allow": [{"principals": ["*"]}]}, req(USERS), True),
    ({"allow": [{"principals": ["*"]}]}, req(None), False),
    ({"allow": [{"principals": ["*/sa/orders"]}]}, req(PROD), True),
    ({"allow": [{"namespaces": ["demo"]}]}, req(USERS), True),
    ({"allow": [{"namespaces": ["demo"]}]}, req(PROD), False),
    ({"deny": [{"not_principals": ["*"]}]}, req(None), False),  # deny callers without identity
    ({"deny": [{"not_principals": ["*"]}]}, req(USERS), True),
    ({"deny": [{"principals": [USERS]}], "allow": [{"namespaces": ["demo"]}]}, req(USERS), False),  # deny first
    ({"allow": [{"methods": ["POST"], "paths": ["/charge"]}]}, req(ORDERS, method="POST"), True),
    ({"allow": [{"methods": ["POST"], "paths": ["/charge"]}]}, req(ORDERS, method="GET"), False),  # AND
    ({"allow": [{"methods": ["POST"]}, {"paths": ["/charge"]}]}, req(ORDERS, method="GET"), True),  # OR
    ({"allow": [{"paths": ["/admin/*"]}]}, req(path="/admin/users"), True),
    ({"allow": [{"paths": ["/admin/*"]}]}, req(path="/administrator"), False),
    ({"allow": [{"paths": ["*.json"]}]}, req(path="/a/b.json"), True),
    ({"deny": [{"not_paths": ["/public/*"]}]}, req(path="/private"), False),
    ({"deny": [{"not_methods": ["GET", "HEAD"]}]}, req(method="DELETE"), False),
    ({"allow": [{"ip_blocks": ["10.0.0.0/8"]}]}, req(ip="10.9.9.9"), True),
    ({"allow": [{"ip_blocks": ["10.0.0.0/8"]}]}, req(ip="192.0.2.1"), False),
    ({"deny": [{"not_ip_blocks": ["127.0.0.0/8"]}]}, req(ip="192.0.2.1"), False),
    ({"allow": [{"claims": {"scope": ["payments:write"]}}]}, req(claims={"scope": "a payments:write"}), True),
    ({"allow": [{"claims": {"groups": ["admin", "ops"]}}]}, req(claims={"groups": ["dev", "ops"]}), True),
    ({"allow": [{"claims": {"groups": ["admin"]}}]}, req(claims={"groups": ["dev"]}), False),
    ({"allow": [{"claims": {"realm.roles": ["x"]}}]}, req(claims={"realm": {"roles": ["x"]}}), True),
    ({"allow": [{"claims": {"email_verified": [True]}}]}, req(claims={"email_verified": True}), True),
    ({"allow": [{"claims": {"sub": ["a"]}}]}, req(claims=None), False),
])
def test_decisions(spec, request_, allowed):
    assert decide(spec, request_) is allowed


def test_reasons_name_the_rule():
    policy = authz.compile_policy(Authz.model_validate(
        {"deny": [{"methods": ["DELETE"]}], "allow": [{"principals": [ORDERS]}]}), "route payments")
    assert policy.decide(req(ORDERS, method="DELETE")) == (False, "denied by deny rule 0 of route payments")
    assert policy.decide(req(USERS)) == (False, f"no allow rule of route payments matches peer {USERS}")
    assert policy.decide(req()) == (False, "no allow rule of route payments matches a caller without mTLS identity")
    assert policy.decide(req(ORDERS)) == (True, "allowed by allow rule 0 of route payments")
