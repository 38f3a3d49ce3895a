"""Packing: many short clips sent as one request, the answer split back into one per clip.

Packing is the inverse of :mod:`batchscribe.audio.stitch` (one answer from many requests): here
one request carries many items and its answer becomes one answer per item.

* **Grouping** (:class:`Packer`, pure and clock-free): items arrive one by one with a params key
  (language, model, diarize, ...) and their seconds; only equal keys share a pack; a pack holds
  at most ``pack_seconds`` of audio, gaps included; items longer than ``max_item`` (or of
  unknown length) are never packed. A pack is handed out when the next item would not fit, or
  when nothing more fits, or at :meth:`Packer.flush` (the caller's "the feed is quiet").
* **Audio** (:func:`load_pcm`, :func:`pack`, :func:`encode_flac`): each clip as 16 kHz s16 mono
  (decoded, downmixed and resampled as :mod:`~batchscribe.audio.prepare` does), the clips
  joined with ``gap_s`` of digital silence between them (none before the first or after the
  last), one FLAC per request. Each clip's span is its exact first and one-past-last sample.
* **Splitting** (:func:`unpack`, pure): a word belongs to the clip whose span holds its
  midpoint; a word whose midpoint falls in a gap (or before the first / after the last clip)
  goes to the **nearest** clip (the earlier one on a tie), never dropped: the service smears a
  word's edges by a few hundredths of a second, and a dropped word is lost text where a word
  moved 0.1 s is not. Times are made relative to the clip (kept to the microsecond) and clamped
  to ``[0, duration]``. Each answer is what the clip would have got alone: transcription
  rebuilt from its words, utterances cut at clip boundaries (a cut utterance keeps its own
  words, its times and text re-derived from them), its own ``duration``, speakers renumbered
  per clip in order of first appearance (the first speaker of a clip is 0).

Each clip starts on the 20-ms grid (:data:`ALIGN_S`), so a recogniser's frames fall on its
samples as they would were it sent alone.

The gap (:data:`GAP_S`, 1 s) was measured against the emulator, whose speech detection bridges
pauses under 0.2 s (``transcripts.MIN_SILENCE_S``) on a 20-ms grid: with 0.2 s or more no word
was joined across clips or misattributed, with 0.1 s a third of them were (table in
``tests/audio/test_pack.py`` above ``test_gap_table``). 1 s is five times that bridge, and a
word's reported time may be up to half a second off before the nearest-clip rule gives it to a
neighbour (0 of 4 518 words moved with +-0.5 s of jitter, 3 with +-0.75 s). It costs 1 s of
billed audio per clip (5 % of a 20-s clip).
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left, bisect_right
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from batchscribe.audio.probe import Unreadable, open_audio
from batchscribe.audio.stitch import times_of
from batchscribe.errors import RetryableError
from batchscribe.pulse import Cause, Outcome, Verdict

__all__ = [
    "ALIGN_S",
    "GAP_S",
    "MAX_ITEM_S",
    "PACK_SECONDS",
    "Pack",
    "PackItem",
    "Packed",
    "Packer",
    "TooLong",
    "Unsplittable",
    "encode_flac",
    "load_pcm",
    "pack",
    "spans_for",
    "unpack",
]

#: The silence between two packed clips (seconds); see the module docstring for the measure.
GAP_S = 1.0
#: A pack's audio at most (clips and gaps): under the service's 10-minute session, with room
#: for header durations a few seconds shorter than the decoded audio.
PACK_SECONDS = 590.0
#: Items longer than this are sent alone (the issue's ``--pack-max-item`` default).
MAX_ITEM_S = 120.0
#: Each clip starts on a multiple of this (a gap grows by under 20 ms): a recogniser's frames
#: (10 or 20 ms) then fall on a clip's samples as they would were it sent alone. Measured: with
#: clips at any sample, the emulator's 20-ms analysis grid cut a short region's edge hop
#: differently, so its pitch, so its words: 2 of 3 442 words wrong; aligned, none.
ALIGN_S = 0.02
#: Sample rate of packed audio: what prepare makes.
RATE = 16000

#: Fields of the request's answer that describe the request (its bytes, its timing): an item's
#: answer does not carry them (``packed`` says which request it came from).
_REQUEST_FIELDS = ("fileSize", "num_chunks", "processing_time_ms", "rtfx")
#: The fields unpack composes per clip; every other field is the request's, copied.
_COMPOSED = frozenset(
    {"transcription", "words", "utterances", "duration", "metadata", "totalBytes", "packed"}
)


# --------------------------------------------------------------------------------------------
# Grouping


@dataclass(frozen=True)
class PackItem:
    """One item offered for packing: its id, its params key, its seconds (from its headers)."""

    id: str
    key: Hashable
    seconds: float


@dataclass(frozen=True)
class Pack:
    """Items to send as one request, in order.

    Args:
        key: the params key they share.
        items: the items, in the order they arrived (their order in the packed audio).
        seconds: the planned audio: their seconds plus a gap between each two (counted as
            ``gap_s + ALIGN_S``, the most an aligned gap can be).
    """

    key: Hashable
    items: tuple[PackItem, ...]
    seconds: float


@dataclass
class _Open:
    items: list[PackItem] = field(default_factory=list)
    seconds: float = 0.0


class Packer:
    """Items into packs by params key, at most ``pack_seconds`` each (pure, no clock).

    Args:
        pack_seconds: a pack's audio at most, gaps included.
        max_item: items longer than this (or than ``pack_seconds``) are not packed
            (:meth:`takes` says False).
        gap_s: the silence between two clips.
    """

    def __init__(
        self,
        *,
        pack_seconds: float = PACK_SECONDS,
        max_item: float = MAX_ITEM_S,
        gap_s: float = GAP_S,
    ) -> None:
        if not max_item > 0:
            raise ValueError(f"max_item must be positive, not {max_item}")
        max_item = min(max_item, pack_seconds)  # (a longer item could never share a pack)
        if gap_s < 0:
            raise ValueError(f"gap_s must not be negative, not {gap_s}")
        self.pack_seconds, self.max_item, self.gap_s = pack_seconds, max_item, gap_s
        # A gap as planned: at most this once a clip's start is aligned (see spans_for).
        self._gap = gap_s + ALIGN_S
        self._open: dict[Hashable, _Open] = {}

    def __repr__(self) -> str:
        held = sum(len(o.items) for o in self._open.values())
        return f"<Packer open={len(self._open)} items={held} pack_seconds={self.pack_seconds}>"

    def takes(self, seconds: float | None) -> bool:
        """Whether an item of this length is packed (unknown, empty or long ones are not)."""
        return seconds is not None and math.isfinite(seconds) and 0 < seconds <= self.max_item

    @property
    def pending(self) -> int:
        """Items held in packs not handed out yet."""
        return sum(len(o.items) for o in self._open.values())

    def add(self, item_id: str, key: Hashable, seconds: float) -> list[Pack]:
        """Put an item into its key's open pack; the packs that became full (zero to two).

        Raises:
            ValueError: :meth:`takes` says this length is not packed.
        """
        if not self.takes(seconds):
            raise ValueError(f"{item_id}: {seconds} s is not packed (max_item {self.max_item} s)")
        done: list[Pack] = []
        current = self._open.get(key)
        if current is not None and current.seconds + self._gap + seconds > self.pack_seconds:
            done.append(self._close(key))
            current = None
        if current is None:
            current = self._open[key] = _Open()
        current.seconds += (self._gap if current.items else 0.0) + seconds
        current.items.append(PackItem(item_id, key, seconds))
        # Full when not even the shortest item could follow: hand it out now, not at a flush.
        if self.pack_seconds - current.seconds <= self._gap:
            done.append(self._close(key))
        return done

    def flush(self) -> list[Pack]:
        """Every open pack, in the order their first items arrived; the packer is empty after."""
        return [self._close(key) for key in list(self._open)]

    def _close(self, key: Hashable) -> Pack:
        current = self._open.pop(key)
        return Pack(key, tuple(current.items), round(current.seconds, 6))


# --------------------------------------------------------------------------------------------
# Audio


class TooLong(RetryableError):
    """The audio goes on past ``max_seconds`` (its headers said it was shorter): the item is
    not packed but tried again alone (cause ``too_large``). Picklable: it crosses a process
    pool."""

    def __init__(self, seconds: float) -> None:
        message = f"audio longer than {seconds:g} s: sent alone, not packed"
        super().__init__(Outcome(Verdict.RETRY, None, Cause.TOO_LARGE.value, message))
        self.args = (seconds,)
        self.seconds = seconds


def load_pcm(path: str, *, max_seconds: float) -> np.ndarray[Any, np.dtype[np.int16]]:
    """A short recording (an original, or a chunk prepare wrote) as 16 kHz s16 mono samples:
    decoded with PyAV, downmixed and resampled by prepare's converter (blocking).

    Args:
        path: the recording.
        max_seconds: decoding stops past this many seconds of audio (then :class:`TooLong`).

    Raises:
        Unreadable: PyAV cannot open or decode it, or it holds no audio.
        TooLong: it is longer than ``max_seconds``.
    """
    from batchscribe.audio.prepare import _OPEN, _Converter, _decode

    limit = math.ceil(max_seconds * RATE)
    blocks: list[np.ndarray[Any, Any]] = []
    held = 0
    with open_audio(path, _OPEN) as container:
        stream = container.streams.audio[0]
        convert: _Converter | None = None
        for frame in _decode(container, stream):
            if convert is None:
                convert = _Converter(frame, split=False)
            for out in convert.push(frame):
                blocks.append(out.to_ndarray().reshape(-1))
                held += blocks[-1].size
            if held > limit:
                raise TooLong(max_seconds)
        if convert is None:
            raise Unreadable("unreadable audio: no audio frames")
        for out in convert.push(None):
            blocks.append(out.to_ndarray().reshape(-1))
            held += blocks[-1].size
    if held > limit:
        raise TooLong(max_seconds)
    pcm = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int16)
    return pcm.astype(np.int16, copy=False)


@dataclass(frozen=True)
class Packed:
    """Clips joined into one request's audio.

    Args:
        pcm: the samples (int16, mono, at ``rate``).
        spans: per clip, its (first sample, one past its last) in ``pcm``.
        rate: samples per second.
    """

    pcm: np.ndarray[Any, np.dtype[np.int16]] = field(repr=False)
    spans: tuple[tuple[int, int], ...]
    rate: int = RATE

    @property
    def seconds(self) -> float:
        """The packed audio's length (what the request is billed for)."""
        return self.pcm.size / self.rate


def spans_for(
    lengths: Sequence[int], *, gap_s: float, rate: int = RATE, align_s: float = ALIGN_S
) -> tuple[tuple[int, int], ...]:
    """Where clips of these lengths (samples) sit in a pack: (start, end) each; the first at
    0, each next at least ``gap_s`` after the one before, on a multiple of ``align_s``."""
    gap, align = round(gap_s * rate), max(1, round(align_s * rate))
    spans, at = [], 0
    for length in lengths:
        spans.append((at, at + length))
        at = -(-(at + length + gap) // align) * align
    return tuple(spans)


def pack(
    clips: Sequence[np.ndarray[Any, Any]], *, gap_s: float = GAP_S, rate: int = RATE
) -> Packed:
    """The clips (int16 mono, at ``rate``) joined with ``gap_s`` of digital silence between.

    Raises:
        ValueError: no clips, a negative gap, or a clip that is not 1-D int16.
    """
    if not clips:
        raise ValueError("pack needs at least one clip")
    if gap_s < 0:
        raise ValueError(f"gap_s must not be negative, not {gap_s}")
    for clip in clips:
        if clip.dtype != np.int16 or clip.ndim != 1:
            raise ValueError(f"a clip must be 1-D int16 samples, not {clip.dtype} {clip.shape}")
    spans = spans_for([c.size for c in clips], gap_s=gap_s, rate=rate)
    pcm = np.zeros(spans[-1][1], dtype=np.int16)
    for clip, (start, end) in zip(clips, spans, strict=True):
        pcm[start:end] = clip
    return Packed(pcm, spans, rate)


def encode_flac(pcm: np.ndarray[Any, Any], path: str, *, rate: int = RATE) -> int:
    """Write int16 mono samples as a FLAC file at ``path`` (whole or not at all); its bytes."""
    import av

    part = path + ".part"
    try:
        with av.open(part, mode="w", format="flac") as container:
            # FFmpeg's default level 5, as prepare (256-sample blocks below it cost twice).
            stream = container.add_stream("flac", rate=rate, layout="mono")
            step = rate * 4  # fewer calls into PyAV
            for first in range(0, pcm.size, step):
                block = np.ascontiguousarray(pcm[first : first + step], dtype=np.int16)
                frame = av.AudioFrame.from_ndarray(
                    block.reshape(1, -1), format="s16", layout="mono"
                )
                frame.sample_rate = rate
                frame.pts = first
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(part, path)
    except BaseException:
        if os.path.exists(part):
            os.remove(part)
        raise
    return os.path.getsize(path)


# --------------------------------------------------------------------------------------------
# Splitting


class Unsplittable(RetryableError):
    """The answer has text but no timed words, so it cannot be split by time (the service
    ignored ``word_timestamps``): the pack's items are tried again alone (cause ``5xx``, an
    answer the client cannot use, as one cut short)."""

    def __init__(self, message: str) -> None:
        super().__init__(Outcome(Verdict.RETRY, None, Cause.SERVER.value, message))
        self.args = (message,)


def _entries(payload: Mapping[str, Any], key: str) -> list[Any]:
    value = payload.get(key)
    return value if isinstance(value, list) else []


def _word_text(word: Mapping[str, Any]) -> str:
    text = word.get("word", word.get("text"))
    return text if isinstance(text, str) else ""


def _is_speaker(value: object) -> bool:
    return value is not None and not isinstance(value, bool | dict | list)


class _Owner:
    """Which clip a time belongs to: the span holding it, else the nearest (earlier on a tie)."""

    def __init__(self, spans: Sequence[tuple[int, int]], rate: int) -> None:
        previous = 0
        for start, end in spans:
            if not previous <= start <= end:
                raise ValueError(f"spans must be in order and apart, not {list(spans)}")
            previous = end
        self.starts = [s / rate for s, _ in spans]
        self.ends = [e / rate for _, e in spans]

    def __call__(self, at: float) -> int:
        index = bisect_right(self.starts, at) - 1
        if index < 0:
            return 0
        if at < self.ends[index] or index + 1 == len(self.starts):
            return index
        # In the gap after clip ``index``: the nearer clip (the earlier one on a tie).
        return index if at - self.ends[index] <= self.starts[index + 1] - at else index + 1


class _Clip:
    """One clip's answer being built: its offset and duration, words and utterances so far."""

    def __init__(self, offset: float, duration: float) -> None:
        self.offset, self.duration = offset, duration
        self.words: list[dict[str, Any]] = []
        self.utterances: list[dict[str, Any]] = []
        self.speakers: dict[object, int] = {}

    def local(self, entry: Mapping[str, Any], start: float, end: float) -> dict[str, Any]:
        """A copy of ``entry`` with times relative to the clip, clamped into it."""
        placed = dict(entry)
        placed["start"] = _clamp(start - self.offset, self.duration)
        placed["end"] = max(placed["start"], _clamp(end - self.offset, self.duration))
        return placed

    def renumber(self, entries: list[dict[str, Any]]) -> None:
        """Speakers numbered from 0 in order of first appearance in time."""
        for entry in sorted(entries, key=lambda e: (e["start"], e["end"])):
            value = entry.get("speaker")
            if _is_speaker(value) and value not in self.speakers:
                self.speakers[value] = len(self.speakers)
        for entry in entries:
            value = entry.get("speaker")
            if _is_speaker(value):
                entry["speaker"] = self.speakers[value]


def _clamp(seconds: float, duration: float) -> float:
    # Microseconds, as stitch: under a sample at 16 kHz.
    return round(min(max(seconds, 0.0), duration), 6)


class _Word(NamedTuple):
    """A timed word of the answer: its midpoint (packed seconds), its clip, its local copy."""

    middle: float
    clip: int
    entry: dict[str, Any]


def _split_words(payload: Mapping[str, Any], clips: list[_Clip], owner: _Owner) -> list[_Word]:
    """Every timed word to its clip; the words by midpoint (words without times are dropped:
    they have no place, and the service always times words when asked)."""
    out = []
    for word in _entries(payload, "words"):
        times = times_of(word)
        if times is None:
            continue
        middle = (times[0] + times[1]) / 2
        index = owner(middle)
        entry = clips[index].local(word, *times)
        clips[index].words.append(entry)
        out.append(_Word(middle, index, entry))
    out.sort(key=lambda w: w.middle)
    return out


def _split_utterances(
    payload: Mapping[str, Any], clips: list[_Clip], owner: _Owner, words: list[_Word]
) -> None:
    """Each utterance to the clips its words went to: whole when all went to one clip, else
    cut into one piece per clip (times and text from that clip's words); an utterance without
    words goes by its own midpoint."""
    middles = [w.middle for w in words]
    for utterance in _entries(payload, "utterances"):
        times = times_of(utterance)
        if times is None:
            continue
        inside = words[bisect_left(middles, times[0]) : bisect_right(middles, times[1])]
        owners = sorted({w.clip for w in inside})
        if len(owners) <= 1:
            clip = clips[owners[0] if owners else owner((times[0] + times[1]) / 2)]
            clip.utterances.append(clip.local(utterance, *times))
            continue
        for index in owners:
            clip = clips[index]
            own = sorted((w.entry for w in inside if w.clip == index), key=_start_end)
            piece = clip.local(utterance, *times)
            piece["start"], piece["end"] = own[0]["start"], own[-1]["end"]
            piece["text"] = " ".join(_word_text(w) for w in own)
            clip.utterances.append(piece)


def _start_end(entry: Mapping[str, Any]) -> tuple[float, float]:
    return (entry["start"], entry["end"])


def _answer(payload: Mapping[str, Any], clip: _Clip) -> dict[str, Any]:
    """One clip's answer: the request's other fields, its own words, utterances, duration."""
    answer = {k: v for k, v in payload.items() if k not in _COMPOSED}
    words = sorted(clip.words, key=_start_end)  # stable: the service's order on equal times
    utterances = sorted(clip.utterances, key=_start_end)
    clip.renumber([*words, *utterances])
    answer["transcription"] = " ".join(t for t in map(_word_text, words) if t)
    answer["words"] = words
    if "utterances" in payload:
        answer["utterances"] = utterances
    answer["duration"] = round(clip.duration, 6)
    metadata = payload.get("metadata")
    if isinstance(metadata, Mapping):
        own = {k: v for k, v in metadata.items() if k not in _REQUEST_FIELDS}
        own["duration"] = answer["duration"]
        answer["metadata"] = own
    answer["packed"] = {"offset": round(clip.offset, 6)}
    return answer


def unpack(
    payload: Mapping[str, Any],
    spans: Sequence[tuple[int, int]],
    *,
    rate: int = RATE,
    durations: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """One answer per packed clip from the request's answer, as if each had been sent alone.

    Args:
        payload: the service's answer for the packed request (asked with word timestamps).
        spans: per clip, its (first sample, one past its last) in the packed audio, in order.
        rate: the sample rate of ``spans``.
        durations: each clip's duration in seconds (default: its span's length); times are
            clamped to it.

    Returns:
        Per clip, in the order of ``spans``: the request's fields with ``transcription``,
        ``words``, ``utterances`` (when the request's answer has them), ``duration`` and
        ``metadata.duration`` its own; ``metadata`` without the request's ``fileSize``,
        ``num_chunks``, ``processing_time_ms`` and ``rtfx``, and no top-level ``totalBytes``;
        ``packed: {"offset": seconds}`` (the clip's start in the packed audio), to which the
        caller adds ``request`` and ``items``. See the module docstring for the rules.

    Raises:
        Unsplittable: the answer has a transcription but no timed words.
        ValueError: no spans, spans out of order, or durations not one per span.
    """
    if not spans:
        raise ValueError("unpack needs at least one span")
    if durations is None:
        durations = [(end - start) / rate for start, end in spans]
    if len(durations) != len(spans):
        raise ValueError(f"{len(durations)} durations for {len(spans)} spans")
    owner = _Owner(spans, rate)
    clips = [_Clip(start / rate, d) for (start, _), d in zip(spans, durations, strict=True)]
    words = _split_words(payload, clips, owner)
    text = payload.get("transcription")
    if not words and isinstance(text, str) and text.strip():
        raise Unsplittable("the answer has no timed words to split a packed request by")
    _split_utterances(payload, clips, owner, words)
    return [_answer(payload, clip) for clip in clips]
