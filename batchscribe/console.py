"""The terminal and the log: progress for people (a tqdm bar on a terminal, else a short log
line every few seconds), the unattended run's log, and the redactor every line passes through.

Both are event subscribers; so are the problem lines (``FILE:LINE: problem``) and notices, which
go to stderr as they happen. Every line passes through :class:`Redactor` so a secret can never
be printed, whatever a message carries.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from typing import Any, TextIO, cast

from batchscribe.events import (
    Event,
    InvalidLine,
    ItemFinished,
    ItemRetried,
    ItemsSkipped,
    LimitChanged,
    Notice,
    PoolPaused,
    RunFinished,
    RunStarted,
    TotalKnown,
    learned_text,
)
from batchscribe.pulse import scrub as scrub_signed_urls


class Redactor:
    """Replaces every secret (API keys, signed URLs) in text with ``***``."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets = [s for s in secrets if s and len(s) >= 4]

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4:
            self._secrets.append(secret)

    def __call__(self, text: str) -> str:
        return scrub_signed_urls(self.keys(text))  # presigned URLs' signatures, whoever signed

    def keys(self, text: str) -> str:
        """``text`` with the secrets (API keys) replaced but presigned URLs left whole: for
        what a machine reads back as input (a manifest written to a file or a pipe)."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


class TerminalStream:
    """A text stream whose terminal may go away mid-run: a closed SSH session (writes fail with
    EIO) or a closed pipe (EPIPE). The first failed write sends the file descriptor to
    /dev/null, so every later write (tqdm's, the exit-time flush) succeeds and a run that lost
    its terminal still finishes and records its work; the output itself is lost with the
    terminal. Other attributes are the wrapped stream's.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except OSError:
                self._lose()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except OSError:
                self._lose()

    def isatty(self) -> bool:
        try:
            return not self.gone and self._stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _lose(self) -> None:
        self.gone = True
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()  # what the failed write left buffered now goes to /dev/null

    @classmethod
    def wrap(cls, stream: TextIO) -> TextIO:
        """``stream`` wrapped, typed as the stream it stands in for."""
        return cast(TextIO, cls(stream))


class Console:
    """Writes whole lines to a stream, redacted."""

    def __init__(self, stream: TextIO, redact: Redactor) -> None:
        self.stream = stream
        self.redact = redact

    def line(self, text: str) -> None:
        self.stream.write(self.redact(text) + "\n")
        self.stream.flush()


class Progress:
    """The run's progress display: subscribe it to the engine's events."""

    def __init__(self, console: Console, *, bar: bool | None = None, interval: float = 5.0) -> None:
        self.console = console
        self.bar_enabled = console.stream.isatty() if bar is None else bar
        self.interval = interval
        self._bar: Any = None
        self._total: int | None = None
        self.done = self.ok = self.failed = self.retries = self.skipped = self.submitted = 0
        self.limit: int | None = None  # with --concurrency auto: the current in-flight limit
        self.learned: float | None = None  # the rate limit learnt (starts per second)
        self._started = time.monotonic()
        self._last_log = self._started
        self._last_refresh = 0.0

    def count(self, event: Event) -> None:
        """Update the counters only (for other subscribers that reuse them)."""
        if isinstance(event, ItemFinished):
            self.done += 1
            if event.status == "ok":
                self.ok += 1
            elif event.status == "submitted":
                self.submitted += 1
            else:
                self.failed += 1
        elif isinstance(event, ItemsSkipped):
            self.skipped += event.count
        elif isinstance(event, ItemRetried):
            self.retries += 1
        elif isinstance(event, TotalKnown):
            self._total = event.pending
        elif isinstance(event, LimitChanged):
            self.limit = event.limit
            self.learned = event.learned

    def __call__(self, event: Event) -> None:
        self.count(event)
        if isinstance(event, ItemFinished):
            self._tick()
        elif isinstance(event, (ItemsSkipped, ItemRetried, LimitChanged)):
            pass
        elif isinstance(event, InvalidLine):
            self._write(event.message)
        elif isinstance(event, TotalKnown):
            if self._bar is not None:
                self._bar.total = event.pending
                self._bar.refresh()
        elif isinstance(event, Notice):
            self._write(f"batchscribe: {event.level}: {event.message}")
        elif isinstance(event, PoolPaused):
            if event.seconds >= 5:
                self._write(
                    f"batchscribe: server asked to pause {event.seconds:.0f} s ({event.cause})"
                )
        elif isinstance(event, RunStarted):
            self._start(event)
        elif isinstance(event, RunFinished):
            self.close()

    def _start(self, event: RunStarted) -> None:
        if event.resumed:
            self._write(f"batchscribe: {event.out}: {event.resumed} item(s) already recorded")
        if self.bar_enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=None, unit="item", file=self.console.stream, dynamic_ncols=True,
                mininterval=0.5, smoothing=0.05,
            )  # fmt: skip

    def _tick(self) -> None:
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(1)
            if now - self._last_refresh >= 0.5:
                self._last_refresh = now
                self._bar.set_postfix_str(
                    f"ok={self.ok}{self._submitted()} failed={self.failed} "
                    f"retries={self.retries}{self._limit()}{self._learned()}",
                    refresh=False,
                )
        elif now - self._last_log >= self.interval:
            self._last_log = now
            self.console.line(self.status_line(now))

    def status_line(self, now: float | None = None) -> str:
        """``done/total ok failed retries rate ETA`` as one line."""
        now = time.monotonic() if now is None else now
        elapsed = max(1e-9, now - self._started)
        rate = self.done / elapsed
        total = "?" if self._total is None else str(self._total)
        eta = ""
        if self._total is not None and rate > 0:
            eta = f" eta={(self._total - self.done) / rate:.0f}s"
        return (
            f"batchscribe: {self.done}/{total} ok={self.ok}{self._submitted()} "
            f"failed={self.failed} "
            f"retries={self.retries}{self._limit()} rate={rate:.1f}/s{eta}{self._learned()}"
        )

    def _submitted(self) -> str:
        return f" submitted={self.submitted}" if self.submitted else ""

    def _limit(self) -> str:
        return "" if self.limit is None else f" limit={self.limit}"

    def _learned(self) -> str:
        return "" if self.learned is None else f" (rate: {learned_text(self.learned)})"

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(self.console.redact(text), file=self.console.stream)
        else:
            self.console.line(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class EventLog:
    """A log for unattended runs: one line per notable event, as text or JSON lines.

    Logs the run's start, bad lines, retries, pauses, failed items, notices, a progress line
    every ``interval`` seconds, and the final summary. Lines are redacted like all output.
    """

    def __init__(
        self, stream: TextIO, redact: Redactor, *, fmt: str = "text", interval: float = 30.0
    ) -> None:
        self.stream = stream
        self.redact = redact
        self.json = fmt == "json"
        self.interval = interval
        self._progress = Progress(Console(stream, redact), bar=False, interval=float("inf"))
        self._last = time.monotonic()

    def __call__(self, event: Event) -> None:
        self._progress.count(event)
        if isinstance(event, ItemFinished):
            if event.status == "submitted":
                self.log("info", "item_submitted",
                         f"{event.item_id}: submitted (the transcript goes to the webhook)",
                         id=event.item_id, attempts=event.attempts)  # fmt: skip
            elif event.status != "ok":
                self.log("warning", "item_failed", f"{event.item_id}: failed ({event.cause})",
                         id=event.item_id, cause=event.cause, attempts=event.attempts)  # fmt: skip
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                p = self._progress
                self.log("info", "progress", p.status_line(now).removeprefix("batchscribe: "),
                         done=p.done, ok=p.ok, failed=p.failed, submitted=p.submitted,
                         retries=p.retries)  # fmt: skip
        elif isinstance(event, ItemRetried):
            self.log("info", "retry",
                     f"{event.item_id}: attempt {event.attempt} failed ({event.error}); "
                     f"retrying in {event.delay:.1f} s",
                     id=event.item_id, attempt=event.attempt, cause=event.cause,
                     delay=round(event.delay, 3))  # fmt: skip
        elif isinstance(event, InvalidLine):
            self.log("warning", "invalid_line", event.message)
        elif isinstance(event, PoolPaused):
            self.log("info", "pause", f"server asked to pause {event.seconds:.1f} s",
                     seconds=round(event.seconds, 3), cause=event.cause)  # fmt: skip
        elif isinstance(event, Notice):
            self.log(event.level, "notice", event.message)
        elif isinstance(event, RunStarted):
            self.log("info", "run_started",
                     f"run {event.run_id} started: results {event.out}, "
                     f"{event.resumed} item(s) already recorded, concurrency {event.concurrency}",
                     run=event.run_id, out=event.out, resumed=event.resumed)  # fmt: skip
        elif isinstance(event, TotalKnown):
            text = f"{event.total} item(s) in the sources, {event.pending} to send"
            self.log("info", "total", text, total=event.total, pending=event.pending)
        elif isinstance(event, RunFinished):
            summary = event.summary
            self.log("info", "run_finished", " | ".join(summary.lines()), summary=summary.as_dict())

    def log(self, level: str, kind: str, message: str, **fields: Any) -> None:
        """Write one log line."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.json:
            import orjson

            doc = {"ts": stamp, "level": level, "event": kind, "message": message, **fields}
            line = orjson.dumps(doc).decode()
        else:
            line = f"{stamp} {level.upper():7} {message}"
        self.stream.write(self.redact(line) + "\n")
        self.stream.flush()
