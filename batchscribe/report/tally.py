"""Totals over the final state of every id in results files: outcomes, causes, runs, the
slowest items.

:func:`build_report` streams the results files twice (see :func:`batchscribe.results.index_final`)
and keeps only counters, a few top-N heaps and, for charts, one float per item, so a
million-line results file is reported in seconds in a few tens of MB. :meth:`Report.lines` is
the text report, :meth:`Report.as_dict` the ``--json`` document (the HTML page is
:mod:`batchscribe.report.html`).

Fast path and reference side by side: :class:`_Tally` adds whole batches of records as C-level
passes (``map``, ``set`` of types, ``list.count``); :func:`_add_final` adds one record and is the
reference it must agree with (tests/test_report.py holds the two together on random files).
"""

from __future__ import annotations

import heapq
import operator
import re
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import reduce
from itertools import compress, repeat
from typing import Any, cast

import orjson

from batchscribe.audio import MAX_AUDIO_SECONDS
from batchscribe.report.failed import DONE
from batchscribe.report.text import (
    MAX_SHOWN,
    display_id,
    number,
    one_line,
    show_float,
    show_int,
    show_ms,
    show_seconds,
    show_text,
)
from batchscribe.results import (
    BATCH,
    FINAL,
    RUN,
    SUPERSEDED,
    ReadCounts,
    index_final,
    kind_table,
    load_light_many,
)

_MAX_MS = MAX_AUDIO_SECONDS * 1000
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
    #: ``report --price-per-hour``: the audio transcribed is also priced at this.
    price_per_hour: float | None = None
    #: With ``charts``: the audio seconds of every ok item, and per run the finish times
    #: (epoch seconds) of every record it wrote.
    durations: array[float] = field(default_factory=lambda: array("d"))
    timeline: dict[str, array[float]] = field(default_factory=dict)

    @property
    def superseded(self) -> int:
        """Records replaced by a later record of the same id (retried failures, rescans)."""
        return max(0, self.counts.records - self.items)

    @property
    def recorded_cost(self) -> tuple[float, int]:
        """The spend the runs recorded (a run with a spend cap or a price records its
        ``cost``) and how many of the runs did."""
        costs = [n for run in self.runs if (n := number(run.get("cost"), MAX_SHOWN)) is not None]
        return sum(costs), len(costs)

    def spend(self) -> dict[str, Any]:
        """The ``--json`` document's ``spend``: recorded by the runs, and at ``price_per_hour``."""
        cost, priced = self.recorded_cost
        price = self.price_per_hour
        estimate = None if price is None else round(self.audio_seconds / 3600 * price, 6)
        return {
            "recorded_cost": round(cost, 6) if priced else None,
            "priced_runs": priced,
            "price_per_hour": price,
            "estimated_cost": estimate,
        }

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
            "spend": self.spend(),
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
        out.extend(self._spend_lines())
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
                    f"  {show_text(run.get('run_id'))[:12]:<14}"
                    f"{show_text(run.get('started_at')):<26}"
                    f"{show_text(run.get('finished_at')):<26}"
                    f"{show_seconds(run.get('wall_seconds')):>10}"
                    f"{show_int(run.get('ok')):>9}{show_int(run.get('failed')):>8}"
                    f"{show_float(run.get('items_per_second')):>9}{flag}"
                )
        if self.slowest:
            out.append("slowest items (server processing time):")
            for entry in self.slowest:
                out.append(
                    f"  {show_ms(entry['processing_time_ms']):>10}  attempts {entry['attempts']}"
                    f"  audio {show_seconds(entry['duration'])}  {entry['id']}"
                )
        if self.most_attempts:
            out.append("most attempts:")
            for entry in self.most_attempts:
                cause = f" ({entry['cause']})" if entry["cause"] else ""
                out.append(
                    f"  {entry['attempts']:>3} attempts  {entry['status']}{cause}  {entry['id']}"
                )
        return out

    def _spend_lines(self) -> list[str]:
        cost, priced = self.recorded_cost
        out = []
        if priced:
            out.append(
                f"spend recorded by runs: ${cost:,.4f} ({priced} of {len(self.runs)} run(s) "
                "priced; a run killed outright records none)"
            )
        if self.price_per_hour is not None:
            estimate = self.audio_seconds / 3600 * self.price_per_hour
            out.append(f"audio transcribed at ${self.price_per_hour:g}/h: ${estimate:,.4f}")
        return out


def build_report(
    paths: Sequence[str],
    *,
    top: int = 10,
    charts: bool = False,
    price_per_hour: float | None = None,
) -> Report:
    """Report on the final state of every id across ``paths`` (read in order).

    Args:
        paths: results files; a later record of an id supersedes an earlier one.
        top: how many slowest / most-attempted items and common errors to keep.
        charts: also collect what the HTML charts need (one float per item and per record).
        price_per_hour: also price the audio transcribed at this (``--price-per-hour``).
    """
    report = Report(list(paths), top=top, charts=charts, price_per_hour=price_per_hour)
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
        elif number(get("duration")) is not None:
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
    error = one_line(error) if isinstance(error, str) and error else "(no message)"
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
    ms = number(value)
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
        "status": record["status"] if record.get("status") in DONE else "failed",
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
