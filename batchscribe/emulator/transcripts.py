"""What the emulator hears: the audio decoded (PyAV), speech found by energy, words placed on it.

The transcript is derived from the signal, as the service derives its own:

1. The body is decoded frame by frame (:func:`analyse`); only a level and a zero-crossing count
   per 20-ms hop are kept, never the samples, so a 250 MB upload costs a few MB. Channels and
   duration come from the decoded frames, not from the header.
2. Speech regions are runs of hops louder than the file's own level minus 26 dB (and above an
   absolute floor of -50 dBFS), with pauses under 0.2 s bridged and blips under 60 ms dropped.
3. Words sit inside those regions. A clip of the sample archive (known by the sha256 of its bytes,
   ``batchscribe/data/samples.json``) gets its real sentence, spread over the speech regions.
   Any other audio gets one word per ~0.5 s of each region, chosen from a word list by the
   region's pitch (its zero-crossing rate, in semitones) and the word's place in the region:
   the same tone gives the same words after cutting at silences, downmixing or transcoding, so
   a test can tell which region of which signal a word came from, and when.

Silence gives an empty transcription. URL input is never fetched: its transcript comes from the
URL (a sample clip's path gives its sentence), spread over a duration derived from the URL.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import re
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from typing import IO, Any, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np
import orjson

__all__ = [
    "AudioError",
    "Region",
    "Signal",
    "Transcript",
    "Word",
    "analyse",
    "canonical_url",
    "content_key",
    "signal_of",
    "sniff",
    "transcribe",
    "transcript_for",
    "transcript_for_url",
]

#: The analysis hop: a level and a zero-crossing count per 20 ms of audio.
HOP_S = 0.02
#: A hop is speech when louder than the file's loud level (95th percentile) minus this ...
RELATIVE_DB = 26.0
#: ... and louder than this absolute floor (dBFS): digital silence and hiss are never speech.
FLOOR_DBFS = -50.0
#: Pauses shorter than this inside speech are bridged (between words of one phrase).
MIN_SILENCE_S = 0.2
#: Speech shorter than this is dropped (a click, a breath).
MIN_SPEECH_S = 0.06
#: A region of unknown audio gets one word per this much speech (at least one).
WORD_S = 0.5
#: Containers the service takes, by the sniffed kind -> the FFmpeg demuxer that reads it. The
#: demuxer is named, never probed, so a body cannot pick one that opens other files or URLs.
DEMUXERS = {
    "wav": "wav",
    "mp3": "mp3",
    "flac": "flac",
    "ogg": "ogg",
    "mp4": "mov",
    "webm": "matroska",
}
#: Codecs the service takes inside those containers: PCM, MP3, FLAC, Vorbis, Opus, AAC, ALAC.
_CODECS = re.compile(r"pcm_\w+|mp3\w*|flac|vorbis|libvorbis|opus|libopus|aac\w*|alac")


# --------------------------------------------------------------------------------------------
# The sample archive and URLs


class _Sample(NamedTuple):
    sentence: str
    duration: float
    file: str
    language: str


@functools.cache
def _samples() -> dict[str, _Sample]:
    """The sample archive table: sha256 hex -> clip (see sample_manifests/make_samples.sh)."""
    text = resources.files("batchscribe").joinpath("data/samples.json").read_text("utf-8")
    table: dict[str, Any] = orjson.loads(text)
    return {
        sha: _Sample(row["sentence"], float(row["duration"]), row["file"], row["language"])
        for sha, row in table.items()
    }


def sample_for(digest: bytes) -> _Sample | None:
    """The sample clip with this sha256, if any."""
    return _samples().get(digest.hex())


def sample_for_url(url: str) -> _Sample | None:
    """The sample clip whose archive path ends the URL's path, if any."""
    path = unquote(urlsplit(url).path)
    for sample in _samples().values():
        if path.endswith("/" + sample.file):
            return sample
    return None


_SIGNING_PREFIXES = ("x-amz-", "x-goog-")
_SIGNING_NAMES = frozenset({"signature", "expires", "awsaccesskeyid", "googleaccessid"})


def canonical_url(url: str) -> str:
    """``url`` without the query parameters that sign it (``X-Amz-*``, ``X-Goog-*``,
    ``Signature``, ``Expires``, ...): what names the audio. The service fetches the same object
    whatever the signature, so a URL signed anew for a retry is the same content."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    kept = [
        pair
        for pair in parts.query.split("&")
        if not (
            (name := unquote(pair.partition("=")[0]).lower()).startswith(_SIGNING_PREFIXES)
            or name in _SIGNING_NAMES
        )
    ]
    return urlunsplit(parts._replace(query="&".join(kept)))


def content_key(content: bytes | str) -> str:
    """The short content hash the emulator files requests under in ``stats()["by_content"]``:
    the first 12 hex digits of the sha256 of a raw body, or of a URL string in URL mode
    (without its signing query parameters: see :func:`canonical_url`)."""
    data = canonical_url(content).encode() if isinstance(content, str) else content
    return hashlib.sha256(data).hexdigest()[:12]


_WORDS = (
    "amber", "anchor", "apple", "arrow", "autumn", "basket", "beacon", "birch", "bridge",
    "candle", "canyon", "cedar", "copper", "coral", "crystal", "dawn", "desert", "ember",
    "falcon", "feather", "forest", "garden", "glacier", "harbor", "hazel", "horizon", "island",
    "ivory", "jasmine", "lantern", "meadow", "meteor", "mirror", "maple", "marble", "nectar",
    "ocean", "orchard", "pebble", "pepper", "pilot", "planet", "prairie", "quartz", "rain",
    "raven", "ribbon", "river", "saddle", "shadow", "silver", "spruce", "summit", "thunder",
    "timber", "tulip", "valley", "velvet", "violet", "walnut", "willow", "winter", "yonder",
    "zephyr",
)  # fmt: skip


def _pseudo_sentence(digest: bytes) -> str:
    """One to three short sentences picked from a word list by the digest's bytes; the last ends
    with the first 8 hex digits of the digest, so a test can tell which URL it belongs to."""
    count = 1 + digest[0] % 3
    pos = 1
    sentences = []
    for index in range(count):
        length = 3 + digest[pos] % 5
        words = [_WORDS[b % len(_WORDS)] for b in digest[pos + 1 : pos + 1 + length]]
        pos += 1 + length
        if index == count - 1:
            words.append(digest.hex()[:8])
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


# --------------------------------------------------------------------------------------------
# Decoding: the signal's level per hop, speech regions


class AudioError(ValueError):
    """The body is not audio the service takes; the message is the 400's text."""


@dataclass(frozen=True)
class Region:
    """A stretch of speech: seconds from the start of the audio, and its pitch in Hz."""

    start: float
    end: float
    pitch: float


@dataclass(frozen=True)
class Signal:
    """What decoding found.

    Args:
        container: the demuxer that read it (``wav``, ``mp3``, ``mov``, ...).
        codec: the audio codec (``pcm_s16le``, ``mp3float``, ``aac``, ...).
        channels: channels of the decoded frames (decoding stops at the first frame if not 1).
        rate: sample rate of the decoded frames.
        duration: seconds decoded (when ``longer_than`` is set, decoding stopped there).
        regions: the speech regions, in order.
        longer_than: set to the limit when the audio goes on past ``max_seconds``.
    """

    container: str
    codec: str
    channels: int
    rate: int
    duration: float
    regions: tuple[Region, ...]
    longer_than: float | None = None


def sniff(head: bytes) -> str | None:
    """The audio container of a body from its first bytes, or None when it is not audio."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:3] == b"ID3":
        return "mp3"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:5] == b"#!AMR":
        return "amr"
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:  # 12-bit sync, layer 00: ADTS AAC
            return "aac"
        if head[1] & 0xE0 == 0xE0 and head[1] & 0x06:  # 11-bit sync, layer I/II/III
            return "mp3"
    return None


class _Meter:
    """Folds decoded frames into one level (RMS) and one zero-crossing count per hop."""

    def __init__(self) -> None:
        self.rate = 0
        self.samples = 0
        self._hop = 0
        self._carry = np.zeros(0, dtype=np.float32)
        self.levels = array("f")
        self.crossings = array("I")

    @property
    def seconds(self) -> float:
        return self.samples / self.rate if self.rate else 0.0

    def feed(self, data: np.ndarray[Any, Any], rate: int) -> None:
        if not self.rate:
            self.rate = rate
            self._hop = max(1, round(rate * HOP_S))
        self.samples += data.size
        joined = np.concatenate((self._carry, _as_float(data)))
        whole = joined.size - joined.size % self._hop
        hops = joined[:whole].reshape(-1, self._hop)
        self._carry = joined[whole:]
        if hops.size:
            self.levels.extend(np.sqrt(np.mean(np.square(hops), axis=1)).tolist())
            signs = np.signbit(hops)
            self.crossings.extend(np.count_nonzero(signs[:, 1:] != signs[:, :-1], axis=1).tolist())

    def regions(self) -> tuple[Region, ...]:
        return speech_regions(self.levels, self.crossings, self._hop / self.rate, self.seconds)


def _as_float(data: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Samples of any PCM sample format as float32 in [-1, 1], flattened (one channel)."""
    flat = data.reshape(-1)
    if flat.dtype.kind == "f":
        return flat.astype(np.float32, copy=False)
    scaled: np.ndarray[Any, Any] = flat.astype(np.float32)
    half = float(2 ** (8 * flat.dtype.itemsize - 1))
    if flat.dtype.kind == "u":  # u8 PCM is offset binary
        scaled -= half
    scaled /= half
    return scaled


def speech_regions(
    levels: array[float] | list[float],
    crossings: array[int] | list[int],
    hop_s: float,
    duration: float,
) -> tuple[Region, ...]:
    """The speech regions of a signal from its level and zero crossings per hop (pure)."""
    level = np.asarray(levels, dtype=np.float64)
    if not level.size:
        return ()
    loud = float(np.percentile(level, 95))
    threshold = max(loud * 10 ** (-RELATIVE_DB / 20), 10 ** (FLOOR_DBFS / 20))
    speech = level >= threshold
    edges = np.flatnonzero(np.diff(np.concatenate(([0], speech.astype(np.int8), [0]))))
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    merged: list[tuple[int, int]] = []
    bridge = round(MIN_SILENCE_S / hop_s)
    for start, end in runs:
        if merged and start - merged[-1][1] < bridge:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    cross = np.asarray(crossings, dtype=np.float64)
    regions = []
    for start, end in merged:
        seconds = (end - start) * hop_s
        if seconds < MIN_SPEECH_S:
            continue
        # The pitch from the inner hops only: onsets and codec pre-echo blur the edges.
        inner = slice(start + 2, end - 2) if end - start > 6 else slice(start, end)
        inner_s = (inner.stop - inner.start) * hop_s
        pitch = float(cross[inner].sum()) / (2 * inner_s)
        regions.append(Region(round(start * hop_s, 3), round(min(end * hop_s, duration), 3), pitch))
    return tuple(regions)


def analyse(source: IO[bytes], kind: str, *, max_seconds: float | None = None) -> Signal:
    """Decode audio and measure it, frame by frame (blocking: run it in a thread).

    Args:
        source: the body, a seekable binary file.
        kind: what :func:`sniff` said of its first bytes.
        max_seconds: stop decoding past this (``Signal.longer_than`` is then set).

    Raises:
        AudioError: not audio, a format the service does not take, or undecodable.
    """
    import av  # deferred: only the emulator decodes, and only when a body arrives

    demuxer = DEMUXERS.get(kind)
    if demuxer is None:
        raise AudioError(
            f"unsupported audio format: {kind} (the service takes WAV, MP3, FLAC, OGG, M4A, WebM)"
        )
    try:
        container = av.open(source, mode="r", format=demuxer)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise AudioError(f"unreadable audio: {kind} that cannot be opened ({exc})") from None
    with container:
        if not container.streams.audio:
            raise AudioError(f"unreadable audio: {kind} without an audio stream")
        stream = container.streams.audio[0]
        codec = stream.codec_context.name
        if not _CODECS.fullmatch(codec):
            raise AudioError(f"unsupported audio codec: {codec} in {kind}")
        meter = _Meter()
        try:
            for frame in container.decode(stream):
                channels = frame.layout.nb_channels
                if channels != 1:
                    return Signal(demuxer, codec, channels, frame.sample_rate, 0.0, ())
                meter.feed(frame.to_ndarray(), frame.sample_rate)
                if max_seconds is not None and meter.seconds > max_seconds:
                    return Signal(demuxer, codec, 1, meter.rate, meter.seconds, (), max_seconds)
        except (av.FFmpegError, ValueError) as exc:
            # Like FFmpeg itself, keep what decoded before a damaged or junk tail.
            if not meter.samples:
                raise AudioError(
                    f"unreadable audio: {kind} that cannot be decoded ({exc})"
                ) from None
        if not meter.samples:
            raise AudioError(f"unreadable audio: {kind} with no audio frames")
        return Signal(demuxer, codec, 1, meter.rate, meter.seconds, meter.regions())


class _Cache:
    """Signals by (sha256, max_seconds), least recently used dropped first (thread-safe)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[bytes, float | None], Signal | AudioError] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[bytes, float | None]) -> Signal | AudioError | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[bytes, float | None], value: Signal | AudioError) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)


#: Tests send the same small files again and again (retries, resumes): decode each once.
_SIGNALS = _Cache(4096)


def signal_of(
    source: IO[bytes], digest: bytes, head: bytes, *, max_seconds: float | None = None
) -> Signal:
    """:func:`analyse` with a cache by content; ``head`` is the body's first bytes.

    Raises:
        AudioError: as :func:`analyse`, also for bodies that do not sniff as audio.
    """
    key = (digest, max_seconds)
    cached = _SIGNALS.get(key)
    if cached is None:
        kind = sniff(head[:16])
        try:
            if kind is None:
                raise AudioError("unreadable audio: not a known audio format")
            cached = analyse(source, kind, max_seconds=max_seconds)
        except AudioError as exc:
            cached = exc
        _SIGNALS.put(key, cached)
    if isinstance(cached, AudioError):
        raise AudioError(str(cached))
    return cached


# --------------------------------------------------------------------------------------------
# Words on the regions


class Word(NamedTuple):
    """One word of a transcript: its time, its text, which utterance it belongs to."""

    start: float
    end: float
    text: str
    utterance: int
    confidence: float


@dataclass(frozen=True)
class Transcript:
    """The words of an answer, grouped into utterances (one per sentence or region)."""

    text: str
    words: tuple[Word, ...]

    def utterances(self) -> list[tuple[float, float, str, int]]:
        """(start, end, text, index) of each utterance, in order."""
        groups: dict[int, list[Word]] = {}
        for word in self.words:
            groups.setdefault(word.utterance, []).append(word)
        return [
            (ws[0].start, ws[-1].end, " ".join(w.text for w in ws), index)
            for index, ws in groups.items()
        ]


def _confidence(seed: str) -> float:
    return (80 + hashlib.blake2b(seed.encode(), digest_size=2).digest()[0] % 20) / 100


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _spread(text: str, regions: tuple[Region, ...]) -> Transcript:
    """A known text over the speech regions: each word gets a share of the speech time in
    proportion to its length, and lies inside the region its middle falls in."""
    sentences = [s.split() for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    flat = [(word, index) for index, words in enumerate(sentences) for word in words]
    total_speech = sum(r.end - r.start for r in regions)
    if not flat or total_speech <= 0:
        return Transcript("", ())
    weights = [len(word) + 2 for word, _ in flat]
    scale = total_speech / sum(weights)
    bounds = np.cumsum([0.0, *(r.end - r.start for r in regions)])

    def to_time(axis: float) -> tuple[float, int]:
        at = min(int(np.searchsorted(bounds, axis, side="right")) - 1, len(regions) - 1)
        return regions[at].start + axis - float(bounds[at]), at

    words = []
    axis = 0.0
    for position, ((word, index), weight) in enumerate(zip(flat, weights, strict=True)):
        share = weight * scale
        middle, at = to_time(axis + share / 2)
        region = regions[at]
        half = share * 0.44  # a small gap between words
        start = max(region.start, middle - half)
        end = min(region.end, middle + half)
        words.append(
            Word(round(start, 3), round(max(end, start + 0.001), 3), word, index,
                 _confidence(f"{word}:{position}"))
        )  # fmt: skip
        axis += share
    return Transcript(" ".join(w.text for w in words), tuple(words))


def _from_signal(regions: tuple[Region, ...]) -> Transcript:
    """Unknown audio: per region, one word per ~WORD_S of speech, chosen by the region's pitch
    bin and the word's place in the region; each region is one sentence."""
    words = []
    for index, region in enumerate(regions):
        length = region.end - region.start
        count = max(1, round(length / WORD_S))
        slot = length / count
        # Semitone bins (A4 = 440 Hz at a bin's centre): a tone of the scale is far from an
        # edge, so a codec's small pitch error does not change its words.
        pitch_bin = round(12 * math.log2(max(region.pitch, 1.0) / 440))
        for k in range(count):
            pick = hashlib.blake2b(f"{pitch_bin}:{k}".encode(), digest_size=2).digest()
            text = _WORDS[int.from_bytes(pick, "big") % len(_WORDS)]
            if k == 0:
                text = text.capitalize()
            if k == count - 1:
                text += "."
            start = region.start + k * slot
            words.append(
                Word(round(start, 3), round(start + slot * 0.85, 3), text, index,
                     _confidence(f"{pitch_bin}:{k}"))
            )  # fmt: skip
    return Transcript(" ".join(w.text for w in words), tuple(words))


def transcribe(regions: tuple[Region, ...], text: str | None = None) -> Transcript:
    """The transcript of audio with these speech regions: ``text`` (a known sentence) spread
    over them, else words derived from the regions themselves. No regions: empty."""
    if text is not None:
        return _spread(text, regions)
    return _from_signal(regions)


def transcript_for(body: bytes) -> str:
    """The transcription the emulator returns for a raw-audio body (decoded here too).

    Args:
        body: the complete request body; a sample-archive clip gives its real sentence.

    Raises:
        AudioError: when the emulator would refuse the body as audio.
    """
    digest = hashlib.sha256(body).digest()
    signal = signal_of(io.BytesIO(body), digest, body[:16])
    sample = sample_for(digest)
    return transcribe(signal.regions, sample.sentence if sample else None).text


def url_audio(url: str) -> tuple[str, float]:
    """The text and duration the emulator gives a URL (it fetches nothing)."""
    sample = sample_for_url(url)
    if sample:
        return sample.sentence, sample.duration
    digest = hashlib.sha256(canonical_url(url).encode()).digest()
    return _pseudo_sentence(digest), 2.0 + digest[31] / 16


def url_regions(duration: float) -> tuple[Region, ...]:
    """The speech a URL's audio is taken to hold: all of it but a short lead-in and tail."""
    lead = min(0.25, duration * 0.06)
    return (Region(round(lead, 3), round(max(duration - lead, lead + 0.001), 3), 0.0),)


def transcript_for_url(url: str) -> str:
    """The transcription the emulator returns for a URL-mode request (it fetches nothing).

    Args:
        url: the ``url`` of the JSON body; one whose path ends with a sample clip's path under
            ``archive/`` (``https://example.org/a/2019/01-weather.wav``) gives its sentence.
            Its signing query parameters do not count (see :func:`canonical_url`).
    """
    text, duration = url_audio(url)
    return transcribe(url_regions(duration), text).text


def num_chunks(duration: float) -> int:
    """Pulse Pro's ``metadata.num_chunks``: one per 30 s started."""
    return max(1, math.ceil(duration / 30))
