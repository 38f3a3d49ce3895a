"""The one clock every wait and every rate decision reads.

The engine takes a :class:`Clock`; the default reads the event loop's clock. Tests pass a
:class:`FakeClock` and step time by hand: deterministic, no real sleeps.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""

    def wall(self) -> float:
        """Epoch seconds (for HTTP-date delay headers and timestamps)."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""


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


class LoopClock:
    """The real clock: the running event loop's ``time()`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "<LoopClock>"


class FakeClock:
    """A clock that moves only when :meth:`advance` is called.

    ``sleep`` parks the caller until time has been advanced past its deadline, so tests can
    assert exactly when each waiter wakes.
    """

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), future))
        await future

    @property
    def sleepers(self) -> list[float]:
        """Deadlines of the callers currently asleep, earliest first."""
        return sorted(deadline for deadline, _, f in self._sleepers if not f.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper whose deadline has come, in order."""
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not future.done():
                future.set_result(None)
            await settle()
        self._now = target
        await settle()

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now:.3f} sleepers={len(self._sleepers)}>"


async def settle(rounds: int = 20) -> None:
    """Let every ready task run until the loop is quiet (for tests on a fake clock)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
