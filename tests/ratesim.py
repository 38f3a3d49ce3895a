"""A rate-limited server and a client pool on the fake clock, for the rate controller's tests.

The server is a token bucket (``limit`` starts per second, a burst of one, like the emulator's
``rate_limit`` at 25/min): a request admitted takes ``latency`` seconds, a refused one is
answered at once with a 429 (with the delay until the next token when ``headers``). The pool is
the engine's admission in miniature: ``workers`` in flight at most, the pool-wide pause, the
pacer driven by :class:`~batchscribe.control.AdaptiveRate`. Deterministic: no real time.
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
class SimResult:
    ok_starts: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
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
) -> SimResult:
    """Run the pool for ``seconds`` of fake time against a bucket of ``limit`` starts/s.

    ``latency(k)`` is the answer time of the k-th admitted request; ``change`` = (at, new
    limit) changes the limit mid-run. ``cap``: the server refuses a request beyond ``cap`` in
    flight instead (``limit`` is then ignored); ``auto``: ``--concurrency auto`` with
    ``workers`` as its ceiling, its limit and pacing applied as the engine's ``_adapt`` does.
    """
    clock = FakeClock(start=0.0)
    bucket = Bucket(limit, burst=burst, tokens=burst)
    ctl = AdaptiveRate(clock, hint=hint)
    controller = AdaptiveConcurrency(clock, ceiling=workers) if auto else None
    pool = ConcurrencyLimit(controller.limit if controller else workers)
    pause = PoolPause(clock)
    pacer = Pacer(clock, ctl.rate)
    result = SimResult(controller=ctl, auto=controller)
    serving = [0]
    sending = [0]

    async def worker() -> None:
        while True:
            await pause.wait()
            await pool.acquire()
            if pacer.rate is not None:
                await pacer.wait()
            started = clock.now()
            if change is not None and started >= change[0]:
                bucket.rate = change[1]
            ctl.on_start(started)
            sending[0] += 1
            # (A cap's 429 names no delay: 0.3 s, used only with ``headers``.)
            full = cap is not None and serving[0] >= cap
            wait = (0.3 if full else 0.0) if cap is not None else bucket.take(started)
            if wait == 0.0:
                result.ok_starts.append(started)
                serving[0] += 1
                await clock.sleep(latency(len(result.ok_starts)))
                serving[0] -= 1
                status = 200
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
            pacer.rate = rate
            if status == 429 and headers:
                pause.pause(wait)
            elif status == 429:
                await clock.sleep(0.75)  # the engine's first backoff, 0.5-1 s (a free retry)

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    await settle()
    while clock.now() < seconds:
        sleepers = clock.sleepers
        step = (sleepers[0] - clock.now()) if sleepers else 0.01
        await clock.advance(max(1e-4, min(step, seconds - clock.now())))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return result
