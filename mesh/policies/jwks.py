"""Signing keys of a JWT issuer (a JWKS), parsed once per fetch and cached.

Keys are refetched in the background when stale, and on demand when a token names an unknown key
id, at most once per `unknown_kid_refresh` so a flood of made-up key ids cannot hammer the issuer.
A failed fetch keeps the last good keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from mesh.policies.httpclient import Http, HttpError
from mesh.config.types import load_json

log = logging.getLogger("mitmesh.authn")

# the key type each algorithm family may use: an RSA or EC key is never taken as an HMAC secret
FAMILY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP", "HS": "oct"}


@dataclass(frozen=True, slots=True)
class Key:
    kid: str | None
    kty: str
    alg: str | None  # the JWK's own `alg`, which pins the algorithm when present
    key: object  # a cryptography key (bytes for oct)

    def fits(self, alg: str) -> bool:
        return FAMILY.get(alg[:2]) == self.kty and (self.alg is None or self.alg == alg)


class KeySet:
    def __init__(self, keys: list[Key]):
        self.keys = tuple(keys)
        self.by_kid: dict[str, list[Key]] = {}
        for k in keys:
            if k.kid is not None:
                self.by_kid.setdefault(k.kid, []).append(k)

    def candidates(self, kid: str | None, alg: str) -> list[Key]:
        keys = self.by_kid.get(kid, ()) if kid is not None else self.keys
        return [k for k in keys if k.fits(alg)]

    def has_kid(self, kid: str | None) -> bool:
        return kid is None or kid in self.by_kid


def parse(data: bytes | str) -> KeySet:
    """A JWKS document to keys; keys that cannot be used for signatures are skipped."""
    try:
        doc = load_json(data)
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("expected a JSON object with a 'keys' list")
    keys = []
    for raw in doc["keys"]:
        if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
            continue
        if any(not isinstance(raw.get(name, ""), str) for name in ("kid", "kty", "alg")):
            continue  # RFC 7517 §4: strings; a kid that is an object would not even index
        try:
            jwk = jwt.PyJWK(raw)
        except Exception:  # the issuer's document: whatever PyJWT raises (NotImplementedError for
            continue       # an RSA key with some private fields) leaves that key out, not the set
        keys.append(Key(raw.get("kid"), raw.get("kty", ""), raw.get("alg"), jwk.key))
    if not keys:
        raise ValueError("no usable signing key")
    return KeySet(keys)


class JwksCache:
    def __init__(self, source: str, http: Http, *, ttl: float = 300.0,
                 unknown_kid_refresh: float = 5.0, timeout: float = 2.0, is_file: bool = False):
        self.source = source
        self.http = http
        self.ttl = ttl
        self.unknown_kid_refresh = unknown_kid_refresh
        self.timeout = timeout
        self.is_file = is_file
        self.keys: KeySet | None = None
        # monotonic times of the last good fetch and the last attempt; never: -inf, not 0.0, which
        # is the boot of the machine (a proxy started in its first `ttl` seconds fetched no keys)
        self.fetched_at = float("-inf")
        self.attempted_at = float("-inf")
        self.fetches = 0
        self.error: str | None = None
        self._inflight: asyncio.Future | None = None
        if is_file:
            self.keys = parse(Path(source).read_bytes())  # at load: a bad file is a config error
            self.fetched_at = time.monotonic()

    def may_refresh(self) -> bool:
        """Whether a token with an unknown key id may trigger a fetch now."""
        if self.is_file:
            return False
        return self._inflight is not None or \
            time.monotonic() - self.attempted_at >= self.unknown_kid_refresh

    def stale(self) -> bool:
        return not self.is_file and time.monotonic() - max(self.fetched_at, self.attempted_at) >= self.ttl

    async def refresh(self) -> None:
        """Fetch now; concurrent callers share one fetch."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._clear)
        await asyncio.shield(self._inflight)

    def _clear(self, fut: asyncio.Future) -> None:
        self._inflight = None

    async def _fetch(self) -> None:
        self.attempted_at = time.monotonic()
        self.fetches += 1
        try:
            status, body = await self.http.request("GET", self.source, timeout=self.timeout)
            if status != 200:
                raise HttpError(f"{self.source}: status {status}")
            keys = parse(body)
        except (HttpError, ValueError) as e:
            self.error = str(e)
            kept = f"keeping {len(self.keys.keys)} keys from the last good fetch" if self.keys else "no keys yet"
            log.warning(f"JWKS fetch failed ({e}); {kept}")
            return
        self.keys, self.fetched_at, self.error = keys, time.monotonic(), None
