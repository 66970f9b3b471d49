"""mitmproxy listen-mode specs for our listeners, as strings, so mesh/ need not import mitmproxy."""

from __future__ import annotations

# The reverse target of our listeners is never contacted: Forward always answers the flow itself
# (connection_strategy=lazy). Port 9 (discard) keeps a mistake from looping back into the proxy.
PLACEHOLDER = "http://127.0.0.1:9"
PLACEHOLDER_ADDRESS = ("127.0.0.1", 9)


def reverse(address: str, port: int) -> str:
    return f"reverse:{PLACEHOLDER}@{address}:{port}"


def regular(address: str, port: int) -> str:
    """An HTTP proxy listener (a sidecar's outbound): the app sends `GET http://catalog/items`."""
    return f"regular@{address}:{port}"
