"""The client's address behind trusted proxies (`serve --trust-proxy CIDR`).

A connection whose TCP peer is inside a trusted network came through a proxy
we run; its `X-Forwarded-For` says who the proxy's client was. Each proxy on
the way appends the address it saw, so the header reads
`client, proxy1, proxy2, ...` and only its right end was written by proxies
we trust: anything to the left of the first untrusted address may be made up
by the client. The standard safe walk (nginx's `real_ip_recursive on`):

* the peer is not trusted (or nothing is trusted): the peer, header ignored;
* else walk the header from the right; the first address that is not inside
  a trusted network is the client. Addresses left of it are never looked at;
* every address in the header is trusted: the left-most one (the farthest
  hop we can name);
* no header, an empty one, or an entry met on the walk that is not a bare
  IP address (a port, `unknown`, garbage): the peer.

Several `X-Forwarded-For` lines count as one list, in order (HAProxy's
`option forwardfor` adds its own line after the client's). IPv4-mapped IPv6
addresses (`::ffff:10.0.0.1`) count as their IPv4 address.

Pure: `client_address` takes strings and networks and returns a string.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sanic import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(text: str) -> Network:
    """One `--trust-proxy` value: a CIDR (`10.0.0.0/8`, `fd00::/8`) or one
    address (`127.0.0.1` = `/32`). Host bits set (`10.0.0.1/8`) is refused:
    it is more likely a typo than a wish to trust the whole network."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a network (CIDR such as 10.0.0.0/8, or one address): {exc}") from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None and net.prefixlen >= 96:
        # ::ffff:10.0.0.0/104 is 10.0.0.0/8: addresses are compared unmapped.
        net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    return net


def parse_networks(texts: Iterable[str | Network]) -> tuple[Network, ...]:
    return tuple(
        t if isinstance(t, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else parse_network(t) for t in texts
    )


def _address(text: str) -> Address | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(ip: Address, trusted: Sequence[Network]) -> bool:
    return any(ip.version == net.version and ip in net for net in trusted)


def client_address(peer: str, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The address the per-IP limits and logs use for a connection from TCP
    peer `peer` carrying the `X-Forwarded-For` lines `forwarded_for`."""
    if not trusted:
        return peer
    peer_ip = _address(peer)
    if peer_ip is None or not _trusted(peer_ip, trusted):
        return peer
    entries = [e for line in forwarded_for for e in line.split(",")]
    if not entries:
        return peer
    ip: Address | None = None
    for entry in reversed(entries):
        ip = _address(entry)
        if ip is None:
            return peer
        if not _trusted(ip, trusted):
            return str(ip)
    # Every hop is trusted: the farthest one.
    return str(ip)


class ClientAddresses:
    """`client_address` for Sanic requests with the node's trusted networks."""

    __slots__ = ("trusted",)

    def __init__(self, trusted: Iterable[str | Network] = ()) -> None:
        self.trusted = parse_networks(trusted)

    def of(self, request: Request) -> str:
        peer = request.ip or ""
        if not self.trusted:
            return peer
        return client_address(peer, request.headers.getall("x-forwarded-for", []), self.trusted)
