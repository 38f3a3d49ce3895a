"""Concurrency, pool-wide pause and the learned start rate, on a fake clock."""

from __future__ import annotations

import asyncio
import math

import pytest
import ratesim

from batchscribe.control import (
    AdaptiveConcurrency,
    AdaptiveRate,
    ConcurrencyLimit,
    Pacer,
    PoolPause,
)
from batchscribe.testing import FakeClock, settle


async def test_limit_is_never_exceeded_and_waiters_run_in_order() -> None:
    """No more than `limit` holders at once; waiters are let in first come, first served."""
    limit = ConcurrencyLimit(2)
    order: list[int] = []
    gates = [asyncio.Event() for _ in range(5)]

    async def hold(i: int) -> None:
        async with limit:
            order.append(i)
            assert limit.in_flight <= 2
            await gates[i].wait()

    tasks = [asyncio.create_task(hold(i)) for i in range(5)]
    await settle()
    assert order == [0, 1]
    gates[1].set()
    await settle()
    assert order == [0, 1, 2]
    for gate in gates:
        gate.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert limit.max_in_flight == 2
    assert limit.in_flight == 0


async def test_raising_the_limit_lets_waiters_in_and_lowering_waits_for_room() -> None:
    """set_limit takes effect at once upwards, and by attrition downwards."""
    limit = ConcurrencyLimit(1)
    for _ in range(1):
        await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await settle()
    assert not waiter.done()
    limit.set_limit(3)
    await settle()
    assert waiter.done()
    assert limit.in_flight == 2
    limit.set_limit(1)
    third = asyncio.create_task(limit.acquire())
    limit.release()
    await settle()
    assert not third.done()  # still 1 in flight, limit 1
    limit.release()
    await settle()
    assert third.done()


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    """A waiter cancelled while queued leaves the count exact."""
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limit.release()
    assert limit.in_flight == 0
    await limit.acquire()
    assert limit.in_flight == 1


async def test_pause_blocks_every_start_until_it_ends() -> None:
    """A pool-wide pause holds every waiter until the server's delay has passed."""
    clock = FakeClock()
    pause = PoolPause(clock)
    assert pause.pause(5.0)
    woke: list[float] = []

    async def start() -> None:
        await pause.wait()
        woke.append(clock.now())

    tasks = [asyncio.create_task(start()) for _ in range(3)]
    await settle()
    await clock.advance(4.9)
    assert woke == []
    await clock.advance(0.2)
    await asyncio.gather(*tasks)
    assert len(woke) == 3
    assert all(t >= 1005.0 for t in woke)


async def test_pause_only_ever_extends() -> None:
    """A shorter pause never cuts a longer one short; a longer one extends it."""
    clock = FakeClock()
    pause = PoolPause(clock)
    assert pause.pause(10.0)
    assert not pause.pause(2.0)
    assert pause.remaining == pytest.approx(10.0)
    waiter = asyncio.create_task(pause.wait())
    await settle()
    await clock.advance(3.0)
    assert pause.pause(20.0)  # extended while someone waits
    await clock.advance(7.5)
    assert not waiter.done()
    await clock.advance(12.6)
    await settle()
    assert waiter.done()


async def test_take_free_takes_only_a_free_slot_nobody_waits_for() -> None:
    """take_free (the engine's no-await start) never jumps the queue or exceeds the limit."""
    limit = ConcurrencyLimit(2)
    assert limit.take_free() and limit.take_free()
    assert not limit.take_free()  # full
    waiter = asyncio.create_task(limit.acquire())
    await settle()
    limit.release()  # the room goes to the waiter, not to a later take_free
    assert not limit.take_free()
    await settle()
    assert waiter.done() and limit.in_flight == 2 and limit.max_in_flight == 2


# ------------------------------------------------------------------------ the learned rate
# Against a token bucket of 25/min with a burst of one (Pulse's Standard plan as the emulator
# models it): one start per 2.4 s, whatever the answer time. On the fake clock: exact, no sleeps.

PER_MIN_25 = 25 / 60


def _ok_share(result: ratesim.SimResult, limit: float, t0: float, t1: float) -> float:
    return result.ok_between(t0, t1) / ((t1 - t0) * limit)


def _refused_share(result: ratesim.SimResult, t0: float, t1: float) -> float:
    ok, refused = result.ok_between(t0, t1), result.refused_between(t0, t1)
    return refused / (ok + refused)


@pytest.mark.parametrize("latency", [0.3, 1.5, 8.0])
@pytest.mark.parametrize("headers", [False, True])
async def test_default_control_learns_25_per_minute_and_holds_it(
    latency: float, headers: bool
) -> None:
    """From no knowledge, 8 workers hold >= 0.9 of 25/min with <= 5% 429s after 2 minutes."""
    result = await ratesim.simulate(
        limit=PER_MIN_25, latency=lambda k: latency, seconds=900.0, headers=headers
    )
    assert _ok_share(result, PER_MIN_25, 120.0, 900.0) >= 0.9
    assert _refused_share(result, 120.0, 900.0) <= 0.05
    assert result.controller is not None and result.controller.learned is not None
    assert 24 <= result.controller.learned * 60 <= 28


@pytest.mark.parametrize("hint_per_min", [25.0, 50.0, 12.5])
async def test_a_hint_starts_paced_and_a_stale_one_is_reprobed(hint_per_min: float) -> None:
    """A hint (right, twice too high, half too low) costs little: whole run >= 0.88, <= 4% 429s."""
    result = await ratesim.simulate(
        limit=PER_MIN_25, latency=lambda k: 1.5, seconds=900.0, hint=hint_per_min / 60
    )
    assert _ok_share(result, PER_MIN_25, 0.0, 900.0) >= 0.88
    assert _refused_share(result, 0.0, 900.0) <= 0.04


async def test_a_limit_lowered_mid_run_is_learnt_again() -> None:
    """25/min dropping to 12/min: within 2 minutes the run holds >= 0.9 of 12/min again."""
    result = await ratesim.simulate(
        limit=PER_MIN_25, latency=lambda k: 1.5, seconds=1200.0, change=(600.0, 12 / 60)
    )
    assert _ok_share(result, 12 / 60, 720.0, 1200.0) >= 0.9
    assert _refused_share(result, 720.0, 1200.0) <= 0.05
    assert result.controller is not None and result.controller.learned is not None
    assert 11 <= result.controller.learned * 60 <= 14


def test_the_rate_is_off_until_the_first_429() -> None:
    """An unlimited service is never paced: the default control costs nothing without 429s."""
    clock = FakeClock()
    rater = AdaptiveRate(clock)
    for _ in range(1000):
        rater.on_start(clock.now())
        assert not rater.on_response(clock.now(), 200)
    assert rater.rate is None and rater.learned is None


def test_the_first_429_halves_the_send_rate_of_the_last_second() -> None:
    """Unpaced, a 429 paces at half the starts of the last second, then halves per refusal."""
    clock = FakeClock()
    rater = AdaptiveRate(clock)
    for _ in range(8):
        rater.on_start(clock.now())
    assert rater.on_response(clock.now(), 429)
    assert rater.rate == 4.0 and rater.searching
    # A refusal of a request started before that cut is the same event: no second cut.
    assert not rater.on_response(clock.now() - 0.1, 429)
    assert rater.rate == 4.0
    rater.on_response(clock.now(), 429)
    assert rater.rate == 2.0
    # Two starts in a row that go through end the search between 2/s (through) and 4/s
    # (refused); one alone may be a bucket refilled during the gap.
    rater.on_response(clock.now(), 200)
    assert rater.searching and rater.rate == 2.0
    rater.on_response(clock.now(), 200)
    assert not rater.searching
    assert rater.rate == pytest.approx(math.sqrt(8) * (1 - rater.margin))


def test_a_transport_failure_teaches_nothing() -> None:
    """No answer (status None) leaves the rate alone."""
    rater = AdaptiveRate(FakeClock(), hint=1.0)
    before = rater.rate
    assert not rater.on_response(0.0, None)
    assert rater.rate == before


def test_random_429s_never_pace_below_a_quarter_of_the_best_rate_let_through() -> None:
    """429s that come whatever the pace (a fault profile) cannot slow a run to a crawl."""
    clock = FakeClock(start=0.0)
    rater = AdaptiveRate(clock)
    # 20 s at 100 admitted starts/s, then one refusal in five, fast.
    for k in range(2000):
        rater.on_response(k / 100, 200)
    for k in range(2000, 6000):
        clock._now = k / 100  # (a pure decision: no sleeper to wake)
        rater.on_start(clock.now())
        rater.on_response(clock.now(), 429 if k % 5 == 0 else 200)
    assert rater.rate is not None and rater.rate >= 100 / 4 * 0.5 ** (40 / 300)


async def test_a_short_job_finds_a_fast_rate_limit_within_a_few_round_trips() -> None:
    """Default options against 20/s (0.3 s answers): a 15 s job gets >= 0.85 of it, whole run."""
    result = await ratesim.simulate(limit=20.0, latency=lambda k: 0.3, seconds=15.0, burst=2.0)
    assert _ok_share(result, 20.0, 0.0, 15.0) >= 0.85
    assert _refused_share(result, 0.0, 15.0) <= 0.08


def test_a_refused_volley_bounds_the_burst_not_the_rate() -> None:
    """After an unpaced volley's 429s, each paced start let through doubles the rate until a
    paced start is refused; that refusal closes the bracket (no halving back from the top)."""
    clock = FakeClock(start=0.0)
    rater = AdaptiveRate(clock)
    for _ in range(8):
        rater.on_start(0.0)
    rater.on_response(0.0, 429)
    assert rater.rate == 4.0 and rater.searching
    for expected in (8.0, 16.0, 32.0):
        clock._now += 0.3  # (a pure decision: no sleeper to wake)
        rater.on_response(clock.now() - 0.1, 200)
        assert rater.rate == expected and rater.searching
    clock._now += 0.01
    rater.on_response(clock.now(), 429)
    assert not rater.searching
    assert rater.rate == pytest.approx(math.sqrt(16 * 32) * (1 - rater.margin))


async def test_auto_holds_a_concurrency_cap_over_a_short_job() -> None:
    """--concurrency auto against a cap of 16 (0.3 s answers): a 15 s job gets >= 0.85 of
    16 / 0.3 s, whole run (slow start, its overshoot and the probes counted)."""
    result = await ratesim.simulate(
        limit=0.0, cap=16, auto=True, workers=256, latency=lambda k: 0.3, seconds=15.0
    )
    assert _ok_share(result, 16 / 0.3, 0.0, 15.0) >= 0.85
    assert result.controller is not None and result.controller.rate is None  # (window's job)


def test_auto_cuts_once_while_the_pool_drains_to_the_cut_window() -> None:
    """A 429 for a start made while more than the cut window was in flight (a slot taken under
    the old limit) echoes the cut already made; one made within the window cuts again."""
    clock = FakeClock(start=10.0)
    ctl = AdaptiveConcurrency(clock, ceiling=256, initial=32)
    ctl.on_response(9.7, 200, 32)  # (a round trip)
    ctl.on_response(clock.now(), 429, 32)
    assert ctl.cuts == 1 and ctl.window == pytest.approx(31 * ctl.beta)
    clock._now += 0.01  # (a pure decision: no sleeper to wake)
    ctl.on_response(clock.now(), 429, 30)
    assert ctl.cuts == 1
    ctl.on_response(clock.now(), 429, 17)
    assert ctl.cuts == 2 and ctl.w_max == 16


async def test_auto_holds_a_fast_rate_limit_over_a_short_job() -> None:
    """--concurrency auto against 20/s (0.3 s answers): >= 0.9 of it over a 15 s job, whole run
    counted, <= 5% 429s (no cut per instant refusal before a round trip is measured)."""
    result = await ratesim.simulate(
        limit=20.0, burst=2.0, auto=True, workers=256, latency=lambda k: 0.3, seconds=15.0
    )
    assert _ok_share(result, 20.0, 0.0, 15.0) >= 0.9
    assert _refused_share(result, 0.0, 15.0) <= 0.05


@pytest.mark.parametrize("latency", [0.3, 1.5])
async def test_auto_hands_a_rate_under_one_in_flight_to_the_learned_rate(latency: float) -> None:
    """--concurrency auto against 25/min: once its window is down to one, the learned rate
    paces; >= 0.9 of the limit, <= 5% 429s after 2 minutes."""
    result = await ratesim.simulate(
        limit=PER_MIN_25, auto=True, workers=256, latency=lambda k: latency, seconds=900.0
    )
    assert _ok_share(result, PER_MIN_25, 120.0, 900.0) >= 0.9
    assert _refused_share(result, 120.0, 900.0) <= 0.05


async def test_a_cold_start_against_25_per_minute_costs_few_429s() -> None:
    """From no knowledge: the first volley of 8, the search and a probe: <= 12 429s in 2 min."""
    result = await ratesim.simulate(limit=PER_MIN_25, latency=lambda k: 1.5, seconds=120.0)
    assert result.refused_between(0.0, 120.0) <= 12


def test_auto_cuts_less_where_the_last_overload_was() -> None:
    """A refusal at the in-flight count of the last one (a hard cap, found again by a probe)
    cuts half as deep and holds the plateau twice as long: the cap is known, not guessed."""
    clock = FakeClock(start=10.0)
    ctl = AdaptiveConcurrency(clock, ceiling=256, initial=17)
    ctl.on_response(9.7, 200, 17)  # (a round trip)
    for cut in range(1, 4):
        clock._now += 1.0  # (a pure decision: no sleeper to wake)
        ctl.window = 17.0  # (as a probe would have grown it)
        ctl.on_response(clock.now(), 429, 17)
        assert ctl.cuts == cut and ctl.w_max == 16
        beta = ctl.beta if cut == 1 else 1 - (1 - ctl.beta) / 2
        assert ctl.window == pytest.approx(16 * beta)


# ------------------------------------------------------------------ a window of N per minute
# The emulator's --plan standard is a sliding 60-s log (25 admitted in any 60 s); API gateways
# often count in fixed minutes instead (here reset at a phase of 23 s into the run). Both
# admit a burst of 25 and then refuse everything until the window moves: the rate search
# alone halved on each refusal of that stretch (measured: 0.21 of the limit, 32% 429s).


@pytest.mark.parametrize("server", ["window", "fixed"])
@pytest.mark.parametrize("latency", [0.3, 1.5, 10.0])
@pytest.mark.parametrize("headers", [False, True])
async def test_default_control_learns_a_25_per_minute_window_and_holds_it(
    server: str, latency: float, headers: bool
) -> None:
    """From no knowledge against a window of 25 per minute: >= 0.95 of it after 2 minutes,
    <= 2.5% 429s then and <= 5% over the whole run (the first volley and the probes). (10-s
    answers run up over the fixed window's reset: that is found, then a minute counted, so
    the window is learnt a minute later.)"""
    result = await ratesim.simulate(
        limit=PER_MIN_25, latency=lambda k: latency, seconds=900.0, headers=headers,
        server=server, phase=23.0,
    )  # fmt: skip
    learned = 180.0 if server == "fixed" and latency == 10.0 and not headers else 120.0
    assert _ok_share(result, PER_MIN_25, learned, 900.0) >= 0.95
    assert _refused_share(result, learned, 900.0) <= 0.025
    assert _refused_share(result, 0.0, 900.0) <= 0.05
    assert result.controller is not None and result.controller.window is not None
    n, width = result.controller.window
    assert n == 25 and 60.0 <= width <= 61.0


@pytest.mark.parametrize("phase", [4.0, 12.0, 20.0, 28.0, 36.0, 44.0, 52.0])
@pytest.mark.parametrize("latency", [3.0, 5.0, 10.0])
async def test_a_fixed_minute_reset_inside_the_run_up_is_found_and_counted(
    phase: float, latency: float
) -> None:
    """A fixed minute whose reset falls inside the unpaced run-up (its count spans two
    minutes) and no delay header: the refused probe at the minute shows it, the reset is found
    within an eighth of a minute, one minute is counted: >= 0.95 of 25/min after 3 minutes,
    <= 2.5% 429s then, <= 5% over the run. (It was 0.55-0.86 of the limit, a window dated
    over two minutes.)"""
    result = await ratesim.simulate(
        limit=PER_MIN_25, latency=lambda k: latency, seconds=900.0, server="fixed", phase=phase
    )
    assert _ok_share(result, PER_MIN_25, 180.0, 900.0) >= 0.95
    assert _refused_share(result, 180.0, 900.0) <= 0.025
    assert _refused_share(result, 0.0, 900.0) <= 0.05
    assert result.controller is not None and result.controller.window is not None
    assert result.controller.window[0] in (24, 25)


@pytest.mark.parametrize("headers", [False, True])
async def test_a_60_item_job_against_a_60_s_window_takes_about_the_ideal_time(
    headers: bool,
) -> None:
    """60 items, 1.5 s answers, 25 per sliding minute: ideal ~121 s (25 at 0, 25 at 60, 10 at
    120); done within 127 s with at most 10 429s (8 workers' first refusals and the probes)."""
    result = await ratesim.simulate(
        limit=PER_MIN_25, latency=lambda k: 1.5, seconds=400.0, headers=headers,
        server="window", items=60,
    )  # fmt: skip
    assert len(result.ok_starts) == 60
    assert result.done_at is not None and result.done_at <= 127.0
    assert len(result.refused) <= 10


@pytest.mark.parametrize("server", ["window", "fixed"])
async def test_a_window_lowered_mid_run_is_learnt_again(server: str) -> None:
    """25 per minute dropping to 12: within 2 minutes the run holds >= 0.9 of 12/min again,
    with <= 5% 429s (the count is re-learnt; the window's width is kept)."""
    result = await ratesim.simulate(
        limit=PER_MIN_25, latency=lambda k: 1.5, seconds=1200.0, change=(600.0, 12 / 60),
        server=server, phase=23.0,
    )  # fmt: skip
    assert _ok_share(result, 12 / 60, 720.0, 1200.0) >= 0.9
    assert _refused_share(result, 720.0, 1200.0) <= 0.05
    assert result.controller is not None and result.controller.window is not None
    assert result.controller.window[0] == 12


async def test_a_time_scaled_window_is_held_far_better_than_by_the_rate_search() -> None:
    """25 per 6 s, 0.15 s answers (the benchmark's scaled window): >= 0.75 of it over 90 s
    (the rate search alone: 0.21; the probes' doubling gaps date the window at 8 s)."""
    limit = 25 / 6
    result = await ratesim.simulate(
        limit=limit, latency=lambda k: 0.15, seconds=90.0, server="window", window_s=6.0
    )
    assert _ok_share(result, limit, 0.0, 90.0) >= 0.75
    assert _refused_share(result, 0.0, 90.0) <= 0.05


def test_no_window_and_no_gate_before_the_first_429() -> None:
    """An unlimited service meets no gate: the pacer's schedule is the rate's alone."""
    clock = FakeClock()
    rater = AdaptiveRate(clock)
    for _ in range(100):
        rater.on_start(clock.now())
        rater.on_response(clock.now(), 200)
    assert rater.delay_until(clock.now()) is None and rater.window is None


async def test_the_pacer_gate_holds_starts_and_an_answer_wakes_them() -> None:
    """A start waits while the gate says so, and asks again when the rate is set (an answer)."""
    clock = FakeClock(start=0.0)
    pacer = Pacer(clock, 1.0)
    hold = [30.0]
    pacer.gate = lambda now: hold[0]
    waiter = asyncio.create_task(pacer.wait())
    await settle()
    await clock.advance(5.0)
    assert not waiter.done()
    hold[0] = 0.0
    pacer.rate = 1.0  # (the engine sets it after every answer)
    await settle()
    assert waiter.done() and clock.now() == 5.0
