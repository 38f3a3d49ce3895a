"""Helpers for tests of code that runs on the one clock: a clock moved by hand.

Not used by the package at run time: a test builds the engine, a limiter or a retry loop with a
:class:`FakeClock`, steps it with :meth:`FakeClock.advance` and asserts exactly when each waiter
wakes; :func:`settle` lets every ready task run first.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["FakeClock", "settle"]


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
