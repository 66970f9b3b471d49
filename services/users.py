"""Demo users service: a few user records, and a way to try charging a user's card directly.

`POST /users/{id}/charge` calls payments (`--payments-url`, through `--proxy`: the instance's
sidecar outbound listener). The demo mesh lets only orders call payments, so through the sidecars
this answers payments' 403 with its JSON reason: the authorization policy at payments' inbound.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from .app import PROPAGATE, arguments, identity, make_app, serve

SESSION = web.AppKey("session", aiohttp.ClientSession)

USERS = {"alice": {"name": "Alice", "tier": "gold"}, "bob": {"name": "Bob", "tier": "basic"}}


def build(ident, payments: str = "http://payments", proxy: str | None = None) -> web.Application:
    app = make_app(ident)

    async def start(app):
        app[SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def stop(app):
        await app[SESSION].close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)

    async def charge(request: web.Request):
        """Charge a user directly at payments; answers payments' status and body as they came."""
        user = request.match_info["id"]
        if user not in USERS:
            return web.json_response({**ident.describe(request), "error": "no_such_user"}, status=404)
        headers = {h: request.headers[h] for h in PROPAGATE if h in request.headers}
        try:
            async with request.app[SESSION].post(f"{payments}/charge", json={"amount": 1.0, "user": user},
                                                 headers=headers, proxy=proxy) as r:
                try:
                    body = await r.json(content_type=None)
                except ValueError:
                    body = {"raw": (await r.text())[:200]}
                return web.json_response({**ident.describe(request), "upstream_status": r.status,
                                          "upstream": body}, status=r.status)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            return web.json_response({**ident.describe(request), "error": "upstream_unreachable",
                                      "reason": str(e) or e.__class__.__name__}, status=502)

    async def list_users(request: web.Request):
        return web.json_response({**ident.describe(request), "users": sorted(USERS)})

    async def get_user(request: web.Request):
        user = USERS.get(request.match_info["id"])
        if user is None:
            return web.json_response({**ident.describe(request), "error": "no_such_user"}, status=404)
        return web.json_response({**ident.describe(request), "user": user})

    async def anything(request: web.Request):
        await request.read()
        return web.json_response(ident.describe(request))

    app.router.add_get("/users", list_users)
    app.router.add_get("/users/{id}", get_user)
    app.router.add_post("/users/{id}/charge", charge)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def main() -> None:
    p = arguments("users")
    p.add_argument("--payments-url", default="http://payments")
    p.add_argument("--proxy", default=None, help="HTTP proxy for outbound calls (the sidecar)")
    args = p.parse_args()
    serve(build(identity("users", args), args.payments_url.rstrip("/"), args.proxy), args)


if __name__ == "__main__":
    main()
