"""The engine (batchscribe.run.engine): the pool, retries and stops, through its seams (an
injected sender and clock)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from audio_fixtures import wav_bytes

from batchscribe.pulse import Outcome, Verdict
from batchscribe.run.engine import Engine
from batchscribe.run.options import RunOptions
from batchscribe.run.send import Sender
from batchscribe.run.work import RequestPlan
from batchscribe.testing import FakeClock, settle


async def test_a_retried_item_is_not_cancellable_by_a_stop_once_its_request_starts(
    tmp_path: Path,
) -> None:
    """After a retry's backoff the item's next request starts without waiting (a free slot),
    and from then on a stop lets it finish instead of cancelling it as a waiting worker."""
    audio = tmp_path / "a.wav"
    audio.write_bytes(wav_bytes(0.1))  # a real clip: the run probes it
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(orjson.dumps({"id": "a", "path": str(audio)}).decode() + "\n")
    clock = FakeClock()
    between: list[bool] = []
    workers: list[asyncio.Task[Any]] = []

    class Answers(Sender):
        """A 503 first, then a transcript (the transport seam: nothing is sent)."""

        async def send(self, plan: RequestPlan) -> Outcome:
            workers.append(asyncio.current_task())  # type: ignore[arg-type]
            between.append(workers[-1] in engine.stop.waiting)
            if len(between) == 1:
                return Outcome(Verdict.RETRY, 503, "5xx", "HTTP 503")
            return Outcome(Verdict.OK, 200, "ok", None, {"transcription": "hi"})

    run = RunOptions(
        sources=[str(manifest)], out=str(tmp_path / "r.jsonl"), api_key="k",
        concurrency=2, max_retry_wait=60.0,
    )  # fmt: skip
    engine = Engine(run, clock=clock, sender=Answers(run, clock))
    task = asyncio.create_task(engine.run())
    for _ in range(5000):  # (the manifest is read in a thread: wait for its item to arrive)
        if between:
            break
        await asyncio.sleep(0.001)
    await settle()
    assert between == [False] and workers[0] in engine.stop.waiting  # a stop may cancel it
    await clock.advance(120)
    await task
    assert between == [False, False] and not engine.stop.waiting
    assert engine.summary.ok == 1 and engine.summary.retries == 1


async def test_max_runtime_and_wall_time_read_the_runs_clock(tmp_path: Path) -> None:
    """--max-runtime, the stop's grace and the summary's wall time all read the injected clock:
    at 15 s of it the run stops taking items, lets the one in flight finish, and reports 20 s
    (real time: none of it)."""
    manifest = tmp_path / "m.jsonl"
    lines = []
    for name in "abc":
        audio = tmp_path / f"{name}.wav"
        audio.write_bytes(wav_bytes(0.1))  # a real clip: the run probes it
        lines.append(orjson.dumps({"id": name, "path": str(audio)}).decode())
    manifest.write_text("\n".join(lines) + "\n")
    clock = FakeClock()
    sent: list[str] = []

    class TenSeconds(Sender):
        """Every answer takes 10 s of the run's clock."""

        async def send(self, plan: RequestPlan) -> Outcome:
            sent.append(plan.item.id)
            await self.clock.sleep(10)
            return Outcome(Verdict.OK, 200, "ok", None, {"transcription": "hi", "duration": 1})

    run = RunOptions(
        sources=[str(manifest)], out=str(tmp_path / "r.jsonl"), api_key="k",
        concurrency=1, max_runtime=15.0,
    )  # fmt: skip
    engine = Engine(run, clock=clock, sender=TenSeconds(run, clock))
    task = asyncio.create_task(engine.run())
    for _ in range(5000):  # (the manifest is read in a thread: wait for its first item)
        if sent:
            break
        await asyncio.sleep(0.001)
    for _ in range(4):
        await clock.advance(5)
    summary = await asyncio.wait_for(task, 30)
    assert sent == ["a", "b"]
    assert (summary.ok, summary.budget_reached, summary.exit_code) == (2, True, 4)
    assert summary.wall_seconds == 20.0
