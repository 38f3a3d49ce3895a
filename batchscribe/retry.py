"""Retry policy on top of tenacity: backoff, the server's delay, the give-up rules.

The server's delay always wins: when a response names a delay (``Retry-After``,
``retry-after-ms``, ``X-RateLimit-Reset``), the next attempt waits at least that long; a delay
longer than ``max_retry_wait`` fails the item instead of waiting. Otherwise the wait is an
exponential backoff with jitter (1 s doubling, capped at 60 s), as the official SDK does.

A failure the caller marks *free* (the engine: a 429 while the service keeps answering) spends
none of the item's attempts and waits only its server delay or a first backoff: a 429 is the
service pacing the run, and the rate controller, not the item, answers it.

The first attempt runs outside tenacity: most items succeed at once and should not pay for the
retry machinery on the per-item path, nor a run without a retry for importing it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from batchscribe.clock import Clock
from batchscribe.errors import GiveUp, RetryableError

if TYPE_CHECKING:
    from tenacity import RetryCallState

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to retry.

    Args:
        max_attempts: attempts per item, the first included.
        initial: the first backoff, in seconds (doubling each attempt).
        maximum: the backoff cap, in seconds.
        max_retry_wait: a server-requested delay longer than this fails the item.
    """

    max_attempts: int = 6
    initial: float = 1.0
    maximum: float = 60.0
    max_retry_wait: float = 300.0


def backoff(policy: RetryPolicy, failures: int, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": between half and all of min(cap, 1 s * 2^(n-1))."""
    base = min(policy.maximum, policy.initial * 2.0 ** (failures - 1))
    return base / 2 + rng.random() * base / 2


def wait_for(
    policy: RetryPolicy, failures: int, server_delay: float | None, rng: random.Random
) -> float:
    """Seconds to wait before the next attempt, after ``failures`` failed attempts.

    A server delay is honoured exactly, plus up to 5% jitter so a paused pool does not
    restart in one burst (never less than the server asked).
    """
    if server_delay is not None:
        return server_delay * (1.0 + 0.05 * rng.random())
    return backoff(policy, failures, rng)


OnRetry = Callable[[int, RetryableError, float], None]
#: ``free(error)``: True when this failure spends none of the item's attempts (a 429 while the
#: service keeps answering: the service pacing the run, not a fault of the item).
Free = Callable[[RetryableError], bool]


async def call_with_retry(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    clock: Clock,
    *,
    rng: random.Random | None = None,
    on_retry: OnRetry | None = None,
    free: Free | None = None,
) -> T:
    """Run ``attempt`` until it returns, retrying on :class:`RetryableError`.

    A failure ``free`` accepts spends no attempt: it is retried after its server delay (or a
    first backoff) however many came before. Raises :class:`GiveUp` when attempts run out or
    the server asks for too long a delay; any other exception propagates at once.
    """
    rng = rng or random.Random()
    spent = 0  # failures that spent an attempt

    def charge(error: RetryableError) -> int:
        """Count ``error`` (unless free); the backoff step for the wait after it."""
        nonlocal spent
        if free is not None and free(error):
            return 1
        spent += 1
        return spent

    try:
        return await attempt()
    except RetryableError as first:
        step = charge(first)
        if spent >= policy.max_attempts:
            raise GiveUp(first, "no attempts left") from None
        delay = _checked_wait(policy, step, first, rng)
        if on_retry is not None:
            on_retry(1, first, delay)
        await clock.sleep(delay)

    from tenacity import AsyncRetrying, retry_if_exception_type

    steps: dict[int, int] = {}  # attempt number -> backoff step, charged once per failure

    def step_of(state: RetryCallState) -> int:
        if state.attempt_number not in steps:
            steps[state.attempt_number] = charge(_failure(state))
        return steps[state.attempt_number]

    def stop(state: RetryCallState) -> bool:
        step_of(state)
        return spent >= policy.max_attempts

    def wait(state: RetryCallState) -> float:
        # tenacity asks for the wait before it asks whether to stop: no wait for a last attempt.
        if stop(state):
            return 0.0
        return _checked_wait(policy, step_of(state), _failure(state), rng)

    def before_sleep(state: RetryCallState) -> None:
        # Runs only when a retry will really happen (after the stop check).
        if on_retry is not None:
            on_retry(state.attempt_number + 1, _failure(state), state.upcoming_sleep)

    retrying: AsyncRetrying = AsyncRetrying(
        stop=stop,
        wait=wait,
        retry=retry_if_exception_type(RetryableError),
        sleep=clock.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return await retrying(attempt)
    except RetryableError as last:
        raise GiveUp(last, f"gave up after {policy.max_attempts} attempts") from None


def _failure(state: RetryCallState) -> RetryableError:
    assert state.outcome is not None
    error = state.outcome.exception()
    assert isinstance(error, RetryableError)
    return error


def _checked_wait(
    policy: RetryPolicy, failures: int, error: RetryableError, rng: random.Random
) -> float:
    delay = error.outcome.delay
    if delay is not None and delay > policy.max_retry_wait:
        raise GiveUp(
            error,
            f"server asked to wait {delay:.0f} s, over --max-retry-wait {policy.max_retry_wait:g}",
        )
    return wait_for(policy, failures, delay, rng)
