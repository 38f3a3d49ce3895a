"""--dry-run and the audio stage: per source, the requests a run would make (chunks and
channels counted), audio hours, bytes as they are and after preparation, and the cost."""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audio_fixtures import make_wav

from batchscribe.audio.probe import PrepPolicy, Probe, decide
from batchscribe.run.dry_run import FLAC_BYTES_PER_S, dry_run, estimate

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def silent_wav(path: Path, seconds: float, rate: int, channels: int) -> Path:
    """A 16-bit PCM WAV of silence, written sparse (a 25-minute stereo file costs no disk)."""
    size = round(seconds * rate) * channels * 2
    header = b"RIFF" + struct.pack("<I", 36 + size) + b"WAVEfmt "
    header += struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
    header += b"data" + struct.pack("<I", size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(header)
        out.truncate(len(header) + size)
    return path


def _archive(root: Path) -> tuple[Path, Path]:
    """A folder (a 25-minute 16 kHz stereo call, a 2-s mono clip, a file PyAV cannot open) and
    a manifest naming a URL and the clip again under another id."""
    calls = root / "calls"
    silent_wav(calls / "call.wav", 1500, 16000, 2)
    make_wav(calls / "clip.wav", seconds=2.0, rate=16000)
    (calls / "broken.wav").write_bytes(b"RIFF not really a wave file" * 100)
    manifest = root / "more.jsonl"
    manifest.write_text(
        '{"id": "web", "url": "https://example.invalid/a.mp3"}\n'
        f'{{"id": "again", "path": "{calls / "clip.wav"}"}}\n'
    )
    return calls, manifest


def test_dry_run_reports_requests_bytes_and_cost_per_source(
    tmp_path: Path, run_cli: RunCli
) -> None:
    """The real CLI's --dry-run, default options: a 25-minute stereo call counts 3 requests
    (cut at 10 minutes) and about FLAC's bytes instead of its 96 MB; a mono clip one request of
    its own bytes; a file PyAV cannot open fails without a request (exit 1); a URL one request
    the service fetches. Per source and in total, with the model's list price."""
    calls, manifest = _archive(tmp_path)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", calls, manifest, "--out", out, "--dry-run")
    assert proc.returncode == 1, proc.stderr  # the unreadable file
    lines = proc.stdout.splitlines()
    assert "to fail without a request: 1 (unreadable audio: 1)" in lines
    clip = (calls / "clip.wav").stat().st_size
    prepared = round(1500 * FLAC_BYTES_PER_S)
    assert "requests: 6 for 4 item(s); 1 file(s) to prepare (stereo: 1, long: 1)" in lines
    assert (
        f"upload: about {(prepared + 2 * clip) / 1e6:.1f} MB after preparation "
        f"(as is: {(96_000_044 + 2 * clip) / 1e6:.1f} MB)"
    ) in lines
    per_source = lines[lines.index("per source:") + 1 :][:2]
    cost = 1502 / 3600 * 0.21
    assert per_source == [
        f"  {calls}: 2 item(s), 4 request(s), 0.417 h, upload about "
        f"{(prepared + clip) / 1e6:.1f} MB (as is {(96_000_044 + clip) / 1e6:.1f} MB), "
        f"cost {cost:.2f}",
        f"  {manifest}: 2 item(s), 2 request(s), 0.001 h, upload about {clip / 1e6:.1f} MB "
        f"(as is {clip / 1e6:.1f} MB), cost {2 / 3600 * 0.21:.2f}; duration unknown for 1",
    ]
    assert (
        f"estimated cost: {(1504) / 3600 * 0.21:.2f} at 0.21 per audio hour "
        "(the list price of pulse; --price-per-hour to change)"
    ) in lines
    assert not out.exists()
    proc = run_cli("run", calls, "--out", out, "--dry-run", "--model", "pulse-pro",
                   "--price-per-hour", "1")  # fmt: skip
    assert f"estimated cost: {1502 / 3600:.2f} at 1 per audio hour" in proc.stdout.splitlines()


@pytest.mark.parametrize(
    ("policy", "requests", "upload", "billed"),
    [
        (PrepPolicy(), 3, 1500 * FLAC_BYTES_PER_S, 1500),
        (PrepPolicy(channels="split"), 6, 2 * 1500 * FLAC_BYTES_PER_S, 3000),
        (PrepPolicy(transcode="opus", opus_bitrate=24000), 3, 1500 * 3000, 1500),
        (PrepPolicy(max_chunk=300), 6, 1500 * FLAC_BYTES_PER_S, 1500),
        (PrepPolicy(max_chunk=1800), 1, 1500 * FLAC_BYTES_PER_S, 1500),
    ],
)
def test_dry_run_follows_the_audio_stage_options(
    tmp_path: Path, policy: PrepPolicy, requests: int, upload: float, billed: float
) -> None:
    """The options of the run's audio stage change the count: --channels split sends (and
    bills) each channel, opus is counted at its bitrate, --max-chunk sets the chunks."""
    call = silent_wav(tmp_path / "in" / "call.wav", 1500, 16000, 2)
    plan = dry_run([str(call.parent)], str(tmp_path / "r.jsonl"), retry_failed=False,
                   rescan_changed=False, policy=policy)  # fmt: skip
    total = plan.total
    assert (total.requests, total.bytes_upload, total.billed_seconds) == (
        requests, round(upload), billed
    )  # fmt: skip


def test_transcode_off_counts_what_the_service_cannot_take_as_failing(tmp_path: Path) -> None:
    """With --transcode off, a stereo file fails without a request (as the run refuses it),
    a file over 250 MB is refused for its size, and a mono clip is sent as it is."""
    folder = tmp_path / "in"
    silent_wav(folder / "call.wav", 60, 16000, 2)
    silent_wav(folder / "huge.wav", 8000, 16000, 1)  # 256 MB
    make_wav(folder / "clip.wav", seconds=1.0, rate=16000)
    args: dict[str, Any] = {"retry_failed": False, "rescan_changed": False}
    plan = dry_run([str(folder)], str(tmp_path / "r.jsonl"), **args,
                   policy=PrepPolicy(transcode="off"))  # fmt: skip
    assert dict(plan.unfit) == {
        "cannot be sent as it is (--transcode off)": 1, "over the API's 250 MB limit": 1,
    }  # fmt: skip
    assert (plan.total.items, plan.total.requests, plan.total.prepared) == (1, 1, 0)
    plan = dry_run([str(folder)], str(tmp_path / "r.jsonl"), **args)  # auto: all three go
    assert (plan.total.items, plan.total.prepared, plan.reasons["oversize"]) == (3, 2, 1)


def test_estimate_of_a_file_of_unknown_length_and_one_sent_as_is() -> None:
    """A file whose length the headers do not tell counts one request per track and its own
    size (unknown duration); a mono 16 kHz WAV is one request of its own bytes."""
    mp3 = Probe("mp3", "mp3float", 2, 44100, None, 5_000_000, 128000)
    policy = PrepPolicy(channels="split")
    got = estimate(mp3, decide(mp3, policy), policy)
    assert (got.requests, got.bytes_upload, got.audio_seconds) == (2, 5_000_000, None)
    wav = Probe("wav", "pcm_s16le", 1, 16000, 30.0, 960_044, 256000)
    got = estimate(wav, decide(wav, PrepPolicy()), PrepPolicy())
    assert got == (1, 960_044, 30.0, 30.0, (), None)


def test_dry_run_through_the_cli_follows_the_audio_flags(tmp_path: Path, run_cli: RunCli) -> None:
    """`--dry-run --channels split --transcode opus` counts a request per channel and chunk
    and Opus's bytes, as the run with those flags would send."""
    silent_wav(tmp_path / "calls" / "call.wav", 1500, 16000, 2)
    proc = run_cli("run", "calls", "--out", "r.jsonl", "--dry-run", "--channels", "split",
                   "--transcode", "opus", "--opus-bitrate", "24k")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    why = "split channels: 1, stereo: 1, long: 1, transcode opus: 1"
    assert f"requests: 6 for 1 item(s); 1 file(s) to prepare ({why})" in lines
    opus = 2 * 1500 * 3000 / 1e6
    assert (
        f"upload: about {opus:.1f} MB after preparation (as is: 96.0 MB); "
        "billed audio 0.833 h (channels apart)"
    ) in lines
