"""Resume end to end: reruns, --retry-failed, a real ``kill -9``, a torn last line, stop signals
(SIGINT, SIGTERM, SIGHUP and a real terminal hangup).

Runs are real subprocesses against a real loopback emulator; "nothing was re-sent" is read from
the emulator's per-content request counts, never inferred from the client's own account.
"""

from __future__ import annotations

import contextlib
import os
import pty
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from audio_fixtures import make_wav
from conftest import Archive, cli_env, complete_lines, read_results, wait_until

from batchscribe.emulator import content_key


@pytest.fixture
def emulator(checked_emulator: Any) -> Any:
    """The shared factory, checked at the end: no run retried before the server's delay."""
    return checked_emulator


def sent_ids(emu: Any, archive: Archive) -> set[str]:
    """The items whose bytes the emulator received since its last reset."""
    by_content = emu.stats()["by_content"]
    return {i for i, p in archive.paths.items() if by_content.get(content_key(p.read_bytes()))}


def assert_each_once_and_right(items: list[dict[str, Any]], archive: Archive) -> None:
    """Every id has exactly one record, ok, whose transcript is its own file's."""
    ids = [r["id"] for r in items]
    assert sorted(ids) == archive.ids, "lost or duplicated records"
    for record in items:
        assert record["status"] == "ok", record
        assert record["source"] == str(archive.paths[record["id"]].resolve())
        assert record["transcription"] == archive.transcript(record["id"]), record["id"]


def test_second_run_sends_nothing_and_exits_0(tmp_path, emulator, make_archive, run_cli):
    """Rerunning a finished batch sends no request, adds no item record, and exits 0."""
    emu = emulator()
    archive = make_archive(tmp_path, 5)
    out = tmp_path / "r.jsonl"
    args = ("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint())
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert emu.stats()["requests"] == 5
    before = out.read_bytes()
    emu.reset_stats()
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert emu.stats()["requests"] == 0
    assert "skipped (done earlier): 5" in second.stdout
    after = out.read_bytes()
    assert after.startswith(before)  # appended to, never rewritten
    items, runs = read_results(out)
    assert_each_once_and_right(items, archive)
    assert [r["skipped_ok"] for r in runs] == [0, 5]


def test_retry_failed_resends_only_failed_items(tmp_path, emulator, make_archive, run_cli):
    """Failed items are skipped by a plain rerun (exit 1) and re-sent with --retry-failed."""
    emu = emulator()
    archive = make_archive(tmp_path, 5)
    missing, junk = archive.paths["clip-001"], archive.paths["clip-003"]
    good_bytes = {p: p.read_bytes() for p in (missing, junk)}
    missing.unlink()
    junk.write_bytes(b"not audio, the emulator answers 400")
    out = tmp_path / "r.jsonl"
    args = ("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint())
    first = run_cli(*args)
    assert first.returncode == 1, first.stderr
    items, _ = read_results(out)
    assert {r["id"]: r["status"] for r in items} == {
        "clip-000": "ok", "clip-001": "failed", "clip-002": "ok", "clip-003": "failed",
        "clip-004": "ok",
    }  # fmt: skip
    # Fix both; a plain rerun still skips them (they failed earlier) and says so.
    for path, data in good_bytes.items():
        path.write_bytes(data)
    emu.reset_stats()
    plain = run_cli(*args)
    assert plain.returncode == 1
    assert emu.stats()["requests"] == 0
    assert "--retry-failed" in plain.stdout
    retry = run_cli(*args, "--retry-failed")
    assert retry.returncode == 0, retry.stderr
    assert sent_ids(emu, archive) == {"clip-001", "clip-003"}
    assert emu.stats()["requests"] == 2
    # The last record of each id is its state: all ok now, each transcript its own file's.
    items, _ = read_results(out)
    last = {r["id"]: r for r in items}
    assert_each_once_and_right(list(last.values()), archive)
    assert [r["id"] for r in items].count("clip-001") == 2


def test_resume_after_kill_9(tmp_path, emulator, make_archive, run_cli, spawn_cli):
    """After a real kill -9 mid-run, a rerun loses, duplicates and mixes up nothing, and does
    not re-send what was finished before the kill."""
    emu = emulator(latency_ms=200)
    archive = make_archive(tmp_path, 30)
    out = tmp_path / "r.jsonl"
    args = ("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", "3")
    proc = spawn_cli(*args)
    wait_until(lambda: complete_lines(out) >= 6, what="six records before the kill")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = out.read_bytes()
    done_before, _ = read_results(out)  # a record is one write: a kill leaves whole lines
    done_before_ids = {r["id"] for r in done_before}
    assert 6 <= len(done_before_ids) < 30, "the kill did not land mid-run"
    emu.config.latency_ms = 0
    emu.reset_stats()
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert out.read_bytes().startswith(before)
    items, runs = read_results(out)
    assert_each_once_and_right(items, archive)
    resent = sent_ids(emu, archive)
    assert not resent & done_before_ids
    assert resent == set(archive.ids) - done_before_ids
    assert emu.stats()["requests"] == 30 - len(done_before_ids)
    assert len(runs) == 1  # the killed run never got to write its summary


def test_torn_last_line_is_cut_and_nothing_before_it_touched(
    tmp_path, emulator, make_archive, run_cli
):
    """A partial last line (a kill mid-write) is cut on the next run; earlier bytes untouched."""
    emu = emulator()
    archive = make_archive(tmp_path, 5)
    first_three = tmp_path / "first.jsonl"
    first_three.write_text("".join(archive.manifest.read_text().splitlines(True)[:3]))
    out = tmp_path / "r.jsonl"
    assert run_cli("run", first_three, "--out", out, "--endpoint", emu.endpoint()).returncode == 0
    intact = out.read_bytes()
    # The torn line claims clip-003 is ok: were it kept (or scanned), clip-003 would be skipped.
    torn = b'{"id":"clip-003","status":"ok","transcription":"half a rec'
    out.write_bytes(intact + torn)
    emu.reset_stats()
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 0, proc.stderr
    assert f"cut a torn last line ({len(torn)} bytes)" in proc.stderr
    data = out.read_bytes()
    assert data.startswith(intact)
    assert torn not in data
    items, _ = read_results(out)  # every line parses
    assert_each_once_and_right(items, archive)
    assert sent_ids(emu, archive) == {"clip-003", "clip-004"}


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_signal_stops_cleanly_and_rerun_completes(
    tmp_path, emulator, make_archive, run_cli, spawn_cli, sig
):
    """SIGINT/SIGTERM/SIGHUP (a closed SSH session) mid-run: exit 130, requests in flight
    finish and are recorded, the rest is left for a rerun, which completes it."""
    emu = emulator(latency_ms=300)
    archive = make_archive(tmp_path, 20)
    out = tmp_path / "r.jsonl"
    args = ("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", "2")
    proc = spawn_cli(*args)
    wait_until(lambda: complete_lines(out) >= 2, what="two records before the signal")
    # Wait for a request to be in flight, so there is one to finish during the stop.
    wait_until(lambda: emu.stats()["in_flight"] >= 1, what="a request in flight")
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "stopping" in stderr
    assert "interrupted" in stdout
    stats = emu.stats()
    items, runs = read_results(out)
    # Every request the server received was answered and is in the results: none abandoned.
    assert stats["in_flight"] == 0
    assert stats["cancelled"] == 0
    assert stats["requests"] == len(items) >= 3
    assert len(items) < 20, "the signal did not land mid-run"
    for record in items:
        assert record["status"] == "ok"
        assert record["transcription"] == archive.transcript(record["id"])
    assert runs[-1]["interrupted"] is True and runs[-1]["exit_code"] == 130
    stopped = {r["id"] for r in items}
    emu.config.latency_ms = 0
    emu.reset_stats()
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert sent_ids(emu, archive) == set(archive.ids) - stopped
    items, _ = read_results(out)
    assert_each_once_and_right(items, archive)


def test_resume_keys_on_id_not_path(tmp_path, emulator, run_cli):
    """A rerun with new files appended to the manifest sends only the new ids."""
    emu = emulator()
    manifest = tmp_path / "m.jsonl"
    for i in range(3):
        make_wav(tmp_path / f"{i}.wav", freq=500 + i)
    lines = [orjson.dumps({"id": f"k{i}", "path": f"{i}.wav"}) + b"\n" for i in range(3)]
    manifest.write_bytes(b"".join(lines[:2]))
    out = tmp_path / "r.jsonl"
    args = ("run", manifest, "--out", out, "--endpoint", emu.endpoint())
    assert run_cli(*args).returncode == 0
    manifest.write_bytes(b"".join(lines))
    emu.reset_stats()
    assert run_cli(*args).returncode == 0
    assert emu.stats()["by_content"] == {content_key(Path(tmp_path / "2.wav").read_bytes()): 1}
    items, _ = read_results(out)
    assert sorted(r["id"] for r in items) == ["k0", "k1", "k2"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_does_not_wait_for_an_open_stdin(tmp_path, emulator, spawn_cli, sig):
    """A stop ends a ``-`` run with exit 130 while the pipe feeding stdin is still open."""
    # `slow-producer | batchscribe run -` stopped by `timeout` or systemd: the reader is blocked
    # on a pipe that may never close; the run must not wait for it.
    emu = emulator(latency_ms=200)
    make_wav(tmp_path / "a.wav")
    out = tmp_path / "r.jsonl"
    proc = spawn_cli(
        "run", "-", "--out", out, "--endpoint", emu.endpoint(), "-j", "2",
        stdin=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    # The reader hands over entries in batches (256): bad lines fill the first batch, so its
    # six items are sent while the reader waits, in its thread, for lines that never come.
    lines = [f'{{"id": "bad{i:03d}"}}\n' for i in range(250)]
    lines += [f'{{"id": "x{i}", "path": "a.wav"}}\n' for i in range(6)]
    proc.stdin.write("".join(lines))
    proc.stdin.flush()
    wait_until(lambda: emu.stats()["requests"] >= 1, what="the first request")
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=20)  # not communicate(): that would close stdin
    finally:
        proc.stdin.close()
    assert code == 130
    items, _ = read_results(out)
    assert emu.stats()["requests"] == len(items) >= 1
    assert all(r["status"] == "ok" for r in items)


def test_a_damaged_line_mid_file_is_not_done_and_every_reader_agrees(
    tmp_path, emulator, make_archive, run_cli
):
    """A record cut to its first 40 bytes in the middle of the file counts as nothing: report,
    failed, export and merge skip it with a FILE:LINE warning, and the rerun sends that item
    again (and only it), leaving every byte already written in place."""
    emu = emulator()
    archive = make_archive(tmp_path, 5)
    out = tmp_path / "r.jsonl"
    args = ("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint())
    assert run_cli(*args).returncode == 0
    lines = out.read_bytes().split(b"\n")
    victim = orjson.loads(lines[2])["id"]
    lines[2] = lines[2][:40]
    assert lines[2].startswith(b'{"id":"%s","status":"ok",' % victim.encode())
    out.write_bytes(b"\n".join(lines))
    damaged = out.read_bytes()
    warning = f"{out}:3: damaged record"

    report = run_cli("report", out, "--json")
    assert report.returncode == 0 and warning in report.stderr
    assert orjson.loads(report.stdout)["items"] == 4
    merged = tmp_path / "merged.jsonl"
    merge = run_cli("merge", out, "--out", merged)
    assert merge.returncode == 0 and warning in merge.stderr
    items, _ = read_results(merged)  # every line of the merge parses
    assert sorted(r["id"] for r in items) == sorted(set(archive.ids) - {victim})
    failed = run_cli("failed", out)
    assert failed.returncode == 0 and warning in failed.stderr and not failed.stdout.strip()
    export = run_cli("export", out, "--format", "txt", "--dir", tmp_path / "txt")
    assert export.returncode == 0 and warning in export.stderr
    assert not (tmp_path / "txt" / f"{victim}.txt").exists()

    emu.reset_stats()
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert warning in rerun.stderr
    assert sent_ids(emu, archive) == {victim}
    assert out.read_bytes().startswith(damaged)  # nothing rewritten
    report = run_cli("report", out, "--json")
    assert orjson.loads(report.stdout)["items"] == 5


@pytest.mark.skipif(shutil.which("setsid") is None, reason="needs util-linux setsid")
def test_terminal_hangup_stops_cleanly_though_the_terminal_is_gone(
    tmp_path, emulator, make_archive
):
    """The run's terminal hung up (a closed SSH session): exit 130, answers in flight recorded,
    a run record written, though every later write to the terminal fails (EIO)."""
    emu = emulator(latency_ms=300)
    archive = make_archive(tmp_path, 20)
    out = tmp_path / "r.jsonl"
    master, slave = pty.openpty()
    # setsid -c: a new session whose controlling terminal is the pty, as a login shell's child
    # has; closing the master is then a real hangup: SIGHUP, and EIO on every later write.
    proc = subprocess.Popen(
        ["setsid", "-c", *_cli_argv(
            "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", "2"
        )],
        stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path, env=cli_env(),
    )  # fmt: skip
    os.close(slave)
    os.set_blocking(master, False)
    try:
        # Drain what the run prints (its progress bar) while waiting, so it never blocks on
        # a full terminal; no reader thread, whose pending read would keep the pty open.
        wait_until(lambda: _drain(master) or complete_lines(out) >= 2, what="two records")
        wait_until(lambda: _drain(master) or emu.stats()["in_flight"] >= 1, what="in flight")
    finally:
        os.close(master)
    assert proc.wait(timeout=30) == 130
    stats = emu.stats()
    items, runs = read_results(out)
    assert stats["in_flight"] == 0 and stats["cancelled"] == 0
    assert stats["requests"] == len(items) >= 3
    assert len(items) < 20, "the hangup did not land mid-run"
    assert all(r["status"] == "ok" for r in items)
    assert runs and runs[-1]["interrupted"] is True and runs[-1]["exit_code"] == 130


def _cli_argv(*args: Any) -> list[str]:
    return [sys.executable, "-m", "batchscribe", *map(str, args)]


def _drain(fd: int) -> None:
    """Read (and drop) what the run has printed to its terminal so far."""
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 65536):
            pass


def test_dry_run_names_a_damaged_line_as_the_run_does(tmp_path, emulator, make_archive, run_cli):
    """--dry-run warns of a damaged results line with the run's words and counts its item as
    to send, as the run will."""
    emu = emulator()
    archive = make_archive(tmp_path, 3)
    out = tmp_path / "r.jsonl"
    assert (
        run_cli("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint()).returncode == 0
    )
    lines = out.read_bytes().split(b"\n")
    lines[1] = lines[1][:-5]  # the record's closing bytes gone, its newline kept
    out.write_bytes(b"\n".join(lines))
    dry = run_cli("run", archive.manifest, "--out", out, "--dry-run")
    assert f"{out}:2: damaged record (not counted)" in dry.stderr
    assert "to send: 1 (new: 1" in dry.stdout
