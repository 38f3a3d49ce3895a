"""probe(): a file's facts from its headers, cheaply; decide(): send as is, prepare, or refuse."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import pytest
from audio_fixtures import encode, make_wav, write_wav

from batchscribe.audio.probe import (
    Decision,
    PrepPolicy,
    Probe,
    Unreadable,
    _pyav,
    decide,
    probe,
    probe_head,
    wav_as_is,
)

TWO = [[(0.5, 1.5, 440.0)], [(1.0, 2.0, 660.0)]]
ONE = TWO[:1]


def _wav(path: Path, tag: int, bits: int, channels: int = 1, rate: int = 16000) -> Path:
    """A one-second WAV of zeros in any PCM layout (format tag, bits), by hand."""
    align = channels * bits // 8
    data = bytes(rate * align)
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data))
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body) + len(data)) + body + data)
    return path


@pytest.mark.parametrize(
    ("tag", "bits", "channels", "rate"),
    [(1, 16, 1, 16000), (1, 8, 1, 8000), (1, 24, 2, 48000), (1, 32, 1, 44100), (3, 32, 2, 16000)],
)
def test_wav_header_read_agrees_with_pyav(
    tmp_path: Path, tag: int, bits: int, channels: int, rate: int
) -> None:
    """The direct WAV read gives what PyAV's open gives (codec name, channels, rate, length)."""
    path = _wav(tmp_path / "a.wav", tag, bits, channels, rate)
    fast, slow = probe(str(path)), _pyav(str(path), path.stat().st_size)
    assert (fast.container, fast.codec, fast.channels, fast.rate, fast.size) == (
        slow.container, slow.codec, slow.channels, slow.rate, slow.size
    )  # fmt: skip
    assert fast.duration == pytest.approx(1.0) and slow.duration == pytest.approx(1.0)


def test_wav_whose_header_lies_about_its_length(tmp_path: Path) -> None:
    """A data size past the end of the file gives the length of what is there (as FFmpeg)."""
    path = write_wav(tmp_path / "lie.wav", ONE, 3.0, 16000, data_size=16000 * 2 * 600)
    assert probe(str(path)).duration == pytest.approx(3.0)
    streamed = write_wav(tmp_path / "streamed.wav", ONE, 2.0, 16000, data_size=0xFFFFFFFF)
    assert probe(str(streamed)).duration == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("name", "codec", "fmt", "video", "container", "found_codec"),
    [
        ("a.mp3", "mp3", None, False, "mp3", "mp3float"),
        ("a.m4a", "aac", "ipod", False, "mov,mp4,m4a,3gp,3g2,mj2", "aac"),
        ("a.opus", "libopus", "ogg", False, "ogg", "opus"),
        ("a.flac", "flac", None, False, "flac", "flac"),
        ("a.webm", "libopus", None, False, "matroska,webm", "opus"),
        ("v.mp4", "aac", None, True, "mov,mp4,m4a,3gp,3g2,mj2", "aac"),
    ],
)
def test_formats_from_their_headers(
    tmp_path: Path,
    name: str,
    codec: str,
    fmt: str | None,
    video: bool,
    container: str,
    found_codec: str,
) -> None:
    """Each container the service takes (and a video file) is probed with its codec, channels,
    rate and length; only the mono ones without video are sent as they are."""
    rate = 48000 if "opus" in codec else 44100
    mono = encode(tmp_path / name, ONE, 3.0, rate, codec=codec, format=fmt, video=video)
    found = probe(str(mono))
    assert (found.container, found.codec, found.channels, found.rate, found.video) == (
        container, found_codec, 1, rate, video
    )  # fmt: skip
    assert found.duration == pytest.approx(3.0, abs=0.05)
    assert found.size == mono.stat().st_size and found.bit_rate
    assert decide(found, PrepPolicy()) == (
        Decision(False, ("format",)) if video else Decision(True)
    )
    stereo = encode(tmp_path / f"s-{name}", TWO, 3.0, rate, codec=codec, format=fmt)
    assert probe(str(stereo)).channels == 2


@pytest.mark.parametrize(
    ("name", "codec", "rate"),
    [("a.amr", "libopencore_amrnb", 8000), ("a.aiff", "pcm_s16be", 16000)],
)
def test_formats_the_service_does_not_take_are_prepared(
    tmp_path: Path, name: str, codec: str, rate: int
) -> None:
    """AMR and AIFF are read, and prepared for their format (even mono and short)."""
    found = probe(str(encode(tmp_path / name, ONE, 2.0, rate, codec=codec)))
    assert found.channels == 1 and found.rate == rate
    assert decide(found, PrepPolicy()).reasons == ("format",)


def test_stereo_vorbis(tmp_path: Path) -> None:
    """Ogg/Vorbis (FFmpeg's own encoder writes stereo only) is probed, and stereo is prepared."""
    found = probe(str(encode(tmp_path / "a.ogg", TWO, 3.0, 44100, codec="vorbis")))
    assert (found.container, found.codec, found.channels) == ("ogg", "vorbis", 2)
    assert decide(found, PrepPolicy()).reasons == ("stereo",)


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"", "PyAV cannot open it"),
        (os.urandom(5000), "PyAV cannot open it"),
        (b"hello, this is a text file\n" * 100, "PyAV cannot open it"),
    ],
)
def test_what_pyav_cannot_open_is_unreadable(tmp_path: Path, content: bytes, cause: str) -> None:
    """Garbage, an empty or a text file: Unreadable (an ItemError, cause invalid), one line."""
    path = tmp_path / "x.wav"
    path.write_bytes(content)
    with pytest.raises(Unreadable, match=f"^unreadable audio: {cause}") as caught:
        probe(str(path))
    assert caught.value.outcome.cause == "invalid" and "\n" not in str(caught.value)
    assert str(tmp_path) not in str(caught.value)


def test_video_without_audio_is_unreadable(tmp_path: Path) -> None:
    """A file with a video stream and no audio stream: Unreadable, "no audio stream"."""
    import av
    import numpy as np

    path = tmp_path / "silent-film.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for k in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = k
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(Unreadable, match="no audio stream"):
        probe(str(path))


def test_special_files_are_never_read(tmp_path: Path) -> None:
    """A FIFO (whose read would wait for a writer) and a folder are Unreadable at once."""
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(Unreadable, match="not a regular file"):
        probe(str(fifo))
    with pytest.raises(Unreadable):
        probe(str(tmp_path))
    with pytest.raises(Unreadable, match="No such file"):
        probe(str(tmp_path / "missing.wav"))


def test_a_playlist_never_makes_ffmpeg_connect(tmp_path: Path) -> None:
    """An HLS playlist in the archive is Unreadable and FFmpeg opens none of its URLs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        playlist = tmp_path / "talk.m3u8"
        playlist.write_text(
            "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n"
            f"http://127.0.0.1:{port}/segment.ts\n#EXT-X-ENDLIST\n"
        )
        with pytest.raises(Unreadable):
            probe(str(playlist))
        with pytest.raises(TimeoutError):
            server.accept()


def test_probe_of_a_short_wav_costs_well_under_a_millisecond(tmp_path: Path) -> None:
    """Every clip sent as is is probed: a short WAV costs under 0.2 ms of CPU (measured ~8 us;
    PyAV's open would be 0.2-4 ms)."""
    path = str(make_wav(tmp_path / "clip.wav", 3.0, 440, 16000))
    probe(path)
    began = time.process_time()
    for _ in range(500):
        probe(path)
    assert (time.process_time() - began) / 500 < 0.0002


def _probe(
    channels: int = 1, rate: int = 16000, duration: float | None = 30.0, **kw: object
) -> Probe:
    fields: dict[str, object] = {
        "container": "wav", "codec": "pcm_s16le", "channels": channels, "rate": rate,
        "duration": duration, "size": 1_000_000, "bit_rate": rate * 16 * channels,
    }  # fmt: skip
    fields.update(kw)
    return Probe(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("found", "policy", "reasons"),
    [
        (_probe(), PrepPolicy(), ()),
        (_probe(codec="pcm_u8", rate=8000), PrepPolicy(), ()),
        (_probe(rate=44100), PrepPolicy(), ("pcm over 16 kHz",)),
        (_probe(codec="pcm_s24le"), PrepPolicy(), ("pcm over 16 bits",)),
        (_probe(channels=2), PrepPolicy(), ("stereo",)),
        (_probe(channels=6), PrepPolicy(), ("multichannel",)),
        (_probe(channels=2), PrepPolicy(channels="split"), ("split channels", "stereo")),
        (_probe(duration=601.0), PrepPolicy(), ("long",)),
        (_probe(duration=600.0), PrepPolicy(), ()),
        (_probe(duration=120.0), PrepPolicy(max_chunk=60.0), ("long",)),
        (_probe(duration=None), PrepPolicy(), ("unknown length",)),
        (_probe(size=250 * 2**20), PrepPolicy(), ("oversize",)),
        (_probe(size=250_000_001), PrepPolicy(), ("oversize",)),  # the run's decimal 250 MB
        (_probe(container="mp3", codec="mp3float", rate=44100), PrepPolicy(), ()),
        (_probe(container="aiff", codec="pcm_s16be"), PrepPolicy(), ("format",)),
        (_probe(container="ogg", codec="flac"), PrepPolicy(), ("format",)),
        (
            _probe(container="mov,mp4,m4a,3gp,3g2,mj2", codec="aac", video=True),
            PrepPolicy(),
            ("format",),
        ),
        (_probe(), PrepPolicy(transcode="flac"), ("transcode flac",)),
        (_probe(container="flac", codec="flac"), PrepPolicy(transcode="opus"), ("transcode opus",)),
        (_probe(rate=44100), PrepPolicy(transcode="off"), ()),
    ],
)
def test_decide(found: Probe, policy: PrepPolicy, reasons: tuple[str, ...]) -> None:
    """As is only when the service takes it and nothing is gained; else the reasons, in order."""
    decision = decide(found, policy)
    assert decision == Decision(not reasons, reasons)


def test_transcode_off_refuses_what_the_service_cannot_take() -> None:
    """--transcode off sends originals, and refuses a stereo, long, foreign or oversize file
    with one line that names every cause and the way out."""
    found = _probe(channels=2, duration=3600.0, container="amr", codec="amrnb", size=300 * 2**20)
    decision = decide(found, PrepPolicy(transcode="off"))
    assert not decision.as_is and decision.reasons == ("stereo", "long", "format", "oversize")
    assert decision.refuse == (
        "the service cannot take it as it is: 2 channels (the service takes mono only); "
        "3600 s long (over --max-chunk 600 s); amr/amrnb (the service takes WAV, MP3, FLAC, OGG, "
        "M4A, WebM); 314572800 bytes (the service takes under 250000000); use --transcode auto"
    )
    assert decide(_probe(duration=None), PrepPolicy(transcode="off")) == Decision(True)


@pytest.mark.parametrize(
    "header",
    [
        {}, {"rate": 8000}, {"rate": 22050}, {"channels": 2}, {"bits": 8}, {"bits": 24},
        {"tag": 3, "bits": 32}, {"declared": 0}, {"declared": 0xFFFFFFFF}, {"declared": 10**9},
        {"declared": 100}, {"frames": 16000 * 700}, {"align": 4}, {"rate": 0}, {"riff": b"RIFX"},
    ],
)  # fmt: skip
@pytest.mark.parametrize(
    "policy",
    [PrepPolicy(), PrepPolicy(max_chunk=10.0), PrepPolicy(transcode="flac"),
     PrepPolicy(transcode="off"), PrepPolicy(max_bytes=1000)],
)  # fmt: skip
def test_the_as_is_fast_path_agrees_with_probe_and_decide(
    header: dict[str, int | bytes], policy: PrepPolicy
) -> None:
    """wav_as_is (a canonical header's fast path) never says as is when probe_head + decide
    would not, and (under --transcode auto) always when they would: over rates, widths,
    channels, lying and streamed sizes and policies."""
    rate = int(header.get("rate", 16000))
    channels, bits = int(header.get("channels", 1)), int(header.get("bits", 16))
    align = int(header.get("align", channels * bits // 8))
    frames = int(header.get("frames", 16000 * 12))
    data = bytes(frames * max(1, align)) if frames < 16000 * 100 else b""
    size = 44 + (len(data) if data else frames * align)
    declared = int(header.get("declared", size - 44))
    riff = header.get("riff", b"RIFF")
    assert isinstance(riff, bytes)
    head = (
        riff + struct.pack("<I", size - 8) + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, int(header.get("tag", 1)), channels, rate,
                      rate * max(1, align), align, bits)
        + b"data" + struct.pack("<I", declared) + data[:4052]
    )  # fmt: skip
    found = probe_head(head, size)
    expected = found is not None and decide(found, policy).as_is
    fast = wav_as_is(head, size, policy)
    assert fast == expected if policy.transcode == "auto" else not fast
