"""The state of a run's stop (a signal, ``--max-runtime``, a spend cap, an abort): one small
object every read and write of the stop goes through (the engine's; tests read it)."""

from __future__ import annotations

import asyncio
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

__all__ = ["StopState"]


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
        """The run's exit code: how it stopped (abort, interrupt, a budget), else its counts."""
        if self.abort is not None:
            return EXIT_ABORTED
        if summary.interrupted:
            return EXIT_INTERRUPTED
        if summary.budget_reached:
            return EXIT_BUDGET
        if summary.failed or summary.invalid_lines or summary.skipped_failed:
            return EXIT_FAILED
        return EXIT_OK
