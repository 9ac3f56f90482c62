"""Outbound URL validation (provider base URLs, egress proxies, webhooks) against SSRF.

Loopback, private, link-local, multicast and reserved addresses are refused unless the caller
marks the target as internal (a local vLLM/Ollama node, the test fake). Hostnames are resolved
and every address checked, so a public name pointing at 127.0.0.1 is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class UnsafeURLError(ValueError):
    """An outbound URL refused: malformed, another scheme, credentials in it, no host, or a non-public address."""
    pass


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def validate_outbound_url(url: str, *, internal: bool = False, schemes: tuple[str, ...] = ("http", "https"), resolve: bool = True,
                          allow_credentials: bool = False) -> str:
    """Return ``url`` unchanged if the gateway may call it; raise ``UnsafeURLError`` otherwise.

    The scheme must be one of ``schemes``; credentials need ``allow_credentials``. ``internal``
    skips the address check. A hostname is resolved (a blocking DNS lookup) and every address must
    be public; with ``resolve=False`` only a literal IP is checked. The answer holds when checked:
    DNS may resolve the name differently when a connection is made later.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"malformed URL: {exc}") from None
    if parts.scheme not in schemes:
        raise UnsafeURLError(f"URL scheme must be one of {', '.join(schemes)}")
    if not parts.hostname:
        raise UnsafeURLError("URL has no host")
    if (parts.username or parts.password) and not allow_credentials:
        raise UnsafeURLError("credentials in a provider URL are not allowed; use a supplier key")
    if internal:
        return url
    host = parts.hostname
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if not resolve:
            return url
        try:
            infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80), proto=socket.IPPROTO_TCP)
        except socket.gaierror:
            raise UnsafeURLError(f"host {host!r} does not resolve") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        if not _is_public(address):
            raise UnsafeURLError(f"{host} resolves to a non-public address; mark the provider internal to allow it")
    return url
