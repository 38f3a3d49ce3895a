"""Retry timing on a fake clock: the server's delay wins, backoff grows, give-up rules."""

from __future__ import annotations

import asyncio
import random

import pytest

from batchscribe.errors import RetryableError
from batchscribe.pulse import Outcome, Verdict
from batchscribe.retry import GiveUp, RetryPolicy, backoff, call_with_retry
from batchscribe.testing import FakeClock, settle


def _retry(delay: float | None = None) -> RetryableError:
    return RetryableError(Outcome(Verdict.RETRY, 503, "5xx", "HTTP 503", delay=delay))


class Script:
    """An attempt function that fails with the given errors, then returns 'done'."""

    def __init__(self, clock: FakeClock, errors: list[RetryableError]) -> None:
        self.clock = clock
        self.errors = list(errors)
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(self.clock.now())
        if self.errors:
            raise self.errors.pop(0)
        return "done"


async def _drive(clock: FakeClock, task: asyncio.Task[str], step: float = 0.05) -> None:
    for _ in range(100_000):
        await settle()
        if task.done():
            return
        await clock.advance(step)
    raise AssertionError("never finished")


async def test_server_delay_is_never_undercut() -> None:
    """A retry never starts before the delay the server asked for."""
    clock = FakeClock()
    script = Script(clock, [_retry(7.0), _retry(0.5)])
    task = asyncio.create_task(call_with_retry(script, RetryPolicy(), clock, rng=random.Random(1)))
    await _drive(clock, task)
    assert task.result() == "done"
    assert len(script.calls) == 3
    assert script.calls[1] - script.calls[0] >= 7.0
    assert script.calls[1] - script.calls[0] <= 7.0 * 1.05 + 0.05
    assert script.calls[2] - script.calls[1] >= 0.5


async def test_backoff_doubles_with_jitter_and_caps() -> None:
    """Without a server delay the wait doubles from 1 s (with jitter), capped at 60 s."""
    policy = RetryPolicy()
    rng = random.Random(3)
    for failures, base in [(1, 1), (2, 2), (3, 4), (4, 8), (7, 60), (12, 60)]:
        for _ in range(50):
            wait = backoff(policy, failures, rng)
            assert base / 2 <= wait <= base


async def test_gives_up_after_max_attempts() -> None:
    """After max_attempts failed attempts the item gives up with the last error."""
    clock = FakeClock()
    script = Script(clock, [_retry() for _ in range(10)])
    policy = RetryPolicy(max_attempts=4)
    task = asyncio.create_task(call_with_retry(script, policy, clock, rng=random.Random(1)))
    await _drive(clock, task, step=1.0)
    with pytest.raises(GiveUp) as info:
        task.result()
    assert len(script.calls) == 4
    assert "4 attempts" in info.value.reason


async def test_single_attempt_policy_never_retries() -> None:
    """max_attempts=1 sends once."""
    clock = FakeClock()
    script = Script(clock, [_retry()])
    with pytest.raises(GiveUp):
        await call_with_retry(script, RetryPolicy(max_attempts=1), clock)
    assert len(script.calls) == 1


async def test_too_long_server_delay_fails_instead_of_waiting() -> None:
    """A server delay over max_retry_wait fails the item at once, naming the delay."""
    clock = FakeClock()
    script = Script(clock, [_retry(900.0)])
    with pytest.raises(GiveUp) as info:
        await call_with_retry(script, RetryPolicy(max_retry_wait=300), clock)
    assert len(script.calls) == 1
    assert "900" in info.value.reason and "--max-retry-wait" in info.value.reason


async def test_other_exceptions_propagate_without_retry() -> None:
    """Only RetryableError is retried."""
    clock = FakeClock()
    calls = 0

    async def boom() -> str:
        nonlocal calls
        calls += 1
        raise KeyError("x")

    with pytest.raises(KeyError):
        await call_with_retry(boom, RetryPolicy(), clock)
    assert calls == 1


async def test_on_retry_reports_each_wait() -> None:
    """The retry hook sees every attempt number and its wait."""
    clock = FakeClock()
    seen: list[tuple[int, float]] = []
    script = Script(clock, [_retry(2.0), _retry(3.0), _retry(4.0)])
    task = asyncio.create_task(
        call_with_retry(
            script,
            RetryPolicy(),
            clock,
            rng=random.Random(0),
            on_retry=lambda n, err, delay: seen.append((n, delay)),
        )
    )
    await _drive(clock, task)
    assert [n for n, _ in seen] == [1, 2, 3]
    assert [round(d) for _, d in seen] == [2, 3, 4]
