"""The proxy's own outgoing HTTP calls (JWKS, token introspection): async, bounded, one session."""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING
from urllib.parse import quote_plus

if TYPE_CHECKING:
    import aiohttp

MAX_BODY = 1 << 20  # a JWKS or an introspection answer is a few KB


def basic_auth(client_id: str, secret: str) -> str:
    """HTTP Basic client authentication as OAuth2 wants it (RFC 6749 2.3.1: each part form-encoded)."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class HttpError(Exception):
    """No usable answer: refused, timed out, too large."""


class Http:
    """One aiohttp session, made on first use inside the running loop and closed by `close()`."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _get(self) -> aiohttp.ClientSession:
        global aiohttp  # loaded by the first call: a proxy that fetches nothing never imports it
        import aiohttp
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32), auto_decompress=True,
                headers={"user-agent": "mitmesh"})
        return self._session

    async def request(self, method: str, url: str, *, timeout: float, data: dict | None = None,
                      auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
        headers = {"authorization": basic_auth(*auth)} if auth else None
        session = self._get()
        try:
            async with asyncio.timeout(timeout):
                async with session.request(method, url, data=data, headers=headers,
                                               allow_redirects=False) as resp:
                    body = await resp.content.read(MAX_BODY + 1)
                    if len(body) > MAX_BODY:
                        raise HttpError(f"{url}: answer larger than {MAX_BODY} bytes")
                    return resp.status, body
        except TimeoutError:
            raise HttpError(f"{url}: no answer within {timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise HttpError(f"{url}: {e.__class__.__name__}: {e}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
