"""Reports on results files: totals over final states, runs, the slowest items; the failed list.

:func:`build_report` streams the results files twice (see :func:`batchscribe.results.index_final`)
and keeps only counters, a few top-N heaps and, for charts, one float per item, so a
million-line results file is reported in seconds in a few tens of MB. :meth:`Report.lines` is
the text report, :meth:`Report.as_dict` the ``--json`` document, and :func:`render_html` the
self-contained HTML page (inline CSS and SVG charts drawn here: no script, nothing fetched).

:func:`failed_manifest` turns the items whose final state is failed back into manifest lines
that ``batchscribe run`` accepts, so a rerun of exactly what failed is one command.
"""

from __future__ import annotations

import heapq
import math
import operator
import re
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import reduce
from html import escape
from itertools import compress, repeat
from typing import Any, cast

import orjson

from batchscribe.audio import MAX_AUDIO_SECONDS
from batchscribe.errors import ConfigError
from batchscribe.results import (
    BATCH,
    FINAL,
    RUN,
    SUPERSEDED,
    ReadCounts,
    final_states,
    index_final,
    kind_table,
    load_light_many,
)

#: Every ``cause`` a failed record can carry (see README.md, "Results format").
CAUSES = (
    "4xx",
    "429",
    "5xx",
    "redirect",
    "network",
    "timeout",
    "missing",
    "invalid",
    "too_large",
    "file_changed",
    "language",
)
#: Times a record may hold beyond audio (a run's wall time, a server's processing time):
#: past these they are corrupt, shown as "-" rather than as a 300-digit number of hours.
_MAX_SHOWN = 1e9  # seconds (31 years), and for _float any magnitude
_MAX_MS = MAX_AUDIO_SECONDS * 1000
#: Final states that are not failures (``failed`` never lists them).
_DONE = ("ok", "submitted")
_MAX_ERRORS = 1000  # distinct error messages counted (a bound, for errors that name files)


@dataclass
class Report:
    """Totals over the final state of every id in a set of results files."""

    files: list[str]
    counts: ReadCounts = field(default_factory=ReadCounts)
    items: int = 0
    ok: int = 0
    failed: int = 0
    submitted: int = 0  # accepted for a webhook: the transcript goes there, not here
    failed_by_cause: Counter[str] = field(default_factory=Counter)
    failed_by_status: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    retries: int = 0  # sum of attempts - 1 over final records
    audio_seconds: float = 0.0
    implausible_durations: int = 0  # ok records whose duration is < 0 or over a week: not counted
    first_finished: str | None = None
    last_finished: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    slowest: list[dict[str, Any]] = field(default_factory=list)
    most_attempts: list[dict[str, Any]] = field(default_factory=list)
    top: int = 10
    charts: bool = False
    #: With ``charts``: the audio seconds of every ok item, and per run the finish times
    #: (epoch seconds) of every record it wrote.
    durations: array[float] = field(default_factory=lambda: array("d"))
    timeline: dict[str, array[float]] = field(default_factory=dict)

    @property
    def superseded(self) -> int:
        """Records replaced by a later record of the same id (retried failures, rescans)."""
        return max(0, self.counts.records - self.items)

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {
            "files": self.files,
            "lines": {
                "records": self.counts.records,
                "superseded": self.superseded,
                "runs": self.counts.runs,
                "unreadable": self.counts.unreadable,
            },
            "items": self.items,
            "ok": self.ok,
            "failed": self.failed,
            "submitted": self.submitted,
            "failed_by_cause": dict(self.failed_by_cause.most_common()),
            "failed_by_http_status": dict(self.failed_by_status.most_common()),
            "top_errors": [{"error": e, "count": n} for e, n in self.errors.most_common(self.top)],
            "retries": self.retries,
            "audio_seconds": round(self.audio_seconds, 3),
            "audio_hours": round(self.audio_seconds / 3600, 4),
            "implausible_durations": self.implausible_durations,
            "first_finished_at": self.first_finished,
            "last_finished_at": self.last_finished,
            "runs": self.runs,
            "slowest": self.slowest,
            "most_attempts": self.most_attempts,
        }

    def lines(self, *, runs: int = 10) -> list[str]:
        """The text report; ``runs`` latest runs are listed (0: all)."""
        c = self.counts
        out = [
            f"results: {len(self.files)} file(s), {c.records:,} record(s), "
            f"{self.superseded:,} superseded, {c.runs:,} run record(s)"
            + (f", {c.unreadable:,} unreadable line(s) skipped" if c.unreadable else ""),
        ]
        share = f" ({100 * self.ok / self.items:.1f}%)" if self.items else ""
        items = f"items: {self.items:,}  ok: {self.ok:,}{share}  failed: {self.failed:,}"
        if self.submitted:
            items += f"  submitted: {self.submitted:,} (answers go to the webhook)"
        out.append(items)
        if self.failed_by_cause:
            causes = "  ".join(f"{k}: {n:,}" for k, n in self.failed_by_cause.most_common())
            out.append(f"  failed by cause: {causes}")
            statuses = "  ".join(f"{k}: {n:,}" for k, n in self.failed_by_status.most_common())
            out.append(f"  failed by HTTP status: {statuses}")
            out.append("  most common errors:")
            for error, n in self.errors.most_common(min(self.top, 5)):
                out.append(f"    {n:>8,}  {error}")
        out.append(
            f"retries spent: {self.retries:,}  audio transcribed: "
            f"{self.audio_seconds / 3600:,.3f} h ({self.audio_seconds:,.1f} s)"
        )
        if self.implausible_durations:
            out.append(
                f"  {self.implausible_durations:,} ok item(s) with an impossible duration "
                "(negative or over a week): not counted"
            )
        if self.first_finished:
            out.append(f"finished between {self.first_finished} and {self.last_finished}")
        out.append(f"runs recorded: {len(self.runs)}")
        shown = self.runs if runs <= 0 else self.runs[-runs:]
        if len(shown) < len(self.runs):
            out.append(f"  (the latest {len(shown)}; --runs 0 lists all)")
        if shown:
            out.append(
                f"  {'run':<14}{'started':<26}{'finished':<26}{'wall':>10}"
                f"{'ok':>9}{'failed':>8}{'items/s':>9}"
            )
            for run in shown:
                flag = " interrupted" if run.get("interrupted") else ""
                flag += " aborted" if run.get("aborted") else ""
                out.append(
                    f"  {_text(run.get('run_id'))[:12]:<14}{_text(run.get('started_at')):<26}"
                    f"{_text(run.get('finished_at')):<26}{_seconds(run.get('wall_seconds')):>10}"
                    f"{_int(run.get('ok')):>9}{_int(run.get('failed')):>8}"
                    f"{_float(run.get('items_per_second')):>9}{flag}"
                )
        if self.slowest:
            out.append("slowest items (server processing time):")
            for entry in self.slowest:
                out.append(
                    f"  {_ms(entry['processing_time_ms']):>10}  attempts {entry['attempts']}"
                    f"  audio {_seconds(entry['duration'])}  {entry['id']}"
                )
        if self.most_attempts:
            out.append("most attempts:")
            for entry in self.most_attempts:
                cause = f" ({entry['cause']})" if entry["cause"] else ""
                out.append(
                    f"  {entry['attempts']:>3} attempts  {entry['status']}{cause}  {entry['id']}"
                )
        return out


def build_report(paths: Sequence[str], *, top: int = 10, charts: bool = False) -> Report:
    """Report on the final state of every id across ``paths`` (read in order).

    Args:
        paths: results files; a later record of an id supersedes an earlier one.
        top: how many slowest / most-attempted items and common errors to keep.
        charts: also collect what the HTML charts need (one float per item and per record).
    """
    report = Report(list(paths), top=top, charts=charts)
    index = index_final(paths, counts=report.counts)
    tally = _Tally(report)
    run_ids: set[str] = set()
    wanted = _RECORDS if charts else _FINAL_ONLY
    seq = 0  # the line's place across the files: the tie-break of the top lists
    for _, _, lines, kinds in index.blocks():
        n = len(lines)
        bodies: Sequence[bytes] = lines
        seqs: Sequence[int] = range(seq, seq + n)
        chosen_kinds = None
        if kinds.count(FINAL) != n:  # not the usual block of final records only
            for body in compress(lines, kinds.translate(_RUN_ONLY)):
                _add_run(report, body, run_ids)
            chosen = kinds.translate(wanted)
            bodies = list(compress(lines, chosen))
            seqs = list(compress(seqs, chosen))
            chosen_kinds = bytes(compress(kinds, chosen))
        for lo in range(0, len(bodies), BATCH):
            hi = lo + BATCH
            part = None if chosen_kinds is None else chosen_kinds[lo:hi]
            tally.add(bodies[lo:hi], seqs[lo:hi], part)
        seq += n
    # Largest first; among equals the earliest (seq was stored negated).
    report.slowest = [e for _, _, e in sorted(tally.slow, key=lambda t: (-t[0], -t[1]))]
    report.most_attempts = [e for _, _, e in sorted(tally.tries, key=lambda t: (-t[0], -t[1]))]
    return report


_RUN_ONLY = kind_table(RUN)
_FINAL_ONLY = kind_table(FINAL)
_RECORDS = kind_table(FINAL, SUPERSEDED)
_DICT: frozenset[type] = frozenset((dict,))
_STR: frozenset[type] = frozenset((str,))
_INT: frozenset[type] = frozenset((int,))
_NUMBER: frozenset[type] = frozenset((int, float))
_NONE: frozenset[type] = frozenset((type(None),))
_NO_FIELDS: dict[str, Any] = {}  # read, never written


def _column(docs: list[Any], key: str) -> list[Any]:
    """``doc.get(key)`` of each dict in ``docs``, as one C-level pass."""
    return list(map(dict.get, docs, repeat(key)))


class _Tally:
    """Adds batches of lines to a report, with what :func:`_add_final` does to one record done
    as C-level passes over the batch (``map`` over the records, a ``set`` of their types,
    ``list.count``, ``min``). Python code runs per record only for failures, for candidates to
    the top lists and for odd values; a batch with an unreadable line goes record by record.
    """

    def __init__(self, report: Report) -> None:
        self.report = report
        self.slow: list[tuple[float, int, dict[str, Any]]] = []
        self.tries: list[tuple[int, int, dict[str, Any]]] = []

    def add(self, bodies: Sequence[bytes], seqs: Sequence[int], kinds: bytes | None) -> None:
        """Add final records' lines, in order (with ``kinds``: FINAL and SUPERSEDED lines)."""
        loaded = load_light_many(bodies, strip=False)
        if None in loaded:
            self._add_each(loaded, seqs, kinds)
            return
        records = cast(list[dict[str, Any]], loaded)
        if self.report.charts:
            self._add_times(records)
        if kinds is not None:
            final = kinds.translate(_FINAL_ONLY)
            records = list(compress(records, final))
            seqs = list(compress(seqs, final))
        if records:
            self._add_finals(records, seqs)

    def _add_each(
        self, records: list[dict[str, Any] | None], seqs: Sequence[int], kinds: bytes | None
    ) -> None:
        """The reference: one record at a time."""
        report = self.report
        for i, record in enumerate(records):
            if record is None:
                report.counts.unreadable += 1
                continue
            if report.charts:
                _add_to_timeline(report, record)
            if kinds is None or kinds[i] == FINAL:
                _add_final(report, record, seqs[i], self.slow, self.tries)

    def _add_finals(self, records: list[dict[str, Any]], seqs: Sequence[int]) -> None:
        report = self.report
        n = len(records)
        report.items += n
        attempts = _column(records, "attempts")
        if not set(map(type, attempts)) <= _INT:
            attempts = [a if type(a) is int else 0 for a in attempts]
        if min(attempts) >= 1:
            report.retries += sum(attempts) - n
        else:
            report.retries += sum(map(max, attempts, repeat(1))) - n  # attempts beyond the first
        finished = _column(records, "finished_at")
        if not set(map(type, finished)) <= _STR:
            finished = [f for f in finished if type(f) is str]
        if finished:
            first, last = min(finished), max(finished)
            if report.first_finished is None or first < report.first_finished:
                report.first_finished = first
            if report.last_finished is None or last > report.last_finished:
                report.last_finished = last
        statuses = _column(records, "status")
        responses = _column(records, "response")
        ok = statuses.count("ok")
        submitted = statuses.count("submitted")
        report.submitted += submitted
        if ok == n:
            self._add_ok(records, responses)
        elif ok:
            is_ok = list(map(operator.eq, statuses, repeat("ok")))
            self._add_ok(list(compress(records, is_ok)), list(compress(responses, is_ok)))
        if ok + submitted < n:
            report.failed += n - ok - submitted
            for record, status in zip(records, statuses, strict=True):
                if status != "ok" and status != "submitted":
                    _add_failure(report, record)
        if report.top > 0:
            self._add_top(records, seqs, attempts, responses)

    def _add_ok(self, records: list[dict[str, Any]], responses: list[Any]) -> None:
        report = self.report
        # An ok record of a webhook request (as written before the submitted state existed)
        # holds no transcript: it is submitted.
        legacy = _column(_dicts(responses), "status").count("processing")
        report.ok += len(records) - legacy
        report.submitted += legacy
        durations = _column(records, "duration")
        if not set(map(type, durations)) <= _NUMBER:
            durations = [d for d in durations if (type(d) is float or type(d) is int) and d == d]
        # (orjson never makes a NaN: when every duration is a number, every one is compared.)
        if durations and not (min(durations) >= 0 and max(durations) <= MAX_AUDIO_SECONDS):
            kept = [d for d in durations if 0 <= d <= MAX_AUDIO_SECONDS]
            report.implausible_durations += len(durations) - len(kept)
            durations = kept
        # Summed in order, exactly as `+=` one record at a time (sum() may compensate).
        report.audio_seconds = reduce(operator.add, durations, report.audio_seconds)
        if report.charts:
            report.durations.extend(durations)

    def _add_top(
        self,
        records: list[dict[str, Any]],
        seqs: Sequence[int],
        attempts: list[int],
        responses: list[Any],
    ) -> None:
        # Only a record that beats the smallest kept one can enter a full list; a later record
        # never wins a tie (its seq is larger), so "beats" is a plain `>` on the key.
        top, slow, tries = self.report.top, self.slow, self.tries
        processing = _processing_times(responses, records)
        known = processing if None not in processing else [p for p in processing if p is not None]
        if known and (len(slow) < top or max(cast(list[float], known)) > slow[0][0]):
            for i, p in enumerate(processing):
                if p is not None and (len(slow) < top or p > slow[0][0]):
                    record = records[i]
                    entry = _entry(record, attempts[i], _duration(record), p)
                    _push(slow, (p, -seqs[i], entry), top)
        most = max(attempts)
        if most > 1 and (len(tries) < top or most > tries[0][0]):
            for i, a in enumerate(attempts):
                if a > 1 and (len(tries) < top or a > tries[0][0]):
                    record = records[i]
                    entry = _entry(record, a, _duration(record), processing[i])
                    _push(tries, (a, -seqs[i], entry), top)

    def _add_times(self, records: list[dict[str, Any]]) -> None:
        runs = _column(records, "run")
        times = epochs(_column(records, "finished_at"))
        timeline = self.report.timeline
        if set(map(type, runs)) <= _STR and len(set(runs)) == 1 and None not in times:
            series = timeline.get(runs[0])
            if series is None:
                series = timeline[runs[0]] = array("d")
            series.extend(cast(list[float], times))
            return
        for run, when in zip(runs, times, strict=True):
            if isinstance(run, str) and when is not None:
                series = timeline.get(run)
                if series is None:
                    series = timeline[run] = array("d")
                series.append(when)


def _add_final(
    report: Report,
    record: dict[str, Any],
    seq: int,
    slow: list[tuple[float, int, dict[str, Any]]],
    tries: list[tuple[int, int, dict[str, Any]]],
) -> None:
    """Add one final record: the reference for :class:`_Tally`, which adds whole batches."""
    get = record.get
    report.items += 1
    attempts = get("attempts")
    if type(attempts) is not int:
        attempts = 0
    elif attempts > 1:
        report.retries += attempts - 1
    finished = get("finished_at")
    if type(finished) is str:
        if report.first_finished is None or finished < report.first_finished:
            report.first_finished = finished
        if report.last_finished is None or finished > report.last_finished:
            report.last_finished = finished
    response = get("response")
    duration = _duration(record)
    status = get("status")
    if status == "ok":
        if type(response) is dict and response.get("status") == "processing":
            report.submitted += 1  # written before the submitted state existed
        else:
            report.ok += 1
        if duration is not None:
            report.audio_seconds += duration
            if report.charts:
                report.durations.append(duration)
        elif _number(get("duration")) is not None:
            report.implausible_durations += 1
    elif status == "submitted":
        report.submitted += 1
    else:
        report.failed += 1
        _add_failure(report, record)
    top = report.top
    if top <= 0:
        return
    processing = _processing(response, record)
    if processing is not None and (len(slow) < top or (processing, -seq) > slow[0][:2]):
        _push(slow, (processing, -seq, _entry(record, attempts, duration, processing)), top)
    if attempts > 1 and (len(tries) < top or (attempts, -seq) > tries[0][:2]):
        _push(tries, (attempts, -seq, _entry(record, attempts, duration, processing)), top)


def _add_failure(report: Report, record: dict[str, Any]) -> None:
    get = record.get
    cause = get("cause")
    report.failed_by_cause[cause if isinstance(cause, str) and cause else "unknown"] += 1
    status = get("http_status")
    report.failed_by_status[str(status) if type(status) is int else "none"] += 1
    error = get("error")
    error = _one_line(error) if isinstance(error, str) and error else "(no message)"
    if error in report.errors or len(report.errors) < _MAX_ERRORS:
        report.errors[error] += 1


def _duration(record: dict[str, Any]) -> float | None:
    """The record's audio seconds, if a plausible number (as ``audio.plausible_seconds``)."""
    duration = record.get("duration")
    if (type(duration) is float or type(duration) is int) and 0 <= duration <= MAX_AUDIO_SECONDS:
        return cast(float, duration)
    return None


def _processing(response: object, record: dict[str, Any] | None = None) -> float | None:
    """The server's processing time (ms) in a record's ``response``, if it gave one (Pulse
    Pro does); else the request's round trip as the client measured it (``elapsed_ms``)."""
    if type(response) is dict:
        meta = response.get("metadata")
        if type(meta) is dict:
            ms = _ms_or_none(meta.get("processing_time_ms"))
            if ms is not None:
                return ms
    return None if record is None else _ms_or_none(record.get("elapsed_ms"))


def _ms_or_none(value: object) -> float | None:
    ms = _number(value)
    return ms if ms is None or 0 <= ms <= _MAX_MS else None


def _processing_times(responses: list[Any], records: list[dict[str, Any]]) -> list[float | None]:
    """:func:`_processing` of each response and record, as C-level passes."""
    times = _server_times(responses)
    if None not in times:
        return times
    elapsed = _column(records, "elapsed_ms")
    return [t if t is not None else _ms_or_none(e) for t, e in zip(times, elapsed, strict=True)]


def _server_times(responses: list[Any]) -> list[float | None]:
    """The server's ``metadata.processing_time_ms`` of each response (None where absent)."""
    metas = _column(_dicts(responses), "metadata")
    types = set(map(type, metas))
    if types <= _NONE:
        return [None] * len(metas)
    values = _column(_dicts(metas, types), "processing_time_ms")
    types = set(map(type, values))
    if types <= _NUMBER and min(values) >= 0 and max(values) <= _MAX_MS:  # (orjson: no NaN)
        return list(map(float, values))
    if types <= _NONE:
        return values
    return [
        float(v) if (type(v) is int or type(v) is float) and 0 <= v <= _MAX_MS else None
        for v in values
    ]


def _dicts(values: list[Any], types: set[type] | None = None) -> list[Any]:
    """``values``, with an empty dict for each one that is not a dict (it has no fields)."""
    if (types if types is not None else set(map(type, values))) <= _DICT:
        return values
    return [v if type(v) is dict else _NO_FIELDS for v in values]


def _entry(
    record: dict[str, Any], attempts: int, duration: float | None, processing: float | None
) -> dict[str, Any]:
    return {
        "id": display_id(record["id"]),
        "status": record["status"] if record.get("status") in _DONE else "failed",
        "cause": record.get("cause"),
        "attempts": attempts,
        "processing_time_ms": processing,
        "duration": duration,
        "finished_at": record.get("finished_at"),
    }


def _push(heap: list[tuple[Any, int, dict[str, Any]]], item: Any, size: int) -> None:
    """Keep the ``size`` largest; among equal keys the earliest (``-seq`` is larger)."""
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)


def _add_run(report: Report, body: bytes, seen: set[str]) -> None:
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if not isinstance(event, dict):
        return
    run_id = str(event.get("run_id"))
    if run_id in seen:  # the same run in two files (e.g. a merged file and its inputs)
        return
    seen.add(run_id)
    report.runs.append({k: v for k, v in event.items() if k != "event"})


def _add_to_timeline(report: Report, record: dict[str, Any]) -> None:
    """Add one record's finish time: the reference for :meth:`_Tally._add_times`."""
    run = record.get("run")
    when = epoch(record.get("finished_at"))
    if isinstance(run, str) and when is not None:
        times = report.timeline.get(run)
        if times is None:
            times = report.timeline[run] = array("d")
        times.append(when)


def epoch(text: object) -> float | None:
    """Seconds since the epoch of an ISO 8601 time (``…Z`` or with an offset); None if not one."""
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


_WHOLE_SECOND = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
)  # where the writer's times, cut before their milliseconds, all mean what epoch() reads
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def epochs(texts: list[Any]) -> list[float | None]:
    """:func:`epoch` of each value: the same floats, for a batch of the writer's times at once.

    The writer's ``YYYY-MM-DDTHH:MM:SS.mmmZ`` is read as C-level passes: each distinct second
    is parsed once, and the milliseconds are added in integer microseconds then divided, as
    ``datetime.timestamp`` does, so the result is the same to the last bit. A time that
    repeats is read once; other values go through :func:`epoch` one at a time.
    """
    n = len(texts)
    if not n or not set(map(type, texts)) <= _STR:
        return list(map(epoch, texts))
    distinct = dict.fromkeys(texts)
    if len(distinct) * 2 <= n:
        keys = list(distinct)
        return list(map(dict(zip(keys, _epochs(keys), strict=True)).__getitem__, texts))
    return _epochs(texts)


def _epochs(texts: list[str]) -> list[float | None]:
    """:func:`epochs` of strings: the writer's times as C-level passes, others one at a time."""
    n = len(texts)
    if set(map(len, texts)) == {24}:
        tails = "".join(map(operator.getitem, texts, repeat(slice(19, None))))  # ".mmmZ" each
        millis = tails[1::5] + tails[2::5] + tails[3::5]
        if (
            tails[::5] == "." * n
            and tails[4::5] == "Z" * n
            and millis.isascii()
            and millis.isdigit()
        ):
            seconds: list[str] = list(map(operator.getitem, texts, repeat(slice(0, 19))))
            starts = {second: _micros(second) for second in dict.fromkeys(seconds)}
            if None not in starts.values():
                millis_each: list[str] = list(map(operator.getitem, texts, repeat(slice(20, 23))))
                ms = map(int, millis_each)
                micros = map(
                    operator.add,
                    map(cast(dict[str, int], starts).__getitem__, seconds),
                    map(operator.mul, ms, repeat(1000)),
                )
                return list(map(operator.truediv, micros, repeat(1_000_000)))
    return list(map(epoch, texts))


def _micros(second: str) -> int | None:
    """Microseconds from the epoch to ``YYYY-MM-DDTHH:MM:SS`` UTC; None if not a valid time."""
    if not _WHOLE_SECOND.fullmatch(second):
        return None
    try:
        when = datetime.fromisoformat(second + "+00:00")
    except ValueError:
        return None
    return (when - _EPOCH) // _MICROSECOND


def display_id(item_id: str) -> str:
    """An id fit to print: a URL's query (often a signature) hidden, control characters escaped."""
    if "://" in item_id and ("?" in item_id or "#" in item_id):
        cut = min(i for i in (item_id.find("?"), item_id.find("#")) if i >= 0)
        item_id = item_id[:cut] + "?…"
    return _one_line(item_id)


def _one_line(text: str) -> str:
    text = (
        text
        if text.isprintable()
        else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    )
    return text if len(text) <= 300 else text[:300] + "…"


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return float(value)
    return None


def _text(value: object) -> str:
    return "-" if value is None else _one_line(str(value))


def _int(value: object) -> str:
    return f"{value:,}" if type(value) is int else "-"


def _float(value: object) -> str:
    number = _number(value)
    return "-" if number is None or not abs(number) < _MAX_SHOWN else f"{number:,.1f}"


def _ms(value: object) -> str:
    number = _number(value)
    if number is None or number < 0:
        return "-"
    return f"{number:,.0f} ms" if number < 1000 else _seconds(number / 1000)


def _seconds(value: object) -> str:
    """Seconds for people; "-" for none, and for a negative or absurd value (a corrupt record)."""
    number = _number(value)
    if number is None or not 0 <= number < _MAX_SHOWN:
        return "-"
    if number < 120:
        return f"{number:.1f} s"
    if number < 7200:
        return f"{number / 60:.1f} min"
    return f"{number / 3600:.2f} h"


# ------------------------------------------------------------------------------ failed items


def parse_causes(values: Sequence[str] | None) -> frozenset[str] | None:
    """The causes named by ``--cause`` values (repeatable, comma lists); None for all.

    Raises ConfigError naming an unknown cause and listing the known ones.
    """
    if not values:
        return None
    causes: set[str] = set()
    for value in values:
        for name in value.split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in CAUSES:
                raise ConfigError(
                    f"--cause {name!r} is not a failure cause; use one of: {', '.join(CAUSES)}"
                )
            causes.add(name)
    return frozenset(causes) if causes else None


def failed_manifest(
    paths: Sequence[str],
    *,
    causes: Collection[str] | None = None,
    counts: ReadCounts | None = None,
) -> Iterator[dict[str, Any]]:
    """Manifest entries (for ``batchscribe run``) of the items whose final state is failed.

    Each entry has the item's ``id``, its ``path`` (a local file, as resolved when it was sent)
    or ``url``, its per-item Pulse parameters when the record kept them (``params``), and the
    manifest's extra fields (``metadata``), so a rerun of the entries into the same results
    file with ``--retry-failed`` supersedes exactly the failed records.

    Args:
        paths: results files, in order.
        causes: only failures with one of these causes (None: every failure).
        counts: filled in with what the files hold.
    """
    for _, _, record in final_states(paths, counts=counts):
        if record.get("status") in _DONE:
            continue  # ok, or submitted (its transcript is on its way to the webhook)
        if causes is not None and record.get("cause") not in causes:
            continue
        source = record.get("source")
        if not isinstance(source, str) or not source:
            continue  # cannot be sent again: nothing says where its audio is
        entry: dict[str, Any] = {"id": record["id"]}
        is_url = source.startswith(("http://", "https://"))
        entry["url" if is_url else "path"] = source
        params = record.get("params")
        if isinstance(params, dict):
            entry.update((k, v) for k, v in params.items() if k not in entry)
        metadata = record.get("metadata")
        if isinstance(metadata, dict):
            entry.update((k, v) for k, v in metadata.items() if k not in entry)
        yield entry


# ------------------------------------------------------------------------------ HTML page
# One self-contained page: inline CSS, SVG drawn here, no script, nothing fetched. Colours are
# Tableau 10 (distinguishable, colour-blind friendly); every chart has axis titles and a legend
# or direct labels.

_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")
_OK = "#59a14f"
_SUBMITTED = "#4e79a7"
_CAUSE_COLOURS = {
    "5xx": "#e15759", "429": "#f28e2b", "network": "#b07aa1", "timeout": "#9c755f",
    "4xx": "#d37295", "missing": "#79706e", "invalid": "#bab0ac", "too_large": "#edc948",
    "file_changed": "#76b7b2", "redirect": "#ff9da7", "language": "#86bcb6",
}  # fmt: skip
_MAX_RUN_LINES = 8
_CSS = """
:root{--fg:#1f2933;--muted:#66768a;--line:#e4e7ec;--bg:#f5f6f8;--card:#fff}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:28px 24px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:15px;margin:0}
.sub{color:var(--muted);font-size:13px;margin:2px 0 0}
.tiles{display:grid;grid-template-columns:repeat(6,1fr);gap:12px;margin:20px 0 16px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.tile .k{color:var(--muted);font-size:11px;text-transform:uppercase;letter-spacing:.05em}
.tile .v{font-size:24px;font-weight:650;margin-top:2px;font-variant-numeric:tabular-nums}
.tile .d{color:var(--muted);font-size:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:16px 18px;margin:0 0 16px}
.card .sub{margin-bottom:10px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.grid2 .card{margin:0}
.row{margin-bottom:16px}
svg{display:block;width:100%;height:auto}
svg text{font-size:12px;fill:#5b6675}
svg .axis{font-size:12.5px;fill:#3b4656}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;margin-top:8px;font-size:12.5px;color:#3b4656}
.sw{display:inline-block;width:12px;height:12px;border-radius:3px;margin-right:6px;vertical-align:-1px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600;font-size:12px}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap;width:1%}
td.id{word-break:break-all}
.empty{color:var(--muted);padding:24px 0;text-align:center}
footer{color:var(--muted);font-size:12px;margin-top:24px}
"""


def render_html(report: Report, *, title: str = "batchscribe report", generated: str = "") -> str:
    """The report as one self-contained HTML page (build the report with ``charts=True``)."""
    # The durations sorted once for both their summary and histogram, and dropped before the
    # timeline sorts its finish times (each a list of floats as long as the file).
    durations = sorted(report.durations)
    duration_card = _card(
        "Audio duration of transcribed items",
        _duration_summary(durations),
        _histogram(durations),
    )
    del durations
    share = f"{100 * report.ok / report.items:.1f}% of items" if report.items else "no items"
    causes = ", ".join(f"{k} {n:,}" for k, n in report.failed_by_cause.most_common(3))
    tiles = [
        ("Items", f"{report.items:,}", f"{report.counts.records:,} records read"),
        ("OK", f"{report.ok:,}", share),
        ("Failed", f"{report.failed:,}", causes or "none"),
        (
            "Audio transcribed",
            _hours(report.audio_seconds),
            f"over {report.ok:,} ok items",
        ),
        ("Retries spent", f"{report.retries:,}", "attempts beyond the first"),
        ("Runs", f"{len(report.runs):,}", _span(report)),
    ]
    outcomes = [("ok", report.ok, _OK)]
    if report.submitted:
        outcomes.append(("submitted (webhook)", report.submitted, _SUBMITTED))
    outcomes += [
        (f"failed: {cause}", n, _CAUSE_COLOURS.get(cause, "#e15759"))
        for cause, n in report.failed_by_cause.most_common()
    ]
    statuses = [
        (f"HTTP {s}" if s != "none" else "no response", n, _status_colour(s))
        for s, n in report.failed_by_status.most_common()
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{escape(", ".join(report.files))}'
        + (f" · generated {escape(generated)}" if generated else "")
        + "</p>",
        '<div class="tiles">',
        *(
            f'<div class="tile"><div class="k">{escape(k)}</div><div class="v">{escape(v)}</div>'
            f'<div class="d">{escape(d)}</div></div>'
            for k, v, d in tiles
        ),
        "</div>",
        _card(
            "Items finished over time, per run",
            "Cumulative items finished (ok or failed) since each run started.",
            _timeline_chart(report),
        ),
        '<div class="grid2 row">',
        _card("Outcomes and failure causes", "Final state of every item.", _bars(outcomes)),
        _card(
            "Failures by HTTP status",
            "The last HTTP status of each failed item (none: no response).",
            _bars(statuses) if statuses else '<div class="empty">No failures.</div>',
        ),
        "</div>",
        duration_card,
        _card("Runs", "The latest runs recorded (newest last).", _runs_table(report)),
        '<div class="grid2 row">',
        _card(
            "Slowest items",
            "By the server's processing time.",
            _items_table(report.slowest, "processing"),
        ),
        _card("Most attempts", "Items that needed retries.", _items_table(report.most_attempts)),
        "</div>",
        _card("Most common errors", "Final failures, by message.", _errors_table(report)),
        f"<footer>batchscribe · {report.counts.unreadable:,} unreadable line(s) skipped · "
        f"{report.superseded:,} superseded record(s)</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:,.0f} h" if hours >= 100 else f"{hours:,.2f} h"


def _status_colour(status: str) -> str:
    """Failure colours by kind: server errors red, rate limits orange, no response grey."""
    if status == "none":
        return _CAUSE_COLOURS["missing"]
    if status == "429":
        return _CAUSE_COLOURS["429"]
    return _CAUSE_COLOURS["5xx"] if status.startswith("5") else _CAUSE_COLOURS["4xx"]


def _card(title: str, subtitle: str, body: str) -> str:
    return (
        f'<section class="card"><h2>{escape(title)}</h2><p class="sub">{escape(subtitle)}</p>'
        f"{body}</section>"
    )


def _span(report: Report) -> str:
    if not report.first_finished or not report.last_finished:
        return ""
    first, last = report.first_finished[:10], report.last_finished[:10]
    return first if first == last else f"{first} to {last}"


def _nice_step(span: float, count: int) -> float:
    raw = max(span, 1e-9) / max(count, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw)


def _ticks(top: float, count: int = 5, *, whole: bool = False) -> list[float]:
    """Evenly spaced round ticks from 0 covering ``top``."""
    step = _nice_step(top, count)
    if whole:
        step = max(1.0, math.ceil(step))
    n = max(1, math.ceil(top / step - 1e-9))
    return [i * step for i in range(n + 1)]


def _fmt_tick(value: float) -> str:
    if value >= 1000 and value == int(value):
        return f"{int(value):,}"
    return f"{value:g}"


def _axes(
    h: int, box: tuple[int, int, int, int], xs: list[float], ys: list[float],
    x_title: str, y_title: str, *, x_labels: list[str] | None = None, x_grid: bool = False,
) -> tuple[list[str], Any, Any]:  # fmt: skip
    """Gridlines, tick labels and axis titles; returns the parts and x/y scale functions.

    ``ys`` empty: no horizontal gridlines (bar charts); ``x_grid``: vertical gridlines.
    """
    left, top, right, bottom = box
    x_max = xs[-1] or 1.0
    y_max = (ys[-1] if ys else 1.0) or 1.0

    def sx(v: float) -> float:
        return left + (right - left) * v / x_max

    def sy(v: float) -> float:
        return bottom - (bottom - top) * v / y_max

    out = []
    for y in ys:
        out.append(
            f'<line x1="{left}" x2="{right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            f'stroke="{"#c3c9d2" if y == 0 else "#eceef2"}"/>'
            f'<text x="{left - 8}" y="{sy(y) + 4:.1f}" text-anchor="end">{_fmt_tick(y)}</text>'
        )
    labels = x_labels or [_fmt_tick(x) for x in xs]
    for x, label in zip(xs, labels, strict=True):
        if x_grid:
            out.append(
                f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{bottom}" '
                f'stroke="{"#c3c9d2" if x == 0 else "#eceef2"}"/>'
            )
        out.append(
            f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{bottom}" y2="{bottom + 5}" '
            'stroke="#c3c9d2"/>'
            f'<text x="{sx(x):.1f}" y="{bottom + 19}" text-anchor="middle">{label}</text>'
        )
    out.append(
        f'<text class="axis" x="{(left + right) / 2:.0f}" y="{h - 6}" text-anchor="middle">'
        f"{escape(x_title)}</text>"
    )
    if y_title:
        out.append(
            f'<text class="axis" transform="translate(16 {(top + bottom) / 2:.0f}) rotate(-90)" '
            f'text-anchor="middle">{escape(y_title)}</text>'
        )
    return out, sx, sy


def _left_margin(ys: list[float]) -> int:
    """Room for the widest y tick label (about 7 px a character) and the y axis title."""
    return 40 + 7 * max(len(_fmt_tick(y)) for y in ys)


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds <= 180:
        return 1.0, "s"
    if seconds <= 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _timeline_chart(report: Report) -> str:
    if not report.timeline:
        return '<div class="empty">No finish times recorded.</div>'
    starts = {str(run.get("run_id")): epoch(run.get("started_at")) for run in report.runs}
    series: list[tuple[str, float, list[float]]] = []  # (run id, start, sorted finish times)
    for run_id, times in report.timeline.items():
        ordered = sorted(times)
        start = starts.get(run_id)
        if start is None or start > ordered[0]:
            start = ordered[0]
        series.append((run_id, start, ordered))
    series.sort(key=lambda s: s[1])
    hidden = max(0, len(series) - _MAX_RUN_LINES)
    series = series[hidden:]
    longest = max(times[-1] - start for _, start, times in series) or 1.0
    scale, unit = _time_unit(longest)
    w, h = 1040, 330
    box = (64, 14, w - 20, h - 50)
    xs = _ticks(longest / scale, 8)
    ys = _ticks(max(len(times) for _, _, times in series), 5, whole=True)
    box = (_left_margin(ys), *box[1:])
    out, sx, sy = _axes(h, box, xs, ys, f"time since the run started ({unit})", "items finished")
    legend = []
    buckets = 200
    for i, (run_id, start, finished) in enumerate(series):
        colour = _PALETTE[i % len(_PALETTE)]
        span = finished[-1] - start
        points = [(0.0, 0)]
        for b in range(1, buckets + 1):
            t = start + span * b / buckets
            points.append(((t - start) / scale, bisect_right(finished, t)))
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2.5" '
            'stroke-linejoin="round" stroke-linecap="round"/>'
        )
        x_end, y_end = points[-1]
        out.append(f'<circle cx="{sx(x_end):.1f}" cy="{sy(y_end):.1f}" r="3.5" fill="{colour}"/>')
        when = datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        legend.append(
            f'<span><span class="sw" style="background:{colour}"></span>run '
            f"{escape(run_id[:12])} · {escape(when)} · {len(finished):,} items</span>"
        )
    if hidden:
        legend.append(f"<span>(the latest {len(series)} of {len(series) + hidden} runs)</span>")
    return (
        f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="items finished over time per run">'
        + "".join(out)
        + f'</svg><div class="legend">{"".join(legend)}</div>'
    )


def _bars(rows: list[tuple[str, int, str]]) -> str:
    rows = [row for row in rows if row[1] > 0]
    if not rows:
        return '<div class="empty">No items.</div>'
    w, row_h = 500, 30
    h = 16 + row_h * len(rows) + 46
    box = (150, 10, w - 60, 10 + row_h * len(rows))
    xs = _ticks(max(n for _, n, _ in rows), 4, whole=True)
    out, sx, _ = _axes(h, box, xs, [], "items", "", x_grid=True)
    for i, (label, n, colour) in enumerate(rows):
        y = box[1] + i * row_h + 5
        width = max(1.5, sx(n) - box[0])
        out.append(
            f'<text x="{box[0] - 8}" y="{y + 15}" text-anchor="end" class="axis">'
            f"{escape(label)}</text>"
            f'<rect x="{box[0]}" y="{y}" width="{width:.1f}" height="{row_h - 10}" rx="3" '
            f'fill="{colour}"/>'
            f'<text x="{box[0] + width + 6:.1f}" y="{y + 15}">{n:,}</text>'
        )
    return f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="bar chart">{"".join(out)}</svg>'


def _quantile(ordered: Sequence[float], q: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def _duration_summary(ordered: Sequence[float]) -> str:
    """The summary of the durations (sorted)."""
    if not ordered:
        return "No ok items with a duration."
    return (
        f"{len(ordered):,} ok items · median {_seconds(_quantile(ordered, 0.5))} · "
        f"90th percentile {_seconds(_quantile(ordered, 0.9))} · "
        f"longest {_seconds(ordered[-1])}"
    )


def _histogram(ordered: Sequence[float]) -> str:
    """The histogram of the durations (sorted)."""
    if not ordered:
        return '<div class="empty">No ok items with a duration.</div>'
    p99 = _quantile(ordered, 0.99)
    longest = ordered[-1]
    cap = longest if longest <= 2 * p99 or p99 <= 0 else p99  # a long tail goes in the last bin
    scale, unit = _time_unit(cap)
    top = max(cap / scale, 1e-3)
    step = _nice_step(top, 24)
    bins = max(1, math.ceil(top / step - 1e-9))
    if bins * step <= top:
        bins += 1
    counts = _bin_counts(ordered, bins, scale, step)
    overflow = longest > bins * step * scale
    w, h = 1040, 300
    box = (64, 14, w - 20, h - 50)
    xs = [i * step for i in range(bins + 1)]
    stride = max(1, math.ceil(len(xs) / 12))
    labels = [(_fmt_tick(round(x, 6)) if i % stride == 0 else "") for i, x in enumerate(xs)]
    if overflow:
        labels[-1] = "+"
    ys = _ticks(max(counts), 5, whole=True)
    box = (_left_margin(ys), *box[1:])
    x_title = f"audio duration ({unit})" + (", last bin: everything longer" if overflow else "")
    out, sx, sy = _axes(h, box, xs, ys, x_title, "items", x_labels=labels)
    for i, n in enumerate(counts):
        if not n:
            continue
        x0, x1 = sx(xs[i]) + 1, sx(xs[i + 1]) - 1
        out.append(
            f'<rect x="{x0:.1f}" y="{sy(n):.1f}" width="{max(1.0, x1 - x0):.1f}" '
            f'height="{sy(0) - sy(n):.1f}" rx="2" fill="{_PALETTE[0]}">'
            f"<title>{_fmt_tick(round(xs[i], 6))}–{_fmt_tick(round(xs[i + 1], 6))} {unit}: "
            f"{n:,} items</title></rect>"
        )
    label = 'role="img" aria-label="duration histogram"'
    return f'<svg viewBox="0 0 {w} {h}" {label}>{"".join(out)}</svg>'


def _bin_counts(ordered: Sequence[float], bins: int, scale: float, step: float) -> list[int]:
    """How many of the (sorted) values fall in each bin; the last bin takes the rest.

    The same counts as ``counts[min(bins - 1, int(value / scale / step))] += 1`` for each
    value (a negative one in the first), but taken a run of values at a time: the bin grows
    with the value, so a binary search finds where each run ends.
    """
    counts = [0] * bins

    def bin_of(value: float) -> int:  # may be past the last bin; a negative value: the first
        return max(0, int(value / scale / step))

    i = 0
    while i < len(ordered):
        b = bin_of(ordered[i])
        j = len(ordered) if b >= bins - 1 else bisect_right(ordered, b, lo=i, key=bin_of)
        counts[min(bins - 1, b)] += j - i
        i = j
    return counts


def _table(head: list[tuple[str, bool]], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<div class="empty">{escape(empty)}</div>'
    cells = "".join(
        f'<th class="n">{escape(h)}</th>' if n else f"<th>{escape(h)}</th>" for h, n in head
    )
    body = []
    for row in rows:
        tds = []
        for (_, numeric), cell in zip(head, row, strict=True):
            cls = ' class="n"' if numeric else (' class="id"' if cell and len(cell) > 24 else "")
            tds.append(f"<td{cls}>{escape(cell)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _runs_table(report: Report) -> str:
    runs = report.runs[-20:]
    rows = [
        [
            _text(run.get("run_id"))[:12], _text(run.get("started_at")),
            _seconds(run.get("wall_seconds")), _int(run.get("ok")), _int(run.get("failed")),
            _int(run.get("retries")), _float(run.get("items_per_second")),
            "interrupted" if run.get("interrupted") else ("aborted" if run.get("aborted") else ""),
        ]
        for run in runs
    ]  # fmt: skip
    head = [("run", False), ("started", False), ("wall", True), ("ok", True), ("failed", True),
            ("retries", True), ("items/s", True), ("", False)]  # fmt: skip
    return _table(head, rows, "No run records.")


def _items_table(entries: list[dict[str, Any]], kind: str = "attempts") -> str:
    rows = []
    for e in entries:
        status = e["status"] + (f" ({e['cause']})" if e["cause"] else "")
        processing = e["processing_time_ms"]
        time = _ms(processing)
        rows.append([e["id"], status, str(e["attempts"]), time, _seconds(e["duration"])])
    head = [("item", False), ("state", False), ("attempts", True), ("processing", True),
            ("audio", True)]  # fmt: skip
    return _table(head, rows, "None." if kind == "attempts" else "No processing times.")


def _errors_table(report: Report) -> str:
    rows = [[f"{n:,}", error] for error, n in report.errors.most_common(report.top)]
    return _table([("items", True), ("error", False)], rows, "No failures.")
