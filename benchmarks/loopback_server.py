"""A minimal Pulse-shaped loopback server for benchmarks: fixed latency, one canned answer.

Run as its own process so its CPU is not shared with the client's event loop:

    python benchmarks/loopback_server.py --latency-ms 50

It prints ``PORT <n>`` on stdout once it listens, then serves both endpoint paths until stdin is
closed or it gets SIGTERM. It drains the request body and answers a fixed transcript ``latency``
after the request arrived (its first byte was read): no auth, no validation, no faults.

Why it is not an aiohttp.web app any more (it was until 2026-11-25): the server must cost the
clients nothing but the latency, and on a 2-core machine its CPU is taken from the client.

- ``asyncio.sleep(latency)`` started after the body was drained and fired late: epoll counts
  whole milliseconds and Python rounds a wait up (0.97 ms late on average, measured). Now the
  deadline is ``arrival + latency`` and waits go through :class:`FineSelector` (0.3 ms late:
  the kernel's wake-up on this VM).
- aiohttp.web took 0.3 ms of CPU per request, and 0.3 ms more after a 50 ms idle to build and
  write the response once the timer fired. This is a plain ``asyncio.Protocol`` that parses
  HTTP/1.1 request heads (``Content-Length`` or chunked bodies, keep-alive) and writes one
  prepared response.

``GET /_stats`` gives the request count and, per request, the mean *hold* (arrival to the
response handed to the socket: ``latency`` plus the server's own lateness) and the mean
*turnaround* (a connection's response sent to its next request arriving: the client's own
time per request, loopback included); ``GET /_stats?reset=1`` returns them and starts afresh.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import select
import selectors
import signal
import sys
import time
from email.utils import formatdate
from typing import Any

import orjson

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

PATHS = frozenset({b"/api/v1/pulse/get_text", b"/waves/v1/stt/"})
MAX_HEAD = 64 * 1024


class FineSelector(selectors.EpollSelector):
    """epoll with timeouts to the microsecond.

    ``epoll_wait`` takes whole milliseconds and Python rounds a wait up, so a timer fires up to
    1 ms late. A wait with a timeout first waits on the epoll descriptor itself with
    ``select(2)`` (microseconds; it returns as soon as a watched descriptor is ready), then
    collects the events without waiting. Waits without a timeout, or of zero, are unchanged.
    """

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0:
            select.select([self.fileno()], [], [], timeout)
            timeout = 0
        return super().select(timeout)


class Stats:
    """Requests served, and the sums behind the mean hold and turnaround (see the docstring)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = self.turnarounds = 0
        self.hold = self.turnaround = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "hold_ms": 1000 * self.hold / self.requests if self.requests else None,
            "turnaround_ms": (
                1000 * self.turnaround / self.turnarounds if self.turnarounds else None
            ),
        }


class _Date:
    """The ``Date`` header's value, formatted once a second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, formatdate(second, usegmt=True).encode()
        return cls.value


def _response(status: bytes, body: bytes, close: bool) -> bytes:
    return b"".join([
        b"HTTP/1.1 ", status, b"\r\nContent-Type: application/json; charset=utf-8\r\n",
        b"Content-Length: ", str(len(body)).encode(), b"\r\nDate: ", _Date.now(), b"\r\n",
        b"Connection: close\r\n" if close else b"", b"\r\n", body,
    ])  # fmt: skip


class HttpProtocol(asyncio.Protocol):
    """One connection: request heads parsed, bodies discarded as they arrive, one answer each.

    A request's clock starts when its first byte is read. Requests on a connection are
    answered in order; bytes of a next request (pipelining) wait until the answer is sent.
    """

    def __init__(self, latency: float, stats: Stats) -> None:
        self.latency = latency
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.arrived = 0.0  # first byte of the request being read (0: none yet)
        self.sent = 0.0  # the last answer on this connection went out
        self.body_left = 0  # bytes of a Content-Length body (or chunk) still to discard
        self.chunked = False  # reading a chunked body: sizes, data, trailers
        self.chunk_state = ""  # "size", "data", "crlf", "trailer"
        self.request: tuple[bytes, bytes, bool] | None = None  # method, path, close after
        self.waiting = False  # an answer is due: parse nothing more until it is sent
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if not self.arrived and not self.waiting:
            self.arrived = self.loop.time()
            if self.sent:
                self.stats.turnaround += self.arrived - self.sent
                self.stats.turnarounds += 1
        if (
            self.request is not None
            and not self.chunked
            and not self.buffer
            and len(data) <= self.body_left
        ):  # the common case of a body: discard it without copying
            self.body_left -= len(data)
            if self.body_left == 0:
                self._body_done()
            return
        self.buffer += data
        self._advance()

    def _advance(self) -> None:
        while not self.waiting and self.transport is not None:
            if self.request is None:
                if not self._read_head():
                    return
            elif self.chunked:
                if not self._read_chunked():
                    return
            else:
                take = min(self.body_left, len(self.buffer))
                del self.buffer[:take]
                self.body_left -= take
                if self.body_left:
                    return
                self._body_done()

    def _read_head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._fail(b"431 Request Header Fields Too Large")
            return False
        if not self.arrived:  # the rest of a pipelined request, read while answering
            self.arrived = self.loop.time()
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        del self.buffer[: end + 4]
        try:
            method, target, version = lines[0].split(b" ")
        except ValueError:
            self._fail(b"400 Bad Request")
            return False
        close = version == b"HTTP/1.0"
        length = 0
        self.chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif name == b"connection":
                value = value.strip().lower()
                close = value == b"close" or (close and value != b"keep-alive")
        self.request = (method, target, close)
        self.body_left = 0 if self.chunked else length
        self.chunk_state = "size"
        if not self.chunked and not length:
            self._body_done()
        return True

    def _read_chunked(self) -> bool:
        buffer = self.buffer
        while True:
            if self.chunk_state == "data":
                take = min(self.body_left, len(buffer))
                del buffer[:take]
                self.body_left -= take
                if self.body_left:
                    return False
                self.chunk_state = "crlf"
            end = buffer.find(b"\r\n")
            if end < 0:
                return False
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            if self.chunk_state == "size":
                size = int(line.split(b";")[0], 16)
                self.body_left = size
                self.chunk_state = "data" if size else "trailer"
            elif self.chunk_state == "crlf":
                self.chunk_state = "size"
            elif not line:  # the empty line after the trailers: the body is complete
                self.chunked = False
                self._body_done()
                return True

    def _body_done(self) -> None:
        assert self.request is not None
        self.waiting = True
        due = self.arrived + self.latency
        method, target, _ = self.request
        timed = method == b"POST" and target.partition(b"?")[0] in PATHS
        if timed and self.loop.time() < due:
            self.timer = self.loop.call_at(due, self._answer)
        else:
            self._answer()

    def _answer(self) -> None:
        self.timer = None
        transport = self.transport
        request = self.request
        assert request is not None
        method, target, close = request
        if transport is None:
            return
        path, _, query = target.partition(b"?")
        stats = self.stats
        if method == b"POST" and path in PATHS:
            transport.write(_response(b"200 OK", CANNED, close))
            now = self.loop.time()
            stats.requests += 1
            stats.hold += now - self.arrived
        elif method == b"GET" and path == b"/_stats":
            transport.write(_response(b"200 OK", orjson.dumps(stats.as_dict()), close))
            if b"reset" in query:
                stats.reset()
            now = self.loop.time()
        else:
            transport.write(_response(b"404 Not Found", b"{}", close))
            now = self.loop.time()
        self.request = None
        self.waiting = False
        self.arrived = 0.0
        self.sent = now
        if close:
            transport.close()
            return
        if self.buffer:  # a pipelined request: its clock starts now that it is read
            self._advance()

    def _fail(self, status: bytes) -> None:
        assert self.transport is not None
        self.transport.write(_response(status, b"{}", True))
        self.transport.close()
        self.buffer.clear()


async def serve(latency_ms: float, port: int) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    server = await loop.create_server(
        lambda: HttpProtocol(latency_ms / 1000, stats), "127.0.0.1", port, backlog=1024
    )
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"PORT {bound}\n")
    sys.stdout.flush()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_signal_handler(signal.SIGINT, done.set)
    # Stop when the parent goes away (its pipe to our stdin closes); a terminal or a file as
    # stdin cannot be watched that way: then only a signal stops it.
    with contextlib.suppress(OSError):
        loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(1) or done.set())
    await done.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    ns = parser.parse_args()
    loop = asyncio.SelectorEventLoop(FineSelector())
    try:
        loop.run_until_complete(serve(ns.latency_ms, ns.port))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
