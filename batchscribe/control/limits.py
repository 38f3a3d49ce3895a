"""The admission primitives: an in-flight limit that can change, a pool-wide pause, and
a pacer that spaces starts (with an optional gate). All timing reads the injected
:class:`~batchscribe.clock.Clock`."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

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

    def take_free(self) -> bool:
        """Take a slot if one is free and nobody waits for one (no await); True if taken."""
        if self._in_flight < self._limit and not self._waiters:
            self._take()
            return True
        return False

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
            elif future in self._waiters:  # (a wake-up may already have dropped it)
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


#: Answers that mean "too much": the server's explicit congestion signal (like ECN for TCP).
OVERLOAD_STATUSES = frozenset({429, 503})


class Pacer:
    """Spaces request starts at least ``1 / rate`` seconds apart; ``rate=None`` lets all through.

    Waiters go first come, first served, one per gap, and the gap is read afresh at each turn,
    so a rate cut or raise applies to those already waiting. No credit builds up while idle, so
    a paced pool never fires a volley. Hand-written, not aiolimiter: a leaky bucket lets its
    capacity through at once (a service allowing one start at a time refuses the second), the
    learned rate moves at every decision, and waits must read the injectable clock.
    """

    #: Seconds of a timer's lateness a start may make up (an event loop's is ~1 ms).
    LATE = 0.01

    def __init__(self, clock: Clock, rate: float | None = None) -> None:
        self._clock = clock
        self._rate = rate
        self._last = float("-inf")
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._ticker: asyncio.Task[None] | None = None
        #: A schedule that may hold a start past its turn: ``gate(now)`` is the seconds to
        #: wait (0: go), or None to follow the rate alone (:meth:`AdaptiveRate.delay_until`).
        #: Read last, just before the start, so the caller must note the start (``on_start``)
        #: in the same step as :meth:`wait` returns, before any other await.
        self.gate: Callable[[float], float | None] | None = None
        self._kick: asyncio.Future[None] | None = None

    @property
    def rate(self) -> float | None:
        return self._rate

    @rate.setter
    def rate(self, rate: float | None) -> None:
        """Set after each answer: also wakes the starts held by the gate to ask it again."""
        self._rate = rate
        kick, self._kick = self._kick, None
        if kick is not None and not kick.done():
            kick.set_result(None)

    def hold(self) -> None:
        """Count a start as made now: the next comes a gap later. For pacing that engages
        after a refused volley: its first start must not go at once into a server bucket the
        volley has just emptied (measured: a second refusal, and a search from 2/s for 20/s)."""
        self._last = self._clock.now()

    async def wait(self) -> None:
        """Return at this caller's turn (at once when not pacing or when the gap has passed),
        then once the :attr:`gate` (if any) lets a start go."""
        gate = self.gate
        if gate is None or gate(self._clock.now()) is None:
            await self._turn_wait()
        while gate is not None:
            # (When the gate has a schedule, it alone decides: the rate is then its summary.)
            delay = gate(self._clock.now())
            if delay is None or delay <= 0:
                return
            await self._held(delay)
            gate = self.gate

    async def _held(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or until the next answer changes what the gate says."""
        if self._kick is None or self._kick.done():
            self._kick = asyncio.get_running_loop().create_future()
        kick = self._kick
        sleep = asyncio.ensure_future(self._clock.sleep(delay))
        try:
            await asyncio.wait({sleep, kick}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()

    async def _turn_wait(self) -> None:
        rate = self.rate
        if rate is None and not self._waiters:
            return
        now = self._clock.now()
        if not self._waiters and (rate is None or now >= self._last + 1.0 / rate):
            self._last = now  # the gap has passed: go now, with no credit for the idle time
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick())
        try:
            await future
        except asyncio.CancelledError:
            if not future.done():
                self._waiters.remove(future)
            raise

    async def _tick(self) -> None:
        """Let the waiters go one gap apart, re-reading the rate before each turn."""
        while self._waiters:
            rate = self.rate
            if rate is not None:
                delay = self._last + 1.0 / rate - self._clock.now()
                if delay > 0:
                    await self._clock.sleep(delay)
                    continue
            future = self._waiters.popleft()
            if future.done():
                continue  # cancelled while waiting
            self._turn(self._clock.now())
            future.set_result(None)

    def _turn(self, now: float) -> None:
        """Note a waiter's start. Waiters follow each other one gap apart on the ideal
        schedule, not from the moment a late timer fired (else every timer's lateness is lost
        throughput), but the credit is a timer's lateness (``LATE``), never a whole gap: a
        server's token bucket with a burst of one (25/min: one start per 2.4 s) refuses a
        start that comes early by more than its own slack, and after a rate raise the old
        schedule would otherwise pass for lateness."""
        gap = 1.0 / self.rate if self.rate else 0.0
        self._last = max(self._last + gap, now - min(gap, self.LATE))

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def __repr__(self) -> str:
        rate = "off" if self.rate is None else f"{self.rate:.1f}/s"
        return f"<Pacer rate={rate} waiting={len(self._waiters)}>"
