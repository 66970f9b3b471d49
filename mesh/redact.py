"""Secrets out of log lines: credentials in headers, cookies, query parameters and bare tokens
are replaced by `[redacted]` before anything is written (access logs use the same helpers)."""

from __future__ import annotations

import logging
import re
from typing import Iterable

MASK = "[redacted]"
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie",
                            "x-api-key", "apikey", "api-key", "x-auth-token"})
SECRET_PARAMS = frozenset({"apikey", "api_key", "api-key", "key", "token", "access_token",
                           "id_token", "refresh_token", "client_secret", "password", "secret",
                           "code", "signature", "sig"})

# `name: value`, `name=value` or `'name': 'value'` (a logged dict); query parameters are _QUERY's
_HEADER_LINE = re.compile(
    r"(?i)(?<![?&;\w-])(" + "|".join(re.escape(h) for h in sorted(SECRET_HEADERS))
    + r")(['\"]?\s*[:=]\s*)('[^']*'|\"[^\"]*\"|[^\r\n]+)")
_QUERY = re.compile(
    r"(?i)([?&;](?:" + "|".join(re.escape(p) for p in sorted(SECRET_PARAMS)) + r")=)([^&\s#\"']+)")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_API_KEY = re.compile(r"\bmk_[A-Za-z0-9_-]{16,}")


_ANY = re.compile(r"(?i)authorization|cookie|api[-_]?key|bearer|basic |token|secret|password|"
                  r"auth-token|key=|eyJ|mk_")


def text(line: str) -> str:
    """A log line with credentials masked."""
    if not line or not _ANY.search(line):
        return line
    line = _HEADER_LINE.sub(lambda m: m.group(1) + m.group(2) + MASK, line)
    line = _QUERY.sub(lambda m: m.group(1) + MASK, line)
    line = _BEARER.sub(lambda m: m.group(1) + " " + MASK, line)
    line = _JWT.sub(MASK, line)
    return _API_KEY.sub(MASK, line)


def headers(fields: Iterable[tuple[str, str]], extra: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Header pairs for a log, values of credential headers (and `extra` names) masked."""
    secret = SECRET_HEADERS | {e.lower() for e in extra}
    return [(k, MASK if k.lower() in secret else v) for k, v in fields]


def url(value: str) -> str:
    """A URL or request target with credential query parameters masked."""
    return _QUERY.sub(lambda m: m.group(1) + MASK, value)


class RedactingFilter(logging.Filter):
    """Masks credentials in a record's message (formatted once, here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's problem, not ours
            return True
        masked = text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_FILTER = RedactingFilter()


def install() -> None:
    """Mask every log record this process creates, whichever logger or handler it goes to
    (mitmproxy's included), by wrapping the record factory once."""
    if getattr(logging, "_mitmesh_redacting", False):
        return
    logging._mitmesh_redacting = True  # type: ignore[attr-defined]
    factory = logging.getLogRecordFactory()

    def make(*args, **kwargs):
        record = factory(*args, **kwargs)
        _FILTER.filter(record)
        return record
    logging.setLogRecordFactory(make)
