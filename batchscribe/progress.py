"""Progress for people: a tqdm bar on a terminal, else a short log line every few seconds.

Both are event subscribers; so are the problem lines (``FILE:LINE: problem``) and notices, which
go to stderr as they happen. Every line passes through :class:`Redactor` so a secret can never
be printed, whatever a message carries.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from batchscribe.events import (
    Event,
    InvalidLine,
    ItemFinished,
    ItemRetried,
    ItemsSkipped,
    Notice,
    PoolPaused,
    RunFinished,
    RunStarted,
    TotalKnown,
)


class Redactor:
    """Replaces every secret (API keys, signed URLs) in text with ``***``."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets = [s for s in secrets if s and len(s) >= 4]

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4:
            self._secrets.append(secret)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


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
        self.done = self.ok = self.failed = self.retries = self.skipped = 0
        self._started = time.monotonic()
        self._last_log = self._started
        self._last_refresh = 0.0

    def __call__(self, event: Event) -> None:
        if isinstance(event, ItemFinished):
            self.done += 1
            if event.status == "ok":
                self.ok += 1
            else:
                self.failed += 1
            self._tick()
        elif isinstance(event, ItemsSkipped):
            self.skipped += event.count
        elif isinstance(event, ItemRetried):
            self.retries += 1
        elif isinstance(event, InvalidLine):
            self._write(event.message)
        elif isinstance(event, TotalKnown):
            self._total = event.pending
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
                    f"ok={self.ok} failed={self.failed} retries={self.retries}", refresh=False
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
            f"batchscribe: {self.done}/{total} ok={self.ok} failed={self.failed} "
            f"retries={self.retries} rate={rate:.1f}/s{eta}"
        )

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(self.console.redact(text), file=self.console.stream)
        else:
            self.console.line(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def stderr_console(redact: Redactor) -> Console:
    return Console(sys.stderr, redact)
