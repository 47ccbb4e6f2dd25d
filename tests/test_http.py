"""The plain HTTP endpoints, against a real server."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from orderbook.wire import codec

from .harness import Publisher, http_get, instrument, serve_in_process, test_settings, update

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0


async def get_json(port: int, path: str, status: int = 200) -> dict:
    got, headers, body = await http_get(port, path)
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    return json.loads(body)


def connect(url: str):
    return websockets.connect(url, proxy=None)


async def recv(ws):
    return codec.parse_server_message(await asyncio.wait_for(ws.recv(), WAIT))


async def registered(ws) -> None:
    """Round-trip a Ping: once answered, the server counts the connection."""
    await ws.send(codec.ping_message(1).SerializeToString())
    assert (await recv(ws)).WhichOneof("kind") == "pong"


async def wait_until(pred) -> None:
    async with asyncio.timeout(WAIT):
        # Polled: the state is seen over HTTP, there is no event to await.
        while not await pred():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_healthz():
    async with serve_in_process() as srv:
        body = await get_json(srv.port, "/healthz")
        assert body["status"] == "up"
        assert body["epoch"] == str(srv.hub.epoch)


async def test_readyz_full_and_back():
    async with serve_in_process(test_settings(max_connections=2)) as srv:
        body = await get_json(srv.port, "/readyz")
        assert (body["status"], body["connections"], body["max_connections"]) == ("ready", 0, 2)
        async with connect(srv.url) as a:
            await registered(a)
            assert (await get_json(srv.port, "/readyz"))["status"] == "ready"
            async with connect(srv.url) as b:
                await registered(b)
                status, headers, raw = await http_get(srv.port, "/readyz")
                body = json.loads(raw)
                assert (status, body["status"], body["connections"]) == (503, "full", 2)
                assert int(headers["retry-after"]) > 0

            async def ready() -> bool:
                return (await http_get(srv.port, "/readyz"))[0] == 200

            # b has left: ready again once the server has dropped it.
            await wait_until(ready)
            body = await get_json(srv.port, "/readyz")
            assert (body["status"], body["connections"]) == ("ready", 1)


async def test_symbols_lists_every_instrument():
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        assert (await get_json(srv.port, "/symbols")) == {"symbols": []}
        reply = await pub.send(
            [
                instrument("BTC-USD", 2, 8, base="BTC", quote="USD", venue="kraken"),
                instrument("AAPL", 2, 0, price_increment=5, size_increment=100),
            ],
            [update("BTC-USD", bids=[(6000001, 1)]), update("BTC-USD", asks=[(6000002, 3)])],
        )
        assert reply.WhichOneof("kind") == "ack"
        body = await get_json(srv.port, "/symbols")
        epoch = str(srv.hub.epoch)  # a string: 64-bit values do not survive JSON numbers
        assert body == {
            "symbols": [
                {
                    "symbol": "AAPL",
                    "price_scale": 2,
                    "size_scale": 0,
                    "price_increment": "0.05",
                    "size_increment": "100",
                    "base": "",
                    "quote": "",
                    "venue": "",
                    "epoch": epoch,
                    "seq": 0,
                    "subscribers": 0,
                },
                {
                    "symbol": "BTC-USD",
                    "price_scale": 2,
                    "size_scale": 8,
                    "price_increment": "0.01",
                    "size_increment": "0.00000001",
                    "base": "BTC",
                    "quote": "USD",
                    "venue": "kraken",
                    "epoch": epoch,
                    "seq": 2,
                    "subscribers": 0,
                },
            ]
        }


async def test_book_exact_decimals_and_sequence():
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        reply = await pub.send(
            [instrument("BTC-USD", 2, 8), instrument("SPREAD", 2, 0)],
            [
                update("BTC-USD", bids=[(6000001, 1), (6000000, 250000000)]),
                update("BTC-USD", asks=[(6000002, 100000000), (6000100, 12345678901)]),
                update("SPREAD", bids=[(-50, 3)], asks=[(0, 1)]),
            ],
        )
        assert reply.WhichOneof("kind") == "ack"
        async with connect(srv.url) as ws:
            await ws.send(codec.subscribe_message("BTC-USD").SerializeToString())
            assert (await recv(ws)).WhichOneof("kind") == "subscribed"
            snap = (await recv(ws)).snapshot

            book = await get_json(srv.port, "/book/BTC-USD?depth=0")
            assert (book["symbol"], book["epoch"], book["seq"]) == ("BTC-USD", str(snap.epoch), snap.seq)
            assert book["checksum"] == snap.checksum
            assert book["instrument"]["price_scale"] == 2 and book["instrument"]["size_scale"] == 8
            assert book["bids"] == [["60000.01", "0.00000001"], ["60000.00", "2.50000000"]]
            assert book["asks"] == [["60000.02", "1.00000000"], ["60001.00", "123.45678901"]]

            top = await get_json(srv.port, "/book/BTC-USD?depth=1")
            assert top["bids"] == [["60000.01", "0.00000001"]] and top["asks"] == [["60000.02", "1.00000000"]]
            assert (await get_json(srv.port, "/book/BTC-USD"))["bids"] == book["bids"]  # default depth 20

            # After a change, the endpoint and the stream agree on where the book stands.
            await pub.send(updates=[update("BTC-USD", bids=[(6000001, 0)])])
            delta = (await recv(ws)).delta
            book = await get_json(srv.port, "/book/BTC-USD?depth=0")
            assert (book["epoch"], book["seq"], book["checksum"]) == (str(delta.epoch), delta.seq, delta.checksum)
            assert book["bids"] == [["60000.00", "2.50000000"]]

        spread = await get_json(srv.port, "/book/SPREAD?depth=5")
        assert spread["bids"] == [["-0.50", "3"]] and spread["asks"] == [["0.00", "1"]]


@pytest.mark.parametrize(
    "path, status",
    [("/book/NOPE", 404), ("/book/X?depth=-1", 400), ("/book/X?depth=abc", 400), ("/book/X?depth=1.5", 400)],
)
async def test_book_bad_requests(path, status):
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("X")], [update("X", bids=[(1, 1)])])
        body = await get_json(srv.port, path, status)
        assert body["error"]
