"""The server an independent check would write: an ``aiohttp.web`` app with one canned answer.

    python benchmarks/aiohttp_server.py [--latency-ms 0]

The same protocol as ``loopback_server.py`` (prints ``PORT <n>`` once it listens, stops when
its stdin closes or on SIGTERM, the same canned transcript on both endpoint paths) but the
plain way: ``web.Application``, a handler that reads the body and returns ``web.Response``.
It costs ~0.3 ms of CPU a request on this machine (the loopback server ~0.06), and on 2 cores
that CPU is taken from the client: the case shows how batchscribe and the lean loop compare
when the server, not the client, is the heavier process. ``GET /_stats`` answers the request
and the connections they came on only (no hold or turnaround: the point is the plain app).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from aiohttp import web
from loopback_server import CANNED


async def serve(latency_ms: float, port: int) -> None:
    """Serve until stdin closes or SIGTERM/SIGINT."""
    count = [0]
    connections: set[int] = set()

    async def transcribe(request: web.Request) -> web.Response:
        await request.read()
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        count[0] += 1
        connections.add(id(request.transport))
        return web.Response(body=CANNED, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        body = {"requests": count[0], "connections": len(connections)}
        if request.query.get("reset"):
            count[0] = 0
            connections.clear()
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/api/v1/pulse/get_text", transcribe)
    app.router.add_post("/waves/v1/stt/", transcribe)
    app.router.add_get("/_stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    sys.stdout.write(f"PORT {bound}\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_signal_handler(signal.SIGINT, done.set)
    with contextlib.suppress(OSError):
        loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(1) or done.set())
    await done.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    ns = parser.parse_args()
    asyncio.run(serve(ns.latency_ms, ns.port))


if __name__ == "__main__":
    main()
