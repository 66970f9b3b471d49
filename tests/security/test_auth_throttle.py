"""Guessing credentials: failed authentications are counted per client IP (default 20 per minute);
over the limit an address gets a JSON 429 with Retry-After before its credentials are checked.
Against a real gateway; each attack comes from a loopback address of its own."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from mesh.policies import apikeys
from mesh.runtime import procs

from .peers import request, running

pytestmark = pytest.mark.e2e

KEY = "mk_live_acme_0123456789abcdefghij"
ISSUER = "https://idp.test"


def config(tmp, limit: dict | None = None) -> dict:
    p = procs.free_port
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**RSAAlgorithm.to_jwk(signing.public_key(), as_dict=True), "kid": "k1", "alg": "RS256"}
    (tmp / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    gateway = {"listeners": [{"name": "public", "port": p()}], "admin": {"port": p()}}
    if limit is not None:
        gateway["auth_failures"] = limit
    return {
        "version": 1, "gateway": gateway,
        "services": {"users": {"versions": {"v1": {"launch": {"app": "users"}, "endpoints": [f"127.0.0.1:{p()}"]}}}},
        "routes": [
            {"name": "keys", "match": {"path": {"prefix": "/keys/"}}, "forward": {"service": "users"},
             "policies": ["partners"]},
            {"name": "jwt", "match": {"path": {"prefix": "/jwt/"}}, "forward": {"service": "users"},
             "policies": ["tokens"]},
            {"name": "open", "match": {"path": {"prefix": "/open/"}}, "forward": {"service": "users"}},
        ],
        "policies": {"partners": {"api_key": {"consumers": {"acme": {"key_sha256": apikeys.digest(KEY)}}}},
                     "tokens": {"jwt": {"issuer": ISSUER, "jwks_file": "jwks.json"}}},
    }


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("throttle")
    with running(tmp, config(tmp)) as m:  # gateway.auth_failures not set: the default, 20 per minute
        m.port = m.config["gateway"]["listeners"][0]["port"]
        yield m


def guess(port: int, source: str, n: int, path: str = "/keys/users", **headers) -> list[int]:
    return [request(port, "GET", path, source=source,
                    headers={"x-api-key": f"mk_guess_{i:04d}", **headers})[0] for i in range(n)]


def forged() -> str:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode({"iss": ISSUER, "sub": "mallory", "exp": int(time.time()) + 60}, other,
                      algorithm="RS256", headers={"kid": "k1"})


def test_api_key_guessing(guarded):
    assert guess(guarded.port, "127.77.1.1", 20) == [401] * 20
    status, body, headers = request(guarded.port, "GET", "/keys/users", source="127.77.1.1",
                                    headers={"x-api-key": "mk_guess_more"})
    assert status == 429 and body["error"] == "too_many_failed_authentications"
    assert body["reason"].startswith("too many failed authentications from this address (limit 20 per minute)")
    assert body["request_id"] == headers["x-request-id"]
    assert 1 <= int(headers["retry-after"]) <= 60


def test_jwt_forging(guarded):
    token = forged()
    statuses = [request(guarded.port, "GET", "/jwt/users", source="127.77.2.1",
                        headers={"authorization": f"Bearer {token}"})[0] for _ in range(21)]
    assert statuses == [401] * 20 + [429]


def test_right_key_from_a_guessing_address(guarded):
    guess(guarded.port, "127.77.3.1", 20)
    assert request(guarded.port, "GET", "/keys/users", source="127.77.3.1", headers={"x-api-key": KEY})[0] == 429


def test_guessing_behind_rotating_x_forwarded_for(guarded):
    """The counted address is the connection's, not what the client claims to forward for."""
    statuses = [request(guarded.port, "GET", "/keys/users", source="127.77.4.1",
                        headers={"x-api-key": f"mk_guess_{i}", "x-forwarded-for": f"203.0.113.{i}"})[0]
                for i in range(21)]
    assert statuses == [401] * 20 + [429]


def test_lockout_of_other_addresses(guarded):
    """One address guessing does not lock anyone else out."""
    guess(guarded.port, "127.77.5.1", 21)
    assert request(guarded.port, "GET", "/keys/users", source="127.77.5.2", headers={"x-api-key": KEY})[0] == 200


def test_lockout_by_missing_credentials(guarded):
    """Requests without credentials (a browser's first try) are not failures: they lock no one out."""
    statuses = [request(guarded.port, "GET", "/keys/users", source="127.77.6.1")[0] for _ in range(30)]
    assert statuses == [401] * 30
    assert request(guarded.port, "GET", "/keys/users", source="127.77.6.1", headers={"x-api-key": KEY})[0] == 200


def test_lockout_of_routes_without_authentication(guarded):
    guess(guarded.port, "127.77.7.1", 21)
    assert request(guarded.port, "GET", "/open/users", source="127.77.7.1")[0] == 200


def test_guessing_spread_over_workers(tmp_path, redis_server):
    """Two workers, one count: with Redis storage every worker sees the failures of the others."""
    cfg = config(tmp_path, {"minute": 10, "storage": redis_server.url})
    with running(tmp_path, cfg, workers=2) as m:
        port = cfg["gateway"]["listeners"][0]["port"]
        assert guess(port, "127.77.8.1", 10) == [401] * 10  # a new connection each: both workers serve
        time.sleep(0.3)  # the last failures are counted in the background
        assert guess(port, "127.77.8.1", 4) == [429] * 4
