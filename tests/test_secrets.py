"""The API key never leaks: not in stdout, stderr, text or JSON logs, debug tracebacks,
results, exports or --dry-run output, whatever goes wrong, even when a server echoes it back.

Every run here hits error paths on purpose; every byte each one produces is searched for any
12-character piece of the key (a prefix cut from a header is a leak too).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, TEST_KEY, cli_env, read_results

from batchscribe.emulator import FaultRates

WINDOW = 12


def leaks(data: str | bytes, key: str = TEST_KEY) -> list[str]:
    """Every ``WINDOW``-character piece of ``key`` found in ``data``."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return [
        key[i : i + WINDOW] for i in range(len(key) - WINDOW + 1) if key[i : i + WINDOW] in text
    ]


class Outputs:
    """Everything the runs of a test produced: process streams and files written."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str | bytes]] = []

    def add(self, what: str, data: str | bytes) -> None:
        self.texts.append((what, data))

    def add_tree(self, root: Path) -> None:
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix not in (".wav", ".key"):
                self.add(str(path), path.read_bytes())

    def assert_clean(self) -> None:
        found = {what: leaks(data) for what, data in self.texts if leaks(data)}
        assert not found, f"the key leaked into: {found}"
        assert len(self.texts) > 0


def run(args: list[Any], cwd: Path, out: Outputs, env: dict[str, str | None] | None = None,
        argv0: list[str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run the CLI (or ``argv0``) and keep its stdout and stderr in ``out``."""
    proc = subprocess.run(
        [*(argv0 or [sys.executable, "-m", "batchscribe"]), *map(str, args)],
        env=cli_env({"BATCHSCRIBE_DEBUG": "1", **(env or {})}), cwd=cwd,
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    out.add(f"stdout of {args[:2]}", proc.stdout)
    out.add(f"stderr of {args[:2]}", proc.stderr)
    return proc


# --------------------------------------------------------------------------- an echoing server


class _Echo(BaseHTTPRequestHandler):
    """A misbehaving server that puts the Authorization header it got into its answers, as
    some proxies and error pages do. The path picks the answer: /400, /500, /401, /200."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization", "")
        status = int(self.path.split("?")[0].strip("/"))
        if status == 200:
            body = {
                "status": "success", "transcription": f"you said {auth}", "words": [],
                "utterances": [], "request_id": auth, "echo": {"authorization": auth},
                "metadata": {"duration": 1.0, "note": auth},
            }  # fmt: skip
        else:
            body = {"error": f"bad request headers: Authorization: {auth}", "details": auth}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Echo", auth)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (the run aborted on a 401) is not news


@pytest.fixture
def echo_server() -> Iterator[str]:
    """The base URL of an :class:`_Echo` server on loopback."""
    server = _QuietServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", [200, 400, 500, 401])
def test_key_echoed_by_the_server_is_not_recorded_or_printed(
    tmp_path, make_archive, echo_server, status
):
    """A key echoed back by a server reaches no results, log, export or terminal line."""
    archive = make_archive(tmp_path, 2)
    out = Outputs()
    results = tmp_path / "r.jsonl"
    proc = run(
        ["run", archive.manifest, "--out", results, "--endpoint", f"{echo_server}/{status}",
         "--max-attempts", 2, "--log-file", tmp_path / "run.log", "--log-format", "json"],
        tmp_path, out,
    )  # fmt: skip
    assert proc.returncode == {200: 0, 400: 1, 500: 1, 401: 3}[status], proc.stderr
    items, _ = read_results(results)
    if status == 200:
        proc = run(
            ["export", results, "--format", "json", "--dir", tmp_path / "exp"], tmp_path, out
        )
        assert proc.returncode == 0, proc.stderr
        assert len(items) == 2
    elif status != 401:
        assert all(r["error"] and "Authorization" in r["error"] for r in items)
    out.add_tree(tmp_path)
    out.assert_clean()


# --------------------------------------------------------------------------- every error path


def test_key_never_leaks_on_any_error_path(tmp_path, emulator, make_archive, request):
    """No output of a run through every error path (debug on, both log formats) holds the key."""
    archive = make_archive(tmp_path, 8)
    (tmp_path / "audio" / "clip-000.wav").unlink()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(archive.manifest.read_text() + "{bad line\n" + '{"url": "ftp://x/y"}\n')
    out = Outputs()
    emu = emulator(
        faults=FaultRates(p429=0.2, p5xx=0.2, preset=0.15, ptruncate=0.1, pstall=0.2),
        stall_seconds=5, retry_delay_s=0.1, seed=4,
    )  # fmt: skip
    common = [manifest, "--max-attempts", 3, "--timeout", 1, "-j", 8]
    proc = run(
        ["run", *common, "--out", tmp_path / "faults.jsonl", "--endpoint", emu.endpoint(),
         "--log-file", tmp_path / "faults.log", "--log-format", "json"],
        tmp_path, out,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    stats = emu.stats()
    assert stats["stalls"] and stats["resets"] and stats["rate_limited"]  # the paths were hit
    # The key rejected (exit 3), from a key file.
    key_file = tmp_path / "pulse.key"
    key_file.write_text(TEST_KEY + "\n")
    key_file.chmod(0o600)
    strict = emulator(key="sk-live-the-server-wants-this-one-0000")
    proc = run(
        ["run", *common, "--out", tmp_path / "rejected.jsonl", "--endpoint", strict.endpoint(),
         "--api-key-file", key_file, "--log-file", tmp_path / "rejected.log",
         "--log-format", "text"],
        tmp_path, out, env={"SMALLEST_API_KEY": None},
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    # Connection refused.
    strict.stop_listening()
    proc = run(
        ["run", *common, "--out", tmp_path / "refused.jsonl", "--endpoint", strict.endpoint(),
         "--log-file", tmp_path / "refused.log", "--log-format", "json", "--max-attempts", 1],
        tmp_path, out,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    # Configuration errors: an unwritable results path, a bad endpoint.
    proc = run(["run", *common, "--out", tmp_path / "no" / "such" / "dir.jsonl",
                "--endpoint", emu.endpoint()], tmp_path, out)  # fmt: skip
    assert proc.returncode == 2
    proc = run(["run", *common, "--out", tmp_path / "x.jsonl", "--endpoint", "ftp://nowhere"],
               tmp_path, out)  # fmt: skip
    assert proc.returncode == 2
    # A dry run, and exports of what the runs wrote.
    proc = run(["run", *common, "--out", tmp_path / "faults.jsonl", "--dry-run",
                "--price-per-hour", "0.36"], tmp_path, out)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    for fmt in ("txt", "srt", "json"):
        proc = run(["export", tmp_path / "faults.jsonl", "--format", fmt, "--dir",
                    tmp_path / "exports" / fmt], tmp_path, out)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    out.add_tree(tmp_path)
    out.assert_clean()


_CRASH = """
import sys
from batchscribe.run.send import Sender
def crash(self, *args, **kwargs):
    # A bug whose message carries the request's headers, as some library errors do.
    raise RuntimeError(f"unexpected state; headers were {dict(self.session.headers)!r}")
Sender.send = crash
from batchscribe.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_internal_error_traceback_with_debug_is_redacted(tmp_path, emulator, make_archive):
    """An internal error carrying the key is printed redacted, debug traceback included."""
    emu = emulator()
    archive = make_archive(tmp_path, 2)
    script = tmp_path / "crash.py"
    script.write_text(_CRASH)
    out = Outputs()
    proc = run(
        ["run", archive.manifest, "--out", tmp_path / "r.jsonl", "--endpoint", emu.endpoint(),
         "--log-file", tmp_path / "run.log"],
        REPO, out, argv0=[sys.executable, str(script)],
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" in proc.stderr and "internal error" in proc.stderr
    assert "Authorization" in proc.stderr and "***" in proc.stderr  # there, but redacted
    out.add_tree(tmp_path)
    out.assert_clean()


def test_disk_full_error_path_does_not_leak(tmp_path, emulator, make_archive):
    """A run that fills the disk (exit 3) prints and logs nothing holding the key."""
    small = tmp_path / "small"
    small.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        emu = emulator()
        archive = make_archive(tmp_path, 80, seconds=5.0)  # 5 s: ten words a record
        out = Outputs()
        proc = run(
            ["run", archive.manifest, "--out", small / "r.jsonl", "--endpoint", emu.endpoint(),
             "--log-file", tmp_path / "run.log", "--log-format", "json"],
            tmp_path, out,
        )  # fmt: skip
        assert proc.returncode == 3, proc.stderr
        assert "No space left" in proc.stderr
        out.add_tree(tmp_path)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    out.assert_clean()


@pytest.mark.parametrize(("mode", "warns"), [(0o600, False), (0o400, False), (0o640, True),
                                             (0o604, True)])  # fmt: skip
def test_key_file_readable_by_others_warns(tmp_path, emulator, make_archive, mode, warns):
    """--api-key-file readable by group or others warns with the chmod fix; 600/400 do not."""
    emu = emulator()
    archive = make_archive(tmp_path, 1)
    key_file = tmp_path / "pulse.key"
    key_file.write_text(TEST_KEY)
    key_file.chmod(mode)
    out = Outputs()
    proc = run(
        ["run", archive.manifest, "--out", tmp_path / "r.jsonl", "--endpoint", emu.endpoint(),
         "--api-key-file", key_file],
        tmp_path, out, env={"SMALLEST_API_KEY": None},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert ("readable by other users" in proc.stderr) is warns
    assert (f"chmod 600 {key_file}" in proc.stderr) is warns
    out.assert_clean()


@pytest.mark.parametrize(
    ("query", "secret"),
    [
        ("token=SEKRITTOKEN1&x=1", "SEKRITTOKEN1"),  # a token of the URL's own
        ("sv=2020-08-04&sr=b&sig=SEKRITSIG2", "SEKRITSIG2"),  # Azure SAS
        ("X-Amz-Signature=SEKRITAMZ3", "SEKRITAMZ3"),  # S3
        ("access_token=SEKRITAT4", "SEKRITAT4"),
        ("key=SEKRITKEY5", "SEKRITKEY5"),
    ],
)
def test_url_ids_with_a_token_are_hidden_in_every_output_line(
    tmp_path: Path, run_cli: Any, query: str, secret: str
) -> None:
    """A URL item whose id defaults to the URL (one the service fetches, one downloaded here
    that fails): its token, SAS signature or key never reaches stdout, stderr or the log
    file, in the retry, failure and first-transcript lines alike."""
    manifest = tmp_path / "m.jsonl"
    lines = [
        {"url": f"http://127.0.0.1:9/fetched.wav?{query}"},
        {"url": f"http://127.0.0.1:9/downloaded.wav?{query}", "model": "pulse-pro"},
    ]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    log = tmp_path / "log.jsonl"
    proc = run_cli("run", manifest, "--emulate", "--out", tmp_path / "r.jsonl", "--log-file",
                   log, "--max-attempts", "2", "--no-progress")  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "first transcript: http://127.0.0.1:9/fetched.wav?" in proc.stdout
    for text in (proc.stdout, proc.stderr, log.read_text()):
        assert secret not in text
