"""The audio stage: what a recording is (from its headers) and, in later modules, how it is
prepared for the service (downmix, resample, split at silences, transcode) and how the answers
of its pieces are stitched back into one record.

``headers`` (durations read from file headers with mutagen) is re-exported here: it is what the
rest of the package has always imported as ``batchscribe.audio``.
"""

from batchscribe.audio.headers import (
    MAX_AUDIO_SECONDS,
    audio_duration,
    head_duration,
    plausible_seconds,
    wav_duration,
)

__all__ = [
    "MAX_AUDIO_SECONDS",
    "audio_duration",
    "head_duration",
    "plausible_seconds",
    "wav_duration",
]
