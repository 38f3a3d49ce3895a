"""Frozen event records the engine emits, and the run summary.

The progress bar, the log, the summary and the tests are subscribers; the engine never prints.
Events are typed named tuples: frozen, compared and shown by field like frozen dataclasses, but
made at import for a seventh of the cost (ten frozen slotted dataclasses took ~4 ms of every
run's start-up, measured) and built a third quicker per item.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class RunStarted(NamedTuple):
    """The run is about to read its sources (``resumed``: ids already in the results file)."""

    run_id: str
    out: str
    resumed: int
    concurrency: int


class ItemFinished(NamedTuple):
    """An item ended and its record is written."""

    item_id: str
    status: str  # "ok", "submitted" (the transcript goes to a webhook) or "failed"
    cause: str
    attempts: int
    audio_seconds: float


class ItemRetried(NamedTuple):
    """An attempt failed and the item will be tried again after ``delay`` seconds."""

    item_id: str
    attempt: int
    cause: str
    error: str
    delay: float


@dataclass(frozen=True, slots=True)  # (not a named tuple: its field would hide tuple.count)
class ItemsSkipped:
    """``count`` items were skipped because the results file already has their final state."""

    count: int


class InvalidLine(NamedTuple):
    """A manifest line could not be used (``message`` is ``FILE:LINE: problem``)."""

    message: str


class TotalKnown(NamedTuple):
    """The reader has seen every source: ``total`` items to consider, ``pending`` to send."""

    total: int
    pending: int


class PoolPaused(NamedTuple):
    """The server asked for a pause; no request starts for ``seconds``."""

    seconds: float
    cause: str


class Notice(NamedTuple):
    """A one-line message for the operator (warnings, stop requests)."""

    level: str  # "info" | "warning" | "error"
    message: str


class LimitChanged(NamedTuple):
    """The in-flight limit (``--concurrency auto``) or the start rate moved: ``rate`` is the
    pacing rate in starts per second (None: unpaced), ``learned`` the rate limit learnt."""

    limit: int
    rate: float | None
    learned: float | None = None


class RunFinished(NamedTuple):
    """The run ended; ``summary`` holds every count."""

    summary: Summary


Event = (
    RunStarted
    | ItemFinished
    | ItemRetried
    | ItemsSkipped
    | InvalidLine
    | TotalKnown
    | PoolPaused
    | Notice
    | LimitChanged
    | RunFinished
)
Subscriber = Callable[[Event], None]


@dataclass
class Summary:
    """Every count of a run, in one place."""

    run_id: str = ""
    ok: int = 0
    failed: int = 0
    failed_by_cause: Counter[str] = field(default_factory=Counter)
    submitted: int = 0  # accepted for a webhook: the transcript goes there (not a failure)
    skipped_ok: int = 0
    skipped_failed: int = 0
    invalid_lines: int = 0
    retries: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    total: int | None = None
    interrupted: bool = False
    aborted: str | None = None
    budget_reached: bool = False
    concurrency: int = 0  # the in-flight limit (with --concurrency auto: the last one)
    adaptive: bool = False  # --concurrency auto: the limit was learnt from the server
    concurrency_low: int = 0  # with adaptive: the lowest and highest limit of the run
    concurrency_high: int = 0
    overload_cuts: int = 0  # with adaptive: times the limit was cut on a 429/503
    throttled: int = 0  # requests answered 429
    learned_rate: float | None = None  # the rate limit learnt from 429s, in starts per second
    exit_code: int = 0
    sample: str | None = None  # the first transcript of the run, for people to see it work
    requests_by_status: Counter[str] = field(default_factory=Counter)  # HTTP code or "transport"
    bytes_uploaded: int = 0  # request bodies sent (every attempt's)
    last_success_at: float | None = None  # unix time of the last ok item
    cost: float | None = None  # the audio answered at the price per hour (with a spend cap)

    @property
    def done(self) -> int:
        """Items finished in this run (ok, submitted or failed)."""
        return self.ok + self.failed + self.submitted

    @property
    def items_per_second(self) -> float:
        return self.done / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for ``--log-format json`` and the results file's run record)."""
        return {
            "run_id": self.run_id,
            "ok": self.ok,
            "failed": self.failed,
            "failed_by_cause": dict(self.failed_by_cause),
            "submitted": self.submitted,
            "skipped_ok": self.skipped_ok,
            "skipped_failed": self.skipped_failed,
            "invalid_lines": self.invalid_lines,
            "retries": self.retries,
            "audio_seconds": round(self.audio_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "items_per_second": round(self.items_per_second, 3),
            "total": self.total,
            "interrupted": self.interrupted,
            "aborted": self.aborted,
            "budget_reached": self.budget_reached,
            "concurrency": self.concurrency,
            "throttled": self.throttled,
            "learned_per_minute": (
                None if self.learned_rate is None else round(self.learned_rate * 60, 2)
            ),
            "exit_code": self.exit_code,
            "requests_by_status": dict(self.requests_by_status),
            "bytes_uploaded": self.bytes_uploaded,
            "last_success_at": self.last_success_at,
            "cost": None if self.cost is None else round(self.cost, 6),
            **(
                {
                    "adaptive": True,
                    "concurrency_low": self.concurrency_low,
                    "concurrency_high": self.concurrency_high,
                    "overload_cuts": self.overload_cuts,
                }
                if self.adaptive
                else {}
            ),
        }

    def lines(self) -> list[str]:
        """The human summary printed at the end of a run."""
        causes = ", ".join(f"{c}: {n}" for c, n in sorted(self.failed_by_cause.items()))
        head = f"ok: {self.ok}  failed: {self.failed}" + (f" ({causes})" if causes else "")
        if self.submitted:
            head += f"  submitted: {self.submitted} (answers go to the webhook)"
        out = [
            head,
            f"skipped (done earlier): {self.skipped_ok}  skipped (failed earlier): "
            f"{self.skipped_failed}  invalid lines: {self.invalid_lines}",
            f"retries: {self.retries}  audio: {self.audio_seconds / 3600:.3f} h "
            f"({self.audio_seconds:.1f} s)  wall: {self.wall_seconds:.1f} s  "
            f"rate: {self.items_per_second:.1f} items/s",
        ]
        if self.adaptive:
            out.append(
                f"concurrency: auto, ended at {self.concurrency} (range {self.concurrency_low}"
                f"-{self.concurrency_high}; cut {self.overload_cuts} time(s) on 429/503)"
            )
        if self.learned_rate is not None or self.throttled:
            out.append(f"rate: {learned_text(self.learned_rate)}; {self.throttled} request(s) "
                       f"answered 429")  # fmt: skip
        if self.cost is not None:
            out.append(f"spend: ${self.cost:.4f} for {self.audio_seconds / 3600:.3f} audio hours")
        if self.sample:
            out.append(f"first transcript: {self.sample}")
        if self.skipped_failed:
            out.append(
                f"{self.skipped_failed} item(s) failed in an earlier run: rerun with --retry-failed"
            )
        if self.aborted:
            out.append(f"aborted: {self.aborted}")
        if self.interrupted:
            out.append("interrupted: run the same command again to resume")
        if self.budget_reached:
            out.append("budget reached with work left: run the same command again to continue")
        return out


def learned_text(per_second: float | None) -> str:
    """``~25/min learned`` (per second above 100 a minute), or ``not learned yet``."""
    if per_second is None:
        return "not learned yet"
    per_minute = per_second * 60
    if per_minute >= 100:
        return f"~{per_second:.3g}/s learned"
    return f"~{per_minute:.3g}/min learned"


class EventBus:
    """Fan-out of events to subscribers; free when nobody listens."""

    __slots__ = ("_subscribers",)

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def __bool__(self) -> bool:
        return bool(self._subscribers)

    def emit(self, event: Event) -> None:
        for subscriber in self._subscribers:
            subscriber(event)
