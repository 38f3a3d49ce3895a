"""Nightly backlog jobs: only new files, --rescan-changed, budgets, --dry-run, logs, unit files."""

from __future__ import annotations

import configparser
import hashlib
import hmac
import os
import pty
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import parse_qsl, urlsplit
from urllib.request import Request, urlopen

import orjson
import pytest
from audio_fixtures import make_wav, wav_bytes
from conftest import TEST_KEY, cli_env, read_results, wait_until

from batchscribe.audio import audio_duration
from batchscribe.cli import parse_duration
from batchscribe.emulator import transcript_for

REPO = Path(__file__).resolve().parents[1]


def _run_dir(run_cli, emulator, root: Path, out: Path, *extra: object):
    return run_cli("run", root, "--out", out, "--endpoint", emulator.endpoint(), "--no-progress",
                   *extra)  # fmt: skip


def test_rerun_on_a_directory_sends_only_new_files(tmp_path, emulator, run_cli) -> None:
    """A nightly rerun over a growing directory sends only the files added since."""
    emu = emulator()
    root = tmp_path / "archive"
    for i in range(3):
        make_wav(root / f"day1/{i}.wav", freq=300 + i)
    out = tmp_path / "r.jsonl"
    assert _run_dir(run_cli, emu, root, out).returncode == 0
    assert emu.stats()["requests"] == 3
    make_wav(root / "day2/new.wav", freq=999)
    proc = _run_dir(run_cli, emu, root, out)
    assert proc.returncode == 0, proc.stderr
    assert emu.stats()["requests"] == 4
    items, _ = read_results(out)
    assert sorted(r["id"] for r in items) == ["day1/0.wav", "day1/1.wav", "day1/2.wav",
                                              "day2/new.wav"]  # fmt: skip


def test_rescan_changed_resends_changed_files_and_supersedes(tmp_path, emulator, run_cli) -> None:
    """--rescan-changed re-sends exactly the files whose size or mtime changed."""
    emu = emulator()
    root = tmp_path / "archive"
    for i in range(4):
        make_wav(root / f"{i}.wav", freq=300 + i)
    out = tmp_path / "r.jsonl"
    assert _run_dir(run_cli, emu, root, out).returncode == 0
    make_wav(root / "1.wav", freq=777, seconds=0.7)  # new content and size
    os.utime(root / "2.wav", (1_600_000_000, 1_600_000_000))  # same bytes, new mtime
    emu.reset_stats()
    assert _run_dir(run_cli, emu, root, out).returncode == 0
    assert emu.stats()["requests"] == 0  # plain rerun: changed files are not looked at
    proc = _run_dir(run_cli, emu, root, out, "--rescan-changed")
    assert proc.returncode == 0, proc.stderr
    assert emu.stats()["requests"] == 2
    proc = _run_dir(run_cli, emu, root, out, "--rescan-changed")
    assert emu.stats()["requests"] == 2  # nothing changed since: nothing sent
    from batchscribe.emulator import transcript_for

    items, _ = read_results(out)
    last = {r["id"]: r for r in items}
    assert last["1.wav"]["transcription"] == transcript_for((root / "1.wav").read_bytes())
    assert last["1.wav"]["size"] == (root / "1.wav").stat().st_size
    assert [r["id"] for r in items].count("1.wav") == 2


def test_max_items_sends_exactly_n_then_exit_4_and_resumes(
    tmp_path, emulator, make_archive, run_cli
) -> None:
    """--max-items N attempts exactly N items, exits 4 with work left, and the next run resumes."""
    emu = emulator()
    archive = make_archive(tmp_path, 7)
    out = tmp_path / "r.jsonl"
    proc = _run_dir(run_cli, emu, archive.manifest, out, "--max-items", 3)
    assert proc.returncode == 4, proc.stderr
    assert "budget reached" in proc.stdout
    assert emu.stats()["requests"] == 3
    assert len(read_results(out)[0]) == 3
    proc = _run_dir(run_cli, emu, archive.manifest, out, "--max-items", 4)
    assert proc.returncode == 0, proc.stderr  # exactly the 4 left: no work remains
    assert emu.stats()["requests"] == 7
    items, _ = read_results(out)
    assert sorted(r["id"] for r in items) == sorted(archive.ids)


def test_max_runtime_stops_taking_items_and_resumes_cleanly(
    tmp_path, emulator, make_archive, run_cli
) -> None:
    """--max-runtime stops taking items, finishes those in flight, exits 4; a rerun completes."""
    emu = emulator(latency_ms=400)
    archive = make_archive(tmp_path, 24)
    out = tmp_path / "r.jsonl"
    proc = _run_dir(run_cli, emu, archive.manifest, out, "--max-runtime", "1s",
                    "--concurrency", 2)  # fmt: skip
    assert proc.returncode == 4, proc.stdout + proc.stderr
    items, runs = read_results(out)
    stats = emu.stats()
    assert 0 < len(items) < 24
    # every request that was answered was recorded: in-flight requests finished, none dropped
    assert len(items) == stats["requests"]
    assert all(r["status"] == "ok" for r in items)
    assert runs and runs[-1]["budget_reached"] is True
    proc = _run_dir(run_cli, emu, archive.manifest, out, "--concurrency", 8)
    assert proc.returncode == 0, proc.stderr
    items, _ = read_results(out)
    assert sorted(r["id"] for r in items) == sorted(archive.ids)  # each once: no duplicates


def test_dry_run_sends_nothing_and_writes_nothing(
    tmp_path, emulator, make_archive, run_cli
) -> None:
    """--dry-run counts new/done/failed/invalid and audio hours, sends and writes nothing."""
    emu = emulator()
    archive = make_archive(tmp_path, 5)
    out = tmp_path / "r.jsonl"
    assert not out.exists()
    proc = run_cli("run", archive.manifest, "--out", out, "--dry-run", "--price-per-hour", "3.6")
    assert proc.returncode == 0, proc.stderr
    assert not out.exists()
    assert "to send: 5 (new: 5" in proc.stdout
    assert "audio to send: 0.000 h (1.0 s" in proc.stdout  # 5 x 0.2 s, from the WAV headers
    assert "estimated cost: 0.00 at 3.6 per audio hour" in proc.stdout
    # after a partial run: done and failed are counted, and the file is left byte for byte
    assert _run_dir(run_cli, emu, archive.manifest, out, "--max-items", 2).returncode == 4
    with out.open("ab") as handle:
        handle.write(orjson.dumps({"id": archive.ids[4], "status": "failed"}) + b"\n")
    with archive.manifest.open("ab") as handle:
        handle.write(b"{broken\n")
    before = out.read_bytes()
    emu.reset_stats()
    proc = run_cli("run", archive.manifest, "--out", out, "--dry-run", "--retry-failed")
    assert proc.returncode == 1  # an invalid line
    assert "to send: 3 (new: 2, retry failed: 1, changed: 0)" in proc.stdout
    assert "skipped: done: 2  failed earlier: 0  invalid lines: 1" in proc.stdout
    assert "manifest.jsonl:6: invalid JSON" in proc.stderr
    assert out.read_bytes() == before
    assert emu.stats()["requests"] == 0


def test_dry_run_does_not_count_a_header_claiming_days_of_audio(tmp_path, run_cli) -> None:
    """A WAV header claiming more than a week of audio (1 frame a second) is a duration
    unknown to --dry-run, not hundreds of hours to send."""
    liar = tmp_path / "archive" / "liar.wav"
    liar.parent.mkdir()
    with wave.open(str(liar), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(1)
        handle.writeframes(bytes(2 * 700_000))  # 700,000 s: eight days
    proc = run_cli("run", liar.parent, "--out", tmp_path / "r.jsonl", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "audio to send: 0.000 h (0.0 s, 1.4 MB); duration unknown for 1 item(s)" in proc.stdout


def _odd_files(root: Path) -> Path:
    """A text list naming one good WAV and six files a run must not send: a FIFO, /dev/zero,
    a folder, a missing file, an empty file and a (sparse) 251 MB file."""
    make_wav(root / "good.wav", seconds=0.2)
    os.mkfifo(root / "pipe.wav")
    (root / "folder.wav").mkdir()
    (root / "empty.wav").write_bytes(b"")
    with (root / "huge.wav").open("wb") as handle:
        handle.truncate(251_000_000)
    names = ["good.wav", "pipe.wav", "/dev/zero", "folder.wav", "missing.wav", "empty.wav",
             "huge.wav"]  # fmt: skip
    manifest = root / "m.txt"
    manifest.write_text("\n".join(names) + "\n")
    return manifest


def test_dry_run_makes_the_runs_per_file_decisions_without_reading_the_files(
    tmp_path, emulator, run_cli
) -> None:
    """--dry-run counts a FIFO, /dev/zero, a folder, a missing, an empty file and a 251 MB file
    of zeros (too large to send as is, so probed for preparation: unreadable audio) as the run
    records them (failed, never sent), at once and without reading them whole; exit 1."""
    emu = emulator()
    manifest = _odd_files(tmp_path)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", manifest, "--out", out, "--dry-run", timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert "items: 7  to send: 1 (new: 1, retry failed: 0, changed: 0)" in proc.stdout
    assert (
        "to fail without a request: 6 (not a regular file: 3, file not found: 1, empty file: 1, "
        "unreadable audio: 1)" in proc.stdout
    )
    assert "audio to send: 0.000 h (0.2 s, 0.0 MB)" in proc.stdout
    assert "duration unknown" not in proc.stdout
    assert not out.exists()
    # The run decides the same: the six fail without a request, the one is sent.
    proc = run_cli("run", manifest, "--out", out, "--endpoint", emu.endpoint(), timeout=30)
    assert proc.returncode == 1, proc.stderr
    records, _ = read_results(out)
    failed = sorted(r["error"] for r in records if r["status"] == "failed" and r["attempts"] == 0)
    assert len(failed) == 6
    assert sorted(r["id"] for r in records if r["status"] == "ok") == ["good.wav"]
    assert emu.stats()["requests"] == 1


def test_audio_duration_never_reads_a_fifo_a_device_or_a_folder(tmp_path) -> None:
    """audio_duration is None at once for a FIFO with no writer, /dev/zero and a folder (it
    would block, read forever, or fail), and still reads a WAV's header."""
    os.mkfifo(tmp_path / "pipe.wav")
    make_wav(tmp_path / "good.wav", seconds=0.2)
    started = time.monotonic()
    for path in (tmp_path / "pipe.wav", "/dev/zero", tmp_path, tmp_path / "missing.wav"):
        assert audio_duration(str(path)) is None
    assert time.monotonic() - started < 5
    assert audio_duration(str(tmp_path / "good.wav")) == pytest.approx(0.2)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_dry_run_refuses_a_results_path_that_is_not_a_file(tmp_path, run_cli, kind) -> None:
    """--dry-run --out naming a FIFO or /dev/zero exits 2 at once, as the run does, instead of
    waiting for a writer or reading forever."""
    make_wav(tmp_path / "good.wav", seconds=0.2)
    (tmp_path / "m.txt").write_text("good.wav\n")
    out = tmp_path / "r.jsonl"
    if kind == "fifo":
        os.mkfifo(out)
    proc = run_cli("run", "m.txt", "--out", out if kind == "fifo" else "/dev/zero", "--dry-run",
                   timeout=20)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "results path is not a regular file" in proc.stderr


def test_dry_run_stops_on_sigint(tmp_path, spawn_cli) -> None:
    """A --dry-run waiting on a manifest pipe that never ends stops on SIGINT with exit 130."""
    make_wav(tmp_path / "good.wav", seconds=0.2)
    fifo = tmp_path / "m.txt"
    os.mkfifo(fifo)
    proc = spawn_cli("run", fifo, "--out", tmp_path / "r.jsonl", "--dry-run")
    with fifo.open("w") as writer:  # returns once the dry run has opened the pipe
        writer.write("good.wav\n/dev/zero\n")
        writer.flush()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "interrupted" in err


def test_json_log_file_has_events_and_summary_and_no_key(
    tmp_path, emulator, make_archive, run_cli
) -> None:
    """--log-file with --log-format json writes parseable lines, failures and the summary."""
    emu = emulator()
    archive = make_archive(tmp_path, 4)
    (archive.paths[archive.ids[0]]).unlink()
    out, log = tmp_path / "r.jsonl", tmp_path / "run.log"
    proc = _run_dir(run_cli, emu, archive.manifest, out, "--log-file", log, "--log-format", "json")
    assert proc.returncode == 1
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    kinds = [doc["event"] for doc in lines]
    assert kinds[0] == "run_started"
    assert kinds[-1] == "run_finished"
    assert "item_failed" in kinds
    summary = lines[-1]["summary"]
    assert summary["ok"] == 3 and summary["failed"] == 1 and summary["exit_code"] == 1
    assert TEST_KEY not in log.read_text()


def test_config_errors_reach_the_log_file(tmp_path, make_archive, run_cli) -> None:
    """An unattended run that cannot start says why in its log, too."""
    archive = make_archive(tmp_path, 1)
    log = tmp_path / "run.log"
    proc = run_cli("run", archive.manifest, "--out", tmp_path / "r.jsonl", "--log-file", log,
                   env={"SMALLEST_API_KEY": None})  # fmt: skip
    assert proc.returncode == 2
    assert "SMALLEST_API_KEY" in log.read_text()


def test_overlapping_cron_start_exits_75_without_touching_results(
    tmp_path, emulator, make_archive, spawn_cli, run_cli
) -> None:
    """A second nightly start while the first still runs exits 75 and leaves the file alone."""
    emu = emulator(latency_ms=300)
    archive = make_archive(tmp_path, 30)
    out = tmp_path / "r.jsonl"
    first = spawn_cli("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(),
                      "--no-progress", "--concurrency", 1)  # fmt: skip
    wait_until(lambda: out.exists() and out.stat().st_size > 0, what="first records")
    before = out.read_bytes()
    proc = _run_dir(run_cli, emu, archive.manifest, out)
    after = out.read_bytes()
    assert proc.returncode == 75
    assert "another batchscribe run" in proc.stderr
    assert after.startswith(before[: before.rfind(b"\n") + 1])  # only the first run appended
    first.kill()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("45s", 45), ("30m", 1800), ("6h", 21600), ("1h30m", 5400), ("2d", 172800),
     ("0.5h", 1800)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    """--max-runtime accepts seconds and s/m/h/d units, combined."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "6x", "1h30", "-"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    """A malformed duration is an error that shows the accepted forms."""
    with pytest.raises(ValueError, match="90s, 30m, 6h"):
        parse_duration(text)


def _readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"```ini\n(# " + re.escape(marker) + r"\n.*?)```", text, re.S)
    assert match, f"README has no ini block starting with # {marker}"
    return match.group(1)


def _parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_readme_systemd_units_parse_and_fit_together() -> None:
    """The README's systemd service and timer parse, and run the documented command."""
    service = _parse_unit(_readme_block("/etc/systemd/system/batchscribe-nightly.service"))
    timer = _parse_unit(_readme_block("/etc/systemd/system/batchscribe-nightly.timer"))
    assert service["Service"]["Type"] == "oneshot"
    assert "4" in service["Service"]["SuccessExitStatus"].split()
    command = service["Service"]["ExecStart"].split()
    assert command[0].endswith("/batchscribe") and command[1] == "run"
    assert "--out" in command and "--api-key-file" in command
    assert timer["Timer"]["OnCalendar"]
    assert timer["Install"]["WantedBy"] == "timers.target"
    _check_run_flags(command[2:])


def test_readme_cron_line_is_a_valid_crontab_entry() -> None:
    """The README's cron line has five time fields and a command with documented flags."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"```cron\n(?:#.*\n)*(.+)\n```", text)
    assert match
    fields = match.group(1).split(None, 5)
    assert len(fields) == 6
    assert all(re.fullmatch(r"[\d*/,-]+", f) for f in fields[:5])
    command = fields[5].split("&&")[-1].split()
    assert command[0].endswith("batchscribe") and command[1] == "run"
    _check_run_flags(command[2:])


def _check_run_flags(args: list[str]) -> None:
    from batchscribe.cli import build_parser

    ns = build_parser().parse_args(["run", *args])
    assert ns.out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_readme_systemd_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the README's unit pair (binary path pointed at ours)."""
    batchscribe = shutil.which("batchscribe") or "/bin/true"
    for name in ("batchscribe-nightly.service", "batchscribe-nightly.timer"):
        text = _readme_block(f"/etc/systemd/system/{name}")
        text = text.replace("/srv/batchscribe/.venv/bin/batchscribe", batchscribe)
        text = text.replace("User=batchscribe\n", "")
        (tmp_path / name).write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "batchscribe-nightly.timer"),
         str(tmp_path / "batchscribe-nightly.service")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_rerun_of_failed_items_keeps_their_own_pulse_parameters(
    tmp_path, emulator, run_cli
) -> None:
    """An item's own manifest parameters (language, diarize) survive failed -> run."""
    emu = emulator()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"id": "berlin", "path": "later.wav", "language": "de", "diarize": true}\n'
    )
    out = tmp_path / "r.jsonl"
    assert _run_dir(run_cli, emu, manifest, out).returncode == 1  # the file is not there yet
    items, _ = read_results(out)
    assert items[0]["params"] == {"language": "de", "diarize": True}
    again = run_cli("failed", out)
    assert again.returncode == 0, again.stderr
    rerun = tmp_path / "again.jsonl"
    rerun.write_text(again.stdout)
    make_wav(tmp_path / "later.wav", freq=500)
    proc = _run_dir(run_cli, emu, rerun, out, "--retry-failed")
    assert proc.returncode == 0, proc.stderr
    items, _ = read_results(out)
    assert items[-1]["status"] == "ok"
    assert emu.stats()["by_language"] == {"de": 1}  # Pulse answers do not echo the language
    assert items[-1]["utterances"][0]["speaker"] is not None


def test_resume_counts_with_done_failed_new_and_bad_lines_interleaved(
    tmp_path, emulator, make_archive, run_cli
) -> None:
    """Skips counted in the reader, bad lines and items to send, interleaved, all add up."""
    emu = emulator()
    archive = make_archive(tmp_path, 10)
    out = tmp_path / "r.jsonl"
    with out.open("wb") as handle:
        for i, item_id in enumerate(archive.ids):
            if i % 3 == 0:
                handle.write(orjson.dumps({"id": item_id, "status": "ok"}) + b"\n")
            elif i % 3 == 1:
                handle.write(orjson.dumps({"id": item_id, "status": "failed"}) + b"\n")
    lines = archive.manifest.read_bytes().splitlines(keepends=True)
    mixed = b"".join(line + (b"{bad\n" if n % 4 == 0 else b"") for n, line in enumerate(lines))
    archive.manifest.write_bytes(mixed)
    proc = _run_dir(run_cli, emu, archive.manifest, out)
    assert proc.returncode == 1  # bad lines, and failed items left alone
    assert "skipped (done earlier): 4  skipped (failed earlier): 3  invalid lines: 3" in proc.stdout
    assert emu.stats()["requests"] == 3  # the items never recorded
    proc = _run_dir(run_cli, emu, archive.manifest, out, "--retry-failed")
    assert "skipped (done earlier): 7  skipped (failed earlier): 0  invalid lines: 3" in proc.stdout
    assert emu.stats()["requests"] == 6


# --------------------------------------------------------------------------- presigned URLs

_SIGNING_KEY = b"loopback-bucket-secret"


def _presign(base: str, path: str) -> str:
    """A presigned-looking GET URL for ``path`` (SigV4 query shape; HMAC of the path)."""
    signature = hmac.new(_SIGNING_KEY, path.encode(), hashlib.sha256).hexdigest()
    return (f"{base}{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIALOOPBACK"
            f"%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Expires=3600"
            f"&X-Amz-Signature={signature}")  # fmt: skip


class _Bucket(BaseHTTPRequestHandler):
    """A loopback bucket: GET of a presigned URL gives the audio when its signature is right
    (403 otherwise), 503 while the bucket is down."""

    def do_GET(self) -> None:
        server: _Servers = self.server  # type: ignore[assignment]
        parts = urlsplit(self.path)
        signature = dict(parse_qsl(parts.query)).get("X-Amz-Signature", "")
        want = hmac.new(_SIGNING_KEY, parts.path.encode(), hashlib.sha256).hexdigest()
        server.fetched.append(self.path)
        if server.down:
            self._answer(503, b"slow down")
        elif not hmac.compare_digest(signature, want) or parts.path not in server.audio:
            self._answer(403, b"SignatureDoesNotMatch")
        else:
            self._answer(200, server.audio[parts.path])

    def do_POST(self) -> None:
        """The service's side of URL input: fetch the URL, then transcribe what came back
        (forwarded to the real emulator); a URL it cannot fetch is a 400, as the API says."""
        server: _Servers = self.server  # type: ignore[assignment]
        url = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))["url"]
        try:
            with urlopen(url, timeout=10) as answer:
                audio = answer.read()
        except HTTPError as exc:
            body = orjson.dumps({"error": f"cannot fetch the url: HTTP {exc.code}"})
            self._answer(400, body)
            return
        query = urlsplit(self.path).query
        headers = {"Authorization": self.headers["Authorization"], "Content-Type": "audio/wav"}
        forward = Request(f"{server.emulator}?{query}", data=audio, headers=headers)
        try:
            with urlopen(forward, timeout=10) as answer:
                self._answer(answer.status, answer.read())
        except HTTPError as exc:
            self._answer(exc.code, exc.read())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Servers(ThreadingHTTPServer):
    def __init__(self, emulator: str) -> None:
        super().__init__(("127.0.0.1", 0), _Bucket)
        self.emulator = emulator
        self.down = True
        self.audio: dict[str, bytes] = {}
        self.fetched: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def bucket(emulator):
    """A loopback bucket and URL-fetching service in front of the real emulator."""
    emu = emulator()
    server = _Servers(emu.endpoint())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, emu
    server.shutdown()
    server.server_close()


def test_documented_rerun_of_failed_presigned_urls_sends_the_real_url(tmp_path, bucket) -> None:
    """`failed r > again && run again --out r --retry-failed` re-sends each presigned URL whole,
    under its own id, and supersedes the failed records; no terminal line shows a signature."""
    server, emu = bucket
    server.audio = {"/tapes/a.wav": wav_bytes(freq=410), "/tapes/b.wav": wav_bytes(freq=420)}
    urls = {p: _presign(server.base, p) for p in server.audio}
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(
        orjson.dumps({"id": "interview", "url": urls["/tapes/a.wav"], "speaker": "Ada"}) + b"\n"
        + orjson.dumps({"url": urls["/tapes/b.wav"]}) + b"\n"  # its id is the URL
    )  # fmt: skip
    env = cli_env()
    py = f"{shlex.quote(sys.executable)} -m batchscribe"
    endpoint = f"{server.base}/api/v1/pulse/get_text"
    first = subprocess.run(
        [sys.executable, "-m", "batchscribe", "run", str(manifest), "--out", "r.jsonl",
         "--endpoint", endpoint, "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert first.returncode == 1, first.stderr  # the bucket was down: both failed
    server.down = False
    documented = (
        f"{py} failed r.jsonl > again.jsonl && "
        f"{py} run again.jsonl --out r.jsonl --retry-failed --endpoint {shlex.quote(endpoint)}"
    )
    rerun = subprocess.run(
        ["sh", "-c", documented], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    again = [orjson.loads(x) for x in (tmp_path / "again.jsonl").read_bytes().splitlines()]
    assert sorted(again, key=lambda entry: entry["id"]) == [  # (in the order they finished)
        {"id": urls["/tapes/b.wav"], "url": urls["/tapes/b.wav"]},
        {"id": "interview", "url": urls["/tapes/a.wav"], "speaker": "Ada"},
    ]
    items, _ = read_results(tmp_path / "r.jsonl")
    final = {r["id"]: r for r in items}  # the last record of each id
    assert sorted(final) == sorted(["interview", urls["/tapes/b.wav"]])  # no new id
    for item_id, path in [("interview", "/tapes/a.wav"), (urls["/tapes/b.wav"], "/tapes/b.wav")]:
        assert final[item_id]["status"] == "ok", final[item_id]
        assert final[item_id]["transcription"] == transcript_for(server.audio[path])
    assert final["interview"]["metadata"] == {"speaker": "Ada"}
    assert not any("***" in path for path in server.fetched)
    assert emu.stats()["requests"] == 2  # each transcribed once, by the rerun
    for text in (first.stdout, first.stderr, rerun.stdout, rerun.stderr):
        assert "X-Amz-Signature=***" in text or "X-Amz-Signature" not in text
        assert not re.search(r"X-Amz-Signature=[0-9a-f]", text)


def test_failed_on_a_terminal_hides_signatures_and_says_so(tmp_path) -> None:
    """On a terminal `failed` shows a presigned URL without its signature (and says how to get
    a usable manifest); into a file or a pipe it writes the URL whole."""
    url = _presign("https://bucket.s3.amazonaws.com", "/tapes/a.wav")
    results = tmp_path / "r.jsonl"
    results.write_bytes(orjson.dumps({"id": "a", "status": "failed", "source": url,
                                      "error": "HTTP 503", "cause": "5xx"}) + b"\n")  # fmt: skip
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "batchscribe", "failed", str(results)], cwd=tmp_path,
            env=cli_env(), stdout=follower, stderr=subprocess.PIPE, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert proc.returncode == 0, proc.stderr
    assert b"X-Amz-Signature=***" in shown and b"X-Amz-Credential=***" in shown
    assert "redirect the list to a file" in proc.stderr
    piped = subprocess.run(
        [sys.executable, "-m", "batchscribe", "failed", str(results)], cwd=tmp_path,
        env=cli_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert [orjson.loads(x)["url"] for x in piped.stdout.splitlines()] == [url]
    assert "X-Amz-Signature" not in piped.stderr
