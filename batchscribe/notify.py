"""End-of-run notifications (``--notify URL``, ``--notify-on``) through Apprise.

Apprise speaks one URL scheme for Slack, Teams, Discord, ntfy, gotify, email, generic JSON
webhooks (``json://host/path``) and a hundred more, so this module only composes the message
(:func:`compose`, pure), decides whether to send it (:func:`wanted`) and hands it over
(:func:`deliver`, the I/O edge).

A notification that cannot be delivered is a warning, never a change of the run's exit code.
Notification URLs carry tokens (a Slack webhook's path, ``?token=``, a password): a warning
names a URL only by its position and scheme (``--notify #2 (slack://)``), and Apprise's own log
lines and its transport's (urllib3), which quote URLs and server answers, are dropped while it
sends.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from batchscribe.errors import (
    EXIT_ABORTED,
    EXIT_BUDGET,
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
)
from batchscribe.events import Summary
from batchscribe.pulse import scrub

__all__ = ["Notification", "NotifyOn", "compose", "deliver", "invalid_urls", "scheme", "wanted"]

NotifyOn = Literal["always", "failure", "never"]

_VERDICT = {
    EXIT_OK: "all ok",
    EXIT_FAILED: "some items failed",
    EXIT_USAGE: "configuration error",
    EXIT_ABORTED: "aborted",
    EXIT_BUDGET: "budget reached, work left",
    EXIT_BUSY: "results file busy",
    EXIT_INTERRUPTED: "interrupted",
}


@dataclass(frozen=True, slots=True)
class Notification:
    """What is sent: a short title, a body of a few lines, and Apprise's notify type."""

    title: str
    body: str
    kind: Literal["success", "warning", "failure"] = "success"


def wanted(on: NotifyOn, exit_code: int) -> bool:
    """Whether ``--notify-on`` asks for a notification of a run that ends with ``exit_code``
    (``failure``: any code but 0, work left included)."""
    return on == "always" or (on == "failure" and exit_code != EXIT_OK)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _left(summary: Summary) -> str:
    if summary.total is None:
        return "unknown (sources not all read)"
    left = summary.total - summary.skipped_ok - summary.skipped_failed - summary.done
    return str(max(0, left))


def compose(
    summary: Summary,
    *,
    results: str,
    exit_code: int,
    job: str,
    top_causes: int = 3,
    cost: float | None = None,
    redact: Callable[[str], str] = scrub,
) -> Notification:
    """The notification of a finished run (pure).

    Args:
        summary: the run's counts.
        results: the results file's path (shown so the reader knows where to look).
        exit_code: the code the process exits with.
        job: the job's name (``--job-name``), first in the title.
        top_causes: how many failure causes to name (the most frequent; the rest are counted).
        cost: the spend of the run, if known (``$`` and 2-4 decimals).
        redact: applied to free text from the run (an abort reason); the CLI passes its
            redactor, which knows the API key.
    """
    verdict = _VERDICT.get(exit_code, f"exit {exit_code}")
    if exit_code == EXIT_FAILED and summary.failed:
        verdict = f"{summary.failed} item(s) failed"
    kind: Literal["success", "warning", "failure"] = (
        "success" if exit_code == EXIT_OK
        else "warning" if exit_code in (EXIT_FAILED, EXIT_BUDGET, EXIT_INTERRUPTED)
        else "failure"
    )  # fmt: skip
    lines = [
        f"ok: {summary.ok}  failed: {summary.failed}  left: {_left(summary)}"
        + (f"  submitted: {summary.submitted}" if summary.submitted else "")
    ]
    if summary.skipped_ok or summary.skipped_failed:
        lines.append(
            f"done in earlier runs: {summary.skipped_ok} ok, {summary.skipped_failed} failed"
        )
    if summary.invalid_lines:
        lines.append(f"invalid manifest lines: {summary.invalid_lines}")
    causes = sorted(summary.failed_by_cause.items(), key=lambda c: (-c[1], c[0]))
    if causes:
        shown = ", ".join(f"{cause} {n}" for cause, n in causes[:top_causes])
        rest = sum(n for _, n in causes[top_causes:])
        lines.append(f"top failure causes: {shown}" + (f" (+{rest} other)" if rest else ""))
    money = "" if cost is None else f"  cost: ${cost:.4f}" if cost < 1 else f"  cost: ${cost:.2f}"
    lines.append(
        f"audio: {summary.audio_seconds / 3600:.2f} h{money}  wall: "
        f"{_duration(summary.wall_seconds)}"
    )
    if summary.aborted:
        lines.append(f"aborted: {redact(summary.aborted)}")
    lines.append(f"exit code: {exit_code}  results: {results}")
    return Notification(f"batchscribe {job}: {verdict}", "\n".join(lines), kind)


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,31})://")


def scheme(url: str) -> str:
    """``slack://`` for a Slack URL: the one part of a notification URL safe to show."""
    found = _SCHEME.match(url.strip())
    return f"{found.group(1).lower()}://" if found else "no scheme"


def _name(position: int, url: str) -> str:
    return f"--notify #{position} ({scheme(url)})"


#: Loggers that quote a notification URL (its path and query carry tokens) or a service's
#: answer: Apprise's, and urllib3's (requests' transport: ``"POST /hooks/T0/B0/xyz HTTP/1.1"``).
_QUOTING_LOGGERS = ("apprise", "urllib3.connectionpool", "urllib3.util.retry", "urllib3.response")


class _DropAll(logging.Filter):
    # Every thread's records: Apprise sends from a pool of its own threads. The cost, other
    # urllib3 users' debug lines lost for the second a notification takes, is at a run's end.
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _apprise_silenced() -> Iterator[None]:
    """Drop what Apprise and its transport log while it sends."""
    drop = _DropAll()
    loggers = [logging.getLogger(name) for name in _QUOTING_LOGGERS]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


_loaded: ModuleType | None = None


def _apprise() -> ModuleType:
    """Apprise, with its plugins loaded: imported on first use (heavy; only a run that notifies
    pays for it). Its email plugin imports ``imghdr``, deprecated since Python 3.11: that
    warning is Apprise's business, not our user's, and fails ``-W error`` runs, so it is
    silenced while the plugins load (once per process; call it first on the main thread)."""
    global _loaded
    if _loaded is None:
        with warnings.catch_warnings(), _apprise_silenced():
            warnings.simplefilter("ignore", DeprecationWarning)
            import apprise

            apprise.Apprise.instantiate("json://localhost")  # loads every plugin module
        _loaded = apprise
    return _loaded


def invalid_urls(urls: Sequence[str]) -> list[str]:
    """One line per URL Apprise cannot use (to refuse before a run starts: exit 2)."""
    apprise = _apprise()
    problems = []
    with _apprise_silenced():
        for position, url in enumerate(urls, 1):
            if apprise.Apprise.instantiate(url) is None:
                problems.append(
                    f"{_name(position, url)}: not a notification URL Apprise knows "
                    "(see https://github.com/caronc/apprise/wiki)"
                )
    return problems


def deliver(urls: Sequence[str], note: Notification) -> list[str]:
    """Send ``note`` to every URL; return one warning per URL it could not be delivered to.

    Never raises for a delivery problem. Blocking (Apprise waits for each service's answer, a
    few seconds at most): the caller runs it in a thread.
    """
    apprise = _apprise()
    failures = []
    with _apprise_silenced():
        for position, url in enumerate(urls, 1):
            service = apprise.Apprise()
            text = apprise.NotifyFormat.TEXT
            try:
                added = bool(service.add(url))
                delivered = added and bool(
                    service.notify(note.body, note.title, note.kind, body_format=text)
                )
            except Exception:  # a plugin's bug is a warning too, and its text may hold the URL
                delivered = False
            if not delivered:
                failures.append(f"{_name(position, url)}: the notification was not delivered")
    return failures
