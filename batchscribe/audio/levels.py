"""Loudness per 10-ms hop of 16-bit PCM: what the splitter reads to find silences (pure, numpy).

A hop's level is its RMS in dBFS (0 dB = a full-scale square wave; digital silence is
:data:`SILENCE_DBFS`, never ``-inf``). :func:`hop_levels` measures the whole hops of one block;
:class:`LevelMeter` carries a partial hop from one block to the next, so a decoder can feed it
frames of any size and get exactly the levels of the whole signal measured at once.

Cost (this machine): about 0.05 s of CPU per audio hour at 16 kHz fed in blocks of 10 s, but
0.45 s in blocks of 1024 samples (a decoder's frame: the per-call overhead dominates), so feed
blocks of a few thousand samples or more.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["HOP_S", "SILENCE_DBFS", "LevelMeter", "hop_levels", "hop_samples"]

#: The nominal hop: one level per 10 ms of audio.
HOP_S = 0.01
#: The level of digital silence (an RMS of zero), so levels stay finite and comparable.
SILENCE_DBFS = -120.0
_FULL_SCALE = 32768.0
# mean square at SILENCE_DBFS: a floor that keeps log10 finite
_FLOOR_MS = (_FULL_SCALE * 10 ** (SILENCE_DBFS / 20)) ** 2


def hop_samples(rate: int) -> int:
    """Samples per hop at ``rate`` (160 at 16 kHz; rounded where 10 ms is not whole samples).

    The exact hop duration is ``hop_samples(rate) / rate`` seconds.
    """
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, not {rate}")
    return max(1, round(rate * HOP_S))


def hop_levels(pcm: np.ndarray[Any, Any], rate: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """RMS level in dBFS of each whole hop of ``pcm`` (a trailing partial hop is not measured).

    Args:
        pcm: mono int16 samples (any shape; flattened).
        rate: their sample rate; the hop is :func:`hop_samples` of it.

    Consecutive blocks whose lengths are whole hops give, concatenated, the levels of the
    concatenated signal; for blocks of any length use :class:`LevelMeter`.
    """
    hop = hop_samples(rate)
    flat = np.asarray(pcm).reshape(-1)
    if flat.dtype != np.int16:
        raise TypeError(f"hop_levels takes int16 PCM, not {flat.dtype}")
    whole = flat.size - flat.size % hop
    return _levels(flat[:whole].reshape(-1, hop))


def _levels(hops: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    """dBFS of each row of int16 samples."""
    if not hops.size:
        return np.zeros(0, dtype=np.float32)
    # float64 sums: an int16 row's squares fit exactly, so the result does not depend on how a
    # signal was cut into blocks (float32 sums would, in the last bits).
    x = hops.astype(np.float64)
    mean_square: np.ndarray[Any, np.dtype[np.float64]] = np.einsum("ij,ij->i", x, x)
    mean_square /= hops.shape[1]
    np.maximum(mean_square, _FLOOR_MS, out=mean_square)
    db: np.ndarray[Any, np.dtype[np.float32]] = (
        10 * np.log10(mean_square / _FULL_SCALE**2)
    ).astype(np.float32)
    return db


class LevelMeter:
    """Levels of a signal fed block by block (any block length); a partial hop is carried.

    ``feed`` returns the levels of the hops each block completes; ``finish`` the level of the
    last partial hop, if any (so a signal of ``n`` samples has ``ceil(n / hop)`` levels).
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.hop = hop_samples(rate)
        self.samples = 0
        self._carry = np.zeros(0, dtype=np.int16)

    def __repr__(self) -> str:
        return f"<LevelMeter rate={self.rate} samples={self.samples} carry={self._carry.size}>"

    def feed(self, pcm: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The levels of the hops completed by this block of int16 samples."""
        flat = np.asarray(pcm).reshape(-1)
        if flat.dtype != np.int16:
            raise TypeError(f"LevelMeter takes int16 PCM, not {flat.dtype}")
        self.samples += flat.size
        if self._carry.size:
            flat = np.concatenate((self._carry, flat))
        whole = flat.size - flat.size % self.hop
        self._carry = flat[whole:].copy()
        return _levels(flat[:whole].reshape(-1, self.hop))

    def finish(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The level of the trailing partial hop (empty when the signal ended on a hop)."""
        carry, self._carry = self._carry, np.zeros(0, dtype=np.int16)
        return _levels(carry.reshape(1, -1)) if carry.size else np.zeros(0, dtype=np.float32)
