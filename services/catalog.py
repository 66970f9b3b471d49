"""Demo catalog service: items and prices. v2 answers prices in cents with a currency (a visible change)."""

from __future__ import annotations

from aiohttp import web

from .app import arguments, identity, make_app, serve

ITEMS = {1: ("keyboard", 49.90), 2: ("mouse", 19.50), 3: ("monitor", 229.00), 4: ("cable", 7.25)}


def item(ident, item_id: int) -> dict:
    name, price = ITEMS[item_id]
    if ident.version == "v1":
        return {"id": item_id, "name": name, "price": price}
    return {"id": item_id, "name": name, "price_cents": round(price * 100), "currency": "EUR"}


def build(ident) -> web.Application:
    app = make_app(ident)

    async def list_items(request: web.Request):
        return web.json_response({**ident.describe(request), "items": [item(ident, i) for i in ITEMS]})

    async def get_item(request: web.Request):
        try:
            item_id = int(request.match_info["id"])
            body = item(ident, item_id)
        except (ValueError, KeyError):
            return web.json_response({**ident.describe(request), "error": "no_such_item"}, status=404)
        return web.json_response({**ident.describe(request), "item": body})

    async def anything(request: web.Request):
        await request.read()
        return web.json_response(ident.describe(request))

    app.router.add_get("/items", list_items)
    app.router.add_get("/items/{id}", get_item)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def main() -> None:
    args = arguments("catalog").parse_args()
    serve(build(identity("catalog", args)), args)


if __name__ == "__main__":
    main()
