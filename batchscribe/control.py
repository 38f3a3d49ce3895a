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
    a paced pool never fires a volley. Hand-written (``--rate`` uses aiolimiter) because the
    adaptive controller moves its rate on every decision and it must read the injectable clock.
    """

    def __init__(self, clock: Clock, rate: float | None = None) -> None:
        self._clock = clock
        self.rate = rate
        self._last = float("-inf")
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._ticker: asyncio.Task[None] | None = None

    async def wait(self) -> None:
        """Return at this caller's turn (at once when not pacing or when the gap has passed)."""
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
        throughput); a pacer that fell behind catches up by one turn at most."""
        gap = 1.0 / self.rate if self.rate else 0.0
        self._last = max(self._last + gap, now - gap)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def __repr__(self) -> str:
        rate = "off" if self.rate is None else f"{self.rate:.1f}/s"
        return f"<Pacer rate={rate} waiting={len(self._waiters)}>"


class AdaptiveConcurrency:
    """``--concurrency auto``: the in-flight limit and a start rate, learnt from the answers.

    Pure decision logic on the injectable clock: the engine reports how each request ended
    (:meth:`on_response`) and applies :attr:`limit` and :attr:`rate`. Which ideas it follows:

    - **Signal: 429/503 only**, never latency. Netflix's Vegas and Gradient limits read queueing
      from rising latency, but a Pulse request's latency is mostly the length of its audio
      (seconds to minutes), so latency says little about load. The service says "too much"
      itself, like TCP's ECN: that is the one congestion signal used.
    - **Window: TCP CUBIC**. Slow start (+1 per success: doubling per round trip), then on an
      overload a multiplicative cut to ``beta * W_o`` and a cubic climb that flattens just under
      the overload point ``W_o``, stays there, and only then probes beyond along CUBIC's convex
      branch. ``W_o`` is what the server refused: the requests in flight beside the refused one
      (or the window, if smaller), not a window that may have grown past the limit meanwhile.
      Plain AIMD (Reno, Netflix's AIMDLimit) climbs back linearly and spends much of each cycle
      well under the limit; CUBIC returns fast and lingers near it. Two changes to CUBIC,
      both for small windows (a server allowing 16 in flight, or 6 at 20 requests/s over 300 ms):
      the plateau is ``(1 - margin) * W_o``, not ``W_o`` itself, which for a hard limit is the
      very point that drew the 429; and it lasts ``settle`` requests before probing, since
      CUBIC's own ``K`` is under two round trips for such windows and would draw a 429 every few
      requests. Time is counted in smoothed round trips, not seconds, so a pool whose requests
      take a minute is not pushed up a minute's worth of cubic at once; growth is capped (+1 per
      success in slow start, then at most a tenth of the window, or one request, per round trip)
      and happens only while the window is used (RFC 7661: a half-idle pool learns nothing
      about the server).
    - **At most one cut per round trip** (TCP NewReno's recovery point): an overload counts only
      if its request *started after* the last cut. Requests in flight when the cut was made were
      sent under the old limit; their 429s echo the same event, and cutting on each of them would
      collapse the window far below the limit.
    - **Start rate: a paced window** (Linux TCP pacing, ``rate = W / srtt``), armed after the
      first overload, as botocore arms its token bucket only after the first throttle. A rate
      limit (R requests/s) is about *when* requests start: a window alone lets completions that
      arrive together restart together, and a server bucket with little burst room answers such
      volleys with 429s even when the average is under R. Pacing spreads the window's starts
      over a round trip, and since the rate is a real number it is the fine control (at W = 6 one
      request more or less is 17% of the throughput); the in-flight limit, the window rounded
      down plus one, stays a hard guard. botocore's own law, a separate CUBIC on a measured
      request rate in seconds, was tried first and measured worse here (0.6-0.8 of the limit,
      see benchmarks/README.md): it recovers in wall-clock seconds whatever the round trip, and
      from a rate measured while slow start was still bursting.
    - **The server's delay wins**: a 429 that names a delay pauses the whole pool
      (:class:`PoolPause`, applied by the engine before any start); the cut here comes on top.

    Args:
        clock: the run's clock.
        ceiling: the limit never exceeds this (``--max-concurrency``).
        initial: the first window (never more aggressive than the fixed default of 8).
        beta: the multiplicative cut (CUBIC's is 0.7; 0.8 here: the cut is taken from the
            in-flight count the server refused, which is exact, not from an overshooting window).
        c: the cubic growth constant, per round trip cubed (CUBIC's 0.4).
        margin: the plateau's distance under the overload point, as a share of it.
        settle: requests' worth of round trips spent on the plateau before probing.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        ceiling: int,
        initial: int = 8,
        beta: float = 0.8,
        c: float = 0.4,
        margin: float = 0.03,
        settle: float = 60.0,
    ) -> None:
        if ceiling < 1:
            raise ValueError("the concurrency ceiling must be at least 1")
        self._clock = clock
        self.ceiling = ceiling
        self.beta = beta
        self.c = c
        self.margin = margin
        self.settle = settle
        self.window = float(max(1, min(initial, ceiling)))
        self.slow_start = True
        self.w_max = self.window  # the window at the last overload
        self._plateau = self.window
        self._k = 0.0  # round trips from a cut to the plateau
        self._probe_at = 0.0  # round trips from a cut to the end of the plateau
        self.cut_at = float("-inf")  # clock time of the last cut
        self.srtt: float | None = None
        self.cuts = 0
        self.low = self.high = self.limit

    @property
    def limit(self) -> int:
        """The in-flight limit to apply now (1 to ``ceiling``)."""
        window = self.window if self.slow_start else self.window + 1
        return max(1, min(self.ceiling, int(window)))

    @property
    def rate(self) -> float | None:
        """Starts per second to pace at (None: unpaced, before any overload or round trip)."""
        if self.slow_start or not self.srtt:
            return None
        return self.window / self.srtt

    def on_response(self, started: float, status: int | None, in_flight: int) -> bool:
        """Learn from one finished request; return True when :attr:`limit` changed.

        Args:
            started: the clock time at which the request started.
            status: its HTTP status, or None for a transport failure (which teaches nothing).
            in_flight: requests sending as it finished, itself included.
        """
        if status is None:
            return False
        before = self.limit
        now = self._clock.now()
        if status in OVERLOAD_STATUSES:
            self._overload(started, now, in_flight)
        else:
            self._success(started, now, in_flight)
        return self.limit != before

    def target(self, rtts: float) -> float:
        """The window ``rtts`` round trips after the last cut: up to the plateau, along it, on."""
        if rtts < self._k:
            return (
                self._plateau
                - (self._plateau - self.beta * self.w_max) * ((self._k - rtts) / self._k) ** 3
            )
        if rtts < self._probe_at:
            return self._plateau
        return self._plateau + self.c * (rtts - self._probe_at) ** 3

    # ------------------------------------------------------------------------- decisions
    def _success(self, started: float, now: float, in_flight: int) -> None:
        rtt = max(0.0, now - started)
        self.srtt = rtt if self.srtt is None else self.srtt + (rtt - self.srtt) / 8
        if in_flight * 2 < self.window:
            return  # the window is not in use: growing it would not be informed
        if self.slow_start:
            step = 1.0  # doubling per round trip
            target = self.window + 1
        else:
            # At most a tenth more per round trip (and at least one request): a probe past
            # the plateau finds the limit without overshooting it by much.
            step = max(1.0, 0.1 * self.window) / self.window
            target = self.target((now - self.cut_at) / max(self.srtt, 1e-3))
        self.window = min(float(self.ceiling), max(self.window, min(target, self.window + step)))
        self.high = max(self.high, self.limit)

    def _overload(self, started: float, now: float, in_flight: int) -> None:
        if started < self.cut_at:
            return  # sent before the last cut: the same congestion event, already answered
        self.cuts += 1
        self.slow_start = False
        # Where the overload happened: the requests sending besides the refused one (what the
        # server counted), unless the window is smaller (it may have been cut meanwhile).
        self.w_max = max(1.0, min(self.window, in_flight - 1))
        self.window = max(1.0, self.w_max * self.beta)
        self._plateau = max(self.window, self.w_max * (1 - self.margin))
        self._k = max(1.0, ((self._plateau - self.window) / self.c) ** (1 / 3))
        self._probe_at = self._k + self.settle / self._plateau
        self.cut_at = now
        self.low = min(self.low, self.limit)

    def __repr__(self) -> str:
        rate = "off" if self.rate is None else f"{self.rate:.1f}/s"
        phase = "slow-start" if self.slow_start else f"cubic w_max={self.w_max:.1f}"
        return (
            f"<AdaptiveConcurrency limit={self.limit} window={self.window:.2f} {phase} "
            f"rate={rate} cuts={self.cuts} ceiling={self.ceiling}>"
        )
