"""``--dry-run``: what a run would do with each item, without sending or writing anything."""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from batchscribe import manifest
from batchscribe.audio import audio_duration
from batchscribe.errors import ConfigError
from batchscribe.items import CLOUD_OBJECT, LOCAL_FILE, URL
from batchscribe.manifest import Item, Problem
from batchscribe.pulse import Outcome, PulseParams
from batchscribe.results import ResumeState, Skipped, damaged_lines, scan
from batchscribe.run.plan import SEND_ACTIONS, check_file, decide, reader_settles
from batchscribe.shard import Shard, ShardFilter


def read_resume_state(path: str, *, fingerprints: bool) -> ResumeState:
    """The resume state of a results file, read-only and without its lock (for dry runs)."""
    try:
        # Non-blocking open, then fstat: a FIFO named as the results file must not hang the
        # dry run (the run refuses it as not a regular file; so does the dry run).
        with open(path, "rb", buffering=1 << 20, opener=_open_nonblocking) as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                raise ConfigError(f"{path}: results path is not a regular file")
            return scan(stream, fingerprints=fingerprints)
    except FileNotFoundError:
        return ResumeState()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read results file: {exc.strerror}") from None


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


@dataclass
class Plan:
    """The counts of a dry run."""

    actions: dict[str, int] = field(default_factory=dict)
    invalid: int = 0
    problems: list[str] = field(default_factory=list)
    bytes_to_send: int = 0
    audio_seconds: float = 0.0
    unknown_duration: int = 0
    url_items: int = 0
    #: items a run would record failed without a request (a missing file, a FIFO, ...), by error
    unfit: Counter[str] = field(default_factory=Counter)

    @property
    def to_send(self) -> int:
        return sum(n for action, n in self.actions.items() if action in SEND_ACTIONS)

    def estimate_seconds(self, concurrency: int, rate: float | None = None) -> float:
        """A rough wall time: per request ~0.5 s plus audio/20 (Pulse runs ~20x real time)."""
        known = self.to_send - self.unknown_duration
        mean_audio = self.audio_seconds / known if known > 0 else 60.0
        per_request = 0.5 + mean_audio / 20.0
        seconds = self.to_send * per_request / max(1, concurrency)
        if rate:
            seconds = max(seconds, self.to_send / rate)
        return seconds

    def lines(
        self, *, concurrency: int, price_per_hour: float | None, rate: float | None = None
    ) -> list[str]:
        a = self.actions
        out = [
            "dry run: nothing sent, nothing written",
            f"items: {sum(a.values()) + self.unfit.total()}  to send: {self.to_send} "
            f"(new: {a.get('new', 0)}, retry failed: {a.get('retry', 0)}, "
            f"changed: {a.get('changed', 0)})",
            f"skipped: done: {a.get('done', 0)}  failed earlier: {a.get('failed', 0)}  "
            f"invalid lines: {self.invalid}",
            f"audio to send: {self.audio_seconds / 3600:.3f} h ({self.audio_seconds:.1f} s, "
            f"{self.bytes_to_send / 1e6:.1f} MB)"
            + (f"; duration unknown for {self.unknown_duration} item(s)" if self.unknown_duration
               else ""),
        ]  # fmt: skip
        if self.unfit:
            why = ", ".join(f"{error}: {n}" for error, n in self.unfit.most_common())
            out.insert(2, f"to fail without a request: {self.unfit.total()} ({why})")
        if price_per_hour is not None:
            cost = self.audio_seconds / 3600 * price_per_hour
            out.append(f"estimated cost: {cost:.2f} at {price_per_hour:g} per audio hour")
        seconds = self.estimate_seconds(concurrency, rate)
        out.append(f"rough time at concurrency {concurrency}: {_human(seconds)}")
        return out


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def dry_run(
    sources: list[str],
    out: str,
    *,
    retry_failed: bool,
    rescan_changed: bool,
    stdin: BinaryIO | None = None,
    workers: int = 8,
    shard: Shard | None = None,
    params: PulseParams | None = None,
) -> Plan:
    """Scan the sources against the results file and count what a run would do.

    With ``shard``, only that shard's items count (and bad lines only in shard 0), as in a run;
    with ``params`` (the run's Pulse parameters), an item whose own fields do not fit with them
    is a bad line, as in a run.
    """
    manifest.check_sources(sources)  # ManifestError is a ConfigError
    resume = read_resume_state(out, fingerprints=rescan_changed)
    plan = Plan()
    # The run's warning, word for word: a damaged line is not counted, so its item is sent.
    where = [(out, n) for n in resume.damaged]
    plan.problems += damaged_lines(where, resume.corrupt_lines, "not counted")
    to_measure: list[Item] = []

    def items() -> Iterator[Item]:
        settler = reader_settles(
            resume, shard, retry_failed=retry_failed, rescan_changed=rescan_changed
        )
        entries: Iterable[Item | Problem | Skipped] = manifest.iter_sources(
            sources, stdin=stdin, checked=True, settler=settler, defaults=params
        )
        if shard is not None:
            entries = ShardFilter(entries, shard)
        for entry in entries:
            if isinstance(entry, Skipped):  # settled by the reader: skipped
                _count_skipped(plan, entry)
            elif isinstance(entry, Problem):
                plan.invalid += 1
                plan.problems.append(str(entry))
            else:
                yield entry
        if settler is not None:
            _count_skipped(plan, settler.take())

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for item in items():
            action = decide(resume, item, retry_failed=retry_failed, rescan_changed=rescan_changed)
            if action in SEND_ACTIONS and item.kind is LOCAL_FILE:
                st, unfit = check_file(item.source)  # as the run decides, from a stat alone
                if unfit is not None:
                    plan.unfit[_unfit_label(unfit)] += 1
                    continue
                assert st is not None
                plan.bytes_to_send += st.st_size  # (an object's size comes with its header)
            plan.actions[action] = plan.actions.get(action, 0) + 1
            if action not in SEND_ACTIONS:
                continue
            if item.kind is URL:
                plan.url_items += 1
                plan.unknown_duration += 1
                continue
            to_measure.append(item)
            if len(to_measure) >= 1024:
                _measure(pool, to_measure, plan)
        _measure(pool, to_measure, plan)
    finally:
        # On Ctrl-C, headers not yet read are dropped rather than waited for.
        pool.shutdown(wait=True, cancel_futures=True)
    return plan


def _count_skipped(plan: Plan, skipped: Skipped | None) -> None:
    """Count the items the reader skipped (done earlier, failed earlier) as their actions."""
    if skipped is not None:
        for action, n in (("done", skipped.done), ("failed", skipped.failed)):
            if n:
                plan.actions[action] = plan.actions.get(action, 0) + n


def _unfit_label(unfit: Outcome) -> str:
    """The error of a file a run would not send, without the size in "file is N MB, ..."."""
    if unfit.cause == "too_large":
        return "over the API's 250 MB limit"
    return unfit.error or unfit.cause or "cannot be sent"


def _size_and_duration(item: Item) -> tuple[int, float | None]:
    """(bytes not yet counted, audio seconds): a cloud object's from a ranged GET of its head."""
    if item.kind is CLOUD_OBJECT:
        from batchscribe import cloud

        return cloud.header_duration(item.source)
    return 0, audio_duration(item.source)


def _measure(pool: ThreadPoolExecutor, batch: list[Item], plan: Plan) -> None:
    for size, duration in pool.map(_size_and_duration, batch):
        plan.bytes_to_send += size
        if duration is None:
            plan.unknown_duration += 1
        else:
            plan.audio_seconds += duration
    batch.clear()
