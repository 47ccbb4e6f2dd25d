"""`serve --trust-proxy CIDR`: the client address behind trusted proxies
(orderbook/server/client_address.py) for the per-IP limits and /ws logs.
The pure choice with examples and properties, then real sockets: a node
process with and without the flag, and the real docker/haproxy.cfg in front."""

from __future__ import annotations

import contextlib
import ipaddress
import logging

import pytest
import websockets
from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import InvalidStatus

from orderbook.cli import build_parser, serve_settings
from orderbook.server.client_address import client_address, parse_network, parse_networks

from .harness import eventually, serve_in_process, start_server_process, test_settings, until

pytestmark = pytest.mark.timeout(60)

LOCAL = parse_networks(["127.0.0.1/32"])


def choose(peer: str, xff: str | list[str] | None, trusted: list[str]) -> str:
    lines = [] if xff is None else [xff] if isinstance(xff, str) else xff
    return client_address(peer, lines, parse_networks(trusted))


# ------------------------------------------------------------------ the pure choice


def test_examples():
    t = ["10.0.0.0/8"]
    assert choose("10.1.1.1", "203.0.113.7", t) == "203.0.113.7"
    # The right-most untrusted address: what the client wrote to its left is ignored.
    assert choose("10.1.1.1", "1.1.1.1, 203.0.113.7", t) == "203.0.113.7"
    assert choose("10.1.1.1", "1.1.1.1, 203.0.113.7, 10.2.2.2", t) == "203.0.113.7"
    assert choose("10.1.1.1", "garbage, 203.0.113.7, 10.2.2.2", t) == "203.0.113.7"
    # Several header lines are one list, in order (HAProxy adds its own line).
    assert choose("10.1.1.1", ["198.51.100.1", "203.0.113.7"], t) == "203.0.113.7"
    # Every hop trusted: the left-most.
    assert choose("10.1.1.1", "10.9.9.9, 10.2.2.2", t) == "10.9.9.9"
    # Untrusted peer: the header is ignored (anyone can send one).
    assert choose("192.0.2.1", "203.0.113.7", t) == "192.0.2.1"
    # No proxy trusted: the peer, whatever the header says.
    assert choose("10.1.1.1", "203.0.113.7", []) == "10.1.1.1"
    # No header, an empty one, or a malformed entry met on the walk: the peer.
    for bad in (None, "", " ", "203.0.113.7,", "203.0.113.7:4711", "unknown", "10.2.2.2, 300.1.1.1", "[::1]"):
        assert choose("10.1.1.1", bad, t) == "10.1.1.1", bad
    # IPv6, and IPv4-mapped IPv6 on either side.
    assert choose("fd00::1", "2001:db8::7, fd00::2", ["fd00::/8"]) == "2001:db8::7"
    assert choose("::ffff:10.1.1.1", "::ffff:203.0.113.7", t) == "203.0.113.7"
    assert choose("10.1.1.1", "::ffff:10.3.3.3, 203.0.113.7", t) == "203.0.113.7"
    assert choose("10.1.1.1", "2001:db8::7", t) == "2001:db8::7"
    # An unparsable peer (a Unix socket) stays as it is.
    assert choose("", "203.0.113.7", t) == ""


def test_parse_network():
    assert str(parse_network("127.0.0.1")) == "127.0.0.1/32"
    assert str(parse_network(" 10.0.0.0/8 ")) == "10.0.0.0/8"
    assert str(parse_network("fd00::/8")) == "fd00::/8"
    assert str(parse_network("::ffff:10.0.0.0/104")) == "10.0.0.0/8"
    for bad in ("10.0.0.1/8", "10.0.0.0/33", "example.com", "", "10.0.0.0/8,10.1.0.0/16"):
        with pytest.raises(ValueError):
            parse_network(bad)


def test_cli_flag():
    s = serve_settings(build_parser().parse_args(["serve"]))
    assert s.trusted_proxies == ()
    s = serve_settings(build_parser().parse_args(["serve", "--trust-proxy", "127.0.0.1", "--trust-proxy", "fd00::/8"]))
    assert s.trusted_proxies == ("127.0.0.1/32", "fd00::/8")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--trust-proxy", "10.0.0.1/8"])


# A small world so that addresses fall inside the candidate networks often.
POOL = [f"10.0.{i}.{j}" for i in range(2) for j in (1, 2, 130)] + [
    "192.0.2.1",
    "203.0.113.7",
    "fd00::1",
    "fd00::2",
    "2001:db8::1",
    "::ffff:10.0.0.1",
    "::ffff:192.0.2.1",
]
NETS = ["10.0.0.0/8", "10.0.0.0/24", "10.0.1.128/25", "10.0.0.1/32", "192.0.2.0/24", "fd00::/8", "2001:db8::/32"]
addresses = st.sampled_from(POOL)
networks = st.lists(st.sampled_from(NETS), max_size=4).map(parse_networks)
junk = st.sampled_from(["", "unknown", "1.2.3.4:80", "[::1]", "300.0.0.1", "x"])


def ip(text: str):
    a = ipaddress.ip_address(text.strip())
    return a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a


def trusted(text: str, nets) -> bool:
    a = ip(text)
    return any(a.version == n.version and a in n for n in nets)


@given(peer=st.one_of(addresses, st.text(max_size=20)), lines=st.lists(st.text(max_size=40), max_size=3))
def test_nothing_trusted_is_always_the_peer(peer, lines):
    assert client_address(peer, lines, ()) == peer


@given(peer=addresses, hops=st.lists(addresses, max_size=6), nets=networks)
def test_never_a_trusted_address_when_an_untrusted_one_is_forwarded(peer, hops, nets):
    got = client_address(peer, [", ".join(hops)] if hops else [], nets)
    if not nets or not trusted(peer, nets) or not hops:
        assert got == peer
        return
    untrusted = [h for h in hops if not trusted(h, nets)]
    if untrusted:
        # The right-most untrusted hop: never one from a trusted network.
        assert not trusted(got, nets) and ip(got) == ip(untrusted[-1])
    else:
        assert ip(got) == ip(hops[0])


@given(
    peer=addresses,
    hops=st.lists(addresses, min_size=1, max_size=4),
    forged=st.lists(st.one_of(addresses, junk), max_size=4),
    nets=networks,
    split=st.booleans(),
)
def test_what_the_client_prepends_cannot_move_the_answer_past_an_untrusted_hop(peer, hops, forged, nets, split):
    """A client controls everything left of the first address a trusted proxy
    wrote: once an untrusted hop is there, prepending anything changes nothing."""
    honest = client_address(peer, [", ".join(hops)], nets)
    lines = [", ".join(forged), ", ".join(hops)] if split and forged else [", ".join(forged + hops)]
    if any(not trusted(h, nets) for h in hops):
        assert client_address(peer, lines, nets) == honest


@given(peer=addresses, lines=st.lists(st.text(max_size=40), max_size=3), nets=networks)
def test_any_header_gives_the_peer_or_a_forwarded_address(peer, lines, nets):
    got = client_address(peer, lines, nets)
    entries = {str(ip(e)) for line in lines for e in line.split(",") if _is_ip(e)}
    assert got == peer or got in entries


def _is_ip(text: str) -> bool:
    try:
        ip(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------ real sockets


async def handshake(url: str, xff: str | None, stack: contextlib.AsyncExitStack) -> int:
    """101 (kept open on `stack`) or the refusal's status."""
    headers = {"X-Forwarded-For": xff} if xff is not None else {}
    try:
        await stack.enter_async_context(websockets.connect(url, proxy=None, additional_headers=headers))
    except InvalidStatus as exc:
        return exc.response.status_code
    return 101


@pytest.mark.parametrize("trust", [True, False])
async def test_per_ip_limit_counts_the_forwarded_client_only_from_a_trusted_proxy(tmp_path, trust):
    flags = ["--trust-proxy", "127.0.0.1/32"] if trust else []
    node = start_server_process(tmp_path, "--no-simulator", "--max-connections-per-ip", "2", *flags)
    try:
        async with contextlib.AsyncExitStack() as stack:
            got = [await handshake(node.url, f"10.0.0.{i}", stack) for i in (1, 2, 3)]
            if trust:
                # Three clients: all in. A second 10.0.0.1 too; a third is refused.
                assert got == [101, 101, 101]
                assert await handshake(node.url, "10.0.0.1", stack) == 101
                assert await handshake(node.url, "10.0.0.1", stack) == 429
                assert await handshake(node.url, "10.0.0.2", stack) == 101
                who = "10.0.0.1"
            else:
                # The header is ignored: all three are 127.0.0.1.
                assert got == [101, 101, 429]
                who = "127.0.0.1"
        text = node.log_path.read_text()
        assert f"refused /ws handshake from {who}: 2 connections open" in text, text
    finally:
        node.stop()


async def test_gate_and_connection_peer_in_process(caplog):
    settings = test_settings(trusted_proxies=("127.0.0.0/8",), max_connections_per_ip=1)
    async with serve_in_process(settings) as srv:
        gate = srv.app.ctx.state.gate
        async with contextlib.AsyncExitStack() as stack:
            assert await handshake(srv.url, "198.51.100.1, 127.0.0.5", stack) == 101
            await eventually(lambda: gate.connections("198.51.100.1") == 1)
            assert [c.peer for c in srv.hub.connections] == ["198.51.100.1"]
            # /feed is counted the same way.
            with caplog.at_level(logging.WARNING, "orderbook.limits"):
                assert await handshake(srv.feed_url, "198.51.100.1", stack) == 429
            assert "from 198.51.100.1" in caplog.text
            # A malformed header: the peer.
            assert await handshake(srv.url, "198.51.100.1:5555", stack) == 101
            await eventually(lambda: gate.connections("127.0.0.1") == 1)
        await eventually(lambda: not gate.connections("198.51.100.1") and not gate.connections("127.0.0.1"))


async def test_behind_the_real_haproxy_config(tmp_path):
    """docker/haproxy.cfg (`option forwardfor`) in front of a node trusting
    127.0.0.1. HAProxy adds its own X-Forwarded-For line with the address it
    saw, 127.0.0.1 here: this host's test clients are on the trusted address
    themselves, so a client's own header is believed (in production clients
    are not inside --trust-proxy and theirs is skipped past)."""
    from .test_cluster_failures import running_haproxy

    node = start_server_process(
        tmp_path, "--no-simulator", "--max-connections-per-ip", "2", "--trust-proxy", "127.0.0.1/32"
    )
    try:
        # Both of the config's slots on the one node.
        slot = f"127.0.0.1:{node.port}"
        async with running_haproxy(tmp_path, slot, slot) as (lb_ws, _stats), contextlib.AsyncExitStack() as stack:
            # Node sees "10.0.0.9" + "127.0.0.1": 127.0.0.1 trusted, 10.0.0.9 is the client.
            assert [await handshake(lb_ws, "10.0.0.9", stack) for _ in range(3)] == [101, 101, 429]
            assert await handshake(lb_ws, "10.0.0.8", stack) == 101
            # No header of the client's: "127.0.0.1" only, every hop trusted: 127.0.0.1.
            assert [await handshake(lb_ws, None, stack) for _ in range(3)] == [101, 101, 429]
        await until(lambda: "refused /ws handshake from 10.0.0.9: 2 connections open" in node.log_path.read_text())
    finally:
        node.stop()
