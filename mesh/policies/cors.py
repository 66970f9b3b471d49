"""CORS decisions, compiled from a route's `cors` policy: which origins, methods and headers a
browser may use, the answer to a preflight, and the headers added to actual responses."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mesh.config.security import Cors

_SUBDOMAIN = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    any_origin: bool
    origins: frozenset[str]
    wildcards: tuple[tuple[str, str], ...]  # (scheme://, .suffix) from https://*.example.com
    methods: frozenset[str]
    allow_methods: str
    allow_headers: str | None  # None: echo what the preflight asks for
    expose_headers: str | None
    credentials: bool
    max_age: str

    def allows(self, origin: str) -> bool:
        if self.any_origin or origin in self.origins:
            return True
        for scheme, suffix in self.wildcards:
            if origin.startswith(scheme) and origin.endswith(suffix):
                sub = origin[len(scheme):-len(suffix)]
                if sub and _SUBDOMAIN.fullmatch(sub):
                    return True
        return False

    def _origin_headers(self, origin: str) -> dict[str, str]:
        if self.any_origin and not self.credentials:
            return {"access-control-allow-origin": "*"}
        h = {"access-control-allow-origin": origin, "vary": "Origin"}
        if self.credentials:
            h["access-control-allow-credentials"] = "true"
        return h

    def preflight(self, origin: str, method: str, headers: str | None) -> tuple[dict[str, str] | None, str]:
        """(headers of a 204 answer, "") or (None, why it is refused)."""
        if not self.allows(origin):
            return None, f"origin {origin} is not allowed"
        if method.upper() not in self.methods:
            return None, f"method {method} is not allowed for cross-origin requests"
        h = self._origin_headers(origin)
        h["access-control-allow-methods"] = self.allow_methods
        allowed = self.allow_headers if self.allow_headers is not None else headers
        if allowed:
            h["access-control-allow-headers"] = allowed
        h["access-control-max-age"] = self.max_age
        return h, ""

    def response(self, origin: str) -> dict[str, str]:
        """Headers for an actual cross-origin response (none when the origin is not allowed)."""
        if not self.allows(origin):
            return {}
        h = self._origin_headers(origin)
        if self.expose_headers:
            h["access-control-expose-headers"] = self.expose_headers
        return h


def compile_cors(c: Cors) -> CorsPolicy:
    exact, wildcards = set(), []
    for o in c.allow_origins:
        if "://*." in o:
            scheme, _, host = o.partition("*")
            wildcards.append((scheme, host))
        elif o != "*":
            exact.add(o)
    return CorsPolicy(
        any_origin="*" in c.allow_origins, origins=frozenset(exact), wildcards=tuple(wildcards),
        methods=frozenset(c.allow_methods), allow_methods=", ".join(c.allow_methods),
        allow_headers=", ".join(c.allow_headers) if c.allow_headers else None,
        expose_headers=", ".join(c.expose_headers) or None, credentials=c.allow_credentials,
        max_age=str(int(c.max_age)))
