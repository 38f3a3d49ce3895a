"""What a run does for nobody watching it: the spend cap per item (:class:`SpendGate`), and the
status and metrics files it keeps up to date (:class:`Watch`).

The pure parts live elsewhere (:mod:`batchscribe.spend`, :mod:`batchscribe.status`,
:mod:`batchscribe.metrics`); this module is their seam with the engine: which item holds
which seconds, when a file is rewritten, and from which thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from batchscribe.clock import Clock
from batchscribe.console import Redactor
from batchscribe.events import Summary
from batchscribe.items import LOCAL_FILE, Item
from batchscribe.pulse import url_secrets
from batchscribe.run.options import RunOptions
from batchscribe.spend import SpendCap, default_price
from batchscribe.status import StatusWriter

if TYPE_CHECKING:
    from batchscribe.metrics import Snapshot

__all__ = [
    "METRICS_INTERVAL", "STATUS_INTERVAL", "SpendGate", "Watch", "job_name", "price", "snapshot",
]  # fmt: skip

#: Seconds between rewrites of the status file (``batchscribe status`` shows its age).
STATUS_INTERVAL = 2.0
#: Seconds between rewrites of ``--metrics-file`` (node_exporter scrapes every 15-60 s).
METRICS_INTERVAL = 30.0


def price(options: RunOptions) -> float:
    """The price of one audio hour: ``--price-per-hour``, else the model's (ConfigError)."""
    if options.price_per_hour is not None:
        return options.price_per_hour
    return default_price(options.params.model)


def job_name(options: RunOptions) -> str:
    """``--job-name``, else the results file's name without its extension."""
    if options.job_name:
        return options.job_name
    name = os.path.basename(options.out)
    return os.path.splitext(name)[0] or name


def snapshot(
    summary: Summary, elapsed: float, in_flight: int = 0, finished: bool = False
) -> Snapshot:
    """The metrics' snapshot of a run from its summary (a copy, or a finished run's own)."""
    from batchscribe.metrics import Snapshot

    return Snapshot(
        summary, elapsed=elapsed, in_flight=in_flight,
        requests_by_status=summary.requests_by_status, bytes_uploaded=summary.bytes_uploaded,
        last_success=summary.last_success_at, cost=summary.cost, finished=finished,
    )  # fmt: skip


def _item_seconds(item: Item) -> float | None:
    """A local file's duration from its header (blocking); None when unknown (a URL, an
    object: the service measures it)."""
    if item.kind is not LOCAL_FILE:
        return None
    from batchscribe.audio import audio_duration

    return audio_duration(item.source)


class SpendGate:
    """The run's :class:`~batchscribe.spend.SpendCap`, per item: :meth:`admit` before an item
    is processed, :meth:`finished` when its record is written, :meth:`release` after (frees
    what an item that wrote no record, or a failed one, held)."""

    def __init__(self, cap: SpendCap) -> None:
        self.cap = cap
        self._held: dict[str, float] = {}
        self._handed: set[str] = set()  # held past process(): a pack writes their records

    @classmethod
    def of(cls, options: RunOptions) -> SpendGate | None:
        """The gate of ``options``' caps, or None without a cap."""
        if options.max_cost is None and options.max_audio_hours is None:
            return None
        cap = SpendCap(
            max_cost=options.max_cost, price_per_hour=price(options),
            max_audio_hours=options.max_audio_hours,
        )  # fmt: skip
        return cls(cap)

    async def admit(self, item: Item) -> bool:
        """Hold the item's audio; False: the cap is reached (stop taking items)."""
        if self.cap.reached:
            return False  # (final: no header to read)
        seconds = await asyncio.get_running_loop().run_in_executor(None, _item_seconds, item)
        held = self.cap.admit(seconds)
        if held is None:
            return False
        self._held[item.id] = held
        return True

    async def process(
        self, item: Item, send: Callable[[], Awaitable[None]], refused: Callable[[], None]
    ) -> None:
        """``send()`` the item if the cap admits it, else ``refused()``."""
        if not await self.admit(item):
            return refused()
        try:
            await send()
        finally:
            if item.id in self._handed:
                self._handed.discard(item.id)
            else:
                self.release(item.id)  # (still held only if it wrote no record)

    def hand_over(self, item_id: str) -> None:
        """The item's record is written later, by another task (a pack): its hold outlives
        :meth:`process`, until :meth:`finished` or :meth:`release`."""
        self._handed.add(item_id)

    def finished(self, item_id: str, status: str, seconds: float) -> None:
        """The item's record is written: an answered item spent its audio (its own duration,
        else what it held); a failed one is not billed."""
        held = self._held.pop(item_id, None)
        if held is None:
            return
        if status == "failed":
            self.cap.release(held)
        else:
            self.cap.settle(held, seconds or held)

    def release(self, item_id: str) -> None:
        """The item ended without a record (a stop): it was not answered."""
        held = self._held.pop(item_id, None)
        if held is not None:
            self.cap.release(held)

    def message(self) -> str:
        """The notice of a refusal."""
        cap = self.cap
        held = (cap.spent + cap.reserved) / 3600
        limit = (cap.limit or 0.0) / 3600
        return (
            f"spend cap reached ({held:.3f} audio hours answered or in flight, cap {limit:.3f} "
            "h): reading no more items; those admitted are sent (exit 4: run again to continue)"
        )


class Watch:
    """The status file (every :data:`STATUS_INTERVAL` s) and ``--metrics-file`` (every
    :data:`METRICS_INTERVAL` s) of a run, each rewritten from a thread with a snapshot taken on
    the event loop, and once more at the end. A write that fails is a warning (once per
    file), never a failure of the run."""

    def __init__(
        self,
        options: RunOptions,
        summary: Summary,
        clock: Clock,
        in_flight: Callable[[], int],
        warn: Callable[[str], None],
    ) -> None:
        self.options = options
        self.summary = summary
        self.clock = clock
        self._in_flight = in_flight
        self._warn = warn
        self._started = clock.now()
        self._status: StatusWriter | None = None
        self._warned: set[str] = set()
        self._pending: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.job = job_name(options)
        self.shard = str(options.shard) if options.shard is not None else ""

    def opened(self) -> None:
        """The run holds the results file's lock: its status file may be written."""
        options = self.options
        self._started = self.clock.now()
        self._loop = asyncio.get_running_loop()
        if options.status_file:
            redact = Redactor([options.api_key, *url_secrets(options.endpoint)])
            self._status = StatusWriter(
                options.out, command=options.command, redact=redact, job=self.job,
                shard=self.shard,
            )  # fmt: skip

    def _copy(self) -> tuple[Summary, float, int]:
        """The summary (copied: the run goes on changing it), elapsed seconds and requests in
        flight, taken on the event loop for a writing thread."""
        s = self.summary
        copy = dataclasses.replace(
            s, failed_by_cause=Counter(s.failed_by_cause),
            requests_by_status=Counter(s.requests_by_status),
        )  # fmt: skip
        return copy, self.clock.now() - self._started, self._in_flight()

    async def loop(self) -> None:
        """Rewrite the files until cancelled (the first status at once)."""
        if self._status is None and self.options.metrics_file is None:
            return
        metrics_due = self.clock.now() + METRICS_INTERVAL
        while True:
            metrics = self.clock.now() >= metrics_due
            if metrics:
                metrics_due += METRICS_INTERVAL
            await self._write(metrics=metrics, finished=False)
            await self.clock.sleep(STATUS_INTERVAL)

    async def finish(self) -> None:
        """The last write of both files (the run's counts are final)."""
        if self._pending is not None:  # a write a cancelled loop left running: let it land first
            with contextlib.suppress(Exception):
                await asyncio.wait([self._pending])
        await self._write(metrics=True, finished=True)

    async def _write(self, *, metrics: bool, finished: bool) -> None:
        taken = self._copy()
        task = asyncio.ensure_future(
            asyncio.to_thread(self._write_files, *taken, metrics=metrics, finished=finished)
        )
        self._pending = task
        await asyncio.shield(task)

    def _write_files(
        self, summary: Summary, elapsed: float, in_flight: int, *, metrics: bool, finished: bool
    ) -> None:
        """In a thread: the status file, and the metrics file when ``metrics``."""
        if self._status is not None:
            try:
                self._status.write(
                    summary, elapsed=elapsed, in_flight=in_flight, finished=finished,
                    cost=summary.cost,
                )  # fmt: skip
            except OSError as exc:
                self._failed(self._status.path, exc)
        path = self.options.metrics_file
        if metrics and path is not None:
            # (prometheus-client is imported here: a run without --metrics-file never loads it)
            from batchscribe.metrics import write_textfile

            try:
                write_textfile(path, snapshot(summary, elapsed, in_flight, finished), self.job,
                               self.shard)  # fmt: skip
            except OSError as exc:
                self._failed(path, exc)

    def _failed(self, path: str, exc: OSError) -> None:
        if path not in self._warned:
            self._warned.add(path)
            reason = exc.strerror or type(exc).__name__
            message = f"{path}: cannot write ({reason}); the run goes on without it"
            if self._loop is not None:  # (from the writing thread: the bus is the loop's)
                self._loop.call_soon_threadsafe(self._warn, message)
