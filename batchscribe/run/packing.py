"""The run's packing stage (``--pack``): short local clips with equal Pulse parameters sent
several to a request, and the answer split back into one record per clip.

The pure parts are :mod:`batchscribe.audio.pack` (grouping, joining, splitting); this module
is their seam with the engine: which items are packed, when a pack is sent, and what each
outcome means for its items.

* **Which**: a local file that passed the run's checks, would be sent as it is or prepared as
  one chunk (mixed, not longer than ``--max-chunk``), has a known duration from its headers
  under ``--pack-max-item``, and no ``webhook_url`` (an answer delivered elsewhere cannot be
  split). Its params, with ``word_timestamps`` forced on (the split needs word times), are the
  pack's key: only equal keys share a request. Everything else takes the normal path.
* **When**: items are added as the workers hand them over (streaming); a pack is sent when it
  is full, or when no item came for :data:`IDLE_S` of the run's clock, or when the feed ends.
  At most ``--concurrency`` packs are being built or sent at once (each is a request through
  admission, with retries): a worker handing over an item waits while that many are out, so
  the clips held in memory stay bounded.
* **Audio**: decoding and the FLAC are made in the audio stage's process pool (off the event
  loop), in a folder of its temp folder kept until the pack ends (a retry re-sends the file).
* **Outcomes**: OK: one record per item from :func:`~batchscribe.audio.pack.unpack`, each with
  ``packed: {request, offset, items}``. A 4xx refusal (the service would not take the audio;
  one clip may be the cause) splits the pack in two halves, each sent again, down to single
  items sent alone the normal way, so the good items succeed and a bad one fails with its own
  cause. Other failures fail every item with that outcome; an abort leaves them unrecorded.
  An answer without timed words (:class:`~batchscribe.audio.pack.Unsplittable`), a clip longer
  than its headers said (:class:`~batchscribe.audio.pack.TooLong`) or a pack of one item: those
  items are sent alone. A clip that cannot be decoded fails alone, without a request.
* **Stop**: items held or in a pack not answered are left unrecorded (``work_left``): the next
  run sends exactly them again (resume is per item).

Measured (one pool worker, this 2-core machine): decoding 25 clips of 20 s, joining them and
encoding the 8.7-minute FLAC (2.3 MB) takes 1.0 s from 16 kHz WAVs, 2.0 s from 44.1 kHz ones
(resampling): under the 2.4 s between two requests at 25 a minute, one worker keeps up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from batchscribe.errors import RunAborted, Stopped
from batchscribe.items import Item
from batchscribe.pulse import Outcome, PulseParams, Verdict
from batchscribe.run.work import Answer, RequestPlan

if TYPE_CHECKING:
    from batchscribe.audio.pack import Pack
    from batchscribe.audio.probe import PrepPolicy
    from batchscribe.clock import Clock
    from batchscribe.run.options import RunOptions
    from batchscribe.run.prep import Examined, PrepStage
    from batchscribe.run.stop import StopState
    from batchscribe.run.unattended import SpendGate

# batchscribe.audio.pack (numpy, PyAV) is imported when the stage is made: a run without
# --pack never loads it.

__all__ = ["IDLE_S", "PackFile", "PackStage", "build_pack", "pack_key"]

#: Seconds of the run's clock without a new packable item after which open packs are sent.
IDLE_S = 0.5

#: ``Engine._request``: one plan with retries (Stopped when a stop ends it unanswered).
Request = Callable[[RequestPlan, "asyncio.Task[Any]"], Awaitable[Answer]]
#: ``Engine._process``: one item the normal way (this stage lets it through).
Process = Callable[[Item, "asyncio.Task[Any]"], Awaitable[None]]
#: ``Engine._record_answer``: write an item's record from its answer (``packed``: the field).
Record = Callable[..., Awaitable[None]]


def pack_key(params: PulseParams, policy: PrepPolicy) -> PulseParams | None:
    """The key an item with these params is packed under (its params with word times on:
    the split needs them), or None when it is never packed: a webhook (its answer goes
    elsewhere, nothing to split) or ``--channels split`` (its channels are sent apart). The
    run's rule, and the dry run's."""
    if params.webhook_url is not None or policy.channels == "split":
        return None
    return dataclasses.replace(params, word_timestamps=True)


@dataclass(frozen=True)
class PackFile:
    """A pack's audio as a pool worker made it (picklable).

    Args:
        path: the FLAC file ("" when no clip could be packed).
        size: its bytes.
        packed: indexes (into the paths given) of the clips in it, in order.
        spans: per packed clip, its first and one-past-last sample in the audio.
        durations: per packed clip, its seconds.
        refused: per clip that cannot be decoded, why (it fails alone, without a request).
        alone: clips that cannot be packed after all (longer than their headers said, or
            unreadable for a reason its own request tells better): sent alone.
    """

    path: str
    size: int
    packed: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    durations: tuple[float, ...]
    refused: dict[int, Outcome] = field(default_factory=dict)
    alone: tuple[int, ...] = ()


def build_pack(paths: Sequence[str], max_seconds: float, gap_s: float, folder: str) -> PackFile:
    """Decode each clip (16 kHz mono), join them with ``gap_s`` of silence and write one FLAC
    into ``folder`` (blocking: a pool worker's job)."""
    import os

    from batchscribe.audio.pack import RATE, TooLong, encode_flac, load_pcm, pack
    from batchscribe.audio.probe import Unreadable

    clips, packed, alone = [], [], []
    refused: dict[int, Outcome] = {}
    for index, path in enumerate(paths):
        try:
            clips.append(load_pcm(path, max_seconds=max_seconds))
            packed.append(index)
        except Unreadable as exc:
            refused[index] = exc.outcome
        except (TooLong, OSError):
            alone.append(index)
    if not clips:
        return PackFile("", 0, (), (), (), refused, tuple(alone))
    joined = pack(clips, gap_s=gap_s)
    target = os.path.join(folder, "pack.flac")
    size = encode_flac(joined.pcm, target)
    durations = tuple(clip.size / RATE for clip in clips)
    return PackFile(target, size, tuple(packed), joined.spans, durations, refused, tuple(alone))


@dataclass(slots=True)
class _Held:
    """An item handed to the stage: the item, its record so far, its params and seconds."""

    item: Item
    record: dict[str, Any]
    params: PulseParams
    seconds: float


class PackStage:
    """The packing stage of one run: :meth:`take` offers an item, :meth:`drain` sends what is
    left once the workers are done, :meth:`cancel` ends it on a hard stop.

    Args:
        options: the run's (``pack_max_item``, ``pack_seconds``, ``concurrency``).
        prep: the audio stage (its process pool and temp folder).
        stop: the run's stop state.
        spend: the spend cap, if any (an item's hold lasts until its record).
        clock: the run's clock.
        run_id: names packs whose answer has no request id.
        request, process, record, abort: the engine's steps (see the aliases above).
    """

    def __init__(
        self,
        options: RunOptions,
        *,
        prep: PrepStage,
        stop: StopState,
        spend: SpendGate | None,
        clock: Clock,
        run_id: str,
        request: Request,
        process: Process,
        record: Record,
        abort: Callable[[RunAborted], None],
    ) -> None:
        from batchscribe.audio.pack import GAP_S, Packer

        self.packer = Packer(
            pack_seconds=options.pack_seconds, max_item=options.pack_max_item, gap_s=GAP_S
        )
        self.gap_s = GAP_S
        self.policy = options.prep_policy
        self.prep, self.stop, self.spend, self.clock = prep, stop, spend, clock
        self._request, self._process, self._record, self._abort = request, process, record, abort
        self._run_id = run_id
        self._numbers = itertools.count(1)
        self._held: dict[str, _Held] = {}  # handed over, no record yet
        self._alone: set[str] = set()  # to let through to the normal path
        # Packs being made or sent: one more than the requests that may be in flight, so one
        # is encoded while the others are answered. Packs waiting for a slot hold only ids;
        # past twice that many, a worker handing over an item waits (the feed with it).
        self._slots = asyncio.Semaphore(options.concurrency + 1)
        self._most = 2 * (options.concurrency + 1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None  # a pack task's bug, raised by drain
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._last = 0.0
        self._blocked = 0  # workers waiting for room: the feed is held up, not quiet

    def __repr__(self) -> str:
        return f"<PackStage held={len(self._held)} sending={len(self._tasks)} {self.packer!r}>"

    # ------------------------------------------------------------------------- taking items
    async def take(
        self, item: Item, params: PulseParams, record: dict[str, Any], examined: Examined
    ) -> bool:
        """Hold ``item`` for a pack (True: its record comes with the pack's answer), or say
        it takes the normal path (False)."""
        if item.id in self._alone:
            self._alone.discard(item.id)
            return False
        key = pack_key(params, self.policy)
        if key is None:
            return False
        seconds = await self._seconds(item, examined.body, record.get("size", 0))
        if not self.packer.takes(seconds) or seconds is None or seconds > self.policy.max_chunk:
            return False
        await self._room()
        self._held[item.id] = _Held(item, record, params, seconds)
        if self.spend is not None:
            self.spend.hand_over(item.id)
        self._last = self.clock.now()
        for full in self.packer.add(item.id, key, seconds):
            self._launch(full)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_when_idle())
        self._wake.set()
        return True

    async def _seconds(self, item: Item, body: bytes | None, size: int) -> float | None:
        """The item's duration from its headers (its first bytes when read, else the file)."""
        from batchscribe.audio import audio_duration, head_duration

        if body is not None:
            seconds = head_duration(body, size)
            if seconds is not None:
                return seconds
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, audio_duration, item.source)

    async def _room(self) -> None:
        """Wait while too many packs are out (the clips they hold stay bounded)."""
        self._blocked += 1
        try:
            while len(self._tasks) >= self._most:
                await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._blocked -= 1
            self._last = self.clock.now()  # (quiet from now on, if no item follows)

    async def _flush_when_idle(self) -> None:
        """Send the open packs once no item came for :data:`IDLE_S` (time a worker spent
        waiting for room is not quiet: its item is coming)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.packer.pending and not self.stop.stopping:
                due = self._last + IDLE_S - self.clock.now()
                if due > 0 or self._blocked:
                    await self.clock.sleep(max(due, IDLE_S / 5))
                    continue
                for pack in self.packer.flush():
                    self._launch(pack)

    def _launch(self, pack: Pack) -> None:
        """Send a pack in its own task (which waits for a slot first)."""
        held = [self._held[member.id] for member in pack.items]
        assert isinstance(pack.key, PulseParams)  # (take's key)
        task = asyncio.create_task(self._send(held, pack.key))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()

    # ------------------------------------------------------------------------- ending
    async def drain(self) -> None:
        """The feed is done and the workers with it: send the open packs now (unless
        stopping) and wait for every pack to end."""
        if self._flusher is not None:
            self._flusher.cancel()
        for pack in self.packer.flush():
            self._launch(pack)  # (a stop: its task drops them)
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """A hard stop: end every pack now (their unanswered items are left for a rerun)."""
        if self._flusher is not None:
            self._flusher.cancel()
        for task in self._tasks:
            task.cancel()
        if self._held:
            self.stop.work_left = True

    def _drop(self, held: Sequence[_Held]) -> None:
        """These items end without a record (a stop or an abort): a rerun sends them."""
        for entry in held:
            if self._held.pop(entry.item.id, None) is not None:
                self.stop.work_left = True
                if self.spend is not None:
                    self.spend.release(entry.item.id)

    # ------------------------------------------------------------------------- sending
    async def _send(self, held: list[_Held], params: PulseParams) -> None:
        """One pack's task: a slot, its audio made, sent, its items' records written."""
        try:
            async with self._slots:
                if not self.stop.stopping:
                    await self._send_items(held, params)
        finally:
            self._drop(held)  # (those still held were not answered: a stop)

    async def _send_items(self, held: list[_Held], params: PulseParams) -> None:
        if len(held) == 1:
            return await self._send_alone(held)
        made = await self._build(held)
        if made is None:
            return await self._send_alone(held)
        built, folder = made
        try:
            for index, outcome in built.refused.items():
                await self._finish(held[index], Answer(outcome, 0, 0.0))
            members = [held[index] for index in built.packed]
            await self._send_alone([held[index] for index in built.alone])
            if len(members) == 1:
                return await self._send_alone(members)
            if not members or self.stop.stopping:
                return
            await self._send_pack(members, params, built)
        finally:
            self.prep.release(folder)

    async def _build(self, held: list[_Held]) -> tuple[PackFile, str] | None:
        """The pack's FLAC made in the pool, and its folder; None when the pool broke on it
        (a decoder crashed: each item then goes alone, and the culprit fails alone)."""
        from concurrent.futures.process import BrokenProcessPool

        paths = [entry.item.source for entry in held]
        work = partial(build_pack, paths, self.packer.max_item, self.gap_s)
        try:
            return await self.prep.call(work)
        except BrokenProcessPool:
            self.prep.reset()
            return None
        except OSError as exc:
            self._abort(RunAborted(f"cannot pack audio in the temp folder: {exc.strerror or exc}"))
            raise Stopped from None

    async def _send_pack(self, members: list[_Held], params: PulseParams, built: PackFile) -> None:
        """Send the packed audio (through admission, with retries) and act on its answer."""
        from batchscribe.audio.pack import RATE, Unsplittable, unpack
        from batchscribe.audio.prepare import Chunk

        chunk = Chunk(0, None, 0, built.spans[-1][1], RATE, None, None, built.path, "audio/flac",
                      built.size)  # fmt: skip
        plan = RequestPlan(members[0].item, params, built.size, chunk)
        task = asyncio.current_task()
        assert task is not None
        try:
            answer = await self._request(plan, task)
        except Stopped:
            return  # (unrecorded: dropped)
        outcome = answer.outcome
        if outcome.verdict is Verdict.ABORT:
            return
        if outcome.verdict is not Verdict.OK:
            status = outcome.http_status or 0
            if 400 <= status < 500 and outcome.cause != "language":
                # Refused for what it holds: one clip may be the cause. Halves, sent again.
                middle = len(members) // 2
                halves = (members[:middle], members[middle:])
                await asyncio.gather(*(self._send_items(h, params) for h in halves))
                return
        request = outcome.request_id or f"{self._run_id}-pack{next(self._numbers)}"
        payloads: list[dict[str, Any] | None] = [None] * len(members)
        if outcome.verdict is Verdict.OK:
            try:
                answered = outcome.payload or {}
                payloads = list(unpack(answered, built.spans, durations=built.durations))
            except Unsplittable:
                return await self._send_alone(members)
        for number, entry in enumerate(members):
            payload = payloads[number]
            offset = round(built.spans[number][0] / RATE, 6)
            if payload is not None:
                offset = payload.pop("packed", {}).get("offset", offset)
                if not entry.params.word_timestamps:
                    payload.pop("words", None)  # asked only for the split: as if sent alone
                own = dataclasses.replace(outcome, payload=payload)
            else:
                own = outcome
            packed = {"request": request, "offset": offset, "items": len(members)}
            await self._finish(entry, Answer(own, answer.attempts, answer.elapsed), packed)

    async def _send_alone(self, held: Sequence[_Held]) -> None:
        """These items the normal way, one after the other (this stage lets them through)."""
        task = asyncio.current_task()
        assert task is not None
        for entry in held:
            if self.stop.stopping:
                return
            item_id = entry.item.id
            self._alone.add(item_id)
            try:
                await self._process(entry.item, task)
            finally:
                self._alone.discard(item_id)
                if self._held.pop(item_id, None) is not None and self.spend is not None:
                    self.spend.release(item_id)  # (a no-op once its record is written)

    async def _finish(
        self, entry: _Held, answer: Answer, packed: dict[str, Any] | None = None
    ) -> None:
        """Write one item's record from its share of the pack's answer."""
        self._held.pop(entry.item.id, None)
        await self._record(entry.item, entry.record, answer, packed=packed)
