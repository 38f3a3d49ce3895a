"""Prepare a recording for the service: decode it once, downmix (or split its channels),
resample to 16 kHz 16-bit mono, cut it at silences into chunks of at most ``max_chunk``, and
encode each chunk as FLAC (or Ogg/Opus) into a work folder (blocking: for a process pool).

Memory stays bounded whatever the length: a chunk is encoded as it is decoded, up to the point
where its cut may fall (the last ``tail`` of its window, or an overlap before the window's end);
only the audio after that point is kept until the cut is chosen (2.5 minutes of 16 kHz PCM per
track for 10-minute chunks, 4.8 MB) with the hop levels of one window (240 KB).

Cuts come from :func:`batchscribe.audio.split.choose_cut` over the hop levels of one window
at a time, so the same file and policy always give the same chunks (resume relies on it).
Sample indices (``Chunk.start``/``end``) count 16 kHz samples from the first decoded sample:
``start / rate`` is the chunk's exact offset in the original timeline.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchscribe.audio.levels import HOP_S, LevelMeter, hop_samples
from batchscribe.audio.probe import DEMUXERS, PrepPolicy, Unreadable, open_audio, reason
from batchscribe.audio.split import choose_cut

__all__ = ["RATE", "Chunk", "Prepared", "prepare"]

#: The rate every prepared chunk has: the service's recommended 16 kHz.
RATE = 16000
#: Where a cut may fall: the last quarter of a window (choose_cut's tail) ...
TAIL = 0.25
#: ... or, with no silence there, the window's end with this overlap (choose_cut's overlap_s).
OVERLAP_S = 2.0
#: Samples handed to an encoder at a time: fewer calls into PyAV (a call costs ~20 us).
_BATCH = RATE * 4
#: The WAV demuxer's packets: 64 KiB, not 4 KiB (its default), so a WAV decodes in 16x fewer
#: frames: each costs a few Python calls (decode, resample, levels of 44.1 kHz stereo: 5.5 -> 1.7 s
#: of CPU per audio hour).
_OPEN = {"format_whitelist": DEMUXERS, "protocol_whitelist": "file", "max_size": "65536"}


@dataclass(frozen=True)
class Chunk:
    """One prepared request.

    Args:
        index: its place among the item's chunks (by channel, then time), from 0.
        channel: the original channel it holds (``--channels split``), None for a mix.
        start: its first sample (16 kHz samples from the start of the recording).
        end: one past its last sample.
        rate: the sample rate of ``start``/``end`` (always :data:`RATE`).
        keep_from: keep only words from this second on (an overlap's middle), None: all.
        keep_until: keep only words before this second, None: all.
        path: the encoded file.
        content_type: its MIME type (``audio/flac`` or ``audio/ogg``).
        size: its bytes.
    """

    index: int
    channel: int | None
    start: int
    end: int
    rate: int
    keep_from: float | None
    keep_until: float | None
    path: str
    content_type: str
    size: int


@dataclass(frozen=True)
class Prepared:
    """A prepared recording: its chunks, and what it was.

    Args:
        chunks: the requests to send, by channel then time.
        duration: seconds of the original, as decoded (not as its header claims).
        channels: channels of the original.
        transcoded_to: ``flac`` or ``opus``.
        bytes_in: bytes of the original file.
    """

    chunks: tuple[Chunk, ...]
    duration: float
    channels: int
    transcoded_to: str | None
    bytes_in: int


def prepare(path: str, policy: PrepPolicy, workdir: str) -> Prepared:
    """Decode ``path`` once and write its chunks into ``workdir`` (blocking; see the module).

    Args:
        path: the recording.
        policy: ``max_chunk``, ``channels`` (mix or split) and ``transcode`` (``opus`` gives
            Ogg/Opus at ``opus_bitrate``; ``auto`` and ``flac`` give FLAC; ``off`` is refused:
            nothing is prepared then).
        workdir: an existing folder; chunk files are named ``<index>.flac`` or
            ``c<channel>-<n>.flac`` (``.ogg`` for Opus), written whole or not at all.

    Raises:
        Unreadable: PyAV cannot open or decode it, or it holds no audio.
        ValueError: ``policy.transcode`` is ``off``.
    """
    if policy.transcode == "off":
        raise ValueError("prepare() with transcode off: the original is sent as it is")
    kind = "opus" if policy.transcode == "opus" else "flac"
    with open_audio(path, _OPEN) as container:
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels
        split = policy.channels == "split" and channels > 1
        tracks = [
            _Track(_Encoder(workdir, f"c{c}-" if split else "", kind, policy), policy.max_chunk)
            for c in range(channels if split else 1)
        ]
        try:
            return _run(container, stream, tracks, split, kind, path)
        except BaseException:
            for track in tracks:  # a failed item leaves no files: none is a chunk of anything
                track.abort()
            raise


def _run(
    container: Any, stream: Any, tracks: list[_Track], split: bool, kind: str, path: str
) -> Prepared:
    """Decode, convert and feed the tracks; the chunks they made."""
    channels = stream.codec_context.channels
    decoded, rate = 0, 0
    convert: _Converter | None = None
    for frame in _decode(container, stream):
        if convert is None:
            rate = frame.sample_rate
            channels = frame.layout.nb_channels  # the frames', not the header's
            convert = _Converter(frame, split)
        decoded += frame.samples
        for block in convert.push(frame):
            _feed(tracks, block)
    if convert is None:
        raise Unreadable("unreadable audio: no audio frames")
    for block in convert.push(None):
        _feed(tracks, block)
    pieces = [(c if split else None, piece) for c, t in enumerate(tracks) for piece in t.finish()]
    chunks = tuple(Chunk(index, channel, *piece) for index, (channel, piece) in enumerate(pieces))
    return Prepared(chunks, decoded / rate, channels, kind, os.path.getsize(path))


def _decode(container: Any, stream: Any) -> Iterator[Any]:
    """The stream's frames; like FFmpeg, keep what decoded before a damaged or junk tail."""
    import av

    got = False
    try:
        for frame in container.decode(stream):
            got = True
            yield frame
    except (av.FFmpegError, ValueError) as exc:
        if not got:
            raise Unreadable(f"unreadable audio: cannot be decoded ({reason(exc)})") from None


class _Converter:
    """Decoded frames -> 16 kHz s16 frames: one mono mix, or every channel apart (planar).

    An FFmpeg filter graph, not ``av.AudioResampler``: it downmixes before it resamples (half
    the filtering for stereo) and takes a 16-tap filter (32 is the default): 1.35 -> 0.75 s of
    CPU per hour of 44.1 kHz stereo, still flat to 7.7 kHz with no audible aliasing in speech.
    """

    def __init__(self, first: Any, split: bool) -> None:
        import av

        self.graph = av.filter.Graph()
        source = self.graph.add_abuffer(
            format=first.format.name,
            sample_rate=first.sample_rate,
            layout=first.layout.name,
            time_base=first.time_base,
        )
        steps = [] if split else [("aformat", "channel_layouts=mono")]
        steps += [
            ("aresample", f"{RATE}:filter_size=16"),
            ("aformat", "sample_fmts=s16p" if split else "sample_fmts=s16:channel_layouts=mono"),
        ]
        node = source
        for name, args in steps:
            following = self.graph.add(name, args)
            node.link_to(following)
            node = following
        sink = self.graph.add("abuffersink")
        node.link_to(sink)
        self.graph.configure()

    def push(self, frame: Any) -> Iterator[Any]:
        """The converted frames ready after ``frame`` (None: the end, flush all)."""
        import av

        self.graph.push(frame)
        while True:
            try:
                yield self.graph.pull()
            except (av.BlockingIOError, av.EOFError):
                return


def _feed(tracks: list[_Track], frame: Any) -> None:
    """Hand one resampled frame's samples to the tracks (a row per track)."""
    data = frame.to_ndarray()
    for row, track in zip(data.reshape(len(tracks), -1), tracks, strict=True):
        track.push(row)


class _Encoder:
    """Writes chunks of one track: a FLAC (or Ogg/Opus) file each, renamed into place whole."""

    def __init__(self, workdir: str, prefix: str, kind: str, policy: PrepPolicy) -> None:
        self.workdir, self.prefix, self.kind = workdir, prefix, kind
        self.bit_rate = policy.opus_bitrate
        self.count = 0
        self._container: Any = None
        self._stream: Any = None
        self._pts = 0
        self._path = ""

    def open(self) -> None:
        import av

        suffix = ".ogg" if self.kind == "opus" else ".flac"
        self._path = os.path.join(self.workdir, f"{self.prefix}{self.count:04d}{suffix}")
        self.count += 1
        self._container = av.open(
            self._path + ".part", mode="w", format="ogg" if self.kind == "opus" else "flac"
        )
        if self.kind == "opus":
            # compression 5 of 10 and 60-ms frames: a third less CPU than libopus' defaults,
            # and the bitrate asked for (20-ms frames add ~30 % of Ogg framing on top of it)
            options = {"b": str(self.bit_rate), "compression_level": "5", "frame_duration": "60"}
            self._stream = self._container.add_stream(
                "libopus", rate=RATE, layout="mono", options=options
            )
        else:
            # FFmpeg's default level 5: at 16 kHz, levels 0-2 use 256-sample blocks, twice the
            # bytes and (one Python call a packet) twice the CPU.
            self._stream = self._container.add_stream("flac", rate=RATE, layout="mono")
        self._pts = 0

    def write(self, pcm: np.ndarray[Any, Any]) -> None:
        import av

        if not pcm.size:
            return
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = self._pts
        self._pts += pcm.size
        self._container.mux(self._stream.encode(frame))

    def abort(self) -> None:
        """Close and delete the file being written, if any."""
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._path + ".part")

    def close(self) -> tuple[str, str, int]:
        """Finish the file: (path, content type, size)."""
        self._container.mux(self._stream.encode(None))
        self._container.close()
        self._container = None
        os.replace(self._path + ".part", self._path)
        kind = "audio/ogg" if self.kind == "opus" else "audio/flac"
        return self._path, kind, os.path.getsize(self._path)


class _Track:
    """One 16 kHz mono stream being cut into chunks and encoded as it arrives.

    ``_buf`` holds the samples from ``_buf_start`` that are not encoded yet; the current chunk
    begins at ``_start`` (a hop boundary) and is encoded up to ``_fed``; ``_levels`` holds the
    hop levels from hop ``_level_base``.
    """

    def __init__(self, encoder: _Encoder, max_chunk: float) -> None:
        self.encoder = encoder
        self.hop = hop_samples(RATE)
        self.max_hops = max(1, int(max_chunk / HOP_S + 1e-9))
        overlap_hops = min(round(OVERLAP_S / HOP_S), self.max_hops // 2)
        tail_hops = max(1, min(self.max_hops, round(self.max_hops * TAIL)))
        # No cut, nor the next chunk's start, can come before this many hops into a window.
        self.safe_hops = max(0, min(self.max_hops - tail_hops, self.max_hops - overlap_hops))
        self.meter = LevelMeter(RATE)
        self._levels: list[np.ndarray[Any, Any]] = []
        self._level_count = 0
        self._level_base = 0
        self._buf: list[np.ndarray[Any, Any]] = []
        self._buf_size = 0
        self._buf_start = 0
        self._start = 0
        self._fed = 0
        self._keep_from: float | None = None
        self._done: list[tuple[int, int, int, float | None, float | None, str, str, int]] = []
        self.encoder.open()

    def push(self, pcm: np.ndarray[Any, Any]) -> None:
        """Take the next samples; encode what is safe; cut when a window is complete."""
        self._buf.append(pcm)
        self._buf_size += pcm.size
        levels = self.meter.feed(pcm)
        if levels.size:
            self._levels.append(levels)
            self._level_count += levels.size
        while self._level_count - (self._start // self.hop - self._level_base) > self.max_hops:
            self._cut()
        safe = self._start + self.safe_hops * self.hop
        if min(safe, self._buf_start + self._buf_size) - self._fed >= _BATCH:
            self._encode_to(safe)

    def finish(self) -> list[tuple[int, int, int, float | None, float | None, str, str, int]]:
        """Encode the rest as the last chunk; the chunks as (start, end, rate, keep_from,
        keep_until, path, content type, size)."""
        end = self._buf_start + self._buf_size
        self._encode_to(end)
        self._close(end, None)
        return self._done

    def abort(self) -> None:
        """Delete this track's files: the one being written and the chunks done."""
        self.encoder.abort()
        for done in self._done:
            with contextlib.suppress(FileNotFoundError):
                os.remove(done[5])

    def _cut(self) -> None:
        """Choose the end of the current chunk (its window is complete) and begin the next."""
        levels = np.concatenate(self._levels) if len(self._levels) > 1 else self._levels[0]
        self._levels = [levels]
        start_hop = self._start // self.hop
        cut = choose_cut(
            levels,
            HOP_S,
            start_hop=start_hop - self._level_base,
            max_hops=self.max_hops,
            tail=TAIL,
            overlap_s=OVERLAP_S,
        )
        end_hop = self._level_base + cut.hop
        end = end_hop * self.hop
        self._encode_to(end)
        # Words of an overlap belong to the chunk whose half of it they lie in (split's rule).
        middle = (end_hop - cut.overlap_hops // 2) * self.hop / RATE if cut.overlap_hops else None
        self._close(end, middle)
        self._keep_from = middle
        self._start = self._fed = (end_hop - cut.overlap_hops) * self.hop
        self._drop_before(self._start)
        drop = self._start // self.hop - self._level_base
        self._levels = [levels[drop:]]
        self._level_count -= drop
        self._level_base += drop
        self.encoder.open()

    def _close(self, end: int, keep_until: float | None) -> None:
        path, content_type, size = self.encoder.close()
        self._done.append(
            (self._start, end, RATE, self._keep_from, keep_until, path, content_type, size)
        )

    def _encode_to(self, upto: int) -> None:
        """Encode the current chunk's samples up to sample ``upto`` (those held)."""
        upto = min(upto, self._buf_start + self._buf_size)
        if upto <= self._fed:
            return
        block = self._samples(self._fed, upto)
        self.encoder.write(block)
        self._fed = upto
        self._drop_before(min(self._fed, self._start + self.safe_hops * self.hop))

    def _samples(self, first: int, upto: int) -> np.ndarray[Any, Any]:
        """Samples ``[first, upto)``, all held in the buffer."""
        joined = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
        self._buf = [joined]
        return joined[first - self._buf_start : upto - self._buf_start]

    def _drop_before(self, sample: int) -> None:
        """Forget the samples before ``sample`` (encoded, and no later chunk starts there)."""
        drop = sample - self._buf_start
        if drop <= 0:
            return
        joined = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
        rest = joined[drop:]
        self._buf = [rest.copy()] if rest.size else []
        self._buf_size = rest.size
        self._buf_start = sample
