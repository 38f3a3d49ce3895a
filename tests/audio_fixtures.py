"""Tiny valid WAV files for tests, made with the stdlib ``wave`` module (no binary fixtures).

``wav_bytes(0.5, 440, 8000)`` is a half-second 440 Hz tone, 16-bit mono PCM at 8 kHz (8 044
bytes). Different ``freq`` or ``seconds`` give different content, hence a different sha256, so
tests can make many distinct files cheaply and tell them apart in the emulator's ``by_content``.
"""

from __future__ import annotations

import io
import math
import struct
import wave
from pathlib import Path

__all__ = ["make_wav", "wav_bytes"]


def wav_bytes(seconds: float = 0.5, freq: float = 440, rate: int = 8000) -> bytes:
    """A complete WAV file (16-bit mono PCM sine tone) as bytes.

    Args:
        seconds: duration of the clip.
        freq: tone frequency in Hz; vary it to get distinct content.
        rate: sample rate in Hz.
    """
    frames = max(0, round(seconds * rate))
    step = 2 * math.pi * freq / rate
    samples = [round(12000 * math.sin(step * i)) for i in range(frames)]
    pcm = struct.pack(f"<{frames}h", *samples)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def make_wav(path: str | Path, seconds: float = 0.5, freq: float = 440, rate: int = 8000) -> Path:
    """Write a WAV tone to ``path`` (parent folders created) and return the path.

    Args:
        path: where to write the file.
        seconds: duration of the clip.
        freq: tone frequency in Hz; vary it to get distinct content.
        rate: sample rate in Hz.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(wav_bytes(seconds, freq, rate))
    return target
