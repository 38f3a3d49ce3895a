"""Where to cut a long recording into chunks the service takes: at silences, never inside
speech (pure, over the hop levels of :mod:`batchscribe.audio.levels`).

A chunk that begins at hop ``start`` may run for ``max_hops``. :func:`choose_cut` looks only
at that window (so a streaming decoder needs one window of look-ahead, and the cuts do not
depend on anything later in the file: the same audio always gives the same chunks):

1. A hop is *silent* when it is quieter than the window's loud level (its 95th percentile)
   minus :data:`RELATIVE_DB`, or than :data:`FLOOR_DBFS` whatever the loud level: a VAD's rule,
   4 dB stricter than the emulator's speech detector so a cut is never where it hears speech.
2. In the last ``tail`` of the window, the runs of silent hops at least ``min_silence_s`` long
   are candidates; the quietest (lowest mean level; then the longest; then the latest) wins and
   the chunk ends in its middle, so the words on both sides are whole.
3. No such run: the chunk ends at the window's end and the next begins ``overlap_s`` earlier;
   :func:`keep_windows` says which chunk keeps the words of that overlap (split at its middle).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "FLOOR_DBFS",
    "LOUD_PERCENTILE",
    "RELATIVE_DB",
    "Cut",
    "Span",
    "choose_cut",
    "keep_windows",
    "plan_cuts",
    "silent_hops",
]

#: The window's loud level: this percentile of its hop levels.
LOUD_PERCENTILE = 95.0
#: A hop this far under the loud level is silent (the emulator's speech detector uses 26 dB).
RELATIVE_DB = 30.0
#: A hop under this level (dBFS) is silent whatever the loud level (the emulator's floor, -50,
#: minus 5 dB): hiss, hum, digital silence.
FLOOR_DBFS = -55.0


class Cut(NamedTuple):
    """The end of a chunk: it ends before hop ``hop``; the next chunk begins ``overlap_hops``
    earlier (0 at a silence); ``silent`` when the cut is in a silence (or at the end)."""

    hop: int
    overlap_hops: int
    silent: bool


class Span(NamedTuple):
    """A chunk in hops: ``[start_hop, end_hop)``; its first ``overlap_before_hops`` hops are
    also the previous chunk's last ones (0 when the previous chunk ended at a silence)."""

    start_hop: int
    end_hop: int
    overlap_before_hops: int


def silent_hops(levels_db: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Which hops of a window are silent (see the module docstring, step 1)."""
    levels = np.asarray(levels_db, dtype=np.float64)
    if not levels.size:
        return np.zeros(0, dtype=bool)
    loud = float(np.percentile(levels, LOUD_PERCENTILE))
    threshold = max(loud - RELATIVE_DB, FLOOR_DBFS)
    return levels < threshold


def _runs(mask: np.ndarray[Any, Any]) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of True in ``mask``."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def choose_cut(
    levels_db: np.ndarray[Any, Any],
    hop_s: float,
    *,
    start_hop: int,
    max_hops: int,
    tail: float = 0.25,
    min_silence_s: float = 0.3,
    overlap_s: float = 2.0,
) -> Cut:
    """The end of the chunk that begins at ``start_hop``.

    Args:
        levels_db: hop levels (dBFS) of the signal; only ``[start_hop, start_hop + max_hops)``
            is read, but it must reach past that window or to the signal's end (a length of at
            most ``start_hop + max_hops`` means: the signal ends there).
        hop_s: seconds per hop.
        start_hop: where the chunk begins.
        max_hops: the longest chunk, in hops.
        tail: the part of the window (at its end) where a cut is looked for.
        min_silence_s: the shortest silence to cut in.
        overlap_s: the overlap when no silence is found (at most half a window).

    Returns:
        ``Cut(len(levels_db), 0, True)`` when the rest fits in one chunk; else the cut.
    """
    if max_hops < 1:
        raise ValueError(f"max_hops must be at least 1, not {max_hops}")
    total = len(levels_db)
    end = start_hop + max_hops
    if total <= end:
        return Cut(total, 0, True)
    window = np.asarray(levels_db[start_hop:end], dtype=np.float64)
    first = max_hops - max(1, min(max_hops, round(max_hops * tail)))
    min_run = max(1, round(min_silence_s / hop_s))
    best: tuple[float, int, int] | None = None  # (-mean level, length, start): max wins
    best_run = (0, 0)
    for a, b in _runs(silent_hops(window)):
        a = max(a, first)
        if b - a < min_run:
            continue
        key = (-float(window[a:b].mean()), b - a, a)
        if best is None or key > best:
            best, best_run = key, (a, b)
    if best is not None:
        a, b = best_run
        return Cut(start_hop + (a + b + 1) // 2, 0, True)  # > a: always progress
    overlap = min(round(overlap_s / hop_s), max_hops // 2)
    return Cut(end, overlap, False)


def plan_cuts(levels_db: np.ndarray[Any, Any], hop_s: float, max_chunk_s: float) -> list[Span]:
    """The chunks of a whole signal of ``len(levels_db)`` hops, each at most ``max_chunk_s``.

    One span (maybe empty) when it fits; else :func:`choose_cut` from each chunk's start.
    """
    max_hops = int(max_chunk_s / hop_s + 1e-9)
    spans: list[Span] = []
    start, overlap = 0, 0
    while True:
        cut = choose_cut(levels_db, hop_s, start_hop=start, max_hops=max_hops)
        spans.append(Span(start, cut.hop, overlap))
        if cut.hop >= len(levels_db):
            return spans
        start, overlap = cut.hop - cut.overlap_hops, cut.overlap_hops


def keep_windows(spans: Sequence[Span]) -> list[tuple[int | None, int | None]]:
    """Per span, the hops ``[keep_from, keep_until)`` whose words it keeps (None: open).

    Where two chunks overlap, the earlier keeps the words before the overlap's middle and the
    later the rest; at a silent cut (no overlap) both are open: there are no words to share,
    and a word the service places a little past a chunk's end is not lost.
    """
    windows: list[tuple[int | None, int | None]] = []
    for index, span in enumerate(spans):
        keep_from = (
            span.start_hop + span.overlap_before_hops // 2 if span.overlap_before_hops else None
        )
        following = spans[index + 1] if index + 1 < len(spans) else None
        keep_until = None
        if following is not None and following.overlap_before_hops:
            keep_until = following.start_hop + following.overlap_before_hops // 2
        windows.append((keep_from, keep_until))
    return windows
