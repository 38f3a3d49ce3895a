"""The engine: a streaming reader feeds a bounded queue; a pool of workers sends each item to
Pulse with retries; one writer appends every outcome to the results file. Emits events.

Shutdown: the first SIGINT/SIGTERM/SIGHUP stops taking items and lets requests in flight finish
within a short grace; a second one stops at once. Nothing finished is ever lost: each record is
written the moment its item ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import os
import random
import select
import signal
import socket
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, BinaryIO

import aiohttp
import orjson
from aiohttp.http_exceptions import ContentEncodingError
from yarl import URL

from batchscribe import cloud, manifest
from batchscribe.audio import audio_duration, plausible_seconds
from batchscribe.clock import Clock, LoopClock, utc_now
from batchscribe.control import (
    AdaptiveConcurrency,
    AdaptiveRate,
    ConcurrencyLimit,
    Pacer,
    PoolPause,
)
from batchscribe.errors import (
    EXIT_ABORTED,
    EXIT_BUDGET,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ConfigError,
    FileChanged,
    GiveUp,
    ItemError,
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
    LimitChanged,
    Notice,
    PoolPaused,
    RunFinished,
    RunStarted,
    Subscriber,
    Summary,
    TotalKnown,
)
from batchscribe.manifest import Item, Problem
from batchscribe.pulse import (
    DEFAULT_ENDPOINT,
    Outcome,
    PulseParams,
    Verdict,
    build_query,
    check_combination,
    classify,
    clean_api_key,
    content_type_for,
    endpoint_clashes,
    endpoint_problem,
    public_url,
    url_secrets,
)
from batchscribe.results import ResultsStore, ResumeState, Skipped, build_record, damaged_lines
from batchscribe.retry import RetryPolicy, call_with_retry
from batchscribe.run.feed import Feed
from batchscribe.run.plan import check_file
from batchscribe.shard import Shard

if TYPE_CHECKING:
    from batchscribe.ratestore import Acquirer, Learned, SharedRate

# Imported where they are used, not here: batchscribe.ratestore (--rate-store), aiofiles
# (files over one chunk), and tenacity in retry.py (a second attempt). A run without them
# starts ~30 ms sooner.


UPLOAD_CHUNK = 256 * 1024
MAX_CONCURRENCY = 10_000  # requests in flight; far above any API key's limit
#: Seconds of nothing but 429s from the service after which a 429 spends an item's attempts
#: again (a quota used up answers 429 forever: the run must still end).
RATE_PATIENCE = 600.0


@dataclass(frozen=True)
class RunOptions:
    """Everything a run needs. The CLI builds one from its flags; Python callers may too.

    Args:
        sources: manifests (JSONL, CSV, text list), directories, or ``-`` for stdin.
        out: the results JSONL file (created if missing; resumed if present).
        api_key: the Pulse API key (not needed with ``emulate``).
        endpoint: the Pulse URL (either documented endpoint shape).
        params: Pulse parameters for every item (manifest fields override them per item).
        concurrency: requests in flight never exceed this (with ``adaptive``: the ceiling).
        adaptive: ``--concurrency auto``: learn the in-flight limit (and a start rate) from the
            server's answers, growing while they are healthy and cutting on 429/503.
        rate: at most this many request starts per second (``--rate``).
        max_attempts: attempts per item, the first included.
        timeout: seconds per request (connect, upload and response).
        max_retry_wait: a server-requested delay longer than this fails the item.
        retry_failed: also re-attempt items whose last record is ``failed``.
        emulate: run against the bundled emulator, in-process on a free loopback port.
        emulate_plan: the emulator's plan (``unlimited`` or ``standard``: 25 requests/min per
            model, no delay header), with ``emulate``.
        grace: seconds requests in flight may take to finish after a stop request.
        sync_interval: seconds between fsyncs of the results file.
        rescan_changed: re-send ok items whose file's size or mtime changed since.
        max_items: send at most this many items, then stop (exit 4 if work is left).
        max_runtime: stop taking items after this many seconds (exit 4 if work is left).
        shard: take only the items of this shard (``--shard K/N``); bad manifest lines are
            reported by shard 0 only.
        rate_store: ``redis://HOST[:PORT][/DB]``: every process using this Redis, API key,
            endpoint and model holds one learned rate and one start schedule, under ``rate``
            for all of them together when given (``--rate-store``).
        via_client: stream ``s3://``/``gs://`` objects through this machine even for
            ``model=pulse`` (default: send them as presigned URLs; ``--via-client``).
    """

    sources: Sequence[str]
    out: str
    api_key: str | None = None
    endpoint: str = DEFAULT_ENDPOINT
    params: PulseParams = field(default_factory=PulseParams)
    concurrency: int = 8
    adaptive: bool = False
    rate: float | None = None
    max_attempts: int = 6
    timeout: float = 900.0
    max_retry_wait: float = 300.0
    retry_failed: bool = False
    emulate: bool = False
    emulate_plan: str = "unlimited"
    grace: float = 10.0
    sync_interval: float = 1.0
    rescan_changed: bool = False
    max_items: int | None = None
    max_runtime: float | None = None
    shard: Shard | None = None
    rate_store: str | None = None
    via_client: bool = False

    def validate(self) -> None:
        """Raise ConfigError for options that cannot work, before anything is opened."""
        if not self.sources:
            raise ConfigError("no SOURCE given: name a manifest, a directory or - for stdin")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            # (a worker task each: a billion would exhaust memory before the first request)
            flag = "--max-concurrency" if self.adaptive else "--concurrency"
            raise ConfigError(f"{flag} must be from 1 to {MAX_CONCURRENCY:,}")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError("--rate must be a positive number of requests per second")
        if self.rate_store is not None:
            from batchscribe.ratestore import check_url

            check_url(self.rate_store)
        if self.max_attempts < 1:
            raise ConfigError("--max-attempts must be at least 1")
        if not 0 < self.timeout < math.inf:
            raise ConfigError("--timeout must be a positive, finite number of seconds")
        if not 0 <= self.max_retry_wait < math.inf:
            raise ConfigError("--max-retry-wait must be a finite number of seconds >= 0")
        if self.max_items is not None and self.max_items < 0:
            raise ConfigError("--max-items must not be negative")
        if self.max_runtime is not None and not 0 < self.max_runtime < math.inf:
            raise ConfigError("--max-runtime must be positive and finite")
        if not self.emulate:
            _check_endpoint(self.endpoint)
            if not self.api_key:
                raise ConfigError(
                    "no API key: set SMALLEST_API_KEY (or pass --api-key-file PATH); "
                    "use --emulate to try batchscribe without one"
                )
            _check_key(self.api_key)
        problem = check_combination(self.params, url_input=False)
        if problem:
            raise ConfigError(problem)


def _check_endpoint(endpoint: str) -> None:
    """ConfigError unless ``endpoint`` is an http(s) URL with a host (and a valid port) and
    without credentials; the message shows it without its query (it may hold a token)."""
    shown = public_url(endpoint)
    if not endpoint.startswith(("http://", "https://")) or not endpoint.isprintable():
        raise ConfigError(f"--endpoint must be an http(s) URL, not {shown!r}")
    try:
        parts = URL(endpoint)
        parts.port  # noqa: B018 (parsed lazily: an out-of-range port raises here)
    except ValueError as exc:
        raise ConfigError(f"--endpoint {shown!r} is not a valid URL: {exc}") from None
    if parts.user is not None or parts.password is not None:
        raise ConfigError(
            f"--endpoint {shown!r} must not carry a user name or password (user:password@): "
            "the API key goes in SMALLEST_API_KEY or --api-key-file"
        )
    if not parts.host:
        raise ConfigError(f"--endpoint {shown!r} has no host name")
    problem = endpoint_problem(endpoint)
    if problem:
        raise ConfigError(problem)


def _check_key(key: str) -> None:
    """ConfigError unless ``key`` can go in a header as it is (the CLI cleans it first)."""
    try:
        clean = clean_api_key(key)
    except ValueError as exc:
        raise ConfigError(f"the API key {exc}") from None
    if clean != key:
        raise ConfigError("the API key has surrounding whitespace or a BOM: strip it")


@lru_cache(maxsize=256)
def _request_url(endpoint: str, params: PulseParams) -> URL:
    """The endpoint with Pulse's query parameters added to its own (``?token=...&region=eu``
    is kept; Pulse's win a clash), built once per distinct set of parameters."""
    return URL(endpoint).update_query(build_query(params))


@lru_cache(maxsize=64)
def _mime_of(extension: str) -> str:
    return content_type_for(extension)


def _content_type(path: str) -> str:
    """``content_type_for`` by the file's extension (os.path is far cheaper than PurePath)."""
    return _mime_of("x" + os.path.splitext(path)[1])


class Engine:
    """One run. Create, then ``await run()``; returns the :class:`Summary`."""

    def __init__(
        self,
        options: RunOptions,
        *,
        bus: EventBus | None = None,
        clock: Clock | None = None,
        stdin: BinaryIO | None = None,
    ) -> None:
        self.options = options
        self.bus = bus or EventBus()
        self.clock: Clock = clock or LoopClock()
        self.stdin = stdin
        self.summary = Summary(run_id=uuid.uuid4().hex[:12], concurrency=options.concurrency)
        self.policy = RetryPolicy(
            max_attempts=options.max_attempts, max_retry_wait=options.max_retry_wait
        )
        self.pause = PoolPause(self.clock)
        self.controller: AdaptiveConcurrency | None = None
        if options.adaptive:
            self.controller = AdaptiveConcurrency(self.clock, ceiling=options.concurrency)
            summary = self.summary
            summary.adaptive = True
            summary.concurrency = summary.concurrency_low = summary.concurrency_high = (
                self.controller.limit
            )
        self.limit = ConcurrencyLimit(self.summary.concurrency)
        self.pacer = Pacer(self.clock)
        # The default rate control (AdaptiveRate): off until the first 429, then it paces
        # starts at a learnt rate; made in run(), once the hint beside the results is read.
        self.rater = AdaptiveRate(self.clock)
        self._answered_at = 0.0  # clock time of the service's last answer other than a 429
        self._sending = 0  # requests past _acquire and not yet answered
        self._small_reads = _SmallReads()
        # --rate: the pacer, starts evenly 1/rate apart (it credits a timer's lateness, so no
        # throughput is lost to it). Not aiolimiter's bucket of two any more: two starts at once
        # are refused by a server bucket of one (Pulse's 25/min), and each refusal taught the
        # learned rate to go lower (measured: 0.19 of 25/min). --rate-store: the same spacing
        # for the whole fleet, by a schedule in Redis (SharedRate) instead of the pacer.
        self.rate_limiter: Acquirer | None = None
        self._shared_rate: SharedRate | None = None
        self._fixed_rate = options.rate
        self.pacer.rate = self._fixed_rate
        if self._fixed_rate is not None:
            # The user knows the limit: a 429 cuts from it, not from a search down from the
            # send rate (which a refusal at exactly the limit would start).
            self.rater = AdaptiveRate(self.clock, hint=self._fixed_rate)
        if options.rate_store:
            from batchscribe.ratestore import SharedRate

            # --rate-store: one learned rate and one start schedule for the fleet in Redis;
            # while Redis is unreachable, 1/N of the rate per process (N shards).
            self.rate_limiter = self._shared_rate = SharedRate(
                options.rate_store, options.rate, pace=lambda: self.pacer.rate,
                shards=options.shard.count if options.shard is not None else 1,
                on_cut=self._adopt_cut, on_answered=self._fleet_answered,
                api_key=options.api_key, clock=self.clock, notify=self._notice,
            )  # fmt: skip
        self._rng = random.Random()
        self._stopping = False
        self._abort: RunAborted | None = None
        self._store: ResultsStore | None = None
        self._resume: ResumeState | None = None
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None  # for re-sends after a stale connection
        self._endpoint = options.endpoint
        self._url: URL | None = None  # the request URL with options.params (set by _run_pool)
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue(
            maxsize=max(16, options.concurrency * 2)
        )
        self._workers: list[asyncio.Task[None]] = []
        self._grace_handle: asyncio.TimerHandle | None = None
        self._runtime_handle: asyncio.TimerHandle | None = None
        self._started_at = ""
        self._sources_done = False  # the reader reached the end of every source
        self._work_left = False  # a stop left items unsent
        self._runtime_stop = False
        self._in_process = 0
        self._cloud: cloud.CloudSender | None = None  # made with the first s3:// / gs:// item
        # Workers whose item is between requests (waiting for a slot or a retry): a stop
        # cancels them at once, so a stop never starts a request or waits out a backoff.
        self._between: set[asyncio.Task[Any]] = set()

    # ----------------------------------------------------------------------------- running
    async def run(self) -> Summary:
        """Run to completion (or until stopped); never raises for item failures."""
        options = self.options
        options.validate()
        manifest.check_sources(options.sources)  # ManifestError is a ConfigError
        # The endpoint's query may hold a token: a server echoing it must not get it written.
        secrets = [options.api_key, *url_secrets(options.endpoint)]
        self._answered_at = self.clock.now()
        self._load_hint()
        store = ResultsStore(options.out, secrets=secrets)
        # ResultsBusy / ConfigError propagate from here: nothing is written.
        self._resume = store.open(fingerprints=options.rescan_changed)
        self._store = store
        if store.repaired_bytes:
            self._notice(
                "warning",
                f"{options.out}: cut a torn last line ({store.repaired_bytes} bytes) "
                "left by an interrupted run",
            )
        resume = self._resume
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
        started = time.monotonic()
        self._started_at = utc_now()
        emulator = None
        try:
            if options.emulate:
                from batchscribe.emulator import EmulatorConfig, start_emulator

                emulator = await start_emulator(EmulatorConfig.for_plan(options.emulate_plan))
                self._endpoint = emulator.endpoint()
            self._emit(
                RunStarted(self.summary.run_id, options.out, len(self._resume), options.concurrency)
            )
            if self._shared_rate is not None:
                self._start_shared(await self._shared_rate.start(self._hint_scope()))
            await self._run_pool()
        finally:
            if self._shared_rate is not None:
                await self._shared_rate.close()
            self._save_hint()
            self.summary.wall_seconds = time.monotonic() - started
            self._finish_summary()
            await self._close(emulator)
        self._emit(RunFinished(self.summary))
        return self.summary

    async def _run_pool(self) -> None:
        options = self.options
        connector = _Connector(limit=options.concurrency, limit_per_host=0, keepalive_timeout=30)
        timeout = aiohttp.ClientTimeout(
            total=options.timeout, sock_connect=min(30.0, options.timeout)
        )
        headers = {"Authorization": f"Bearer {options.api_key or 'emulated'}"}
        self._url = _request_url(self._endpoint, options.params)
        loop = asyncio.get_running_loop()
        installed = self._install_signals(loop)
        if options.max_runtime is not None:
            self._runtime_handle = loop.call_later(options.max_runtime, self._runtime_up)
        syncer = asyncio.create_task(self._sync_loop())
        try:
            async with aiohttp.ClientSession(
                connector=connector, timeout=timeout, headers=headers, raise_for_status=False
            ) as session:
                self._session = session
                self._workers = [
                    asyncio.create_task(self._work()) for _ in range(options.concurrency)
                ]
                producer = asyncio.create_task(self._produce())
                try:
                    await asyncio.gather(*self._workers, return_exceptions=True)
                finally:
                    if not producer.done():
                        producer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait([producer])
                for task in (producer, *self._workers):
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
        finally:
            if self._fresh is not None:
                await self._fresh.close()
            syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await syncer
            for sig in installed:
                loop.remove_signal_handler(sig)
            for handle in (self._grace_handle, self._runtime_handle):
                if handle is not None:
                    handle.cancel()
            if self._runtime_stop and (self._work_left or not self._sources_done):
                self.summary.budget_reached = True

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
            while not self._stopping:
                try:
                    batch = await feed.get_batch()
                except manifest.ManifestError as exc:
                    # A source became unreadable mid-way: say so, count it, keep what was read.
                    summary.invalid_lines += 1
                    self._notice("error", str(exc))
                    self._sources_done = True
                    break
                if not batch:
                    self._sources_done = True
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
                        if self._stopping:
                            self._work_left = True
                            break
                if skipped and self.bus:
                    self.bus.emit(ItemsSkipped(skipped))
        finally:
            feed.close()
            if not self._stopping:
                for _ in self._workers:
                    await queue.put(None)

    # ----------------------------------------------------------------------------- working
    async def _work(self) -> None:
        queue = self._queue
        while True:
            item = await queue.get()
            if item is None:
                return
            if self._stopping:
                self._work_left = True
                continue
            self._in_process += 1
            try:
                await self._process(item)
            finally:
                self._in_process -= 1

    async def _process(self, item: Item) -> None:
        """Send one item (with retries) and write its record."""
        params = self.options.params.with_overrides(item.params)
        source = item.source
        if not source.isascii():
            # File names that are not UTF-8 arrive with surrogate escapes JSON cannot hold.
            source = source.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        record: dict[str, Any] = {"id": item.id, "status": "failed", "source": source}
        attempts = 0
        size = 0
        problem = check_combination(params, url_input=item.is_url)
        if problem:
            return self._finish(item, record, 0, Outcome(Verdict.FAIL, None, "invalid", problem))
        is_cloud = cloud.is_cloud_uri(item.source)
        if is_cloud:
            unfit = await self._cloud_sender().prepare(item, record, model=params.model)
            if unfit is not None:
                if unfit.verdict is Verdict.ABORT:
                    return self._abort_run(RunAborted(f"{item.id}: {unfit.error}"))
                return self._finish(item, record, 0, unfit)
        elif not item.is_url:
            st, unfit = check_file(item.source)  # the dry run's decision too
            if st is not None:
                size = st.st_size
                record["size"] = size
                record["mtime"] = st.st_mtime
            if unfit is not None:
                return self._finish(item, record, 0, unfit)

        worker = asyncio.current_task()
        assert worker is not None

        elapsed = [0.0]  # the last attempt's round trip (seconds): the record's elapsed_ms

        async def attempt() -> Outcome:
            nonlocal attempts
            if self._stopping:
                raise Stopped
            if self._no_turns() and self.limit.take_free():
                # No pause, rate or pacer, and a free slot: nothing to wait for (and so no
                # moment a stop could cancel), as _acquire would find after two awaits.
                self._between.discard(worker)  # (there after a retry's backoff)
                started = self.clock.now()
            else:
                self._between.add(worker)
                try:
                    started = await self._acquire()
                finally:
                    self._between.discard(worker)
            self._sending += 1
            self.rater.on_start(started)
            try:
                attempts += 1
                outcome = await self._send(item, params, size)
                elapsed[0] = self.clock.now() - started
                if is_cloud:  # a signed URL must never reach a record or a log line
                    outcome = cloud.scrub_outcome(outcome)
            finally:
                self.limit.release()
                self._sending -= 1
            self._adapt(started, outcome)
            if outcome.verdict is Verdict.RETRY:
                delay = outcome.delay
                if delay is not None and delay <= self.policy.max_retry_wait:
                    # Workers answered together (one 429 each) make one pause: announce it
                    # when it starts or moves its end by a second or more, not per worker.
                    before = self.pause.remaining
                    if self.pause.pause(delay) and (before <= 0 or delay >= before + 1.0):
                        self._emit(PoolPaused(delay, outcome.cause))
                if self._stopping:
                    raise Stopped
                self._between.add(worker)  # until the next attempt's request starts
                raise RetryableError(outcome)
            if outcome.verdict is Verdict.ABORT:
                self._abort_run(RunAborted(f"{item.id}: {outcome.error}"))
            return outcome

        try:
            outcome = await call_with_retry(
                attempt, self.policy, self.clock, rng=self._rng,
                on_retry=lambda n, err, delay: self._on_retry(item, n, err, delay),
                free=self._paced,
            )  # fmt: skip
        except GiveUp as give_up:
            outcome = give_up.outcome
        except Stopped:
            self._work_left = True
            return
        finally:
            self._between.discard(worker)
        if outcome.verdict is Verdict.ABORT:
            return  # not this item's fault; the next run sends it again
        if outcome.cause == "language" and "language" not in item.params:
            # The run's own language is not offered in the account's region: every item left
            # would fail the same way (slowly, at a rate limit). An item's own language
            # (manifest field) fails that item alone.
            return self._abort_run(RunAborted(f"{item.id}: {outcome.error}"))
        header_duration = None
        if (
            outcome.verdict is Verdict.OK
            and not item.is_url
            and not is_cloud  # objects are not on this disk; their header is not worth a GET
            and _payload_duration(outcome.payload) is None
        ):
            loop = asyncio.get_running_loop()
            try:
                header_duration = await loop.run_in_executor(None, audio_duration, item.source)
            except asyncio.CancelledError:
                # Stopped while reading the header: the transcript is paid for, keep it.
                self._finish(item, record, attempts, outcome, elapsed=elapsed[0])
                raise
        self._finish(item, record, attempts, outcome, header_duration, elapsed=elapsed[0])

    def _no_turns(self) -> bool:
        """No pool pause was ever set and no --rate or pacer rate holds starts."""
        return not self.pause.pauses and self.rate_limiter is None and self.pacer.rate is None

    def _paced(self, error: RetryableError) -> bool:
        """A 429 spends none of the item's attempts while the service keeps answering (any
        other answer in the last RATE_PATIENCE seconds): it is the service pacing the run."""
        return (
            error.outcome.http_status == 429
            and self.clock.now() - self._answered_at < RATE_PATIENCE
        )

    async def _acquire(self) -> float:
        """Wait for a pool-wide pause to end, a free slot and the turn to start (``--rate``,
        the learnt rate's pacer), re-checking the pause; return the clock time of the start."""
        pause = self.pause
        while True:
            if pause.pauses:  # (no clock reads on the per-item path until a first pause)
                await pause.wait()
            await self.limit.acquire()
            try:
                if self.rate_limiter is not None:
                    await self.rate_limiter.acquire()
                if self.pacer.rate is not None and self._shared_rate is None:
                    await self.pacer.wait()
            except BaseException:
                self.limit.release()
                raise
            if not pause.pauses or pause.remaining <= 0:
                return self.clock.now()
            self.limit.release()

    def _adapt(self, started: float, outcome: Outcome) -> None:
        """Feed one answer to the rate control (and the adaptive concurrency controller) and
        apply their limit and start rate: the pacer takes the lower of their rates."""
        status = outcome.http_status
        if status is not None and status != 429:
            self._answered_at = self.clock.now()
        rater = self.rater
        controller = self.controller
        # With --concurrency auto the window answers 429s first (it paces at W / srtt): the
        # learned rate joins only once the window is down to one request, where a rate under
        # one start per round trip needs it. Fed both, a concurrency cap's 429s searched the
        # rate down too (measured: 0.79 of a cap of 16 over a 15 s job).
        changed = False
        if controller is None or controller.window <= 1.0 or rater.rate is not None:
            cuts, anchor = rater.cuts, rater.anchor
            counted = rater.rate is not None and not rater.searching and started >= rater.cut_at
            changed = rater.on_response(started, status)
            if self._shared_rate is not None:  # the fleet's rate: publish a cut, count answers
                self._shared_rate.observe(
                    rater.rate, rater.anchor, cut=rater.cuts != cuts or rater.anchor != anchor,
                    answered=counted and status is not None and status != 429,
                    since=rater.answered,
                )  # fmt: skip
        rate = rater.rate
        if controller is not None:
            # Requests truly sending (not slot holders waiting for their turn), this one too.
            if controller.on_response(started, status, self._sending + 1):
                limit = controller.limit
                self.limit.set_limit(limit)
                summary = self.summary
                summary.concurrency = limit
                summary.concurrency_low = controller.low
                summary.concurrency_high = controller.high
                changed = True
            self.summary.overload_cuts = controller.cuts
            if controller.rate is not None:
                rate = controller.rate if rate is None else min(rate, controller.rate)
        if self._fixed_rate is not None:
            rate = self._fixed_rate if rate is None else min(rate, self._fixed_rate)
        self.summary.throttled = rater.throttles
        self.summary.learned_rate = rater.learned
        if changed:
            self._emit(LimitChanged(self.limit.limit, rate, rater.learned))
        if self.pacer.rate is None and rate is not None:
            self.pacer.hold()
        self.pacer.gate = rater.delay_until  # (a learnt window's schedule, when there is one)
        self.pacer.rate = rate

    def _start_shared(self, learned: Learned | None) -> None:
        """Start from the fleet's learned rate in the rate store (newer than any file hint)."""
        self.rater.measure_admitted = False  # (this process makes only part of the starts)
        if learned is None:
            return
        hint = learned.anchor
        if self._fixed_rate is not None:
            hint = min(hint, self._fixed_rate)
        self.rater = AdaptiveRate(self.clock, hint=hint)
        self.rater.measure_admitted = False
        self._adopt_cut(learned.rate, learned.anchor)
        self._notice("info", f"starting at the rate the fleet learnt: ~{hint * 60:.0f}/min")

    def _adopt_cut(self, rate: float, anchor: float) -> None:
        """Another process sharing the rate store cut the fleet's rate: take it as ours."""
        rater = self.rater
        if self._fixed_rate is not None:
            rate, anchor = min(rate, self._fixed_rate), min(anchor, self._fixed_rate)
        rater.adopt(rate, anchor)
        pace = rater.rate
        if self._fixed_rate is not None and pace is not None:
            pace = min(pace, self._fixed_rate)
        self.pacer.rate = pace
        self.summary.learned_rate = rater.learned
        self._emit(LimitChanged(self.limit.limit, pace, rater.learned))

    def _fleet_answered(self, n: int) -> None:
        """The fleet's count of answers since the last cut: climb and probe on all of them."""
        rater = self.rater
        if rater.advance(n):
            pace = rater.rate
            if self._fixed_rate is not None and pace is not None:
                pace = min(pace, self._fixed_rate)
            self.pacer.rate = pace

    def _hint_scope(self) -> str:
        """What a learnt rate belongs to: the endpoint (no query: it may hold a token) and the
        model (Pulse's limit is per model)."""
        return f"{public_url(self._endpoint).split('?')[0]} model={self.options.params.model}"

    def _load_hint(self) -> None:
        """Start from the rate the last run on these results learnt (a hint: re-probed)."""
        if self.options.emulate:
            return  # (a new emulator, on a new port, each run)
        from batchscribe.ratestore import load_hint

        hint = load_hint(self.options.out, self._hint_scope(), time.time())
        if hint is not None and self._fixed_rate is not None:
            hint = min(hint, self._fixed_rate)
        if hint is not None:
            self.rater = AdaptiveRate(self.clock, hint=hint)
            rate = self.rater.rate
            if self._fixed_rate is not None and rate is not None:
                rate = min(rate, self._fixed_rate)
            self.pacer.rate = rate
            self.summary.learned_rate = hint
            self._notice("info", f"starting at the rate learnt last time: ~{hint * 60:.0f}/min")

    def _save_hint(self) -> None:
        """Keep the learnt rate beside the results; forget it when the service took far more
        than it without a single 429 (the plan was raised)."""
        rater = self.rater
        if self.options.emulate or (rater.learned is None and rater.hint is None):
            return
        from batchscribe.ratestore import save_hint

        if rater.throttles:
            learned = rater.learned
        elif rater.hint is not None and (rater.rate or 0.0) > 2 * rater.hint:
            learned = None
        else:
            return
        save_hint(self.options.out, self._hint_scope(), learned, time.time())

    async def _send(self, item: Item, params: PulseParams, size: int) -> Outcome:
        """One HTTP exchange, classified. Transport failures become retryable outcomes.

        A request that met a kept-alive connection the server had closed (before any answer)
        is sent once more, whole, on a new connection, spending no attempt: see _Connector.
        """
        session = self._session
        assert session is not None
        outcome = await self._exchange(session, item, params, size)
        if outcome is _STALE:
            outcome = await self._exchange(self._fresh_session(), item, params, size)
        return outcome

    def _fresh_session(self) -> aiohttp.ClientSession:
        """A session that opens a new connection for every request (made on first use)."""
        if self._fresh is None:
            session = self._session
            assert session is not None
            self._fresh = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                timeout=session.timeout, headers=session.headers, raise_for_status=False,
            )  # fmt: skip
        return self._fresh

    async def _exchange(
        self, session: aiohttp.ClientSession, item: Item, params: PulseParams, size: int
    ) -> Outcome:
        """One request on ``session``, its body built afresh (a file read from its start)."""
        data: Any
        if cloud.is_cloud_uri(item.source):
            try:
                data, headers = await self._cloud_sender().request(item, model=params.model)
            except ItemError as exc:  # cloud.CloudError
                return exc.outcome
        elif item.is_url:
            data = orjson.dumps({"url": item.source})
            headers = {"Content-Type": "application/json"}
        else:
            data = None  # read inside the try below: a file that vanished is an outcome
            # (Content-Length: a streamed body would otherwise go chunked.)
            headers = {"Content-Type": _content_type(item.source), "Content-Length": str(size)}
        try:
            if data is None:
                data = await self._small_reads.read(item.source, size)
            url = self._url
            if url is None or params is not self.options.params:
                url = _request_url(self._endpoint, params)
            _REUSED.set(False)
            answered = False
            # allow_redirects=False: a 3xx is an answer (pulse.classify), never followed.
            async with session.post(
                url, data=data, headers=headers, allow_redirects=False
            ) as response:
                answered = True
                try:
                    body = await response.read()
                except aiohttp.ClientPayloadError as exc:
                    return _unreadable_body(response, exc)
                return classify(
                    response.status, response.headers, body, now=self.clock.wall(),
                    webhook=params.webhook_url is not None,
                )  # fmt: skip
        except asyncio.TimeoutError:
            return Outcome(
                Verdict.RETRY, None, "timeout", f"no response within {self.options.timeout:g} s"
            )
        except FileNotFoundError:
            return Outcome(Verdict.FAIL, None, "missing", "file disappeared before upload")
        except ItemError as exc:  # FileChanged; CloudError: the bucket failed mid-stream
            return exc.outcome
        except aiohttp.ClientPayloadError:
            return Outcome(Verdict.RETRY, None, "network", "response body cut short")
        except aiohttp.ClientError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ItemError):  # raised by the body while aiohttp sent it
                return cause.outcome
            if not answered and _REUSED.get() and isinstance(exc, aiohttp.ServerDisconnectedError):
                return _STALE
            return Outcome(Verdict.RETRY, None, "network", _network_error(exc))
        except OSError as exc:
            return Outcome(Verdict.RETRY, None, "network", f"{type(exc).__name__}: {exc.strerror}")
        finally:
            # A streamed body not read to its end: release its connection. If the connection
            # broke mid-upload, aiohttp's writer task may still be inside the generator
            # (aclose() then raises RuntimeError); the writer's cancellation closes it.
            if type(data) is not bytes and inspect.isasyncgen(data):
                with contextlib.suppress(RuntimeError):
                    await data.aclose()

    def _cloud_sender(self) -> cloud.CloudSender:
        if self._cloud is None:
            options = self.options
            self._cloud = cloud.CloudSender(timeout=options.timeout, via_client=options.via_client)
        return self._cloud

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
    ) -> None:
        """Complete the record, write it, count it, emit it. ``elapsed``: the seconds the last
        attempt's request took (recorded for an answered one as ``elapsed_ms``)."""
        summary = self.summary
        build_record(
            record, outcome, attempts=attempts, run_id=summary.run_id, finished_at=utc_now(),
            params=item.params, metadata=item.metadata, header_duration=header_duration,
            elapsed=elapsed,
        )  # fmt: skip
        audio = record.get("duration") or 0.0
        store = self._store
        assert store is not None
        try:
            store.append(record)
        except RunAborted as exc:
            self._abort_run(exc)
            return
        if outcome.verdict is Verdict.OK:
            summary.ok += 1
            summary.audio_seconds += audio
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
        if self._stopping:
            return
        self.summary.interrupted = True
        self._begin_stop(
            f"stopping: finishing requests in flight (up to {self.options.grace:g} s; "
            "interrupt again to stop at once)"
        )

    def _runtime_up(self) -> None:
        if self._stopping:
            return
        self._runtime_stop = True
        self._begin_stop(
            f"--max-runtime reached: finishing requests in flight (up to {self.options.grace:g} s)"
        )

    def _begin_stop(self, message: str) -> None:
        self._stopping = True
        self._notice("warning", message)
        self._release_workers()
        if self._between:
            self._work_left = True
            for task in self._between:
                task.cancel()
        loop = asyncio.get_running_loop()
        self._grace_handle = loop.call_later(self.options.grace, self._cancel_workers)

    def _release_workers(self) -> None:
        queue = self._queue
        while not queue.empty():
            if queue.get_nowait() is not None:
                self._work_left = True
        for _ in self._workers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    def _cancel_workers(self) -> None:
        if self._in_process:
            self._work_left = True
        for task in self._workers:
            task.cancel()

    def _abort_run(self, exc: RunAborted) -> None:
        if self._abort is None:
            self._abort = exc
            self.summary.aborted = str(exc)
            self._notice("error", f"aborting: {exc}")
        self._stopping = True
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
        if self._stopping and self._abort is None:
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
            await asyncio.sleep(self.options.sync_interval)
            # Every tick, written to or not: sync also checks that the path still names the
            # file (a results file deleted or replaced mid-run stops the run within a tick).
            try:
                await loop.run_in_executor(None, store.sync)
            except RunAborted as exc:
                self._abort_run(exc)
                return

    def _finish_summary(self) -> None:
        summary = self.summary
        if self._abort is not None:
            summary.exit_code = EXIT_ABORTED
        elif summary.interrupted:
            summary.exit_code = EXIT_INTERRUPTED
        elif summary.budget_reached:
            summary.exit_code = EXIT_BUDGET
        elif summary.failed or summary.invalid_lines or summary.skipped_failed:
            summary.exit_code = EXIT_FAILED
        else:
            summary.exit_code = EXIT_OK

    async def _close(self, emulator: Any) -> None:
        store = self._store
        if store is not None:
            record = {
                "event": "run",
                "started_at": self._started_at,
                "finished_at": utc_now(),
                **self.summary.as_dict(),
            }
            if self._abort is None:
                try:
                    store.check_path()  # deleted or replaced since the last sync tick?
                    store.append(record)
                except RunAborted as exc:
                    self._fail_at_close(exc)
            try:
                store.close()
            except OSError as exc:
                if self._abort is None:
                    self._fail_at_close(
                        RunAborted(f"{store.path}: cannot sync results: {exc.strerror}")
                    )
        if emulator is not None:
            await emulator.close()
        if self._cloud is not None:
            await self._cloud.close()

    def _fail_at_close(self, exc: RunAborted) -> None:
        """The results file failed as the run ended: exit 3, said on stderr like any abort."""
        self._abort = exc
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
            f"retries={s.retries} {self.limit!r} stopping={self._stopping}>"
        )


def _payload_duration(payload: dict[str, Any] | None) -> float | None:
    """Audio seconds from a response: its top-level ``duration``, else ``metadata.duration``
    (Pulse's ``{duration, fileSize}``), if it says."""
    if not payload:
        return None
    # (An absurd or negative one is no duration: the file's header says instead.)
    duration = plausible_seconds(payload.get("duration"))
    if duration is None:
        meta = payload.get("metadata")
        duration = plausible_seconds(meta.get("duration")) if isinstance(meta, dict) else None
    return duration


class _SmallReads:
    """Where small files are read: inline while reads are quick, else in a thread.

    A file of at most one chunk is read whole (open, read, close) and sent as bytes: the same
    memory as streaming it, and a body that is complete when sent, so the connection goes back
    to the pool for reuse. On a local disk that takes microseconds, far less than a hop to a
    thread and back (~200 us of CPU on a 2-core machine, most of a small item's cost); but a
    network mount may take milliseconds, which must not stall the event loop. So reads go
    inline while a moving average of their time (wherever they ran) stays under ``limit``, and
    to a thread while it does not: one slow read (a preempted process, a cold cache) costs a
    few reads in a thread, a slow mount keeps them all there.
    """

    limit = 0.001  # seconds: the average read time above which reads leave the event loop
    _weight = 0.1  # of the newest read in the moving average

    def __init__(self) -> None:
        self.average = 0.0

    @property
    def inline(self) -> bool:
        return self.average < self.limit

    def _note(self, seconds: float) -> None:
        self.average += (seconds - self.average) * self._weight

    async def read(self, path: str, size: int) -> bytes | AsyncIterator[bytes]:
        """The upload body of a file, opened afresh for each attempt (FileChanged if its size
        moved); files over one chunk stream."""
        if size > UPLOAD_CHUNK:
            return _file_chunks(path, size)
        if self.inline:
            data, seconds = _read_small_timed(path, size)
        else:
            loop = asyncio.get_running_loop()
            data, seconds = await loop.run_in_executor(None, _read_small_timed, path, size)
        self._note(seconds)
        return data


def _read_small_timed(path: str, size: int) -> tuple[bytes, float]:
    """:func:`_read_small` and the seconds it took."""
    started = time.perf_counter()
    data = _read_small(path, size)
    return data, time.perf_counter() - started


def _read_small(path: str, size: int) -> bytes:
    """A whole small file, checked against the size it had when it was planned."""
    with open(path, "rb", buffering=0) as stream:
        data = stream.read(size + 1)
    if len(data) != size:
        raise FileChanged(path)
    return data


async def _file_chunks(path: str, size: int) -> AsyncIterator[bytes]:
    """Stream a file in chunks; FileChanged if its size moved.

    Nothing is awaited after the last chunk is handed over (the check that nothing follows it
    and the close come first): aiohttp cancels an upload still running when the response ends
    and then closes the connection instead of reusing it.
    """
    import aiofiles

    sent = 0
    async with aiofiles.open(path, "rb") as stream:
        chunk = await stream.read(UPLOAD_CHUNK)
        while chunk:
            sent += len(chunk)
            if sent > size:
                raise FileChanged(path)
            if sent == size:
                if await stream.read(1):
                    raise FileChanged(path)
                break
            yield chunk
            chunk = await stream.read(UPLOAD_CHUNK)
    if sent != size:
        raise FileChanged(path)
    yield chunk


#: ``_REUSED.get()``: the connection of this task's latest request had carried one before.
_REUSED: ContextVar[bool] = ContextVar("batchscribe_reused", default=False)

#: An exchange that failed on a kept-alive connection the server closed before answering: the
#: request is sent again on a new connection (it is also the outcome if that cannot happen).
_STALE = Outcome(
    Verdict.RETRY, None, "network",
    "server disconnected (closed a kept-alive connection before answering)",
)  # fmt: skip


class _Connector(aiohttp.TCPConnector):
    """A TCPConnector that tells, through ``_REUSED``, whether the connection it hands out has
    carried a request before, and never hands out one the server has already closed.

    A server may close an idle kept-alive connection at any moment. aiohttp notices only when
    the event loop next reads the socket, so a request sent at once (the next item, right after
    an answer) can be written into a connection whose end (FIN) is already here, and fail with
    ServerDisconnectedError: a request that never reached the server. Here each pooled
    connection is checked before use (a non-blocking peek: end of stream or a reset means
    closed) and a closed one is dropped for another, so nothing is written into it: provably
    never sent. What the check cannot see is a close racing the request itself: a reused
    connection closed cleanly (end of stream, not a reset) before any byte of an answer. The
    engine re-sends that once on a new connection (``_STALE``) without spending an attempt.
    This is not proof (a server that read the request and then closed looks the same) but it
    is the kept-alive race's signature; a reset (how the emulator's fault and a crashing
    server drop a request) and any failure on a new connection spend an attempt as before.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._used: weakref.WeakSet[Any] = weakref.WeakSet()  # protocols handed out before

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        while True:
            conn = await super().connect(req, traces, timeout)
            protocol = conn.protocol
            if protocol is None or protocol not in self._used:
                if protocol is not None:
                    self._used.add(protocol)
                _REUSED.set(False)
                return conn
            if not _closed_by_peer(conn.transport):
                _REUSED.set(True)
                return conn
            conn.close()  # never written to: take another (or a new) connection


def _closed_by_peer(transport: asyncio.Transport | None) -> bool:
    """True if the server closed (or reset) this idle connection; False if open or unknown."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    # Nothing to read (no data, no end of stream, no reset pending) is the common case: one
    # select(2) (~0.5 us) tells it without the dup, socket object and close (~3.3 us).
    if not select.select((sock.fileno(),), (), (), 0)[0]:
        return False
    try:
        # asyncio's socket wrapper has no recv(): peek through a duplicate descriptor.
        with socket.socket(fileno=os.dup(sock.fileno())) as probe:
            data = probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False  # nothing to read: open
    except OSError:
        return True  # reset
    return not data  # end of stream: closed (bytes, e.g. a TLS record: leave it to aiohttp)


def _unreadable_body(response: aiohttp.ClientResponse, exc: aiohttp.ClientPayloadError) -> Outcome:
    """What went wrong reading an answer's body: undecodable, or cut short."""
    if isinstance(exc.__cause__, ContentEncodingError):
        encoding = " ".join(response.headers.get("Content-Encoding", "?").split())[:40]
        return Outcome(
            Verdict.RETRY, response.status, "5xx",
            f"could not decode the response body (Content-Encoding: {encoding})",
        )  # fmt: skip
    return Outcome(Verdict.RETRY, None, "network", "response body cut short")


def _network_error(exc: aiohttp.ClientError) -> str:
    """A one-line description of a transport failure (never includes request headers or the
    request URL, whose query may hold a token)."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientResponseError):  # an answer aiohttp could not parse
        message = " ".join(str(exc.message).split())[:160]
        return f"could not read the response: {message}" if message else "unreadable response"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"connection error: {exc.strerror or type(exc).__name__}"
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
