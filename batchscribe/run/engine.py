"""The engine: the pool of one run and its lifecycle. A streaming reader feeds a bounded queue;
workers turn each item into request plans, ask :mod:`admission <batchscribe.run.admission>`
when each may start, send it through the :mod:`sender <batchscribe.run.send>` with retries,
assemble the answers and append the item's record. Emits events.

Shutdown: the first SIGINT/SIGTERM/SIGHUP stops taking items and lets requests in flight finish
within a short grace; a second one stops at once. Nothing finished is ever lost: each record is
written the moment its item ends. The stop's state is one small object, :class:`StopState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, BinaryIO

from batchscribe import manifest
from batchscribe.audio import audio_duration
from batchscribe.clock import Clock, LoopClock, utc_now
from batchscribe.errors import (
    EXIT_ABORTED,
    GiveUp,
    RetryableError,
    RunAborted,
    Stopped,
)
from batchscribe.events import (
    Event,
    EventBus,
    InvalidLine,
    ItemFinished,
    ItemRetried,
    ItemsSkipped,
    Notice,
    RunFinished,
    RunStarted,
    Subscriber,
    Summary,
    TotalKnown,
)
from batchscribe.items import CLOUD_OBJECT, LOCAL_FILE, URL, Item, Problem
from batchscribe.pulse import (
    Outcome,
    PulseParams,
    Verdict,
    check_combination,
    endpoint_clashes,
    url_secrets,
)
from batchscribe.results import (
    ResultsStore,
    ResumeState,
    Skipped,
    build_record,
    damaged_lines,
    payload_duration,
)
from batchscribe.retry import RetryPolicy, call_with_retry
from batchscribe.run.admission import Admission
from batchscribe.run.feed import Feed
from batchscribe.run.options import RunOptions
from batchscribe.run.packing import PackStage
from batchscribe.run.plan import check_file
from batchscribe.run.prep import ChunkAnswers, PrepStage, examine, examine_inline
from batchscribe.run.send import Sender
from batchscribe.run.stop import StopState
from batchscribe.run.unattended import SpendGate, Watch, price
from batchscribe.run.work import Answer, RequestPlan, assemble, plan_requests, prepared_summary

if TYPE_CHECKING:
    from batchscribe.audio.prepare import Prepared

# Imported where they are used, not here: batchscribe.ratestore (--rate-store), aiofiles
# (files over one chunk), and tenacity in retry.py (a second attempt). A run without them
# starts ~30 ms sooner.

__all__ = ["Engine", "RunOptions", "StopState", "run_batch", "run_batch_async"]


#: An answer's outcome until its plan's first attempt ends (never recorded: replaced by it).
_UNSENT = Outcome(Verdict.RETRY, None, "network", "not sent yet")


class Engine:
    """One run. Create, then ``await run()``; returns the :class:`Summary`.

    Seams: ``clock`` (every wait and timer), ``sender`` (the transport: a
    :class:`~batchscribe.run.send.Sender`, which may itself be given an aiohttp session);
    ``admission`` and ``stop`` are the run's pace and stop state, readable by tests.
    """

    def __init__(
        self,
        options: RunOptions,
        *,
        bus: EventBus | None = None,
        clock: Clock | None = None,
        stdin: BinaryIO | None = None,
        sender: Sender | None = None,
    ) -> None:
        options.validate()  # (the one check; before anything is made from the options)
        self.options = options
        self.bus = bus or EventBus()
        self.clock: Clock = clock or LoopClock()
        self.stdin = stdin
        self.summary = Summary(run_id=uuid.uuid4().hex[:12], concurrency=options.concurrency)
        self.policy = RetryPolicy(
            max_attempts=options.max_attempts, max_retry_wait=options.max_retry_wait
        )
        self.admission = Admission(options, self.clock, self.summary, self._emit)
        self.sender = sender or Sender(options, self.clock)
        self.stop = StopState()
        self._rng = random.Random()
        self._store: ResultsStore | None = None
        self._resume: ResumeState | None = None
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue(
            maxsize=max(16, options.concurrency * 2)
        )
        self._workers: list[asyncio.Task[None]] = []
        self._timers: list[asyncio.Task[None]] = []  # --max-runtime, the stop's grace
        self._started_at = ""
        self._in_process = 0
        self.prep_policy = options.prep_policy
        self._oversize_ok = options.transcode != "off"  # the audio stage makes it smaller
        self.prep = PrepStage(self.prep_policy, options.prep_workers)
        self._chunks: ChunkAnswers | None = None  # made with the first item sent in chunks
        self.spend = SpendGate.of(options)  # --max-cost, --max-audio-hours (None: no cap)
        self.packing = PackStage(options, prep=self.prep, stop=self.stop, spend=self.spend,
            clock=self.clock, run_id=self.summary.run_id, request=self._request,
            process=self._process, record=self._record_answer, abort=self._abort_run,
        ) if options.pack else None  # fmt: skip
        priced = self.spend is not None or options.price_per_hour is not None
        self._price = price(options) if priced else None  # summary.cost's
        in_flight = self.admission.limit
        self.watch = Watch(options, self.summary, self.clock, lambda: in_flight.in_flight,
                           partial(self._notice, "warning"))  # fmt: skip

    # ----------------------------------------------------------------------------- running
    async def run(self) -> Summary:
        """Run to completion (or until stopped); never raises for item failures."""
        options = self.options
        manifest.check_sources(options.sources)  # ManifestError is a ConfigError
        admission = self.admission
        admission.answered_at = self.clock.now()
        admission.load_hint()
        self._open_store()  # ResultsBusy / ConfigError propagate from here: nothing is written.
        self.watch.opened()  # (the lock is ours: the status file is this run's)
        started = self.clock.now()
        self._started_at = utc_now()
        emulator = None
        endpoint = options.endpoint
        try:
            if options.emulate:
                from batchscribe.emulator import EmulatorConfig, start_emulator

                emulator = await start_emulator(EmulatorConfig.for_plan(options.emulate_plan))
                endpoint = admission.endpoint = emulator.endpoint()
            resumed = len(self._resume) if self._resume is not None else 0
            self._emit(RunStarted(self.summary.run_id, options.out, resumed, options.concurrency))
            await admission.start()
            await self._run_pool(endpoint)
        finally:
            self.prep.close(stopping=self.stop.stopping)
            await admission.close()
            admission.save_hint()
            self.summary.wall_seconds = self.clock.now() - started
            self.summary.exit_code = self.stop.exit_code(self.summary)
            await self._close(emulator)
        self._emit(RunFinished(self.summary))
        return self.summary

    def _open_store(self) -> None:
        """Open (and if need be repair) the results file; say what was repaired or damaged."""
        options = self.options
        # The endpoint's query may hold a token: a server echoing it must not get it written.
        secrets = [options.api_key, *url_secrets(options.endpoint)]
        store = ResultsStore(options.out, secrets=secrets)
        resume = self._resume = store.open(fingerprints=options.rescan_changed)
        self._store = store
        if store.repaired_bytes:
            self._notice(
                "warning",
                f"{options.out}: cut a torn last line ({store.repaired_bytes} bytes) "
                "left by an interrupted run",
            )
        where = [(options.out, n) for n in resume.damaged]
        for line in damaged_lines(where, resume.corrupt_lines, "not counted"):
            self._notice("warning", line)
        clashes = [] if options.emulate else endpoint_clashes(options.endpoint)
        if clashes:
            self._notice(
                "warning",
                f"--endpoint's query sets {', '.join(clashes)}: the run's own value (its flag "
                "or the manifest field) is sent instead",
            )

    async def _run_pool(self, endpoint: str) -> None:
        options = self.options
        loop = asyncio.get_running_loop()
        installed = self._install_signals(loop)
        if options.max_runtime is not None:
            self._after(options.max_runtime, self._runtime_up)
        syncer = asyncio.create_task(self._sync_loop())
        self._timers.append(asyncio.create_task(self.watch.loop()))
        try:
            await self.sender.open(endpoint)
            self._workers = [asyncio.create_task(self._work()) for _ in range(options.concurrency)]
            producer = asyncio.create_task(self._produce())
            try:
                await asyncio.gather(*self._workers, return_exceptions=True)
                if self.packing is not None:
                    await self.packing.drain()  # (the workers are done: so is the feed)
            finally:
                if not producer.done():
                    producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([producer])
            for task in (producer, *self._workers):
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await self.sender.close()
            for task in (syncer, *self._timers):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await syncer
            for sig in installed:
                loop.remove_signal_handler(sig)
            if self.stop.budget_reached:
                self.summary.budget_reached = True

    def _after(self, seconds: float, then: Callable[[], None]) -> None:
        """Call ``then`` after ``seconds`` of the run's clock (a timer the run's end cancels)."""

        async def timer() -> None:
            await self.clock.sleep(seconds)
            then()

        self._timers.append(asyncio.create_task(timer()))

    # ----------------------------------------------------------------------------- reading
    async def _produce(self) -> None:
        """Stream items from the sources (in a thread) into the queue; skip what is done.

        With ``max_items``, stops after queueing that many items, and marks the budget reached
        only if a further item was waiting to be sent.
        """
        options = self.options
        assert self._resume is not None
        feed = Feed(
            asyncio.get_running_loop(), options.sources, self._resume,
            retry_failed=options.retry_failed, rescan_changed=options.rescan_changed,
            shard=options.shard, stdin=self.stdin, params=options.params,
        )  # fmt: skip
        summary = self.summary
        budget = options.max_items
        total = queued = 0
        queue = self._queue
        try:
            while not (self.stop.stopping or self.stop.capped):
                try:
                    batch = await feed.get_batch()
                except manifest.ManifestError as exc:
                    # A source became unreadable mid-way: say so, count it, keep what was read.
                    summary.invalid_lines += 1
                    self._notice("error", str(exc))
                    self.stop.sources_done = True
                    break
                if not batch:
                    self.stop.sources_done = True
                    summary.total = total
                    pending = total - summary.skipped_ok - summary.skipped_failed
                    self._emit(TotalKnown(total, pending))
                    if feed.hidden_problems:
                        self._notice(
                            "info",
                            f"{feed.hidden_problems} bad manifest line(s) skipped; shard 0 "
                            "reports them",
                        )
                    break
                skipped = 0
                for entry, _action in batch:
                    if type(entry) is Skipped:
                        summary.skipped_ok += entry.done
                        summary.skipped_failed += entry.failed
                        total += entry.done + entry.failed
                        skipped += entry.done + entry.failed
                        continue
                    if isinstance(entry, Problem):
                        summary.invalid_lines += 1
                        self._emit(InvalidLine(str(entry)))
                        continue
                    assert isinstance(entry, Item)
                    total += 1
                    if budget is not None and queued >= budget:
                        summary.budget_reached = True
                        self._notice("info", f"--max-items {budget} reached; work is left")
                        return
                    else:
                        await queue.put(entry)
                        queued += 1
                        if self.stop.stopping or self.stop.capped:
                            self.stop.work_left = True
                            break
                if skipped and self.bus:
                    self.bus.emit(ItemsSkipped(skipped))
        finally:
            feed.close()
            if not self.stop.stopping:
                for _ in self._workers:
                    await queue.put(None)

    # ----------------------------------------------------------------------------- working
    async def _work(self) -> None:
        queue = self._queue
        stop = self.stop
        worker = asyncio.current_task()  # (once per worker, not per item)
        assert worker is not None
        while True:
            item = await queue.get()
            if item is None:
                return
            if stop.stopping:
                stop.work_left = True
                continue
            self._in_process += 1
            try:
                if self.spend is None:
                    await self._process(item, worker)
                else:  # (a refusal: no item more)
                    await self.spend.process(item, partial(self._process, item, worker),
                                             self._spend_reached)  # fmt: skip
            finally:
                self._in_process -= 1

    async def _process(self, item: Item, worker: asyncio.Task[Any]) -> None:
        """Send one item (its request plans, each with retries) and write its record;
        ``worker``: the task doing it (a stop cancels it while it waits)."""
        params = self.options.params.with_overrides(item.params)
        source = item.source
        if not source.isascii():
            # File names that are not UTF-8 arrive with surrogate escapes JSON cannot hold.
            source = source.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        record: dict[str, Any] = {"id": item.id, "status": "failed", "source": source}
        if item.kind is CLOUD_OBJECT:
            size = await self._prepare_object(item, params, record)
        else:
            size = self._prepare(item, params, record)
        if size is None:
            return  # finished (unfit) or aborted: nothing to send
        body: bytes | None = None
        if item.kind is LOCAL_FILE:
            policy = self.prep_policy
            examined = examine_inline(self.sender, item.source, size, policy) or await examine(
                self.sender, item.source, size, policy
            )
            if examined.unfit is not None:
                return self._finish(item, record, 0, examined.unfit)  # unreadable, refused
            if self.packing and await self.packing.take(item, params, record, examined):
                return  # held for a pack: its record comes with the pack's answer
            if examined.prepare:
                return await self._process_prepared(item, params, record, worker)
            body = examined.body  # (read for the probe: its first request sends it)
        answers: list[Answer] = []
        for plan in plan_requests(item, params, size):
            plan.body = body
            try:
                answer = await self._request(plan, worker)
            except Stopped:
                self.stop.work_left = True
                return
            if answer.outcome.verdict is Verdict.ABORT:
                return  # not this item's fault; the next run sends it again
            answers.append(answer)
        await self._record_answer(item, record, assemble(item, answers))

    async def _record_answer(
        self,
        item: Item,
        record: dict[str, Any],
        answer: Answer,
        prepared: dict[str, Any] | None = None,
        packed: dict[str, Any] | None = None,
    ) -> None:
        """Finish an item from its assembled answer; ``prepared``, ``packed``: the record's
        fields."""
        outcome, attempts, elapsed = answer.outcome, answer.attempts, answer.elapsed
        if outcome.cause == "language" and "language" not in item.params:
            # The run's own language is not offered in the account's region: every item left
            # would fail the same way (slowly, at a rate limit). An item's own language
            # (manifest field) fails that item alone.
            return self._abort_run(RunAborted(f"{item.id}: {outcome.error}"))
        header_duration = None
        if (
            outcome.verdict is Verdict.OK
            and item.kind is LOCAL_FILE  # objects are not on this disk; a URL is not either
            and payload_duration(outcome.payload) is None
        ):
            loop = asyncio.get_running_loop()
            try:
                header_duration = await loop.run_in_executor(None, audio_duration, item.source)
            except asyncio.CancelledError:
                # Stopped while reading the header: the transcript is paid for, keep it.
                self._finish(item, record, attempts, outcome, elapsed=elapsed)
                raise
        self._finish(item, record, attempts, outcome, header_duration, elapsed=elapsed,
                     prepared=prepared, packed=packed)  # fmt: skip

    async def _process_prepared(
        self, item: Item, params: PulseParams, record: dict[str, Any], worker: asyncio.Task[Any]
    ) -> None:
        """Prepare a file in the pool (outside admission: no slot is held while it encodes; a
        stop cancels the wait at once), then send its chunks; its chunk files go when it
        ends."""
        self.stop.waiting.add(worker)
        try:
            done = await self.prep.prepare(item.source)
        except RunAborted as exc:
            return self._abort_run(exc)
        finally:
            self.stop.waiting.discard(worker)
        if isinstance(done, Outcome):
            return self._finish(item, record, 0, done)  # unreadable after all, or a crash
        prepared, folder = done
        try:
            if self.stop.stopping:
                self.stop.work_left = True
                return
            await self._send_prepared(item, params, record, prepared)
        finally:
            self.prep.release(folder)

    async def _send_prepared(
        self, item: Item, params: PulseParams, record: dict[str, Any], prepared: Prepared
    ) -> None:
        """Send a prepared recording's chunks (in parallel, each through admission; those a
        past run kept are not sent again), stitch the answers and write the record."""
        plans = plan_requests(item, params, 0, prepared)
        if self._chunks is None:
            options = self.options
            secrets = [options.api_key, *url_secrets(options.endpoint)]
            self._chunks = ChunkAnswers(options.out, self.prep_policy, secrets)
        answers = await self._chunks.gather(
            item, record, prepared, plans, self._request, self._abort_run
        )
        if answers is None:
            self.stop.work_left = True  # stopped or aborted: the next run sends the rest
            return
        summary = prepared_summary(prepared)
        await self._record_answer(item, record, assemble(item, answers, prepared), summary)

    def _prepare(self, item: Item, params: PulseParams, record: dict[str, Any]) -> int | None:
        """Check a file or URL item can be sent (its parameters, its file) and note what the
        record keeps of it; the body's size, or None once the item is finished (unfit)."""
        problem = check_combination(params, url_input=item.kind is URL)
        if problem:
            self._finish(item, record, 0, Outcome(Verdict.FAIL, None, "invalid", problem))
            return None
        size = 0
        if item.kind is LOCAL_FILE:
            st, unfit = check_file(item.source, oversize_ok=self._oversize_ok)
            if st is not None:
                size = st.st_size
                record["size"] = size
                record["mtime"] = st.st_mtime
            if unfit is not None:
                self._finish(item, record, 0, unfit)
                return None
        return size

    async def _prepare_object(
        self, item: Item, params: PulseParams, record: dict[str, Any]
    ) -> int | None:
        """:meth:`_prepare` for a cloud object: its parameters, then the bucket's word on it
        (the record gets its size and version); 0, or None once finished or aborted."""
        if self._prepare(item, params, record) is None:
            return None
        unfit = await self.sender.cloud().prepare(item, record, model=params.model)
        if unfit is None:
            return 0
        if unfit.verdict is Verdict.ABORT:
            self._abort_run(RunAborted(f"{item.id}: {unfit.error}"))
        else:
            self._finish(item, record, 0, unfit)
        return None

    async def _request(self, plan: RequestPlan, worker: asyncio.Task[Any]) -> Answer:
        """Send one request plan with retries; its answer (a FAIL once attempts run out)."""
        answer = Answer(_UNSENT, 0, 0.0)  # (its attempts and elapsed kept by _attempt)
        item = plan.item
        try:
            answer.outcome = await call_with_retry(
                partial(self._attempt, plan, worker, answer), self.policy, self.clock,
                rng=self._rng, on_retry=lambda n, err, delay: self._on_retry(item, n, err, delay),
                free=self.admission.paced,
            )  # fmt: skip
        except GiveUp as give_up:
            answer.outcome = give_up.outcome
        finally:
            self.stop.waiting.discard(worker)
        return answer

    async def _attempt(
        self, plan: RequestPlan, worker: asyncio.Task[Any], answer: Answer
    ) -> Outcome:
        """One attempt at ``plan``: wait for admission, send, adapt (counted in ``answer``);
        RetryableError asks for another."""
        stop, admission = self.stop, self.admission
        if stop.stopping:
            raise Stopped
        if admission.take_free():
            # No pause, rate or pacer, and a free slot: nothing to wait for (and so no
            # moment a stop could cancel), as acquire() would find after two awaits.
            stop.waiting.discard(worker)  # (there after a retry's backoff)
            started = self.clock.now()
        else:
            stop.waiting.add(worker)
            try:
                started = await admission.acquire()
            finally:
                stop.waiting.discard(worker)
        admission.started(started)
        try:
            answer.attempts += 1
            outcome = await self.sender.send(plan)
            answer.elapsed = self.clock.now() - started
        finally:
            admission.release()
        summary = self.summary
        summary.requests_by_status[str(outcome.http_status or "transport")] += 1
        summary.bytes_uploaded += plan.size
        admission.adapt(started, outcome)
        if outcome.verdict is Verdict.RETRY:
            delay = outcome.delay
            if delay is not None and delay <= self.policy.max_retry_wait:
                admission.hold(delay, outcome.cause)
            if stop.stopping:
                raise Stopped
            stop.waiting.add(worker)  # until the next attempt's request starts
            raise RetryableError(outcome)
        if outcome.verdict is Verdict.ABORT:
            self._abort_run(RunAborted(f"{plan.item.id}: {outcome.error}"))
        return outcome

    def _on_retry(self, item: Item, attempt: int, error: RetryableError, delay: float) -> None:
        self.summary.retries += 1
        if self.bus:
            outcome = error.outcome
            self.bus.emit(ItemRetried(item.id, attempt, outcome.cause, outcome.error or "", delay))

    def _finish(
        self,
        item: Item,
        record: dict[str, Any],
        attempts: int,
        outcome: Outcome,
        header_duration: float | None = None,
        *,
        elapsed: float | None = None,
        prepared: dict[str, Any] | None = None,
        packed: dict[str, Any] | None = None,
    ) -> None:
        """Complete the record, write it, count it, emit it. ``elapsed``: the seconds the last
        attempt's request took (recorded for an answered one as ``elapsed_ms``); ``prepared``:
        how a prepared recording was sent, ``packed``: the pack it went in (last fields)."""
        summary = self.summary
        build_record(
            record, outcome, attempts=attempts, run_id=summary.run_id, finished_at=utc_now(),
            params=item.params, metadata=item.metadata, header_duration=header_duration,
            elapsed=elapsed,
        )  # fmt: skip
        if prepared is not None:
            record["prepared"] = prepared
        if packed is not None:
            record["packed"] = packed
        audio = record.get("duration") or 0.0
        store = self._store
        assert store is not None
        try:
            store.append(record)
        except RunAborted as exc:
            self._abort_run(exc)
            return
        if self.spend is not None:
            self.spend.finished(item.id, record["status"], audio)
        if outcome.verdict is Verdict.OK:
            summary.ok += 1
            summary.audio_seconds += audio
            summary.last_success_at = self.clock.wall()
            if self._price is not None:
                summary.cost = summary.audio_seconds / 3600 * self._price
            if summary.sample is None and record.get("transcription"):
                summary.sample = f"{item.id}: {str(record['transcription'])[:120]!r}"
        elif outcome.verdict is Verdict.SUBMITTED:
            summary.submitted += 1
        else:
            summary.failed += 1
            summary.failed_by_cause[outcome.cause] += 1
        if self.bus:
            self.bus.emit(ItemFinished(item.id, record["status"], outcome.cause, attempts, audio))

    # ----------------------------------------------------------------------------- stopping
    def request_stop(self) -> None:
        """Stop taking items; requests in flight get ``grace`` seconds to finish."""
        if self.stop.stopping:
            return
        self.summary.interrupted = True
        self._begin_stop(
            f"stopping: finishing requests in flight (up to {self.options.grace:g} s; "
            "interrupt again to stop at once)"
        )

    def _runtime_up(self) -> None:
        if self.stop.stopping:
            return
        self.stop.by_runtime = True
        self._begin_stop(
            f"--max-runtime reached: finishing requests in flight (up to {self.options.grace:g} s)"
        )

    def _begin_stop(self, message: str) -> None:
        stop = self.stop
        stop.stopping = True
        self._notice("warning", message)
        self._release_workers()
        if stop.waiting:
            stop.work_left = True
            for task in stop.waiting:
                task.cancel()
        self._after(self.options.grace, self._cancel_workers)

    def _release_workers(self) -> None:
        queue = self._queue
        while not queue.empty():
            if queue.get_nowait() is not None:
                self.stop.work_left = True
        for _ in self._workers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    def _cancel_workers(self) -> None:
        if self._in_process:
            self.stop.work_left = True
        for task in self._workers:
            task.cancel()
        if self.packing is not None:
            self.packing.cancel()

    def _spend_reached(self) -> None:
        """A spend cap refused an item: read no more; those admitted are sent (exit 4)."""
        stop = self.stop
        self.summary.budget_reached = stop.work_left = True  # (the refused item is left)
        if not stop.capped and self.spend is not None:
            stop.capped = True
            self._notice("warning", self.spend.message())

    def _abort_run(self, exc: RunAborted) -> None:
        stop = self.stop
        if stop.abort is None:
            stop.abort = exc
            self.summary.aborted = str(exc)
            self._notice("error", f"aborting: {exc}")
        stop.stopping = True
        self._release_workers()
        self._cancel_workers()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed: list[int] = []
        # SIGHUP too: a closed SSH session or terminal sends it, and its default action would
        # end the process at once, losing answers already paid for and the run record.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                loop.add_signal_handler(sig, self._on_signal)
            except (RuntimeError, ValueError, NotImplementedError):
                continue  # not the main thread: the caller handles signals
            installed.append(sig)
        return installed

    def _on_signal(self) -> None:
        if self.stop.stopping and self.stop.abort is None:
            self._notice("warning", "stopping now")
            self._cancel_workers()
        else:
            self.request_stop()

    # ----------------------------------------------------------------------------- edges
    async def _sync_loop(self) -> None:
        store = self._store
        assert store is not None
        loop = asyncio.get_running_loop()
        while True:
            await self.clock.sleep(self.options.sync_interval)
            # Every tick, written to or not: sync also checks that the path still names the
            # file (a results file deleted or replaced mid-run stops the run within a tick).
            try:
                await loop.run_in_executor(None, store.sync)
                if self._chunks is not None:
                    await loop.run_in_executor(None, self._chunks.sync)
            except RunAborted as exc:
                self._abort_run(exc)
                return

    async def _close(self, emulator: Any) -> None:
        if self._chunks is not None:
            with contextlib.suppress(OSError, RunAborted):
                self._chunks.close()
        store = self._store
        if store is not None:
            record = {
                "event": "run",
                "started_at": self._started_at,
                "finished_at": utc_now(),
                **self.summary.as_dict(),
            }
            if self.stop.abort is None:
                try:
                    store.check_path()  # deleted or replaced since the last sync tick?
                    store.append(record)
                except RunAborted as exc:
                    self._fail_at_close(exc)
            await self.watch.finish()  # (before the lock goes: status never looks stale)
            try:
                store.close()
            except OSError as exc:
                if self.stop.abort is None:
                    self._fail_at_close(
                        RunAborted(f"{store.path}: cannot sync results: {exc.strerror}")
                    )
        if emulator is not None:
            await emulator.close()
        await self.sender.close_cloud()

    def _fail_at_close(self, exc: RunAborted) -> None:
        """The results file failed as the run ended: exit 3, said on stderr like any abort."""
        self.stop.abort = exc
        self.summary.aborted = str(exc)
        self.summary.exit_code = EXIT_ABORTED
        self._notice("error", str(exc))

    def _emit(self, event: Event) -> None:
        if self.bus:
            self.bus.emit(event)

    def _notice(self, level: str, message: str) -> None:
        self._emit(Notice(level, message))

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"<Engine run={s.run_id} ok={s.ok} failed={s.failed} skipped={s.skipped_ok} "
            f"retries={s.retries} {self.admission.limit!r} stopping={self.stop.stopping}>"
        )


async def run_batch_async(
    options: RunOptions,
    *,
    subscribers: Sequence[Subscriber] = (),
    clock: Clock | None = None,
    stdin: BinaryIO | None = None,
) -> Summary:
    """Run a batch in the current event loop; see :func:`run_batch`."""
    bus = EventBus()
    for subscriber in subscribers:
        bus.subscribe(subscriber)
    return await Engine(options, bus=bus, clock=clock, stdin=stdin).run()


def run_batch(
    options: RunOptions,
    *,
    subscribers: Sequence[Subscriber] = (),
    stdin: BinaryIO | None = None,
) -> Summary:
    """Transcribe every item of ``options.sources`` into ``options.out``; return the summary.

    Raises :class:`~batchscribe.errors.ConfigError` (exit 2) and
    :class:`~batchscribe.errors.ResultsBusy` (exit 75) before anything is sent; item failures
    and aborts are reported in the summary's counts and ``exit_code``.
    """
    return asyncio.run(run_batch_async(options, subscribers=subscribers, stdin=stdin))
