"""RouteAuthn, compiled: what names a verified credential (never the credential), and which token
headers go whatever authenticates, so the one-pass API-key path knows what to strip."""

from __future__ import annotations

import hashlib

import pytest

from mesh.config.security import ApiKey, Jwt
from mesh.policies import apikeys, authn
from mesh.policies.httpclient import Http
from mesh.policies.jwks import JwksCache

KEY = "mk_unit_acme_0123456789abcdef"


def keys(**config) -> authn.ApiKeys:
    return authn.ApiKeys(ApiKey(consumers={"acme": {"key_sha256": apikeys.digest(KEY)}}, **config))


def token(**config) -> authn.JwtVerifier:
    c = Jwt(issuer="https://idp", jwks_uri="https://idp/jwks", **config)
    return authn.JwtVerifier(c, JwksCache(c.jwks_uri, Http()))


def test_a_credential_is_named_by_its_hash_never_itself():
    assert authn.identity("jwt", "eyJ.a.b") == "jwt:" + hashlib.sha256(b"eyJ.a.b").hexdigest()[:24]
    verified = keys().verify(KEY)
    # an API key's identity is the start of the digest the config already holds
    assert verified.credential == "api_key:" + apikeys.digest(KEY)[:24]
    assert verified.credential == authn.identity("api_key", KEY)
    assert KEY not in verified.credential and verified.principal == "acme"


@pytest.mark.parametrize("jwt, key, token_headers, one_pass", [
    (None, {}, frozenset(), True),
    ({}, {}, {b"authorization"}, True),
    ({"token_from": [{"header": "Authorization", "prefix": "Bearer "}, {"header": "X-Token"}]}, {},
     {b"authorization", b"x-token"}, True),
    # forward_token keeps a token that authenticated: beside a verified key it goes all the same
    ({"forward_token": True}, {}, {b"authorization"}, True),
    # a token in a cookie is removed through the cookie jar: the general path does it
    ({"token_from": [{"cookie": "session"}]}, {}, frozenset(), False),
    ({"token_from": [{"header": "authorization"}, {"cookie": "session"}]}, {}, {b"authorization"},
     False),
    ({"token_from": [{"cookie": "session"}], "forward_token": True}, {}, frozenset(), False),
    # the key's header is also a token's, or a claim goes upstream under a token's name
    ({"token_from": [{"header": "x-api-key"}]}, {}, {b"x-api-key"}, False),
    ({"forward_claims": {"sub": "authorization"}}, {}, {b"authorization"}, False),
    ({}, {"query": "apikey"}, {b"authorization"}, False),  # a key in the URL: the general path
])
def test_token_headers_and_the_one_pass_key_path(jwt, key, token_headers, one_pass):
    route = authn.RouteAuthn("r", jwt_verifier=token(**jwt) if jwt is not None else None,
                             api_keys=keys(**key))
    assert route.token_headers == token_headers
    assert (route.key_header is not None) == one_pass


def test_credentials_that_are_not_text_are_refused_as_credentials():
    """A header's bytes that are not UTF-8 reach authentication surrogate-escaped (mitmproxy's
    `Headers`): an unknown key and a malformed token, never an exception."""
    with pytest.raises(authn.AuthnError) as e:
        keys().verify("mk_\udcff\udcfe")
    assert (e.value.status, e.value.error) == (401, "invalid_api_key")
    route = authn.RouteAuthn("r", jwt_verifier=token())
    for bad in ("ab\udcffcd.ef.gh", "eyJ.caf\u00e9.x"):
        with pytest.raises(authn.AuthnError) as e:
            route.authenticate(lambda name: f"Bearer {bad}" if name == "authorization" else None,
                               lambda name: None, lambda name: None)
        assert (e.value.status, e.value.error, e.value.reason) == (401, "invalid_token",
                                                                   "malformed token")


def test_keys_never_fetched_are_stale_on_a_machine_booted_moments_ago(monkeypatch):
    """time.monotonic() counts from the machine's boot: a proxy started in its first `ttl` seconds
    (a VM or container host just up) must still fetch its keys at start."""
    cache = JwksCache("http://127.0.0.1:9/jwks.json", Http(), ttl=300.0)
    monkeypatch.setattr("mesh.policies.jwks.time.monotonic", lambda: 42.0)  # 42 s after boot
    assert cache.stale() and cache.may_refresh()


async def test_an_introspection_answer_nested_past_the_parser_is_unavailable_not_raised():
    """An authorization server's answer nested deeper than Python's json parses
    raised RecursionError (no ValueError) out of the policy; it is an unusable answer (503)."""
    from aiohttp import web

    from mesh.config.security import OAuth2
    from mesh.runtime import procs

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 5_000 + b"]" * 5_000, content_type="application/json")

    app = web.Application()
    app.router.add_post("/introspect", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = procs.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    http = Http()
    try:
        intro = authn.Introspector(OAuth2(introspection_url=f"http://127.0.0.1:{port}/introspect",
                                          client_id="gw", client_secret="s"), http, "s")
        with pytest.raises(authn.AuthnError) as e:
            await intro.verify("opaque-token")
        assert (e.value.status, e.value.error) == (503, "authn_unavailable")
    finally:
        await http.close()
        await runner.cleanup()
