"""Demo users service: a few user records."""

from __future__ import annotations

from aiohttp import web

from .app import arguments, identity, make_app, serve

USERS = {"alice": {"name": "Alice", "tier": "gold"}, "bob": {"name": "Bob", "tier": "basic"}}


def build(ident) -> web.Application:
    app = make_app(ident)

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
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def main() -> None:
    args = arguments("users").parse_args()
    serve(build(identity("users", args)), args)


if __name__ == "__main__":
    main()
