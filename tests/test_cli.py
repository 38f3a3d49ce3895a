"""End to end: ``batchscribe run`` as a real subprocess against a real loopback emulator.

Each test spies on the emulator's stats (what the server really saw) and reads the real results
file; nothing in the client is mocked. Timing logic is unit-tested on a fake clock elsewhere; the
timing tests here assert on what the server observed, with the scenario built so that a broken
client would be caught rather than on margins that are hoped to be wide enough.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from audio_fixtures import make_wav, wav_bytes
from conftest import SAMPLES, TEST_KEY, cli_env, read_results, wait_until

from batchscribe.emulator import FaultRates, content_key, transcript_for, transcript_for_url
from batchscribe.errors import ConfigError
from batchscribe.run.options import RunOptions

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
OK_FIELDS = ["transcription", "words", "utterances", "duration", "request_id", "response"]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def emulator(checked_emulator: Any) -> Any:
    """The shared factory, checked at the end: no run retried before the server's delay."""
    return checked_emulator


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Item records keyed by id; fails on a duplicated id."""
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        assert record["id"] not in out, f"duplicate record for {record['id']}"
        out[record["id"]] = record
    return out


def assert_ok_file_record(record: dict[str, Any], path: Path, metadata: Any = None) -> None:
    """A complete ``ok`` record for a local file, transcript matching the file's bytes."""
    data = path.read_bytes()
    st = path.stat()
    assert list(record)[:2] == ["id", "status"]
    assert record["status"] == "ok", record.get("error")
    assert record["source"] == str(path.resolve())
    assert record["size"] == st.st_size == len(data)
    assert record["mtime"] == pytest.approx(st.st_mtime)
    assert record["attempts"] >= 1
    assert record["http_status"] == 200
    assert record["error"] is None
    assert record["cause"] is None
    assert ISO_UTC.match(record["finished_at"])
    assert record["transcription"] == transcript_for(data)
    assert [w["word"] for w in record["words"]] == record["transcription"].split()
    assert " ".join(u["text"] for u in record["utterances"]) == record["transcription"]
    assert record["duration"] == pytest.approx(record["response"]["metadata"]["duration"])
    assert record["request_id"].startswith("emu-")
    response = record["response"]
    assert response["status"] == "success"
    assert response["metadata"]["fileSize"] == len(data)
    assert not set(response) & {"transcription", "words", "utterances", "request_id"}
    if metadata is None:
        assert "metadata" not in record
    else:
        assert record["metadata"] == metadata


def assert_no_early_retry(emu: Any) -> dict[str, Any]:
    """The emulator saw no retry before the delay it asked for; returns its stats."""
    stats = emu.stats()
    assert stats["early_retries"] == 0, stats["early_retry_examples"]
    return stats


def assert_no_key(*texts: str | bytes, key: str = TEST_KEY) -> None:
    """The key appears in none of the texts (stdout, stderr, results)."""
    for text in texts:
        data = text.encode() if isinstance(text, str) else text
        assert key.encode() not in data


def content_counts(emu: Any, paths: list[Path]) -> list[int]:
    """How many requests carried each file's bytes, in order."""
    by_content = emu.stats()["by_content"]
    return [by_content.get(content_key(p.read_bytes()), 0) for p in paths]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize("kind", ["legacy", "current"])
def test_jsonl_manifest_end_to_end(tmp_path, emulator, make_archive, run_cli, kind):
    """A JSONL manifest is transcribed in full through either endpoint path, record by record."""
    emu = emulator()
    archive = make_archive(tmp_path, 4)
    out = tmp_path / "results.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(kind))
    assert proc.returncode == 0, proc.stderr
    items, runs = read_results(out)
    records = by_id(items)
    assert sorted(records) == archive.ids
    for i, item_id in enumerate(archive.ids):
        meta = {"speaker": f"spk{i % 3}", "n": i}
        assert_ok_file_record(records[item_id], archive.paths[item_id], meta)
        assert records[item_id]["attempts"] == 1
    stats = assert_no_early_retry(emu)
    other = "current" if kind == "legacy" else "legacy"
    assert stats["by_path"] == {kind: 4, other: 0}
    assert content_counts(emu, list(archive.paths.values())) == [1, 1, 1, 1]
    # One run record, after the items, that says what happened.
    assert len(runs) == 1
    assert runs[0]["event"] == "run" and runs[0]["ok"] == 4 and runs[0]["exit_code"] == 0
    assert out.read_bytes().splitlines()[-1].startswith(b'{"event":"run"')
    assert "ok: 4  failed: 0" in proc.stdout


def test_every_line_starts_with_id_and_status(tmp_path, emulator, make_archive, run_cli):
    """Item lines are written ``{"id":...,"status":...`` first, so resume can scan them fast."""
    emu = emulator()
    archive = make_archive(tmp_path, 3)
    (tmp_path / "audio" / "clip-002.wav").unlink()  # one failed record too
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 1
    lines = out.read_bytes().splitlines()
    item_lines = [line for line in lines if not line.startswith(b'{"event":')]
    assert len(item_lines) == 3
    for line in item_lines:
        assert re.match(rb'^\{"id":"clip-00\d","status":"(ok|failed)",', line), line


def test_csv_manifest(tmp_path, emulator, make_archive, run_cli):
    """A CSV manifest's rows become items; extra columns become metadata."""
    emu = emulator()
    archive = make_archive(tmp_path, 3)
    manifest = write_csv(
        tmp_path / "list.csv",
        [
            {"id": i, "path": f"audio/{i}.wav", "speaker": f"S{n}"}
            for n, i in enumerate(archive.ids)
        ],
    )
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", manifest, "--out", out, "--endpoint", emu.endpoint("current"))
    assert proc.returncode == 0, proc.stderr
    records = by_id(read_results(out)[0])
    assert sorted(records) == archive.ids
    for n, item_id in enumerate(archive.ids):
        assert_ok_file_record(records[item_id], archive.paths[item_id], {"speaker": f"S{n}"})
    assert_no_early_retry(emu)


def test_text_list(tmp_path, emulator, make_archive, run_cli):
    """A text list (comments, blank lines) gives one item per path, its id the path as written."""
    emu = emulator()
    archive = make_archive(tmp_path, 3)
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# my clips\n\n" + "".join(f"audio/{i}.wav\n" for i in archive.ids) + "   \n# end\n"
    )
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", listing, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 0, proc.stderr
    records = by_id(read_results(out)[0])
    assert sorted(records) == [f"audio/{i}.wav" for i in archive.ids]
    for item_id in archive.ids:
        assert_ok_file_record(records[f"audio/{item_id}.wav"], archive.paths[item_id])
    assert emu.stats()["requests"] == 3


def test_directory_source(tmp_path, emulator, run_cli):
    """A directory source sends every audio file below it (hidden and non-audio skipped)."""
    emu = emulator()
    root = tmp_path / "archive"
    files = {
        "2019/a.wav": make_wav(root / "2019/a.wav", freq=300),
        "2019/deep/b.wav": make_wav(root / "2019/deep/b.wav", freq=310),
        "c.wav": make_wav(root / "c.wav", freq=320),
    }
    make_wav(root / ".hidden.wav", freq=330)
    (root / "notes.txt").write_text("not audio\n")
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", root, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 0, proc.stderr
    records = by_id(read_results(out)[0])
    assert sorted(records) == sorted(files)
    for item_id, path in files.items():
        assert_ok_file_record(records[item_id], path)
    assert emu.stats()["requests"] == 3


def test_stdin_source(tmp_path, emulator, make_archive, run_cli):
    """``-`` reads a JSONL manifest from stdin; relative paths resolve against the cwd."""
    emu = emulator()
    archive = make_archive(tmp_path / "a", 3)
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "run", "-", "--out", out, "--endpoint", emu.endpoint(),
        input=archive.manifest.read_text(), cwd=archive.root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = by_id(read_results(out)[0])
    assert sorted(records) == archive.ids
    for i, item_id in enumerate(archive.ids):
        meta = {"speaker": f"spk{i % 3}", "n": i}
        assert_ok_file_record(records[item_id], archive.paths[item_id], meta)


def test_process_substitutions_resolve_like_stdin_and_are_sniffed(tmp_path, emulator, make_archive):
    """Manifests given as bash <(...): relative paths resolve against the working directory
    (not /dev/fd), and CSV, JSONL and a text list are told apart by their content."""
    emu = emulator()
    archive = make_archive(tmp_path / "a", 4)
    out = tmp_path / "r.jsonl"
    script = (
        'exec "$0" -m batchscribe run'
        ' <(printf "id,path,speaker\\nfirst,audio/clip-000.wav,Ada\\n")'
        ' <(printf "audio/clip-001.wav\\n")'
        """ <(printf '{"id": "third", "path": "audio/clip-002.wav"}\\n')"""
        ' /proc/self/fd/3 3< <(printf "path\\naudio/clip-003.wav\\n")'
        ' --out "$1" --endpoint "$2"'
    )
    proc = subprocess.run(
        ["bash", "-c", script, sys.executable, str(out), emu.endpoint()],
        env=cli_env(), cwd=archive.root, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = by_id(read_results(out)[0])
    assert sorted(records) == ["audio/clip-001.wav", "audio/clip-003.wav", "first", "third"]
    assert records["first"]["metadata"] == {"speaker": "Ada"}
    for item_id, clip in [("first", 0), ("audio/clip-001.wav", 1), ("third", 2),
                          ("audio/clip-003.wav", 3)]:  # fmt: skip
        assert records[item_id]["source"] == str(archive.paths[f"clip-00{clip}"])
    assert emu.stats()["requests"] == 4


def test_several_sources_at_once(tmp_path, emulator, make_archive, run_cli):
    """JSONL, CSV, a directory and stdin in one run: every item of every source, once."""
    emu = emulator()
    jsonl = make_archive(tmp_path / "j", 2)
    more = make_archive(tmp_path / "c", 2, first=10)
    manifest = write_csv(
        tmp_path / "c" / "more.csv", [{"id": i, "path": f"audio/{i}.wav"} for i in more.ids]
    )
    folder = tmp_path / "dir"
    dir_file = make_wav(folder / "x.wav", freq=900)
    piped = make_wav(tmp_path / "piped.wav", freq=950)
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "run", jsonl.manifest, manifest, folder, "-", "--out", out, "--endpoint", emu.endpoint(),
        input="piped.wav\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = by_id(read_results(out)[0])
    expected = {**jsonl.paths, **more.paths, "x.wav": dir_file, "piped.wav": piped}
    assert sorted(records) == sorted(expected)
    for item_id, path in expected.items():
        assert records[item_id]["transcription"] == transcript_for(path.read_bytes())
    assert emu.stats()["requests"] == len(expected)


def test_url_items_go_as_json(tmp_path, emulator, run_cli):
    """``{"url": ...}`` items are sent as JSON for the service to fetch, and recorded."""
    emu = emulator()
    urls = {
        "u1": "https://example.org/a/2019/01-weather.wav",
        "u2": "https://bucket.s3.amazonaws.com/x.mp3?X-Amz-Signature=abc",
    }
    manifest = tmp_path / "urls.jsonl"
    manifest.write_bytes(
        b"".join(orjson.dumps({"id": k, "url": u, "tag": k}) + b"\n" for k, u in urls.items())
    )
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", manifest, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 0, proc.stderr
    records = by_id(read_results(out)[0])
    for item_id, url in urls.items():
        record = records[item_id]
        assert record["status"] == "ok"
        assert record["source"] == url
        assert record["transcription"] == transcript_for_url(url)
        assert "size" not in record and "mtime" not in record
        assert record["metadata"] == {"tag": item_id}
    # The weather URL ends with a sample clip's path: the emulator answers with its sentence.
    assert records["u1"]["transcription"].startswith("The weather")
    by_content = emu.stats()["by_content"]
    assert by_content == {content_key(url): 1 for url in urls.values()}


def test_emulate_flag_needs_no_key_and_no_network(tmp_path, run_cli):
    """``--emulate`` transcribes the sample archive with no key, offline (no network at all)."""
    out = tmp_path / "x.jsonl"
    argv = ["run", str(SAMPLES / "archive.jsonl"), "--emulate", "--out", str(out)]
    # Where a user namespace can be made, run in a fresh network namespace: only loopback exists
    # there, so nothing can leave the machine. Elsewhere, run as is.
    lo_up = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    if subprocess.run([*lo_up, "true"], capture_output=True, check=False).returncode == 0:
        proc = subprocess.run(
            [*lo_up, sys.executable, "-m", "batchscribe", *argv],
            env=cli_env({"SMALLEST_API_KEY": None}), cwd=tmp_path, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
    else:
        proc = run_cli(*argv, env={"SMALLEST_API_KEY": None})
    assert proc.returncode == 0, proc.stderr
    records = by_id(read_results(out)[0])
    manifest = [
        orjson.loads(line) for line in (SAMPLES / "archive.jsonl").read_bytes().splitlines()
    ]
    assert sorted(records) == sorted(entry["id"] for entry in manifest)
    for entry in manifest:
        record = records[entry["id"]]
        path = SAMPLES / entry["path"]
        assert record["status"] == "ok"
        assert record["transcription"] == transcript_for(path.read_bytes())
        assert record["metadata"]["speaker"] == entry["speaker"]
    # Real sentences, not pseudo-transcripts: the sample clips are known by their bytes.
    assert records["2020-berlin"]["transcription"] == "Guten Morgen, wie geht es Ihnen heute?"
    assert records["2019-market"]["metadata"]["tags"] == ["field", "outdoor"]


def test_emulate_broken_sample_reports_lines_and_runs_the_rest(tmp_path, run_cli):
    """The shipped broken.jsonl: bad lines reported as FILE:LINE, the good items done, exit 1."""
    out = tmp_path / "x.jsonl"
    broken = SAMPLES / "broken.jsonl"
    proc = run_cli("run", broken, "--emulate", "--out", out, env={"SMALLEST_API_KEY": None})
    assert proc.returncode == 1, proc.stderr
    reported = re.findall(rf"^{re.escape(str(broken))}:(\d+): ", proc.stderr, re.M)
    assert reported == ["2", "5", "6", "8"]
    states = {r["id"]: (r["status"], r["cause"]) for r in read_results(out)[0]}
    assert states == {
        "ok-weather": ("ok", None), "missing-file": ("failed", "missing"),
        "ok-garden": ("ok", None), "ok-remote": ("ok", None), "ok-paris": ("ok", None),
    }  # fmt: skip


# --------------------------------------------------------------------------- local problems


def test_local_file_problems_are_recorded_not_sent(tmp_path, emulator, make_archive, run_cli):
    """Missing, empty and directory-in-place-of-a-file items fail without a request; rest done."""
    emu = emulator()
    archive = make_archive(tmp_path, 5)
    (tmp_path / "audio" / "clip-001.wav").unlink()
    (tmp_path / "audio" / "clip-002.wav").write_bytes(b"")
    (tmp_path / "audio" / "clip-003.wav").unlink()
    (tmp_path / "audio" / "clip-003.wav").mkdir()
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 1, proc.stderr
    records = by_id(read_results(out)[0])
    expected = {"clip-001": "missing", "clip-002": "invalid", "clip-003": "invalid"}
    for item_id, cause in expected.items():
        record = records[item_id]
        assert list(record)[:2] == ["id", "status"]
        assert record["status"] == "failed"
        assert record["cause"] == cause
        assert record["attempts"] == 0
        assert record["http_status"] is None
        assert record["error"]
        assert not set(record) & set(OK_FIELDS)
    assert "empty" in records["clip-002"]["error"]
    assert "regular file" in records["clip-003"]["error"]
    for item_id in ("clip-000", "clip-004"):
        assert records[item_id]["status"] == "ok"
    assert emu.stats()["requests"] == 2
    assert "failed: 3" in proc.stdout


def test_bad_manifest_lines_reported_rest_done(tmp_path, emulator, make_archive, run_cli):
    """Bad manifest lines print FILE:LINE: problem on stderr; the good ones run; exit 1."""
    emu = emulator()
    archive = make_archive(tmp_path, 2)
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text(
        '{"id": "clip-000", "path": "audio/clip-000.wav"}\n'
        '{"id": "broken", "path": \n'
        '["not", "an", "object"]\n'
        '{"id": "clip-000", "path": "audio/clip-001.wav"}\n'
        '{"id": "nolang", "path": "audio/clip-001.wav", "language": "klingon"}\n'
        '{"id": "clip-001", "path": "audio/clip-001.wav"}\n'
    )
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", manifest, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 1, proc.stderr
    for line in (2, 3, 4, 5):
        assert re.search(rf"^{re.escape(str(manifest))}:{line}: \S", proc.stderr, re.M), (
            line, proc.stderr,
        )  # fmt: skip
    assert "duplicate id" in proc.stderr and "klingon" in proc.stderr
    records = by_id(read_results(out)[0])
    assert sorted(records) == ["clip-000", "clip-001"]
    assert all(r["status"] == "ok" for r in records.values())
    assert records["clip-000"]["transcription"] == archive.transcript("clip-000")
    assert emu.stats()["requests"] == 2
    assert "invalid lines: 4" in proc.stdout


@pytest.mark.parametrize("problem", ["missing", "device"])
def test_unreadable_source_exits_2_before_anything(
    tmp_path, emulator, make_archive, run_cli, problem
):
    """A source that cannot be read exits 2 at once: no request, no results file."""
    emu = emulator()
    archive = make_archive(tmp_path, 2)
    bad = tmp_path / "nope.jsonl" if problem == "missing" else Path("/dev/null")
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, bad, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 2
    assert str(bad) in proc.stderr
    assert not out.exists()
    assert emu.stats()["requests"] == 0


@pytest.mark.parametrize("where", ["no-such-dir/r.jsonl", "."])
def test_unwritable_results_path_exits_2(tmp_path, emulator, make_archive, run_cli, where):
    """A results path that cannot be opened (missing folder, a directory) exits 2, unsent."""
    emu = emulator()
    archive = make_archive(tmp_path, 2)
    out = tmp_path / where
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 2
    assert "results" in proc.stderr
    assert emu.stats()["requests"] == 0


# --------------------------------------------------------------------------- retries


def test_5xx_and_429_are_retried_until_ok(tmp_path, emulator, make_archive, run_cli):
    """Transient 5xx and 429 answers are retried, never before the server's delay, and end ok."""
    # Fault rolls depend only on (seed, content, request number): with these five clips and this
    # seed one item meets a 500 and another a 429 on their first attempt, every time. The asserts
    # below check that both really happened, so a change of fixtures cannot make this pass idly.
    emu = emulator(faults=FaultRates(p429=0.2, p5xx=0.2), retry_delay_s=0.2, seed=19)
    archive = make_archive(tmp_path, 5)
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "--max-attempts", "10"
    )
    assert proc.returncode == 0, proc.stderr
    stats = assert_no_early_retry(emu)
    statuses = stats["statuses"]
    # The scenario really had both kinds of trouble (the seed makes it the same every time).
    assert statuses.get("429", 0) >= 1
    assert sum(n for s, n in statuses.items() if s.startswith("5")) >= 1
    records = by_id(read_results(out)[0])
    for i, item_id in enumerate(archive.ids):
        assert_ok_file_record(
            records[item_id], archive.paths[item_id], {"speaker": f"spk{i % 3}", "n": i}
        )
    # Every request the server saw is counted in exactly one item's attempts.
    assert sum(r["attempts"] for r in records.values()) == stats["requests"]
    assert read_results(out)[1][0]["retries"] == stats["requests"] - 5
    assert any(r["attempts"] > 1 for r in records.values())
    assert content_counts(emu, list(archive.paths.values())) == [
        records[i]["attempts"] for i in archive.ids
    ]


def test_retries_counted_are_retries_sent(tmp_path, emulator, make_archive, run_cli):
    """The summary's retry count equals the retries really sent, also for items that give up."""
    emu = emulator(faults=FaultRates(p5xx=1.0))
    archive = make_archive(tmp_path, 3)
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(),
        "--max-attempts", "2",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    items, runs = read_results(out)
    assert [r["attempts"] for r in items] == [2, 2, 2]
    assert emu.stats()["requests"] == 6
    assert "retries: 3 " in proc.stdout
    assert runs[0]["retries"] == 3


def test_400_fails_the_item_without_retry(tmp_path, emulator, make_archive, run_cli):
    """A 400 (audio past the session limit) is recorded failed after exactly one request; the
    run goes on. (Audio the run itself cannot read is failed before any request.)"""
    emu = emulator(max_audio_minutes=0.01)  # a 0.6-s session: the 1-s clip is refused
    archive = make_archive(tmp_path, 3)
    junk = make_wav(archive.paths["clip-001"], seconds=1.0, freq=999)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 1, proc.stderr
    records = by_id(read_results(out)[0])
    record = records["clip-001"]
    assert record["status"] == "failed"
    assert record["http_status"] == 400
    assert record["cause"] == "4xx"
    assert record["attempts"] == 1
    assert "session limit" in record["error"]
    assert record["size"] == junk.stat().st_size
    assert content_counts(emu, [junk]) == [1]
    assert records["clip-000"]["status"] == records["clip-002"]["status"] == "ok"
    stats = assert_no_early_retry(emu)
    assert stats["statuses"] == {"200": 2, "400": 1}


def test_401_aborts_with_exit_3(tmp_path, emulator, make_archive, run_cli):
    """A rejected key stops the run (exit 3) after at most one request per worker; no records."""
    emu = emulator()
    archive = make_archive(tmp_path, 30)
    out = tmp_path / "r.jsonl"
    wrong = "sk-wrong-0123456789abcdef0123456789"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "--concurrency", "2",
        env={"SMALLEST_API_KEY": wrong, "BATCHSCRIBE_DEBUG": "1"},
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    stats = emu.stats()
    assert 1 <= stats["requests"] <= 2
    assert stats["statuses"] == {"401": stats["requests"]}
    assert "key was rejected" in proc.stderr
    items, _ = read_results(out)
    assert items == []
    assert_no_key(proc.stdout, proc.stderr, out.read_bytes(), key=wrong)


def test_404_wrong_path_aborts_with_exit_3(tmp_path, emulator, make_archive, run_cli):
    """A wrong endpoint path (404) stops the run with exit 3 and names --endpoint."""
    emu = emulator()
    archive = make_archive(tmp_path, 10)
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.url + "/api/v1/pulse/get_txt",
        "--concurrency", "2",
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "--endpoint" in proc.stderr
    stats = emu.stats()
    assert 1 <= stats["requests"] <= 2
    assert stats["statuses"] == {"404": stats["requests"]}
    assert read_results(out)[0] == []


def test_delay_over_max_retry_wait_fails_item(tmp_path, emulator, make_archive, run_cli):
    """A server delay longer than --max-retry-wait fails the item at once, cause 429."""
    emu = emulator(faults=FaultRates(p429=1.0), retry_delay_s=30)
    archive = make_archive(tmp_path, 3)
    out = tmp_path / "r.jsonl"
    started = time.monotonic()
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "--max-retry-wait", "2"
    )
    # Had it waited (or paused the pool) for the server's 30 s, the run would take 30 s.
    assert time.monotonic() - started < 20
    assert proc.returncode == 1, proc.stderr
    records = by_id(read_results(out)[0])
    for item_id in archive.ids:
        record = records[item_id]
        assert record["status"] == "failed"
        assert record["cause"] == "429"
        assert record["http_status"] == 429
        assert record["attempts"] == 1
        assert "--max-retry-wait" in record["error"]
    assert content_counts(emu, list(archive.paths.values())) == [1, 1, 1]
    assert assert_no_early_retry(emu)["requests"] == 3


def test_429_pauses_the_whole_pool(tmp_path, emulator, make_archive, spawn_cli):
    """After a 429 with a delay, no worker starts a request until the delay is over."""
    # Every item has the same bytes, so the emulator files all requests under one content and
    # counts *any* request arriving before the delay it asked as an early retry: a pool-wide check.
    # Concurrency 3 against max_concurrent 2: the third request of the first wave gets an
    # immediate 429 (retry-after-ms 1200) while the other two are held 600 ms. Those two finish
    # during the pause with work still queued: a client that paused only the 429'd worker would
    # send their next items at once, 0.6 s early, and be caught. The other two are in flight
    # when the 429 is sent, so no request can race it.
    emu = emulator(latency_ms=600, max_concurrent=2, busy_retry_ms=1200)
    archive = make_archive(tmp_path, 6)
    same = wav_bytes(0.2, 440)
    for path in archive.paths.values():
        path.write_bytes(same)
    out = tmp_path / "r.jsonl"
    proc = spawn_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(),
        "--concurrency", "3", "--max-attempts", "10",
    )  # fmt: skip
    wait_until(lambda: emu.stats()["rate_limited_by"]["concurrency"] >= 1, what="a 429")
    # Lift the cap so the retry is not refused again (were it lifted late, the next wave would
    # just meet another 429 and another pause): the check is on what the server saw meanwhile.
    emu.config.max_concurrent = None
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    stats = assert_no_early_retry(emu)
    assert stats["statuses"]["429"] >= 1
    records = by_id(read_results(out)[0])
    assert all(r["status"] == "ok" for r in records.values())
    assert len(records) == 6
    # The scenario happened as designed: an item was retried, and the workers that finished
    # during the pause had queued work (6 items > 3 workers).
    retried = [r for r in records.values() if r["attempts"] > 1]
    assert len(retried) >= 1
    assert stats["requests"] == sum(r["attempts"] for r in records.values())


def test_one_pause_is_announced_once_not_once_per_worker(tmp_path, emulator, make_archive, run_cli):
    """Workers told to wait by 429s that arrive together make one pause, announced once."""
    # -j 4 against max_concurrent 1: each wave has one request taken and the rest refused at
    # once with the same delay, so each wave is one pause however many workers hear of it.
    emu = emulator(latency_ms=300, max_concurrent=1, busy_retry_ms=1500)
    archive = make_archive(tmp_path, 4)
    out = tmp_path / "r.jsonl"
    log = tmp_path / "run.log"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", 4,
        "--max-attempts", 10, "--log-file", log, "--log-format", "json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events = [orjson.loads(line) for line in log.read_text().splitlines()]
    pauses = [e for e in events if e["event"] == "pause"]
    refused = emu.stats()["statuses"]["429"]
    assert refused >= 3
    assert 1 <= len(pauses) < refused, pauses


def test_in_flight_never_above_concurrency(tmp_path, emulator, make_archive, run_cli):
    """Requests in flight at the server never exceed --concurrency (and do reach it)."""
    emu = emulator(latency_ms=200)
    archive = make_archive(tmp_path, 10)
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "--concurrency", "3"
    )
    assert proc.returncode == 0, proc.stderr
    stats = emu.stats()
    # With 200 ms per answer and 10 items queued, 3 workers overlap: the cap is reached, not passed.
    assert stats["max_in_flight"] == 3
    assert stats["requests"] == 10


# --------------------------------------------------------------------------- the lock


def test_second_run_on_busy_results_exits_75_untouched(
    tmp_path, emulator, make_archive, run_cli, spawn_cli
):
    """A second run on a results file another run holds exits 75 at once and writes nothing."""
    emu = emulator(latency_ms=60_000)  # the first run stays in flight for the whole test
    archive = make_archive(tmp_path, 4)
    out = tmp_path / "r.jsonl"
    out.write_bytes(b'{"id":"earlier","status":"ok","source":"x"}\n')
    first = spawn_cli("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint())
    # The lock is taken before any request is sent: a request at the server means it is held.
    wait_until(lambda: emu.stats()["in_flight"] >= 1, what="the first run's requests")
    before = out.read_bytes()
    started = time.monotonic()
    second = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), timeout=15
    )
    elapsed = time.monotonic() - started
    assert second.returncode == 75, second.stderr
    assert "another batchscribe run" in second.stderr
    assert elapsed < 15  # at once, not after the first run (which waits a minute per answer)
    assert first.poll() is None
    assert out.read_bytes() == before
    assert emu.stats()["requests"] == emu.stats()["in_flight"]  # nothing sent by the second run


# --------------------------------------------------------------------------- the key


def test_missing_key_exits_2_before_any_request(tmp_path, emulator, make_archive, run_cli):
    """Without a key the run exits 2 naming SMALLEST_API_KEY; nothing sent, nothing written."""
    emu = emulator()
    archive = make_archive(tmp_path, 2)
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(),
        env={"SMALLEST_API_KEY": None},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "SMALLEST_API_KEY" in proc.stderr
    assert emu.stats()["requests"] == 0
    assert not out.exists()


@pytest.mark.parametrize("mode", [0o600, 0o644], ids=["private", "world-readable"])
def test_api_key_file(tmp_path, emulator, make_archive, run_cli, mode):
    """--api-key-file supplies the key; a key file others can read draws a warning."""
    emu = emulator()
    archive = make_archive(tmp_path, 2)
    key_file = tmp_path / "pulse.key"
    key_file.write_text(TEST_KEY + "\n")
    key_file.chmod(mode)
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(),
        "--api-key-file", key_file, env={"SMALLEST_API_KEY": None},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert emu.stats()["statuses"] == {"200": 2}
    warned = "readable by other users" in proc.stderr
    assert warned is (mode == 0o644)
    if warned:
        assert f"chmod 600 {key_file}" in proc.stderr
    assert_no_key(proc.stdout, proc.stderr, out.read_bytes())


@pytest.mark.parametrize(
    ("where", "raw"),
    [
        ("env", TEST_KEY + "\n"),
        ("env", "  " + TEST_KEY + " \t"),
        ("env", "\ufeff" + TEST_KEY),
        ("file", "\ufeff" + TEST_KEY + "\r\n\n"),
        ("file", "\n  " + TEST_KEY + "  \n"),
    ],
    ids=["env-newline", "env-spaces", "env-bom", "file-bom-crlf", "file-padded"],
)
def test_key_with_surrounding_whitespace_or_bom_is_stripped(
    tmp_path, emulator, make_archive, run_cli, where, raw
):
    """A key ending in a newline, padded with spaces or led by a BOM (env or file) just works."""
    emu = emulator()
    archive = make_archive(tmp_path, 2)
    out = tmp_path / "r.jsonl"
    if where == "env":
        proc = run_cli(
            "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(),
            env={"SMALLEST_API_KEY": raw},
        )  # fmt: skip
    else:
        key_file = tmp_path / "pulse.key"
        key_file.write_bytes(raw.encode())
        key_file.chmod(0o600)
        proc = run_cli(
            "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(),
            "--api-key-file", key_file, env={"SMALLEST_API_KEY": None},
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert emu.stats()["statuses"] == {"200": 2}


@pytest.mark.parametrize(
    ("where", "raw", "what"),
    [
        ("env", TEST_KEY[:20] + "\n" + TEST_KEY[20:], "line break"),
        ("env", TEST_KEY[:20] + " " + TEST_KEY[20:], "whitespace"),
        ("env", TEST_KEY[:20] + "\x07" + TEST_KEY[20:], "control character"),
        ("env", TEST_KEY[:20] + "\u00e9" + TEST_KEY[20:], "not ASCII"),
        ("file", TEST_KEY + "\n" + TEST_KEY[::-1] + "\n", "line break"),
        ("file", TEST_KEY[:20] + "\t" + TEST_KEY[20:], "whitespace"),
        ("file", "\x00" * 70_000, "over 64 KiB"),
    ],
    ids=["env-newline", "env-space", "env-bell", "env-accent", "file-two-lines", "file-tab",
         "file-huge"],
)  # fmt: skip
def test_key_that_cannot_be_a_header_exits_2_before_anything(
    tmp_path, emulator, make_archive, run_cli, where, raw, what
):
    """A key with an inner line break, space, control or non-ASCII character: exit 2 with one
    line naming where it came from and no part of the key; nothing sent, nothing written."""
    emu = emulator()
    archive = make_archive(tmp_path, 2)
    out = tmp_path / "r.jsonl"
    if where == "env":
        origin = "SMALLEST_API_KEY"
        proc = run_cli(
            "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(),
            env={"SMALLEST_API_KEY": raw, "BATCHSCRIBE_DEBUG": "1"},
        )  # fmt: skip
    else:
        key_file = tmp_path / "pulse.key"
        key_file.write_bytes(raw.encode())
        key_file.chmod(0o600)
        origin = str(key_file)
        proc = run_cli(
            "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(),
            "--api-key-file", key_file, env={"SMALLEST_API_KEY": None, "BATCHSCRIBE_DEBUG": "1"},
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"batchscribe: error: {origin}:"), lines
    assert what in lines[0] and "internal error" not in lines[0]
    pieces = {TEST_KEY[i : i + 6] for i in range(len(TEST_KEY) - 5)}
    said = (proc.stderr + proc.stdout).replace(origin, "")  # (the tmp path may hold "test-7")
    assert not [p for p in pieces if p in said]
    assert emu.stats()["requests"] == 0
    assert not out.exists()


def test_key_never_printed_or_recorded_on_error_paths(tmp_path, emulator, make_archive, run_cli):
    """Even with BATCHSCRIBE_DEBUG=1, failures never put the key in stdout, stderr or results."""
    archive = make_archive(tmp_path, 4)
    (tmp_path / "audio" / "clip-000.wav").unlink()
    (tmp_path / "audio" / "clip-001.wav").write_bytes(b"garbage, not audio")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(archive.manifest.read_text() + "{bad line\n")
    debug = {"BATCHSCRIBE_DEBUG": "1"}
    outputs: list[str | bytes] = []
    # 5xx on every answer, with one attempt: items fail with the server's error.
    emu = emulator(faults=FaultRates(p5xx=1.0))
    out = tmp_path / "a.jsonl"
    once = ("--max-attempts", "1")
    proc = run_cli("run", manifest, "--out", out, "--endpoint", emu.endpoint(), *once, env=debug)
    assert proc.returncode == 1, proc.stderr
    assert "m.jsonl:5:" in proc.stderr
    causes = sorted(r["cause"] for r in read_results(out)[0])
    assert causes == ["5xx", "5xx", "invalid", "missing"]  # garbage: unreadable, never sent
    outputs += [proc.stdout, proc.stderr, out.read_bytes()]
    # A key file (not the environment) rejected by a server expecting another key: 401.
    strict = emulator(key="sk-the-server-wants-another-one")
    key_file = tmp_path / "k"
    key_file.write_text(TEST_KEY)
    key_file.chmod(0o600)
    out = tmp_path / "b.jsonl"
    proc = run_cli(
        "run", manifest, "--out", out, "--endpoint", strict.endpoint(), "--api-key-file", key_file,
        env={**debug, "SMALLEST_API_KEY": None},
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    outputs += [proc.stdout, proc.stderr, out.read_bytes()]
    # Connection refused: the emulator is gone.
    dead = strict.endpoint()
    strict.stop_listening()
    out = tmp_path / "c.jsonl"
    proc = run_cli("run", manifest, "--out", out, "--endpoint", dead, *once, env=debug)
    assert proc.returncode == 1, proc.stderr
    assert "network" in out.read_text()
    outputs += [proc.stdout, proc.stderr, out.read_bytes()]
    assert_no_key(*outputs)


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    "args",
    [["--concurrency", "0"], ["--model", "whisper"], ["--language", "xx"], ["--bogus-flag"],
     ["--endpoint", "http://[::1"], ["--endpoint", "http://"],
     ["--endpoint", "http://127.0.0.1:99999/x"], ["--timeout", "inf"], ["--timeout", "nan"],
     ["--max-retry-wait", "nan"], ["--max-runtime", "nan"], ["-j", "99999999999"],
     ["-j", "auto", "--max-concurrency", "99999999999"],
     ["--dry-run", "--price-per-hour", "nan"]],
    ids=["concurrency", "model", "language", "unknown-flag", "endpoint-ipv6", "endpoint-no-host",
         "endpoint-port", "timeout-inf", "timeout-nan", "retry-wait-nan", "runtime-nan",
         "concurrency-huge", "max-concurrency-huge", "price-nan"],
)  # fmt: skip
def test_usage_errors_exit_2(tmp_path, make_archive, run_cli, args):
    """Bad flags exit 2 with a message (never an internal error), before anything is opened."""
    archive = make_archive(tmp_path, 1)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, *args, timeout=20)
    assert proc.returncode == 2, proc.stderr
    assert "error" in proc.stderr
    assert "internal error" not in proc.stderr
    assert not out.exists()


_RUN = ["run", "m.jsonl", "--out", "r.jsonl"]


@pytest.mark.parametrize(
    ("args", "option"),
    [(["report", "r.jsonl", "--runs", "-5"], "--runs"),
     (["report", "r.jsonl", "--top", "-1"], "--top"),
     ([*_RUN, "--max-items", "-1"], "--max-items"),
     ([*_RUN, "--max-attempts", "-2"], "--max-attempts"),
     ([*_RUN, "--concurrency", "-4"], "--concurrency"),
     ([*_RUN, "--max-concurrency", "-3"], "--max-concurrency"),
     ([*_RUN, "--timeout", "0"], "--timeout"),
     ([*_RUN, "--timeout", "nan"], "--timeout"),
     ([*_RUN, "--timeout", "inf"], "--timeout"),
     ([*_RUN, "--max-retry-wait", "-1"], "--max-retry-wait"),
     ([*_RUN, "--max-retry-wait", "nan"], "--max-retry-wait"),
     ([*_RUN, "--max-runtime", "nan"], "--max-runtime"),
     ([*_RUN, "--max-runtime", "inf"], "--max-runtime"),
     ([*_RUN, "--rate", "nan"], "--rate"),
     ([*_RUN, "--dry-run", "--price-per-hour", "nan"], "--price-per-hour"),
     ([*_RUN, "--dry-run", "--price-per-hour", "-1"], "--price-per-hour"),
     (["emulate", "--port", "-1"], "--port"),
     (["emulate", "--port", "65536"], "--port"),
     (["emulate", "--latency", "nan"], "--latency"),
     (["emulate", "--rate-limit", "inf"], "--rate-limit"),
     (["emulate", "--stall-seconds", "nan"], "--stall-seconds")],
)  # fmt: skip
def test_every_numeric_option_refuses_out_of_range_values_alike(
    capsys: pytest.CaptureFixture[str], args: list[str], option: str
) -> None:
    """Every count, time and rate option of every subcommand refuses a negative (or zero
    where it must be positive), NaN or infinite value the same way: a usage error naming the
    option, exit 2, before anything is read."""
    from batchscribe.cli import main

    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "Traceback" not in err, err


def test_python_api_refuses_a_key_that_cannot_go_in_a_header(tmp_path) -> None:
    """RunOptions.validate refuses a key with a newline, inner or outer, before anything."""
    for key in (TEST_KEY + "\n", TEST_KEY[:9] + "\n" + TEST_KEY[9:]):
        options = RunOptions(sources=["m.jsonl"], out=str(tmp_path / "r.jsonl"), api_key=key)
        with pytest.raises(ConfigError) as info:
            options.validate()
        assert TEST_KEY[:6] not in str(info.value)


def test_a_trickling_stdin_pipe_is_sent_as_lines_arrive(
    tmp_path, emulator, make_archive, spawn_cli
):
    """Items from a slow pipe are sent as each line arrives, not after a batch fills up."""
    emu = emulator()
    archive = make_archive(tmp_path, 3)
    lines = archive.manifest.read_text().splitlines()
    out = tmp_path / "r.jsonl"
    proc = spawn_cli("run", "-", "--out", out, "--endpoint", emu.endpoint(), "--no-progress",
                     cwd=archive.root, stdin=subprocess.PIPE)  # fmt: skip
    assert proc.stdin is not None
    for n, line in enumerate(lines, start=1):
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        wait_until(lambda n=n: emu.stats()["requests"] >= n, timeout=20, what=f"request {n}")
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert len(read_results(out)[0]) == 3


def test_the_run_path_imports_nothing_it_may_not_need() -> None:
    """``batchscribe run`` starts without tenacity (first retry), aiofiles
    (big files), the shared rate store, the emulator or numpy (big results files): each is
    imported where it is used."""
    lazy = ["tenacity", "aiofiles", "batchscribe.ratestore", "batchscribe.emulator",
            "numpy"]  # fmt: skip
    code = f"import sys, batchscribe.cli; print([m for m in {lazy!r} if m in sys.modules])"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "[]"


def test_a_plain_run_imports_neither_msgspec_nor_the_rate_store(
    tmp_path, emulator, make_archive
) -> None:
    """A whole ``batchscribe run`` of local files (a new results file, no rate hint) starts
    and ends without msgspec (big results files' block scans), the rate store (``--rate-store``,
    a hint), the cloud module (buckets) or the results readers (report, merge)."""
    emu = emulator()
    archive = make_archive(tmp_path, 2)
    argv = ["run", str(archive.manifest), "--out", str(tmp_path / "r.jsonl"), "--endpoint",
            emu.endpoint(), "--no-progress"]  # fmt: skip
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print([m for m in ('msgspec', 'batchscribe.ratestore', "
        "'batchscribe.cloud', 'batchscribe.results.read', 'batchscribe.results.merge') "
        "if m in sys.modules]))\n"
        f"from batchscribe.cli import main\nsys.exit(main({argv!r}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_main_called_from_python_leaves_the_callers_collector_alone(tmp_path) -> None:
    """Only the command's own process freezes what it imported; main(argv) does not."""
    import gc

    from batchscribe.cli import main

    before = gc.get_freeze_count()
    assert main(["run", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r.jsonl")]) == 2
    assert gc.get_freeze_count() == before


# --------------------------------------------------------------------------- the contract's limits


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [(("--model", "pulse-pro", "--diarize"), "diarize works with model=pulse only, not pulse-pro"),
     (("--redact-pii", "--language", "fr"), "redact_pii works with language en or hi only, not fr"),
     (("--redact-pci", "--language", "multi-eu"), "redact_pci works with language en or hi"),
     (("--endpoint", "{emu}/waves/v1/stt/?punctuate=false"), "does not take punctuate")],
)  # fmt: skip
@pytest.mark.parametrize("dry", [False, True])
def test_parameters_the_service_refuses_exit_2_before_anything(
    tmp_path, emulator, make_archive, run_cli, flags, fragment, dry
) -> None:
    """Diarization with pulse-pro, redaction outside en/hi and a legacy-only parameter in a
    unified endpoint's query exit 2 with one line naming the fix: no request, no results."""
    emu = emulator()
    archive = make_archive(tmp_path, 2)
    out = tmp_path / "r.jsonl"
    base = emu.endpoint().split("/api/")[0].split("/waves/")[0]
    flags = tuple(f.replace("{emu}", base) for f in flags)
    if "--endpoint" not in flags:
        flags = (*flags, "--endpoint", emu.endpoint())
    proc = run_cli("run", archive.manifest, "--out", out, *flags, *(["--dry-run"] if dry else []))
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert emu.stats()["requests"] == 0


def test_legacy_only_parameters_go_to_a_legacy_endpoint(
    tmp_path, emulator, make_archive, run_cli
) -> None:
    """A legacy (.../get_text) endpoint's own punctuate/encoding query is accepted and sent."""
    emu = emulator()
    archive = make_archive(tmp_path, 1)
    out = tmp_path / "r.jsonl"
    base = emu.endpoint().split("/api/")[0].split("/waves/")[0]
    endpoint = f"{base}/api/v1/pulse/get_text?punctuate=false&encoding=linear16"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", endpoint)
    assert proc.returncode == 0, proc.stderr
    assert "linear16" not in proc.stderr  # (no warning: these are no secret and no clash)


@pytest.mark.parametrize("dry", [False, True])
def test_items_whose_parameters_the_service_refuses_are_bad_lines(
    tmp_path, emulator, make_archive, run_cli, dry
) -> None:
    """Manifest lines whose own fields break a documented limit, alone or with the run's flags
    (redaction in de on a URL, diarize with pulse-pro, a webhook with pulse, redaction in fr), are
    FILE:LINE bad lines, never sent; the other items run (exit 1)."""
    emu = emulator()
    archive = make_archive(tmp_path, 6)
    lines = [orjson.loads(x) for x in archive.manifest.read_bytes().splitlines()]
    lines[1].update(model="pulse-pro", diarize=True)
    lines[2] = {"id": "remote", "url": "https://media.example.org/a.mp3", "redact_pci": True,
                "language": "de"}  # fmt: skip
    lines[3].update(webhook_url="https://hooks.example.org/x")
    lines[4].update(redact_pii=True)  # with the run's --language fr below
    lines[5].update(language="en", redact_pii=True)  # fine: its own language is en
    archive.manifest.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "--language", "fr",
        *(["--dry-run"] if dry else []),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    reported = re.findall(rf"^{re.escape(str(archive.manifest))}:(\d+): (.*)$", proc.stderr, re.M)
    assert [n for n, _ in reported] == ["2", "3", "4", "5"], proc.stderr
    assert "diarize works with model=pulse only" in reported[0][1]
    assert "redact_pci works with language en or hi only, not de" in reported[1][1]
    assert "webhook parameters need model=pulse-pro" in reported[2][1]
    assert "redact_pii works with language en or hi only, not fr" in reported[3][1]
    if dry:
        assert "invalid lines: 4" in proc.stdout
        return
    states = {r["id"]: r["status"] for r in read_results(out)[0]}
    assert states == {"clip-000": "ok", "clip-005": "ok"}
    assert emu.stats()["requests"] == 2
