"""Authn: real tokens from the demo IdP (services/auth.py) on loopback, verified by the real chain.

Every bad token is a JSON 401 (never a 500); keys rotate; unknown key ids cannot hammer the IdP;
the IdP going down keeps the last good keys; opaque tokens are introspected and cached.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from addons import keys
from addons.authn import Authn
from mesh.policies import apikeys
from mesh.runtime import procs
from mesh.policies.httpclient import basic_auth
from services import auth
from services.app import Identity

KEY = "mk_test_key_for_acme_0123456789abcdef"


class Idp:
    def __init__(self, port: int, app: web.Application, runner: web.AppRunner):
        self.port, self.app, self.runner = port, app, runner
        self.url = f"http://127.0.0.1:{port}"

    @property
    def state(self) -> dict:
        return self.app[auth.STATE]

    @property
    def signer(self) -> auth.Signer:
        return self.state["signer"]

    async def token(self, client="demo-app", secret=None, scope=None) -> str:
        secret = secret or auth.CLIENTS[client].secret
        data = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
        async with aiohttp.ClientSession() as s:
            async with s.post(self.url + "/oauth/token", data=data,
                              headers={"authorization": basic_auth(client, secret)}) as r:
                assert r.status == 200, await r.text()
                return (await r.json())["access_token"]

    def sign(self, **changes) -> str:
        """A token signed with the IdP's real current key, with some claims changed."""
        now = int(time.time())
        claims = {"iss": self.url, "sub": "demo-app", "aud": "mitmesh", "iat": now, "nbf": now,
                  "exp": now + 300, "scope": "users:read"}
        headers = {"kid": self.signer.keys[0][0]}
        headers.update(changes.pop("headers", {}))
        claims.update(changes)
        return jwt.encode({k: v for k, v in claims.items() if v is not None}, self.signer.keys[0][1],
                          algorithm="RS256", headers=headers)

    async def stop(self):
        await self.runner.cleanup()


@pytest.fixture
async def idp():
    port = procs.free_port()
    app = auth.build(Identity("auth", "v1", "auth-test"), f"http://127.0.0.1:{port}", "mitmesh", 300)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server = Idp(port, app, runner)
    yield server
    await runner.cleanup()


def head(upstream: int) -> str:
    """A config's first lines: the gateway's listener and the `users` service at `upstream`."""
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  users: {{versions: {{v1: {{endpoints: ["127.0.0.1:{upstream}"]}}}}}}"""


def config(idp: Idp, upstream: int, jwt_extra: str = "", oauth_extra: str = "") -> str:
    return head(upstream) + f"""
routes:
  - name: jwt
    match: {{path: {{prefix: /jwt/}}}}
    forward: {{service: users}}
    policies: [idp-jwt, read-users]
  - name: any-token
    match: {{path: {{prefix: /token/}}}}
    forward: {{service: users}}
    policies: [idp-jwt, idp-opaque]
  - name: keys
    match: {{path: {{prefix: /keys/}}}}
    forward: {{service: users}}
    policies: [partners]
  - name: open
    match: {{path: {{prefix: /open/}}}}
    forward: {{service: users}}
policies:
  idp-jwt:
    jwt:
      issuer: {idp.url}
      audiences: [mitmesh]
      jwks_uri: {idp.url}/.well-known/jwks.json
      forward_claims: {{sub: x-user, scope: x-scopes}}
      {jwt_extra}
  idp-opaque:
    oauth2:
      introspection_url: {idp.url}/oauth/introspect
      client_id: gateway
      client_secret: gateway-secret
      issuer: {idp.url}
      forward_claims: {{sub: x-user}}
      {oauth_extra}
  read-users:
    require: {{scopes: [users:read]}}
  partners:
    api_key:
      query: apikey
      consumers:
        acme: {{key_sha256: {apikeys.digest(KEY)}, claims: {{tier: gold}}}}
"""


def body(flow) -> dict:
    return json.loads(flow.response.content)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(idp: Idp) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"iss": idp.url, "sub": "x", "aud": "mitmesh", "exp": int(time.time()) + 60}).encode())
    return f"{header}.{payload}."


def hs256_with_public_key(idp: Idp) -> str:
    """The classic algorithm-confusion attack: HMAC keyed with the RSA public key's PEM."""
    pem = idp.signer.keys[0][1].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": idp.signer.keys[0][0]}).encode())
    payload = b64(json.dumps({"iss": idp.url, "sub": "x", "aud": "mitmesh", "scope": "users:read",
                              "exp": int(time.time()) + 60}).encode())
    sig = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(sig)}"


def tamper(token: str, part: int) -> str:
    parts = token.split(".")
    if part == 1:  # a claim changed, the signature kept
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=="))
        claims["scope"] = "users:read admin"
        parts[1] = b64(json.dumps(claims).encode())
    else:
        sig = bytearray(base64.urlsafe_b64decode(parts[2] + "=="))
        sig[len(sig) // 2] ^= 0x01
        parts[2] = b64(bytes(sig))
    return ".".join(parts)


def foreign_key(idp: Idp) -> str:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode({"iss": idp.url, "aud": "mitmesh", "exp": int(time.time()) + 60}, other,
                      algorithm="RS256", headers={"kid": "not-a-known-kid"})


BAD_TOKENS = [
    ("expired", lambda i: i.sign(exp=int(time.time()) - 3600), "token expired"),
    ("not yet valid", lambda i: i.sign(nbf=int(time.time()) + 3600), "token not yet valid (nbf or iat in the future)"),
    ("wrong issuer", lambda i: i.sign(iss="http://evil.example"), "wrong issuer"),
    ("wrong audience", lambda i: i.sign(aud="someone-else"), "wrong audience"),
    ("no exp", lambda i: i.sign(exp=None), "token lacks the required claim exp"),
    ("exp as a string", lambda i: i.sign(exp="999999"), "token expired"),
    ("future exp as a string", lambda i: i.sign(exp=str(int(time.time()) + 3600)),
     "claim exp is not a number of seconds (RFC 7519 NumericDate)"),
    ("nbf as a string", lambda i: i.sign(nbf=str(int(time.time()) - 10)),
     "claim nbf is not a number of seconds (RFC 7519 NumericDate)"),
    ("exp as true", lambda i: i.sign(exp=True), "token expired"),  # PyJWT reads it as 1
    ("alg none", unsigned, "unsigned token: the 'none' algorithm is never accepted"),
    ("tampered claims", lambda i: tamper(i.sign(), 1), "signature verification failed"),
    ("tampered signature", lambda i: tamper(i.sign(), 2), "signature verification failed"),
    ("unknown kid", foreign_key, "unknown key id 'not-a-known-kid'"),
    ("HS256 with the RS256 public key", hs256_with_public_key, "algorithm HS256 is not allowed (allowed: ES256, RS256)"),
    ("malformed base64", lambda i: "eyJhbGciOi!!.e30.x", "malformed token"),
    ("not a JWT at all", lambda i: "hello", "malformed token"),
    ("100 KB token", lambda i: "eyJhbGciOiJSUzI1NiJ9." + "A" * 100_000 + ".sig",
     "token of 100025 bytes is larger than 8192"),
]


@pytest.mark.parametrize("name, make, reason", BAD_TOKENS, ids=[b[0] for b in BAD_TOKENS])
async def test_bad_tokens_are_401_with_a_json_reason(gateway, upstream_app, idp, name, make, reason):
    users = await upstream_app("users")
    async with gateway(config(idp, users)) as gw:
        flow = await gw.send("/jwt/x", headers={"authorization": f"Bearer {make(idp)}"})
        assert flow.response.status_code == 401, flow.response.content
        assert body(flow) == {"error": "invalid_token", "reason": reason,
                              "request_id": flow.response.headers["x-request-id"]}
        assert flow.response.headers["www-authenticate"] == 'Bearer realm="jwt", error="invalid_token"'
        assert keys.get(flow).principal is None


async def test_hs256_confusion_is_refused_even_when_hs256_is_allowed(gateway, upstream_app, idp):
    users = await upstream_app("users")
    async with gateway(config(idp, users, jwt_extra="algorithms: [RS256, HS256]")) as gw:
        flow = await gw.send("/jwt/x", headers={"authorization": f"Bearer {hs256_with_public_key(idp)}"})
        assert flow.response.status_code == 401
        assert body(flow)["reason"].startswith("no HS256 key with id")


async def test_valid_jwt_reaches_upstream_with_claims_and_without_the_token(gateway, upstream_app, idp):
    users = await upstream_app("users")
    async with gateway(config(idp, users)) as gw:
        token = await idp.token()
        flow = await gw.send("/jwt/me", headers={"authorization": f"Bearer {token}", "x-user": "forged-admin"})
        assert flow.response.status_code == 200, flow.response.content
        seen = body(flow)["headers"]
        assert seen["x-user"] == "demo-app" and seen["x-scopes"] == " ".join(auth.CLIENTS["demo-app"].scopes)
        assert "authorization" not in seen
        st = keys.get(flow)
        assert st.principal == "demo-app" and st.claims["client_id"] == "demo-app"
        assert flow.metadata[keys.PRINCIPAL] == "demo-app"
        # forged claim headers are dropped on every route, authenticated or not
        flow = await gw.send("/open/x", headers={"x-user": "forged-admin", "x-consumer": "acme"})
        assert "x-user" not in body(flow)["headers"] and "x-consumer" not in body(flow)["headers"]


async def test_missing_token_and_missing_scope(gateway, upstream_app, idp):
    users = await upstream_app("users")
    async with gateway(config(idp, users)) as gw:
        flow = await gw.send("/jwt/x")
        assert flow.response.status_code == 401 and body(flow)["error"] == "missing_credentials"
        assert body(flow)["reason"] == "route jwt needs credentials: JWT in authorization header (Bearer)"
        assert flow.response.headers["www-authenticate"] == 'Bearer realm="jwt"'
        token = await idp.token(scope="orders:read")
        flow = await gw.send("/jwt/x", headers={"authorization": f"Bearer {token}"})
        assert flow.response.status_code == 403
        assert body(flow)["error"] == "insufficient_scope"
        assert body(flow)["reason"] == "route jwt requires scope users:read"
        assert flow.response.headers["www-authenticate"] == 'Bearer realm="jwt", error="insufficient_scope"'


async def test_token_after_key_rotation_verifies(gateway, upstream_app, idp):
    users = await upstream_app("users")
    async with gateway(config(idp, users, jwt_extra="unknown_kid_refresh: 200ms")) as gw:
        old = await idp.token()
        assert (await gw.send("/jwt/x", headers={"authorization": f"Bearer {old}"})).response.status_code == 200
        idp.signer.rotate()
        await asyncio.sleep(0.25)
        new = await idp.token()
        assert jwt.get_unverified_header(new)["kid"] != jwt.get_unverified_header(old)["kid"]
        for token in (new, old):  # the previous key stays published, so older tokens still pass
            flow = await gw.send("/jwt/x", headers={"authorization": f"Bearer {token}"})
            assert flow.response.status_code == 200, flow.response.content
        assert idp.state["stats"]["jwks_fetches"] == 2


async def test_a_flood_of_unknown_kids_fetches_the_jwks_at_most_once(gateway, upstream_app, idp):
    users = await upstream_app("users")
    async with gateway(config(idp, users, jwt_extra="unknown_kid_refresh: 1m")) as gw:
        good = await idp.token()
        assert (await gw.send("/jwt/x", headers={"authorization": f"Bearer {good}"})).response.status_code == 200
        fetches = idp.state["stats"]["jwks_fetches"]
        flows = await asyncio.gather(*(  # from 40 addresses: one alone would be throttled after 20
            gw.send("/jwt/x", headers={"authorization": f"Bearer {idp.sign(headers={'kid': f'kid-{i}'})}"},
                    client=f"10.0.0.{i + 1}")
            for i in range(40)))
        assert {f.response.status_code for f in flows} == {401}
        assert idp.state["stats"]["jwks_fetches"] - fetches <= 1


async def test_idp_down_keeps_the_last_good_keys(gateway, upstream_app, idp):
    users = await upstream_app("users")
    async with gateway(config(idp, users, jwt_extra="unknown_kid_refresh: 0s")) as gw:
        good = await idp.token()
        assert (await gw.send("/jwt/x", headers={"authorization": f"Bearer {good}"})).response.status_code == 200
        await idp.stop()
        flow = await gw.send("/jwt/x", headers={"authorization": f"Bearer {foreign_key(idp)}"})
        assert flow.response.status_code == 401  # the refetch failed; the kid is still unknown
        flow = await gw.send("/jwt/x", headers={"authorization": f"Bearer {good}"})
        assert flow.response.status_code == 200  # last good keys kept
        authn = next(a for a in gw.addons if isinstance(a, Authn))
        assert "ClientConnectorError" in next(iter(authn.jwks.values())).error


async def test_no_keys_at_all_is_503_not_401(gateway, upstream_app, idp):
    users = await upstream_app("users")
    await idp.stop()
    async with gateway(config(idp, users)) as gw:
        flow = await gw.send("/jwt/x", headers={"authorization": f"Bearer {idp.sign()}"})
        assert flow.response.status_code == 503 and body(flow)["error"] == "authn_unavailable"


async def test_opaque_tokens_are_introspected_and_cached(gateway, upstream_app, idp):
    users = await upstream_app("users")
    async with gateway(config(idp, users)) as gw:
        opaque = await idp.token("legacy-app")
        assert "." not in opaque
        for _ in range(3):
            flow = await gw.send("/token/x", headers={"authorization": f"Bearer {opaque}"})
            assert flow.response.status_code == 200, flow.response.content
            assert body(flow)["headers"]["x-user"] == "legacy-app"
        assert idp.state["stats"]["introspections"] == 1  # cached
        assert keys.get(flow).claims["scope"] == "users:read catalog:read"
        # a JWT on the same route is verified locally, without introspection
        flow = await gw.send("/token/x", headers={"authorization": f"Bearer {await idp.token()}"})
        assert flow.response.status_code == 200 and idp.state["stats"]["introspections"] == 1
        flow = await gw.send("/token/x", headers={"authorization": "Bearer not-a-real-token"})
        assert flow.response.status_code == 401
        assert body(flow) | {"request_id": ""} == {"error": "invalid_token", "reason": "token is not active",
                                                   "request_id": ""}


@pytest.mark.parametrize("claim, value, status", [
    ("aud", {"a": 1}, 401),             # an object: no audience at all
    ("aud", [{"a": 1}, "mitmesh"], 200),  # the strings of a list count
    ("exp", 10 ** 400, 200),            # far future, with no float to subtract now from
    ("exp", True, 401),                 # a boolean is no number of seconds
], ids=["aud-object", "aud-list-with-an-object", "exp-huge", "exp-boolean"])
async def test_an_odd_introspection_answer_is_judged_not_raised(gateway, upstream_app, idp, claim,
                                                               value, status):
    """What the authorization server answers is judged (RFC 7662 §2.2); found by fuzzing _judge:
    an `aud` object raised TypeError and an `exp` of 10**400 OverflowError, out of the policy."""
    users = await upstream_app("users")
    async with gateway(config(idp, users, oauth_extra="audiences: [mitmesh]")) as gw:
        opaque = await idp.token("legacy-app")
        idp.state["opaque"][opaque] |= {"aud": "mitmesh", claim: value}
        flow = await gw.send("/token/x", headers={"authorization": f"Bearer {opaque}"})
        assert flow.response.status_code == status, flow.response.content
        if status == 401:
            assert body(flow)["error"] == "invalid_token"


async def test_introspection_down_is_503(gateway, upstream_app, idp):
    users = await upstream_app("users")
    async with gateway(config(idp, users)) as gw:
        opaque = await idp.token("legacy-app")
        await idp.stop()
        flow = await gw.send("/token/x", headers={"authorization": f"Bearer {opaque}"})
        assert flow.response.status_code == 503 and body(flow)["error"] == "authn_unavailable"
        assert body(flow)["reason"] == "token introspection is unavailable"  # its URL and error: logs only
        assert "token introspection failed: " in str(flow.metadata[keys.DECISIONS])


async def test_api_keys(gateway, upstream_app, idp):
    users = await upstream_app("users")
    async with gateway(config(idp, users)) as gw:
        flow = await gw.send("/keys/x", headers={"x-api-key": KEY})
        assert flow.response.status_code == 200
        seen = body(flow)["headers"]
        assert seen["x-consumer"] == "acme" and "x-api-key" not in seen
        assert keys.get(flow).principal == "acme" and keys.get(flow).claims["tier"] == "gold"
        flow = await gw.send(f"/keys/x?apikey={KEY}&page=2")
        assert flow.response.status_code == 200 and body(flow)["path"] == "/keys/x?page=2"
        flow = await gw.send("/keys/x", headers={"x-api-key": KEY + "x"})
        assert flow.response.status_code == 401 and body(flow)["error"] == "invalid_api_key"
        flow = await gw.send("/keys/x")
        assert flow.response.status_code == 401
        assert body(flow)["reason"] == ("route keys needs credentials: API key in x-api-key header")
        assert flow.response.headers["www-authenticate"] == 'ApiKey realm="keys", header="x-api-key"'


async def test_keys_are_fetched_at_start_so_requests_find_them_in_memory(gateway, upstream_app, idp):
    users = await upstream_app("users")
    # a fetch is given 15 s instead of the default 2 s: how fast a starved CI machine answers is
    # not what this test is about
    async with gateway(config(idp, users, jwt_extra="fetch_timeout: 15s")) as gw:
        authn = next(a for a in gw.addons if isinstance(a, Authn))
        await authn.running()
        # wait for the fetch itself to have finished (the keys are in memory), not for the IdP to
        # have been asked: on a loaded machine the two are seconds apart. The deadline only bounds
        # a hang; what is checked is unchanged: one fetch at start, none for the request.
        deadline = asyncio.get_running_loop().time() + 30
        while not (authn.jwks and all(c.keys for c in authn.jwks.values())):
            assert asyncio.get_running_loop().time() < deadline, [c.error for c in authn.jwks.values()]
            await asyncio.sleep(0.02)
        assert idp.state["stats"]["jwks_fetches"] == 1
        flow = await gw.send("/jwt/x", headers={"authorization": f"Bearer {await idp.token()}"})
        assert flow.response.status_code == 200 and idp.state["stats"]["jwks_fetches"] == 1


def key_routes(upstream: int, idp: Idp) -> str:
    digest = apikeys.digest(KEY)
    other = apikeys.digest(KEY + "-other")
    consumers = f"{{acme: {{key_sha256: {digest}, claims: {{tier: gold}}}}, beta: {{key_sha256: {other}}}}}"
    jwt = f"issuer: {idp.url}, audiences: [mitmesh], jwks_uri: {idp.url}/.well-known/jwks.json"
    return head(upstream) + f"""
routes:
  - {{name: plain, match: {{path: {{prefix: /plain/}}}}, forward: {{service: users}}, policies: [plain]}}
  - {{name: keep, match: {{path: {{prefix: /keep/}}}}, forward: {{service: users}}, policies: [keep]}}
  - {{name: gold, match: {{path: {{prefix: /gold/}}}}, forward: {{service: users}}, policies: [claims, gold]}}
  - {{name: both, match: {{path: {{prefix: /both/}}}}, forward: {{service: users}},
     policies: [jwt, plain]}}
  - {{name: both-keep, match: {{path: {{prefix: /both-keep/}}}}, forward: {{service: users}},
     policies: [jwt-kept, keep]}}
policies:
  plain: {{api_key: {{consumers: {consumers}}}}}
  keep: {{api_key: {{header: X-Key, forward_key: true, forward_claims: {{}}, consumers: {consumers}}}}}
  claims: {{api_key: {{forward_claims: {{consumer: x-consumer, tier: X-Tier}}, consumers: {consumers}}}}}
  gold: {{require: {{claims: {{tier: [gold]}}}}}}
  jwt: {{jwt: {{{jwt}, forward_claims: {{sub: x-user}},
               token_from: [{{header: authorization, prefix: "Bearer "}}, {{header: x-token}}]}}}}
  jwt-kept: {{jwt: {{{jwt}, forward_token: true}}}}
"""


async def test_api_key_in_a_header_one_pass_does_what_the_general_path_does(gateway, upstream_app,
                                                                             idp):
    """The one-pass path for a key in a header (`Authn._api_key`) against `authenticate` and
    `_accept` on the same requests: same answer, decisions, caller, credential, upstream headers
    and the request's header fields in their order; beside a JWT policy, the tokens no one verified
    are gone on both paths (unless forward_token keeps them)."""
    users = await upstream_app("users")
    forged, token = forged_admin(idp), await idp.token()
    requests = [
        ("/plain/x", [("x-api-key", KEY)]), ("/plain/x", [("X-API-KEY", KEY)]),
        ("/plain/x", [("x-api-key", KEY + "-other")]), ("/plain/x", [("x-api-key", KEY + "x")]),
        ("/plain/x", [("x-api-key", "")]), ("/plain/x", []), ("/plain/x", [("x-api-key", KEY), ("x-api-key", KEY)]),
        ("/keep/x", [("x-key", KEY)]), ("/keep/x", [("x-api-key", KEY)]),
        ("/gold/x", [("x-api-key", KEY)]), ("/gold/x", [("x-api-key", KEY + "-other")]),
        ("/both/x", [("authorization", f"Bearer {forged}"), ("x-api-key", KEY), ("accept", "*/*")]),
        ("/both/x", [("Authorization", "Basic YTpi"), ("x-token", forged), ("x-api-key", KEY),
                     ("authorization", f"Bearer {forged}")]),
        ("/both/x", [("authorization", f"Bearer {forged}"), ("x-api-key", KEY + "x")]),
        ("/both/x", [("authorization", f"Bearer {token}"), ("x-api-key", "")]),
        ("/both/x", [("authorization", f"Bearer {forged}")]),
        ("/both-keep/x", [("authorization", f"Bearer {forged}"), ("x-key", KEY)]),
    ]

    def seen(flow) -> tuple:
        st = keys.get(flow)
        volatile = ("x-request-id", "traceparent", "x-forwarded-for", "forwarded")
        upstream = [(k, v) for k, v in body(flow).get("headers", {}).items() if k not in volatile]
        sent = [(k, v) for k, v in flow.request.headers.fields if k.lower().decode() not in volatile]  # in order
        authn_decisions = [what for who, what in st.decisions if who == "authn"]
        return (flow.response.status_code, body(flow).get("error"), upstream, sent, authn_decisions,
                st.principal, st.credential)

    async with gateway(key_routes(users, idp)) as gw:
        plans = [r.plan.authn for r in gw.state.snapshot.routes.routes if r.plan.authn is not None]
        assert len(plans) == 5 and all(p.key_header is not None for p in plans)
        fast = []
        for path, headers in requests:
            fast.append(await gw.send(path, headers=headers))
        for plan in plans:
            plan.key_header = None  # the general path
        for (path, headers), earlier in zip(requests, fast):
            again = await gw.send(path, headers=headers)
            assert seen(earlier) == seen(again), (path, headers)


def forged_admin(idp: Idp) -> str:
    """A bearer token an attacker makes: HS256 signed with junk, claiming to be admin."""
    claims = {"iss": idp.url, "sub": "admin", "aud": "mitmesh", "exp": int(time.time()) + 60,
              "scope": "payments:charge"}
    return jwt.encode(claims, "junk" * 8, algorithm="HS256")


@pytest.mark.parametrize("fast", [True, False], ids=["one-pass", "general"])
async def test_a_token_beside_a_verified_key_never_reaches_the_upstream(gateway, upstream_app, idp,
                                                                         fast):
    users = await upstream_app("users")
    async with gateway(key_routes(users, idp)) as gw:
        if not fast:
            for r in gw.state.snapshot.routes.routes:
                if r.plan.authn is not None:
                    r.plan.authn.key_header = None
        forged = forged_admin(idp)
        flow = await gw.send("/both/x", headers=[("authorization", f"Bearer {forged}"),
                                                 ("x-token", forged), ("x-api-key", KEY)])
        assert flow.response.status_code == 200
        seen = body(flow)["headers"]
        assert "authorization" not in seen and "x-token" not in seen and "x-api-key" not in seen
        assert seen["x-consumer"] == seen["x-user"] == "acme"  # the verified caller, not "admin"
        st = keys.get(flow)
        assert (st.principal, st.credential) == ("acme", "api_key:" + apikeys.digest(KEY)[:24])
        # forward_token: true keeps a token that authenticated, not one beside a verified key
        flow = await gw.send("/both-keep/x",
                             headers={"authorization": f"Bearer {forged}", "x-key": KEY})
        assert flow.response.status_code == 200
        assert "authorization" not in body(flow)["headers"]
        assert body(flow)["headers"]["x-key"] == KEY  # forward_key: the key that authenticated


async def test_a_key_beside_a_verified_token_never_reaches_the_upstream(gateway, upstream_app, idp):
    users = await upstream_app("users")
    async with gateway(key_routes(users, idp)) as gw:
        token = await idp.token()
        bearer = f"Bearer {token}"
        flow = await gw.send("/both/x", headers=[("authorization", bearer), ("x-api-key", "")])
        assert flow.response.status_code == 200
        seen = body(flow)["headers"]
        assert "x-api-key" not in seen and "authorization" not in seen
        assert seen["x-user"] == "demo-app"
        st = keys.get(flow)
        assert st.credential == "jwt:" + hashlib.sha256(token.encode()).hexdigest()[:24]
        # a key that is there is checked, whatever else comes with it: a wrong one is refused
        flow = await gw.send("/both/x", headers={"authorization": bearer, "x-api-key": KEY + "x"})
        assert flow.response.status_code == 401 and body(flow)["error"] == "invalid_api_key"
