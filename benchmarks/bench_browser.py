"""The trading page in Chromium under a fast feed: the client on the main
thread against the client in a Web Worker.

For each mode a fresh node runs the simulator at `--rate` updates/s over its
five symbols; the page shows one symbol and watches all five
(`/?symbol=BTC-USD&watch=all`, every change of every symbol decoded and
verified). Over `--seconds` it reports, per mode:

- long tasks (> 50 ms) per minute on the main thread (PerformanceObserver);
- the main thread's busy share (CDP `Performance.getMetrics` TaskDuration)
  and the share spent handling the stream (`window.orderbook.perf.streamMs`:
  decode, checks, book updates in main mode; taking the worker's frames in
  worker mode) and drawing (`renderMs`);
- the renderer process's CPU per delivered message (CDP
  `SystemInfo.getProcessInfo`; the worker runs in the same process), which
  divides out CPU the process did not get;
- frames drawn per second and latency p50/p99 from the node's publish time.

Needs Debian's chromium, Playwright for Python and the built page (`make web`).

    .venv/bin/python benchmarks/bench_browser.py --seconds 60 --rate 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import load_average, machine_info, markdown_table, print_header

from tests.browser_harness import CHROMIUM_ARGS, chromium_path
from tests.harness import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]


def start_node(rate: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orderbook.cli", "serve", "--port", str(port), "--simulator-rate", str(rate)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    http = f"http://127.0.0.1:{port}"
    wait_ready(http, 30, proc)
    return proc, http


async def sample(page, cdp, browser_cdp) -> dict:
    perf = await page.evaluate(
        "({perf: window.orderbook.perf, stats: window.orderbook.stats, frames: window.orderbook.frames,"
        " verified: Object.values(window.orderbook.symbols).reduce((a, s) => a + s.verified, 0)})"
    )
    metrics = {m["name"]: m["value"] for m in (await cdp.send("Performance.getMetrics"))["metrics"]}
    procs = (await browser_cdp.send("SystemInfo.getProcessInfo"))["processInfo"]
    renderer_cpu = sum(p["cpuTime"] for p in procs if p["type"] == "renderer")
    return {
        "t": time.monotonic(),
        "streamMs": perf["perf"]["streamMs"],
        "renderMs": perf["perf"]["renderMs"],
        "longTasks": perf["perf"]["longTasks"],
        "workerStreamMs": perf["perf"]["workerStreamMs"] or 0.0,
        "messages": perf["stats"]["messages"],
        "verified": perf["verified"],
        "frames": perf["frames"],
        "task": metrics.get("TaskDuration", 0.0),
        "cpu": renderer_cpu,
        "p50": perf["stats"]["latency"]["p50Ms"],
        "p99": perf["stats"]["latency"]["p99Ms"],
    }


def listed_symbols(http: str) -> list[str]:
    with urllib.request.urlopen(http + "/symbols", timeout=5) as r:
        return [s["symbol"] for s in json.load(r)["symbols"]]


async def run_mode(pw, mode: str, args) -> dict:
    proc, http = start_node(args.rate)
    browser = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    try:
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        worker = "&worker=1" if mode == "worker" else ""
        await page.goto(f"{http}/?symbol=BTC-USD&watch=all{worker}", wait_until="domcontentloaded")
        symbols = await asyncio.to_thread(listed_symbols, http)
        await page.wait_for_function(
            "(n) => { const s = window.orderbook?.symbols || {}; const v = Object.values(s);"
            " return v.length === n && v.every((x) => x.state === 'live'); }",
            arg=len(symbols),
            timeout=30_000,
        )
        cdp = await page.context.new_cdp_session(page)
        await cdp.send("Performance.enable")
        browser_cdp = await browser.new_browser_cdp_session()
        await asyncio.sleep(args.warmup)  # past start-up work (parsing the bundle, first snapshots)
        a = await sample(page, cdp, browser_cdp)
        await asyncio.sleep(args.seconds)  # the measured window
        b = await sample(page, cdp, browser_cdp)
        wall = b["t"] - a["t"]
        msgs = b["messages"] - a["messages"]
        return {
            "mode": mode,
            "symbols": len(symbols),
            "msgs_s": msgs / wall,
            "verified_s": (b["verified"] - a["verified"]) / wall,
            "long_min": (b["longTasks"] - a["longTasks"]) * 60 / wall,
            "busy": (b["task"] - a["task"]) / wall,
            "stream": (b["streamMs"] - a["streamMs"]) / 1000 / wall,
            "render": (b["renderMs"] - a["renderMs"]) / 1000 / wall,
            "worker": (b["workerStreamMs"] - a["workerStreamMs"]) / 1000 / wall,
            "fps": (b["frames"] - a["frames"]) / wall,
            "cpu_us": (b["cpu"] - a["cpu"]) * 1e6 / msgs if msgs else float("nan"),
            "p50": b["p50"],
            "p99": b["p99"],
            "load": load_average(),
        }
    finally:
        await browser.close()
        proc.terminate()
        proc.wait(10)


def pct(x: float) -> str:
    return f"{x * 100:.1f}%"


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="measured window per mode (default 60)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring (default 5)")
    p.add_argument("--rate", type=float, default=1000.0, help="simulator updates/s over all symbols (default 1000)")
    p.add_argument("--modes", default="main,worker", help="comma-separated: main, worker (default both)")
    p.add_argument("--rounds", type=int, default=1, help="alternate the modes this many times (default 1)")
    args = p.parse_args()
    info = machine_info()
    version = await asyncio.to_thread(subprocess.run, [chromium_path(), "--version"], capture_output=True, text=True)
    info["Chromium"] = version.stdout.strip()
    from playwright.async_api import async_playwright

    rows = []
    async with async_playwright() as pw:
        for _ in range(args.rounds):
            for mode in args.modes.split(","):
                rows.append(await run_mode(pw, mode.strip(), args))
    print_header("Browser: main thread against a Web Worker", info)
    print(
        markdown_table(
            [
                "mode",
                "msgs/s",
                "long tasks/min",
                "main thread busy",
                "stream on main",
                "drawing",
                "stream in worker",
                "frames/s",
                "renderer CPU µs/msg",
                "latency p50 / p99 ms",
                "load avg",
            ],
            [
                [
                    r["mode"],
                    f"{r['msgs_s']:,.0f}",
                    f"{r['long_min']:.1f}",
                    pct(r["busy"]),
                    pct(r["stream"]),
                    pct(r["render"]),
                    pct(r["worker"]) if r["mode"] == "worker" else "–",
                    f"{r['fps']:.0f}",
                    f"{r['cpu_us']:.0f}",
                    f"{r['p50']:.1f} / {r['p99']:.1f}" if r["p50"] is not None else "–",
                    r["load"],
                ]
                for r in rows
            ],
            right=[False] + [True] * 10,
        )
    )
    print(f"\n{os.path.basename(sys.argv[0])}: {args.seconds:.0f} s per mode at {args.rate:.0f} updates/s")


if __name__ == "__main__":
    asyncio.run(main())
