"""Where a webhook may be posted: public addresses only, unless the operator allows private
ones. Checked when an endpoint is registered or changed (``check_url``, a 400), and again
as each delivery connects (``webhook_delivery``'s resolver keeps only ``is_public``
addresses), so a name re-pointed at 169.254.169.254 or 127.0.0.1 later is refused too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from urllib.parse import urlsplit

from app.errors import InvalidRequest


class RefusedTarget(Exception):
    """A webhook URL whose host is (or resolves to) an address Earmark must not post to."""


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def is_public(address: str) -> bool:
    """A global unicast address, and for IPv6 every IPv4 address it carries too (mapped,
    compatible, 6to4, Teredo, NAT64: each reaches an IPv4 host)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:
            return False
        carried = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if int(ip) >> 32 == 0 or any(ip in network for network in _NAT64):
            carried.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if any(v4 is not None and not is_public(str(v4)) for v4 in carried):
            return False
    return ip.is_global and not ip.is_multicast


_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$)({_LABEL}\.)*{_LABEL}\.?")  # as urlsplit lowercases it


def literal_address(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


async def check_url(url: str, *, allow_private: bool) -> None:
    """400 unless ``url`` is http(s) to a host that is, or resolves only to, public
    addresses (any address, with ``allow_private``). A name that does not resolve now is
    accepted: each delivery checks again."""
    try:
        parts = urlsplit(url)
        scheme, host, _ = parts.scheme, parts.hostname, parts.port  # a bad port: ValueError
    except ValueError:
        scheme = host = None
    if "@" in url.split("//", 1)[-1].split("/", 1)[0]:
        raise InvalidRequest(
            "`url` must not carry a user name or password: put a token in the path instead.",
            param="url",
        )
    literal = literal_address(host) if host else None
    if scheme not in ("http", "https") or not (literal or (host and _HOSTNAME.fullmatch(host))):
        raise InvalidRequest(
            "`url` must be an http:// or https:// URL with a host name or address.", param="url"
        )
    if allow_private:
        return
    assert host is not None
    if literal is not None:
        addresses = [literal]
    elif host.rstrip(".").lower() == "localhost" or host.lower().endswith(".localhost"):
        addresses = ["127.0.0.1"]
    else:
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, None)
        except OSError:
            return
        addresses = [info[4][0] for info in found]
    if not all(is_public(address) for address in addresses):
        raise InvalidRequest(
            f"`url` points at a loopback, private, link-local or metadata address ({host}); "
            "set EARMARK_WEBHOOKS_ALLOW_PRIVATE=true to allow a receiver on your own network.",
            param="url",
            code="webhook_url_private",
        )
