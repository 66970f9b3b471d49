"""Demo echo service: answers what it received (method, path as sent, query, headers, body), to see what the
gateway changed on the way (transformations, X-Forwarded-*, request ids). A JSON request body comes
back as `json`; `?respond=` sets extra response headers (`?respond=x-a:1`) to try response transforms."""

from __future__ import annotations

import json

from aiohttp import web

from .app import arguments, identity, make_app, serve


def build(ident) -> web.Application:
    app = make_app(ident)

    async def echo(request: web.Request):
        raw = await request.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        body = {**ident.describe(request), "raw_path": request.raw_path,
                "query": [[k, v] for k, v in request.query.items()],
                "headers": [[k.lower(), v] for k, v in request.headers.items()],
                "body": raw.decode("utf-8", "replace"), "json": parsed}
        response = web.json_response(body)
        for spec in request.query.getall("respond", []):
            name, _, value = spec.partition(":")
            response.headers.add(name, value)
        return response

    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main() -> None:
    args = arguments("echo").parse_args()
    serve(build(identity("echo", args)), args)


if __name__ == "__main__":
    main()
