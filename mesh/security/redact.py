"""Secrets out of everything a proxy shows or keeps: credentials in headers, cookies, query and
form parameters, JSON fields and bare tokens are replaced by `[redacted]`.

`value()` is the one function the access log, /flows, the decision log and recordings pass their
records through (and the log filter its lines, through `text()`); only `mitmesh record
--include-secrets` keeps credentials, and says so.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any, Iterable

MASK = "[redacted]"
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie",
                            "x-api-key", "apikey", "api-key", "x-auth-token", "x-access-token",
                            "private-token", "x-csrf-token"})
SECRET_PARAMS = frozenset({"apikey", "api_key", "api-key", "key", "token", "access_token",
                           "id_token", "refresh_token", "auth_token", "session_token", "jwt",
                           "client_secret", "client_assertion", "assertion", "password", "passwd",
                           "secret", "code", "signature", "sig", "session", "sessionid"})
SECRET_NAMES = SECRET_HEADERS | SECRET_PARAMS

# `name: value`, `name=value` or `'name': 'value'` (a logged dict); query parameters are _QUERY's
_HEADER_LINE = re.compile(
    r"(?i)(?<![?&;\w-])(" + "|".join(re.escape(h) for h in sorted(SECRET_HEADERS))
    + r")(['\"]?\s*[:=]\s*)('[^']*'|\"[^\"]*\"|[^\r\n]+)")
# query string or form body: `?token=…`, `&api_key=…`, or a body starting with `password=…`
_QUERY = re.compile(
    r"(?i)((?:^|(?<=[?&;\s]))(?:" + "|".join(re.escape(p) for p in sorted(SECRET_PARAMS))
    + r")=)([^&\s#\"']+)")
# a JSON field: `"access_token": "…"`
_JSON_FIELD = re.compile(
    r"(?i)(\"(?:" + "|".join(re.escape(p) for p in sorted(SECRET_NAMES)) + r")\"\s*:\s*)\"[^\"]*\"")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_API_KEY = re.compile(r"\bmk_[A-Za-z0-9_-]{16,}")

# a cheap first look (on the lowercased text: a case-insensitive alternation is ten times slower)
_ANY = re.compile("|".join(re.escape(n) for n in sorted(SECRET_NAMES | {"bearer", "basic", "eyj", "mk_"})))


def named(kind: str, secret: str) -> str:
    """What names a secret in counters and logs without being it: `<kind>:<the first 24 hex digits
    of its SHA-256>`. A verified credential's identity (FlowState.credential) and a rate limit's key
    for a secret-bearing header are both this, so a per-key limit counts the two alike."""
    return f"{kind}:{hashlib.sha256(secret.encode('utf-8', 'surrogateescape')).hexdigest()[:24]}"


def suspect(line: str) -> bool:
    """Whether `line` may hold a credential in any shape (a name anywhere; no false negatives;
    cheap): the gate before `value()` of a record whose structure is not known."""
    return bool(line) and _ANY.search(line.lower()) is not None


# the precise look (`masks`): a name only counts where the patterns above would take a value after
# it (`authorization:`, `token=`, `"secret":`), so a decision `authn: api_key: acme` or a consumer
# called `token-service` is not a suspect
_HEADERS_T = tuple(SECRET_HEADERS)
_PARAMS_T = tuple(SECRET_PARAMS)
_QUOTED_T = tuple(f'"{n}' for n in SECRET_NAMES)
# their last few characters: most separators follow none of them, and a slice and a set lookup
# say so for less than trying every name (a name that ends there has its tail there too)
_HT, _PT = min(map(len, SECRET_HEADERS)), min(map(len, SECRET_PARAMS))
_HEADER_TAILS = frozenset(n[-_HT:] for n in SECRET_HEADERS)
_PARAM_TAILS = frozenset(n[-_PT:] for n in SECRET_PARAMS)
_QUOTES = ("'", '"')
_SCHEME = re.compile(r"(?:bearer|basic)\s")


def masks(line: str) -> bool:
    """Whether `text(line)` may mask something: a credential's name followed by what the patterns
    take a value after (`x-api-key:`, `token=`, `"secret":`), a Bearer/Basic scheme, a JWT or an
    mk_ key (no false negatives: every pattern's name ends before a `:` or `=`, after at most a
    quote and blanks, so looking back from each separator finds it; a random-line test checks).
    Looking back from the few separators, instead of for some forty names at every position, is
    what keeps the access log's and the decision log's look cheap."""
    if not line:
        return False
    low = line.lower()
    if ("eyj" in low or "mk_" in low
            or (("bearer" in low or "basic" in low) and _SCHEME.search(low) is not None)):
        return True
    for sep in ":=":
        if sep not in low:
            continue
        before = low.split(sep)  # the text before each separator, back to the one before it (a
        before.pop()  # name holds neither separator, so none spans two): the last one is after all
        for part in before:
            if sep == "=" and part[-_PT:] in _PARAM_TAILS and part.endswith(_PARAMS_T):
                return True  # `token=`
            name = part.rstrip()  # blanks between a name and its separator
            if name[-_HT:] in _HEADER_TAILS and name.endswith(_HEADERS_T):
                return True  # `x-api-key:`, `authorization =`
            if name[-1:] in _QUOTES:
                bare = name[:-1]
                if bare.endswith(_HEADERS_T):  # `'authorization': ` (a logged dict)
                    return True
                if sep == ":" and name[-1] == '"' and bare.endswith(_QUOTED_T):
                    return True  # `"access_token": ` (a JSON field)
    return False


def text(line: str) -> str:
    """A string (log line, path, body, decision) with credentials masked."""
    if not masks(line):
        return line
    line = _HEADER_LINE.sub(_masked_value, line)
    line = _QUERY.sub(lambda m: m.group(1) + MASK, line)
    line = _JSON_FIELD.sub(lambda m: f'{m.group(1)}"{MASK}"', line)
    line = _BEARER.sub(lambda m: m.group(1) + " " + MASK, line)
    line = _JWT.sub(MASK, line)
    return _API_KEY.sub(MASK, line)


def _masked_value(m: re.Match) -> str:
    quote = m.group(3)[0] if m.group(3)[:1] in ("'", '"') else ""
    return m.group(1) + m.group(2) + quote + MASK + quote


def value(obj: Any) -> Any:
    """A record with credentials masked, whatever its shape: strings by `text`, a mapping's value
    under a credential's name, a (name, value) pair (a header, a query parameter) named like one."""
    if isinstance(obj, str):
        return text(obj)
    if isinstance(obj, dict):
        return {k: MASK if isinstance(k, str) and k.lower() in SECRET_NAMES
                and isinstance(v, (str, bytes, int, float)) else value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if (len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], str)
                and obj[0].lower() in SECRET_NAMES):
            return type(obj)((obj[0], MASK))
        return type(obj)(value(v) for v in obj)
    return obj


def headers(fields: Iterable[tuple[str, str]], extra: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Header pairs for a log, values of credential headers (and `extra` names) masked."""
    secret = SECRET_HEADERS | {e.lower() for e in extra}
    return [(k, MASK if k.lower() in secret else text(v)) for k, v in fields]


def url(target: str) -> str:
    """A URL or request target with credential query parameters masked."""
    return _QUERY.sub(lambda m: m.group(1) + MASK, target)


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
