"""Demo OAuth2 authorization server: client-credentials tokens (JWT or opaque), its JWKS with key
rotation, and RFC 7662 token introspection.

Demo clients (a demo's fixed data, like the users service's alice and bob):

| client id  | secret         | scopes                                  | tokens |
|------------|----------------|-----------------------------------------|--------|
| demo-app   | demo-secret    | users:read orders:read orders:write catalog:read payments:charge | JWT (RS256, RFC 9068) |
| legacy-app | legacy-secret  | users:read catalog:read                 | opaque, checked by introspection |
| gateway    | gateway-secret | (none)                                  | may call /oauth/introspect |
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from .app import arguments, identity, make_app, parse_duration, serve


@dataclass(frozen=True)
class Client:
    secret: str
    scopes: tuple[str, ...]
    format: str = "jwt"  # jwt | opaque
    introspect: bool = False


CLIENTS = {
    "demo-app": Client("demo-secret", ("users:read", "orders:read", "orders:write", "catalog:read",
                                       "payments:charge")),
    "legacy-app": Client("legacy-secret", ("users:read", "catalog:read"), "opaque"),
    "gateway": Client("gateway-secret", (), introspect=True),
}


@dataclass
class Signer:
    """RSA signing keys, newest first; JWKS keeps the previous ones so issued tokens still verify."""

    keep: int = 2
    keys: list[tuple[str, rsa.RSAPrivateKey]] = field(default_factory=list)

    def rotate(self) -> str:
        kid = secrets.token_hex(8)
        self.keys.insert(0, (kid, rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        del self.keys[self.keep:]
        return kid

    def sign(self, claims: dict) -> str:
        kid, key = self.keys[0]
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, "typ": "at+jwt"})

    def jwks(self) -> dict:
        out = []
        for kid, key in self.keys:
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            out.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        return {"keys": out}

    def verify(self, token: str, issuer: str) -> dict | None:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = next(k for i, k in self.keys if i == kid)
            return jwt.decode(token, key.public_key(), algorithms=["RS256"], issuer=issuer,
                              options={"verify_aud": False, "require": ["exp"]})
        except (jwt.PyJWTError, StopIteration):
            return None


STATE = web.AppKey("auth", dict)


def _client(request: web.Request, form) -> tuple[str, Client] | None:
    """Client authentication: HTTP Basic (preferred) or client_id/client_secret in the form."""
    cid, secret = form.get("client_id"), form.get("client_secret")
    header = request.headers.get("authorization", "")
    if header[:6].lower() == "basic ":
        try:
            raw = base64.b64decode(header[6:], validate=True).decode()
            cid, secret = (unquote_plus(part) for part in raw.partition(":")[::2])
        except (binascii.Error, UnicodeDecodeError):
            return None
    client = CLIENTS.get(cid or "")
    if client is None or not hmac.compare_digest(client.secret.encode(), (secret or "").encode()):
        return None
    return cid, client


def _invalid_client() -> web.Response:
    return web.json_response({"error": "invalid_client", "error_description": "unknown client or wrong secret"},
                             status=401, headers={"www-authenticate": 'Basic realm="mitmesh-demo-idp"'})


def build(ident, issuer: str, audience: str, token_ttl: float) -> web.Application:
    app = make_app(ident)
    signer = Signer()
    signer.rotate()
    opaque: dict[str, dict] = {}
    stats = {"jwks_fetches": 0, "introspections": 0, "tokens": 0, "rotations": 0}
    app[STATE] = {"signer": signer, "stats": stats, "opaque": opaque}

    async def discovery(request):
        return web.json_response({
            "issuer": issuer, "jwks_uri": f"{issuer}/.well-known/jwks.json",
            "token_endpoint": f"{issuer}/oauth/token",
            "introspection_endpoint": f"{issuer}/oauth/introspect",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        })

    async def jwks(request):
        stats["jwks_fetches"] += 1
        return web.json_response(signer.jwks(), headers={"cache-control": "max-age=300"})

    async def token(request):
        form = await request.post()
        found = _client(request, form)
        if found is None:
            return _invalid_client()
        cid, client = found
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        asked = str(form.get("scope", "")).split() or list(client.scopes)
        if not set(asked) <= set(client.scopes):
            return web.json_response({"error": "invalid_scope", "error_description":
                                      f"{cid} may ask for {' '.join(client.scopes) or 'no scope'}"}, status=400)
        now = int(time.time())
        claims = {"iss": issuer, "sub": cid, "aud": audience, "client_id": cid, "iat": now, "nbf": now,
                  "exp": now + int(token_ttl), "jti": secrets.token_hex(8), "scope": " ".join(asked)}
        if client.format == "opaque":
            access = secrets.token_urlsafe(32)
            opaque[access] = claims
        else:
            access = signer.sign(claims)
        stats["tokens"] += 1
        return web.json_response({"access_token": access, "token_type": "Bearer",
                                  "expires_in": int(token_ttl), "scope": claims["scope"]},
                                 headers={"cache-control": "no-store"})

    async def introspect(request):
        form = await request.post()
        found = _client(request, form)
        if found is None or not found[1].introspect:
            return _invalid_client()
        stats["introspections"] += 1
        tok = str(form.get("token", ""))
        claims = opaque.get(tok) or signer.verify(tok, issuer)
        if claims is None or claims["exp"] <= time.time():
            return web.json_response({"active": False})
        return web.json_response({"active": True, "token_type": "Bearer", **claims})

    async def rotate(request):
        stats["rotations"] += 1
        return web.json_response({"kid": signer.rotate(), "keys": [k for k, _ in signer.keys]})

    async def get_stats(request):
        return web.json_response(stats)

    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_post("/oauth/token", token)
    app.router.add_post("/oauth/introspect", introspect)
    app.router.add_post("/__rotate", rotate)  # demo knob, like /__knobs
    app.router.add_get("/__stats", get_stats)
    return app


def main() -> None:
    p = arguments("auth")
    p.add_argument("--issuer", default=None, help="iss of issued tokens (default http://HOST:PORT)")
    p.add_argument("--audience", default="mitmesh", help="aud of issued tokens (default mitmesh)")
    p.add_argument("--token-ttl", type=parse_duration, default=300.0, help="token lifetime (default 300s)")
    args = p.parse_args()
    issuer = args.issuer or f"http://{args.host}:{args.port}"
    serve(build(identity("auth", args), issuer, args.audience, args.token_ttl), args)


if __name__ == "__main__":
    main()
