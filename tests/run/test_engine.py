"""The engine (batchscribe.run.engine): the pool, retries and stops, through its seams (an
injected sender and clock)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from batchscribe.clock import FakeClock, settle
from batchscribe.pulse import Outcome, Verdict
from batchscribe.run.engine import Engine
from batchscribe.run.options import RunOptions
from batchscribe.run.send import Sender
from batchscribe.run.work import RequestPlan


async def test_a_retried_item_is_not_cancellable_by_a_stop_once_its_request_starts(
    tmp_path: Path,
) -> None:
    """After a retry's backoff the item's next request starts without waiting (a free slot),
    and from then on a stop lets it finish instead of cancelling it as a waiting worker."""
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF" + bytes(100))
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
