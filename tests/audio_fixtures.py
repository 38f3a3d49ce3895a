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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["Burst", "bursts_pcm", "encode", "make_wav", "wav_bytes", "write_wav"]


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


# --------------------------------------------------------------------------------------------
# Signals for the audio stage (numpy + PyAV): tone bursts at known times, any channel count,
# rate and container, long files written block by block.

#: A tone burst: (start seconds, end seconds, frequency Hz).
Burst = tuple[float, float, float]


def bursts_pcm(
    bursts: Sequence[Burst],
    *,
    start: int,
    count: int,
    rate: int,
    amplitude: float = 12000.0,
) -> np.ndarray:
    """Samples ``start .. start+count`` (int16, mono) of silence with tone bursts, each with a
    5-ms fade in and out (no clicks to read as speech). Any block of a long signal can be made
    alone: the same sample index always has the same value."""
    times = (start + np.arange(count, dtype=np.float64)) / rate
    out = np.zeros(count, dtype=np.float64)
    fade = 0.005
    for begin, end, freq in bursts:
        if end <= times[0] if count else True:
            continue
        if count and begin > times[-1]:
            continue
        inside = (times >= begin) & (times < end)
        if not inside.any():
            continue
        t = times[inside]
        envelope = np.minimum(1.0, np.minimum(t - begin, end - t) / fade)
        out[inside] += amplitude * envelope * np.sin(2 * np.pi * freq * (t - begin))
    return np.round(out).astype(np.int16)


def write_wav(
    path: str | Path,
    channels: Sequence[Sequence[Burst]],
    seconds: float,
    rate: int,
    *,
    block_s: float = 60.0,
    data_size: int | None = None,
) -> Path:
    """A 16-bit PCM WAV of ``len(channels)`` channels, each silence with its own bursts, written
    block by block (a 3-hour stereo file never sits in memory). ``data_size`` writes a header
    that lies: that size in the data chunk whatever the samples that follow."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    frames = round(seconds * rate)
    count = len(channels)
    real = frames * count * 2
    size = real if data_size is None else data_size
    header = b"RIFF" + struct.pack("<I", (36 + size) & 0xFFFFFFFF) + b"WAVEfmt "
    header += struct.pack("<IHHIIHH", 16, 1, count, rate, rate * count * 2, count * 2, 16)
    header += b"data" + struct.pack("<I", size & 0xFFFFFFFF)
    step = max(1, round(block_s * rate))
    with target.open("wb") as out:
        out.write(header)
        for first in range(0, frames, step):
            n = min(step, frames - first)
            block = np.stack(
                [bursts_pcm(spec, start=first, count=n, rate=rate) for spec in channels], axis=1
            )
            out.write(block.astype("<i2").tobytes())
    return target


def encode(
    path: str | Path,
    channels: Sequence[Sequence[Burst]],
    seconds: float,
    rate: int,
    *,
    codec: str,
    format: str | None = None,
    bit_rate: int | None = None,
    video: bool = False,
) -> Path:
    """The same signal as :func:`write_wav`, encoded with PyAV (``codec`` ``mp3``, ``aac``,
    ``vorbis``, ``libopus``, ``flac``, ...) into ``path``'s container (or ``format``);
    ``video`` adds a tiny H.264 video stream first (an mp4/mkv "video file")."""
    import av

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    layout = {1: "mono", 2: "stereo"}.get(len(channels), f"{len(channels)}c")
    frames = round(seconds * rate)
    with av.open(str(target), mode="w", format=format) as container:
        if video:
            picture = container.add_stream("libx264", rate=10)
            picture.width, picture.height, picture.pix_fmt = 64, 64, "yuv420p"
        # strict=-2: the native Vorbis encoder is "experimental" to FFmpeg, fine for a test
        stream = container.add_stream(codec, rate=rate, layout=layout, options={"strict": "-2"})
        if bit_rate:
            stream.bit_rate = bit_rate
        step = rate  # one second a frame: the encoder re-frames it
        for first in range(0, frames, step):
            n = min(step, frames - first)
            block = np.stack(
                [bursts_pcm(spec, start=first, count=n, rate=rate) for spec in channels], axis=0
            )
            frame = av.AudioFrame.from_ndarray(
                block.T.reshape(1, -1).copy(), format="s16", layout=layout
            )
            frame.sample_rate = rate
            frame.pts = first
            container.mux(stream.encode(frame))
            if video:
                for k in range(first * 10 // rate, (first + n) * 10 // rate):
                    image = av.VideoFrame.from_ndarray(
                        np.full((64, 64, 3), k % 255, dtype=np.uint8), format="rgb24"
                    )
                    image.pts = k
                    container.mux(picture.encode(image))
        container.mux(stream.encode(None))
        if video:
            container.mux(picture.encode(None))
    return target
