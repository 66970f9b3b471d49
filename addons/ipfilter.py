"""IpFilter: a listener's downstream address allow and deny lists (CIDR); refused → JSON 403."""

from __future__ import annotations

import ipaddress

from mitmproxy import http

from mesh.core.build import Networks

from . import keys, replies

def allowed(ip: str, allow: Networks, deny: Networks) -> tuple[bool, str]:
    """Deny wins; a non-empty allow list admits only its blocks (as Kong's ip-restriction)."""
    try:
        addr = ipaddress.ip_address(ip.removeprefix("::ffff:") if "." in ip else ip)
    except ValueError:
        return False, f"unparsable client address {ip!r}"
    for net in deny:
        if addr.version == net.version and addr in net:
            return False, f"client address {ip} is in the deny list ({net})"
    if allow and not any(addr.version == n.version and addr in n for n in allow):
        return False, f"client address {ip} is not in the allow list"
    return True, ""


class IpFilter:
    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.unanswered(flow)
        if st is None or st.listener is None:
            return
        lists = st.snapshot.ip_filters.get(st.listener.name)
        if lists is None:
            return
        ok, why = allowed(flow.client_conn.peername[0], *lists)
        if not ok:
            st.decide("ipfilter", why)
            replies.reply(flow, 403, "ip_denied", why)
