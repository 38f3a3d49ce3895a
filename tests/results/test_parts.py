"""The sidecar of chunk answers (batchscribe.results.parts): durable lines, a torn tail cut,
keys that change with the file, the flags and the cuts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from batchscribe.audio.prepare import Chunk, Prepared
from batchscribe.audio.probe import PrepPolicy
from batchscribe.results.parts import PartsFile, part_key, parts_path

SECRET = "sk-test-7f3a9c2e51d84b06a1c0ffee5eed1e55"


def _prepared(cut: int = 160000) -> Prepared:
    chunks = (
        Chunk(0, None, 0, cut, 16000, None, None, "/t/0.flac", "audio/flac", 10),
        Chunk(1, None, cut, 320000, 16000, None, None, "/t/1.flac", "audio/flac", 10),
    )
    return Prepared(chunks, 20.0, 2, "flac", 1000)


def test_the_sidecar_sits_beside_the_results_file() -> None:
    """r.jsonl -> r.parts.jsonl; any other name gets .parts.jsonl appended."""
    assert parts_path("/x/r.jsonl") == "/x/r.parts.jsonl"
    assert parts_path("/x/results.out") == "/x/results.out.parts.jsonl"


def test_kept_answers_survive_a_reopen_and_a_torn_tail(tmp_path: Path) -> None:
    """Answers appended are there for the next run; a torn last line (a kill mid-write) and a
    damaged line are skipped, and what is appended after them is whole."""
    path = str(tmp_path / "r.parts.jsonl")
    parts = PartsFile(path)
    parts.open()
    parts.append("k", "a", 0, {"transcription": "zero"})
    parts.close()
    with open(path, "ab") as stream:
        stream.write(b'{"part":"k","id":"a","chunk":1,"answ')  # torn
    again = PartsFile(path)
    again.open()
    assert again.answers("k") == {0: {"transcription": "zero"}}
    again.append("k", "a", 1, {"transcription": "one"})
    again.close()
    last = PartsFile(path)
    last.open()
    assert last.answers("k") == {0: {"transcription": "zero"}, 1: {"transcription": "one"}}
    assert Path(path).read_bytes().count(b"\n") == 2


def test_a_secret_echoed_in_an_answer_is_never_written(tmp_path: Path) -> None:
    """An answer that echoes the API key is written with the key masked."""
    path = tmp_path / "r.parts.jsonl"
    parts = PartsFile(str(path), secrets=[SECRET])
    parts.open()
    parts.append("k", "a", 0, {"transcription": f"key {SECRET}"})
    parts.close()
    assert SECRET not in path.read_text() and "***" in path.read_text()


def test_the_key_changes_with_the_file_the_flags_and_the_cuts() -> None:
    """A changed size or mtime, other audio flags or other cuts never reuse kept answers."""
    policy, prepared = PrepPolicy(), _prepared()
    key = part_key("a", 100, 1.5, policy, prepared)
    assert key == part_key("a", 100, 1.5, PrepPolicy(), _prepared())
    others = {
        part_key("b", 100, 1.5, policy, prepared),
        part_key("a", 101, 1.5, policy, prepared),
        part_key("a", 100, 2.5, policy, prepared),
        part_key("a", 100, 1.5, dataclasses.replace(policy, transcode="opus"), prepared),
        part_key("a", 100, 1.5, dataclasses.replace(policy, max_chunk=300.0), prepared),
        part_key("a", 100, 1.5, policy, _prepared(cut=150000)),
    }
    assert key not in others and len(others) == 6
