"""prepare(): decode once, downmix or split channels, 16 kHz, cut at silences, FLAC/Opus chunks
whose speech the emulator hears at the true times; deterministic, bounded memory."""

from __future__ import annotations

import io
import itertools
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from audio_fixtures import Burst, encode, write_wav

from batchscribe.audio.prepare import RATE, Chunk, Prepared, prepare
from batchscribe.audio.probe import PrepPolicy, Unreadable
from batchscribe.emulator.transcripts import analyse, sniff

PITCHES = (262.0, 330.0, 392.0, 523.0, 659.0)


def _speech(
    seconds: float, seed: int, *, gaps: tuple[float, ...] = (0.15, 0.8, 1.5)
) -> list[Burst]:
    """Bursts of 0.4-3 s at known times and pitches, with pauses short and long."""
    pick = random.Random(seed)
    bursts, at = [], 1.0
    while at < seconds - 4:
        length = pick.uniform(0.4, 3.0)
        bursts.append((at, at + length, pick.choice(PITCHES)))
        at += length + pick.choice(gaps)
    return bursts


def _heard(prepared: Prepared, channel: int | None = None) -> list[tuple[float, float]]:
    """The speech the emulator finds in each chunk, shifted to the original timeline and
    kept as the overlap de-dup says (a region's middle inside [keep_from, keep_until))."""
    found = []
    for chunk in prepared.chunks:
        if chunk.channel != channel:
            continue
        body = Path(chunk.path).read_bytes()
        assert sniff(body[:16]) == {"audio/flac": "flac", "audio/ogg": "ogg"}[chunk.content_type]
        signal = analyse(io.BytesIO(body), sniff(body[:16]) or "")
        assert signal.channels == 1 and signal.rate in (RATE, 48000)
        assert signal.duration == pytest.approx((chunk.end - chunk.start) / RATE, abs=0.03)
        offset = chunk.start / chunk.rate
        for region in signal.regions:
            middle = offset + (region.start + region.end) / 2
            if chunk.keep_from is not None and middle < chunk.keep_from:
                continue
            if chunk.keep_until is not None and middle >= chunk.keep_until:
                continue
            found.append((offset + region.start, offset + region.end))
    return found


def _merge(bursts: list[Burst], bridge: float = 0.2) -> list[tuple[float, float]]:
    """What the emulator calls one region: bursts closer than ``bridge`` are one."""
    merged: list[tuple[float, float]] = []
    for start, end, _ in sorted(bursts):
        if merged and start - merged[-1][1] < bridge:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _assert_same_times(heard: list[tuple[float, float]], truth: list[tuple[float, float]]) -> None:
    """Every true region heard once, at its time within 0.15 s (nothing lost, nothing doubled)."""
    assert len(heard) == len(truth)
    for (start, end), (true_start, true_end) in zip(heard, truth, strict=True):
        assert start == pytest.approx(true_start, abs=0.15)
        assert end == pytest.approx(true_end, abs=0.15)


def _check_chunks(prepared: Prepared, max_chunk: float) -> None:
    """Chunks cover the timeline in order, each at most max_chunk, indices 0..n-1."""
    assert [c.index for c in prepared.chunks] == list(range(len(prepared.chunks)))
    for channel in {c.channel for c in prepared.chunks}:
        own = [c for c in prepared.chunks if c.channel == channel]
        assert own[0].start == 0 and own[0].keep_from is None and own[-1].keep_until is None
        assert own[-1].end == round(prepared.duration * RATE)
        for chunk, following in itertools.pairwise(own):
            assert following.start <= chunk.end and following.start > chunk.start
        for chunk in own:
            assert 0 < chunk.end - chunk.start <= max_chunk * RATE
            assert Path(chunk.path).stat().st_size == chunk.size


@pytest.mark.slow
@pytest.mark.parametrize("transcode", ["auto", "opus"])
def test_long_stereo_comes_back_at_the_true_times(tmp_path: Path, transcode: str) -> None:
    """A 25-minute 44.1 kHz stereo WAV (speech on both channels) becomes 16 kHz mono chunks of
    at most 10 minutes, cut at silences, whose speech the emulator hears at the true times,
    none lost or doubled at a boundary; FLAC by default, Ogg/Opus at its bitrate."""
    seconds = 25 * 60
    speech = _speech(seconds, 1)
    left, right = speech[0::2], speech[1::2]  # two parties taking turns
    path = write_wav(tmp_path / "meeting.wav", [left, right], seconds, 44100)
    policy = PrepPolicy(transcode="opus" if transcode == "opus" else "auto")
    prepared = prepare(str(path), policy, str(tmp_path))
    assert prepared.duration == seconds and prepared.channels == 2
    assert prepared.bytes_in == path.stat().st_size
    assert prepared.transcoded_to == ("opus" if transcode == "opus" else "flac")
    assert len(prepared.chunks) == 3 and all(c.channel is None for c in prepared.chunks)
    _check_chunks(prepared, 600)
    assert all(c.keep_from is None and c.keep_until is None for c in prepared.chunks)  # silences
    _assert_same_times(_heard(prepared), _merge(speech))
    sent = sum(c.size for c in prepared.chunks)
    if transcode == "opus":  # at most the bitrate asked for (32 kbit/s), whatever the content
        assert sent < seconds * 32000 / 8
    else:
        assert sent < prepared.bytes_in / 20


def test_split_channels_are_chunked_apart(tmp_path: Path) -> None:
    """--channels split: each channel its own chunks (channel 0, then 1), each channel's speech
    at its own true times, none of the other's."""
    seconds = 70.0
    left, right = _speech(seconds, 2), _speech(seconds, 3)
    path = write_wav(tmp_path / "call.wav", [left, right], seconds, 48000)
    policy = PrepPolicy(channels="split", max_chunk=30.0)
    prepared = prepare(str(path), policy, str(tmp_path))
    _check_chunks(prepared, 30.0)
    channels = [c.channel for c in prepared.chunks]
    assert channels == sorted(channels) and set(channels) == {0, 1}
    assert all(Path(c.path).name.startswith(f"c{c.channel}-") for c in prepared.chunks)
    _assert_same_times(_heard(prepared, 0), _merge(left))
    _assert_same_times(_heard(prepared, 1), _merge(right))


def test_no_silence_cuts_with_an_overlap_and_keeps_each_word_once(tmp_path: Path) -> None:
    """Speech with no pause long enough to cut in: chunks end at the window and the next begins
    2 s earlier; keep windows meet in the overlap's middle, so each region is heard once."""
    seconds = 50.0
    bursts = _speech(seconds, 4, gaps=(0.15, 0.25))
    path = write_wav(tmp_path / "talk.wav", [bursts], seconds, 16000)
    prepared = prepare(str(path), PrepPolicy(max_chunk=20.0), str(tmp_path))
    _check_chunks(prepared, 20.0)
    first, second = prepared.chunks[0], prepared.chunks[1]
    assert first.end - first.start == 20 * RATE and second.start == first.end - 2 * RATE
    assert first.keep_until == second.keep_from == (first.end - RATE) / RATE
    heard = _heard(prepared)
    assert len(heard) == len(set(heard))
    truth = _merge(bursts)
    # a region cut at a chunk's hard edge is heard in two pieces; every true time is covered
    for start, end in truth:
        assert any(a <= start + 0.15 and b >= start for a, b in heard)
        assert any(a <= end and b >= end - 0.15 for a, b in heard)


def test_same_file_same_chunks(tmp_path: Path) -> None:
    """Cutting is deterministic: the same file and policy give the same chunks, byte for byte
    (resume at chunk granularity relies on it)."""
    path = write_wav(tmp_path / "a.wav", [_speech(75, 5), _speech(75, 6)], 75, 44100)
    runs = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        prepared = prepare(str(path), PrepPolicy(max_chunk=30.0), str(tmp_path / name))
        runs.append(
            [
                (c.start, c.end, c.keep_from, c.keep_until, Path(c.path).read_bytes(), c.path[-9:])
                for c in prepared.chunks
            ]
        )
    assert runs[0] == runs[1] and len(runs[0]) >= 3


def test_other_formats_and_odd_files(tmp_path: Path) -> None:
    """A video file, an MP3, a 0.2 s clip and a file of silence are prepared (one chunk each);
    a WAV whose header claims 10 minutes but holds 3 s lasts 3 s."""
    bursts = [(0.5, 1.5, 440.0)]
    cases = {
        "v.mp4": (encode(tmp_path / "v.mp4", [bursts], 3.0, 44100, codec="aac", video=True), 3.0),
        "a.mp3": (encode(tmp_path / "a.mp3", [bursts, bursts], 3.0, 44100, codec="mp3"), 3.0),
        "short": (write_wav(tmp_path / "short.wav", [[(0.05, 0.15, 440.0)]], 0.2, 8000), 0.2),
        "quiet": (write_wav(tmp_path / "quiet.wav", [[]], 30.0, 16000), 30.0),
        "lies": (write_wav(tmp_path / "lie.wav", [bursts], 3.0, 16000, data_size=19_200_000), 3.0),
    }
    for name, (path, seconds) in cases.items():
        (tmp_path / f"work-{name}").mkdir()
        prepared = prepare(str(path), PrepPolicy(max_chunk=20.0), str(tmp_path / f"work-{name}"))
        assert prepared.duration == pytest.approx(seconds, abs=0.05), name
        assert len(prepared.chunks) == (2 if name == "quiet" else 1), name
        _check_chunks(prepared, 20.0)
        heard = _heard(prepared)
        if name in ("v.mp4", "a.mp3", "lies"):
            _assert_same_times(heard, [(0.5, 1.5)])
        if name == "quiet":
            assert heard == []


def test_unreadable_files_raise_unreadable(tmp_path: Path) -> None:
    """Garbage bytes, and a WAV header with no samples: Unreadable, nothing left behind."""
    garbage = tmp_path / "junk.wav"
    garbage.write_bytes(bytes(range(256)) * 40)
    empty = write_wav(tmp_path / "empty.wav", [[]], 0.0, 16000)
    for path in (garbage, empty):
        work = tmp_path / f"work-{path.stem}"
        work.mkdir()
        with pytest.raises(Unreadable, match=r"^unreadable audio: "):
            prepare(str(path), PrepPolicy(), str(work))
        assert list(work.iterdir()) == []
    with pytest.raises(ValueError, match="transcode off"):
        prepare(str(empty), PrepPolicy(transcode="off"), str(tmp_path))


@pytest.mark.slow
def test_memory_stays_bounded_whatever_the_length(tmp_path: Path) -> None:
    """Preparing 40 minutes of 44.1 kHz stereo (423 MB) raises peak RSS by under 64 MB: the
    audio is never held whole, only a window's tail per track."""
    path = write_wav(tmp_path / "long.wav", [_speech(2400, 7), _speech(2400, 8)], 2400, 44100)
    script = textwrap.dedent(
        f"""
        import resource, av
        from batchscribe.audio.prepare import prepare
        from batchscribe.audio.probe import PrepPolicy
        import batchscribe.audio.split, batchscribe.emulator.transcripts
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        prepare({str(path)!r}, PrepPolicy(), {str(tmp_path)!r})
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 64, out.stdout


def test_chunk_offsets_are_exact_samples(tmp_path: Path) -> None:
    """Chunk bounds are 16 kHz sample indices on hop boundaries: start / rate is exact."""
    path = write_wav(tmp_path / "a.wav", [_speech(45, 9)], 45, 22050)
    prepared = prepare(str(path), PrepPolicy(max_chunk=15.0), str(tmp_path))
    for chunk in prepared.chunks:
        assert isinstance(chunk, Chunk) and chunk.rate == RATE
        assert chunk.start % 160 == 0
