"""``batchscribe status RESULTS``: is a run working on this results file, and how far is it?

A run rewrites a small status file beside its results (``RESULTS.status.json``) every few
seconds and once at its end (:class:`StatusWriter`; atomic, so a reader never sees half of
it). Whether a run is alive is not taken from that file but from the results file's lock (an
``flock`` the run holds while it runs, :mod:`batchscribe.results.store`): the kernel drops it
when the process dies, even on ``kill -9``. So:

- lock held, status says running: **running**, with the run's progress;
- lock held, no status of that run yet: **running** (no details yet);
- lock free, status says finished: **finished**, with the run's exit code and counts;
- lock free, status says running: **stale**: its run was killed or crashed (rerun to resume);
- lock free, no status file: **idle**.

The command line in the file never carries a secret: the API key and presigned signatures are
redacted (the run's :class:`~batchscribe.console.Redactor`), a URL's password and token-like
query values too (:func:`batchscribe.pulse.url_secrets`), and the URLs of ``--notify``,
``--metrics-push`` and ``--rate-store`` are cut to their scheme (their paths carry tokens).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from batchscribe.atomicfile import replace_file
from batchscribe.errors import ConfigError
from batchscribe.events import Summary, learned_text
from batchscribe.pulse import scrub, url_secrets

__all__ = [
    "SECRET_URL_FLAGS",
    "State",
    "StatusReport",
    "StatusWriter",
    "format_status",
    "lock_held",
    "read_status",
    "redact_command",
    "status_json",
    "status_path",
]

#: Flags whose value is a URL with a token in its path or query: only the scheme is kept.
SECRET_URL_FLAGS = ("--notify", "--metrics-push", "--rate-store")

State = Literal["running", "finished", "stale", "idle"]


def status_path(results: str) -> str:
    """The status file of a results file: ``RESULTS.status.json`` beside it."""
    return f"{results}.status.json"


def _cut_url(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://***" if sep and scheme.isascii() and scheme.isalnum() else "***"


def redact_command(argv: Sequence[str], redact: Callable[[str], str] = scrub) -> list[str]:
    """``argv`` without secrets: ``redact`` applied to every argument (the run's redactor knows
    the API key; the default scrubs presigned signatures), a URL's password and token-like
    query values replaced, and the values of :data:`SECRET_URL_FLAGS` cut to their scheme."""
    out: list[str] = []
    cut_next = False
    for arg in argv:
        if cut_next:
            out.append(_cut_url(arg))
            cut_next = False
            continue
        flag, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in SECRET_URL_FLAGS:
            if eq:
                out.append(f"{flag}={_cut_url(value)}")
            else:
                out.append(arg)
                cut_next = True
            continue
        text = redact(arg)
        if "://" in text:
            for secret in url_secrets(value if eq else text):
                text = text.replace(secret, "***")
        out.append(text)
    return out


class StatusWriter:
    """Writes a run's status file. Build it when the run has the results file's lock; call
    :meth:`write` every few seconds (in a thread: it fsyncs) and once with ``finished=True``.

    Args:
        results: the results file's path.
        command: the command line (``sys.argv``); stored redacted.
        redact: the run's redactor (knows the API key).
        job: the job's name; shard: ``K/N`` or empty.
        now: wall clock (unix seconds), for the timestamps people read.
    """

    def __init__(
        self,
        results: str,
        *,
        command: Sequence[str],
        redact: Callable[[str], str] = scrub,
        job: str = "",
        shard: str = "",
        now: Callable[[], float] = time.time,
    ) -> None:
        self.path = status_path(results)
        self._now = now
        self._fixed: dict[str, Any] = {
            "version": 1,
            "results": os.path.abspath(results),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": now(),
            "command": redact_command(command, redact),
            "job": job,
            "shard": shard,
        }

    def document(
        self,
        summary: Summary,
        *,
        elapsed: float,
        in_flight: int = 0,
        finished: bool = False,
        cost: float | None = None,
    ) -> dict[str, Any]:
        """What the file holds now (pure but for the clock)."""
        s = summary
        this_run = s.done
        earlier = s.skipped_ok + s.skipped_failed
        rate = this_run / elapsed if elapsed > 0 else 0.0
        left = None if s.total is None else max(0, s.total - earlier - this_run)
        eta = None if left is None or finished else (left / rate if rate > 0 else None)
        return {
            **self._fixed,
            "state": "finished" if finished else "running",
            "updated_at": self._now(),
            "elapsed_seconds": round(elapsed, 3),
            "done": earlier + this_run,
            "total": s.total,
            "left": left,
            "ok": s.ok,
            "failed": s.failed,
            "submitted": s.submitted,
            "skipped": earlier,
            "invalid_lines": s.invalid_lines,
            "items_per_second": round(rate, 3),
            "eta_seconds": None if eta is None else round(eta, 1),
            "in_flight": in_flight,
            "concurrency": s.concurrency,
            "learned_per_minute": (
                None if s.learned_rate is None else round(s.learned_rate * 60, 2)
            ),
            "audio_seconds": round(s.audio_seconds, 3),
            "cost": None if cost is None else round(cost, 6),
            "exit_code": s.exit_code if finished else None,
        }

    def write(self, summary: Summary, **progress: Any) -> None:
        """Rewrite the file atomically (blocking; takes :meth:`document`'s keywords). The
        caller copies a live summary first if it writes from a thread. Raises OSError."""
        data = orjson.dumps(self.document(summary, **progress), option=orjson.OPT_INDENT_2)
        replace_file(self.path, data + b"\n")


def lock_held(results: str) -> bool:
    """Whether a process holds the results file's lock (a run is writing it).

    Asks for a shared lock without waiting and drops it at once: it fails exactly while a run
    holds its exclusive one. (A run that starts in the same microsecond sees the file busy and
    exits 75: the one cost of asking the kernel rather than trusting a pid.)
    """
    try:
        fd = os.open(results, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfigError(f"{results}: cannot read results file: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise ConfigError(f"{results}: cannot check the lock: {exc.strerror}") from None
    finally:
        os.close(fd)  # closing drops our shared lock, if we got it
    return False


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What ``batchscribe status`` found: the state, whether the lock is held, the status
    file's contents (None: none, or it could not be read: ``problem`` says why)."""

    results: str
    state: State
    locked: bool
    status: dict[str, Any] | None
    problem: str | None = None


def _load(path: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        with open(path, "rb") as handle:
            doc = orjson.loads(handle.read())
    except FileNotFoundError:
        return None, None
    except (OSError, orjson.JSONDecodeError) as exc:
        return None, f"{path}: unreadable status file ({exc})"
    if not isinstance(doc, dict) or doc.get("version") != 1:
        return None, f"{path}: not a status file of this batchscribe version"
    return doc, None


def read_status(results: str) -> StatusReport:
    """The state of ``results`` (see the module's docstring). Raises ConfigError when neither
    the results file nor its status file exists."""
    locked = lock_held(results)
    status, problem = _load(status_path(results))
    if status is None and problem is None and not os.path.exists(results):
        raise ConfigError(f"{results}: no such results file")
    running = status is not None and status.get("state") == "running"
    state: State
    if locked:
        state = "running"
        if not running:
            status = None  # the last run's status: not this run's
    elif running:
        state = "stale"
    elif status is not None:
        state = "finished"
    else:
        state = "idle"
    return StatusReport(results, state, locked, status, problem)


def status_json(report: StatusReport) -> dict[str, Any]:
    """The report for ``--json``: ``state``, ``locked``, ``results``, ``status`` (the file's
    fields), ``problem``."""
    return {
        "results": report.results,
        "state": report.state,
        "locked": report.locked,
        "status": report.status,
        "problem": report.problem,
    }


def _when(epoch: Any) -> str:
    if not isinstance(epoch, (int, float)):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _span(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def _progress(st: dict[str, Any]) -> list[str]:
    total = st.get("total")
    done = st.get("done", 0)
    head = (
        f"{done} of {total} done ({done / total:.0%})"
        if total
        else f"{done} done (total not known yet)"
    )
    line = f"progress: {head}; ok {st.get('ok', 0)}, failed {st.get('failed', 0)}"
    rate = st.get("items_per_second") or 0
    line += f"; {rate:.3g} items/s"
    if st.get("eta_seconds") is not None:
        line += f"; ETA {_span(st['eta_seconds'])}"
    out = [line]
    learned = st.get("learned_per_minute")
    out.append(f"rate limit: {learned_text(None if learned is None else learned / 60)}")
    return out


def format_status(report: StatusReport, *, now: float | None = None) -> str:
    """The report as lines for people."""
    now = time.time() if now is None else now
    st = report.status
    out: list[str] = []
    who = ""
    if st is not None:
        who = f"pid {st.get('pid')} on {st.get('host')}, started {_when(st.get('started_at'))}"
    if report.state == "running" and st is None:
        out.append(f"running: a run holds {report.results} (it has written no status yet)")
    elif report.state == "running" and st is not None:
        out.append(f"running: {who}")
        out.append(f"command: {' '.join(st.get('command') or [])}")
        out.extend(_progress(st))
        updated = st.get("updated_at")
        if isinstance(updated, (int, float)):
            out.append(f"status written {_span(max(0.0, now - updated))} ago")
    elif report.state == "stale" and st is not None:
        out.append(
            f"stale: the run ({who}) no longer holds {report.results}: it was killed or "
            "crashed; run the same command again to resume"
        )
        if st.get("host") != socket.gethostname():
            out.append(
                "(that run was on another host: if it is alive there, this file system does "
                "not share its lock)"
            )
        out.append(f"command: {' '.join(st.get('command') or [])}")
        out.extend(_progress(st)[:1])
    elif report.state == "finished" and st is not None:
        out.append(
            f"finished: {_when(st.get('updated_at'))} with exit code {st.get('exit_code')} ({who})"
        )
        out.append(
            f"ok {st.get('ok', 0)}, failed {st.get('failed', 0)}, done {st.get('done', 0)}"
            + (f" of {st['total']}" if st.get("total") else "")
        )
    else:
        out.append(f"idle: no run holds {report.results}, and it has no status file")
    if report.problem:
        out.append(report.problem)
    return "\n".join(out)
