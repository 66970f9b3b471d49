"""Authentication of a route's callers: JWTs verified locally, opaque OAuth2 tokens by introspection
(RFC 7662, cached), API keys by their SHA-256; then the scopes and claims the route requires.

Compiled once per config into a `RouteAuthn`; `authenticate` answers from memory and returns an
awaitable only when keys must be fetched or a token introspected. Every failure is an AuthnError
carrying the status (401, 403 or 503), an error code and a reason for the JSON reply.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, NamedTuple

import jwt

from mesh.policies import claims as claimlib
from mesh.config.security import ApiKey, Jwt, OAuth2, Require, TokenSource
from mesh.policies.httpclient import Http, HttpError
from mesh.policies.jwks import JwksCache
from mesh.security import redact
from mesh.config.types import load_json

Getter = Callable[[str], str | None]
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$")


# the errors of credentials that were presented and are wrong: counted per client IP (AuthThrottle)
FAILED = frozenset({"invalid_token", "invalid_api_key", "invalid_credentials"})
KINDS = ("jwt", "oauth2", "api_key")  # policy kinds that authenticate a route's callers


class AuthnError(Exception):
    """A refusal: `reason` is what the client is told, in our words; `detail` (a library's message,
    an issuer's address) goes only to the decision log."""

    def __init__(self, status: int, error: str, reason: str, detail: str = ""):
        super().__init__(reason)
        self.status, self.error, self.reason, self.detail = status, error, reason, detail


def _invalid(reason: str, detail: str = "") -> AuthnError:
    return AuthnError(401, "invalid_token", reason, detail)


class Verified(NamedTuple):  # a tuple: made for every authenticated request
    method: str  # jwt | oauth2 | api_key
    principal: str
    claims: dict
    credential: str = ""  # which credential it was, never the credential itself (`identity`)


def identity(method: str, secret: str) -> str:
    """What names a verified credential in counters and logs without being it (`redact.named`),
    so a rate limit counts per key or token and its storage holds no secret."""
    return redact.named(method, secret)


def _principal(claims: Mapping) -> str:
    return str(claims.get("sub") or claims.get("client_id") or claims.get("consumer") or "")


# ---------------------------------------------------------------------------------------------
# JWT

# PyJWT's errors, in words a caller can act on
_JWT_ERRORS: list[tuple[type, str]] = [
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid (nbf or iat in the future)"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidSignatureError, "signature verification failed"),
    (jwt.MissingRequiredClaimError, "token lacks the required claim"),
]


class JwtVerifier:
    def __init__(self, config: Jwt, keys: JwksCache):
        self.config = config
        self.keys = keys
        self.allowed = frozenset(config.algorithms)
        self.audiences = list(config.audiences) or None
        self.options = {"require": ["exp", "iss"], "verify_aud": bool(config.audiences)}

    def verify(self, token: str) -> dict | Awaitable[dict]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise _invalid("malformed token", str(e)) from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise _invalid("unsigned token: the 'none' algorithm is never accepted")
        if alg not in self.allowed:
            raise _invalid(f"algorithm {alg} is not allowed (allowed: {', '.join(sorted(self.allowed))})")
        if kid is not None and not isinstance(kid, str):
            raise _invalid("malformed token: kid is not a string")
        keyset = self.keys.keys
        if (keyset is None or not keyset.has_kid(kid)) and self.keys.may_refresh():
            return self._after_refresh(token, alg, kid)
        return self._decode(token, alg, kid)

    async def _after_refresh(self, token: str, alg: str, kid: str | None) -> dict:
        await self.keys.refresh()
        return self._decode(token, alg, kid)

    def _decode(self, token: str, alg: str, kid: str | None) -> dict:
        keyset = self.keys.keys
        if keyset is None:
            raise AuthnError(503, "authn_unavailable", "the issuer's signing keys are unavailable",
                             f"signing keys of {self.config.issuer}: {self.keys.error}")
        candidates = keyset.candidates(kid, alg)
        if not candidates:
            if not keyset.has_kid(kid):
                raise _invalid(f"unknown key id {kid!r}")
            raise _invalid(f"no {alg} key{f' with id {kid!r}' if kid else ''}: an algorithm "
                           "must match its key's type (an RSA or EC key is never an HMAC secret)")
        error: Exception | None = None
        for key in candidates:
            try:
                return _numeric_dates(jwt.decode(token, key.key, algorithms=[alg], audience=self.audiences,
                                                 issuer=self.config.issuer, leeway=self.config.leeway,
                                                 options=self.options))
            except jwt.InvalidSignatureError as e:
                error = e  # without a kid, try the next key of the same type
            except jwt.PyJWTError as e:
                error = e
                break
        for kind, words in _JWT_ERRORS:
            if isinstance(error, kind):
                claim = f" {error.claim}" if isinstance(error, jwt.MissingRequiredClaimError) else ""
                raise _invalid(words + claim, str(error))
        raise _invalid("invalid token", str(error))


def _numeric_dates(claims: dict) -> dict:
    """exp, nbf and iat must be JSON numbers (RFC 7519 NumericDate): PyJWT reads `"exp": "999999"`
    with int(), so a string would pass for a date."""
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _invalid(f"claim {name} is not a number of seconds (RFC 7519 NumericDate)", f"got {value!r}")
    return claims


# ---------------------------------------------------------------------------------------------
# OAuth2 introspection


@dataclass(slots=True)
class _Answer:
    until: float  # monotonic
    claims: dict | None  # None: inactive
    reason: str = ""


class Introspector:
    """RFC 7662 calls with client credentials; answers cached by token digest, never past exp."""

    def __init__(self, config: OAuth2, http: Http, secret: str, max_entries: int = 10_000):
        self.config = config
        self.http = http
        self.auth = (config.client_id, secret)
        self.max_entries = max_entries
        self.cache: dict[bytes, _Answer] = {}
        self.inflight: dict[bytes, asyncio.Future] = {}
        self.calls = 0

    def verify(self, token: str) -> dict | Awaitable[dict]:
        digest = hashlib.sha256(token.encode()).digest()
        hit = self.cache.get(digest)
        if hit is not None and hit.until > time.monotonic():
            return self._result(hit)
        return self._ask(token, digest)

    def _result(self, answer: _Answer) -> dict:
        if answer.claims is None:
            raise _invalid(answer.reason)
        return answer.claims

    async def _ask(self, token: str, digest: bytes) -> dict:
        fut = self.inflight.get(digest)
        if fut is None:
            fut = self.inflight[digest] = asyncio.ensure_future(self._call(token, digest))
            fut.add_done_callback(lambda _: self.inflight.pop(digest, None))
        return self._result(await asyncio.shield(fut))

    async def _call(self, token: str, digest: bytes) -> _Answer:
        self.calls += 1
        c = self.config
        try:
            status, body = await self.http.request(
                "POST", c.introspection_url, timeout=c.timeout, auth=self.auth,
                data={"token": token, "token_type_hint": "access_token"})
            if status != 200:
                raise HttpError(f"{c.introspection_url}: status {status}")
            answer = load_json(body)
            if not isinstance(answer, dict):
                raise ValueError("not a JSON object")
        except (HttpError, ValueError) as e:
            raise AuthnError(503, "authn_unavailable", "token introspection is unavailable",
                             f"token introspection failed: {e}") from None
        now, mono = time.time(), time.monotonic()
        result = self._judge(answer, now)
        ttl = c.cache
        exp = answer.get("exp")  # a number here once _judge found the token active
        if result.claims is not None and exp is not None and exp < now + ttl:
            ttl = exp - now  # (compared first: an exp of 10**400 has no float to subtract from)
        result.until = mono + max(ttl, 0.0)
        if ttl > 0:
            if len(self.cache) >= self.max_entries:  # drop the oldest entries first
                for stale in list(self.cache)[: self.max_entries // 10 or 1]:
                    del self.cache[stale]
            self.cache[digest] = result
        return result

    def _judge(self, answer: dict, now: float) -> _Answer:
        c = self.config
        if answer.get("active") is not True:
            return _Answer(0, None, "token is not active")
        exp = answer.get("exp")
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, (int, float))
                                or exp != exp):  # RFC 7662 §2.2: seconds since the epoch
            return _Answer(0, None, "exp is not a number of seconds")
        if exp is not None and exp <= now:
            return _Answer(0, None, "token expired")
        if c.issuer is not None and answer.get("iss") != c.issuer:
            return _Answer(0, None, "wrong issuer")
        if c.audiences:
            aud = answer.get("aud")  # a string or a list of strings (RFC 7662 §2.2); else none
            auds = {a for a in (aud if isinstance(aud, list) else [aud]) if isinstance(a, str)}
            if not auds & set(c.audiences):
                return _Answer(0, None, "wrong audience")
        claims = {k: v for k, v in answer.items() if k != "active"}
        return _Answer(0, claims)


# ---------------------------------------------------------------------------------------------
# API keys


class ApiKeys:
    def __init__(self, config: ApiKey):
        self.config = config
        self.by_digest: dict[bytes, tuple[str, dict, str]] = {}  # → consumer, claims, `identity`
        for name, consumer in config.consumers.items():
            claims = {"consumer": name, "sub": name, **{k: v if len(v) > 1 else v[0]
                                                       for k, v in consumer.claims.items()}}
            for hexdigest in consumer.key_sha256:
                digest = bytes.fromhex(hexdigest)
                # `identity("api_key", key)`, from the key's SHA-256 the config holds
                self.by_digest[digest] = (name, claims, "api_key:" + digest.hex()[:24])

    def find(self, header: Getter, query: Getter) -> str | None:
        c = self.config
        return (header(c.header) if c.header else None) or (query(c.query) if c.query else None)

    def verify(self, key: str) -> Verified:
        # a header's bytes that are not UTF-8 arrive surrogate-escaped: a key no consumer has, not
        # an exception (it was a traceback per request, and a 401 that named no reason)
        found = self.by_digest.get(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest())
        if found is None:
            raise AuthnError(401, "invalid_api_key", "unknown API key")
        return Verified("api_key", found[0], dict(found[1]), found[2])


# ---------------------------------------------------------------------------------------------
# One route


def _token(sources: tuple[TokenSource, ...], header: Getter, cookie: Getter) -> tuple[str | None, TokenSource | None]:
    for src in sources:
        if src.header is not None:
            value = header(src.header)
            if value is None:
                continue
            if src.prefix:
                if value[: len(src.prefix)].lower() != src.prefix.lower():
                    continue
                value = value[len(src.prefix):]
            return value.strip(), src
        value = cookie(src.cookie or "")
        if value is not None:
            return value, src
    return None, None


class RouteAuthn:
    """What one route accepts, compiled: JWT, opaque tokens, API keys, and what it requires."""

    def __init__(self, route: str, *, jwt_verifier: JwtVerifier | None = None,
                 introspector: Introspector | None = None, api_keys: ApiKeys | None = None,
                 require: Require | None = None):
        self.route = route
        self.jwt = jwt_verifier
        self.oauth2 = introspector
        self.api_keys = api_keys
        self.require = require
        token_configs = [c for c in (jwt_verifier and jwt_verifier.config,
                                     introspector and introspector.config) if c]
        self.sources = tuple(dict.fromkeys(s for c in token_configs for s in c.token_from))
        self.max_token = max((c.max_token_size for c in token_configs), default=0)
        forward: dict[str, str] = {}
        for c in (*token_configs, api_keys and api_keys.config):
            if c:
                forward.update(c.forward_claims)
        self.forward = tuple(forward.items())
        self.keep_token = all(c.forward_token for c in token_configs)
        self.keep_key = api_keys is None or api_keys.config.forward_key
        self.required_scopes = frozenset(require.scopes) if require else frozenset()
        self.required_claims = tuple((k, frozenset(v)) for k, v in (require.claims.items() if require else ()))
        self._api_key_challenge = ""
        if api_keys:
            c = api_keys.config
            where = f'header="{c.header}"' if c.header else f'query="{c.query}"'
            self._api_key_challenge = f'ApiKey realm="{route}", {where}'
        # the forwarded claims' header names, the token headers removed when a key authenticated
        # (a token beside a verified key was verified by no one: forward_token keeps only a token
        # that authenticated), and the API key's header where a key is read from a header only, no
        # claim is forwarded under its name or a token's, and no token sits in a cookie to remove:
        # what the proxy reads, checks and edits in one pass over the request's header fields
        # (addons/authn.py `_api_key`)
        self.forward_names = frozenset(_low(h) for _, h in self.forward)
        self.token_headers = frozenset(_low(s.header) for s in self.sources if s.header is not None)
        self.key_header: bytes | None = None
        self.key_forwards: dict[str, tuple[tuple[bytes, bytes], ...]] = {}  # consumer → its forwarded header fields
        if api_keys and api_keys.config.header and not api_keys.config.query:
            name = _low(api_keys.config.header)
            cookies = any(s.header is None for s in self.sources)
            if (name not in self.forward_names | self.token_headers and not cookies
                    and len(self.forward_names) == len(self.forward)
                    and not self.forward_names & self.token_headers):
                self.key_header = name

    def challenge(self, error: str) -> str:
        """WWW-Authenticate for a 401 or 403 (RFC 6750 error codes for bearer tokens)."""
        out = []
        if self.sources:
            code = {"invalid_token": ', error="invalid_token"',
                    "insufficient_scope": ', error="insufficient_scope"'}.get(error, "")
            out.append(f'Bearer realm="{self.route}"{code}')
        if self._api_key_challenge and error != "insufficient_scope":
            out.append(self._api_key_challenge)
        return ", ".join(out)

    @property
    def authenticates(self) -> bool:
        return bool(self.sources or self.api_keys)

    def authenticate(self, header: Getter, cookie: Getter, query: Getter) -> Verified | Awaitable[Verified]:
        if self.api_keys is not None:
            key = self.api_keys.find(header, query)
            if key is not None:
                return self.api_keys.verify(key)
        token, _ = _token(self.sources, header, cookie)
        if token is None:
            raise AuthnError(401, "missing_credentials",
                             f"route {self.route} needs credentials: {self.describe()}")
        if len(token) > self.max_token:
            raise _invalid(f"token of {len(token)} bytes is larger than {self.max_token}")
        if not token.isascii():  # RFC 6750's b64token, a JWT's base64url: neither holds anything else
            raise _invalid("malformed token")
        if self.jwt is not None and (self.oauth2 is None or _JWT_SHAPE.fullmatch(token)):
            result, method = self.jwt.verify(token), "jwt"
        elif self.oauth2 is not None:
            result, method = self.oauth2.verify(token), "oauth2"
        else:
            raise _invalid("malformed token")
        if isinstance(result, dict):
            return Verified(method, _principal(result), result, identity(method, token))
        return self._later(result, method, identity(method, token))

    async def _later(self, pending: Awaitable[dict], method: str, credential: str) -> Verified:
        result = await pending
        return Verified(method, _principal(result), result, credential)

    def authorize(self, verified: Verified) -> None:
        """The route's `require`: every scope, and one accepted value per claim; else 403."""
        if self.required_scopes:
            missing = self.required_scopes - claimlib.scopes(verified.claims)
            if missing:
                raise AuthnError(403, "insufficient_scope",
                                 f"route {self.route} requires scope {' '.join(sorted(missing))}")
        for name, accepted in self.required_claims:
            if not claimlib.values(verified.claims, name) & accepted:
                raise AuthnError(403, "insufficient_claims",
                                 f"route {self.route} requires claim {name} to be one of "
                                 f"{', '.join(sorted(accepted))}")

    def describe(self) -> str:
        what = []
        if self.sources:
            kinds = " or ".join(k for k, on in (("JWT", self.jwt), ("OAuth2 access token", self.oauth2)) if on)
            where = ", ".join(f"{s.header} header" + (f" ({s.prefix.strip()})" if s.prefix else "")
                              if s.header else f"{s.cookie} cookie" for s in self.sources)
            what.append(f"{kinds} in {where}")
        if self.api_keys:
            c = self.api_keys.config
            what.append("API key in " + (f"{c.header} header" if c.header else f"{c.query} query parameter"))
        return "; or ".join(what)


def _low(header: str) -> bytes:
    return header.lower().encode("utf-8", "surrogateescape")


def secret_of(config: OAuth2, env: Mapping[str, str]) -> str:
    return config.client_secret if config.client_secret is not None else env[config.client_secret_env or ""]


def forwarded_value(claims: Mapping[str, Any], name: str) -> str | None:
    value = claimlib.lookup(claims, name)
    return None if value is None else claimlib.header_value(value)
