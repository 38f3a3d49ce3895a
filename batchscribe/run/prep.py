"""The run's audio stage for local files (and the downloaded copies of URLs and cloud objects:
:mod:`batchscribe.run.fetch`): probe and decide (:func:`examine`), prepare in a
process pool (:class:`PrepStage`), and send a recording's chunks keeping their answers for a
rerun (:class:`ChunkAnswers`).

:func:`examine` costs a short clip sent as is almost nothing: a file of at most one upload chunk
is read whole (as its request would read it) and a plain WAV is probed from those bytes, which
its first request then sends (13 us a clip against 18 us for a second open, measured).

:class:`PrepStage` is made with the run and costs nothing until an item needs preparing: the
process pool (``--prep-workers``, default the CPU count) and the run's temp folder are made
then. Each prepared item gets its own folder inside it; its chunk files stay until the item
ends (a retry re-sends the same file, never re-encodes) and the run's folder goes at the end,
also on errors and signals (:meth:`PrepStage.close`).

The pool's workers are spawned (a fresh interpreter each, made once per run): forking a
process that runs an event loop and threads could copy a lock held by another thread, and a
forkserver outlives the run while its children live (they hold its "alive" pipe), so they
could not tell the run is gone. Workers ignore SIGINT/SIGHUP (a Ctrl-C reaches the whole
process group): the run decides how to stop, and ends them itself; a run killed outright
(SIGKILL) is noticed by its workers (they are adopted: their parent id changes), which delete
its temp folder and exit. Preparation runs before the item's requests ask for admission, so no
slot or rate token is held while a file is encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from batchscribe.audio.probe import (
    Decision,
    PrepPolicy,
    Probe,
    Unreadable,
    decide,
    probe,
    probe_head,
    wav_as_is,
)
from batchscribe.errors import ItemError, RunAborted, Stopped
from batchscribe.items import Item
from batchscribe.pulse import Outcome, Verdict
from batchscribe.results.parts import PartsFile, part_key, parts_path
from batchscribe.run.send import UPLOAD_CHUNK
from batchscribe.run.work import Answer, RequestPlan

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from batchscribe.audio.prepare import Prepared
    from batchscribe.run.send import Sender

T = TypeVar("T")

# multiprocessing and the process pool are imported when a file first needs preparing: a run
# of clips sent as they are never loads them (~4 ms of start-up).

__all__ = ["ChunkAnswers", "Examined", "PrepStage", "examine", "examine_head", "examine_inline"]


@dataclass(slots=True)
class Examined:
    """What to do with a local file: ``unfit`` (fail it with this, no request), else prepare
    it (``prepare``) or send it as is, with ``body`` (its bytes, when read for the probe)."""

    body: bytes | None = None
    prepare: bool = False
    unfit: Outcome | None = None


def examine_inline(sender: Sender, path: str, size: int, policy: PrepPolicy) -> Examined | None:
    """:func:`examine` without leaving the event loop, for the common case: a small plain WAV
    read while reads are quick (9 us a clip, measured; each await it saves costs ~0.7 us).
    None when it cannot tell so: then :func:`examine`."""
    try:
        body = sender.read_inline(path, size)
    except (ItemError, OSError):
        return Examined()  # its request's own read says what went wrong
    if body is None:
        return None
    if wav_as_is(body, size, policy):
        return Examined(body)
    found = probe_head(body, size)
    return None if found is None else _decided(decide(found, policy), body)


def _decided(decision: Decision, body: bytes | None) -> Examined:
    if decision.as_is:
        return Examined(body)
    if decision.refuse is not None:
        return Examined(unfit=Outcome(Verdict.FAIL, None, "invalid", decision.refuse))
    return Examined(prepare=True)


def examine_head(head: bytes, size: int, policy: PrepPolicy) -> Examined | None:
    """:func:`examine` for audio not on this disk (a cloud object) from its first bytes and its
    size: sent as is (streamed from where it is) or refused; None when they cannot tell so (not
    a plain WAV, or one to prepare): then it is downloaded and its copy examined."""
    found = probe_head(head, size)
    if found is None:
        return None
    examined = _decided(decide(found, policy), None)
    return None if examined.prepare else examined


async def examine(sender: Sender, path: str, size: int, policy: PrepPolicy) -> Examined:
    """Probe the file at ``path`` (``size`` bytes) and decide what its run does with it."""
    body: bytes | None = None
    found: Probe | None = None
    try:
        if size <= UPLOAD_CHUNK:
            try:
                body = await sender.read_small(path, size)
            except (ItemError, OSError):
                return Examined()  # its request's own read says what went wrong
            found = probe_head(body, size)
        if found is None:  # not a plain WAV: PyAV (0.1-4 ms) off the event loop
            found = await asyncio.get_running_loop().run_in_executor(None, probe, path)
    except Unreadable as exc:
        return Examined(unfit=exc.outcome)
    return _decided(decide(found, policy), body)


_PREFIX = "batchscribe-prep-"


def _host_tag() -> str:
    """This host's name as a file name's part (a shared /tmp may serve several hosts)."""
    import socket

    name = "".join(c if c.isalnum() or c in ".-" else "_" for c in socket.gethostname())
    return name or "host"


def make_root() -> str:
    """The run's temp folder, named for this host and process (``batchscribe-prep-HOST-PID-*``),
    after deleting those of this host's runs that are gone (:func:`sweep_stale`)."""
    sweep_stale()
    return tempfile.mkdtemp(prefix=f"{_PREFIX}{_host_tag()}-{os.getpid()}-")


def sweep_stale(folder: str | None = None) -> list[str]:
    """Delete the temp folders of this host's runs whose process is gone; their paths.

    A run killed with SIGKILL leaves its folder to its pool workers, which delete it; one
    killed before it had any (a download in progress, say) left it behind until now. Only
    this host's folders are looked at (process ids mean nothing across hosts), and a process
    that exists (whoever owns it) keeps its folder.
    """
    folder = folder or tempfile.gettempdir()
    mine = f"{_PREFIX}{_host_tag()}-"
    swept: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return swept
    for name in names:
        pid_text = name[len(mine) :].split("-", 1)[0] if name.startswith(mine) else ""
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            path = os.path.join(folder, name)
            shutil.rmtree(path, ignore_errors=True)
            swept.append(path)
        except OSError:
            continue  # alive (another user's process), or the pid cannot be asked about
    return swept


def _start_worker(root: str) -> None:
    """A pool worker's start: signals meant for the run do not end it mid-file, and it ends
    (deleting the run's temp folder) soon after the run's process is gone: a run killed with
    SIGKILL must not leave workers encoding, holding its terminal's pipes, or files behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(os.getppid(), root), daemon=True).start()


def _watch_parent(parent: int, root: str) -> None:
    """End this worker once its parent (the run) is gone: it is then adopted, and its parent
    id changes (at the run's death, before anyone reaps it)."""
    while os.getppid() == parent:
        time.sleep(_WATCH_S)
    shutil.rmtree(root, ignore_errors=True)
    os._exit(1)


_WATCH_S = 0.25  # seconds between a worker's checks that the run is still there


def _prepare(path: str, policy: PrepPolicy, workdir: str) -> Prepared:
    """In a worker: :func:`batchscribe.audio.prepare.prepare` into ``workdir``."""
    from batchscribe.audio.prepare import prepare

    return prepare(path, policy, workdir)


class PrepStage:
    """The process pool and temp folder of one run's preparation (made on first use)."""

    def __init__(self, policy: PrepPolicy, workers: int | None) -> None:
        self.policy = policy
        self.workers = workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None
        self._root: str | None = None
        self._count = 0

    @property
    def started(self) -> bool:
        """Whether the pool was made (some item was prepared)."""
        return self._pool is not None

    async def prepare(self, path: str) -> tuple[Prepared, str] | Outcome:
        """Prepare ``path`` in the pool: its chunks and the folder they are in (to
        :meth:`release` when the item ends), or why the item fails (unreadable; a decoder
        that crashed its process). RunAborted when the temp folder cannot be written."""
        from concurrent.futures.process import BrokenProcessPool

        try:
            return await self._prepare(path)
        except Unreadable as exc:
            return exc.outcome
        except BrokenProcessPool:
            self.reset()
            problem = "preparation failed: the decoder's process died on this file"
            return Outcome(Verdict.FAIL, None, "invalid", problem)
        except OSError as exc:
            raise RunAborted(
                f"cannot prepare audio in the temp folder: {exc.strerror or exc}"
            ) from None

    def folder(self) -> str:
        """A new folder in the run's temp folder (made on first use) for one item's files, to
        :meth:`release` when the item ends. Raises OSError when it cannot be made."""
        if self._root is None:
            self._root = make_root()
        self._count += 1
        folder = os.path.join(self._root, str(self._count))
        os.mkdir(folder)
        return folder

    async def _prepare(self, path: str) -> tuple[Prepared, str]:
        return await self.call(partial(_prepare, path, self.policy))

    async def call(self, work: Callable[[str], T]) -> tuple[T, str]:
        """``work(folder)`` in the pool (picklable, e.g. a partial of a module function),
        ``folder`` a new one in the run's temp folder: its result and the folder (to
        :meth:`release` when the item ends). Raises what ``work`` raises, BrokenProcessPool,
        OSError."""
        folder = self.folder()
        root = os.path.dirname(folder)
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_start_worker,
                initargs=(root,),
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        try:
            done = await loop.run_in_executor(self._pool, work, folder)
        except BaseException:
            self.release(folder)
            raise
        return done, folder

    def reset(self) -> None:
        """Drop a broken pool (a worker died): the next item makes a new one."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def release(self, folder: str) -> None:
        """Delete an item's chunk files (its item has ended)."""
        shutil.rmtree(folder, ignore_errors=True)

    def close(self, *, stopping: bool) -> None:
        """End the pool (``stopping``: at once, ending work in progress) and delete the temp
        folder."""
        pool, self._pool = self._pool, None
        if pool is not None:
            if stopping:
                _terminate(pool)
            pool.shutdown(wait=True, cancel_futures=True)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None


def _terminate(pool: ProcessPoolExecutor) -> None:
    """End the pool's workers now (a stop must not wait for an hour-long file to encode)."""
    # (ProcessPoolExecutor gains terminate_workers() in Python 3.14; before, its processes.)
    processes = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()


#: ``Engine._request``: send one plan with retries (the task a stop may cancel while it waits).
Request = Callable[[RequestPlan, "asyncio.Task[Any]"], Awaitable[Answer]]


class ChunkAnswers:
    """The chunks of recordings sent in several requests: what a past run kept
    (:mod:`batchscribe.results.parts`), what is still to send (in parallel, each its own task
    through admission), and every OK answer kept as it comes."""

    def __init__(self, out: str, policy: PrepPolicy, secrets: Sequence[str | None]) -> None:
        self.policy = policy
        self.parts = PartsFile(parts_path(out), secrets=secrets)

    async def gather(
        self,
        item: Item,
        record: dict[str, Any],
        prepared: Prepared,
        plans: list[RequestPlan],
        request: Request,
        abort: Callable[[RunAborted], None],
    ) -> list[Answer] | None:
        """Every chunk's answer, in plan order; None when a stop or an abort left some
        unanswered (the chunks answered are kept for the next run; a single chunk is not)."""
        parts: PartsFile | None = None
        key = ""
        kept: dict[int, dict[str, Any]] = {}
        if len(plans) > 1:
            parts = self.parts
            try:
                parts.open()
            except RunAborted as exc:
                abort(exc)
                return None
            # (a downloaded copy's version is its source's fingerprint: run.fetch)
            version = item.version if item.version is not None else record.get("mtime", 0.0)
            key = part_key(item.id, record.get("size", 0), version, self.policy, prepared)
            kept = parts.answers(key)
        answers: list[Answer | None] = [None] * len(plans)
        for index, chunk in enumerate(prepared.chunks):
            if chunk.index in kept:
                answers[index] = Answer(
                    Outcome(Verdict.OK, 200, "ok", None, kept[chunk.index]), 0, 0.0
                )

        async def send(plan: RequestPlan) -> Answer | None:
            task = asyncio.current_task()
            assert task is not None and plan.chunk is not None
            try:
                answer = await request(plan, task)
            except Stopped:
                return None
            outcome = answer.outcome
            if parts is not None and outcome.verdict is Verdict.OK and outcome.payload is not None:
                try:
                    parts.append(key, item.id, plan.chunk.index, outcome.payload)
                except RunAborted as exc:
                    abort(exc)
            return answer

        missing = [index for index, answer in enumerate(answers) if answer is None]
        results = await asyncio.gather(
            *(send(plans[index]) for index in missing), return_exceptions=True
        )
        if parts is not None:
            parts.forget(key)
        for index, result in zip(missing, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
            if not isinstance(result, Answer) or result.outcome.verdict is Verdict.ABORT:
                return None
            answers[index] = result
        return [answer for answer in answers if answer is not None]

    def sync(self) -> None:
        """fsync what was kept since the last sync (the results file's schedule)."""
        self.parts.sync()

    def close(self) -> None:
        """Sync and close the sidecar."""
        self.parts.close()
