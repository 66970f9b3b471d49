"""Security response headers compiled from a `security_headers` policy: what every answer gets."""

from __future__ import annotations

from mesh.config.security import SecurityHeaders

Headers = tuple[tuple[tuple[str, str], ...], str | None]  # (headers for every response, HSTS value)


def compile(c: SecurityHeaders) -> Headers:
    """(headers for every response, Strict-Transport-Security value for HTTPS)."""
    out = [(name, value) for name, value in (
        ("x-content-type-options", c.content_type_options), ("x-frame-options", c.frame_options),
        ("referrer-policy", c.referrer_policy), ("content-security-policy", c.content_security_policy),
    ) if value is not None]
    out += list(c.headers.items())
    hsts = None
    if c.hsts is not None:
        hsts = f"max-age={c.hsts.max_age}" + ("; includeSubDomains" if c.hsts.include_subdomains else "") \
            + ("; preload" if c.hsts.preload else "")
    return tuple(out), hsts
