"""--dry-run and the audio stage: per source, the requests a run would make (chunks and
channels counted), audio hours, bytes as they are and after preparation, and the cost."""

from __future__ import annotations

import json
import struct
import subprocess
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audio_fixtures import make_wav

from batchscribe.audio.pack import Packer
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


# --------------------------------------------------------------------------------------------
# --dry-run --pack: the requests packing would make, from the run's own Packer


def _pack_archive(root: Path) -> tuple[Path, Path, list[tuple[str, str, float | None]]]:
    """Two manifests of real WAVs of known lengths (short clips in English and French, one
    without word times, two
    long recordings, a webhook item, a file whose length the headers do not tell, a URL); the
    entries as (id, params key, seconds), in manifest order (seconds None: not packed)."""
    audio = root / "audio"
    entries: list[tuple[str, str, float | None]] = []
    lines: dict[str, list[str]] = {"a.jsonl": [], "b.jsonl": []}

    def clip(manifest: str, name: str, seconds: float, key: str, extra: str = "") -> None:
        silent_wav(audio / f"{name}.wav", seconds, 16000, 1)
        lines[manifest].append(f'{{"id": "{name}", "path": "audio/{name}.wav"{extra}}}')
        entries.append((name, key, seconds if key in ("en", "fr") else None))

    for k in range(9):
        clip("a.jsonl", f"a{k}", 8.0 + 3 * k, "en")
        if k % 3 == 1:
            clip("a.jsonl", f"fa{k}", 10.0 + k, "fr", ', "language": "fr"')
    clip("a.jsonl", "long1", 75.0, "long")  # over --pack-max-item 60
    clip("a.jsonl", "hook", 12.0, "webhook",
         ', "model": "pulse-pro", "webhook_url": "https://example.invalid/hook"')  # fmt: skip
    for k in range(7):
        # (packed requests ask for word times: an item that does not want them shares a pack)
        clip("b.jsonl", f"b{k}", 5.0 + 4 * k, "en", ', "word_timestamps": false' * (k == 3))
        clip("b.jsonl", f"fb{k}", 30.0 - 2 * k, "fr", ', "language": "fr"')
    clip("b.jsonl", "long2", 200.0, "long")
    # 700,000 one-hertz frames: a header claiming eight days, a duration the dry run ignores
    with wave.open(str(audio / "liar.wav"), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(1)
        handle.writeframes(bytes(2 * 700_000))
    lines["b.jsonl"].append('{"id": "liar", "path": "audio/liar.wav"}')
    lines["b.jsonl"] += ['{"id": "web", "url": "https://example.invalid/a.wav"}']
    entries += [("liar", "unknown", None), ("web", "url", None)]
    for name, body in lines.items():
        (root / name).write_text("\n".join(body) + "\n")
    return root / "a.jsonl", root / "b.jsonl", entries


def test_dry_run_pack_counts_the_packs_the_packer_makes(tmp_path: Path, run_cli: RunCli) -> None:
    """`--dry-run --pack` on real WAVs of known lengths: the packs per source and in total are
    what the run's Packer makes of them in feed order (a pack counted where its first item
    is), English and French clips never share one, long files, a webhook item, a file of
    unknown length, a URL and a pack of one clip are sent alone; the gaps' billed audio and
    cost are shown."""
    first, second, entries = _pack_archive(tmp_path)
    packer = Packer(pack_seconds=100.0, max_item=60.0)
    in_first = first.read_text()
    where = {n: first if f'"id": "{n}"' in in_first else second for n, _, _ in entries}
    packs = []
    for name, key, seconds in entries:
        if seconds is not None:
            packs += packer.add(name, key, seconds)
    packs += packer.flush()
    assert {len(p.items) for p in packs} != {1} and len({p.key for p in packs}) == 2
    lone = {p.items[0].id for p in packs if len(p.items) == 1}  # (the run sends it alone)
    assert lone, "the archive has a clip no other clip shares a pack with"
    packs = [p for p in packs if len(p.items) > 1]
    per_source = {first: 0, second: 0}
    for p in packs:
        per_source[where[p.items[0].id]] += 1
    packed = {src: sum(1 for n, _, s in entries
                       if s is not None and where[n] == src and n not in lone)
              for src in (first, second)}  # fmt: skip
    items = {src: sum(1 for n, _, _ in entries if where[n] == src) for src in (first, second)}
    gaps = sum(p.seconds - sum(i.seconds for i in p.items) for p in packs)

    proc = run_cli("run", first, second, "--out", "r.jsonl", "--dry-run", "--pack",
                   "--pack-seconds", "100", "--pack-max-item", "60")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    total = len(entries)
    alone = total - sum(packed.values())
    requests = alone + len(packs)
    at = next(i for i, line in enumerate(lines) if line.startswith(f"requests: {total} for "))
    assert lines[at + 1] == (
        f"with --pack: {requests} request(s): {sum(packed.values())} item(s) in {len(packs)} "
        f"pack(s), {alone} sent alone; the gaps add about {gaps:.0f} s of billed audio "
        f"(cost {gaps / 3600 * 0.21:.2f})"
    )
    rows = lines[lines.index("per source:") + 1 :][:2]
    for row, src in zip(rows, (first, second), strict=True):
        assert row.startswith(f"  {src}: {items[src]} item(s), {items[src]} request(s)"), row
        assert row.endswith(
            f"; --pack: {packed[src]} item(s) in {per_source[src]} pack(s), "
            f"{items[src] - packed[src]} alone"
        ), row


def test_dry_run_pack_time_at_the_rate_beside_the_time_without(
    tmp_path: Path, run_cli: RunCli
) -> None:
    """`--dry-run --pack --rate 1/min`: the rough time counts the requests at the rate, without
    packing (one a clip) and with it (one a pack), side by side, at --pack's default of 16 in
    flight (or the -j given); without --pack, no pack line and 8 in flight; with --channels
    split, nothing is packed (as in the run)."""
    for k in range(40):
        silent_wav(tmp_path / "clips" / f"c{k:02d}.wav", 20.0, 16000, 1)
    proc = run_cli("run", "clips", "--out", "r.jsonl", "--dry-run", "--pack", "--rate", "1/min")
    assert proc.returncode == 0, proc.stderr
    packer = Packer()
    packs = [p for k in range(40) for p in packer.add(str(k), "en", 20.0)] + packer.flush()
    assert len(packs) == 2
    # (--pack's own default: 16 in flight; a given -j stays)
    assert "rough time at concurrency 16: 40 min; with --pack: 2 min" in proc.stdout.splitlines()
    proc = run_cli("run", "clips", "--out", "r.jsonl", "--dry-run", "--pack", "--rate", "1/min",
                   "-j", "4")  # fmt: skip
    assert "rough time at concurrency 4: 40 min; with --pack: 2 min" in proc.stdout.splitlines()
    proc = run_cli("run", "clips", "--out", "r.jsonl", "--dry-run", "--rate", "1/min")
    assert "rough time at concurrency 8: 40 min" in proc.stdout.splitlines()
    assert "--pack" not in proc.stdout
    # --channels split: the run packs nothing (a file's channels are sent apart)
    proc = run_cli("run", "clips", "--out", "r.jsonl", "--dry-run", "--pack", "--channels",
                   "split")  # fmt: skip
    assert (
        "with --pack: 40 request(s): 0 item(s) in 0 pack(s), 40 sent alone; the gaps add "
        "about 0 s of billed audio (cost 0.00)" in proc.stdout.splitlines()
    )


def test_dry_run_time_at_a_rate_counts_requests_not_items(tmp_path: Path, run_cli: RunCli) -> None:
    """At --rate, the rough time counts every request a run makes: a 25-minute call cut in
    three chunks takes three starts, not one."""
    silent_wav(tmp_path / "calls" / "call.wav", 1500, 16000, 1)
    proc = run_cli("run", "calls", "--out", "r.jsonl", "--dry-run", "--rate", "1/min")
    assert proc.returncode == 0, proc.stderr
    assert "requests: 3 for 1 item(s); 1 file(s) to prepare (long: 1)" in proc.stdout
    assert "rough time at concurrency 8: 3 min" in proc.stdout.splitlines()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--pack", "--pack-seconds", "5"), "--pack-seconds must be from 30 s to 600 s"),
        (("--pack-max-item", "0.5"), "--pack-max-item must be from 1 s to 600 s"),
        (("--max-chunk", "1"), "--max-chunk must be from 10 s to 86400 s"),
        (("--opus-bitrate", "1k"), "--opus-bitrate must be from 6k to 510k"),
    ],
)
def test_dry_run_refuses_audio_values_the_run_refuses(
    tmp_path: Path, run_cli: RunCli, flags: tuple[str, ...], message: str
) -> None:
    """A dry run refuses the audio and packing values a run refuses (exit 2, one line naming
    the flag), rather than predicting a run that would not start."""
    make_wav(tmp_path / "clips" / "a.wav", seconds=2.0, rate=16000)
    proc = run_cli("run", "clips", "--out", "r.jsonl", "--dry-run", *flags)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_dry_run_time_at_the_rate_learnt_last_time(tmp_path: Path, run_cli: RunCli) -> None:
    """The rough time uses the rate a run on these results learnt (`OUT.rate.json`, its
    endpoint and model), as the next run starts from it, and says so; --rate lower than it
    wins; a hint for another model is not used."""
    import time

    from batchscribe.pulse import DEFAULT_ENDPOINT

    for k in range(40):
        silent_wav(tmp_path / "clips" / f"c{k:02d}.wav", 20.0, 16000, 1)
    hint = {"scope": f"{DEFAULT_ENDPOINT} model=pulse", "per_minute": 25.0,
            "learned_at": time.time()}  # fmt: skip
    (tmp_path / "r.jsonl.rate.json").write_text(json.dumps(hint))
    proc = run_cli("run", "clips", "--out", "r.jsonl", "--dry-run", "--pack")
    assert proc.returncode == 0, proc.stderr
    assert (
        "rough time at concurrency 16 and ~25/min (the rate learnt last time): 2 min; "
        "with --pack: 5 s"
    ) in proc.stdout.splitlines()
    proc = run_cli("run", "clips", "--out", "r.jsonl", "--dry-run", "--rate", "10/min")
    assert "rough time at concurrency 8: 4 min" in proc.stdout.splitlines()
    proc = run_cli("run", "clips", "--out", "r.jsonl", "--dry-run", "--model", "pulse-pro")
    assert "rough time at concurrency 8: 8 s" in proc.stdout.splitlines()
