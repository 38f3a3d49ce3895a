"""A minimal Pulse-shaped loopback server for benchmarks: fixed latency, one canned answer.

Run as its own process so its CPU is not shared with the client's event loop:

    python benchmarks/loopback_server.py --latency-ms 50

It prints ``PORT <n>`` on stdout once it listens, then serves both endpoint paths until stdin is
closed or it gets SIGTERM. It drains the request body, waits the latency and answers a fixed
transcript: no auth, no validation, no faults. ``GET /_stats`` gives the request count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import orjson
from aiohttp import web

CANNED = orjson.dumps(
    {
        "status": "success",
        "transcription": "The weather today is sunny with a light breeze.",
        "words": [
            {"start": 0.48, "end": 0.9, "word": "The", "confidence": 0.98},
            {"start": 0.9, "end": 1.3, "word": "weather", "confidence": 0.97},
            {"start": 1.3, "end": 1.6, "word": "today", "confidence": 0.99},
        ],
        "utterances": [
            {"start": 0.48, "end": 3.76, "text": "The weather today is sunny.", "speaker": 0}
        ],
        "language": "en",
        "request_id": "00000000-0000-4000-8000-000000000000",
        "metadata": {
            "duration": 0.1,
            "fileSize": 1644,
            "filename": "clip.wav",
            "processing_time_ms": 1,
            "rtfx": 100.0,
            "num_chunks": 1,
        },
    }
)


def make_app(latency: float) -> web.Application:
    """The app: both Pulse paths answer the canned transcript after ``latency`` seconds."""
    count = [0]

    async def transcribe(request: web.Request) -> web.Response:
        async for _ in request.content.iter_chunked(1 << 20):
            pass  # drain the body without holding it (uploads of 200 MB)
        if latency > 0:
            await asyncio.sleep(latency)
        count[0] += 1
        return web.Response(body=CANNED, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"requests": count[0]})

    app = web.Application(client_max_size=300 * 1024 * 1024)
    app.router.add_post("/api/v1/pulse/get_text", transcribe)
    app.router.add_post("/waves/v1/stt/", transcribe)
    app.router.add_get("/_stats", stats)
    return app


async def serve(latency_ms: float, port: int) -> None:
    runner = web.AppRunner(make_app(latency_ms / 1000), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[attr-defined]
    bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    sys.stdout.write(f"PORT {bound}\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_signal_handler(signal.SIGINT, done.set)
    # Stop when the parent goes away (its pipe to our stdin closes); a terminal or a file as
    # stdin cannot be watched that way: then only a signal stops it.
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
