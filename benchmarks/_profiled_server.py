"""`orderbook serve` with a profiler switched by signals, for bench_fanout.py --profile.

    python benchmarks/_profiled_server.py OUT serve ...

OUT ending in `.prof`: SIGUSR1 starts cProfile, SIGUSR2 stops it and writes
the stats to OUT. OUT ending in `.json`: SIGUSR1 starts tracemalloc and
touches OUT with the suffix `.started` once its first snapshot is taken,
SIGUSR2 writes the allocation sites that grew since then (the top ones, by
size) to OUT. The server itself is the unmodified `orderbook serve`; only the app
factory is wrapped to install the two signal handlers on its event loop.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import linecache
import re
import signal
import sys
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orderbook.server.app as app_module  # noqa: E402
from orderbook.cli import main  # noqa: E402


def short_path(path: str) -> str:
    """A source path relative to the repository, site-packages or the
    standard library, so reports name modules, not one machine's folders."""
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    stdlib = re.search(r"/lib/python3\.\d+/(.*)$", path)
    return stdlib.group(1) if stdlib else path


def _where(frame: tracemalloc.Frame) -> str:
    name = short_path(frame.filename)
    code = linecache.getline(frame.filename, frame.lineno).strip()
    return f"{name}:{frame.lineno} {code[:60]}"


def install(out: Path) -> None:
    create_app = app_module.create_app

    def wrapped(settings, name: str = "orderbook"):
        app = create_app(settings, name)

        @app.after_server_start
        async def _profiler(app) -> None:
            loop = asyncio.get_running_loop()
            if out.suffix == ".prof":
                prof = cProfile.Profile()

                def stop() -> None:
                    prof.disable()
                    prof.dump_stats(str(out))

                loop.add_signal_handler(signal.SIGUSR1, prof.enable)
                loop.add_signal_handler(signal.SIGUSR2, stop)
            else:
                state = {}

                def start() -> None:
                    tracemalloc.start(1)
                    state["before"] = tracemalloc.take_snapshot()
                    out.with_suffix(".started").touch()  # the caller waits for this

                def stop() -> None:
                    after = tracemalloc.take_snapshot()
                    subs = app.ctx.state.hub.subscriber_count()
                    diff = after.compare_to(state["before"], "lineno")
                    grown = [d for d in diff if d.size_diff > 0]
                    top = [
                        {
                            "where": _where(d.traceback[0]),
                            "kib": d.size_diff / 1024,
                            "per_sub_bytes": d.size_diff / max(1, subs),
                            "count": d.count_diff,
                        }
                        for d in grown[:25]
                    ]
                    total = sum(d.size_diff for d in diff) / 1024
                    tracemalloc.stop()
                    out.write_text(json.dumps({"subs": subs, "total_kib": total, "top": top}))

                loop.add_signal_handler(signal.SIGUSR1, start)
                loop.add_signal_handler(signal.SIGUSR2, stop)

        return app

    app_module.create_app = wrapped


if __name__ == "__main__":
    install(Path(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
