"""The default start-rate control: learn and hold an unknown requests-per-minute limit (a
rate, or N requests per window) from 429s."""

from __future__ import annotations

import math
from collections import Counter, deque

from batchscribe.clock import Clock

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
#: Probes per minute once a probe at the documented minute was refused: the limit is then a
#: fixed minute whose reset lies ahead (within a minute), found to this share of it.
FIXED_PROBES = 8


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
      rate control takes over. A probe refused at the documented minute after the run-up's
      oldest start (no sliding minute could still hold that start) shows a *fixed* minute whose
      reset fell inside the run-up, so its count spans two minutes: the reset is then looked
      for ``FIXED_PROBES`` times a minute, and from the probe admitted at it one minute is
      counted (unpaced, holding starts in the last eighth of each of our minutes, where the
      server's reset may fall) up to its first refusal: that count per minute is the window
      (measured: 1.000 of the limit after 3 minutes for 3-10 s answers at any reset phase,
      <= 0.33% 429s then, <= 4.9% over the run; it was 0.55-0.86, a window dated over two
      minutes). Measured on the fake clock, 15 minutes at 25/min, 0.3-10 s
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
        self._fixed = False  # probing: the probe at the prior was refused (a fixed minute)
        self._counting: float | None = None  # a fixed minute's reset found: counting from it
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
        if self._counting is not None:
            return self._counting_gate(now)
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
            elif self._counting is not None:
                if started >= self._counting:
                    self._counted(started)
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
        self._top, self._width, self._fixed = top, width, False
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
        over, plus a guard: by then the run-up has left the window.

        A probe refused that late (the run-up's oldest start a minute gone, so no sliding
        minute could still refuse it) shows a fixed minute whose reset came *inside* the
        run-up: its count spans two minutes. That reset is due within the next minute: probe
        :data:`FIXED_PROBES` times a minute until one is admitted (:meth:`_readmitted`)."""
        cap = self._width or PRIOR_WINDOW
        cap += _guard(cap)
        if not self._width and cap <= self._offset < cap + PRIOR_WINDOW:
            self._fixed = True
            self._offset += PRIOR_WINDOW / FIXED_PROBES
            self._probe_at = max(self._clock.now(), self._oldest + self._offset)
            return
        offset = 2 * self._offset
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
        if self._fixed:
            # A fixed minute has just reset (the probe's refused one a few seconds ago says
            # so): what it admits from now until its first refusal is its count, exactly.
            self._fixed, self._counting = False, started
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

    def _counting_gate(self, now: float) -> float | None:
        """While a fixed minute is counted (from the probe admitted at its reset, ``R``): go,
        but for the last ``1/FIXED_PROBES`` of each of our minutes from ``R``: the server's
        reset lies in that stretch (the probe came at most that late), so no start is made
        where it could fall in either minute, and the minute a refusal comes in holds exactly
        the starts since its start on our count. Two minutes without a refusal: the run does
        not reach the limit (its answers are slow), so nothing is paced until the next 429."""
        assert self._counting is not None
        minutes, into = divmod(now - self._counting, PRIOR_WINDOW)
        if minutes >= 2:
            self._counting = self.rate = self.anchor = None
            self.cut_at = now
            return None
        hold = PRIOR_WINDOW / FIXED_PROBES
        return max(0.0, PRIOR_WINDOW - into) if into >= PRIOR_WINDOW - hold else 0.0

    def _counted(self, started: float) -> None:
        """The first refusal since a fixed minute's reset: the starts admitted since the start
        of the minute it came in (on our count from ``R``) are the count; mirrored as that
        many per minute (plus the guard), which no fixed minute of the same count refuses.
        (A start made at the refusal's instant may have been admitted too: the count may be
        one short, and the window's additive probe finds it.)"""
        assert self._counting is not None
        minutes = (started - self._counting) // PRIOR_WINDOW
        since = self._counting + minutes * PRIOR_WINDOW
        count = len(self._live(since - 1e-9, started))
        self._counting = None
        self.cut_at = self._clock.now()  # (the starts in flight now were sent unpaced)
        width = PRIOR_WINDOW + _guard(PRIOR_WINDOW)
        if count < WINDOW_MIN:
            self._to_rate(max(MIN_RATE, count / width))
            return
        self.window = (count, width)
        self._top = None
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
        self._blocked = self._counting = None
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
