"""Outbound addresses against SSRF: provider base URLs, egress proxies, webhooks.

Two checks, one rule (``is_public_address``):

- when a URL is saved, ``validate_outbound_url`` refuses a scheme, credentials or an address the
  gateway must not call — a helpful early answer for the operator, but DNS may answer differently
  later (rebinding);
- when a connection is made, ``GuardedResolver`` (every host name aiohttp resolves) and
  ``guarded_socket`` (every socket aiohttp opens, so also literal IPs, which aiohttp never
  resolves) refuse a non-public address before a byte is sent. This is the boundary: the
  upstream client uses a guarded connector for every provider and egress proxy not marked
  ``internal``.

Loopback, private, shared (CGNAT), link-local, multicast, reserved and unspecified addresses are
refused, in every spelling: IPv4 inside IPv6 (mapped ``::ffff:a.b.c.d``, compatible ``::a.b.c.d``,
NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) is judged by the IPv4 address it carries; Teredo
(``2001::/32``) and local-use NAT64 (``64:ff9b:1::/48``) are refused outright; another IPv6
address must be global unicast (``2000::/3``). Numeric IPv4 spellings (``2130706433``,
``0x7f.1``, ``017700000001``) are what ``getaddrinfo`` turns them into, so they are judged by the
address they resolve to.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d; holds :: and ::1 too
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix: the last 32 bits are IPv4
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215 local-use: the embedding varies, refuse
_TEREDO = ipaddress.IPv6Network("2001::/32")


class UnsafeURLError(ValueError):
    """An outbound URL refused: malformed, another scheme, credentials in it, no host, or a non-public address."""
    pass


class UnsafeAddressError(OSError):
    """A connection refused at connect time: the address is not public and the target is not marked internal.

    An ``OSError`` so that aiohttp reports it as any failed connection (``ClientConnectorError``), which
    the adapters turn into the client's 502 ``upstream_unreachable``; the message never reaches a client.
    """


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries as a transition form, or None."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _IPV4_COMPATIBLE or address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour


def is_public_address(address: IPAddress) -> bool:
    """Whether the gateway may connect to ``address`` for a target not marked internal.

    IPv4: globally routable and not multicast. IPv6: judged by the IPv4 address it embeds (mapped,
    compatible, NAT64, 6to4), Teredo and local-use NAT64 never, otherwise global unicast (``2000::/3``)
    and globally routable. A scope id (``fe80::1%eth0``) does not change the answer.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public_address(embedded)
        if address in _TEREDO or address in _NAT64_LOCAL:
            return False
        return address in _GLOBAL_UNICAST and address.is_global
    return address.is_global and not address.is_multicast


def _address(text: str) -> IPAddress | None:
    """``text`` as an IP address, or None if it is not one (``ipaddress`` accepts only canonical spellings)."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


GetAddrInfo = Callable[..., list[tuple[Any, ...]]]


def validate_outbound_url(url: str, *, internal: bool = False, schemes: tuple[str, ...] = ("http", "https"),
                          allow_credentials: bool = False, unresolved_ok: bool = False, subject: str = "provider",
                          getaddrinfo: GetAddrInfo = socket.getaddrinfo) -> str:
    """Return ``url`` unchanged if the gateway may call it; raise ``UnsafeURLError`` otherwise.

    The scheme must be one of ``schemes``; credentials need ``allow_credentials``. ``internal``
    skips the address check. A host that is not a literal IP is resolved with ``getaddrinfo`` (a
    blocking DNS lookup; numeric spellings such as ``0x7f.1`` resolve locally) and every address
    must pass ``is_public_address``; a name that does not resolve is refused, unless
    ``unresolved_ok`` (the connect-time guard judges it when it does). The answer holds when
    checked: DNS may resolve the name differently when a connection is made, which is why the
    upstream client checks again then (``GuardedResolver``, ``guarded_socket``). ``subject`` names
    what the URL belongs to in the refusal ("mark the provider internal").
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
    literal = _address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = getaddrinfo(host, port or (443 if parts.scheme == "https" else 80), proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError):
            if unresolved_ok:
                return url
            raise UnsafeURLError(f"host {host!r} does not resolve") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not all(is_public_address(address) for address in addresses):
        raise UnsafeURLError(f"{host} resolves to a non-public address; mark the {subject} internal to allow it")
    return url


def _refuse(host: str, address: str) -> UnsafeAddressError:
    # The operator needs the name and the address to fix the entry; the client only ever sees a 502.
    logger.warning("refused an outbound connection to %s (%s): not a public address; mark the provider or its "
                   "egress proxy internal if it is meant to be reached", host, address)
    return UnsafeAddressError(f"{host}: not a public address")


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that refuses a host name resolving to any non-public address.

    Wraps ``inner`` (aiohttp's default resolver unless given: tests pass one whose answers they
    control). ``resolve`` returns ``inner``'s answer (a list of ``ResolveResult``) only if every
    address passes ``is_public_address``; otherwise it logs the name and the address and raises
    ``UnsafeAddressError``, before anything is connected or cached. Build it inside the event loop;
    ``close`` closes ``inner`` only if the guard made it.
    """

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._owns_inner = inner is None
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        """``inner``'s addresses for ``host``; raises ``UnsafeAddressError`` (a non-public one among them)
        or whatever ``inner`` raises (``OSError`` for a name that does not resolve)."""
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = _address(result["host"])
            if address is None or not is_public_address(address):
                raise _refuse(host, result["host"])
        return results

    async def close(self) -> None:
        """Close ``inner`` if the guard made it (a resolver passed in is its owner's to close)."""
        if self._owns_inner:
            await self._inner.close()


SocketFactory = Callable[[tuple[Any, ...]], socket.socket]


def guarded_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """An aiohttp ``socket_factory``: a new TCP socket for ``addr_info`` (getaddrinfo's ``(family, type,
    proto, canonname, sockaddr)``) if its address passes ``is_public_address``; raises
    ``UnsafeAddressError`` otherwise. It sees every connection the connector opens, literal IPs
    included (aiohttp hands those to no resolver)."""
    family, type_, proto, _canonname, sockaddr = addr_info
    address = _address(sockaddr[0])
    if address is None or not is_public_address(address):
        raise _refuse(str(sockaddr[0]), str(sockaddr[0]))
    return socket.socket(family=family, type=type_, proto=proto)
