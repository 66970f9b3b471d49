"""Authn: who is calling, per route: a JWT, an opaque OAuth2 token or an API key (mesh/policies/authn.py).

Missing or bad credentials get a JSON 401 with WWW-Authenticate; a caller without the route's
required scopes or claims gets a 403. On success the caller's name and claims go to FlowState
(for Authz, rate limits, logs), configured claims go upstream in headers, and the credential itself
is removed from the upstream request unless the policy keeps it. Any unexpected error fails closed.

Alone: `mitmdump -s addons/authn.py --set mesh_jwt='{issuer: https://id.example, jwks_uri: https://id.example/jwks}'`
(or mesh_api_key, mesh_oauth2, mesh_require).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os

from mitmproxy import http

from addons import alone, keys, replies
from mesh.policies import authn
from mesh.core.compiled import PerSnapshot
from mesh.config import schema
from mesh.policies.httpclient import Http
from mesh.policies.jwks import JwksCache
from mesh.core.state import MeshState, Snapshot

log = logging.getLogger("mitmesh.authn")


class Authn:
    def __init__(self, state: MeshState):
        self.state = state
        self.http = Http()
        self.jwks: dict[str, JwksCache] = {}  # by URI or file: keys outlive config reloads
        self.introspectors: dict[tuple, authn.Introspector] = {}
        self._routes = PerSnapshot(self._compile)
        self._task: asyncio.Task | None = None

    def _compile(self, snap: Snapshot) -> dict[int, authn.RouteAuthn]:
        base = os.path.dirname(os.path.abspath(snap.file))
        out = {}
        jwks, introspectors = self.jwks, self.introspectors
        if snap is self.state.snapshot:  # the live config: forget what it no longer uses
            self.jwks, self.introspectors = {}, {}
        for route in snap.routes.routes:
            p = route.policies
            if not any(k in p for k in ("jwt", "oauth2", "api_key", "require")):
                continue
            verifier = introspector = api_keys = None
            if (j := p.get("jwt")) is not None:
                source = j.jwks_uri or os.path.join(base, j.jwks_file or "")
                cache = self.jwks.get(source) or jwks.get(source)
                if cache is None:
                    cache = JwksCache(
                        source, self.http, ttl=j.cache_duration, unknown_kid_refresh=j.unknown_kid_refresh,
                        timeout=j.fetch_timeout, is_file=j.jwks_file is not None)
                self.jwks[source] = cache
                verifier = authn.JwtVerifier(j, cache)
            if (o := p.get("oauth2")) is not None:
                k = (o.introspection_url, o.client_id, o.cache, o.timeout, o.issuer, tuple(o.audiences))
                introspector = self.introspectors.get(k) or introspectors.get(k) \
                    or authn.Introspector(o, self.http, authn.secret_of(o, os.environ))
                self.introspectors[k] = introspector
            if (a := p.get("api_key")) is not None:
                api_keys = authn.ApiKeys(a)
            out[route.index] = authn.RouteAuthn(route.name, jwt_verifier=verifier, introspector=introspector,
                                                api_keys=api_keys, require=p.get("require"))
        return out

    async def running(self):
        self._task = asyncio.get_running_loop().create_task(self._refresh_keys(), name="mitmesh-jwks")

    async def done(self):
        if self._task:
            self._task.cancel()
            self._task = None
        await self.http.close()

    async def _refresh_keys(self) -> None:
        """Fetch every issuer's keys at start (and after a reload), then whenever they are older
        than their TTL, so requests find them in memory."""
        while True:
            if self.state.snapshot is not None:
                self._routes.get(self.state.snapshot)
            stale = [c for c in list(self.jwks.values()) if c.stale()]
            await asyncio.gather(*(c.refresh() for c in stale))
            await asyncio.sleep(1.0)

    def requestheaders(self, flow: http.HTTPFlow):
        if flow.response or flow.error or not flow.live:
            return None
        st = keys.get(flow)
        if st is None or st.route is None:
            return None
        route = self._routes.get(st.snapshot).get(st.route.index)
        if route is None:
            return None
        req = flow.request
        try:
            if not route.authenticates:  # only `require`: claims must come from elsewhere
                raise authn.AuthnError(403, "insufficient_scope", f"route {route.route} requires "
                                       "scopes or claims but has no authentication policy")
            result = route.authenticate(req.headers.get, req.cookies.get, _query(req))
            if inspect.isawaitable(result):
                return self._finish(flow, st, route, result)
            self._accept(flow, st, route, result)
        except authn.AuthnError as e:
            self._refuse(flow, st, route, e)
        except Exception:  # a bug must never let a request through unauthenticated
            log.exception("authentication failed unexpectedly")
            self._refuse(flow, st, route, authn.AuthnError(401, "invalid_credentials",
                                                           "credentials could not be verified"))
        return None

    async def _finish(self, flow, st, route, pending) -> None:
        try:
            self._accept(flow, st, route, await pending)
        except authn.AuthnError as e:
            self._refuse(flow, st, route, e)
        except Exception:
            log.exception("authentication failed unexpectedly")
            self._refuse(flow, st, route, authn.AuthnError(401, "invalid_credentials",
                                                           "credentials could not be verified"))

    def _accept(self, flow: http.HTTPFlow, st: keys.FlowState, route: authn.RouteAuthn,
                verified: authn.Verified) -> None:
        route.authorize(verified)
        st.principal, st.claims = verified.principal, verified.claims
        flow.metadata[keys.PRINCIPAL] = verified.principal
        st.decide("authn", f"{verified.method}: {verified.principal}")
        headers = flow.request.headers
        for claim, header in route.forward:
            value = authn.forwarded_value(verified.claims, claim)
            if value is not None:
                headers[header] = value
        if verified.method == "api_key":
            if not route.keep_key:
                self._strip_key(flow, route)
        elif not route.keep_token:
            for src in route.sources:
                if src.header is not None:
                    headers.pop(src.header, None)
                elif src.cookie in flow.request.cookies:
                    del flow.request.cookies[src.cookie]

    def _strip_key(self, flow: http.HTTPFlow, route: authn.RouteAuthn) -> None:
        c = route.api_keys.config
        if c.header:
            flow.request.headers.pop(c.header, None)
        if c.query and c.query in flow.request.query:
            del flow.request.query[c.query]

    def _refuse(self, flow, st, route, e: authn.AuthnError) -> None:
        st.decide("authn", f"{e.status} {e.error}: {e.reason}" + (f" ({e.detail})" if e.detail else ""))
        challenge = route.challenge(e.error) if e.status in (401, 403) else ""
        replies.reply(flow, e.status, e.error, e.reason,
                      headers={"www-authenticate": challenge} if challenge else None)


def _query(req: http.Request):
    """A lazy getter for one query parameter (API keys may come in the URL)."""
    def get(name: str) -> str | None:
        return req.query.get(name)
    return get


addons = alone.script(Authn(alone.state()), blocks=[
    alone.Block("mesh_jwt", "policies", "jwt", schema.Jwt,
                "Require a JWT on every request: a jwt policy of mesh.yaml in YAML flow style, e.g. "
                "'{issuer: https://id.example, jwks_uri: https://id.example/jwks.json, audiences: [api]}'. "
                "Empty: off."),
    alone.Block("mesh_api_key", "policies", "api_key", schema.ApiKey,
                "Require an API key on every request: an api_key policy of mesh.yaml in YAML flow style, "
                "e.g. '{consumers: {acme: {key_sha256: <64 hex digits>}}}' (`mitmesh apikey new acme` "
                "makes one). Empty: off."),
    alone.Block("mesh_oauth2", "policies", "oauth2", schema.OAuth2,
                "Require an opaque OAuth2 token, checked by introspection: an oauth2 policy of mesh.yaml, "
                "e.g. '{introspection_url: https://id.example/introspect, client_id: gw, "
                "client_secret_env: GW_SECRET}'. Empty: off."),
    alone.Block("mesh_require", "policies", "require", schema.Require,
                "Scopes or claims the caller must hold (403), with mesh_jwt or mesh_oauth2: a require "
                "policy of mesh.yaml, e.g. '{scopes: [orders:read]}'. Empty: off."),
])
