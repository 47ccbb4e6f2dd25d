// Baseline for benchmarks/bench_fanout.py: the `ws` package's documented
// broadcast (`client.send` to every client, one message at a time).
//
//   node server.js --port P [--payload-bytes 60]
//
// WebSocket on /ws; control over plain HTTP on the same port:
//   GET /stats                   {"clients": N, "sent": messages generated, "mode", "waits"}
//   GET /start?mode=flood        generate messages as fast as they can be delivered
//   GET /start?mode=rate&rate=R  R messages per second, each stamped with its due time
//   GET /stop                    stop generating
//
// Payload: seq (uint64 LE), due time in Unix ns (int64 LE), then padding up
// to --payload-bytes, so the subscribers' latency samples read the same
// fields from every baseline.
"use strict";

const http = require("http");
const { WebSocketServer, WebSocket } = require("ws");
const { performance } = require("perf_hooks");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const port = Number(arg("--port", "8010"));
const payloadBytes = Math.max(16, Number(arg("--payload-bytes", "60")));
// Flood pauses while any client has this much queued in Node: ws.send never
// waits, so without it a flood would only fill memory.
const HIGH_WATER = 64 * 1024;

// Wall clock with sub-millisecond resolution (Date.now() has 1 ms).
const nowNs = () => BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  const reply = (obj) => {
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify(obj));
  };
  if (url.pathname === "/stats") return reply({ clients: wss.clients.size, sent, mode, waits });
  if (url.pathname === "/start") {
    stop();
    start(url.searchParams.get("mode") || "flood", Number(url.searchParams.get("rate") || "0"));
    return reply({ mode });
  }
  if (url.pathname === "/stop") {
    stop();
    return reply({ mode });
  }
  res.writeHead(404);
  res.end();
});

const wss = new WebSocketServer({ server, path: "/ws" });
wss.on("connection", (ws) => {
  ws.on("error", () => {});
});

let mode = "idle";
let sent = 0;
let waits = 0; // flood ticks that found a client over HIGH_WATER
let generation = 0; // a stop or a new start ends the loops of the previous one

function message(seq, dueNs) {
  const buf = Buffer.alloc(payloadBytes, 0x78);
  buf.writeBigUInt64LE(BigInt(seq), 0);
  buf.writeBigInt64LE(dueNs, 8);
  return buf;
}

function broadcast(data) {
  // The broadcast of the ws documentation.
  wss.clients.forEach((client) => {
    if (client.readyState === WebSocket.OPEN) client.send(data, { binary: true });
  });
  sent += 1;
}

function backlogged() {
  for (const client of wss.clients) if (client.bufferedAmount > HIGH_WATER) return true;
  return false;
}

function start(newMode, rate) {
  mode = newMode;
  const gen = ++generation;
  if (mode === "flood") {
    const tick = () => {
      if (gen !== generation) return;
      if (backlogged()) {
        // Wait without spinning, so a slow reader shows up as idle CPU here.
        waits += 1;
        setTimeout(tick, 1);
        return;
      }
      broadcast(message(sent, nowNs()));
      // setImmediate lets socket I/O run between messages.
      setImmediate(tick);
    };
    setImmediate(tick);
  } else if (mode === "rate") {
    const t0 = performance.now();
    let i = 0;
    const t0Ns = nowNs();
    const tick = () => {
      if (gen !== generation) return;
      // What is due goes out, each message stamped with when it was due, so
      // falling behind shows up as latency; a few per turn, so that socket
      // I/O and the control requests still run when it is behind.
      const due = Math.floor(((performance.now() - t0) / 1000) * rate) + 1;
      for (let k = 0; k < 8 && i < due; k++) {
        broadcast(message(sent, t0Ns + BigInt(Math.round((i / rate) * 1e9))));
        i += 1;
      }
      if (i < due) setImmediate(tick);
      else setTimeout(tick, 1);
    };
    setTimeout(tick, 1);
  }
}

function stop() {
  generation += 1;
  mode = "idle";
}

server.listen(port, "127.0.0.1", () => {
  console.log(`node ws baseline on ${port} (ws ${require("ws/package.json").version}, node ${process.version})`);
});
process.on("SIGTERM", () => process.exit(0));
