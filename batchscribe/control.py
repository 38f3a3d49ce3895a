"""Concurrency and rate control: how many requests may be in flight, and when one may start.

Limits are small strategy objects in the spirit of aiometer: "wait until a start is allowed",
"note a finish". All timing reads the one injectable :class:`~batchscribe.clock.Clock`.
"""

from __future__ import annotations

import asyncio
from collections import deque

from batchscribe.clock import Clock


class ConcurrencyLimit:
    """A semaphore whose limit can change while it is in use (for adaptive control).

    Lowering the limit never cancels a request in flight: new starts wait until the number in
    flight is under the new limit.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("concurrency limit must be at least 1")
        self._limit = limit
        self._in_flight = 0
        self._max_in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    def set_limit(self, limit: int) -> None:
        """Change the limit; waiters are let in as room appears."""
        self._limit = max(1, limit)
        self._wake()

    async def acquire(self) -> None:
        if self._in_flight < self._limit and not self._waiters:
            self._take()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # We were handed a slot just as we were cancelled: give it back.
                self.release()
            else:
                self._waiters.remove(future)
            raise

    def release(self) -> None:
        self._in_flight -= 1
        self._wake()

    def _take(self) -> None:
        self._in_flight += 1
        if self._in_flight > self._max_in_flight:
            self._max_in_flight = self._in_flight

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            future = self._waiters.popleft()
            if not future.done():
                self._take()
                future.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return (
            f"<ConcurrencyLimit limit={self._limit} in_flight={self._in_flight} "
            f"waiting={len(self._waiters)} max_in_flight={self._max_in_flight}>"
        )


class PoolPause:
    """A pool-wide pause: when the server asks one worker to wait, no request starts anywhere.

    ``pause(s)`` extends the pause to at least ``s`` seconds from now; ``wait()`` returns once
    no pause is in force.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._until = float("-inf")
        self.pauses = 0

    @property
    def remaining(self) -> float:
        return max(0.0, self._until - self._clock.now())

    def pause(self, seconds: float) -> bool:
        """Pause new starts for ``seconds``; return True if this extended the pause."""
        until = self._clock.now() + seconds
        if until <= self._until:
            return False
        self._until = until
        self.pauses += 1
        return True

    async def wait(self) -> None:
        while True:
            remaining = self._until - self._clock.now()
            if remaining <= 0:
                return
            await self._clock.sleep(remaining)

    def __repr__(self) -> str:
        return f"<PoolPause remaining={self.remaining:.3f}s pauses={self.pauses}>"
