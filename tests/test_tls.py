"""TLS in the node (serve --tls-cert, --tls-key): wss:// and https:// on the
node's own port, with a throwaway CA (trustme). The Python client streams and
resumes over TLS, the accept pacer and the subscriber takeover work on TLS
transports, a client that does not trust the certificate stops with the
verification error, the CLI clients take --ca and $SSL_CERT_FILE, a bad key
stops `serve` with one line, and HAProxy's TLS variant (docker/haproxy-tls.cfg)
serves wss:// in front of a plain node."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from orderbook.client import OrderbookClient
from orderbook.server import tls as server_tls
from orderbook.server.sanic_seam import PacedProtocol
from orderbook.server.subscriber_socket import SubscriberSocket
from orderbook.session.backoff import Backoff
from orderbook.wire import codec

from .harness import (
    FEED_TOKEN,
    ROOT,
    FixedDelay,
    Publisher,
    eventually,
    free_port,
    instrument,
    serve_in_process,
    start_server_process,
    test_settings,
    update,
)
from .test_deploy_configs import haproxy_env, tool

pytestmark = pytest.mark.timeout(60)


class Pki:
    """A throwaway CA and a certificate it signed for 127.0.0.1, as files."""

    def __init__(self, folder: Path) -> None:
        self.ca = trustme.CA()
        issued = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert, self.key = folder / "cert.pem", folder / "key.pem"
        self.ca_file, self.pem = folder / "ca.pem", folder / "site.pem"
        issued.cert_chain_pems[0].write_to_path(str(self.cert))
        issued.private_key_pem.write_to_path(str(self.key))
        issued.private_key_and_cert_chain_pem.write_to_path(str(self.pem))
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        # Another CA's certificate and key: a key that is not the certificate's.
        other = trustme.CA()
        self.other_ca_file, self.other_key = folder / "other-ca.pem", folder / "other-key.pem"
        other.cert_pem.write_to_path(str(self.other_ca_file))
        other.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(self.other_key))

    def server_context(self) -> ssl.SSLContext:
        return server_tls.server_context(str(self.cert), str(self.key))

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def untrusting_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.other_ca_file))


@pytest.fixture
def pki(tmp_path) -> Pki:
    return Pki(tmp_path)


def on_loop(kind: str, scenario: Coroutine[Any, Any, None]) -> None:
    """Run `scenario` on asyncio's loop or on uvloop (what `orderbook serve`
    runs on): their TLS transports are separate implementations."""
    factory = None
    if kind == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario)


both_loops = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


def quick_backoff() -> Backoff:
    return Backoff(base=0.05, cap=0.2, rng=random.Random(1))


async def publish(pub: Publisher, updates, instruments=()) -> None:
    reply = await pub.send(instruments, updates)
    assert reply.WhichOneof("kind") == "ack", reply


def get_json(url: str, context: ssl.SSLContext) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=5, context=context) as r:
        return r.status, json.load(r)


# ------------------------------------------------------------------ the Python client over wss://


@both_loops
def test_client_streams_over_wss_and_resumes_after_a_cut_without_a_gap(pki, loop):
    on_loop(loop, resume_after_a_cut(pki))


async def resume_after_a_cut(pki: Pki) -> None:
    async with (
        serve_in_process(ssl=pki.server_context()) as srv,
        Publisher.connect(srv.feed_url, ssl=pki.client_context()) as pub,
    ):
        assert srv.url.startswith("wss://")
        await publish(pub, [update("T", bids=[(990, 5)], asks=[(1010, 5)])], [instrument("T")])
        resumed: list[tuple[int, int]] = []

        def on_update(symbol, follower, kind):
            if kind == "resumed":
                resumed.append((follower.seq, srv.hub.channels[symbol].seqbook.seq))

        async with OrderbookClient(
            srv.url, ["T"], record=True, ssl=pki.client_context(), backoff=FixedDelay(0.5), on_update=on_update
        ) as client:
            await client.wait_synced(timeout=10)
            for i in range(10):
                await publish(pub, [update("T", bids=[(980 + i, 1 + i)])])
            await client.wait_seq("T", srv.hub.channels["T"].seqbook.seq)

            # Server side: the subscriber's transport is TLS, and after the
            # takeover its protocol is the subscriber socket, not Sanic's.
            [conn] = srv.hub.connections
            assert conn.transport.get_extra_info("ssl_object") is not None
            assert isinstance(conn.transport.get_protocol(), SubscriberSocket)

            conn.transport.abort()  # the TLS connection just ends: no close frame
            await eventually(lambda: not client.connected, 10, "the client to see the cut")
            for i in range(10):  # published while the client is away (0.5 s)
                await publish(pub, [update("T", asks=[(1011 + i, 2 + i)])])
            await eventually(lambda: client.stats.resumes >= 1, 10, "the resume")
            last = srv.hub.channels["T"].seqbook.seq
            f = await client.wait_seq("T", last, timeout=10)

            assert f.book == srv.hub.channels["T"].seqbook.book
            assert client.snapshot_counts["T"] == 1  # resumed, not re-snapshotted
            (snap,) = client.snapshot_seqs["T"]
            epoch = snap[0]
            assert client.seen_seqs["T"] == [(epoch, q) for q in range(snap[1] + 1, last + 1)]
            st = client.stats
            assert (st.reconnects, st.resyncs, st.gaps, st.duplicates, st.checksum_failures) == (1, 0, 0, 0, 0)
            [conn] = srv.hub.connections
            assert conn.transport.get_extra_info("ssl_object") is not None
            assert isinstance(conn.transport.get_protocol(), SubscriberSocket)
            [(held, published)] = resumed
            assert held < published, "nothing was missed: the resume replayed no deltas"


async def test_https_endpoints_and_a_plain_client_on_the_tls_port(pki):
    async with serve_in_process(ssl=pki.server_context()) as srv:
        status, body = await asyncio.to_thread(get_json, srv.http + "/healthz", pki.client_context())
        assert status == 200 and body["status"] == "up"
        status, body = await asyncio.to_thread(get_json, srv.http + "/readyz", pki.client_context())
        assert status == 200 and body["status"] == "ready"
        # Plain HTTP on the TLS port is not served: the connection ends, no hang.
        with pytest.raises((OSError, http.client.HTTPException)):
            await asyncio.to_thread(get_json, f"http://127.0.0.1:{srv.port}/healthz", pki.client_context())


async def test_a_client_that_does_not_trust_the_certificate_stops_with_the_verification_error(pki):
    async with serve_in_process(ssl=pki.server_context()) as srv:
        client = OrderbookClient(srv.url, ["T"], ssl=pki.untrusting_context(), backoff=quick_backoff())
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await asyncio.wait_for(client.run(), 20)
        assert client.stats.connect_failures == 1  # not retried: retrying would not help
        assert not srv.hub.connections

        # A plain ws:// URL with a context is refused at once, not sent in clear.
        with pytest.raises(ValueError, match="wss://"):
            OrderbookClient(f"ws://127.0.0.1:{srv.port}/ws", ["T"], ssl=pki.client_context())


# ------------------------------------------------------------------ the accept pacer and the takeover over TLS


@both_loops
def test_paced_tls_connections_are_started_later_and_stream(pki, monkeypatch, loop):
    """With one new connection started per loop turn, upgrade requests that
    arrive together over TLS are parked (reading paused on the TLS
    transport), started in later turns, and taken over as subscribers."""
    started: list[PacedProtocol] = []
    original = PacedProtocol.start

    def counting_start(self):
        started.append(self)
        original(self)

    monkeypatch.setattr(PacedProtocol, "start", counting_start)
    on_loop(loop, paced_connections(pki, started))


async def paced_connections(pki: Pki, started: list[PacedProtocol]) -> None:
    n = 24
    settings = replace(test_settings(), accepts_per_turn=1)
    async with (
        serve_in_process(settings, ssl=pki.server_context()) as srv,
        Publisher.connect(srv.feed_url, ssl=pki.client_context()) as pub,
    ):
        await publish(pub, [update("T", bids=[(990, 5)], asks=[(1010, 5)])], [instrument("T")])
        ctx = pki.client_context()
        streams = [await asyncio.open_connection("127.0.0.1", srv.port, ssl=ctx) for _ in range(n)]
        protos = [ClientProtocol(parse_uri(srv.url)) for _ in range(n)]
        # Every TLS handshake is done; the upgrade requests now go out in one
        # turn, so they reach the server together.
        for proto, (_, writer) in zip(protos, streams, strict=True):
            proto.send_request(proto.connect())
            writer.write(b"".join(proto.data_to_send()))
        try:
            snapshots = await asyncio.wait_for(
                asyncio.gather(*(subscribe_raw(p, r, w) for p, (r, w) in zip(protos, streams, strict=True))), 30
            )
            assert all(s.symbol == "T" for s in snapshots)
            assert started, "no connection was parked: the test did not exercise the pacer"
            assert len(srv.hub.connections) == n
            for conn in srv.hub.connections:
                assert conn.transport.get_extra_info("ssl_object") is not None
                assert isinstance(conn.transport.get_protocol(), SubscriberSocket)
        finally:
            for _, writer in streams:
                writer.transport.abort()


async def subscribe_raw(proto: ClientProtocol, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    """Finish the handshake on a sans-I/O WebSocket client, subscribe to T and
    return the snapshot."""
    while True:
        data = await reader.read(65536)
        assert data, "the server closed the connection"
        proto.receive_data(data)
        for event in proto.events_received():
            if isinstance(event, Response):
                assert event.status_code == 101, event
                proto.send_binary(codec.subscribe_message("T", 0, None, 1).SerializeToString())
            elif isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                msg = codec.parse_server_message(event.data)
                if msg.WhichOneof("kind") == "snapshot":
                    return msg.snapshot
        writer.write(b"".join(proto.data_to_send()))


# ------------------------------------------------------------------ the command line


async def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, str, str]:
    """`orderbook *args` as a process, while this loop keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orderbook.cli",
        *args,
        cwd=ROOT,
        env=env or dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def without_cert_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}


async def test_watch_record_and_replay_over_tls_with_ca_and_ssl_cert_file(pki, tmp_path):
    async with (
        serve_in_process(ssl=pki.server_context()) as srv,
        Publisher.connect(srv.feed_url, ssl=pki.client_context()) as pub,
    ):
        await publish(pub, [update("T", bids=[(990, 5)], asks=[(1010, 5)])], [instrument("T")])
        env = without_cert_env()
        ca = str(pki.ca_file)

        rc, out, err = await run_cli("watch", "T", "--once", "--url", srv.url, "--ca", ca, env=env)
        assert rc == 0, err
        assert "9.90" in out and "10.10" in out

        # No --ca: the default context, which reads $SSL_CERT_FILE.
        rc, out, err = await run_cli("watch", "T", "--once", "--url", srv.url, env=dict(env, SSL_CERT_FILE=ca))
        assert rc == 0, err
        assert "9.90" in out

        # The wrong CA: one line naming the failed verification, exit 1, no retry loop.
        rc, out, err = await run_cli("watch", "T", "--once", "--url", srv.url, "--ca", str(pki.other_ca_file), env=env)
        assert rc == 1
        assert "certificate verify failed" in err and "Traceback" not in err

        # --ca with a plain URL, or a file that is not there: exit 2, one line.
        rc, _, err = await run_cli("watch", "T", "--once", "--url", f"ws://127.0.0.1:{srv.port}/ws", "--ca", ca)
        assert rc == 2 and "--ca" in err and len(err.strip().splitlines()) == 1
        rc, _, err = await run_cli("watch", "T", "--once", "--url", srv.url, "--ca", str(tmp_path / "absent.pem"))
        assert rc == 2 and "absent.pem" in err and len(err.strip().splitlines()) == 1

        recording = tmp_path / "t.rec"
        record = asyncio.create_task(
            run_cli("record", "T", "--url", srv.url, "--ca", ca, "--out", str(recording), "--count", "4", env=env)
        )
        # Subscribed, not just connected: changes before that would not count.
        await eventually(lambda: any(c.subs for c in srv.hub.connections), 20, "the recorder to subscribe")
        for i in range(5):
            await publish(pub, [update("T", bids=[(980 + i, 1 + i)])])
        rc, out, err = await record
        assert rc == 0, err
        assert recording.stat().st_size > 0

        # The replay publisher over wss:// (https:// names the node), beside T.
        rc, out, err = await run_cli(
            "replay", str(recording), "--url", srv.http, "--ca", ca, "--speed", "max", "--rename", "T=T.rec",
            "--feed-token", FEED_TOKEN, env=env,
        )  # fmt: skip
        assert rc == 0, err
        assert out.startswith("orderbook replay: ")
        assert srv.hub.channels["T.rec"].seqbook.book.bid_count() > 0


def serve_args(*extra: str) -> list[str]:
    return [sys.executable, "-m", "orderbook.cli", "serve", "--port", str(free_port()), "--no-simulator", *extra]


@pytest.mark.parametrize(
    "case", ["missing-key", "missing-cert", "key-of-another-certificate", "cert-without-key", "not-pem"]
)
def test_serve_refuses_a_bad_certificate_or_key_with_one_line_and_exit_2(pki, tmp_path, case):
    cert, key = str(pki.cert), str(pki.key)
    args, named = {
        "missing-key": (["--tls-cert", cert, "--tls-key", str(tmp_path / "absent.pem")], "absent.pem"),
        "missing-cert": (["--tls-cert", str(tmp_path / "absent.pem"), "--tls-key", key], "absent.pem"),
        "key-of-another-certificate": (["--tls-cert", cert, "--tls-key", str(pki.other_key)], "not the private key"),
        "cert-without-key": (["--tls-cert", cert], "--tls-key"),
        "not-pem": (["--tls-cert", str(pki.ca_file), "--tls-key", str(pki.ca_file)], "PEM"),
    }[case]
    res = subprocess.run(serve_args(*args), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orderbook serve: "), res.stderr
    assert named in lines[0] and "Traceback" not in res.stderr


async def test_serve_with_tls_announces_https_and_wss_and_serves_them(pki, tmp_path):
    node = start_server_process(
        tmp_path,
        *("--no-simulator", "--feed-token", FEED_TOKEN, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)),
        ssl=pki.client_context(),
    )
    try:
        started = node.log_path.read_text()
        assert f"serving on https://127.0.0.1:{node.port}" in started
        assert f"wss://127.0.0.1:{node.port}/ws" in started
        assert f"http://127.0.0.1:{node.port}" not in started and f"ws://127.0.0.1:{node.port}" not in started
        status, body = await asyncio.to_thread(get_json, node.http + "/healthz", pki.client_context())
        assert status == 200 and body["status"] == "up"
        async with Publisher.connect(node.feed_url, ssl=pki.client_context()) as pub:
            await publish(pub, [update("T", bids=[(990, 5)], asks=[(1010, 5)])], [instrument("T")])
            async with OrderbookClient(node.url, ["T"], ssl=pki.client_context(), backoff=quick_backoff()) as c:
                await c.wait_synced(timeout=10)
                await publish(pub, [update("T", bids=[(991, 1)])])
                await c.wait_seq("T", 2, timeout=10)
                # A drain (SIGTERM) over TLS: the client is closed with 1001 and the reason.
                node.proc.send_signal(signal.SIGTERM)
                await eventually(lambda: c.last_close_code == 1001, 15, "the drain close")
                assert "reconnect" in c.last_close_reason
        await asyncio.to_thread(node.proc.wait, 15)
        assert node.proc.returncode == 0
    finally:
        node.kill()


# ------------------------------------------------------------------ HAProxy terminates TLS


@contextlib.contextmanager
def haproxy_tls(tmp_path: Path, node1: str, node2: str, bind: int, pem: Path, stats: int | None = None):
    """docker/haproxy-tls.cfg in the foreground (a stats page on `stats`); its log."""
    env = haproxy_env(ORDERBOOK_NODE1=node1, ORDERBOOK_NODE2=node2, ORDERBOOK_BIND=f"127.0.0.1:{bind}")
    env["ORDERBOOK_TLS_PEM"] = str(pem)
    if stats is not None:
        env["ORDERBOOK_STATS_BIND"] = f"127.0.0.1:{stats}"
    log = tmp_path / f"haproxy-{bind}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [tool("haproxy"), "-db", "-f", str(ROOT / "docker" / "haproxy-tls.cfg")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_haproxy_tls_variant_serves_wss_in_front_of_a_plain_node(pki, tmp_path):
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, [update("T", bids=[(990, 5)], asks=[(1010, 5)])], [instrument("T")])
        bind = free_port()
        node = f"127.0.0.1:{srv.port}"
        with haproxy_tls(tmp_path, node, node, bind, pki.pem) as (proc, log):
            lb = f"https://127.0.0.1:{bind}"

            def ready() -> bool:
                assert proc.poll() is None, log.read_text()
                try:
                    return get_json(lb + "/readyz", pki.client_context())[0] == 200
                except OSError:
                    return False

            deadline = time.monotonic() + 20
            while not await asyncio.to_thread(ready):
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                await asyncio.sleep(0.1)  # polling HAProxy's health checks, bounded by the deadline

            async with OrderbookClient(
                f"wss://127.0.0.1:{bind}/ws", ["T"], ssl=pki.client_context(), record=True, backoff=quick_backoff()
            ) as client:
                await client.wait_synced(timeout=10)
                for i in range(5):
                    await publish(pub, [update("T", bids=[(980 + i, 1 + i)])])
                last = srv.hub.channels["T"].seqbook.seq
                f = await client.wait_seq("T", last, timeout=10)
                assert f.book == srv.hub.channels["T"].seqbook.book
                (snap,) = client.snapshot_seqs["T"]
                assert client.seen_seqs["T"] == [(snap[0], q) for q in range(snap[1] + 1, last + 1)]
                # Plain from the proxy to the node.
                [conn] = srv.hub.connections
                assert conn.transport.get_extra_info("ssl_object") is None
            # A client that does not trust the proxy's certificate is refused.
            untrusting = OrderbookClient(f"wss://127.0.0.1:{bind}/ws", ["T"], ssl=pki.untrusting_context())
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.wait_for(untrusting.run(), 20)
