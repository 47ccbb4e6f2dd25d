"""The two JSON shapes of one book (docs/protocol.md §1.3): GET /book's
decimal strings and snake_case, and the WebSocket's protobuf JSON mapping
with ticks, lots and camelCase, describe the same book at the same seq."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from orderbook.core.units import format_units
from orderbook.wire import codec

from .harness import Publisher, http_get, instrument, serve_in_process, update

pytestmark = pytest.mark.timeout(30)


async def test_http_json_and_websocket_json_are_one_book_at_one_seq():
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send(
            [instrument("ETH-USD", 2, 6)],
            [update("ETH-USD", bids=[(318999, 1_500_000), (318998, 7)], asks=[(319001, 250_000_000)])],
        )
        async with websockets.connect(srv.url, subprotocols=[codec.SUBPROTOCOL_JSON]) as ws:
            await ws.send(json.dumps({"subscribe": {"symbol": "ETH-USD", "requestId": "1"}}))
            snapshot = None
            async with asyncio.timeout(5):
                while snapshot is None:
                    msg = json.loads(await ws.recv())
                    snapshot = msg.get("snapshot")
            status, _, body = await http_get(srv.port, "/book/ETH-USD?depth=0")
            assert status == 200
            book = json.loads(body)

    # WebSocket JSON: camelCase keys, ticks and lots as strings, seq a string.
    inst = snapshot["instrument"]
    assert (inst["priceScale"], inst["sizeScale"]) == (2, 6)
    assert snapshot["bids"][0] == {"price": "318999", "size": "1500000"}
    # HTTP JSON: snake_case keys, exact decimals, seq a number.
    assert (book["instrument"]["price_scale"], book["instrument"]["size_scale"]) == (2, 6)
    assert book["bids"][0] == ["3189.99", "1.500000"]

    assert (book["epoch"], str(book["seq"]), book["checksum"]) == (
        snapshot["epoch"],
        snapshot["seq"],
        snapshot["checksum"],
    )
    for side in ("bids", "asks"):
        as_decimals = [[format_units(int(lv["price"]), 2), format_units(int(lv["size"]), 6)] for lv in snapshot[side]]
        assert as_decimals == book[side], side
