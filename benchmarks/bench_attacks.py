"""Hostile clients against a real node process: for each attack, what two
other subscribers (following a symbol published every 20 ms) and /healthz
see while it runs, what happens to the attacker, and the node's RSS.

    .venv/bin/python benchmarks/bench_attacks.py                  # this tree
    git worktree add /tmp/before HEAD
    .venv/bin/python benchmarks/bench_attacks.py --root /tmp/before   # another tree's node

The node runs with its defaults except --no-simulator, a feed token,
--ping-interval 1 --ping-timeout 2 and --slow-client-timeout 2 (so the
attacks end within seconds). Attacks: the issue's figures. What an attack
needs beforehand (a big book, a full history, a message encoded ahead) is
done before the watch starts; only the attack itself is watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from _common import base_parser, machine_info, markdown_table, print_header  # noqa: E402

from orderbook.wire import codec  # noqa: E402
from tests.attacks import (  # noqa: E402
    OP_PONG,
    RawClient,
    app_pings,
    churn_pairs,
    client_frame,
    empty_continuations,
    feed_bytes,
    handshake_storm_in_subprocess,
    http_get_all,
    publish_many,
    resume_flood,
    rss_mb,
    watched_symbol,
    ws_pings,
)
from tests.harness import (  # noqa: E402
    FEED_TOKEN,
    Publisher,
    free_port,
    http_get,
    instrument,
    update,
    wait_ready,
)

OBSERVE = 8.0  # seconds each attack is watched
HISTORY = 10_000  # the node's --history-entries (its default), filled for the resume flood


def start_node(root: Path, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "orderbook.cli",
        "serve",
        "--port",
        str(port),
        "--no-simulator",
        "--feed-token",
        FEED_TOKEN,
        "--ping-interval",
        "1",
        "--ping-timeout",
        "2",
        "--slow-client-timeout",
        "2",
    ]
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONUNBUFFERED="1")
    with open(log, "wb") as f:
        proc = subprocess.Popen(args, cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT)
    wait_ready(f"http://127.0.0.1:{port}", 30, proc)
    return proc, port


async def outcome_of(atk: RawClient, reads: bool) -> str:
    """How the attacker's connection ended within OBSERVE seconds."""
    if not reads:
        # It never reads: did the node close the TCP connection?
        deadline = time.monotonic() + OBSERVE
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(atk.reader.read(0), 0.05)
            except TimeoutError:
                pass
            except OSError:
                return "closed (reset)"
            if atk.reader.at_eof() or atk.writer.transport.is_closing():
                return "closed"
            await asyncio.sleep(0.1)
        return "still open"
    code, frames = await atk.read_until_close(OBSERVE)
    return f"close {code}" if code else f"open/EOF after {len(frames)} frames"


def levels(n: int, start: int = 100) -> list[tuple[int, int]]:
    return [(start + i, 1) for i in range(n)]


async def prepare(port: int, name: str, pub: Publisher) -> dict:
    """What the attack needs, before the watch starts."""
    ctx: dict = {}
    if name == "1M levels, one update":
        ctx["msg"] = feed_bytes(1, [instrument("BIG")], [update("BIG", bids=levels(1_000_000))])
    elif name == "100,000 symbols, one batch":
        ctx["msg"] = feed_bytes(1, [instrument(f"S{i:06d}") for i in range(100_000)])
    elif name == "GET /book depth=0":
        # The biggest book the node takes: --max-levels-per-side (100,000) on each
        # side, in batches of --max-batch-levels; 1M bids if it has no such limit.
        replies = await publish_many(
            pub,
            [
                feed_bytes(900_001, [instrument("BIG")], [update("BIG", bids=levels(100_000))]),
                feed_bytes(900_002, (), [update("BIG", asks=levels(100_000, 2_000_000))]),
            ],
        )
        assert all(r.WhichOneof("kind") == "ack" for r in replies), replies
        sides = [("bids", 100_000), ("asks", 100_000)]
        if (await http_get(port, "/book/BIG?depth=5000"))[0] == 200:  # no --http-max-depth: no limits
            msg = feed_bytes(900_003, (), [update("BIG", bids=levels(1_000_000), replace=True)])
            replies = await publish_many(pub, [msg])
            assert replies[0].WhichOneof("kind") == "ack", replies
            sides = [("bids", 1_000_000), ("asks", 100_000)]
        ctx["levels"] = sum(n for _, n in sides)
    elif name == "20 resumes over a full history":
        await pub.send([instrument("HIST")], [update("HIST", bids=[(100, 1)], replace=True)])
        msgs = [
            feed_bytes(100_000 + i, (), [update("HIST", bids=[(100 + i % 100, 1 + i % 7)])])
            for i in range(HISTORY + 100)
        ]
        await publish_many(pub, msgs)
        _, _, body = await http_get(port, "/symbols")
        hist = next(s for s in json.loads(body)["symbols"] if s["symbol"] == "HIST")
        ctx["flood"] = resume_flood(20, "HIST", int(hist["epoch"]), hist["seq"] - HISTORY)
    return ctx


async def feed_attack(port: int, msg: bytes) -> tuple[str, str]:
    """One big /feed message from a second publisher: the node's answer."""
    async with Publisher.connect(f"ws://127.0.0.1:{port}/feed") as atk:
        try:
            await atk.ws.send(msg)
            reply = codec.parse_feed_reply(await asyncio.wait_for(atk.ws.recv(), OBSERVE))
        except TimeoutError:
            return "no answer", f"{len(msg) / 2**20:.1f} MB sent"
        except Exception as exc:
            rcvd = getattr(exc, "rcvd", None)
            return f"close {rcvd.code if rcvd else type(exc).__name__}", f"{len(msg) / 2**20:.1f} MB sent"
    if reply.WhichOneof("kind") == "error":
        name = codec.ErrorCode.Name(reply.error.code).removeprefix("ERROR_CODE_")
        return name, f"{len(msg) / 2**20:.1f} MB; {reply.error.message[:100]}"
    return reply.WhichOneof("kind"), f"{len(msg) / 2**20:.1f} MB"


async def attack(port: int, name: str, ctx: dict) -> tuple[str, str]:
    if "msg" in ctx:
        return await feed_attack(port, ctx["msg"])
    if name == "GET /book depth=0":
        status, n = await http_get_all(port, "/book/BIG?depth=0", OBSERVE)
        return f"HTTP {status}", f"{ctx['levels']:,} levels, {n / 2**20:.1f} MB read"
    if name == "2,000 handshakes at once":
        counts = await handshake_storm_in_subprocess(port, 2_000)
        return ", ".join(f"{v:,} x {k}" for k, v in sorted(counts.items())), ""
    if name == "20 resumes over a full history":
        atk = await RawClient.connect(port, rcvbuf=4096)
        flood = ctx["flood"]
        w = asyncio.create_task(atk.write(flood))
        await asyncio.sleep(OBSERVE)  # never reads meanwhile
        # Then read what reached its socket: all the node queued if it is still open.
        got, end = 0, "still open"
        try:
            while True:
                op, payload = await atk.read_frame(1.0)
                got += len(payload) + 2
                if op == 0x8:
                    end = f"close {int.from_bytes(payload[:2], 'big') if payload else None}"
                    break
        except TimeoutError:
            pass
        except asyncio.IncompleteReadError:
            end = "closed (EOF)"
        except OSError as exc:
            end = f"closed ({type(exc).__name__})"
        w.cancel()
        atk.abort()
        return end, f"{len(flood):,} B in, {got / 2**20:.1f} MB read"
    if name == "churn, reading":
        atk = await RawClient.connect(port)
        w = asyncio.create_task(atk.write(churn_pairs(20_000, "TEST")))
        code, frames = await atk.read_until_close(OBSERVE)
        out = f"close {code}" if code else "open"
        w.cancel()
        return out, f"{len(frames)} replies"
    if name == "churn, not reading":
        atk = await RawClient.connect(port, rcvbuf=4096)
        w = asyncio.create_task(atk.write(churn_pairs(80_000, "TEST")))
    elif name == "WS pings, not reading":
        atk = await RawClient.connect(port, rcvbuf=4096)
        w = asyncio.create_task(atk.write(ws_pings(400_000, 1)))
    elif name == "app Pings, one write":
        atk = await RawClient.connect(port)
        w = asyncio.create_task(atk.write(app_pings(100_000)))
        code, frames = await atk.read_until_close(OBSERVE)
        w.cancel()
        return (f"close {code}" if code else "open"), f"{len(frames)} replies"
    elif name == "2M empty continuations":
        atk = await RawClient.connect(port)
        w = asyncio.create_task(atk.write(empty_continuations(2_000_000)))
    else:  # unsolicited pongs, never reads
        atk = await RawClient.connect(port, rcvbuf=4096)

        async def pongs():
            while True:
                if not await atk.write(client_frame(OP_PONG)):
                    return
                await asyncio.sleep(0.5)

        w = asyncio.create_task(pongs())
    out = await outcome_of(atk, reads=False)
    w.cancel()
    with contextlib.suppress(BaseException):
        await w
    atk.abort()
    return out, ""


ATTACKS = [
    "churn, reading",
    "churn, not reading",
    "WS pings, not reading",
    "app Pings, one write",
    "2M empty continuations",
    "unsolicited pongs",
    "1M levels, one update",
    "100,000 symbols, one batch",
    "GET /book depth=0",
    "2,000 handshakes at once",
    "20 resumes over a full history",
]


async def run_one(port: int, pid: int, name: str) -> list[str]:
    async with watched_symbol(port, settle=0.5, prepare=lambda pub: prepare(port, name, pub)) as w:
        rss0, peak = rss_mb(pid), 0.0
        sampling = asyncio.Event()

        async def sample():
            nonlocal peak
            while not sampling.is_set():
                peak = max(peak, rss_mb(pid))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        start = time.monotonic()
        outcome, note = await attack(port, name, w.prepared)
        took = time.monotonic() - start
        await asyncio.sleep(0.5)  # the others' view just after the attack
        sampling.set()
        await sampler
    watch = w.watch
    return [
        name,
        f"{watch.max_gap * 1000:.0f}",
        f"{watch.healthz_max * 1000:.0f}",
        f"{outcome}{' (' + note + ')' if note else ''} in {took:.1f} s",
        f"{rss0:.0f} / {peak:.0f} / {rss_mb(pid):.0f}",
        "yes" if w.gap_free() else "NO",
    ]


async def main_async(root: Path, only: list[str] | None) -> list[list[str]]:
    rows = []
    for name in ATTACKS:
        if only and not any(o in name for o in only):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            proc, port = start_node(root, Path(tmp) / "node.log")
            try:
                rows.append(await run_one(port, proc.pid, name))
            except Exception as exc:  # a node that froze or died is a result too
                rows.append([name, "-", "-", f"failed: {type(exc).__name__} {exc}"[:80], "-", "-"])
            finally:
                proc.kill()
                proc.wait()
        print(" | ".join(rows[-1]), file=sys.stderr)
    return rows


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=ROOT, help="the tree whose node is started")
    p.add_argument("--only", nargs="*", help="attacks whose name contains one of these")
    args = p.parse_args()
    print_header(f"Attacks against the node of {args.root}", machine_info())
    rows = asyncio.run(main_async(args.root.resolve(), args.only))
    print(
        markdown_table(
            [
                "attack",
                "others' worst silence (ms)",
                "/healthz max (ms)",
                "attacker",
                "node RSS MB before / peak / after",
                "no gap",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
