"""The feed: a run's manifest reader, on its own thread, handing entries to the event loop.

The reader thread parses the sources, asks the resume's :class:`~batchscribe.results.Settler`
about each id (an item the results file settles is never built), decides the rest
(:func:`~batchscribe.run.plan.decide`), and hands over, in order: the items to send, the bad
lines, and the skipped items as counts (:class:`~batchscribe.results.Skipped`, one per run of
skips, every :data:`~batchscribe.results.HAND_ON_EVERY` skips at most). Parsing and resume
look-ups so stay off the event loop, and a million skipped items cost the loop a few hundred
hand-offs (measured: 2-3 s of hand-off as one (entry, action) pair per item, ~0 as counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO, Generic, TypeVar

from batchscribe import manifest
from batchscribe.events import Event, InvalidLine, ItemsSkipped, Notice, Summary, TotalKnown
from batchscribe.ids import DigestSet, id_key
from batchscribe.manifest import Item, Problem
from batchscribe.pulse import PulseParams
from batchscribe.results import HAND_ON_EVERY, ResumeState, SeenIds, Settler, Skipped
from batchscribe.run.plan import SEND_ACTIONS, decide, reader_settles
from batchscribe.shard import Shard, ShardFilter

if TYPE_CHECKING:
    from batchscribe.run.stop import StopState

_T = TypeVar("_T")
READ_BATCH = 256  # manifest entries taken from the reader thread at a time

#: An entry handed to the event loop, with its action (``new``, ``retry``, ``changed``; a bad
#: line's is ``invalid``, a run of skips' ``skipped``).
Entry = tuple[Item | Problem | Skipped, str]


class Feed:
    """A run's manifest reader: :meth:`get_batch` the entries, :meth:`close` at the end.

    Args:
        loop: the run's event loop (the thread wakes it).
        sources: the manifest sources (checked already).
        resume: the results file's resume state.
        retry_failed, rescan_changed: the run's skip policy (see :func:`decide`).
        shard: this process's shard, if any.
        stdin: the stream for ``-``.
        params: the run's Pulse parameters (an item that does not fit them is a bad line).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sources: Sequence[str],
        resume: ResumeState,
        *,
        retry_failed: bool,
        rescan_changed: bool,
        shard: Shard | None = None,
        stdin: BinaryIO | None = None,
        params: PulseParams | None = None,
    ) -> None:
        # The duplicate-id check marks the ids the results file knows in the resume table
        # (which also lets the reader settle a run of them at once); only new ids take room.
        seen = resume.seen_ids() if len(resume) else DigestSet(key=id_key)
        settler = reader_settles(
            resume, shard, retry_failed=retry_failed, rescan_changed=rescan_changed,
            seen=seen if isinstance(seen, SeenIds) else None,
        )  # fmt: skip
        entries: Iterable[Item | Problem | Skipped] = manifest.iter_sources(
            sources, stdin=stdin, checked=True, seen=seen, defaults=params, settler=settler
        )
        self._shard_filter: ShardFilter | None = None
        if shard is not None:
            entries = self._shard_filter = ShardFilter(entries, shard)

        def classified() -> Iterator[Entry]:
            return classify(entries, settler, resume, retry_failed, rescan_changed)

        self._reader = _Reader(loop, classified)

    @property
    def hidden_problems(self) -> int:
        """Bad lines this shard met and left to shard 0 to report."""
        return 0 if self._shard_filter is None else self._shard_filter.hidden_problems

    async def get_batch(self, most: int = READ_BATCH) -> list[Entry]:
        """Up to ``most`` entries as soon as there is one; an empty list at the end.

        Raises :class:`~batchscribe.manifest.ManifestError` when a source fails mid-way (the
        entries read before it come first)."""
        return await self._reader.get_batch(most)

    def close(self) -> None:
        """Let the reader thread end (it may stay blocked on a silent pipe)."""
        self._reader.close()


async def produce(
    feed: Feed,
    queue: asyncio.Queue[Item | None],
    summary: Summary,
    stop: StopState,
    max_items: int | None,
    emit: Callable[[Event], None],
    *,
    workers: int,
) -> None:
    """Move ``feed``'s items into the run's ``queue`` (counting skips and bad lines in
    ``summary``) until the sources end or ``stop`` says so; then one None per worker.

    With ``max_items``, stops after queueing that many items, and marks the budget reached
    only if a further item was waiting to be sent.
    """
    total = queued = 0
    try:
        while not (stop.stopping or stop.capped):
            try:
                batch = await feed.get_batch()
            except manifest.ManifestError as exc:
                # A source became unreadable mid-way: say so, count it, keep what was read.
                summary.invalid_lines += 1
                emit(Notice("error", str(exc)))
                stop.sources_done = True
                break
            if not batch:
                stop.sources_done = True
                summary.total = total
                pending = total - summary.skipped_ok - summary.skipped_failed
                emit(TotalKnown(total, pending))
                if feed.hidden_problems:
                    emit(Notice("info", f"{feed.hidden_problems} bad manifest line(s) skipped; "
                                "shard 0 reports them"))  # fmt: skip
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
                    emit(InvalidLine(str(entry)))
                    continue
                assert isinstance(entry, Item)
                total += 1
                if max_items is not None and queued >= max_items:
                    summary.budget_reached = True
                    emit(Notice("info", f"--max-items {max_items} reached; work is left"))
                    return
                await queue.put(entry)
                queued += 1
                if stop.stopping or stop.capped:
                    stop.work_left = True
                    break
            if skipped:
                emit(ItemsSkipped(skipped))
    finally:
        feed.close()
        if not stop.stopping:
            for _ in range(workers):
                await queue.put(None)


def classify(
    entries: Iterable[Item | Problem | Skipped],
    settler: Settler | None,
    resume: ResumeState,
    retry_failed: bool,
    rescan_changed: bool,
) -> Iterator[Entry]:
    """The entries with their actions, on the reader thread. Items skipped (done, failed
    earlier) are handed on as counts, in order: before the next entry to send or report, and
    every :data:`HAND_ON_EVERY` skips. Most are counted by the ``settler`` before any item is
    built; the rest (items :func:`decide` skips) here."""
    skips = _Tally(settler)
    try:
        for entry in entries:
            if isinstance(entry, Skipped):  # the settler's hand-off, counted already
                skips.add(entry.done, entry.failed)
            elif isinstance(entry, Problem):
                yield from skips.hand_on()
                yield entry, "invalid"
                continue
            else:
                action = decide(
                    resume, entry, retry_failed=retry_failed, rescan_changed=rescan_changed
                )
                if action in SEND_ACTIONS:
                    yield from skips.hand_on()
                    yield entry, action
                    continue
                skips.add(action == "done", action != "done")
            if skips.total >= HAND_ON_EVERY:
                yield from skips.hand_on()
    except manifest.ManifestError:
        yield from skips.hand_on()  # what was read before the source failed
        raise
    yield from skips.hand_on()


class _Tally:
    """Skips counted on the reader thread, with those its settler holds."""

    __slots__ = ("done", "failed", "settler")

    def __init__(self, settler: Settler | None) -> None:
        self.settler = settler
        self.done = self.failed = 0

    @property
    def total(self) -> int:
        return self.done + self.failed

    def add(self, done: int, failed: int) -> None:
        self.done += done
        self.failed += failed

    def hand_on(self) -> Iterator[Entry]:
        """One :class:`Skipped` of every skip so far, if any (the count starts again)."""
        held = self.settler.take() if self.settler is not None else None
        if held is not None:
            self.add(held.done, held.failed)
        if self.done or self.failed:
            yield Skipped(self.done, self.failed), "skipped"
            self.done = self.failed = 0


class _Reader(Generic[_T]):
    """The blocking manifest reader in a daemon thread, handing entries to the event loop.

    The thread appends to a bounded deque and wakes the loop only when the loop is waiting, so
    a fast source costs a lock per entry and a slow one (a pipe that trickles) hands over each
    entry as it arrives. A daemon thread, because it may block for ever on a pipe (``-``):
    neither a stop nor the end of the process waits for it, whereas an executor is joined.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        produce: Callable[[], Iterator[_T]],
        capacity: int = 4 * READ_BATCH,
    ) -> None:
        self._loop = loop
        self._produce = produce
        self._capacity = capacity
        self._items: deque[_T] = deque()
        self._cond = threading.Condition()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._closed = False
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name="batchscribe-reader", daemon=True).start()

    def _run(self) -> None:
        try:
            for entry in self._produce():
                with self._cond:
                    while len(self._items) >= self._capacity and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    self._items.append(entry)
                    waiter, self._waiter = self._waiter, None
                if waiter is not None:
                    self._wake(waiter)
        except BaseException as exc:  # re-raised in the awaiting task
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                waiter, self._waiter = self._waiter, None
            if waiter is not None:
                self._wake(waiter)

    def _wake(self, waiter: asyncio.Future[None]) -> None:
        def wake() -> None:
            if not waiter.done():
                waiter.set_result(None)

        with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
            self._loop.call_soon_threadsafe(wake)

    async def get_batch(self, most: int) -> list[_T]:
        """Up to ``most`` entries as soon as there is one; an empty list at the end."""
        while True:
            with self._cond:
                if self._items:
                    items = self._items
                    batch = [items.popleft() for _ in range(min(most, len(items)))]
                    self._cond.notify()
                    return batch
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return []
                waiter: asyncio.Future[None] = self._loop.create_future()
                self._waiter = waiter
            await waiter

    def close(self) -> None:
        """Let the thread end at its next entry (it may stay blocked on a silent pipe)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
