"""``batchscribe status``: running, finished and killed runs told apart by the results file's
lock; the status file's command line carries no secret."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import TEST_KEY, wait_until

from batchscribe.console import Redactor
from batchscribe.errors import ConfigError
from batchscribe.events import Summary
from batchscribe.status import (
    StatusWriter,
    format_status,
    read_status,
    redact_command,
    status_json,
    status_path,
)

TOKEN = "tok-a7c3e9f1b2d4"


def test_command_line_carries_no_secret() -> None:
    """The API key, --notify/--metrics-push/--rate-store URLs, a URL's password and token and
    presigned signatures are redacted; everything else is kept as typed."""
    argv = [
        "batchscribe", "run", "m.jsonl", "--out", "r.jsonl",
        "--notify", f"slack://T0/B0/{TOKEN}", f"--notify=json://h/{TOKEN}",
        "--metrics-push", f"https://u:{TOKEN}@push.local", "--rate-store", f"redis://:{TOKEN}@r",
        "--endpoint", f"http://127.0.0.1:9/v1/stt?key={TOKEN}",
        f"https://b.s3.amazonaws.com/a.wav?X-Amz-Signature={TOKEN}",
        f"--header={TEST_KEY}", "s3://bucket/prefix/",
    ]  # fmt: skip
    out = redact_command(argv, Redactor([TEST_KEY]))
    text = " ".join(out)
    assert TOKEN not in text and TEST_KEY not in text
    assert out[:5] == argv[:5]
    assert out[5:8] == ["--notify", "slack://***", "--notify=json://***"]
    assert out[8:10] == ["--metrics-push", "https://***"]
    assert "http://127.0.0.1:9/v1/stt?key=***" in out
    assert out[-1] == "s3://bucket/prefix/"


def _summary(**kw: Any) -> Summary:
    return Summary(**{"ok": 30, "failed": 2, "skipped_ok": 8, "concurrency": 4, **kw})


def test_document_progress_and_eta(tmp_path: Path) -> None:
    """done counts earlier runs too; the rate is this run's; the ETA is what is left at it."""
    writer = StatusWriter(str(tmp_path / "r.jsonl"), command=["batchscribe"], now=lambda: 1e9)
    doc = writer.document(_summary(total=100, learned_rate=0.5), elapsed=16.0, in_flight=3)
    assert doc["state"] == "running" and doc["pid"] == os.getpid()
    assert doc["host"] == socket.gethostname()
    assert (doc["done"], doc["total"], doc["left"]) == (40, 100, 60)
    assert doc["items_per_second"] == 2.0 and doc["eta_seconds"] == 30.0
    assert doc["learned_per_minute"] == 30.0 and doc["exit_code"] is None
    unknown = writer.document(_summary(), elapsed=16.0)
    assert unknown["total"] is None and unknown["eta_seconds"] is None
    done = writer.document(_summary(total=40, exit_code=1), elapsed=16.0, finished=True)
    assert done["state"] == "finished" and done["exit_code"] == 1


def test_idle_and_missing(tmp_path: Path) -> None:
    """A results file nobody holds and with no status is idle; a missing one is an error."""
    results = tmp_path / "r.jsonl"
    with pytest.raises(ConfigError, match="no such results file"):
        read_status(str(results))
    results.write_bytes(b"")
    report = read_status(str(results))
    assert report.state == "idle" and not report.locked
    assert format_status(report).startswith("idle:")


def test_unreadable_status_file_is_named(tmp_path: Path) -> None:
    """A damaged status file is reported in one line, not a traceback."""
    results = tmp_path / "r.jsonl"
    results.write_bytes(b"")
    Path(status_path(str(results))).write_bytes(b"{half")
    report = read_status(str(results))
    assert report.state == "idle" and report.problem is not None
    assert "unreadable status file" in format_status(report)


# A run as the store takes the lock: ResultsStore.open(), a status written, then it waits.
_HOLDER = textwrap.dedent(
    """
    import sys
    from batchscribe.events import Summary
    from batchscribe.results.store import ResultsStore
    from batchscribe.status import StatusWriter
    results, finish = sys.argv[1], sys.argv[2] == "finish"
    store = ResultsStore(results)
    store.open()
    writer = StatusWriter(results, command=sys.argv)
    summary = Summary(ok=5, failed=1, total=20, concurrency=2, exit_code=1)
    writer.write(summary, elapsed=3.0, in_flight=2)
    print("holding", flush=True)
    if finish:
        writer.write(summary, elapsed=4.0, finished=True)
        store.close()
    else:
        sys.stdin.readline()
    """
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Starts a process that takes the results file's lock the way a run does."""
    procs: list[subprocess.Popen[str]] = []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def start(results: Path, *extra: str, finish: bool = False) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(results), "finish" if finish else "hold", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "holding\n"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_running_then_killed_is_stale(
    tmp_path: Path, holder: Callable[..., subprocess.Popen[str]]
) -> None:
    """A process holding the lock is running (its pid, redacted command, progress); after
    kill -9 the same status file is reported stale."""
    results = tmp_path / "r.jsonl"
    proc = holder(results, "--notify", f"json://h/{TOKEN}")
    report = read_status(str(results))
    assert report.state == "running" and report.locked
    assert report.status is not None and report.status["pid"] == proc.pid
    text = format_status(report)
    assert f"running: pid {proc.pid} on {socket.gethostname()}" in text
    assert "6 of 20 done (30%)" in text
    assert "json://***" in text and TOKEN not in text
    doc = orjson.loads(orjson.dumps(status_json(report)))
    assert doc["state"] == "running" and doc["status"]["ok"] == 5
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    report = read_status(str(results))
    assert report.state == "stale" and not report.locked
    assert format_status(report).startswith("stale: the run (pid")


def test_finished_run(tmp_path: Path, holder: Callable[..., subprocess.Popen[str]]) -> None:
    """A run that ended and wrote its last status is finished, with its exit code."""
    results = tmp_path / "r.jsonl"
    proc = holder(results, finish=True)
    proc.wait(timeout=30)
    report = read_status(str(results))
    assert report.state == "finished" and not report.locked
    assert "with exit code 1" in format_status(report)


def test_real_run_holds_the_lock(
    tmp_path: Path, emulator: Callable[..., Any], spawn_cli: Callable[..., Any],
    run_cli: Callable[..., Any], make_archive: Callable[..., Any],
) -> None:  # fmt: skip
    """A real `batchscribe run` is seen running while it works, with its own status (never an
    earlier run's finished one), by `batchscribe status` and its --json; asking does not
    disturb it: it ends with exit 0 and its status says finished."""
    emu = emulator(latency_ms=300)
    archive = make_archive(tmp_path, 6)
    results = tmp_path / "r.jsonl"
    results.write_bytes(b"")
    old = StatusWriter(str(results), command=["old"])
    old.write(Summary(), elapsed=1.0, finished=True)
    proc = spawn_cli(
        "run", archive.manifest, "--out", results, "--endpoint", emu.endpoint(), "-j", "1",
        "--no-progress",
    )  # fmt: skip
    report = wait_until(
        lambda: (r := read_status(str(results))).locked and r, timeout=30, what="the lock"
    )
    assert report.state == "running"
    assert report.status is None or report.status["pid"] == proc.pid
    live = wait_until(
        lambda: (r := read_status(str(results))).status and r, timeout=30, what="a status"
    )
    assert live.state == "running" and live.status is not None
    assert live.status["pid"] == proc.pid and live.status["command"][:2] == ["batchscribe", "run"]
    shown = run_cli("status", results)
    assert shown.returncode == 0 and shown.stdout.startswith(f"running: pid {proc.pid}")
    assert "progress: " in shown.stdout and TEST_KEY not in shown.stdout
    doc = orjson.loads(run_cli("status", results, "--json").stdout)
    assert doc["state"] == "running" and doc["locked"] and doc["status"]["total"] in (None, 6)
    for _ in range(20):
        read_status(str(results))
    assert proc.wait(timeout=60) == 0
    done = read_status(str(results))
    assert done.state == "finished" and done.status is not None
    assert done.status["exit_code"] == 0 and done.status["ok"] == 6


def test_summary_counter_is_not_shared(tmp_path: Path) -> None:
    """The document copies counts: a later change to the summary does not alter it."""
    summary = _summary(failed_by_cause=Counter({"timeout": 2}))
    writer = StatusWriter(str(tmp_path / "r.jsonl"), command=[])
    doc = writer.document(summary, elapsed=1.0)
    summary.ok += 5
    assert doc["ok"] == 30
