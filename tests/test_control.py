"""Concurrency and pool-wide pause, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from batchscribe.clock import FakeClock, settle
from batchscribe.control import ConcurrencyLimit, PoolPause


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
