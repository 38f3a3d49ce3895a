"""The sample archive and manifests under sample_manifests/: present, consistent, reproducible."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import mutagen
import pytest

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "sample_manifests"
ARCHIVE = HERE / "archive"
TABLE = ROOT / "batchscribe" / "data" / "samples.json"


def samples() -> dict[str, dict[str, Any]]:
    return json.loads(TABLE.read_text("utf-8"))


def clips() -> list[Path]:
    return sorted(p for p in ARCHIVE.rglob("*") if p.is_file())


def jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (HERE / name).read_text("utf-8").splitlines() if line]


def test_archive_is_small_nested_and_mixed() -> None:
    """Ten clips under 2 MB in nested year folders, in wav, flac, mp3 and ogg."""
    files = clips()
    assert len(files) == 10
    assert sum(p.stat().st_size for p in files) < 2_000_000
    assert {p.relative_to(ARCHIVE).parts[0] for p in files} == {"2019", "2020"}
    assert any(len(p.relative_to(ARCHIVE).parts) > 2 for p in files), "a deeper folder too"
    assert {p.suffix for p in files} == {".wav", ".flac", ".mp3", ".ogg"}


def test_every_clip_is_in_the_table_with_its_true_duration() -> None:
    """samples.json maps each clip's sha256 to its file, and the duration matches its header."""
    table = samples()
    assert len(table) == len(clips())
    for path in clips():
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        assert sha in table, f"{path} changed: rerun sample_manifests/make_samples.sh"
        row = table[sha]
        assert row["file"] == path.relative_to(ARCHIVE).as_posix()
        info = mutagen.File(path).info
        assert info.sample_rate == 16000
        assert info.channels == 1
        assert 2.0 <= row["duration"] <= 6.0
        assert info.length == pytest.approx(row["duration"], abs=0.06)


def test_sentences_file_matches_the_table() -> None:
    """sentences.txt lists each clip with its language and the sentence the table holds."""
    rows = [
        line.split("\t")
        for line in (HERE / "sentences.txt").read_text("utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    by_file = {row["file"]: row for row in samples().values()}
    assert len(rows) == len(by_file) == 10
    for clip, language, _voice, sentence in rows:
        assert by_file[clip]["sentence"] == sentence
        assert by_file[clip]["language"] == language
    assert {row["language"] for row in by_file.values()} > {"en"}, "a few other languages"


@pytest.mark.parametrize("name", ["archive.jsonl", "archive.csv", "archive.txt"])
def test_archive_manifests_name_every_clip_relative_to_themselves(name: str) -> None:
    """archive.jsonl/.csv/.txt each list all ten clips, relative to the manifest's folder."""
    text = (HERE / name).read_text("utf-8")
    if name.endswith(".jsonl"):
        items = jsonl(name)
        paths = [item["path"] for item in items]
        assert len({item["id"] for item in items}) == len(items)
        assert all({"language", "speaker", "date"} <= set(item) for item in items)
    elif name.endswith(".csv"):
        rows = list(csv.DictReader(text.splitlines()))
        assert list(rows[0])[:3] == ["id", "path", "language"]
        paths = [row["path"] for row in rows]
    else:
        lines = text.splitlines()
        assert any(line.startswith("#") for line in lines)
        assert "" in lines
        paths = [line for line in lines if line and not line.startswith("#")]
    assert sorted((HERE / p).resolve() for p in paths) == [p.resolve() for p in clips()]


def test_urls_manifest_holds_only_remote_items() -> None:
    """urls.jsonl items carry an http(s) url (example.org or presigned shapes) and no path."""
    items = jsonl("urls.jsonl")
    assert len(items) >= 4
    for item in items:
        assert "path" not in item
        assert item["url"].startswith(("https://", "http://"))
    assert any("X-Amz-Signature=" in item["url"] for item in items)


def test_broken_manifest_has_each_deliberate_problem() -> None:
    """broken.jsonl: a bad JSON line, a missing file, a duplicate id, no path/url, good items."""
    lines = (HERE / "broken.jsonl").read_text("utf-8").splitlines()
    parsed: list[dict[str, Any]] = []
    bad_json = 0
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            bad_json += 1
    assert bad_json == 1
    ids = [item["id"] for item in parsed]
    assert len(ids) - len(set(ids)) == 1
    assert sum(1 for item in parsed if "path" not in item and "url" not in item) == 1
    with_path = [item for item in parsed if "path" in item]
    missing = [item for item in with_path if not (HERE / item["path"]).exists()]
    assert len(missing) == 1
    assert len(with_path) - len(missing) >= 3, "good items next to the broken ones"


@pytest.mark.slow
@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("espeak-ng", "sox", "ffmpeg", "ffprobe")),
    reason="make_samples.sh needs espeak-ng, sox and ffmpeg",
)
def test_make_samples_regenerates_identical_clips(tmp_path: Path) -> None:
    """make_samples.sh is deterministic: a fresh run reproduces every clip and the table."""
    env = dict(os.environ, ARCHIVE_DIR=str(tmp_path / "archive"),
               SAMPLES_JSON=str(tmp_path / "samples.json"))  # fmt: skip
    subprocess.run(
        [str(HERE / "make_samples.sh")], env=env, check=True, capture_output=True, timeout=120
    )
    assert json.loads((tmp_path / "samples.json").read_text("utf-8")) == samples()
    for path in clips():
        fresh = tmp_path / "archive" / path.relative_to(ARCHIVE)
        assert fresh.read_bytes() == path.read_bytes(), path


def test_every_clip_is_taken_by_the_emulator_with_its_words_on_its_speech() -> None:
    """Each clip decodes (PyAV) as mono, within the 10-minute session, with speech found in it;
    its sentence's words all lie inside that speech (what the emulator answers)."""
    import io

    from batchscribe.emulator.transcripts import signal_of, transcribe

    table = samples()
    for path in clips():
        data = path.read_bytes()
        digest = hashlib.sha256(data).digest()
        signal = signal_of(io.BytesIO(data), digest, data[:16], max_seconds=600)
        assert (signal.channels, signal.longer_than) == (1, None), path
        assert signal.duration == pytest.approx(table[digest.hex()]["duration"], abs=0.12)
        assert signal.regions, f"{path}: no speech found"
        transcript = transcribe(signal.regions, table[digest.hex()]["sentence"])
        assert transcript.text == table[digest.hex()]["sentence"]
        for word in transcript.words:
            assert any(r.start <= word.start < word.end <= r.end for r in signal.regions), path
