"""Concurrency and rate control: how many requests may be in flight, and when one may start.

Limits are small strategy objects in the spirit of aiometer: "wait until a start is allowed",
"note a finish". All timing reads the one injectable :class:`~batchscribe.clock.Clock`.
:class:`AdaptiveRate` (always on) learns a requests-per-minute limit from 429s and sets the
:class:`Pacer`'s rate (and, for a window of N per W, its gate);
:class:`AdaptiveConcurrency` (``--concurrency auto``) learns an in-flight
limit on top.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
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
    - **Start: TCP's slow start from the fixed default** (8, doubling per round trip), not
      botocore's "full speed until the first throttle" at the ceiling (256 by default): a volley
      of 256 against a cap of 16 or 25 requests/min is 240-255 refusals at once. From 8 a cap
      of 16 is reached in one round trip; what a short job then loses is the overshoot's cuts
      (next bullet).
    - **At most one cut per round trip** (TCP NewReno's recovery point): an overload counts only
      if its request *started after* the last cut, and while fewer than the cut window were in
      flight beside it. Requests sent under the old limit (in flight at the cut, or holding a
      slot taken then while they wait for the pacer) echo the same event, and cutting on each
      of them would collapse the window far below the limit (measured on the fake clock: slow
      start's overshoot to 32 against a cap of 16 cut eight times in 0.3 s, down to 3).
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
        if self.slow_start:
            return None
        # Before a first round trip is measured (the first volley refused at once), a second
        # per request: refusals come back at once and free their slots, so a window alone
        # would let the pool refill as fast as it is refused (measured on the fake clock: a
        # cut per 5 ms, down to 2 of 6 allowed at 20/s).
        return self.window / (self.srtt or 1.0)

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
        unmeasured = self.srtt is None and self.cuts > 0
        if started < self.cut_at or in_flight - 1 > self.window or unmeasured:
            # Sent before the last cut, or while the pool still drains down to the window the
            # cut set (a slot taken under the old limit, then held in the pacer's queue), or
            # before any round trip was measured (one cut per round trip, and the first has
            # not ended: 429s come back at once): the same congestion event, already answered
            # (NewReno: no second cut in recovery).
            # Without the second test a slow start's overshoot to 32 against a cap of 16 cut
            # eight times in 0.3 s, down to 3 (measured on the fake clock).
            return
        self.cuts += 1
        self.slow_start = False
        # Where the overload happened: the requests sending besides the refused one (what the
        # server counted), unless the window is smaller (it may have been cut meanwhile).
        w_max = max(1.0, min(self.window, in_flight - 1))
        # Refused again where the last overload was (a hard cap, found again by a probe): the
        # point is known, not guessed, so cut half as deep and hold the plateau twice as long
        # (fake clock, a cap of 16 over 15 s: 0.894 -> 0.906 of it).
        same = self.cuts > 1 and abs(w_max - self.w_max) <= 1.0
        self.w_max = w_max
        beta = 1 - (1 - self.beta) / 2 if same else self.beta
        self.window = max(1.0, self.w_max * beta)
        self._plateau = max(self.window, self.w_max * (1 - self.margin))
        self._k = max(1.0, ((self._plateau - self.window) / self.c) ** (1 / 3))
        self._probe_at = self._k + self.settle * (2 if same else 1) / self._plateau
        self.cut_at = now
        self.low = min(self.low, self.limit)

    def __repr__(self) -> str:
        rate = "off" if self.rate is None else f"{self.rate:.1f}/s"
        phase = "slow-start" if self.slow_start else f"cubic w_max={self.w_max:.1f}"
        return (
            f"<AdaptiveConcurrency limit={self.limit} window={self.window:.2f} {phase} "
            f"rate={rate} cuts={self.cuts} ceiling={self.ceiling}>"
        )


#: The lowest start rate the learned pacing ever goes to: one start a minute.
MIN_RATE = 1.0 / 60
#: The window of a limit documented "per minute": the prior that caps the probes' gaps.
PRIOR_WINDOW = 60.0
#: Starts admitted before a first refusal (unpaced) that make a window worth learning; fewer
#: is a token bucket's burst (the volley itself refused), left to the rate search.
WINDOW_MIN = 10
#: A start this long before a refused one, and not refused itself, was admitted (refusals
#: come back at once, admitted answers take the transcription). Measured: at 0.1 s a run-up
#: of 25 starts with 30 ms answers (a time-scaled window) counted under ten, and the window
#: was left to the rate search (0.11 of it); a volley's own starts (same instant) never count.
ADMITTED_AFTER = 0.001
#: Refusals of starts the learned window allowed, without a window held through, before the
#: window model is dropped for the rate alone (the server is not a window of N per W).
FALSIFIED_MAX = 3


class AdaptiveRate:
    """The default start-rate control: learn and hold an unknown requests-per-minute limit.

    Pulse's limit is a *rate* (Standard plan: 25 requests/min per model), not a concurrency: at
    1.5 s answers it needs one start every 2.4 s, a fraction of one request in flight. Limiting
    concurrency cannot express that, so this controls when requests *start* (a pacing rate in
    starts per second; the engine's :class:`Pacer` applies it) while ``--concurrency`` stays a
    hard ceiling on top. Pure decision logic on the injectable clock. The anchors it follows:

    - **botocore's adaptive retry mode** (``retries/adaptive.py``, ``throttling.py``): a token
      bucket that is *off until the first throttle* (so an unlimited service pays nothing, and a
      short job no learning), whose fill rate is then fitted with CUBIC: cut on a throttle, climb
      back towards the rate that drew it, probe beyond. Kept: the off-until-throttled switch and
      CUBIC's shape (fast return, a plateau under the last overload, a convex probe). Changed:
      botocore counts CUBIC's time in *seconds* and anchors on a *measured* send rate; at 25/min
      a second is less than half a start and a measured rate is mostly noise, so time here is
      counted in *answered starts* and the anchor is the pacing rate that was refused (exact).
    - **TCP pacing and AIMD on a rate** (fractional windows): the window is the gap between
      starts, which may be far wider than one round trip; one cut per congestion event (a 429
      counts only if its request started after the last cut: NewReno's recovery point, else the
      requests sent under the old rate would each cut again). The cut is multiplicative
      (``beta``); the plateau sits ``margin`` under the refused rate, since for a token bucket
      the refused rate is an upper bound of the limit; consecutive cuts that never held their
      plateau double the margin (an exponential search down, for a limit lowered mid-run or a
      stale hint), as TCP's repeated timeouts do; a plateau found by such a search is held a
      quarter as long before probing up (it is the less certain: measured on the fake clock,
      0.865 of a limit lowered from 25 to 12/min with the full hold, 0.906 with a quarter).
    - **Search from unpaced** (the first throttle without a hint): a rate is not yet known, so
      it halves from the send rate of the last second per refused start until a start goes
      through at the paced rate: TCP's exponential backoff, one refusal per halving. A refused
      *volley* (the unpaced pool's first starts, all at once) bounds the server's burst, not its
      rate: until a *paced* start is refused, each start that goes through doubles the rate
      (TCP's slow start after a timeout, up to the first loss), so a limit of 20/s is found
      in a few round trips instead of being probed for from 4/s along the slow convex branch
      (measured: 0.61 of 20/s over a 15 s job). The first paced refusal then closes the bracket.
      Going down, the bracket's bottom needs two starts let through in a row: one after an
      idle gap proves only that a bucket of one refilled (measured on the fake clock: at
      25/min a lone start at 30/min went through, and four more refusals stepped down from it).
    - **Google SRE client-side throttling** (accepts / requests): not used to drop requests
      (each item must be sent), but its lesson bounds the cost: the controller is judged on
      429s / requests, and the limit of each cycle (``settle`` starts held on the plateau per
      probe) bounds it at a few percent.

    - **A window of N per W** (the emulator's ``--plan standard``: a sliding log of 25
      admitted per 60 s; API gateways' fixed minutes). Such a limit admits a burst of N and
      then refuses *everything* until the window moves: the search above halved on each
      refusal of that stretch (measured: 0.21 of the limit, 32% 429s, a 60-item job in 169 s
      against ~121 s ideal). So when the first refusal of an unpaced run follows a run-up of
      ``WINDOW_MIN`` admitted starts or more (a token bucket's burst is refused inside the
      first volley), no rate is searched: the run-up's count bounds N, every start is held
      but one probe at gaps doubling from the run-up's span (TCP's backoff, one refusal per
      doubling; never past the documented minute, the prior), and the first probe admitted
      again dates W (it came when the run-up's oldest start left the window; a dating just
      under the minute is a fixed window's early reset: the minute it is). Then a
      client-side sliding log mirroring the server's (:meth:`delay_until`, the
      :class:`Pacer`'s gate) lets a start go whenever fewer than N starts not refused lie in
      the last W: bursts as the server allows them, so a short job keeps its head start. A
      refusal once the window held (a lowered limit) keeps W and re-learns N (the count the
      server now allows, at least half the count refused: a multiplicative cut, as AIMD's);
      held twice over, N is probed one up (the additive increase); a refusal before it held
      re-dates it from the starts made under it; after ``FALSIFIED_MAX`` such misses the
      rate control takes over. Measured on the fake clock, 15 minutes at 25/min, 0.3-10 s
      answers, with and without a delay header: 1.000 of a sliding window after 2 minutes,
      0% 429s then, 1.8-3.4% over the whole run; a 60-item job in 125 s (ideal ~121); a
      window lowered to 12/min held at 1.000 of it.

    A 429's own delay header (when sent) is honoured by the engine's :class:`PoolPause`; it is
    not used as a rate estimate (for a fixed-window limiter it says when the window ends, not
    how fast to go). Against a window it serves the dating: the first start after the pause
    is the probe, admitted exactly when the slot frees.

    Args:
        clock: the run's clock.
        hint: a rate learnt earlier (the last run on the same results file, or the rate store):
            pacing starts just under it and probes up at once, so a stale hint costs a few
            refusals (too high) or a few round trips (too low), never a probe from scratch.
        beta: the multiplicative cut.
        margin: the plateau's distance under the refused rate, as a share of it.
        climb: answered starts from a cut back to the plateau (CUBIC's K).
        settle: answered starts held on the plateau before probing beyond it.
        probe: the probe's growth over ``climb`` starts past the plateau (convex: cubic).
    """

    def __init__(
        self,
        clock: Clock,
        *,
        hint: float | None = None,
        beta: float = 0.85,
        margin: float = 0.03,
        climb: float = 6.0,
        settle: float = 40.0,
        probe: float = 0.03,
    ) -> None:
        self._clock = clock
        self.hint = hint
        self.beta = beta
        self.margin = margin
        self.climb = climb
        self.settle = settle
        self.probe = probe
        self.rate: float | None = None
        # False when this process makes only part of the starts the limit sees (a shared rate
        # store): what the server let through *here* is then not the limit's rate.
        self.measure_admitted = True
        self.anchor: float | None = None  # the learned limit: the last refused pacing rate
        self.searching = False
        self._through: float | None = None  # searching: the highest paced rate let through
        self._bounded = False  # searching: a paced start was refused (the bracket has a top)
        self._admits = 0  # searching: paced starts let through since the last refusal
        self.cut_at = float("-inf")
        self.throttles = 0  # 429 answers seen
        self.cuts = 0
        self._low = 0.0  # the rate just after the last cut
        self._plateau = 0.0
        self._n = 0.0  # answered starts since the last cut (CUBIC's time)
        self._strikes = 0  # cuts in a row that never reached the end of their plateau
        # Start times (the last 5 minutes, at most 4096) and those refused: what the server
        # let through since a cut. (Bounded: at 1000 starts/s a window of 4 s is plenty.)
        self._sent: deque[float] = deque(maxlen=4096)
        self._refused: deque[float] = deque(maxlen=4096)
        # The floor: a quarter of the best rate the server ever let through in 10 s (halved
        # every 5 minutes). 429s that do not come from a rate limit (a gateway's random
        # refusals, the emulator's fault profiles) keep coming however slow the pace: without
        # a floor each would cut again, down to one start a minute.
        self._best = 0.0
        self._bucket = (float("-inf"), 0)  # (start of the 10 s bucket, admitted in it)
        self._previous_cut = float("-inf")
        # The sliding window (N admitted per W seconds), when the limit shows one: learnt
        # from a blocked stretch, applied by the pacer's gate (delay_until).
        self.window: tuple[int, float] | None = None
        self._blocked: float | None = None  # probing: the refused start that began the stretch
        self._oldest = 0.0  # probing: the oldest admitted start of the run-up
        self._offset = 0.0  # probing: the last probe's offset from the oldest (gap doubling)
        self._probe_at = float("inf")  # probing: when the next probe may start
        self._probe_out: float | None = None  # probing: a probe sent, not answered yet
        self._top: int | None = None  # probing a known width: the count refused (N's top)
        self._width = 0.0  # probing a known width: that width
        self._raised = False  # window: the count was raised by one and not yet held
        self._held = 0  # window: admitted starts since it was dated
        self._falsified = 0  # window: refusals it allowed, since one held
        if hint is not None and math.isfinite(hint) and hint > 0:
            self._restart(max(MIN_RATE, hint), cut=hint * (1 - self.margin))
            self._n = self.climb + self.settle  # probe at once: the hint may be stale-low

    @property
    def learned(self) -> float | None:
        """The limit learnt so far (starts per second), or None before any throttle."""
        return self.anchor

    def on_start(self, now: float) -> None:
        """Note a request start (the send rate, and what the server let through)."""
        _keep(self._sent, now, 300.0)
        if self._blocked is not None and now >= self._probe_at:
            self._probe_out, self._probe_at = now, float("inf")

    def delay_until(self, now: float) -> float | None:
        """Seconds a start must wait now (0.0: go), or None to follow :attr:`rate` alone.

        The pacer's gate (:attr:`Pacer.gate`): while a blocked stretch is probed, one probe at
        a time at the probe schedule; once a window is learnt, a client-side sliding log
        mirroring the server's: no ``W``-long span holds more than ``N`` starts not refused.
        The caller notes each start it lets go (:meth:`on_start`) before asking again.
        """
        if self._blocked is not None:
            if self._probe_out is not None:
                return PRIOR_WINDOW  # (until the probe's answer: the pacer asks again then)
            return max(0.0, self._probe_at - now)
        if self.window is None:
            return None
        n, w = self.window
        live = self._live(now - w)
        if len(live) < n:
            return 0.0
        return max(0.0, live[len(live) - n] + w - now)

    def _live(self, since: float, until: float = float("inf")) -> list[float]:
        """Start times in (``since``, ``until``) that were not refused, oldest first."""
        refused = Counter(t for t in self._refused if since < t < until)
        live = []
        for t in self._sent:
            if since < t < until:
                if refused[t]:
                    refused[t] -= 1
                else:
                    live.append(t)
        return live

    def on_response(self, started: float, status: int | None) -> bool:
        """Learn from one answered request; return True when :attr:`rate` changed much (5%).

        Args:
            started: the clock time at which the request started.
            status: its HTTP status; None (a transport failure) teaches nothing.
        """
        if status is None:
            return False
        before = self.rate
        if status == 429:
            self.throttles += 1
            _keep(self._refused, started, 300.0)
            if self._blocked is not None:
                if started >= self._blocked:
                    self._probe_refused(started)
            elif self.window is not None:
                if started >= self.cut_at:
                    self._window_refused(started)
            elif started >= self.cut_at:
                runup = self._runup(started)
                if len(runup) >= WINDOW_MIN:
                    self._block(started, runup[0])
                else:
                    self._throttled()
        else:
            self._admitted(started)
            if self._blocked is not None:
                if self._probe_out is not None and started >= self._probe_out:
                    self._readmitted(started)
            elif self.window is not None:
                self._window_held(started)
            elif self.rate is not None and started >= self.cut_at:
                self._answered()
        after = self.rate
        if before is None or after is None:
            return before is not after
        return abs(after - before) > 0.05 * before

    def adopt(self, rate: float, anchor: float) -> None:
        """Take a cut made by another process sharing the rate (``--rate-store``) as this one's
        own: pace at ``rate``, climb back towards a plateau under ``anchor``; 429s to starts
        made before now are the same congestion event and cut no further."""
        self.searching = False
        self._previous_cut, self.cut_at = self.cut_at, self._clock.now()
        self._restart(anchor, cut=rate)

    @property
    def answered(self) -> float:
        """Answered starts since the last cut (CUBIC's time)."""
        return self._n

    def advance(self, n: float) -> bool:
        """Move CUBIC's time on to ``n`` answered starts since the last cut when that is ahead
        of this process's count: with a shared rate store, the fleet's count (its answers are
        spread over its processes). True when the rate changed."""
        if self.rate is None or self.searching or n <= self._n:
            return False
        self._n = n
        if self._n >= self.climb + self.settle:
            self._strikes = 0  # the plateau held
        before, self.rate = self.rate, max(self.floor, self.target(self._n))
        return self.rate != before

    def target(self, n: float) -> float:
        """The pacing rate ``n`` answered starts after the last cut: climb, plateau, probe."""
        if n < self.climb:
            return (
                self._plateau - (self._plateau - self._low) * ((self.climb - n) / self.climb) ** 3
            )
        if n < self.climb + self.settle:
            return self._plateau
        return self._plateau * (1 + self.probe * ((n - self.climb - self.settle) / self.climb) ** 3)

    @property
    def floor(self) -> float:
        """The lowest pacing rate allowed now (see ``_best``)."""
        return max(MIN_RATE, self._best / 4)

    # ------------------------------------------------------------------ the sliding window
    def _runup(self, started: float) -> list[float]:
        """The starts admitted before the first refusal of an unpaced run (a run-up long
        enough shows a window), or none when a window is not to be learnt here."""
        if self.rate is not None or not self.measure_admitted:
            return []  # (paced already, or one process of a fleet: the rate alone)
        return self._live(float("-inf"), started - ADMITTED_AFTER)

    def _block(
        self, started: float, oldest: float, *, top: int | None = None, width: float = 0.0
    ) -> None:
        """A refusal after a run of admissions: the window is full. Hold every start but a
        sparse probe until one is admitted again: that one dates the window (or, with the
        ``width`` known, its new count, at most ``top``)."""
        self.cuts += 1
        self._previous_cut, self.cut_at = self.cut_at, self._clock.now()
        self._blocked, self._oldest, self._probe_out = started, oldest, None
        self._top, self._width = top, width
        if top is not None:
            self.window = None
            self._offset = width / max(1, top)  # (a slot's width; doubled per refusal)
            self.anchor = self.rate = max(MIN_RATE, top / width)
        else:
            self._offset = max(0.5, started - oldest)
            count = len(self._live(oldest - 1e-9, started))
            # (Shown until the window is dated: the documented minute's rate.)
            self.anchor = self.rate = max(MIN_RATE, count / max(PRIOR_WINDOW, self._offset))
        self._schedule_probe()

    def _schedule_probe(self) -> None:
        """The next probe: the gap from the run-up's oldest start doubles (TCP's backoff, one
        refusal per doubling); the documented minute (or the known width) is never stepped
        over, plus a guard: by then the run-up has left the window."""
        offset = 2 * self._offset
        cap = self._width or PRIOR_WINDOW
        cap += _guard(cap)
        if self._offset < cap < offset:
            offset = cap
        self._offset = offset
        self._probe_at = max(self._clock.now(), self._oldest + offset)

    def _probe_refused(self, started: float) -> None:
        if self._probe_out is not None and started >= self._probe_out:
            self._probe_out = None
            self._offset = max(self._offset, started - self._oldest)
            self._schedule_probe()

    def _readmitted(self, started: float) -> None:
        """A probe went through: the run-up's oldest start has left the window, so the window
        is at most this long and holds the run-up's admitted starts."""
        assert self._blocked is not None
        # (Every start admitted from the oldest on was in the window when it filled.)
        count = len(self._live(self._oldest - 1e-9, started))
        width = max(1e-3, started - self._oldest)
        self._blocked, self._probe_out, self._probe_at = None, None, float("inf")
        self.cut_at = started
        if self._top is not None:  # the width known: the count is what the window now holds
            width = self._width
            # (A lower bound: a late probe finds a window emptier than the limit allows; and
            # half the refused count, a multiplicative cut, is the other.)
            live = len(self._live(started - width, started)) + 1
            count = min(self._top, max(live, self._top // 2))
            self.window = (count, width)
            self._held = 0
            self.anchor = self.rate = count / width
            return
        if count < WINDOW_MIN:  # not a window worth mirroring: the rate alone, from here
            self._to_rate(count / width)
            return
        if 0.75 * PRIOR_WINDOW <= width < PRIOR_WINDOW:
            # A sliding window's dating is an upper bound (the probe came at or after the
            # slot freed); one under the documented minute is a fixed window's reset that
            # came before the run-up's oldest start was a minute old: the minute it is.
            width = PRIOR_WINDOW
        width += _guard(width)
        self.window = (count, width)
        self._top = count + 1  # (the run-up filled the window: no probing past it)
        self._held = 0
        self.anchor = self.rate = count / width

    def _window_held(self, started: float) -> None:
        """An admitted start under the window: after two whole windows held, probe one start
        more per window (AIMD's additive increase, on the count) up to under the last count
        refused, so a count cut too deep, or a raised limit, is found again."""
        assert self.window is not None
        if started < self.cut_at:
            return
        self._held += 1
        n, w = self.window
        if self._held >= n:
            self._falsified = 0
            self._raised = False
        if self._held >= 2 * n and (self._top is None or n + 1 < self._top):
            self._held, self._raised = 0, True
            self.window = (n + 1, w)
            self.anchor = self.rate = (n + 1) / w

    def _window_refused(self, started: float) -> None:
        """A start the window allowed was refused: the limit was lowered, or the window was
        dated short (a fixed window's reset came early). Date it again from the starts the
        server counted; after ``FALSIFIED_MAX`` such misses without a window held, or with
        too few starts to mirror, learn the rate alone."""
        assert self.window is not None
        n, w = self.window
        live = self._live(started - w, started)
        if self._raised:
            # A probe one start up was refused: the count before it was the limit.
            self._raised = False
            self._top = n
            self.window = (n - 1, w)
            self.anchor = self.rate = (n - 1) / w
            return
        if self._held >= n:
            # The window held for a whole N: its width is known, the count fell (a lowered
            # limit). The server refused at this count: N is at most that; probe from here,
            # a slot's width apart, doubling, until a start is admitted again.
            self._falsified = 0
            self._block(started, started, top=max(1, len(live)), width=w)
            return
        # Dated wrong: date it again from the starts made under it (since its dating; a
        # run-up that spanned a fixed window's reset counted two windows' worth as one).
        self._falsified += 1
        live = self._live(self.cut_at - 1e-9, started)
        if self._falsified > FALSIFIED_MAX or len(live) < WINDOW_MIN:
            self._to_rate(max(MIN_RATE, n / w))
            return
        self.window = None
        self._block(started, live[0])

    def _to_rate(self, refused: float) -> None:
        """Leave the window model: the rate control (CUBIC), anchored on ``refused``."""
        self.window = None
        self._blocked = None
        self.searching = False
        self._strikes = 1
        self._restart(refused, cut=refused * self.beta)

    # ------------------------------------------------------------------------- decisions
    def _admitted(self, started: float) -> None:
        """Count an admitted start in its 10 s bucket; a finished bucket may raise ``_best``."""
        at, count = self._bucket
        if started < at + 10.0:
            self._bucket = (at, count + 1)
            return
        if count and at > float("-inf"):
            decay = 0.5 ** ((started - at) / 300.0)
            self._best = max(self._best * decay, count / 10.0)
        self._bucket = (started, 1)

    def _answered(self) -> None:
        if self.searching:
            went = self.rate or MIN_RATE
            self._through = went
            if not self._bounded:
                # Only the volley was refused: the rate may be far higher. Double, and count
                # only starts made at the new rate (a new recovery point).
                self.rate = 2 * went
                self.anchor = max(self.anchor or 0.0, self.rate)
                self.cut_at = self._clock.now()
                return
            self._admits += 1
            if self._admits < 2:
                # One start let through after a refusal says little: the gap since the last
                # admitted start may have refilled a bucket of one. Two in a row, one gap
                # apart, show the rate itself goes through.
                return
            # A start went through at the paced rate: the limit lies between this rate and
            # the refused one: anchor on their geometric middle (a bisection step).
            self._end_search(went, self.anchor if self.anchor is not None else 2 * went)
            return
        self._n += 1
        if self._strikes >= 2 and self.climb <= self._n < self.climb + self.settle / 4:
            # Back on a plateau found by a search down (a margin doubled per cut): it is the
            # less certain, so hold it a quarter as long before probing up again.
            self._n = self.climb + self.settle * 3 / 4
        if self._n >= self.climb + self.settle:
            self._strikes = 0  # the plateau held
        self.rate = max(self.floor, self.target(self._n))

    def _end_search(self, went: float, refused: float) -> None:
        """The search bracketed the limit between ``went`` (let through) and ``refused``."""
        self.searching = False
        self._restart(math.sqrt(went * refused), cut=went)
        # The bracket is wide: go to the plateau at once and probe soon.
        self._n = self.climb + self.settle / 2
        self.rate = self._plateau

    def _throttled(self) -> None:
        now = self._clock.now()
        self.cuts += 1
        self._previous_cut, self.cut_at = self.cut_at, now
        if self.rate is None:
            # The first throttle, unpaced: search down from the send rate of the last second.
            self.searching = True
            sent = max(1.0, float(sum(1 for t in self._sent if t >= now - 1.0)))
            self.anchor = sent
            self.rate = max(self.floor, sent / 2)
            return
        refused = self.rate
        self._admits = 0
        if self.searching:
            self._bounded = True
            self.anchor = refused
            if self._through is not None and self._through < refused:
                self._end_search(self._through, refused)  # (after doubling up past the limit)
                return
            self.rate = max(self.floor, refused / 2)
            return
        # A second refusal before the plateau held: the limit is under the plateau (lowered
        # mid-run, or a stale hint). What the server let through since the last cut, while
        # refusing the rest, is its rate: anchor on it rather than step down 3% at a time.
        if self._strikes and now - self._previous_cut > 0 and self.measure_admitted:
            # (Starts not refused: those still in flight count as admitted, since a refusal
            # comes at once while an admitted answer takes the whole transcription.)
            since = self._previous_cut
            admitted = sum(1 for t in self._sent if t >= since) - sum(
                1 for t in self._refused if t >= since
            )
            if admitted >= 8:  # (fewer is noise)
                refused = min(refused, admitted / (now - self._previous_cut))
        self._strikes += 1
        self._restart(refused, cut=refused * self.beta)

    def _restart(self, refused: float, *, cut: float) -> None:
        """A new cycle: anchor on ``refused``, pace at ``cut``, climb back to the plateau."""
        self.anchor = refused
        margin = min(0.25, self.margin * 2 ** max(0, self._strikes - 1))
        plateau = refused * (1 - margin)
        if self._strikes == 1 and self._plateau < plateau:
            # A probe refused just past a plateau that held: the limit lies between the two,
            # so keep the old plateau unless the probe went well past it.
            plateau = min(plateau, max(self._plateau, refused * (1 - 2 * margin)))
        self._plateau = max(self.floor, plateau)
        self._low = max(self.floor, min(cut, self._plateau))
        self.rate = self._low
        self._n = 0.0

    def __repr__(self) -> str:
        rate = "off" if self.rate is None else f"{self.rate * 60:.1f}/min"
        learned = "?" if self.anchor is None else f"{self.anchor * 60:.1f}/min"
        phase = "searching" if self.searching else f"n={self._n:.0f}"
        return (
            f"<AdaptiveRate rate={rate} learned={learned} {phase} cuts={self.cuts} "
            f"throttles={self.throttles}>"
        )


def _guard(window: float) -> float:
    """Slack added to a dated window: the server counts a start when its request arrives,
    some milliseconds after the client's clock noted it, and not always equally late."""
    return max(0.05, 0.005 * window)


def _keep(times: deque[float], now: float, horizon: float) -> None:
    """Append ``now`` and drop the times older than ``horizon`` seconds before it."""
    times.append(now)
    while times[0] < now - horizon:
        times.popleft()
