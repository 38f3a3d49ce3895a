"""--pack in a run, end to end: the real CLI against the emulator (which decodes each packed
request and places words on its speech), real WAVs of tone bursts with known word times."""

from __future__ import annotations

import random
import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from audio_fixtures import Burst, encode, write_wav
from conftest import read_results, wait_until

from batchscribe.emulator.transcripts import Region, transcribe

Run = Callable[..., subprocess.CompletedProcess[str]]
Spawn = Callable[..., subprocess.Popen[str]]

#: Pitches of the scale (A3 .. A5): the emulator picks a region's words by its semitone.
PITCHES = tuple(220 * 2 ** (k / 12) for k in range(24))


def _bursts(seed: int, seconds: float) -> list[Burst]:
    """Bursts of whole half-seconds (a word per 0.5 s) 0.3-1 s apart, within ``seconds``."""
    pick = random.Random(seed)
    bursts: list[Burst] = []
    at = pick.uniform(0.1, 0.5)
    while True:
        length = 0.5 * pick.randint(1, 4)
        if at + length > seconds - 0.1:
            return bursts
        bursts.append((at, at + length, pick.choice(PITCHES)))
        at += length + pick.uniform(0.3, 1.0)


def _truth(bursts: Sequence[Burst]) -> list[tuple[str, float, float, int]]:
    """The words the emulator gives the clip alone: (text, start, end, utterance)."""
    regions = tuple(Region(a, b, f) for a, b, f in sorted(bursts))
    return [(w.text, w.start, w.end, w.utterance) for w in transcribe(regions).words]


def _assert_own_words(record: dict[str, Any], bursts: Sequence[Burst]) -> None:
    """The record holds exactly its clip's words, in order, each within 0.15 s of its time."""
    truth = _truth(bursts)
    words = record["words"]
    assert [w["word"] for w in words] == [t[0] for t in truth], record["id"]
    for word, (_, start, end, _) in zip(words, truth, strict=True):
        assert abs(word["start"] - start) <= 0.15, (record["id"], word, start)
        assert abs(word["end"] - end) <= 0.15, (record["id"], word, end)
    assert record["transcription"] == " ".join(t[0] for t in truth)


def _clips(folder: Path, lengths: Sequence[float], seed: int, rate: int = 16000) -> dict[str, Any]:
    """A WAV per length (a negative length: silence only) in ``folder``; name -> bursts."""
    made: dict[str, Any] = {}
    for index, length in enumerate(lengths):
        name = f"c{index:03d}.wav"
        bursts = [] if length < 0 else _bursts(seed * 1000 + index, length)
        write_wav(folder / name, [bursts], abs(length), rate)
        made[name] = bursts
    return made


def _run(run_cli: Run, source: Path, out: Path, emu: Any, *flags: Any, code: int = 0) -> Any:
    """Run the CLI with --pack; the item records by file name."""
    proc = run_cli("run", source, "--out", out, "--endpoint", emu.endpoint(), "--pack",
                   "--no-progress", *flags, timeout=180)  # fmt: skip
    assert proc.returncode == code, proc.stderr
    return {Path(r["source"]).name: r for r in read_results(out)[0]}


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_word_of_every_packed_item_lands_in_its_own_record(
    tmp_path: Path, run_cli: Run, checked_emulator: Any, seed: int
) -> None:
    """Random clip lengths (one of them silence only) packed into requests of at most 60 s:
    every word of every item comes back in that item's record at its true time (within
    0.15 s), none in a neighbour's; one request per pack, each item's `packed` says which."""
    pick = random.Random(seed)
    lengths = [round(pick.uniform(1.0, 20.0), 3) for _ in range(pick.randint(6, 12))]
    lengths[pick.randrange(len(lengths))] = -round(pick.uniform(1.0, 8.0), 3)
    made = _clips(tmp_path / "in", lengths, seed, rate=pick.choice([8000, 16000, 44100]))
    emu = checked_emulator()
    records = _run(run_cli, tmp_path / "in", tmp_path / "r.jsonl", emu, "--pack-seconds", "60",
                   "--pack-max-item", "30")  # fmt: skip
    assert set(records) == set(made)
    for name, bursts in made.items():
        record = records[name]
        assert record["status"] == "ok", record
        _assert_own_words(record, bursts)
        assert record["duration"] == pytest.approx(abs(lengths[int(name[1:4])]), abs=0.01)
    # (Workers hand items over in the order they finish probing them: a clip left over alone
    # at the end is sent alone, the normal way, without `packed`.)
    packed = [r for r in records.values() if "packed" in r]
    alone = len(records) - len(packed)
    packs = Counter(r["packed"]["request"] for r in packed)
    assert emu.stats()["requests"] == len(packs) + alone
    assert len(packs) >= 2 and alone <= len(packs)  # (over 60 s of clips in all)
    for record in packed:
        assert record["packed"]["offset"] >= 0
        assert record["packed"]["items"] == packs[record["packed"]["request"]] >= 2
        assert record["request_id"] == record["packed"]["request"]
    silent = next(records[name] for name, bursts in made.items() if not bursts)
    assert silent["transcription"] == "" and silent["words"] == []


def test_only_equal_params_share_a_pack_and_long_items_go_alone(
    tmp_path: Path, run_cli: Run, checked_emulator: Any
) -> None:
    """Two languages in one manifest make two packs; an item over --pack-max-item is sent
    alone, as it is, with no `packed`; records keep the items' own params."""
    made = _clips(tmp_path / "in", [3, 4, 5, 3, 4, 12], 7)
    names = sorted(made)
    lines = [
        {"id": name, "path": f"in/{name}", **({"language": "de"} if i % 2 else {})}
        for i, name in enumerate(names)
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    emu = checked_emulator()
    records = _run(run_cli, manifest, tmp_path / "r.jsonl", emu, "--pack-max-item", "10s")
    stats = emu.stats()
    assert stats["requests"] == 3
    assert stats["by_language"] == {"en": 1, "de": 2}
    long = records[names[-1]]
    assert "packed" not in long and long["params"] == {"language": "de"}
    for name in names[:-1]:
        record = records[name]
        assert record["status"] == "ok"
        assert record["packed"]["items"] == (3 if name in names[0:5:2] else 2)
        _assert_own_words(record, made[name])
    requests = {r["packed"]["request"] for r in records.values() if "packed" in r}
    assert len(requests) == 2


def test_without_word_timestamps_packed_records_have_no_words_and_pack_seconds_caps_items(
    tmp_path: Path, run_cli: Run, checked_emulator: Any
) -> None:
    """--no-word-timestamps: the pack still asks for word times (the split needs them), but
    each record is as the clip alone would get it: its transcription, `words` null. A
    --pack-seconds under the default --pack-max-item is no usage error: items longer than a
    pack go alone."""
    made = _clips(tmp_path / "in", [4, 5, 40], 11)
    emu = checked_emulator()
    records = _run(run_cli, tmp_path / "in", tmp_path / "r.jsonl", emu,
                   "--no-word-timestamps", "--pack-seconds", "30s")  # fmt: skip
    assert emu.stats()["requests"] == 2
    names = sorted(made)
    for name in names[:2]:
        record = records[name]
        assert record["packed"]["items"] == 2 and record["words"] is None
        assert record["transcription"] == " ".join(t[0] for t in _truth(made[name]))
    assert "packed" not in records[names[2]] and records[names[2]]["status"] == "ok"


def test_files_the_audio_stage_would_prepare_are_packed_too(
    tmp_path: Path, run_cli: Run, checked_emulator: Any
) -> None:
    """A stereo 44.1 kHz WAV and an MP4 (AAC) clip, which alone would be downmixed or
    transcoded, go in the pack beside a mono WAV, each mixed to mono: their words at their
    own times."""
    folder = tmp_path / "in"
    speech = {name: _bursts(seed, 6.0) for seed, name in enumerate(("a.wav", "b.wav", "c.mp4"))}
    write_wav(folder / "a.wav", [speech["a.wav"]], 6.0, 16000)
    write_wav(folder / "b.wav", [speech["b.wav"], speech["b.wav"]], 6.0, 44100)
    encode(folder / "c.mp4", [speech["c.mp4"]], 6.0, 16000, codec="aac")
    emu = checked_emulator()
    records = _run(run_cli, folder, tmp_path / "r.jsonl", emu)
    assert emu.stats()["requests"] == 1
    for name, bursts in speech.items():
        assert records[name]["packed"]["items"] == 3 and "prepared" not in records[name]
        _assert_own_words(records[name], bursts)


def test_diarized_speakers_are_numbered_per_item(
    tmp_path: Path, run_cli: Run, checked_emulator: Any
) -> None:
    """With --diarize the service numbers speakers per request: each packed item's speakers
    are renumbered from 0 in order of appearance, as the item alone would have them."""
    made = _clips(tmp_path / "in", [6, 7, 5, 8], 11)
    emu = checked_emulator()
    records = _run(run_cli, tmp_path / "in", tmp_path / "r.jsonl", emu, "--diarize")
    assert emu.stats()["requests"] == 1
    for name, bursts in made.items():
        truth = _truth(bursts)
        words = records[name]["words"]
        assert [w["speaker"] for w in words] == [t[3] % 2 for t in truth]
        assert [u["speaker"] for u in records[name]["utterances"]][:1] == [0]


def test_a_pack_refused_for_one_item_is_split_and_only_that_item_fails(
    tmp_path: Path, run_cli: Run, checked_emulator: Any
) -> None:
    """A pack the service refuses with a 400 (here: one clip alone is longer than a 30-s
    session) is bisected: the good items succeed in smaller packs, the bad one is sent alone
    and fails with its own cause; exit 1."""
    made = _clips(tmp_path / "in", [4, 5, 40, 4, 5], 13)
    emu = checked_emulator(max_audio_minutes=0.5)
    records = _run(run_cli, tmp_path / "in", tmp_path / "r.jsonl", emu, "--pack-max-item", "60s",
                   "--pack-seconds", "120s", code=1)  # fmt: skip
    bad = records["c002.wav"]
    assert (bad["status"], bad["cause"], bad["http_status"]) == ("failed", "4xx", 400)
    assert "session" in bad["error"] and "packed" not in bad
    for name in ("c000.wav", "c001.wav", "c003.wav", "c004.wav"):
        assert records[name]["status"] == "ok"
        _assert_own_words(records[name], made[name])
    assert any("packed" in r for r in records.values())  # (not every good one sent alone)
    statuses = emu.stats()["statuses"]
    # The whole pack, then halves holding the bad clip (which half: the order items came in),
    # down to it alone: at most 4 refusals for 5 items.
    assert 2 <= statuses["400"] <= 4 and statuses["200"] <= 4


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_sends_exactly_the_unrecorded_items(
    tmp_path: Path, run_cli: Run, spawn_cli: Spawn, emulator: Any
) -> None:
    """SIGKILL while packs are in flight: the rerun sends exactly the items with no record
    (in packs of their own), every item ends with one ok record, none is sent after its
    record was written, and the killed run's pool workers leave no temp files."""
    made = _clips(tmp_path / "in", [3.0 + (i % 4) for i in range(30)], 17)
    emu = emulator(latency_ms=700)
    out = tmp_path / "r.jsonl"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    flags = ("--endpoint", emu.endpoint(), "--pack", "--pack-seconds", "30s",
             "--pack-max-item", "10s", "-j", "1", "--no-progress")  # fmt: skip
    proc = spawn_cli("run", tmp_path / "in", "--out", out, *flags, env={"TMPDIR": str(scratch)})

    def some_recorded() -> bool:
        return out.exists() and bool(read_results(out)[0])

    wait_until(some_recorded, timeout=60, what="a pack's records")
    wait_until(lambda: emu.stats()["in_flight"] >= 1, what="the next pack in flight")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    wait_until(lambda: not list(scratch.iterdir()), timeout=10, what="the temp folder gone")
    first, _ = read_results(out)
    done = {Path(r["source"]).name for r in first}
    assert 0 < len(done) < len(made)
    proc2 = run_cli("run", tmp_path / "in", "--out", out, *flags, timeout=120)
    assert proc2.returncode == 0, proc2.stderr
    items, _ = read_results(out)
    assert Counter(Path(r["source"]).name for r in items) == dict.fromkeys(made, 1)
    second = items[len(first) :]
    assert {Path(r["source"]).name for r in second} == set(made) - done
    assert all(r["status"] == "ok" and "packed" in r for r in second)


def test_standard_plan_60_clips_take_a_few_requests_not_60(
    tmp_path: Path, run_cli: Run, checked_emulator: Any
) -> None:
    """On the Standard plan (25 requests a "minute", the minute shortened to 4 s) 60 short
    clips go in a few packed requests and never meet the limit; without --pack each is one
    request and the plan refuses some."""
    made = _clips(tmp_path / "in", [1.0 + (i % 5) * 0.5 for i in range(60)], 19)
    emu = checked_emulator(plan="standard", rate_headers=False, plan_window_s=4.0)
    records = _run(run_cli, tmp_path / "in", tmp_path / "r.jsonl", emu)
    assert len(records) == 60 and all(r["status"] == "ok" for r in records.values())
    stats = emu.stats()
    assert stats["requests"] <= 3 and stats["rate_limited"] == 0  # (1, measured)
    for name in list(made)[::7]:
        _assert_own_words(records[name], made[name])
    emu.reset_stats()
    proc = run_cli("run", tmp_path / "in", "--out", tmp_path / "alone.jsonl", "--endpoint",
                   emu.endpoint(), "--no-progress", timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert emu.stats()["statuses"]["200"] == 60


def test_report_failed_and_export_read_packed_records(
    tmp_path: Path, run_cli: Run, checked_emulator: Any
) -> None:
    """report counts packed items one by one, failed lists none, and export writes one SRT
    per packed item with cues at the item's own times."""
    made = _clips(tmp_path / "in", [4, 6, 5], 23)
    emu = checked_emulator()
    out = tmp_path / "r.jsonl"
    records = _run(run_cli, tmp_path / "in", out, emu)
    report = run_cli("report", out, "--json")
    assert report.returncode == 0, report.stderr
    totals = orjson.loads(report.stdout)
    assert totals["ok"] == 3
    failed = run_cli("failed", out)
    assert failed.returncode == 0 and failed.stdout == ""
    export = run_cli("export", out, "--format", "srt", "--dir", tmp_path / "srt")
    assert export.returncode == 0, export.stderr
    for name, bursts in made.items():
        srt = (tmp_path / "srt" / records[name]["id"]).with_suffix(".srt").read_text()
        first = _truth(bursts)[0][1]
        stamp = f"00:00:{int(first):02d},"
        assert srt.split("\n")[1].startswith(stamp), (name, srt[:80])


def test_spend_cap_and_max_items_hold_per_packed_item(
    tmp_path: Path, run_cli: Run, checked_emulator: Any
) -> None:
    """--max-audio-hours counts each packed item's own audio (the items admitted under the cap
    are sent, in one pack; exit 4), and --max-items counts items, not requests."""
    made = _clips(tmp_path / "in", [4.0] * 10, 29)
    emu = checked_emulator()
    # 0.005 h is 18 s: four 4-s clips, not five.
    capped = _run(
        run_cli, tmp_path / "in", tmp_path / "r.jsonl", emu, "--max-audio-hours", "0.005", code=4
    )
    assert len(capped) == 4 and all(r["packed"]["items"] == 4 for r in capped.values())
    assert sum(r["duration"] for r in capped.values()) <= 18
    counted = _run(run_cli, tmp_path / "in", tmp_path / "m.jsonl", emu, "--max-items", "3",
                   code=4)  # fmt: skip
    assert len(counted) == 3 and emu.stats()["requests"] == 2
    assert set(capped) < set(made)


@pytest.mark.slow
def test_sigterm_leaves_held_and_unanswered_items_for_the_rerun(
    tmp_path: Path, run_cli: Run, spawn_cli: Spawn, emulator: Any
) -> None:
    """SIGTERM mid-run: the pack in flight is answered within the grace and recorded, the
    items not yet sent get no record (exit 130); the rerun sends exactly those."""
    made = _clips(tmp_path / "in", [3.0 + (i % 4) for i in range(24)], 31)
    emu = emulator(latency_ms=700)
    out = tmp_path / "r.jsonl"
    flags = ("--endpoint", emu.endpoint(), "--pack", "--pack-seconds", "30s",
             "--pack-max-item", "10s", "-j", "1", "--no-progress")  # fmt: skip
    proc = spawn_cli("run", tmp_path / "in", "--out", out, *flags)
    wait_until(lambda: out.exists() and read_results(out)[0], timeout=60, what="records")
    wait_until(lambda: emu.stats()["in_flight"] >= 1, what="the next pack in flight")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    first, runs = read_results(out)
    assert runs[-1]["interrupted"] and 5 <= len(first) < len(made)
    # Every pack that reached the service (the one in flight too) was answered and recorded.
    assert len({r["packed"]["request"] for r in first}) == emu.stats()["requests"]
    proc2 = run_cli("run", tmp_path / "in", "--out", out, *flags, timeout=120)
    assert proc2.returncode == 0, proc2.stderr
    items, _ = read_results(out)
    assert Counter(Path(r["source"]).name for r in items) == dict.fromkeys(made, 1)
