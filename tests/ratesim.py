"""A rate-limited server and a client pool on the fake clock, for the rate controller's tests.

The server is one of three common readings of "N requests per minute" (``server``):
``bucket`` a token bucket (``limit`` starts per second, a burst of one, like the emulator's
``rate_limit`` at 25/min); ``window`` a sliding log, ``limit * window_s`` admitted in any
``window_s`` seconds (the emulator's own SlidingWindow, its ``--plan standard``); ``fixed`` a
fixed window, a counter reset every ``window_s`` seconds at a phase of ``phase`` seconds (API
gateways' usual quota). A request admitted takes ``latency`` seconds, a refused one is answered
at once with a 429 (with the delay until a start would be admitted when ``headers``). The pool
is the engine's admission in miniature: ``workers`` in flight at most, the pool-wide pause, the
pacer driven by :class:`~batchscribe.control.AdaptiveRate` (its rate and its gate).
Deterministic: no real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from batchscribe.control import (
    AdaptiveConcurrency,
    AdaptiveRate,
    ConcurrencyLimit,
    Pacer,
    PoolPause,
)
from batchscribe.emulator.limits import SlidingWindow
from batchscribe.testing import FakeClock, settle


@dataclass
class Bucket:
    """A token bucket of ``rate`` per second and ``burst`` tokens (full at the start)."""

    rate: float
    burst: float = 1.0
    tokens: float = 1.0
    at: float | None = None

    def take(self, now: float) -> float:
        """0.0 when admitted, else the seconds until the next token."""
        if self.at is None:
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class FixedWindow:
    """At most ``count`` admitted per fixed window of ``width`` s, the first ending at ``phase``."""

    count: float
    width: float
    phase: float
    _end: float = float("-inf")
    _used: int = 0

    def take(self, now: float) -> float:
        """0.0 when admitted, else the seconds until the window resets."""
        if now >= self._end:
            self._end = self.phase + self.width * (1 + (now - self.phase) // self.width)
            if now < self.phase:
                self._end = self.phase
            self._used = 0
        if self._used < int(self.count):
            self._used += 1
            return 0.0
        return self._end - now


@dataclass
class SimResult:
    ok_starts: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    done_at: float | None = None  # (``items``) when the last item's answer came
    controller: AdaptiveRate | None = None
    auto: AdaptiveConcurrency | None = None

    def ok_between(self, t0: float, t1: float) -> int:
        return sum(1 for t in self.ok_starts if t0 <= t < t1)

    def refused_between(self, t0: float, t1: float) -> int:
        return sum(1 for t in self.refused if t0 <= t < t1)


async def simulate(
    *,
    limit: float,
    latency: Callable[[int], float],
    seconds: float,
    workers: int = 8,
    headers: bool = False,
    hint: float | None = None,
    change: tuple[float, float] | None = None,
    cap: int | None = None,
    auto: bool = False,
    burst: float = 1.0,
    server: str = "bucket",
    window_s: float = 60.0,
    phase: float = 0.0,
    items: int | None = None,
) -> SimResult:
    """Run the pool for ``seconds`` of fake time against a ``server`` of ``limit`` starts/s.

    ``latency(k)`` is the answer time of the k-th admitted request; ``change`` = (at, new
    limit) changes the limit mid-run. ``cap``: the server refuses a request beyond ``cap`` in
    flight instead (``limit`` is then ignored); ``auto``: ``--concurrency auto`` with
    ``workers`` as its ceiling, its limit and pacing applied as the engine's ``_adapt`` does.
    ``items``: a job of that many items (a refused one is sent again) instead of an endless one.
    """
    clock = FakeClock(start=0.0)
    bucket = Bucket(limit, burst=burst, tokens=burst)
    sliding = SlidingWindow()
    fixed = FixedWindow(limit * window_s, window_s, phase)

    per_s = [limit]

    def admit(now: float) -> float:
        if server == "window":
            return sliding.admit("m", now, per_s[0] * window_s, window_s)
        if server == "fixed":
            return fixed.take(now)
        return bucket.take(now)

    left = [items if items is not None else -1]
    ctl = AdaptiveRate(clock, hint=hint)
    controller = AdaptiveConcurrency(clock, ceiling=workers) if auto else None
    pool = ConcurrencyLimit(controller.limit if controller else workers)
    pause = PoolPause(clock)
    pacer = Pacer(clock, ctl.rate)
    result = SimResult(controller=ctl, auto=controller)
    serving = [0]
    sending = [0]

    async def worker() -> None:
        while left[0] != 0:
            await pause.wait()
            await pool.acquire()
            if pacer.rate is not None:
                await pacer.wait()
            if left[0] == 0:  # (the job was done while this worker waited)
                pool.release()
                return
            started = clock.now()
            if change is not None and started >= change[0]:
                bucket.rate = per_s[0] = change[1]
                fixed.count = change[1] * window_s
            ctl.on_start(started)
            sending[0] += 1
            # (A cap's 429 names no delay: 0.3 s, used only with ``headers``.)
            full = cap is not None and serving[0] >= cap
            wait = (0.3 if full else 0.0) if cap is not None else admit(started)
            if wait == 0.0 and left[0] > 0:
                left[0] -= 1  # (taken: no other worker sends this item)
            if wait == 0.0:
                result.ok_starts.append(started)
                serving[0] += 1
                await clock.sleep(latency(len(result.ok_starts)))
                serving[0] -= 1
                status = 200
                if left[0] == 0 and serving[0] == 0:
                    result.done_at = clock.now()
            else:
                result.refused.append(started)
                await clock.sleep(0.005)
                status = 429
            pool.release()
            sending[0] -= 1
            if controller is None or controller.window <= 1.0 or ctl.rate is not None:
                ctl.on_response(started, status)  # (as the engine's _adapt)
            rate = ctl.rate
            if controller is not None:
                if controller.on_response(started, status, sending[0] + 1):
                    pool.set_limit(controller.limit)
                if controller.rate is not None:
                    rate = controller.rate if rate is None else min(rate, controller.rate)
            if pacer.rate is None and rate is not None:
                pacer.hold()
            pacer.gate = ctl.delay_until  # (the engine's _adapt: one hook)
            pacer.rate = rate
            if status == 429 and headers:
                pause.pause(wait)
            elif status == 429:
                await clock.sleep(0.75)  # the engine's first backoff, 0.5-1 s (a free retry)

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    await settle()
    while clock.now() < seconds and result.done_at is None:
        sleepers = clock.sleepers
        step = (sleepers[0] - clock.now()) if sleepers else 0.01
        await clock.advance(max(1e-4, min(step, seconds - clock.now())))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return result
