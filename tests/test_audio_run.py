"""The audio stage in a run, end to end: the real CLI against the emulator (which decodes the
audio and places words on its speech), real files made with numpy/PyAV."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from audio_fixtures import Burst, encode, make_wav, write_wav
from conftest import complete_lines, read_results, wait_until

from batchscribe.emulator.transcripts import Region, content_key, transcribe

Run = Callable[..., subprocess.CompletedProcess[str]]


def _speech(seconds: float, seed: int, start: float = 1.0) -> list[Burst]:
    """Bursts of whole half-seconds at notes of the scale, with 0.5-1.5 s pauses: the
    emulator gives each one a word per 0.5 s (see the note in tests/audio/test_stitch.py)."""
    rng = np.random.default_rng(seed)
    bursts, at = [], start
    while at < seconds - 5:
        length = 0.5 * int(rng.integers(2, 9))
        freq = 220 * 2 ** (int(rng.integers(0, 24)) / 12)
        bursts.append((at, at + length, freq))
        at += length + 0.5 * int(rng.integers(1, 4))
    return bursts


def _truth(bursts: Sequence[Burst]) -> list[tuple[str, float, float]]:
    """The words the emulator would give the whole recording: (text, start, end)."""
    regions = tuple(Region(a, b, f) for a, b, f in sorted(bursts))
    return [(w.text, w.start, w.end) for w in transcribe(regions).words]


def _assert_words(words: list[dict[str, Any]], truth: list[tuple[str, float, float]]) -> None:
    """Every true word once, in order, at its time within 0.15 s (nothing lost or doubled)."""
    assert [w["word"] for w in words] == [text for text, _, _ in truth]
    for word, (_, start, end) in zip(words, truth, strict=True):
        assert abs(word["start"] - start) <= 0.15, (word, start)
        assert abs(word["end"] - end) <= 0.15, (word, end)


def _run(run_cli: Run, emu: Any, source: Path, out: Path, *flags: Any) -> dict[str, Any]:
    """Run the CLI on the folder of ``source`` (which holds only it); the one item record."""
    endpoint = emu.endpoint()
    proc = run_cli("run", source.parent, "--out", out, "--endpoint", endpoint, "--no-progress",
                   *flags, timeout=300)  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    items, _ = read_results(out)
    assert len(items) == 1
    return items[0]


LONG_S = 25 * 60
LONG_BURSTS = _speech(LONG_S, 25)


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 25-minute 44.1 kHz stereo WAV (264 MB), the same speech on both channels."""
    folder = tmp_path_factory.mktemp("long")
    return write_wav(folder / "meeting.wav", [LONG_BURSTS, LONG_BURSTS], LONG_S, 44100)


@pytest.mark.slow
@pytest.mark.parametrize("transcode", ["auto", "opus"])
def test_a_long_stereo_recording_comes_back_as_one_record_at_the_true_times(
    long_wav: Path, tmp_path: Path, run_cli: Run, checked_emulator: Any, transcode: str
) -> None:
    """A 25-minute stereo WAV becomes 3 chunks sent apart and ONE record whose every word sits
    at its true time (within 0.15 s), none missing or doubled at a boundary."""
    emu = checked_emulator()
    record = _run(run_cli, emu, long_wav, tmp_path / "r.jsonl", "--transcode", transcode)
    assert record["status"] == "ok", record
    assert emu.stats()["requests"] == 3
    prepared = record["prepared"]
    assert prepared["chunks"] == 3 and prepared["channels"] == 1
    assert prepared["transcoded_to"] == ("opus" if transcode == "opus" else "flac")
    assert prepared["bytes_sent"] < long_wav.stat().st_size / (20 if transcode == "auto" else 40)
    assert record["duration"] == pytest.approx(LONG_S, abs=0.01)
    _assert_words(record["words"], _truth(LONG_BURSTS))
    assert record["transcription"] == " ".join(w["word"] for w in record["words"])
    assert len((tmp_path / "r.parts.jsonl").read_bytes().splitlines()) == 3  # each chunk kept


def test_split_channels_label_every_word_with_its_channel(
    tmp_path: Path, run_cli: Run, checked_emulator: Any
) -> None:
    """--channels split on a stereo call: each channel transcribed apart, one record, every
    word carries its channel and sits at that channel's speech."""
    left, right = _speech(40, 1), _speech(40, 2, start=1.25)
    wav = write_wav(tmp_path / "in" / "call.wav", [left, right], 40, 8000)
    emu = checked_emulator()
    record = _run(run_cli, emu, wav, tmp_path / "r.jsonl", "--channels", "split")
    assert record["status"] == "ok", record
    assert record["prepared"]["channels"] == 2 and emu.stats()["requests"] == 2
    for channel, bursts in ((0, left), (1, right)):
        words = [w for w in record["words"] if w["channel"] == channel]
        _assert_words(words, _truth(bursts))
    assert all("channel" in u for u in record["utterances"])


@pytest.mark.slow
def test_a_rerun_after_kill_9_sends_only_the_missing_chunks(
    tmp_path: Path, run_cli: Run, spawn_cli: Callable[..., subprocess.Popen[str]],
    emulator: Any,
) -> None:  # fmt: skip
    """SIGKILL while a recording's chunks are in flight: its pool workers end and delete its
    temp folder; the rerun sends only the chunks whose answers were not kept, and the record
    is whole (every word at its true time)."""
    bursts = _speech(180, 9)
    wav = write_wav(tmp_path / "in" / "talk.wav", [bursts, bursts], 180, 16000)
    emu = emulator(latency_ms=1500)
    out = tmp_path / "r.jsonl"
    flags = ("--endpoint", emu.endpoint(), "--max-chunk", "40s", "-j", "1", "--no-progress")
    scratch = tmp_path / "tmp"  # the run's temp folder goes here
    scratch.mkdir()
    proc = spawn_cli("run", wav.parent, "--out", out, *flags, env={"TMPDIR": str(scratch)})
    parts = tmp_path / "r.parts.jsonl"
    wait_until(lambda: complete_lines(parts) >= 2, timeout=60, what="two chunk answers kept")
    wait_until(lambda: emu.stats()["in_flight"] >= 1, what="a chunk in flight")
    assert list(scratch.iterdir())  # chunk files of the run being killed
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # its workers notice and go, deleting the temp folder (nothing left behind)
    wait_until(lambda: not list(scratch.iterdir()), timeout=10, what="the temp folder gone")
    kept = complete_lines(parts)
    first = emu.stats()["requests"]
    assert not out.exists() or not read_results(out)[0]  # no record yet
    proc2 = run_cli("run", wav.parent, "--out", out, *flags, timeout=120,
                    env={"TMPDIR": str(scratch)})  # fmt: skip
    assert proc2.returncode == 0, proc2.stderr
    (record,), _ = read_results(out)
    chunks = record["prepared"]["chunks"]
    assert chunks >= 5 and 2 <= kept < chunks
    assert emu.stats()["requests"] - first == chunks - kept  # only the missing ones
    _assert_words(record["words"], _truth(bursts))
    assert not list(scratch.iterdir())  # a run that ends deletes its temp folder


def test_odd_files_fail_or_pass_with_a_clear_cause(
    tmp_path: Path, run_cli: Run, checked_emulator: Any
) -> None:
    """Unreadable -> failed "unreadable audio" without a request; video files (mp4, mkv) and
    AIFF (found by the folder scan), a 0.2 s stereo clip, an all-silence file and a WAV whose
    header lies are prepared and answered."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "junk.mp3").write_bytes(bytes(range(256)) * 40)
    speech = _speech(12, 3)
    encode(folder / "clip.mp4", [speech], 12, 16000, codec="aac", video=True)
    encode(folder / "film.mkv", [speech], 12, 16000, codec="libopus", video=True)
    encode(folder / "take.aiff", [speech, speech], 12, 44100, codec="pcm_s16be")
    write_wav(folder / "short.wav", [[(0.0, 0.2, 440.0)], [(0.0, 0.2, 440.0)]], 0.2, 44100)
    write_wav(folder / "silence.wav", [[], []], 30, 44100)
    write_wav(folder / "liar.wav", [speech, speech], 12, 22050, data_size=2**31)
    emu = checked_emulator()
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", folder, "--out", out, "--endpoint", emu.endpoint(), timeout=120)
    assert proc.returncode == 1, proc.stderr
    records = {Path(r["source"]).name: r for r in read_results(out)[0]}
    junk = records["junk.mp3"]
    assert (junk["status"], junk["cause"]) == ("failed", "invalid")
    assert junk["error"].startswith("unreadable audio: ") and junk["attempts"] == 0
    assert emu.stats()["requests"] == 6  # none for the junk
    for name in ("clip.mp4", "film.mkv", "take.aiff", "short.wav", "silence.wav", "liar.wav"):
        assert records[name]["status"] == "ok", records[name]
        assert records[name]["prepared"]["chunks"] == 1
    for name in ("clip.mp4", "film.mkv", "take.aiff"):  # video and formats the service lacks
        _assert_words(records[name]["words"], _truth(speech))
    _assert_words(records["liar.wav"]["words"], _truth(speech))
    assert records["liar.wav"]["duration"] == pytest.approx(12, abs=0.01)  # decoded, not claimed
    assert records["silence.wav"]["transcription"] == ""
    assert records["short.wav"]["duration"] == pytest.approx(0.2, abs=0.01)


def test_transcode_off_refuses_what_the_service_cannot_take(
    tmp_path: Path, run_cli: Run, checked_emulator: Any
) -> None:
    """--transcode off: a stereo WAV and a video file fail (cause invalid, the reason in one
    line) without a request; a mono clip the service takes is sent."""
    folder = tmp_path / "in"
    write_wav(folder / "stereo.wav", [[(0.5, 1.5, 440.0)], []], 2, 16000)
    encode(folder / "clip.mp4", [[(0.5, 1.5, 440.0)]], 2, 16000, codec="aac", video=True)
    make_wav(folder / "mono.wav", 1.0, 440, 16000)
    emu = checked_emulator()
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", folder, "--out", out, "--endpoint", emu.endpoint(),
                   "--transcode", "off")  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    records = {Path(r["source"]).name: r for r in read_results(out)[0]}
    assert records["mono.wav"]["status"] == "ok" and "prepared" not in records["mono.wav"]
    for name, said in (("stereo.wav", "2 channels"), ("clip.mp4", "with video")):
        record = records[name]
        assert (record["status"], record["cause"], record["attempts"]) == ("failed", "invalid", 0)
        assert said in record["error"] and "\n" not in record["error"]
    assert emu.stats()["requests"] == 1


def test_a_run_deletes_the_temp_folders_its_host_s_dead_runs_left(
    tmp_path: Path, run_cli: Run, checked_emulator: Any
) -> None:
    """A run that needs its temp folder first deletes those of this host's runs that are gone
    (killed before a pool worker could clean up); a live process's folder and another
    host's are kept, and its own is gone when it ends."""
    from batchscribe.run.prep import _host_tag

    scratch = tmp_path / "tmp"
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = _host_tag()
    stale = scratch / f"batchscribe-prep-{host}-{dead.pid}-abc"
    live = scratch / f"batchscribe-prep-{host}-{os.getpid()}-def"
    other = scratch / f"batchscribe-prep-{host}x-{dead.pid}-ghi"
    for folder in (stale, live, other):
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "part.flac").write_bytes(b"x" * 100)
    write_wav(tmp_path / "in" / "stereo.wav", [[(0.5, 1.5, 440.0)], [(0.5, 1.5, 440.0)]], 2,
              44100)  # fmt: skip
    emu = checked_emulator()
    proc = run_cli("run", tmp_path / "in", "--out", tmp_path / "r.jsonl", "--endpoint",
                   emu.endpoint(), env={"TMPDIR": str(scratch)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in scratch.iterdir()) == sorted([live.name, other.name])


def test_short_clips_stereo_downmixed_mono_sent_as_is(
    tmp_path: Path, run_cli: Run, checked_emulator: Any
) -> None:
    """A stereo 2-s clip is downmixed into one FLAC request; a mono 16 kHz WAV clip is sent as
    is: the request body is the original bytes, and the record has no ``prepared``."""
    folder = tmp_path / "in"
    write_wav(folder / "stereo.wav", [[(0.5, 1.5, 440.0)], [(0.5, 1.5, 440.0)]], 2, 44100)
    mono = make_wav(folder / "mono.wav", 2.0, 330, 16000)
    emu = checked_emulator()
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", folder, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 0, proc.stderr
    records = {Path(r["source"]).name: r for r in read_results(out)[0]}
    stats = emu.stats()
    assert stats["requests"] == 2
    assert stats["by_content"].get(content_key(mono.read_bytes())) == 1
    assert "prepared" not in records["mono.wav"]
    assert records["stereo.wav"]["prepared"] == {
        "chunks": 1, "channels": 1, "transcoded_to": "flac",
        "bytes_sent": records["stereo.wav"]["prepared"]["bytes_sent"],
    }  # fmt: skip
    assert [w["word"] for w in records["stereo.wav"]["words"]] == [
        text for text, _, _ in _truth([(0.5, 1.5, 440.0)])
    ]
    assert not list(tmp_path.glob("*.parts.jsonl"))  # single chunks keep no sidecar
