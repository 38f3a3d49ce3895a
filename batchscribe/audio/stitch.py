"""The answers of a recording's chunks (and channels) made into one answer, as if the service
had transcribed the whole file at once (pure).

* **Times**: every word and utterance is shifted by its chunk's exact offset in the original
  timeline (the chunk's first sample index / rate, never a sum of rounded chunk lengths) and
  kept to the microsecond (under a sample at 16 kHz), then all are sorted by time.
* **Overlaps**: a chunk keeps the words whose midpoint lies in its ``[keep_from, keep_until)``
  (seconds in the original timeline; None = open), so a word heard by two overlapping chunks
  is kept once. An utterance is cut the same way: it keeps its kept words (start, end and text
  re-derived from them) and goes when none are kept; one without words goes by its midpoint.
* **Transcription**: the kept words' texts in time order; a chunk that answered without timed
  words gives its own transcription instead, at its place in time.
* **Speakers**: the service numbers speakers per request, so speaker 0 of chunk 3 need not be
  speaker 0 of chunk 4, nor of the other channel. They are renumbered so that no two chunks or
  channels share a number: the parts are taken in time order (then by channel), and each part's
  speakers, in their own order, get the next free numbers (a single part keeps its numbers). The
  result's ``speakers`` lists, per number, the ``chunk`` (its index among its channel's chunks),
  ``channel`` and ``chunk_speaker`` (the service's number) it came from, so a reader that can
  match voices across chunks can merge them; nothing here claims two chunks' speakers are one.
* **Channels**: with a channel per part, every word and utterance gets ``channel``, and the
  channels' words are interleaved by time.
* **The rest**: ``duration`` (top level and ``metadata.duration``) is the file's; additive
  metadata (``fileSize``, ``num_chunks``, ``processing_time_ms``, top-level ``totalBytes``) is
  summed and ``rtfx`` recomputed from them; any other field is the first part's. ``prepared``
  is the caller's to add.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["Part", "stitch"]

#: Metadata fields that add up over the chunks (top-level ``totalBytes`` too).
_ADDITIVE = ("fileSize", "num_chunks", "processing_time_ms")
#: The fields stitch composes; everything else is copied from the first part's answer.
_COMPOSED = frozenset({"transcription", "words", "utterances", "duration", "metadata"})


@dataclass(frozen=True)
class Part:
    """One chunk's answer and where it sits in the original timeline.

    Args:
        offset: seconds of the chunk's first sample in the original timeline (sample / rate).
        keep_from: keep only words whose midpoint is at or after this (seconds; None: open).
        keep_until: keep only words whose midpoint is before this (seconds; None: open).
        channel: the original channel it was split from, or None (a downmix).
        payload: the service's answer for the chunk (``transcription``, ``words``,
            ``utterances``, ``metadata``, ...).
    """

    offset: float
    keep_from: float | None
    keep_until: float | None
    channel: int | None
    payload: Mapping[str, Any] = field(repr=False)


class _Placed(NamedTuple):
    """An entry in the original timeline, with how it sorts."""

    key: tuple[float, float, int, int, int]
    entry: dict[str, Any]


def seconds_of(value: object) -> float | None:
    """A finite time in seconds, or None (bools, strings, NaN are no time)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def times_of(entry: object) -> tuple[float, float] | None:
    """(start, end) of a word or utterance dict with numeric times, else None."""
    if not isinstance(entry, Mapping):
        return None
    start, end = seconds_of(entry.get("start")), seconds_of(entry.get("end"))
    return None if start is None or end is None else (start, end)


def _at(seconds: float) -> float:
    # Microseconds: under a sample at 16 kHz, and the same float for the same instant however
    # it was summed (offset + a local time), so the overlap tests are consistent across chunks.
    return round(seconds, 6)


def _kept(part: Part, start: float, end: float) -> bool:
    """Whether a word (local times) belongs to this part: its midpoint in the keep window."""
    middle = _at(part.offset + (start + end) / 2)
    if part.keep_from is not None and middle < _at(part.keep_from):
        return False
    return part.keep_until is None or middle < _at(part.keep_until)


def _word_text(word: Mapping[str, Any]) -> str:
    text = word.get("word", word.get("text"))
    return text if isinstance(text, str) else ""


def _speaker_key(value: object) -> tuple[int, float, str]:
    return (0, float(value), "") if isinstance(value, int | float) else (1, 0.0, str(value))


def _is_speaker(value: object) -> bool:
    return value is not None and not isinstance(value, bool | dict | list)


def _entries(payload: Mapping[str, Any], key: str) -> list[Any]:
    value = payload.get(key)
    return value if isinstance(value, list) else []


class _Speakers:
    """The renumbering: (part order, service number) -> a number unique across parts."""

    def __init__(self) -> None:
        self.numbers: dict[tuple[int, object], int] = {}
        self.origins: list[dict[str, Any]] = []

    def add_part(self, order: int, chunk: int, part: Part) -> None:
        found = {
            entry["speaker"]
            for key in ("words", "utterances")
            for entry in _entries(part.payload, key)
            if isinstance(entry, Mapping) and _is_speaker(entry.get("speaker"))
        }
        for value in sorted(found, key=_speaker_key):
            self.numbers[(order, value)] = len(self.origins)
            origin: dict[str, Any] = {"speaker": len(self.origins), "chunk": chunk}
            if part.channel is not None:
                origin["channel"] = part.channel
            origin["chunk_speaker"] = value
            self.origins.append(origin)

    def relabel(self, order: int, entry: dict[str, Any]) -> None:
        value = entry.get("speaker")
        if _is_speaker(value):
            entry["speaker"] = self.numbers[(order, value)]


def _place(
    part: Part, order: int, entry: Mapping[str, Any], start: float, end: float, index: int
) -> _Placed:
    """A copy of ``entry`` shifted into the original timeline (with its channel)."""
    placed = dict(entry)
    placed["start"] = _at(part.offset + start)
    placed["end"] = _at(part.offset + end)
    if part.channel is not None:
        placed["channel"] = part.channel
    channel = -1 if part.channel is None else part.channel
    return _Placed((placed["start"], placed["end"], channel, order, index), placed)


class _Timed(NamedTuple):
    """A timed word of a part: its local times, and its placed copy when kept (else None)."""

    start: float
    end: float
    placed: _Placed | None


def _part_words(part: Part, order: int) -> list[_Timed]:
    """The part's timed words, each placed in the original timeline when kept."""
    timed: list[_Timed] = []
    for index, word in enumerate(_entries(part.payload, "words")):
        times = times_of(word)
        if times is None:
            continue  # no place in the timeline: dropped (the service always times words)
        kept = _kept(part, *times)
        timed.append(_Timed(*times, _place(part, order, word, *times, index) if kept else None))
    return timed


def _part_utterances(part: Part, order: int, words: list[_Timed]) -> list[_Placed]:
    """The part's utterances cut to its keep window (see the module docstring)."""
    out: list[_Placed] = []
    by_middle = sorted(words, key=lambda w: w.start + w.end)
    middles = [(w.start + w.end) / 2 for w in by_middle]
    for index, utterance in enumerate(_entries(part.payload, "utterances")):
        times = times_of(utterance)
        if times is None:
            continue
        start, end = times
        inside = by_middle[bisect_left(middles, start) : bisect_right(middles, end)]
        kept = [w.placed for w in inside if w.placed is not None]
        if not inside:  # no words to go by: the utterance's own midpoint decides
            if _kept(part, start, end):
                out.append(_place(part, order, utterance, start, end, index))
        elif len(kept) == len(inside):
            out.append(_place(part, order, utterance, start, end, index))
        elif kept:  # cut at the keep boundary: it shrinks to its kept words
            placed = _place(part, order, utterance, start, end, index)
            entry = placed.entry
            entry["start"], entry["end"] = kept[0].entry["start"], kept[-1].entry["end"]
            entry["text"] = " ".join(_word_text(w.entry) for w in kept)
            out.append(_Placed((entry["start"], entry["end"], *placed.key[2:]), entry))
    return out


def _metadata(ordered: Sequence[Part], duration: float) -> dict[str, Any] | None:
    """The first part's metadata with the file's duration and the additive fields summed."""
    metas = [p.payload.get("metadata") for p in ordered]
    first = next((m for m in metas if isinstance(m, Mapping)), None)
    if first is None:
        return None
    merged = dict(first)
    merged["duration"] = duration
    for name in _ADDITIVE:
        values = [m.get(name) for m in metas if isinstance(m, Mapping)]
        numbers = [v for v in values if seconds_of(v) is not None]
        if numbers:
            merged[name] = sum(numbers)
    took = seconds_of(merged.get("processing_time_ms"))
    if "rtfx" in merged and took:
        merged["rtfx"] = round(duration / (took / 1000), 1)
    return merged


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def stitch(parts: Sequence[Part], *, duration: float) -> dict[str, Any]:
    """One answer for the whole recording from its parts' answers.

    Args:
        parts: every chunk (of every channel), in any order.
        duration: the original recording's duration in seconds.

    Returns:
        An answer shaped like the service's: ``transcription``, ``words``, ``utterances``
        (only when some part had them), ``duration``, ``metadata`` (when some part had it),
        ``speakers`` (the renumbering, when more than one part), and the first part's other
        fields. See the module docstring for the rules.
    """
    if not parts:
        raise ValueError("stitch needs at least one part")
    ordered = sorted(parts, key=lambda p: (p.offset, -1 if p.channel is None else p.channel))
    speakers = _Speakers()
    chunks: dict[int | None, int] = {}
    words: list[_Placed] = []
    utterances: list[_Placed] = []
    pieces: list[tuple[tuple[float, float, int, int, int], str]] = []
    for order, part in enumerate(ordered):
        chunk = chunks[part.channel] = chunks.get(part.channel, -1) + 1
        speakers.add_part(order, chunk, part)
        timed = _part_words(part, order)
        kept = [w.placed for w in timed if w.placed is not None]
        words += kept
        utterances += _part_utterances(part, order, timed)
        if timed:
            pieces += [(w.key, _word_text(w.entry)) for w in kept]
        else:  # untimed: the chunk's own text, at the start of what it keeps
            text = part.payload.get("transcription")
            at = max(part.offset, part.keep_from or part.offset)
            if isinstance(text, str) and text.strip():
                pieces.append(((_at(at), _at(at), -1, order, -1), text.strip()))
    for placed in (*words, *utterances):
        speakers.relabel(placed.key[3], placed.entry)
    answer = {k: v for k, v in ordered[0].payload.items() if k not in _COMPOSED}
    answer["transcription"] = " ".join(t for _, t in sorted(pieces, key=_first) if t)
    answer["words"] = [w.entry for w in sorted(words, key=_first)]
    if any("utterances" in p.payload for p in ordered):
        answer["utterances"] = [u.entry for u in sorted(utterances, key=_first)]
    answer["duration"] = _at(duration)
    metadata = _metadata(ordered, _at(duration))
    if metadata is not None:
        answer["metadata"] = metadata
    total = [p.payload.get("totalBytes") for p in ordered]
    if "totalBytes" in answer:
        answer["totalBytes"] = sum(v for v in total if seconds_of(v) is not None)
    if len(ordered) > 1 and speakers.origins:
        answer["speakers"] = speakers.origins
    return answer
