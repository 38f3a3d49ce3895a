"""Admission (batchscribe.run.admission): the concurrency limit, --rate and the learnt pace as
the workers meet them; on a fake clock."""

from __future__ import annotations

import asyncio
from typing import Any

from batchscribe.events import Event, LimitChanged, Summary
from batchscribe.pulse import Outcome, Verdict
from batchscribe.run.admission import Admission
from batchscribe.run.options import RunOptions
from batchscribe.testing import FakeClock, settle

RTT = 0.3


def options(**kwargs: Any) -> RunOptions:
    return RunOptions(sources=["unused.jsonl"], out="unused.results.jsonl", api_key="k", **kwargs)


def admission(run: RunOptions, clock: Any = None, events: list[Event] | None = None) -> Admission:
    """The admission a run with these options makes (its summary and events kept)."""
    sink = events if events is not None else []
    summary = Summary(run_id="t", concurrency=run.concurrency)
    return Admission(run, clock or FakeClock(), summary, sink.append)


async def test_rate_lets_one_start_through_then_spaces_the_rest() -> None:
    """--rate spaces starts evenly: of five ready starts one goes now (a server bucket of one
    refuses two at once)."""
    gate = admission(options(concurrency=8, rate=0.001))  # one start per 1000 s
    tasks = [asyncio.create_task(gate.acquire()) for _ in range(5)]
    await settle()
    assert sum(task.done() for task in tasks) == 1
    assert gate.limit.in_flight == 5  # slots are held while waiting for the turn
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert gate.limit.in_flight == 1  # a cancelled wait gives its slot back


async def test_without_rate_only_the_concurrency_limit_holds_starts() -> None:
    """No --rate: as many starts go at once as there are slots."""
    gate = admission(options(concurrency=3))
    tasks = [asyncio.create_task(gate.acquire()) for _ in range(5)]
    await settle()
    assert sum(task.done() for task in tasks) == 3
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_engine_applies_the_controllers_limit_and_pacing() -> None:
    """An overload answer cuts the engine's live limit, arms the pacer and emits LimitChanged."""
    clock = FakeClock()
    events: list[Event] = []
    gate = admission(options(concurrency=64, adaptive=True), clock, events)
    assert gate.limit.limit == 8
    assert gate.summary.adaptive
    gate.sending = 15  # fifteen others sending: the window is in use
    for _ in range(8):
        gate.adapt(clock.now() - RTT, Outcome(Verdict.OK, 200, "ok"))
    assert gate.limit.limit == 16
    gate.adapt(clock.now(), Outcome(Verdict.RETRY, 429, "429", "HTTP 429"))
    assert gate.controller is not None
    assert gate.limit.limit == int(15 * gate.controller.beta) + 1
    assert gate.pacer.rate is not None
    assert gate.summary.overload_cuts == 1
    assert gate.summary.concurrency == gate.limit.limit
    assert isinstance(events[-1], LimitChanged) and events[-1].limit == gate.limit.limit
