"""The state of a run's stop (a signal, ``--max-runtime``, a spend cap, an abort): one small
object every read and write of the stop goes through (the engine's; tests read it), the exit
code it leads to, and the signals that start one."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchscribe.errors import (
    EXIT_ABORTED,
    EXIT_BUDGET,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    RunAborted,
)

if TYPE_CHECKING:
    from batchscribe.events import Summary

__all__ = ["StopState", "install_signals"]


@dataclass
class StopState:
    """Where the run is in stopping: every read and write of the stop goes through this.

    ``stopping``: no new request starts (a signal, --max-runtime, an abort); ``work_left``: a
    stop left items unsent; ``sources_done``: the reader reached the end of every source;
    ``by_runtime``: --max-runtime stopped it; ``capped``: a spend cap refused an item (no
    item is read any more; those admitted are still sent); ``abort``: why the run cannot go on;
    ``waiting``: workers whose item is between requests (waiting for a slot or a retry): a stop
    cancels them at once, so a stop never starts a request or waits out a backoff.
    """

    stopping: bool = False
    work_left: bool = False
    sources_done: bool = False
    by_runtime: bool = False
    capped: bool = False
    abort: RunAborted | None = None
    waiting: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def budget_reached(self) -> bool:
        """--max-runtime stopped the run before all its work was done."""
        return self.by_runtime and (self.work_left or not self.sources_done)

    def exit_code(self, summary: Summary) -> int:
        """The run's exit code, from how it stopped and what ``summary`` counted."""
        if self.abort is not None:
            return EXIT_ABORTED
        if summary.interrupted:
            return EXIT_INTERRUPTED
        if summary.budget_reached:
            return EXIT_BUDGET
        if summary.failed or summary.invalid_lines or summary.skipped_failed:
            return EXIT_FAILED
        return EXIT_OK


def install_signals(loop: asyncio.AbstractEventLoop, handler: Callable[[], None]) -> list[int]:
    """Call ``handler`` on SIGINT, SIGTERM and SIGHUP; the signals installed (none off the main
    thread: the caller handles signals then)."""
    installed: list[int] = []
    # SIGHUP too: a closed SSH session or terminal sends it, and its default action would
    # end the process at once, losing answers already paid for and the run record.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, handler)
        except (RuntimeError, ValueError, NotImplementedError):
            continue  # not the main thread: the caller handles signals
        installed.append(sig)
    return installed
