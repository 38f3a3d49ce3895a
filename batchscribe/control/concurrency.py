"""``--concurrency auto``: an in-flight limit and a start rate learned from 429/503 answers
(TCP CUBIC on a window, paced)."""

from __future__ import annotations

from batchscribe.clock import Clock
from batchscribe.control.limits import OVERLOAD_STATUSES


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
