"""The run's audio stage for local files: probe, decide, and prepare in a process pool.

:class:`PrepStage` is made with the run and costs nothing until an item needs preparing: the
process pool (``--prep-workers``, default the CPU count) and the run's temp folder are made
then. Each prepared item gets its own folder inside it; its chunk files stay until the item
ends (a retry re-sends the same file, never re-encodes) and the run's folder goes at the end,
also on errors and signals (:meth:`PrepStage.close`).

The pool uses the ``forkserver`` start method (``spawn`` where there is none): forking a
process that runs an event loop and threads could copy a lock held by another thread. Workers
ignore SIGINT/SIGHUP (a Ctrl-C reaches the whole process group): the run decides how to stop,
and ends them itself. Preparation runs before the item's requests ask for admission, so no
slot or rate token is held while a file is encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchscribe.audio.prepare import Prepared
    from batchscribe.audio.probe import PrepPolicy

__all__ = ["PrepStage"]


def _quiet_worker() -> None:
    """A pool worker's start: signals meant for the run do not end it mid-file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


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

    async def prepare(self, path: str) -> tuple[Prepared, str]:
        """Prepare ``path`` in the pool: its chunks and the folder they are in (to
        :meth:`release` when the item ends). Raises what preparation raises (Unreadable)."""
        if self._root is None:
            self._root = tempfile.mkdtemp(prefix="batchscribe-prep-")
        if self._pool is None:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context(
                "forkserver" if "forkserver" in methods else "spawn"
            )
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_quiet_worker
            )
        self._count += 1
        folder = os.path.join(self._root, str(self._count))
        os.mkdir(folder)
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(self._pool, _prepare, path, self.policy, folder)
        except BaseException:
            self.release(folder)
            raise
        return prepared, folder

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
