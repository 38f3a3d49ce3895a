"""What an answer says decides an item's state, end to end: a 200 is not a success unless its
body says so. Real CLI subprocesses against a loopback server that answers as scripted (and the
real emulator for webhook requests); verdicts from the results file and the server's counts.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import srt
import webvtt
from conftest import read_results

#: A Pulse Pro answer's words (no utterances, no speakers): two sentences, a long pause, and
#: a sentence too long for one cue.
PRO_TEXT = (
    "Good morning everyone. Welcome back. After the break we will go through the quarterly "
    "figures for every region one by one and then take questions."
)
PRO_WORDS = [
    {"start": round(0.5 + 0.4 * i + (3.0 if i >= 5 else 0.0), 2),
     "end": round(0.8 + 0.4 * i + (3.0 if i >= 5 else 0.0), 2), "word": word,
     "confidence": 0.9}
    for i, word in enumerate(PRO_TEXT.split())
]  # fmt: skip

#: What the scripted server answers, by the first segment of the request path: a list of
#: (status, body) served in turn to the requests for one audio body (the last one repeats).
SCRIPTS: dict[str, list[tuple[int, dict[str, Any]]]] = {
    "error": [(200, {"status": "error", "message": "Invalid audio file", "errors": "bad header"})],
    "processing": [(200, {"status": "processing", "request_id": "req-lost"})],
    "incomplete": [(200, {"status": "success"})],
    "busy": [(200, {"status": "error", "message": "Server busy, try again later"}),
             (200, {"status": "success", "transcription": "after the busy spell",
                    "metadata": {"duration": 1.5}})],
    "absurd": [(200, {"status": "success", "transcription": "hi",
                      "metadata": {"duration": 1e308}})],
    "negative": [(200, {"status": "success", "transcription": "hi",
                        "metadata": {"duration": -40.0}})],
    "silence": [(200, {"status": "success", "transcription": "", "words": [],
                       "metadata": {"duration": 2.0}})],
    # The current contract's shapes (shared/pulse-api.md): Pulse has no request_id in its body
    # (the header has it), Pulse Pro no utterances and no speakers but extra fields.
    "pulse": [(200, {"status": "success", "transcription": "Hello there. Fine, thanks.",
                     "words": [{"start": 0.48, "end": 0.9, "word": "Hello", "confidence": 0.98,
                                "speaker": 0, "speaker_confidence": 1.0},
                               {"start": 0.95, "end": 1.3, "word": "there.", "confidence": 0.9,
                                "speaker": 0, "speaker_confidence": 0.97},
                               {"start": 3.1, "end": 3.5, "word": "Fine,", "confidence": 0.8,
                                "speaker": 1, "speaker_confidence": 0.88},
                               {"start": 3.55, "end": 3.9, "word": "thanks.", "confidence": 0.7,
                                "speaker": 1, "speaker_confidence": 0.91}],
                     "metadata": {"duration": 3.9, "fileSize": 124844}})],
    "pro": [(200, {"status": "success", "request_id": "pro-req-1", "language": "en",
                   "transcription": PRO_TEXT, "words": PRO_WORDS, "totalBytes": 124844,
                   "metadata": {"duration": 21.5, "fileSize": 124844,
                                "processing_time_ms": 1234, "rtfx": 250.5, "num_chunks": 1}})],
    "toolarge": [(400, {"errors": "Audio data too large", "status": "error",
                        "message": "Bad request"})],
    "region": [(400, {"status": "error", "error_code": "LANGUAGE_NOT_ENABLED_IN_REGION",
                      "message": "Language not enabled", "language": "multi-indic"})],
    "down": [(503, {"error": "worker unavailable"})],
    "toplevel": [(200, {"status": "success", "transcription": "hi", "duration": 2.5,
                        "metadata": {"fileSize": 10}})],
}  # fmt: skip


class _Scripted(BaseHTTPRequestHandler):
    """Answers each request from ``SCRIPTS[first path segment]``, in turn per request body."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server: _ScriptedServer = self.server  # type: ignore[assignment]
        name = self.path.split("?")[0].strip("/").split("/")[0]
        with server.lock:
            n = server.seen[(name, body)]
            server.seen[(name, body)] += 1
            server.requests[name] += 1
        script = SCRIPTS[name]
        status, doc = script[min(n, len(script) - 1)]
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Request-Id", f"hdr-{name}-{n}")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class _ScriptedServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Scripted)
        self.lock = threading.Lock()
        self.seen: Counter[tuple[str, bytes]] = Counter()
        self.requests: Counter[str] = Counter()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}/api/v1/pulse/get_text"


@pytest.fixture
def scripted() -> Iterator[_ScriptedServer]:
    """A :class:`_ScriptedServer` on loopback, stopped at teardown."""
    server = _ScriptedServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _only(path: Path) -> dict[str, Any]:
    items, _ = read_results(path)
    assert len(items) == 1
    assert list(items[0])[:2] == ["id", "status"]
    return items[0]


@pytest.mark.parametrize(
    ("name", "fragment", "cause"),
    [("error", "Invalid audio file", "4xx"),
     ("processing", "no webhook_url", "4xx")],
)  # fmt: skip
def test_a_200_whose_body_says_it_failed_is_recorded_failed_and_listed(
    tmp_path, make_archive, run_cli, scripted, name, fragment, cause
) -> None:
    """A 200 error body (or "processing" without a webhook) is failed with the body's error:
    exit 1, sent once, listed by `failed`, never recorded ok."""
    archive = make_archive(tmp_path, 1)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", scripted.url(name))
    assert proc.returncode == 1, proc.stderr
    record = _only(out)
    assert record["status"] == "failed"
    assert record["http_status"] == 200 and record["cause"] == cause
    assert fragment in record["error"]
    assert "transcription" not in record
    assert scripted.requests[name] == 1  # not retried
    assert "ok: 0  failed: 1" in proc.stdout
    listed = run_cli("failed", out)
    assert [orjson.loads(x)["id"] for x in listed.stdout.splitlines()] == ["clip-000"]


def test_a_200_saying_busy_is_retried_until_it_transcribes(
    tmp_path, make_archive, run_cli, scripted
) -> None:
    """A 200 whose body says the service is busy is retried; the next answer's transcript wins."""
    archive = make_archive(tmp_path, 1)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", scripted.url("busy"))
    assert proc.returncode == 0, proc.stderr
    record = _only(out)
    assert record["status"] == "ok" and record["transcription"] == "after the busy spell"
    assert record["attempts"] == 2 and scripted.requests["busy"] == 2
    assert record["request_id"] == "hdr-busy-1"  # no id in the body: the header's


def test_a_success_without_a_transcription_is_retried_then_failed(
    tmp_path, make_archive, run_cli, scripted
) -> None:
    """status success with no transcription is an incomplete answer: retried, then failed."""
    archive = make_archive(tmp_path, 1)
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", scripted.url("incomplete"),
        "--max-attempts", 2,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    record = _only(out)
    assert record["status"] == "failed" and "incomplete answer" in record["error"]
    assert scripted.requests["incomplete"] == 2


def test_silence_is_an_empty_transcript_and_ok(tmp_path, make_archive, run_cli, scripted) -> None:
    """A success with an empty transcription (silence) is ok, not a failure."""
    archive = make_archive(tmp_path, 1)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", scripted.url("silence"))
    assert proc.returncode == 0, proc.stderr
    record = _only(out)
    assert record["status"] == "ok" and record["transcription"] == ""


@pytest.mark.parametrize("name", ["absurd", "negative"])
def test_an_impossible_duration_in_an_answer_is_not_audio(
    tmp_path, make_archive, run_cli, scripted, name
) -> None:
    """An answer's negative or absurd duration (1e308) is not recorded or summed: the file's
    own header gives the duration, and the summary's audio hours stay true."""
    archive = make_archive(tmp_path, 1)  # 0.2 s of audio
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", scripted.url(name))
    assert proc.returncode == 0, proc.stderr
    record = _only(out)
    assert record["duration"] == 0.2 and record["duration_from"] == "header"
    assert "audio: 0.000 h (0.2 s)" in proc.stdout


# --------------------------------------------------------------------------- webhooks

_HOOK = "https://hooks.example.org/pulse"


def _webhook_run(tmp_path: Path, make_archive: Any, run_cli: Any, emu: Any) -> Path:
    """One pulse-pro item with a webhook_url and one plain item, run; returns the results."""
    archive = make_archive(tmp_path, 2)
    lines = archive.manifest.read_bytes().splitlines()
    first = orjson.loads(lines[0])
    first.update(model="pulse-pro", webhook_url=_HOOK)
    archive.manifest.write_bytes(orjson.dumps(first) + b"\n" + lines[1] + b"\n")
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(),
        "--log-file", tmp_path / "run.log",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr  # a submitted item is not a failure
    assert "ok: 1  failed: 0  submitted: 1 (answers go to the webhook)" in proc.stdout
    assert "clip-000: submitted" in (tmp_path / "run.log").read_text()
    return out


def test_a_webhook_request_is_submitted_not_ok(tmp_path, make_archive, run_cli, emulator) -> None:
    """A pulse-pro webhook request answered "processing" is recorded submitted with its
    request id; `failed` never lists it, `report` counts it apart, `export` skips it."""
    emu = emulator()
    out = _webhook_run(tmp_path, make_archive, run_cli, emu)
    items, runs = read_results(out)
    record = next(r for r in items if r["id"] == "clip-000")
    assert list(record)[:2] == ["id", "status"]
    assert record["status"] == "submitted"
    assert record["request_id"].startswith("emu-")
    assert record["error"] is None and record["cause"] is None
    assert "transcription" not in record
    assert record["params"] == {"model": "pulse-pro", "webhook_url": _HOOK}
    assert runs[-1]["submitted"] == 1 and runs[-1]["ok"] == 1
    assert run_cli("failed", out).stdout == ""
    report = orjson.loads(run_cli("report", out, "--json").stdout)
    assert (report["items"], report["ok"], report["failed"], report["submitted"]) == (2, 1, 0, 1)
    text = run_cli("report", out).stdout
    assert "submitted: 1 (answers go to the webhook)" in text
    exported = run_cli("export", out, "--format", "txt", "--dir", tmp_path / "txt")
    assert exported.returncode == 0, exported.stderr
    assert "1 written" in exported.stdout and "1 without transcript" in exported.stdout
    assert [p.name for p in (tmp_path / "txt").iterdir()] == ["clip-001.txt"]


@pytest.mark.parametrize("flags", [(), ("--retry-failed",), ("--rescan-changed",)])
def test_a_rerun_never_sends_a_submitted_item_again(
    tmp_path, make_archive, run_cli, emulator, flags
) -> None:
    """A submitted item is done for a rerun (also with --retry-failed and --rescan-changed):
    its transcript is on its way to the webhook, a second request would pay twice."""
    emu = emulator()
    out = _webhook_run(tmp_path, make_archive, run_cli, emu)
    before = emu.stats()["requests"]
    (tmp_path / "audio" / "clip-000.wav").touch()  # changed, for --rescan-changed
    again = run_cli("run", tmp_path / "manifest.jsonl", "--out", out, "--endpoint",
                    emu.endpoint(), *flags)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert emu.stats()["requests"] == before
    assert "skipped (done earlier): 2" in again.stdout


# --------------------------------------------------------------------------- the current shapes


def test_a_pulse_answer_keeps_its_words_and_takes_its_id_and_duration_elsewhere(
    tmp_path, make_archive, run_cli, scripted
) -> None:
    """A Pulse answer (no request_id, metadata {duration, fileSize}): the record's request_id
    is the x-request-id header, its duration metadata.duration, and its words keep
    confidence, speaker_confidence and integer speakers as sent."""
    archive = make_archive(tmp_path, 1)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", scripted.url("pulse"))
    assert proc.returncode == 0, proc.stderr
    record = _only(out)
    assert record["request_id"] == "hdr-pulse-0"
    assert record["duration"] == 3.9 and "duration_from" not in record
    assert record["words"] == SCRIPTS["pulse"][0][1]["words"]
    assert type(record["words"][2]["speaker"]) is int
    assert record["response"]["metadata"] == {"duration": 3.9, "fileSize": 124844}
    srt_text = run_cli("export", out, "--format", "srt", "--dir", tmp_path / "s")
    assert srt_text.returncode == 0, srt_text.stderr
    cues = list(srt.parse((tmp_path / "s" / "clip-000.srt").read_text()))
    assert [c.content for c in cues] == ["[Speaker 0] Hello there.", "[Speaker 1] Fine, thanks."]
    vtt = run_cli("export", out, "--format", "vtt", "--dir", tmp_path / "v")
    assert vtt.returncode == 0, vtt.stderr
    voices = [(c.voice, c.text) for c in webvtt.read(str(tmp_path / "v" / "clip-000.vtt"))]
    assert voices == [("Speaker 0", "Hello there."), ("Speaker 1", "Fine, thanks.")]


def test_a_pulse_pro_answer_keeps_its_fields_reports_and_exports_good_subtitles(
    tmp_path, make_archive, run_cli, scripted
) -> None:
    """A Pulse Pro answer: its body's request_id, its extra fields in response, its processing
    time in the report, and, without utterances, SRT and WebVTT cues built from its words
    (split at the pause and sentence ends, within 42 characters a line, 2 lines, 7 seconds)."""
    archive = make_archive(tmp_path, 1)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", scripted.url("pro"))
    assert proc.returncode == 0, proc.stderr
    record = _only(out)
    assert record["request_id"] == "pro-req-1" and record["duration"] == 21.5
    assert record["utterances"] is None
    response = record["response"]
    assert (response["language"], response["totalBytes"]) == ("en", 124844)
    assert response["metadata"] == {
        "duration": 21.5,
        "fileSize": 124844,
        "processing_time_ms": 1234,
        "rtfx": 250.5,
        "num_chunks": 1,
    }
    report = orjson.loads(run_cli("report", out, "--json").stdout)
    assert [e["processing_time_ms"] for e in report["slowest"]] == [1234.0]
    for fmt in ("srt", "vtt"):
        done = run_cli("export", out, "--format", fmt, "--dir", tmp_path / fmt)
        assert done.returncode == 0, done.stderr
    subtitles = list(srt.parse((tmp_path / "srt" / "clip-000.srt").read_text()))
    vtt = list(webvtt.read(str(tmp_path / "vtt" / "clip-000.vtt")))
    texts = [c.content.replace("\n", " ") for c in subtitles]
    assert texts == [c.text.replace("\n", " ") for c in vtt]
    assert texts[0] == "Good morning everyone. Welcome back."  # cut at the pause
    assert texts[-1].endswith("questions.") and len(texts) == 3
    assert " ".join(texts) == PRO_TEXT  # every word, in order, once
    for cue in subtitles:
        lines = cue.content.splitlines()
        assert len(lines) <= 2 and all(len(line) <= 42 for line in lines)
        assert timedelta(0) < cue.end - cue.start <= timedelta(seconds=7)
    assert subtitles[1].start == timedelta(seconds=5.5)  # after the 3 s pause, at its word
    assert [c.start for c in subtitles] == sorted(c.start for c in subtitles)


def test_the_legacy_oversize_answer_is_too_large_with_the_header_request_id(
    tmp_path, make_archive, run_cli, scripted
) -> None:
    """A legacy 400 "Audio data too large" fails the item once as cause too_large (told apart
    from other 4xx), its record carrying the x-request-id header's id."""
    archive = make_archive(tmp_path, 1)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", scripted.url("toolarge"))
    assert proc.returncode == 1, proc.stderr
    record = _only(out)
    assert (record["status"], record["cause"]) == ("failed", "too_large")
    assert record["http_status"] == 400
    assert "Audio data too large" in record["error"]
    assert record["request_id"] == "hdr-toolarge-0"
    assert scripted.requests["toolarge"] == 1
    listed = run_cli("failed", out, "--cause", "too_large")
    assert [orjson.loads(x)["id"] for x in listed.stdout.splitlines()] == ["clip-000"]


def test_an_item_failed_after_its_retries_keeps_the_last_request_id(
    tmp_path, make_archive, run_cli, scripted
) -> None:
    """An item given up after retries (503 each time) records the last answer's request id."""
    archive = make_archive(tmp_path, 1)
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", scripted.url("down"),
        "--max-attempts", 2,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    record = _only(out)
    assert (record["cause"], record["attempts"]) == ("5xx", 2)
    assert record["request_id"] == "hdr-down-1"


def test_the_runs_language_not_enabled_in_the_region_stops_the_run(
    tmp_path, make_archive, run_cli, scripted
) -> None:
    """LANGUAGE_NOT_ENABLED_IN_REGION for the run's own --language stops the run (exit 3,
    nothing recorded for the item) with a message naming the language and the fix, instead of
    failing every item one by one."""
    archive = make_archive(tmp_path, 3)
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", scripted.url("region"),
        "--language", "multi-indic", "-j", 1,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "language multi-indic is not enabled in this account's region" in proc.stderr
    assert "choose another --language" in proc.stderr
    assert scripted.requests["region"] == 1
    assert read_results(out)[0] == []


def test_an_items_own_language_not_enabled_fails_that_item_only(
    tmp_path, make_archive, run_cli, scripted
) -> None:
    """LANGUAGE_NOT_ENABLED_IN_REGION for an item's own language (a manifest field) fails that
    item with cause language; the run goes on (exit 1) and `failed --cause language` lists it."""
    archive = make_archive(tmp_path, 2)
    lines = [orjson.loads(x) for x in archive.manifest.read_bytes().splitlines()]
    for line in lines:
        line["language"] = "multi-indic"
    archive.manifest.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", scripted.url("region"))
    assert proc.returncode == 1, proc.stderr
    items, _ = read_results(out)
    assert {(r["status"], r["cause"]) for r in items} == {("failed", "language")}
    assert all("not enabled in this account's region" in r["error"] for r in items)
    listed = run_cli("failed", out, "--cause", "language")
    assert len(listed.stdout.splitlines()) == 2


def test_a_top_level_duration_is_the_records_duration(
    tmp_path, make_archive, run_cli, scripted
) -> None:
    """An answer's top-level duration is the record's (metadata.duration only stands in for
    it), not the file header's."""
    archive = make_archive(tmp_path, 1)  # 0.2 s of audio by its header
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", scripted.url("toplevel"))
    assert proc.returncode == 0, proc.stderr
    record = _only(out)
    assert record["duration"] == 2.5 and "duration_from" not in record
