"""``--dry-run``: what a run would do with each item, without sending or writing anything.

Per SOURCE and in total: the items to send, the requests (a long recording's chunks and a split
file's channels counted), the audio hours, the bytes as they are and (about) the bytes the run
would upload after the audio stage, and the cost. A local file is probed from its headers and
decided as the run decides (:func:`batchscribe.audio.probe.decide`); what preparation would make
is estimated, not made: FLAC at :data:`FLAC_BYTES_PER_S`, Opus at its bitrate, the chunks of a
long file from where cuts fall (:func:`estimate`).

With ``--pack``, the run's own :class:`~batchscribe.audio.pack.Packer` is fed each item the run
would pack (a local file sent as one request, of a length the headers tell, without a webhook),
keyed by its parameters, in feed order: the packs it makes are the requests packing would make
(:class:`Packing`), shown beside the requests without it, with the time at the rate and the
billed audio of the gaps between packed items.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from batchscribe import manifest
from batchscribe.audio import plausible_seconds
from batchscribe.errors import ConfigError
from batchscribe.ids import DigestSet, id_key
from batchscribe.items import LOCAL_FILE, URL
from batchscribe.manifest import Item, Problem
from batchscribe.pulse import Outcome, PulseParams
from batchscribe.results import ResumeState, Settler, Skipped, damaged_lines, scan
from batchscribe.run.plan import SEND_ACTIONS, check_file, decide, reader_settles
from batchscribe.shard import Shard, ShardFilter

if TYPE_CHECKING:
    from batchscribe.audio.pack import Pack, Packer
    from batchscribe.audio.probe import Decision, PrepPolicy, Probe

#: Bytes per audio second of 16 kHz mono FLAC, the audio stage's lossless output: 17.8 KB,
#: measured on the sample archive's recorded speech (raw 16-bit PCM is 32 KB/s: FLAC keeps
#: 56%). Silence takes less, noise more, so the dry run says "about".
FLAC_BYTES_PER_S = 17_800
#: The list price of an audio hour per model (pulse-api.md: the Standard plan, HTTP), for the
#: cost when ``--price-per-hour`` is not given.
LIST_PRICE_PER_HOUR = {"pulse": 0.21, "pulse-pro": 0.24}


def learned_rate(out: str, endpoint: str, model: str) -> float | None:
    """The rate (starts per second) the last run on results ``out`` learnt for this endpoint
    and model (``OUT.rate.json``), which the next run starts from; None when there is none."""
    from batchscribe.ratestore import hint_path, load_hint
    from batchscribe.run.admission import hint_scope

    if not os.path.exists(hint_path(out)):
        return None
    return load_hint(out, hint_scope(endpoint, model), time.time())


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
class SourceCount:
    """What a run would send for one SOURCE (the items it would send, not those it skips)."""

    items: int = 0
    requests: int = 0
    audio_seconds: float = 0.0
    #: audio the service bills: a split file's channels each count in full
    billed_seconds: float = 0.0
    bytes_as_is: int = 0
    #: about the bytes uploaded after preparation (a URL's audio is fetched by the service)
    bytes_upload: int = 0
    prepared: int = 0
    unknown_duration: int = 0
    #: with --pack: the items packed, the packs that start in this source (one request each)
    #: and the silence between their items (billed audio)
    packed: int = 0
    packs: int = 0
    gap_seconds: float = 0.0

    @property
    def requests_packed(self) -> int:
        """The requests with --pack: a pack's items make one."""
        return self.requests - self.packed + self.packs

    def add(self, other: SourceCount) -> None:
        for name in (f.name for f in dataclasses.fields(self)):
            setattr(self, name, getattr(self, name) + getattr(other, name))


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
    #: per SOURCE as given, in order: what a run would send from it
    sources: dict[str, SourceCount] = field(default_factory=dict)
    #: why local files would be prepared (``stereo``, ``long``, ...): files per reason
    reasons: Counter[str] = field(default_factory=Counter)
    #: the run's model (for its list price when no price is given)
    model: str = "pulse"
    #: --pack: the counts of packing are shown beside those without
    pack: bool = False

    @property
    def total(self) -> SourceCount:
        """The sums over every source."""
        total = SourceCount()
        for count in self.sources.values():
            total.add(count)
        return total

    @property
    def to_send(self) -> int:
        return sum(n for action, n in self.actions.items() if action in SEND_ACTIONS)

    def estimate_seconds(
        self, concurrency: int, rate: float | None = None, *, packed: bool = False
    ) -> float:
        """A rough wall time: per request ~0.5 s, plus audio/20 (Pulse runs ~20x real time)
        an item of unknown length counted at the mean; at ``rate``, every request (a chunk,
        a pack) is a start. ``packed``: the requests and billed audio of --pack."""
        total = self.total
        known = self.to_send - self.unknown_duration
        mean_audio = self.audio_seconds / known if known > 0 else 60.0
        audio = self.audio_seconds + self.unknown_duration * mean_audio
        requests = total.requests
        if packed:
            requests, audio = total.requests_packed, audio + total.gap_seconds
        seconds = (0.5 * requests + audio / 20.0) / max(1, concurrency)
        if rate:
            seconds = max(seconds, requests / rate)
        return seconds

    def lines(
        self,
        *,
        concurrency: int,
        price_per_hour: float | None,
        rate: float | None = None,
        learned: bool = False,
    ) -> list[str]:
        """The dry run's report; ``rate``: the run's start rate (``learned``: the one the last
        run learnt, said so)."""
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
        total = self.total
        price, whose = self._price(price_per_hour)
        out += self._audio_lines(total, price)
        for source, count in self.sources.items():
            out.append(f"  {source}: " + _source_line(count, price, pack=self.pack))
        if price is not None:
            cost = total.billed_seconds / 3600 * price
            out.append(f"estimated cost: {cost:.2f} at {price:g} per audio hour{whose}")
        seconds = self.estimate_seconds(concurrency, rate)
        at = f" and ~{rate * 60:.0f}/min (the rate learnt last time)" if rate and learned else ""
        out.append(f"rough time at concurrency {concurrency}{at}: {_human(seconds)}")
        if self.pack:
            packed = self.estimate_seconds(concurrency, rate, packed=True)
            out[-1] += f"; with --pack: {_human(packed)}"
        return out

    def _audio_lines(self, total: SourceCount, price: float | None) -> list[str]:
        """The requests (and with --pack, packing's) and the bytes to upload (the audio
        stage's effect), with why files would be prepared."""
        out = [f"requests: {total.requests} for {total.items} item(s)"]
        if total.prepared:
            why = ", ".join(f"{reason}: {n}" for reason, n in self.reasons.most_common())
            out[0] += f"; {total.prepared} file(s) to prepare ({why})"
        if self.pack:
            out.append(
                f"with --pack: {total.requests_packed} request(s): {total.packed} item(s) in "
                f"{total.packs} pack(s), {total.items - total.packed} sent alone; the gaps add "
                f"about {total.gap_seconds:.0f} s of billed audio"
            )
            if price is not None:
                out[-1] += f" (cost {total.gap_seconds / 3600 * price:.2f})"
        out.append(
            f"upload: about {_mb(total.bytes_upload)} after preparation "
            f"(as is: {_mb(total.bytes_as_is)})"
        )
        if total.billed_seconds > total.audio_seconds:
            out[-1] += f"; billed audio {total.billed_seconds / 3600:.3f} h (channels apart)"
        out.append("per source:")
        return out

    def _price(self, price_per_hour: float | None) -> tuple[float | None, str]:
        """The price of an audio hour: the one given, else the model's list price."""
        if price_per_hour is not None:
            return price_per_hour, ""
        price = LIST_PRICE_PER_HOUR.get(self.model)
        return price, f" (the list price of {self.model}; --price-per-hour to change)"


def _source_line(count: SourceCount, price: float | None, *, pack: bool = False) -> str:
    """One source's counts on one line (``pack``: with packing's)."""
    text = (
        f"{count.items} item(s), {count.requests} request(s), "
        f"{count.audio_seconds / 3600:.3f} h, upload about {_mb(count.bytes_upload)} "
        f"(as is {_mb(count.bytes_as_is)})"
    )
    if price is not None:
        text += f", cost {count.billed_seconds / 3600 * price:.2f}"
    if count.unknown_duration:
        text += f"; duration unknown for {count.unknown_duration}"
    if pack:
        text += (
            f"; --pack: {count.packed} item(s) in {count.packs} pack(s), "
            f"{count.items - count.packed} alone"
        )
    return text


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


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
    policy: PrepPolicy | None = None,
    packer: Packer | None = None,
) -> Plan:
    """Scan the sources against the results file and count what a run would do.

    With ``shard``, only that shard's items count (and bad lines only in shard 0), as in a run;
    with ``params`` (the run's Pulse parameters), an item whose own fields do not fit with them
    is a bad line, as in a run. ``policy``: the run's audio stage (``RunOptions.prep_policy``;
    default: a run's defaults), which decides how local files are sent. ``packer``: --pack's
    (``RunOptions.pack_seconds`` and ``pack_max_item``), fed the items a run would pack.
    """
    from batchscribe.audio.probe import PrepPolicy

    manifest.check_sources(sources)  # ManifestError is a ConfigError
    resume = read_resume_state(out, fingerprints=rescan_changed)
    params = params or PulseParams()
    plan = Plan(model=params.model, pack=packer is not None)
    policy = policy or PrepPolicy()
    packing = None if packer is None else Packing(packer, params, policy)
    # The run's warning, word for word: a damaged line is not counted, so its item is sent.
    where = [(out, n) for n in resume.damaged]
    plan.problems += damaged_lines(where, resume.corrupt_lines, "not counted")
    settler = reader_settles(
        resume, shard, retry_failed=retry_failed, rescan_changed=rescan_changed
    )
    seen = DigestSet(key=id_key)  # one duplicate check over every source, as in a run
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for source in sources:
            count = plan.sources.setdefault(source, SourceCount())
            batch: list[tuple[Item, str, int]] = []
            for item in _items(plan, [source], stdin, shard, params, settler, seen):
                action = decide(
                    resume, item, retry_failed=retry_failed, rescan_changed=rescan_changed
                )
                size = 0
                if action in SEND_ACTIONS and item.kind is LOCAL_FILE:
                    # as the run decides, from a stat alone (a big file is made smaller)
                    st, unfit = check_file(item.source, oversize_ok=policy.transcode != "off")
                    if unfit is not None:
                        plan.unfit[_unfit_label(unfit)] += 1
                        continue
                    assert st is not None
                    size = st.st_size
                if action not in SEND_ACTIONS:
                    plan.actions[action] = plan.actions.get(action, 0) + 1
                    continue
                batch.append((item, action, size))
                if len(batch) >= 1024:
                    _measure(pool, batch, plan, count, policy, packing)
            _measure(pool, batch, plan, count, policy, packing)
        if packing is not None:
            packing.finish()
        if settler is not None:
            _count_skipped(plan, settler.take())
    finally:
        # On Ctrl-C, headers not yet read are dropped rather than waited for.
        pool.shutdown(wait=True, cancel_futures=True)
    return plan


def _items(
    plan: Plan,
    sources: Sequence[str],
    stdin: BinaryIO | None,
    shard: Shard | None,
    params: PulseParams | None,
    settler: Settler | None,
    seen: DigestSet,
) -> Iterator[Item]:
    """The items of ``sources`` the reader does not settle; bad lines and skips counted."""
    entries: Iterable[Item | Problem | Skipped] = manifest.iter_sources(
        sources, stdin=stdin, seen=seen, checked=True, settler=settler, defaults=params
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


class Estimate(NamedTuple):
    """What a run would send for one item (see :func:`estimate`)."""

    requests: int
    bytes_upload: int
    audio_seconds: float | None
    billed_seconds: float
    reasons: tuple[str, ...] = ()
    #: why the run would fail it without a request (the label counted), or None
    unfit: str | None = None


def estimate(found: Probe, decision: Decision, policy: PrepPolicy) -> Estimate:
    """The requests, upload bytes and audio of a probed local file, as a run would send it.

    As is: one request of the file's bytes. Prepared: per track (one, or one per channel with
    ``--channels split``), a chunk per window of ``max_chunk`` (cuts fall in a window's last
    quarter: a chunk is 7/8 of ``max_chunk`` on average), FLAC at :data:`FLAC_BYTES_PER_S` or
    Opus at its bitrate. An unknown duration counts one request per track and the file's size.
    """
    from batchscribe.audio.prepare import TAIL

    duration = found.duration
    if decision.refuse is not None:
        return Estimate(
            0, 0, None, 0.0, decision.reasons, "cannot be sent as it is (--transcode off)"
        )
    if decision.as_is:
        return Estimate(1, found.size, duration, duration or 0.0)
    tracks = found.channels if policy.channels == "split" and found.channels > 1 else 1
    if duration is None:
        return Estimate(tracks, found.size, None, 0.0, decision.reasons)
    chunks = 1
    if duration > policy.max_chunk:
        chunks = math.ceil(duration / (policy.max_chunk * (1 - TAIL / 2)))
    rate = policy.opus_bitrate / 8 if policy.transcode == "opus" else FLAC_BYTES_PER_S
    upload = round(duration * rate * tracks)
    return Estimate(chunks * tracks, upload, duration, duration * tracks, decision.reasons)


def _local(path: str, policy: PrepPolicy) -> Estimate:
    """Probe a local file and estimate what a run would send (blocking: a pool thread)."""
    from batchscribe.audio.probe import Unreadable, decide, probe

    try:
        found = probe(path)
    except Unreadable:
        return Estimate(0, 0, None, 0.0, unfit="unreadable audio")
    if found.duration is not None and plausible_seconds(found.duration) is None:
        found = dataclasses.replace(found, duration=None)  # a header that lies: unknown
    return estimate(found, decide(found, policy), policy)


def _remote(item: Item) -> Estimate:
    """A cloud object's bytes and audio (a ranged GET of its head); a URL's: one request the
    service fetches itself."""
    if item.kind is URL:
        return Estimate(1, 0, None, 0.0)
    from batchscribe import cloud  # (only for buckets: a run of files never loads it)

    size, duration = cloud.header_duration(item.source)
    return Estimate(1, size, duration, duration or 0.0)


def _measure(
    pool: ThreadPoolExecutor,
    batch: list[tuple[Item, str, int]],
    plan: Plan,
    count: SourceCount,
    policy: PrepPolicy,
    packing: Packing | None = None,
) -> None:
    """Estimate a batch of items to send (in the pool) and count them (and with ``packing``,
    offer each to the packer, in order)."""
    items = [item for item, _, _ in batch]
    results = pool.map(
        lambda i: _local(i.source, policy) if i.kind is LOCAL_FILE else _remote(i), items
    )
    for (item, action, size), found in zip(batch, results, strict=True):
        if found.unfit is not None:
            plan.unfit[found.unfit] += 1
            continue
        plan.actions[action] = plan.actions.get(action, 0) + 1
        as_is = size if item.kind is LOCAL_FILE else found.bytes_upload
        plan.bytes_to_send += as_is
        count.items += 1
        count.requests += found.requests
        count.bytes_as_is += as_is
        count.bytes_upload += found.bytes_upload
        count.billed_seconds += found.billed_seconds
        if found.reasons:
            count.prepared += 1
            plan.reasons.update(found.reasons)
        if item.kind is URL:
            plan.url_items += 1
        if found.audio_seconds is None:
            plan.unknown_duration += 1
            count.unknown_duration += 1
        else:
            plan.audio_seconds += found.audio_seconds
            count.audio_seconds += found.audio_seconds
        if packing is not None:
            packing.offer(item, found, count)
    batch.clear()


class Packing:
    """--pack in a dry run: the items a run would pack offered to its :class:`Packer` in feed
    order, and the packs it makes counted (a pack in the source of its first item).

    An item is packed as the run's packing stage decides: a local file sent as one request
    (not chunked), of a length its headers tell that the packer takes, under the key
    :func:`~batchscribe.run.packing.pack_key` gives its parameters (the run's with its
    manifest overrides).
    """

    def __init__(self, packer: Packer, params: PulseParams, policy: PrepPolicy) -> None:
        self.packer, self.params, self.policy = packer, params, policy
        #: the items held in open packs -> their source's count
        self._source: dict[str, SourceCount] = {}

    def offer(self, item: Item, found: Estimate, count: SourceCount) -> bool:
        """Pack the item if the run would; whether it was."""
        from batchscribe.run.packing import pack_key

        seconds = found.audio_seconds
        if item.kind is not LOCAL_FILE or found.requests != 1 or not self.packer.takes(seconds):
            return False
        key = pack_key(self.params.with_overrides(item.params), self.policy)
        if key is None or seconds is None:
            return False
        self._source[item.id] = count
        count.packed += 1
        self._count(self.packer.add(item.id, key, seconds))
        return True

    def finish(self) -> None:
        """The feed is over: count the packs still open."""
        self._count(self.packer.flush())

    def _count(self, packs: list[Pack]) -> None:
        for done in packs:
            count = self._source[done.items[0].id]
            if len(done.items) == 1:  # (the run sends a pack of one item alone, as it is)
                count.packed -= 1
                del self._source[done.items[0].id]
                continue
            count.packs += 1
            count.gap_seconds += done.seconds - sum(i.seconds for i in done.items)
            for packed in done.items:
                del self._source[packed.id]
