"""Request path normalization (RFC 3986 §6): the one path that routing, authorization, rate limits,
rewrites and the upstream all see, so no two of them can read a request's path differently.

Pure functions, no mitmproxy: every HTTP engine of the proxy calls the same `normalize`.
"""

from __future__ import annotations

import re

from mesh.config.http import (  # the option's values: the config owns its vocabulary
    ESCAPED_SLASH_ACTIONS,
    KEEP_UNCHANGED,
    REJECT_REQUEST,
    UNESCAPE_AND_FORWARD,
    UNESCAPE_AND_REDIRECT,
)

# RFC 3986 §2.3: the characters whose percent-encoding is equivalent to the character itself
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# anything that may need work; a path without any of these is returned as it came (the common case)
_SUSPECT = re.compile(r"[%\\\x00-\x20\x7f#\udc80-\udcff]|/\.|//")
# never valid in a request target (RFC 9112 §3.2; a fragment is never sent), whatever the options:
# controls, space, DEL, '#', and bytes that are no UTF-8 (mitmproxy's surrogateescape decoding makes
# each a lone surrogate, which no upstream request line can be encoded from). Passed on,
# `/app\xc0\xafadmin` (an overlong '/') is `/app/admin` to a lax UTF-8 decoder. UTF-8 itself passes.
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f#\udc80-\udcff]")
_SLASHES = re.compile(r"//+")


class Rejected(ValueError):
    """A request refused before any decision is made: the status, error name and reason of the reply."""

    def __init__(self, status: int, error: str, reason: str):
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


class Redirect(Exception):
    """UNESCAPE_AND_REDIRECT: the client is sent to the unescaped path (the query is the caller's)."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


def normalize(path: str, *, normalize_path: bool = True, merge_slashes: bool = True,
              escaped_slashes: str = REJECT_REQUEST) -> str:
    """The normalized form of a request path (without its query), or `Rejected`/`Redirect`.

    In RFC 3986 §6.2.2's order: percent-encodings (unreserved characters decoded, the rest in upper
    case; %00 and malformed ones refused; %2F and %5C as `escaped_slashes` says), a backslash read
    as a slash (as browsers and Envoy do), adjacent slashes merged, dot segments removed.
    `normalize_path=False` keeps only the refusals, the escaped-slash action and slash merging.
    """
    if path[:1] == "/" and not _SUSPECT.search(path):
        return path
    bad = _FORBIDDEN.search(path)
    if bad:
        raise Rejected(400, "invalid_path", f"the path holds {_show(bad.group())}, which a request "
                                            f"target may not contain (RFC 9112 §3.2)")
    if not path.startswith("/"):
        if path == "*":  # OPTIONS * (RFC 9110 §9.3.7): no path to normalize
            return path
        raise Rejected(400, "invalid_path", "the path must start with '/' (origin form, RFC 9112 §3.2.1)")
    unescaped = False
    if "%" in path:
        path, unescaped = _percent(path, normalize_path, escaped_slashes)
    if normalize_path and "\\" in path:
        path = path.replace("\\", "/")
    if merge_slashes and "//" in path:
        path = _SLASHES.sub("/", path)
    if normalize_path:
        path = remove_dot_segments(path)
    if unescaped and escaped_slashes == UNESCAPE_AND_REDIRECT:
        raise Redirect(path)
    return path


def check_query(query: str) -> None:
    """Raise `Rejected` for a query (the target after its '?') that a request line cannot carry: it
    would reach the upstream's request line as it came (`?q=a HTTP/1.1\tb`, terminal escapes)."""
    bad = _FORBIDDEN.search(query)
    if bad:
        raise Rejected(400, "invalid_query", f"the query holds {_show(bad.group())}, which a "
                                             f"request target may not contain (RFC 9112 §3.2)")


def _percent(path: str, decode_unreserved: bool, escaped_slashes: str) -> tuple[str, bool]:
    """Percent-encodings normalized; returns the path and whether an escaped slash was unescaped."""
    parts = path.split("%")
    out = [parts[0]]
    unescaped = False
    for part in parts[1:]:
        digits = part[:2]
        if len(digits) < 2 or digits[0] not in _HEX or digits[1] not in _HEX:
            raise Rejected(400, "invalid_path",
                           f"malformed percent-encoding '%{digits}' in the path (RFC 3986 §2.1)")
        char = chr(int(digits, 16))
        rest = part[2:]
        if char == "\x00":
            raise Rejected(400, "invalid_path", "the path holds an encoded NUL (%00)")
        if char in "/\\":
            if escaped_slashes == REJECT_REQUEST:
                raise Rejected(400, "escaped_slash_in_path",
                               f"the path holds an encoded {'slash' if char == '/' else 'backslash'} "
                               f"(%{digits}), which proxy and upstream could read differently")
            if escaped_slashes == KEEP_UNCHANGED:
                out.append("%" + digits.upper() + rest)
            else:
                out.append(char + rest)
                unescaped = True
        elif decode_unreserved and char in _UNRESERVED:
            out.append(char + rest)
        else:
            out.append("%" + digits.upper() + rest)
    return "".join(out), unescaped


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path: '/a/./b/../c' → '/a/c'; '..' never climbs above '/'."""
    if "/." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")
    for seg in segments[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    trailing = segments[-1] in (".", "..")
    return "/" + "/".join(out) + ("/" if trailing and out else "")


def _show(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # a byte that is no UTF-8 (surrogateescape)
        return f"the byte 0x{ord(char) - 0xdc00:02X}, no UTF-8 (percent-encode it)"
    return {" ": "a space", "#": "'#' (a fragment)"}.get(char, f"the control character {char!r}")
