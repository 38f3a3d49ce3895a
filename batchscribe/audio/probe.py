"""What a recording is (container, codec, channels, rate, duration, size) and whether the service
can take it as it is, or it must be prepared first (downmixed, split, transcoded).

:func:`probe` reads headers only. A RIFF/WAVE file of PCM is read by a few lines of ``struct``
(about 5 us of CPU); PyAV's open costs 0.2-4 ms on a short WAV (FFmpeg reads and parses up to
5 s of PCM to "find the stream info"), and most short clips sent as they are are WAVs. Anything
else is opened with PyAV (0.1-0.7 ms) with stream-info probing cut to the minimum; only when
that leaves the channels or the rate unknown is it opened again with FFmpeg's full probing, and
then the first frame decoded. PyAV only opens the demuxers of :data:`DEMUXERS` and only local
files: a playlist (HLS, concat, ...) in an archive never makes FFmpeg open another file or URL.

:func:`decide` is pure policy: send as is, prepare (and why), or refuse (``--transcode off``
and a file the service cannot take).
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from typing import Any, Literal

from batchscribe.errors import ItemError
from batchscribe.pulse import MAX_PAYLOAD, Outcome, Verdict

__all__ = [
    "DEMUXERS",
    "Decision",
    "PrepPolicy",
    "Probe",
    "Unreadable",
    "decide",
    "probe",
    "probe_head",
    "service_takes",
    "wav_as_is",
]

#: The FFmpeg demuxers PyAV may open: audio and audio/video containers. Naming them keeps
#: FFmpeg's network and playlist demuxers (hls, concat, ...) out of a directory scan.
DEMUXERS = (
    "wav,w64,rf64,mp3,flac,ogg,mov,matroska,webm,amr,aiff,caf,asf,avi,aac,ac3,eac3,wv,ape,"
    "au,voc,mpeg,mpegts,flv,3gp,dsf,tta,mpc,mpc8,gsm,sox,oga"
)
_SAFE = {"format_whitelist": DEMUXERS, "protocol_whitelist": "file"}
#: Stream-info probing cut to the minimum: the headers tell the codec, channels and rate of
#: every common container, and FFmpeg's default (5 s of decoding) costs 10-20x the open.
_QUICK = {**_SAFE, "probesize": "32", "analyzeduration": "0"}

#: What the service takes (container as PyAV names it -> codecs): WAV (PCM), MP3, FLAC, OGG
#: (Vorbis/Opus), M4A (AAC/ALAC), WebM (Opus/Vorbis); never with a video stream.
_TAKES: dict[str, tuple[str, ...]] = {
    "wav": ("pcm_",),
    "mp3": ("mp3",),
    "flac": ("flac",),
    "ogg": ("vorbis", "opus"),
    "mov,mp4,m4a,3gp,3g2,mj2": ("aac", "alac"),
    "matroska,webm": ("opus", "vorbis"),
}


class Unreadable(ItemError):
    """PyAV cannot open the file, or it holds no audio stream; the message says which. The
    item fails (cause ``invalid``) without a request. Picklable: it crosses the preparation's
    process pool."""

    def __init__(self, message: str) -> None:
        super().__init__(Outcome(Verdict.FAIL, None, "invalid", message))
        self.args = (message,)


@dataclass(frozen=True)
class Probe:
    """What a file's headers say.

    Args:
        container: PyAV's format name (``wav``, ``mp3``, ``mov,mp4,m4a,3gp,3g2,mj2``, ...).
        codec: the audio stream's codec (``pcm_s16le``, ``mp3float``, ``aac``, ...).
        channels: channels of the audio stream.
        rate: its sample rate (Hz).
        duration: seconds, or None when the headers do not tell.
        size: bytes of the file.
        bit_rate: bits per second when known.
        video: the file also holds a video stream (a cover picture does not count).
    """

    container: str
    codec: str
    channels: int
    rate: int
    duration: float | None
    size: int
    bit_rate: int | None
    video: bool = False


@dataclass(frozen=True)
class PrepPolicy:
    """How files are prepared (the run's ``--max-chunk``, ``--transcode``, ``--channels``,
    ``--opus-bitrate`` and the service's request limit)."""

    max_chunk: float = 600.0
    transcode: Literal["auto", "flac", "opus", "off"] = "auto"
    channels: Literal["mix", "split"] = "mix"
    opus_bitrate: int = 32000
    max_bytes: int = MAX_PAYLOAD  # the run's own reading of "250 MB" (decimal, the stricter)


@dataclass(frozen=True)
class Decision:
    """What to do with one file.

    Args:
        as_is: send the original bytes.
        reasons: why it is prepared (empty when sent as is): ``stereo``, ``multichannel``,
            ``long``, ``unknown length``, ``format``, ``oversize``, ``pcm over 16 kHz``,
            ``pcm over 16 bits``, ``transcode flac``/``transcode opus``, ``split channels``.
        refuse: with ``--transcode off``, why the service cannot take it as it is (then
            ``as_is`` is False and nothing is sent); None otherwise.
    """

    as_is: bool
    reasons: tuple[str, ...] = ()
    refuse: str | None = None


def service_takes(found: Probe) -> bool:
    """Whether the service takes this container and codec (not whether it is mono or short)."""
    codecs = _TAKES.get(found.container)
    return codecs is not None and not found.video and found.codec.startswith(codecs)


def decide(found: Probe, policy: PrepPolicy) -> Decision:
    """Send ``found`` as is, prepare it (with the reasons), or refuse it (pure).

    The service cannot take: more than one channel, longer than ``max_chunk``, a container or
    codec it does not read, ``max_bytes`` or more. ``auto`` also prepares what it would send
    bigger than needed: PCM over 16 kHz or over 16 bits. ``flac``/``opus`` prepare everything;
    ``off`` sends originals and refuses what the service cannot take.
    """
    cannot: list[str] = []
    if found.channels > 1:
        if policy.channels == "split":
            cannot.append("split channels")
        cannot.append("stereo" if found.channels == 2 else "multichannel")
    if found.duration is None:
        if (
            policy.transcode != "off"
        ):  # prepare measures it; off sends it and lets the service judge
            cannot.append("unknown length")
    elif found.duration > policy.max_chunk:
        cannot.append("long")
    if not service_takes(found):
        cannot.append("format")
    if found.size >= policy.max_bytes:
        cannot.append("oversize")
    if policy.transcode == "off":
        if cannot:
            return Decision(False, tuple(cannot), _refusal(found, cannot, policy))
        return Decision(True)
    gain: list[str] = []
    if found.codec.startswith("pcm_"):
        if found.rate > 16000:
            gain.append("pcm over 16 kHz")
        if any(bits in found.codec for bits in ("24", "32", "64")):
            gain.append("pcm over 16 bits")
    if policy.transcode != "auto":
        gain.append(f"transcode {policy.transcode}")
    reasons = (*cannot, *gain)
    return Decision(not reasons, reasons)


def _refusal(found: Probe, cannot: list[str], policy: PrepPolicy) -> str:
    """The one-line cause for ``--transcode off`` (the caller puts the file's name before it)."""
    said = {
        "split channels": "--channels split needs the channels decoded apart",
        "stereo": f"{found.channels} channels (the service takes mono only)",
        "multichannel": f"{found.channels} channels (the service takes mono only)",
        "long": f"{found.duration:.0f} s long (over --max-chunk {policy.max_chunk:g} s)",
        "format": f"{found.container}/{found.codec}"
        + (" with video" if found.video else "")
        + " (the service takes WAV, MP3, FLAC, OGG, M4A, WebM)",
        "oversize": f"{found.size} bytes (the service takes under {policy.max_bytes})",
    }
    causes = "; ".join(said[reason] for reason in cannot)
    return f"the service cannot take it as it is: {causes}; use --transcode auto"


# --------------------------------------------------------------------------------------------
# probe


def probe(path: str) -> Probe:
    """What the file at ``path`` is, from its headers (blocking; cheap: no full decode).

    Raises:
        Unreadable: not a regular file, PyAV cannot open it, or it has no audio stream.
    """
    try:
        handle = open(path, "rb", opener=_open_nonblocking)  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise Unreadable(f"unreadable audio: {exc.strerror or exc}") from None
    with handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            # a FIFO's read would wait for a writer, a device never ends
            raise Unreadable("unreadable audio: not a regular file")
        head = handle.read(4096)
    found = _wav(head, info.st_size)
    return found if found is not None else _pyav(path, info.st_size)


def probe_head(head: bytes, size: int) -> Probe | None:
    """The probe of a plain PCM WAV from bytes already read (its first 4 KiB or more) and the
    file's size; None when the bytes are not one (then :func:`probe` the path). A small file
    the run reads whole anyway is probed without opening it a second time (13 us a clip)."""
    return _wav(head, size)


def wav_as_is(head: bytes, size: int, policy: PrepPolicy) -> bool:
    """Whether ``head`` begins a WAV that ``decide(probe_head(head, size), policy)`` sends as
    is, told from a canonical 44-byte header alone: the hot path of a short mono clip (1.1 us
    against 3.5 for the probe and the decision; a test compares the two). False: ask them."""
    if (
        policy.transcode != "auto"
        or head[36:40] != b"data"
        or head[8:20] != b"WAVEfmt \x10\x00\x00\x00"
        or head[:4] != b"RIFF"
        or size >= policy.max_bytes
    ):
        return False
    fields: tuple[int, ...] = _CANONICAL.unpack_from(head, 20)
    tag, channels, rate, _byte_rate, align, bits, declared = fields
    if tag != 1 or channels != 1 or not 0 < rate <= 16000 or bits not in (8, 16):
        return False
    if align != bits // 8:
        return False
    data = size - 44 if declared in (0, 0xFFFFFFFF) else min(declared, size - 44)
    return max(0, data) // align / rate <= policy.max_chunk


#: A canonical header's fields from byte 20: format tag, channels, rate, byte rate, block
#: align, bits per sample, (the "data" id,) data size.
_CANONICAL = struct.Struct("<HHIIHH4xI")


def _open_nonblocking(path: str, flags: int) -> int:
    """``open``'s opener: a FIFO opens at once instead of waiting for a writer."""
    return os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY)


#: WAVE format tag -> PyAV's codec name by bits per sample (tags PCM, IEEE float, A-law, mu-law).
_WAV_CODECS: dict[int, dict[int, str]] = {
    1: {8: "pcm_u8", 16: "pcm_s16le", 24: "pcm_s24le", 32: "pcm_s32le"},
    3: {32: "pcm_f32le", 64: "pcm_f64le"},
    6: {8: "pcm_alaw"},
    7: {8: "pcm_mulaw"},
}
_EXTENSIBLE = 0xFFFE


def _wav(head: bytes, size: int) -> Probe | None:
    """A RIFF/WAVE file of plain PCM from its first bytes; None for anything else (PyAV then)."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset, fmt = 12, None
    while offset + 8 <= len(head):
        chunk_id = head[offset : offset + 4]
        (chunk_size,) = struct.unpack_from("<I", head, offset + 4)
        body = offset + 8
        if chunk_id == b"fmt " and chunk_size >= 16 and body + 16 <= len(head):
            fmt = struct.unpack_from("<HHIIHH", head, body)
            if fmt[0] == _EXTENSIBLE and chunk_size >= 40 and body + 26 <= len(head):
                (sub,) = struct.unpack_from("<H", head, body + 24)  # the sub-format GUID's tag
                fmt = (sub, *fmt[1:])
        elif chunk_id == b"data":
            return _wav_probe(fmt, chunk_size, size - body, size)
        offset = body + chunk_size + (chunk_size & 1)
    return None


def _wav_probe(
    fmt: tuple[int, ...] | None, declared: int, available: int, size: int
) -> Probe | None:
    """The probe of a WAV's fmt chunk and data size; None when FFmpeg should judge it."""
    if fmt is None:
        return None
    tag, channels, rate, _byte_rate, block_align, bits = fmt
    codec = _WAV_CODECS.get(tag, {}).get(bits)
    if codec is None or not channels or not rate or block_align != channels * bits // 8:
        return None
    # 0 and 0xFFFFFFFF mark a streamed WAV whose length was never patched in; a size past the
    # end of the file is a header that lies: FFmpeg, too, reads what is there.
    data = available if declared in (0, 0xFFFFFFFF) else min(declared, available)
    frames = max(0, data) // block_align
    return Probe("wav", codec, channels, rate, frames / rate, size, rate * block_align * 8)


def _pyav(path: str, size: int) -> Probe:
    """The probe of any other file, with PyAV (see the module docstring for the costs)."""
    found = _pyav_open(path, size, _QUICK)
    if found.channels and found.rate:
        return found
    found = _pyav_open(path, size, _SAFE)
    if found.channels and found.rate:
        return found
    return _first_frame(path, found)


def _pyav_open(path: str, size: int, options: dict[str, str]) -> Probe:
    """Open with PyAV and read the first audio stream's parameters."""
    import av as _av  # deferred: a WAV never needs it

    with open_audio(path, options) as container:
        stream = container.streams.audio[0]
        context = stream.codec_context
        duration: float | None = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        video = any(
            not (picture.disposition & _av.stream.Disposition.attached_pic)
            for picture in container.streams.video
        )
        return Probe(
            container=container.format.name,
            codec=context.name,
            channels=context.channels,
            rate=context.sample_rate or 0,
            duration=duration if duration is not None and duration >= 0 else None,
            size=size,
            bit_rate=container.bit_rate or context.bit_rate or None,
            video=video,
        )


def _first_frame(path: str, found: Probe) -> Probe:
    """Channels and rate from the first decoded frame, for headers that do not carry them."""
    import av as _av

    try:
        with _av.open(path, options=_SAFE) as container:
            for frame in container.decode(container.streams.audio[0]):
                return Probe(
                    found.container,
                    found.codec,
                    frame.layout.nb_channels,
                    frame.sample_rate,
                    found.duration,
                    found.size,
                    found.bit_rate,
                    found.video,
                )
    except (_av.FFmpegError, ValueError, OSError) as exc:
        raise Unreadable(f"unreadable audio: cannot be decoded ({reason(exc)})") from None
    raise Unreadable("unreadable audio: no audio frames")


def open_audio(path: str, options: dict[str, str]) -> Any:
    """``path`` opened with PyAV (only the named demuxers and local files, by ``options``),
    holding at least one audio stream; the caller closes it (``with``).

    Raises:
        Unreadable: PyAV cannot open it, or it holds no audio stream.
    """
    import av as _av

    try:
        container = _av.open(path, options=options)
    except (_av.FFmpegError, ValueError, OSError) as exc:
        raise Unreadable(f"unreadable audio: PyAV cannot open it ({reason(exc)})") from None
    if not container.streams.audio:
        name = container.format.name
        container.close()
        raise Unreadable(f"unreadable audio: no audio stream in {name}")
    return container


def reason(exc: BaseException) -> str:
    """FFmpeg's words for a failure, without the path PyAV appends (the caller names the file)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(": '", 1)[0]
