"""Hop levels of 16-bit PCM: the right dBFS, and the same levels however the signal is blocked."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscribe.audio.levels import (
    SILENCE_DBFS,
    LevelMeter,
    hop_levels,
    hop_samples,
)


def _tone(seconds: float, freq: float, amplitude: float, rate: int = 16000) -> np.ndarray:
    n = round(seconds * rate)
    return np.round(amplitude * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.int16)


def test_hop_is_ten_ms() -> None:
    """A hop is 10 ms of samples (160 at 16 kHz), rounded where 10 ms is not whole samples."""
    assert hop_samples(16000) == 160
    assert hop_samples(44100) == 441
    assert hop_samples(8000) == 80
    with pytest.raises(ValueError, match="positive"):
        hop_samples(0)


def test_sine_level_is_its_rms_in_dbfs() -> None:
    """A sine of amplitude A measures 20*log10(A / sqrt(2) / 32768) dBFS in every hop."""
    levels = hop_levels(_tone(1.0, 500, 16384), 16000)
    assert levels.dtype == np.float32 and levels.size == 100
    expected = 20 * math.log10(16384 / math.sqrt(2) / 32768)  # -9.03 dB
    assert np.allclose(levels, expected, atol=0.02)


def test_silence_is_a_finite_floor() -> None:
    """Digital silence measures SILENCE_DBFS (finite), and full scale about 0 dBFS."""
    assert np.all(hop_levels(np.zeros(1600, dtype=np.int16), 16000) == SILENCE_DBFS)
    square = np.tile(np.array([32767, -32768], dtype=np.int16), 80)
    assert abs(float(hop_levels(square, 16000)[0])) < 0.001


def test_partial_hop_is_left_for_the_next_block() -> None:
    """hop_levels measures whole hops only; LevelMeter.finish measures the trailing part."""
    pcm = _tone(0.105, 300, 8000)  # 1680 samples: 10 hops and half of one
    assert hop_levels(pcm, 16000).size == 10
    meter = LevelMeter(16000)
    assert meter.feed(pcm).size == 10
    tail = meter.finish()
    assert tail.size == 1 and meter.finish().size == 0


def test_only_int16_is_taken() -> None:
    """Float or int32 samples are refused rather than measured on the wrong scale."""
    with pytest.raises(TypeError, match="int16"):
        hop_levels(np.zeros(160, dtype=np.float32), 16000)
    with pytest.raises(TypeError, match="int16"):
        LevelMeter(16000).feed(np.zeros(160, dtype=np.int32))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    length=st.integers(0, 5000),
    cuts=st.lists(st.integers(0, 5000), max_size=8),
    rate=st.sampled_from([8000, 16000, 22050, 44100]),
)
def test_blocking_does_not_change_levels(
    seed: int, length: int, cuts: list[int], rate: int
) -> None:
    """Fed in blocks of any lengths, LevelMeter gives exactly the levels of the whole signal."""
    pcm = np.random.default_rng(seed).integers(-32768, 32768, length).astype(np.int16)
    meter = LevelMeter(rate)
    bounds = sorted({0, length, *(c for c in cuts if c <= length)})
    parts = [meter.feed(pcm[a:b]) for a, b in itertools.pairwise(bounds)]
    streamed = np.concatenate([*parts, meter.finish()])
    hop = hop_samples(rate)
    whole = hop_levels(pcm, rate)
    assert streamed.size == math.ceil(length / hop)
    assert np.array_equal(streamed[: whole.size], whole)
    assert meter.samples == length
