"""The one clock every wait and every rate decision reads.

The engine takes a :class:`Clock`; the default reads the event loop's clock. Tests pass a
:class:`batchscribe.testing.FakeClock` and step time by hand: deterministic, no real sleeps.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""

    def wall(self) -> float:
        """Epoch seconds (for HTTP-date delay headers and timestamps)."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""


class LoopClock:
    """The real clock: the running event loop's ``time()`` and ``asyncio.sleep``."""

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        # The loop is looked up once per loop, not per reading: on Python 3.11 each
        # get_running_loop() is a getpid() system call, and a run reads the clock a few
        # times per request.
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "<LoopClock>"


def utc_now() -> str:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-11-25T00:00:00.000Z``."""
    global _utc_second
    now = time.time()
    second = int(now)
    cached, prefix = _utc_second
    if second != cached:
        # Formatting the date is most of the cost; it changes once a second, not per record.
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _utc_second = (second, prefix)
    return f"{prefix}.{int((now - second) * 1000):03d}Z"


_utc_second = (-1, "")
