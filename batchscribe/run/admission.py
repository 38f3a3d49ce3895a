"""Admission: the one object a worker asks before each request may start, and tells how it ended.

It holds the run's in-flight limit (fixed, or learnt with ``--concurrency auto``), the pool-wide
pause a server's delay sets, ``--rate`` and the learnt rate's pacer, the fleet's shared rate
(``--rate-store``) and the hint of the rate learnt last time. The strategies themselves are
:mod:`batchscribe.control`'s small objects on the injected clock; this module wires them together
and keeps the summary's pace counts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from batchscribe.clock import Clock
from batchscribe.control import (
    AdaptiveConcurrency,
    AdaptiveRate,
    ConcurrencyLimit,
    Pacer,
    PoolPause,
)
from batchscribe.errors import RetryableError
from batchscribe.events import Event, LimitChanged, Notice, PoolPaused, Summary
from batchscribe.pulse import Outcome, public_url

if TYPE_CHECKING:
    from batchscribe.ratestore import Acquirer, Learned, SharedRate
    from batchscribe.run.options import RunOptions


def hint_scope(endpoint: str, model: str) -> str:
    """What a learnt rate belongs to: the endpoint (no query: it may hold a token) and the
    model (Pulse's limit is per model)."""
    return f"{public_url(endpoint).split('?')[0]} model={model}"


# batchscribe.ratestore (--rate-store, the hint file) is imported where it is used: a run
# without it starts sooner.

#: Seconds of nothing but 429s from the service after which a 429 spends an item's attempts
#: again (a quota used up answers 429 forever: the run must still end).
RATE_PATIENCE = 600.0


class Admission:
    """When a request may start: ``take_free()`` or ``await acquire()``, then ``started()``;
    when it ends: ``release()`` and, for an answer, ``adapt()``.

    ``summary`` receives the pace counts (limit, learned rate, throttles, cuts); ``emit`` the
    events (LimitChanged, PoolPaused, notices).
    """

    def __init__(
        self,
        options: RunOptions,
        clock: Clock,
        summary: Summary,
        emit: Callable[[Event], None],
    ) -> None:
        self.options = options
        self.clock = clock
        self.summary = summary
        self._emit = emit
        self.endpoint = options.endpoint  # (the emulator's, with --emulate: see run())
        self.pause = PoolPause(clock)
        self.controller: AdaptiveConcurrency | None = None
        if options.adaptive:
            self.controller = AdaptiveConcurrency(clock, ceiling=options.concurrency)
            summary.adaptive = True
            summary.concurrency = summary.concurrency_low = summary.concurrency_high = (
                self.controller.limit
            )
        self.limit = ConcurrencyLimit(summary.concurrency)
        self.pacer = Pacer(clock)
        # The default rate control (AdaptiveRate): off until the first 429, then it paces
        # starts at a learnt rate; remade by load_hint() once the hint beside the results is read.
        self.rater = AdaptiveRate(clock)
        self.answered_at = 0.0  # clock time of the service's last answer other than a 429
        self.sending = 0  # requests past acquire and not yet answered
        # --rate: the pacer, starts evenly 1/rate apart (it credits a timer's lateness, so no
        # throughput is lost to it). Not aiolimiter's bucket of two any more: two starts at once
        # are refused by a server bucket of one (Pulse's 25/min), and each refusal taught the
        # learned rate to go lower (measured: 0.19 of 25/min). --rate-store: the same spacing
        # for the whole fleet, by a schedule in Redis (SharedRate) instead of the pacer.
        self.rate_limiter: Acquirer | None = None
        self._shared_rate: SharedRate | None = None
        self._fixed_rate = options.rate
        self.pacer.rate = self._fixed_rate
        if self._fixed_rate is not None:
            # The user knows the limit: a 429 cuts from it, not from a search down from the
            # send rate (which a refusal at exactly the limit would start).
            self.rater = AdaptiveRate(clock, hint=self._fixed_rate)
        if options.rate_store:
            from batchscribe.ratestore import SharedRate

            # --rate-store: one learned rate and one start schedule for the fleet in Redis;
            # while Redis is unreachable, 1/N of the rate per process (N shards).
            self.rate_limiter = self._shared_rate = SharedRate(
                options.rate_store, options.rate, pace=lambda: self.pacer.rate,
                shards=options.shard.count if options.shard is not None else 1,
                on_cut=self.adopt_cut, on_answered=self.fleet_answered,
                api_key=options.api_key, clock=clock, notify=self._notice,
            )  # fmt: skip

    # ----------------------------------------------------------------------------- starts
    def take_free(self) -> bool:
        """Take a slot now if nothing holds starts (no pool pause was ever set, no --rate or
        pacer rate) and one is free: no wait, so no moment a stop could cancel."""
        return (
            not self.pause.pauses
            and self.rate_limiter is None
            and self.pacer.rate is None
            and self.limit.take_free()
        )

    async def acquire(self) -> float:
        """Wait for a pool-wide pause to end, a free slot and the turn to start (``--rate``,
        the learnt rate's pacer), re-checking the pause; return the clock time of the start."""
        pause = self.pause
        while True:
            if pause.pauses:  # (no clock reads on the per-item path until a first pause)
                await pause.wait()
            await self.limit.acquire()
            try:
                if self.rate_limiter is not None:
                    await self.rate_limiter.acquire()
                if self.pacer.rate is not None and self._shared_rate is None:
                    await self.pacer.wait()
            except BaseException:
                self.limit.release()
                raise
            if not pause.pauses or pause.remaining <= 0:
                return self.clock.now()
            self.limit.release()

    def started(self, at: float) -> None:
        """A request holding a slot starts sending at clock time ``at``."""
        self.sending += 1
        self.rater.on_start(at)

    def release(self) -> None:
        """A request ended (answered or not): its slot is free."""
        self.limit.release()
        self.sending -= 1

    def hold(self, delay: float, cause: str) -> None:
        """The server asked for ``delay`` seconds: pause every start that long."""
        # Workers answered together (one 429 each) make one pause: announce it when it
        # starts or moves its end by a second or more, not per worker.
        before = self.pause.remaining
        if self.pause.pause(delay) and (before <= 0 or delay >= before + 1.0):
            self._emit(PoolPaused(delay, cause))

    def paced(self, error: RetryableError) -> bool:
        """A 429 spends none of the item's attempts while the service keeps answering (any
        other answer in the last RATE_PATIENCE seconds): it is the service pacing the run."""
        return (
            error.outcome.http_status == 429 and self.clock.now() - self.answered_at < RATE_PATIENCE
        )

    # ----------------------------------------------------------------------------- answers
    def adapt(self, started: float, outcome: Outcome) -> None:
        """Feed one answer to the rate control (and the adaptive concurrency controller) and
        apply their limit and start rate: the pacer takes the lower of their rates."""
        status = outcome.http_status
        if status is not None and status != 429:
            self.answered_at = self.clock.now()
        rater = self.rater
        controller = self.controller
        # With --concurrency auto the window answers 429s first (it paces at W / srtt): the
        # learned rate joins only once the window is down to one request, where a rate under
        # one start per round trip needs it. Fed both, a concurrency cap's 429s searched the
        # rate down too (measured: 0.79 of a cap of 16 over a 15 s job).
        changed = False
        if controller is None or controller.window <= 1.0 or rater.rate is not None:
            cuts, anchor = rater.cuts, rater.anchor
            counted = rater.rate is not None and not rater.searching and started >= rater.cut_at
            changed = rater.on_response(started, status)
            if self._shared_rate is not None:  # the fleet's rate: publish a cut, count answers
                self._shared_rate.observe(
                    rater.rate, rater.anchor, cut=rater.cuts != cuts or rater.anchor != anchor,
                    answered=counted and status is not None and status != 429,
                    since=rater.answered,
                )  # fmt: skip
        rate = rater.rate
        if controller is not None:
            # Requests truly sending (not slot holders waiting for their turn), this one too.
            if controller.on_response(started, status, self.sending + 1):
                limit = controller.limit
                self.limit.set_limit(limit)
                summary = self.summary
                summary.concurrency = limit
                summary.concurrency_low = controller.low
                summary.concurrency_high = controller.high
                changed = True
            self.summary.overload_cuts = controller.cuts
            if controller.rate is not None:
                rate = controller.rate if rate is None else min(rate, controller.rate)
        if self._fixed_rate is not None:
            rate = self._fixed_rate if rate is None else min(rate, self._fixed_rate)
        self.summary.throttled = rater.throttles
        self.summary.learned_rate = rater.learned
        if changed:
            self._emit(LimitChanged(self.limit.limit, rate, rater.learned))
        if self.pacer.rate is None and rate is not None:
            self.pacer.hold()
        self.pacer.rate = rate
        self.pacer.gate = rater.delay_until  # (a learnt window's schedule, when there is one)

    # ----------------------------------------------------------------------------- the fleet
    async def start(self) -> None:
        """Join the fleet's shared rate (``--rate-store``), if any."""
        if self._shared_rate is not None:
            self._start_shared(await self._shared_rate.start(self.hint_scope()))

    async def close(self) -> None:
        """Leave the fleet's shared rate, if any."""
        if self._shared_rate is not None:
            await self._shared_rate.close()

    def _start_shared(self, learned: Learned | None) -> None:
        """Start from the fleet's learned rate in the rate store (newer than any file hint)."""
        self.rater.measure_admitted = False  # (this process makes only part of the starts)
        if learned is None:
            return
        hint = learned.anchor
        if self._fixed_rate is not None:
            hint = min(hint, self._fixed_rate)
        self.rater = AdaptiveRate(self.clock, hint=hint)
        self.rater.measure_admitted = False
        self.adopt_cut(learned.rate, learned.anchor)
        self._notice("info", f"starting at the rate the fleet learnt: ~{hint * 60:.0f}/min")

    def adopt_cut(self, rate: float, anchor: float) -> None:
        """Another process sharing the rate store cut the fleet's rate: take it as ours."""
        rater = self.rater
        if self._fixed_rate is not None:
            rate, anchor = min(rate, self._fixed_rate), min(anchor, self._fixed_rate)
        rater.adopt(rate, anchor)
        pace = rater.rate
        if self._fixed_rate is not None and pace is not None:
            pace = min(pace, self._fixed_rate)
        self.pacer.rate = pace
        self.summary.learned_rate = rater.learned
        self._emit(LimitChanged(self.limit.limit, pace, rater.learned))

    def fleet_answered(self, n: int) -> None:
        """The fleet's count of answers since the last cut: climb and probe on all of them."""
        rater = self.rater
        if rater.advance(n):
            pace = rater.rate
            if self._fixed_rate is not None and pace is not None:
                pace = min(pace, self._fixed_rate)
            self.pacer.rate = pace

    # ----------------------------------------------------------------------------- hints
    def hint_scope(self) -> str:
        """What a learnt rate belongs to (:func:`hint_scope`)."""
        return hint_scope(self.endpoint, self.options.params.model)

    def load_hint(self) -> None:
        """Start from the rate the last run on these results learnt (a hint: re-probed)."""
        if self.options.emulate:
            return  # (a new emulator, on a new port, each run)
        # The path of ratestore.hint_path, checked here: most runs have no hint, and importing
        # ratestore (688 lines) for none cost each run 1 ms, 4 ms uncompiled (measured).
        if not os.path.exists(f"{self.options.out}.rate.json"):
            return
        from batchscribe.ratestore import load_hint

        hint = load_hint(self.options.out, self.hint_scope(), time.time())
        if hint is not None and self._fixed_rate is not None:
            hint = min(hint, self._fixed_rate)
        if hint is not None:
            self.rater = AdaptiveRate(self.clock, hint=hint)
            rate = self.rater.rate
            if self._fixed_rate is not None and rate is not None:
                rate = min(rate, self._fixed_rate)
            self.pacer.rate = rate
            self.summary.learned_rate = hint
            self._notice("info", f"starting at the rate learnt last time: ~{hint * 60:.0f}/min")

    def save_hint(self) -> None:
        """Keep the learnt rate beside the results; forget it when the service took far more
        than it without a single 429 (the plan was raised)."""
        rater = self.rater
        if self.options.emulate or (rater.learned is None and rater.hint is None):
            return
        from batchscribe.ratestore import save_hint

        if rater.throttles:
            learned = rater.learned
        elif rater.hint is not None and (rater.rate or 0.0) > 2 * rater.hint:
            learned = None
        else:
            return
        save_hint(self.options.out, self.hint_scope(), learned, time.time())

    def _notice(self, level: str, message: str) -> None:
        self._emit(Notice(level, message))

    def __repr__(self) -> str:
        return f"<Admission {self.limit!r} {self.pacer!r} sending={self.sending}>"
