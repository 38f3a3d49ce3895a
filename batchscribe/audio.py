"""Audio facts read from file headers (durations), with mutagen.

Used for audio accounting when a response carries no duration, and by ``--dry-run``.
"""

from __future__ import annotations

import contextlib
import wave


def audio_duration(path: str) -> float | None:
    """Seconds of audio in a file, from its header; None when it cannot be told."""
    try:
        import mutagen

        info = mutagen.File(path)  # reads headers only (mp3 may scan a few frames)
    except Exception:  # mutagen raises many types for odd files; a duration is best effort
        info = None
    if info is not None and getattr(info, "info", None) is not None:
        length = getattr(info.info, "length", None)
        if isinstance(length, (int, float)) and length > 0:
            return float(length)
    with contextlib.suppress(Exception), wave.open(path, "rb") as handle:
        rate = handle.getframerate()
        if rate > 0:
            return handle.getnframes() / rate
    return None
