"""Path confusion: one path, many spellings. Each variant is sent as raw bytes to a real gateway and a
real sidecar inbound, both guarding the same app with GUARD (deny /app/admin*, allow only /app/* and
/shop/public*): a spelling of a denied path is denied or refused and never reaches the app, and an
allowed one reaches it in its normalized form, the one every decision was made on."""

from __future__ import annotations

import pytest

from .conftest import assert_refused, request, targets

DENIED, REJECTED, SERVED = "denied", "rejected", "served"

CASES = [
    # spellings of /app/admin/... (denied): the proxy must see through each
    ("plain-deny-prefix", "/app/admin/users", DENIED),
    ("percent-encoded-unreserved-in-deny-prefix", "/app/%61dmin/users", DENIED),
    ("every-letter-percent-encoded", "/app/%61%64%6D%69%6E/users", DENIED),
    ("lowercase-hex-escapes", "/app/%61%64%6d%69%6e/users", DENIED),
    ("double-slash-before-deny-prefix", "/app//admin/users", DENIED),
    ("many-slashes-before-deny-prefix", "/app////admin/users", DENIED),
    ("leading-double-slash", "//app/admin/users", DENIED),
    ("dot-segment-before-deny-prefix", "/app/./admin/users", DENIED),
    ("dot-dot-segment-into-deny-prefix", "/app/x/../admin/users", DENIED),
    ("dot-dot-from-allowed-prefix-into-deny", "/shop/public/../../app/admin", DENIED),
    ("percent-encoded-dot-segment", "/app/%2e/admin/users", DENIED),
    ("percent-encoded-dot-dot-segment", "/app/x/%2e%2e/admin/users", DENIED),
    ("mixed-case-encoded-dot-dot", "/app/x/%2E%2e/admin/users", DENIED),
    ("half-encoded-dot-dot", "/app/x/.%2e/admin/users", DENIED),
    ("backslash-as-separator", "/app\\admin\\users", DENIED),
    ("backslash-dot-dot", "/app/x\\..\\admin", DENIED),
    ("dot-dot-above-root", "/../../app/admin/users", DENIED),
    ("trailing-dot-segment", "/app/admin/.", DENIED),
    ("absolute-form-target", "http://x/app/%61dmin/users", DENIED),
    # leaving the allowed prefix (allow: /app/*, /shop/public*)
    ("dot-dot-out-of-allowed-prefix", "/shop/public/../private", DENIED),
    ("encoded-dot-dot-out-of-allowed-prefix", "/shop/public/%2e%2e/private", DENIED),
    # spellings a proxy and its upstream may read differently: refused outright (400)
    ("encoded-slash-into-deny-prefix", "/app%2Fadmin/users", (REJECTED, "escaped_slash_in_path")),
    ("lowercase-encoded-slash", "/app%2fadmin/users", (REJECTED, "escaped_slash_in_path")),
    ("encoded-backslash", "/app%5Cadmin/users", (REJECTED, "escaped_slash_in_path")),
    ("encoded-slashes-out-of-allowed-prefix", "/shop/public%2F..%2F..%2Fapp%2Fadmin",
     (REJECTED, "escaped_slash_in_path")),
    ("encoded-nul", "/app/public%00/../admin", (REJECTED, "invalid_path")),
    ("raw-nul-in-path", "/app/\x00admin", (REJECTED, "invalid_path")),
    ("control-character-in-path", "/app/\x01admin", (REJECTED, "invalid_path")),
    ("malformed-percent-encoding", "/app/%zzadmin", (REJECTED, "invalid_path")),
    ("truncated-percent-encoding", "/app/admin%2", (REJECTED, "invalid_path")),
    ("fragment-in-target", "/app/admin#x", (REJECTED, "invalid_path")),
    ("tab-in-request-target", "/app/\tadmin", (REJECTED, "bad_request")),
    # allowed paths reach the app in the form the decisions saw
    ("allowed-path-unchanged", "/app/public?next=/app/admin", (SERVED, "/app/public?next=/app/admin")),
    ("encoded-unreserved-in-allowed-prefix", "/shop/%70ublic/item", (SERVED, "/shop/public/item")),
    ("double-slashes-in-allowed-path", "/shop//public//item", (SERVED, "/shop/public/item")),
    ("dot-dot-staying-inside-allowed-prefix", "/shop/x/../public/item", (SERVED, "/shop/public/item")),
    ("reserved-escape-kept-encoded", "/app/a%3Fb", (SERVED, "/app/a%3Fb")),
    ("lowercase-reserved-escape-upper-cased", "/app/a%3fb", (SERVED, "/app/a%3Fb")),
    ("double-encoded-dots-stay-data", "/app/x/%252e%252e/admin", (SERVED, "/app/x/%252e%252e/admin")),
    ("encoded-tilde-decoded", "/app/%7Euser", (SERVED, "/app/~user")),
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, engine):
    with targets(tmp_path_factory.mktemp("paths"), engine=engine) as m:
        yield m


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
@pytest.mark.parametrize("path, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_path_variant(mesh, where, path, expected):
    target = mesh.targets[where]
    before = target.hits()
    reply = target.send(request("GET", path, {"Connection": "close"}))
    if expected == DENIED:
        assert_refused(reply, 403, "access_denied")
    elif expected[0] == REJECTED:
        assert_refused(reply, 400, expected[1])
    else:
        assert reply.status == 200, reply.raw[:300]
        assert reply.json["raw_path"] == expected[1]
        assert target.hits() == before + 1
        return
    assert target.hits() == before, "a refused request reached the app"
