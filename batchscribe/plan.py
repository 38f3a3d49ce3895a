"""What a run will do with each item, and ``--dry-run``: the plan without sending anything.

:func:`decide` is the one place that turns an item and the resume state into an action; the
engine and the dry run both use it, so a dry run predicts exactly what a run sends.
"""

from __future__ import annotations

import operator
import os
import stat
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import compress
from typing import BinaryIO

from batchscribe import cloud, manifest
from batchscribe.audio import audio_duration
from batchscribe.errors import ConfigError
from batchscribe.manifest import Item, Problem
from batchscribe.pulse import MAX_PAYLOAD, Outcome, PulseParams, Verdict
from batchscribe.results import ResumeState, SeenIds, damaged_lines, fingerprint, scan
from batchscribe.shard import Shard, ShardFilter, in_shard, in_shard_many

#: Actions: new (never recorded), retry (failed, and --retry-failed), changed (ok, but the file
#: changed since, with --rescan-changed): these are sent. done (ok, or submitted: the transcript
#: goes to a webhook) / failed: skipped.
SEND_ACTIONS = frozenset({"new", "retry", "changed"})
_MASK64 = (1 << 64) - 1


def decide(resume: ResumeState, item: Item, *, retry_failed: bool, rescan_changed: bool) -> str:
    """The action for one item: ``new``, ``retry``, ``changed``, ``done`` or ``failed``."""
    if not len(resume):
        return "new"
    key = resume.key(item.id)
    state = resume.status(key)
    if state is None:
        return "new"
    if state == "failed":
        return "retry" if retry_failed else "failed"
    if not rescan_changed or state == "submitted":
        return "done"  # (a submitted item's transcript is on its way: never paid for twice)
    if rescan_changed and not item.is_url:
        stored = resume.ok_fingerprint(key)
        if stored is not None and cloud.is_cloud_uri(item.source):
            # The listing's size and ETag/generation (or a HEAD for a manifest-named object).
            live = cloud.live_fingerprint(item.source, item.size, item.version)
            return "changed" if live is not None and live != stored else "done"
        if stored is not None:
            try:
                st = os.stat(item.source)
            except OSError:
                return "done"  # gone since: keep its transcript, nothing to send
            if fingerprint(st.st_size, st.st_mtime) != stored:
                return "changed"
    return "done"


def file_problem(st: os.stat_result) -> Outcome | None:
    """Why a local file with this ``stat`` must not be sent (None when it can be), as far as
    its stat tells: not a regular file (a folder, a FIFO, a device), empty, over 250 MB."""
    if not stat.S_ISREG(st.st_mode):
        return Outcome(Verdict.FAIL, None, "invalid", "not a regular file")
    if st.st_size == 0:
        return Outcome(Verdict.FAIL, None, "invalid", "empty file")
    if st.st_size > MAX_PAYLOAD:
        return Outcome(
            Verdict.FAIL, None, "too_large",
            f"file is {st.st_size / 1e6:.0f} MB, over the API's 250 MB limit",
        )  # fmt: skip
    return None


def check_file(path: str) -> tuple[os.stat_result | None, Outcome | None]:
    """A local file's stat (None when it cannot be had) and why it must not be sent (None when
    it can be): the one per-file decision of a run and of a dry run. Never opens the file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, Outcome(Verdict.FAIL, None, "missing", "file not found")
    except OSError as exc:
        return None, Outcome(Verdict.FAIL, None, "missing", f"cannot read file: {exc.strerror}")
    unfit = file_problem(st)
    if unfit is None and not os.access(path, os.R_OK):
        unfit = Outcome(Verdict.FAIL, None, "missing", "file is not readable (permission denied)")
    return st, unfit


def settled_action(
    resume: ResumeState, item_id: str, *, retry_failed: bool, rescan_changed: bool
) -> str | None:
    """``done`` or ``failed`` when :func:`decide` skips an item whatever else it holds
    (judged on its id alone), else None (an item to send, or one --rescan-changed must look at).
    """
    state = resume.status(resume.key(item_id))
    if state == "failed":
        return None if retry_failed else "failed"
    if (state == "ok" and not rescan_changed) or state == "submitted":
        return "done"
    return None


def reader_settles(
    resume: ResumeState,
    shard: Shard | None,
    *,
    retry_failed: bool,
    rescan_changed: bool,
    counts: list[int] | None = None,
    seen: SeenIds | None = None,
) -> manifest.Settled | None:
    """The ``settled`` hook for :func:`manifest.iter_sources`: :func:`settled_action` for the
    items of ``shard`` (None, so the item is built, for items of other shards, which the shard
    filter then drops). None when the resume state is empty (nothing to settle). With
    ``counts``, see :meth:`ResumeState.settler`: skips are counted there, not yielded."""
    if not len(resume):
        return None
    # As settled_action: ok is done unless --rescan-changed; failed is skipped unless retried.
    settle = resume.settler(
        None if rescan_changed else "done", None if retry_failed else "failed", counts, seen=seen
    )
    if shard is None:
        return settle

    def settled(item_id: str) -> str | None:
        return settle(item_id) if in_shard(item_id, shard) else None

    block = getattr(settle, "block", None)
    if block is not None and seen is not None:
        settled.block = _shard_block(block, seen, shard)  # type: ignore[attr-defined]
    return settled


def _shard_block(
    block: Callable[[list[str] | list[bytes]], str | None], seen: SeenIds, shard: Shard
) -> Callable[[list[str] | list[bytes]], str | None]:
    """The run-at-once hook (:meth:`ResumeState.settle_block`) for one shard's reader.

    The ids of this shard are settled by ``block``; the others pass the duplicate check (as
    the reader does for each item before the shard filter drops it) and are otherwise left
    alone, so no item is built only to be dropped. All or nothing, as ``block``: the others
    are checked first and added last, when nothing can fail any more.
    """

    def shard_block(ids: list[str] | list[bytes]) -> str | None:
        inside = in_shard_many(ids, shard)
        if all(inside):
            return block(ids)
        others = list(compress(ids, map(operator.not_, inside)))
        digests = list(map(_MASK64.__and__, map(hash, others)))  # seen.key(id): id_key
        if not seen.all_new(digests):
            return None  # a duplicate: line by line
        marker: str | None = ""  # nothing of this shard: nothing to count
        if len(others) < len(ids):
            marker = block(list(compress(ids, inside)))  # type: ignore[arg-type]
            if marker is None:
                return None
        deque(map(seen.add, digests), maxlen=0)
        return marker

    return shard_block


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
    to_measure: list[str] = []

    def items() -> Iterator[Item]:
        settled = reader_settles(
            resume, shard, retry_failed=retry_failed, rescan_changed=rescan_changed
        )
        entries: Iterable[Item | Problem | str] = manifest.iter_sources(
            sources, stdin=stdin, checked=True, settled=settled, defaults=params
        )
        if shard is not None:
            entries = ShardFilter(entries, shard)
        for entry in entries:
            if type(entry) is str:  # settled by the reader: skipped
                plan.actions[entry] = plan.actions.get(entry, 0) + 1
                continue
            if isinstance(entry, Problem):
                plan.invalid += 1
                plan.problems.append(str(entry))
                continue
            assert isinstance(entry, Item)
            yield entry

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for item in items():
            action = decide(resume, item, retry_failed=retry_failed, rescan_changed=rescan_changed)
            if action in SEND_ACTIONS and not item.is_url and not cloud.is_cloud_uri(item.source):
                st, unfit = check_file(item.source)  # as the run decides, from a stat alone
                if unfit is not None:
                    plan.unfit[_unfit_label(unfit)] += 1
                    continue
                assert st is not None
                plan.bytes_to_send += st.st_size  # (an object's size comes with its header)
            plan.actions[action] = plan.actions.get(action, 0) + 1
            if action not in SEND_ACTIONS:
                continue
            if item.is_url:
                plan.url_items += 1
                plan.unknown_duration += 1
                continue
            to_measure.append(item.source)
            if len(to_measure) >= 1024:
                _measure(pool, to_measure, plan)
        _measure(pool, to_measure, plan)
    finally:
        # On Ctrl-C, headers not yet read are dropped rather than waited for.
        pool.shutdown(wait=True, cancel_futures=True)
    return plan


def _unfit_label(unfit: Outcome) -> str:
    """The error of a file a run would not send, without the size in "file is N MB, ..."."""
    if unfit.cause == "too_large":
        return "over the API's 250 MB limit"
    return unfit.error or unfit.cause or "cannot be sent"


def _size_and_duration(source: str) -> tuple[int, float | None]:
    """(bytes not yet counted, audio seconds): a cloud object's from a ranged GET of its head."""
    if cloud.is_cloud_uri(source):
        return cloud.header_duration(source)
    return 0, audio_duration(source)


def _measure(pool: ThreadPoolExecutor, paths: list[str], plan: Plan) -> None:
    for size, duration in pool.map(_size_and_duration, paths):
        plan.bytes_to_send += size
        if duration is None:
            plan.unknown_duration += 1
        else:
            plan.audio_seconds += duration
    paths.clear()
