"""Which addresses an http(s) media fetch may connect to: the default SSRF policy."""

from __future__ import annotations

import ipaddress

__all__ = ["IPAddress", "is_public_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses: the default SSRF policy.

    `ipaddress.is_global` alone is not enough on Python 3.11: it calls multicast global, does not
    look inside IPv4-mapped / 6to4 / NAT64 IPv6 addresses, and misses IPv4-compatible `::a.b.c.d`.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return is_public_address(ip.sixtofour)
        if ip in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    elif ip in _CGNAT:
        return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )
