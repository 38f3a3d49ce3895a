"""Cutting long audio into chunks: at the quietest silence near a window's end, never inside
speech; with an overlap only where there is no silence; the same cuts for the same audio."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscribe.audio.levels import hop_levels
from batchscribe.audio.split import (
    Cut,
    Span,
    choose_cut,
    keep_windows,
    plan_cuts,
    silent_hops,
)

HOP_S = 0.01
SPEECH_DB = -20.0
QUIET_DB = -75.0


def _levels(pattern: list[tuple[bool, int]], seed: int = 0) -> np.ndarray:
    """Hop levels from (speech?, hops) runs: speech about -20 dBFS, silence about -75."""
    rng = np.random.default_rng(seed)
    parts = [
        (SPEECH_DB if speech else QUIET_DB) + rng.uniform(-3, 3, hops) for speech, hops in pattern
    ]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _bursts(rate: int, seconds: float, bursts: list[tuple[float, float]]) -> np.ndarray:
    """int16 PCM: a 440 Hz tone inside each (start, end) second range, faint noise elsewhere."""
    n = round(seconds * rate)
    rng = np.random.default_rng(7)
    pcm = rng.normal(0, 3, n)  # about -80 dBFS of hiss
    t = np.arange(n) / rate
    for start, end in bursts:
        inside = (t >= start) & (t < end)
        pcm[inside] += 10000 * np.sin(2 * np.pi * 440 * t[inside])
    return np.clip(np.round(pcm), -32768, 32767).astype(np.int16)


def test_short_audio_is_one_chunk() -> None:
    """Audio no longer than the chunk limit is one span, with no cut and no overlap."""
    levels = _levels([(True, 500)])
    assert plan_cuts(levels, HOP_S, 5.0) == [Span(0, 500, 0)]
    assert plan_cuts(np.zeros(0, np.float32), HOP_S, 5.0) == [Span(0, 0, 0)]
    assert choose_cut(levels, HOP_S, start_hop=100, max_hops=400) == Cut(500, 0, True)


def test_cut_in_the_middle_of_the_silence_near_the_window_end() -> None:
    """The chunk ends in the middle of the silence inside the window's last quarter."""
    # window 1000 hops; tail = hops 750..999; a silence at 820..880 and one early at 300..400
    levels = _levels([(True, 300), (False, 100), (True, 420), (False, 60), (True, 400)])
    cut = choose_cut(levels, HOP_S, start_hop=0, max_hops=1000)
    assert cut == Cut(850, 0, True)


def test_quietest_silence_wins() -> None:
    """Of two silences in the tail, the chunk ends in the quieter one, even if it is earlier."""
    levels = _levels([(True, 780), (False, 40), (True, 80), (False, 40), (True, 300)])
    levels[780:820] = -90.0  # the earlier silence is quieter
    levels[900:940] = -70.0
    assert choose_cut(levels, HOP_S, start_hop=0, max_hops=1000) == Cut(800, 0, True)


def test_short_pause_is_not_a_cut() -> None:
    """A pause under min_silence_s (a breath between words) is speech: cut with an overlap."""
    levels = _levels([(True, 850), (False, 20), (True, 400)])  # 0.2 s pause
    cut = choose_cut(levels, HOP_S, start_hop=0, max_hops=1000, overlap_s=2.0)
    assert cut == Cut(1000, 200, False)


def test_no_silence_overlaps_and_plan_progresses() -> None:
    """Continuous speech: chunks of max length, each overlapping the last by overlap_s."""
    levels = _levels([(True, 2500)])
    assert plan_cuts(levels, HOP_S, 10.0) == [
        Span(0, 1000, 0),
        Span(800, 1800, 200),
        Span(1600, 2500, 200),
    ]


def test_all_silence_cuts_at_the_floor() -> None:
    """A file of digital silence still splits (silence is anything under the absolute floor)."""
    levels = np.full(2500, -120.0, np.float32)
    spans = plan_cuts(levels, HOP_S, 10.0)
    assert all(s.overlap_before_hops == 0 for s in spans)
    assert spans[-1].end_hop == 2500 and len(spans) == 3


def test_real_bursts_are_never_cut() -> None:
    """Real PCM with tone bursts: every cut falls in a gap between bursts, at most max long."""
    rate = 16000
    bursts = [(s, s + 2.3) for s in np.arange(0.5, 58, 2.9)]  # 0.6 s gaps
    levels = hop_levels(_bursts(rate, 60.0, bursts), rate)
    spans = plan_cuts(levels, HOP_S, 12.0)
    assert len(spans) >= 5
    for span in spans[:-1]:
        at = span.end_hop * HOP_S
        assert span.end_hop - span.start_hop <= 1200
        assert not any(start - 0.1 <= at <= end + 0.1 for start, end in bursts), at
        assert span.overlap_before_hops == 0


def test_keep_windows_split_overlaps_in_the_middle() -> None:
    """Overlapped chunks share the overlap at its middle; silent cuts leave both sides open."""
    spans = [Span(0, 1000, 0), Span(800, 1500, 200), Span(1500, 2000, 0)]
    assert keep_windows(spans) == [(None, 900), (900, None), (None, None)]


def test_silent_hops_threshold_is_relative_and_floored() -> None:
    """Silent: 30 dB under the loud level, or under -55 dBFS whatever the loud level."""
    loud = np.array([-10.0] * 95 + [-39.0, -41.0, -60.0, -20.0, -30.0])
    assert list(silent_hops(loud)[-5:]) == [False, True, True, False, False]
    quiet = np.array([-60.0] * 90 + [-54.0] * 10)
    assert silent_hops(quiet)[:90].all() and not silent_hops(quiet)[90:].any()


def test_bad_window_is_refused() -> None:
    """A window of no hops is a caller's mistake, not an endless loop."""
    with pytest.raises(ValueError, match="max_hops"):
        choose_cut(_levels([(True, 10)]), HOP_S, start_hop=0, max_hops=0)


_PATTERN = st.lists(st.tuples(st.booleans(), st.integers(1, 400)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(pattern=_PATTERN, seed=st.integers(0, 1000), max_chunk=st.integers(2, 12))
def test_plan_tiles_the_signal(pattern: list[tuple[bool, int]], seed: int, max_chunk: int) -> None:
    """Spans cover every hop, each is at most the limit, overlap only at a cut in speech,
    a silent cut lies inside a silence, and every hop is kept by exactly one span."""
    levels = _levels(pattern, seed)
    max_hops = round(max_chunk / HOP_S)
    spans = plan_cuts(levels, HOP_S, float(max_chunk))
    assert spans[0].start_hop == 0 and spans[-1].end_hop == len(levels)
    for before, span in itertools.pairwise(spans):
        assert span.start_hop == before.end_hop - span.overlap_before_hops
        assert span.start_hop > before.start_hop
        if span.overlap_before_hops == 0:  # a silent cut: the hops either side are silent
            window = levels[before.start_hop : before.start_hop + max_hops]
            quiet = silent_hops(window)
            at = before.end_hop - before.start_hop
            assert quiet[at - 1] and quiet[at]
    for span in spans:
        assert 0 < span.end_hop - span.start_hop <= max_hops
    kept = np.zeros(len(levels), dtype=int)
    for span, (keep_from, keep_until) in zip(spans, keep_windows(spans), strict=True):
        low = span.start_hop if keep_from is None else keep_from
        high = span.end_hop if keep_until is None else keep_until
        assert span.start_hop <= low <= high <= span.end_hop
        kept[low:high] += 1
    assert (kept == 1).all()


@settings(max_examples=100, deadline=None)
@given(pattern=_PATTERN, extra=_PATTERN, seed=st.integers(0, 1000), start=st.integers(0, 300))
def test_cut_reads_only_its_window(
    pattern: list[tuple[bool, int]], extra: list[tuple[bool, int]], seed: int, start: int
) -> None:
    """A cut depends on its window alone (streaming: one window of look-ahead; same cuts on
    a rerun whatever follows)."""
    levels = _levels(pattern, seed)
    max_hops = 500
    if len(levels) <= start + max_hops:
        return
    cut = choose_cut(levels, HOP_S, start_hop=start, max_hops=max_hops)
    changed = np.concatenate([levels[: start + max_hops + 1], _levels(extra, seed + 1)])
    assert choose_cut(changed, HOP_S, start_hop=start, max_hops=max_hops) == cut
