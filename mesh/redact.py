"""Redaction: secrets never reach a log line (query parameters and header values that carry them)."""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
                            "apikey", "x-auth-token"})
_SECRET_PARAM = re.compile(
    r"(?i)([?&](?:access_token|id_token|refresh_token|token|api_?key|apikey|key|secret|client_secret|"
    r"password|passwd|pwd|code|signature|sig|auth)=)[^&#]*")


def path(target: str) -> str:
    """A request target with secret query parameter values replaced."""
    if "?" not in target:
        return target
    return _SECRET_PARAM.sub(lambda m: m.group(1) + REDACTED, target)


def header(name: str, value: str) -> str:
    return REDACTED if name.lower() in SECRET_HEADERS else value
