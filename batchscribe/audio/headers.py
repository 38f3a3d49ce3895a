"""Audio facts read from file headers (durations), with mutagen.

Used for audio accounting when a response carries no duration, and by ``--dry-run``.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import wave
from typing import Any

#: The most audio one item can hold: a week. The API takes 250 MB a request, under six days
#: even at 4 kbit/s, so a duration or time beyond this (or below 0) read from a record, an
#: answer or a header is a corrupt value, not audio.
MAX_AUDIO_SECONDS = 7 * 24 * 3600.0


def plausible_seconds(value: object) -> float | None:
    """``value`` as seconds of audio when it is a number from 0 to :data:`MAX_AUDIO_SECONDS`;
    else None (not a number, negative, NaN, infinite or absurdly large)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not 0 <= value <= MAX_AUDIO_SECONDS:  # (NaN too: every comparison with it is false)
        return None
    return float(value)


def audio_duration(path: str) -> float | None:
    """Seconds of audio in a file, from its header; None when it cannot be told.

    Only a regular file is read: a FIFO, a device (``/dev/zero``) or a folder is None at once,
    never opened for reading (a FIFO's open would wait for a writer; a device never ends).
    """
    try:
        handle = open(path, "rb", opener=_open_nonblocking)  # noqa: SIM115 (closed below)
    except OSError:
        return None
    with handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        try:
            import mutagen

            info = mutagen.File(handle)  # reads headers only (mp3 may scan a few frames)
        except Exception:  # mutagen raises many types for odd files; a duration is best effort
            info = None
        if info is not None and getattr(info, "info", None) is not None:
            length = plausible_seconds(getattr(info.info, "length", None))
            if length:
                return length
        with contextlib.suppress(Exception):
            handle.seek(0)
            with wave.open(handle, "rb") as reader:
                rate = reader.getframerate()
                if rate > 0:
                    return plausible_seconds(reader.getnframes() / rate)
    return None


def _open_nonblocking(path: str, flags: int) -> int:
    """``open``'s opener: a FIFO opens at once instead of waiting for a writer (then fstat
    tells it apart); a terminal is not made the controlling one."""
    return os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY)


class _Sparse(io.RawIOBase):
    """A read-only file of ``size`` bytes whose first bytes are ``head`` and the rest zeros:
    mutagen sees the real length (CBR MP3 durations come from it) without the whole object."""

    def __init__(self, head: bytes, size: int) -> None:
        self._head = head
        self._size = max(size, len(head))
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._size - self._pos))
        real = max(0, min(n, len(self._head) - self._pos))
        view[:real] = self._head[self._pos : self._pos + real]
        view[real:n] = bytes(n - real)
        self._pos += n
        return n


def head_duration(head: bytes, size: int) -> float | None:
    """Seconds of audio from an object's first bytes and its total size (remote objects).

    WAV is exact from its header and the size; other formats as far as their headers tell
    (FLAC's sample count, an MP3's Xing header or its bitrate over the size); None otherwise.
    """
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return wav_duration(head, size)
    try:
        import mutagen

        info = mutagen.File(io.BufferedReader(_Sparse(head, size)))
    except Exception:  # a duration is best effort, as for local files
        return None
    length = plausible_seconds(getattr(getattr(info, "info", None), "length", None))
    return length or None


def wav_duration(head: bytes, size: int) -> float | None:
    """Exact duration of a RIFF/WAVE file of ``size`` bytes from its first bytes, or None."""
    offset, byte_rate = 12, 0
    while offset + 8 <= len(head):
        chunk_id = head[offset : offset + 4]
        (chunk_size,) = struct.unpack_from("<I", head, offset + 4)
        body = offset + 8
        if chunk_id == b"fmt " and body + 12 <= len(head):
            (byte_rate,) = struct.unpack_from("<I", head, body + 8)
        elif chunk_id == b"data":
            if not byte_rate:
                return None
            available = size - body
            # 0 and 0xFFFFFFFF mark a streamed WAV whose length was never patched in.
            data = available if chunk_size in (0, 0xFFFFFFFF) else min(chunk_size, available)
            return plausible_seconds(max(0, data) / byte_rate)
        offset = body + chunk_size + (chunk_size & 1)
    return None
