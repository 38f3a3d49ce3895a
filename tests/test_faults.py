"""Faults around a run: the service unreachable, stalled answers, a full disk, I/O and fsync
errors, unreadable, vanishing and changing audio, odd directory entries.

Runs are the real CLI against the real emulator; faults are real where this machine can make
them (a stopped listener, a tmpfs that fills up, a file with its read permission gone for a
process without CAP_DAC_OVERRIDE) and injected in-process only where it cannot (EIO, fsync).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from audio_fixtures import make_wav, wav_bytes
from conftest import REPO, TEST_KEY, cli_env, complete_lines, read_results, wait_until

from batchscribe.emulator import FaultRates, content_key
from batchscribe.errors import RunAborted
from batchscribe.results import ResultsStore
from batchscribe.run.engine import run_batch
from batchscribe.run.options import RunOptions


def by_id(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each id."""
    return {r["id"]: r for r in items}


# --------------------------------------------------------------------------- unreachable


def test_unreachable_for_the_whole_run_fails_items_with_a_clear_cause(
    tmp_path, emulator, make_archive, run_cli
):
    """Connection refused throughout: --max-attempts tries, failed (network), then retryable."""
    emu = emulator()
    emu.stop_listening()
    archive = make_archive(tmp_path, 4)
    out = tmp_path / "r.jsonl"
    log = tmp_path / "run.log"
    args = ("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", 4)
    started = time.monotonic()
    proc = run_cli(*args, "--max-attempts", 3, "--log-file", log, timeout=60)
    assert time.monotonic() - started < 20  # backoff 0.5-1 s then 1-2 s: no hang
    assert proc.returncode == 1, proc.stderr
    records = by_id(read_results(out)[0])
    assert sorted(records) == archive.ids
    for record in records.values():
        assert (record["status"], record["cause"], record["attempts"]) == ("failed", "network", 3)
        assert record["http_status"] is None
        assert f"cannot connect to 127.0.0.1:{emu.port}" in record["error"]
    assert "failed: 4 (network: 4)" in proc.stdout
    assert log.read_text().count("retrying in") == 4 * 2
    emu.start_listening()
    retry = run_cli(*args, "--retry-failed")
    assert retry.returncode == 0, retry.stderr
    last = by_id(read_results(out)[0])
    assert all(last[i]["status"] == "ok" for i in archive.ids)
    assert emu.stats()["requests"] == 4


def test_outage_mid_run_is_ridden_out(tmp_path, emulator, make_archive, spawn_cli, request):
    """A mid-run outage (seconds; a minute with --soak) is retried through: all ok, once."""
    soak = request.config.getoption("--soak")
    outage = 60.0 if soak else 3.0
    emu = emulator(latency_ms=60)
    archive = make_archive(tmp_path, 30)
    out = tmp_path / "r.jsonl"
    log = tmp_path / "run.log"
    proc = spawn_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", 2,
        "--max-attempts", 10 if soak else 8, "--log-file", log,
    )  # fmt: skip
    wait_until(lambda: complete_lines(out) >= 5, what="records before the outage")
    wait_until(lambda: emu.stats()["in_flight"] >= 1, what="a request in flight to drop")
    emu.stop_listening()
    down = time.monotonic()
    # The outage lasts a set time: that is the scenario, not a wait for something to happen.
    # Meanwhile the run is seen retrying against a refusing port.
    wait_until(lambda: "cannot connect" in log.read_text(), what="refused attempts")
    time.sleep(max(0.0, outage - (time.monotonic() - down)))
    assert proc.poll() is None, "the run gave up during the outage"
    emu.start_listening()
    _, stderr = proc.communicate(timeout=outage + 120)
    assert proc.returncode == 0, stderr
    items, _ = read_results(out)
    assert sorted(r["id"] for r in items) == archive.ids
    for record in items:
        assert record["status"] == "ok"
        assert record["transcription"] == archive.transcript(record["id"])
    assert any(r["attempts"] > 1 for r in items)
    assert emu.stats()["early_retries"] == 0


# --------------------------------------------------------------------------- stalls


def _draw(seed: int, body: bytes, n: int) -> float:
    """The emulator's fault draw for the n-th request carrying ``body`` (see its module doc:
    a function of seed, content and n). The test checks the emulator's stall count, so a
    change there fails loudly instead of letting this test pass idly."""
    key = hashlib.sha256(body).hexdigest()
    roll = hashlib.blake2b(f"{seed}:{key}:{n}".encode(), digest_size=16).digest()
    return int.from_bytes(roll[:8], "big") / 2**64


def test_stalled_answer_times_out_and_does_not_block_the_others(
    tmp_path, emulator, make_archive, run_cli
):
    """A stalled answer times out after --timeout and never holds up the other items."""
    archive = make_archive(tmp_path, 6)
    bodies = [archive.paths[i].read_bytes() for i in archive.ids]
    # A seed under which only the first item stalls, and only on its first request.
    seed = next(
        s for s in range(100_000)
        if _draw(s, bodies[0], 0) < 0.5 <= _draw(s, bodies[0], 1)
        and all(_draw(s, b, 0) >= 0.5 for b in bodies[1:])
    )  # fmt: skip
    emu = emulator(faults=FaultRates(pstall=0.5), stall_seconds=60, latency_ms=100, seed=seed)
    out = tmp_path / "r.jsonl"
    log = tmp_path / "run.log"
    started = time.monotonic()
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", 2,
        "--timeout", 2, "--log-file", log,
    )  # fmt: skip
    assert time.monotonic() - started < 20  # not the 60 s stall
    assert proc.returncode == 0, proc.stderr
    stats = emu.stats()
    assert stats["stalls"] == 1 and stats["cancelled"] == 1
    items, _ = read_results(out)
    order = [r["id"] for r in items]
    # The stalled item (sent first) is recorded last: the others did not wait for it.
    assert order[-1] == "clip-000" and sorted(order) == archive.ids
    assert by_id(items)["clip-000"]["attempts"] == 2
    assert "no response within 2 s" in log.read_text()


# --------------------------------------------------------------------------- disk full, EIO


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Any:
    """A 256 KiB tmpfs (unmounted at teardown); skipped where mounting is not allowed."""
    where = tmp_path / "small"
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def _notes_manifest(tmp_path: Path, n: int, note_bytes: int) -> tuple[Path, list[str]]:
    """n distinct WAVs and a manifest giving each a ``note_bytes`` long metadata field."""
    ids, lines = [], []
    for i in range(n):
        item_id = f"n-{i:02d}"
        make_wav(tmp_path / "audio" / f"{item_id}.wav", seconds=0.05, freq=500 + 11 * i)
        ids.append(item_id)
        note = f"{i}" * note_bytes
        lines.append(orjson.dumps({"id": item_id, "path": f"audio/{item_id}.wav", "note": note}))
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    return manifest, ids


def test_disk_full_stops_with_exit_3_and_the_next_run_recovers(
    tmp_path, emulator, run_cli, small_tmpfs
):
    """Disk full: one line naming the file, exit 3, earlier records kept; the rerun recovers."""
    emu = emulator()
    manifest, ids = _notes_manifest(tmp_path, 24, 20_000)  # ~20 KB records: ~480 KB in all
    out = small_tmpfs / "r.jsonl"
    earlier = b'{"id":"from-an-earlier-run","status":"ok"}\n'
    out.write_bytes(earlier)
    args = ("run", manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", 2)
    proc = run_cli(*args)
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "No space left on device" in line]
    assert lines and all(str(out) in line for line in lines), proc.stderr
    assert "Traceback" not in proc.stderr
    data = out.read_bytes()
    assert data.startswith(earlier)
    body = data[: data.rfind(b"\n") + 1]
    written = [orjson.loads(line) for line in body.splitlines()]  # all complete lines parse
    assert 1 < len(written) < 25
    # Free space: move the results to a roomy disk (what an operator would do), and resume.
    roomy = tmp_path / "r.jsonl"
    shutil.copyfile(out, roomy)
    rerun = run_cli("run", manifest, "--out", roomy, "--endpoint", emu.endpoint(), "-j", 2)
    assert rerun.returncode == 0, rerun.stderr
    after = roomy.read_bytes()
    assert after.startswith(body)
    items, _ = read_results(roomy)  # no partial line is left anywhere
    assert sorted(r["id"] for r in items) == sorted([*ids, "from-an-earlier-run"])
    assert len(items) == len(ids) + 1


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_results_file_deleted_or_replaced_mid_run_stops_with_exit_3(
    tmp_path, emulator, make_archive, spawn_cli, run_cli, how
):
    """The results file deleted or replaced under a run: the run stops within about a second
    (exit 3, one line naming the path) instead of writing on into a file no one can read."""
    emu = emulator(latency_ms=100)
    archive = make_archive(tmp_path, 40)
    out = tmp_path / "r.jsonl"
    args = ("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", 2)
    proc = spawn_cli(*args)
    wait_until(lambda: complete_lines(out) >= 2, what="two records")
    if how == "deleted":
        out.unlink()
    else:
        (tmp_path / "other.jsonl").write_bytes(b'{"id":"someone-elses","status":"ok"}\n')
        os.replace(tmp_path / "other.jsonl", out)
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 3, stderr
    assert time.monotonic() - started < 5
    lines = [line for line in stderr.splitlines() if "was deleted or replaced" in line]
    assert lines and all(str(out) in line for line in lines), stderr
    assert "Traceback" not in stderr
    assert emu.stats()["requests"] < 40, "the run went on to the end"
    if how == "replaced":  # the file now at the path is left as it is
        assert out.read_bytes() == b'{"id":"someone-elses","status":"ok"}\n'
    # A rerun into the path (now free) sends what the lost file held: nothing is skipped.
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    items, _ = read_results(out)
    assert {r["id"] for r in items if r["status"] == "ok"} >= set(archive.ids)


_INJECT = """
import errno, os, sys
target = os.path.realpath(sys.argv[1]); after = int(sys.argv[2]); kind = sys.argv[3]
real_write, real_fsync, state = os.write, os.fsync, {"writes": 0}
def ours(fd):
    try:
        return os.path.realpath(f"/proc/self/fd/{fd}") == target
    except OSError:
        return False
def write(fd, data):
    if kind == "write" and ours(fd):
        state["writes"] += 1
        if state["writes"] > after:
            if state["writes"] == after + 1 and len(data) > 1:
                return real_write(fd, bytes(data)[: len(data) // 2])  # a short write first
            raise OSError(errno.EIO, os.strerror(errno.EIO))
    return real_write(fd, data)
def fsync(fd):
    if kind == "fsync" and ours(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    return real_fsync(fd)
os.write, os.fsync = write, fsync
from batchscribe.cli import main
raise SystemExit(main(sys.argv[4:]))
"""


@pytest.mark.parametrize("kind", ["write", "fsync"])
def test_io_error_on_the_results_file_stops_cleanly(tmp_path, emulator, make_archive, kind):
    """EIO on write or fsync: one line naming the file, exit 3; the next run repairs, finishes."""
    emu = emulator()
    archive = make_archive(tmp_path, 12)
    out = tmp_path / "r.jsonl"
    out.touch()
    script = tmp_path / "inject.py"
    script.write_text(_INJECT)
    run_args = ["run", str(archive.manifest), "--out", str(out), "--endpoint", emu.endpoint()]
    proc = subprocess.run(
        [sys.executable, str(script), str(out), "3", kind, *run_args, "-j", "1"],
        env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "Input/output error" in line]
    assert errors and all(str(out) in line for line in errors), proc.stderr
    data = out.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    for line in complete.splitlines():
        orjson.loads(line)
    if kind == "write":
        assert len(complete.splitlines()) == 3 and data != complete  # the short write is torn
    rerun = subprocess.run(
        [sys.executable, "-m", "batchscribe", *run_args],
        env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert out.read_bytes().startswith(complete)
    items, _ = read_results(out)
    assert sorted(r["id"] for r in items) == archive.ids


@pytest.mark.parametrize("when", ["sync", "check_path"])
def test_store_notices_its_file_deleted_at_sync_and_at_the_end(tmp_path, when):
    """A results file deleted under the store: sync (each tick) and check_path (the run's end)
    raise RunAborted naming the path, later appends are refused, close releases the lock."""
    path = tmp_path / "r.jsonl"
    store = ResultsStore(str(path))
    store.open()
    store.sync()  # nothing changed: no complaint
    store.append({"id": "a", "status": "ok"})
    path.unlink()
    with pytest.raises(RunAborted, match=f"{path}: the results file was deleted or replaced"):
        store.sync() if when == "sync" else store.check_path()
    with pytest.raises(RunAborted):
        store.append({"id": "b", "status": "ok"})
    store.close()  # releases the lock, raises nothing more
    again = ResultsStore(str(path))
    again.open()  # the path is free for the next run
    again.close()


def test_failed_fsync_is_never_taken_as_success(tmp_path, monkeypatch):
    """After a failed fsync the store never fsyncs again nor reports a later sync as durable."""
    path = tmp_path / "r.jsonl"
    store = ResultsStore(str(path))
    store.open()
    store.append({"id": "a", "status": "ok"})
    calls: list[int] = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(RunAborted, match=str(path)):
        store.sync()
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))  # the disk "recovers"
    with pytest.raises(RunAborted, match="sync"):
        store.sync()
    with pytest.raises(RunAborted):
        store.append({"id": "b", "status": "ok"})
    store.close()  # releases the lock without claiming the data is safe
    assert len(calls) == 1, "a failed fsync was retried"
    assert path.read_bytes() == b'{"id":"a","status":"ok"}\n'


def test_failed_write_stops_further_appends(tmp_path, monkeypatch):
    """A write that fails part-way poisons the store: nothing is appended after a partial line."""
    path = tmp_path / "r.jsonl"
    store = ResultsStore(str(path))
    store.open()
    real_write = os.write
    state = {"n": 0}

    def flaky(fd: int, data: bytes) -> int:
        state["n"] += 1
        if state["n"] == 1:
            return real_write(fd, bytes(data)[:5])
        if state["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", flaky)
    with pytest.raises(RunAborted, match="No space left"):
        store.append({"id": "a", "status": "ok"})
    with pytest.raises(RunAborted):
        store.append({"id": "b", "status": "ok"})
    monkeypatch.setattr(os, "write", real_write)
    store.close()
    assert path.read_bytes() == b'{"id"'  # the torn start only: the next open cuts it


def test_in_process_run_reports_disk_errors_in_the_summary(
    tmp_path, emulator, make_archive, monkeypatch
):
    """run_batch reports a results write error as exit code 3 and summary.aborted, never raises."""
    emu = emulator()
    archive = make_archive(tmp_path, 6)
    out = tmp_path / "r.jsonl"
    real_write = os.write
    ino = {}

    def failing(fd: int, data: Any) -> int:
        if ino and os.fstat(fd).st_ino == ino["ino"]:
            raise OSError(errno.EIO, "Input/output error")
        return real_write(fd, data)

    out.touch()
    ino["ino"] = out.stat().st_ino
    monkeypatch.setattr(os, "write", failing)
    summary = run_batch(
        RunOptions(sources=[str(archive.manifest)], out=str(out), api_key=TEST_KEY,
                   endpoint=emu.endpoint(), concurrency=2)
    )  # fmt: skip
    assert summary.exit_code == 3
    assert str(out) in summary.aborted and "Input/output error" in summary.aborted
    assert out.read_bytes() == b""


# --------------------------------------------------------------------------- audio files


def _run_without_dac_override(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI as root but without CAP_DAC_OVERRIDE/READ_SEARCH: file modes bind it."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    probe = subprocess.run(
        [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "true"], check=False
    )
    if probe.returncode != 0:
        pytest.skip("cannot drop capabilities here")
    return subprocess.run(
        [setpriv, "--bounding-set", "-dac_override,-dac_read_search",
         sys.executable, "-m", "batchscribe", *args],
        env=cli_env(), cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_unreadable_missing_and_special_files_fail_without_a_request(
    tmp_path, emulator, make_archive
):
    """Unreadable, dangling and FIFO audio fail with their cause, unsent; a FIFO never blocks."""
    emu = emulator()
    archive = make_archive(tmp_path, 5)
    archive.paths["clip-001"].chmod(0o000)
    archive.paths["clip-002"].unlink()
    archive.paths["clip-002"].symlink_to(tmp_path / "nowhere.wav")
    archive.paths["clip-003"].unlink()
    os.mkfifo(archive.paths["clip-003"])
    out = tmp_path / "r.jsonl"
    proc = _run_without_dac_override(
        ["run", str(archive.manifest), "--out", str(out), "--endpoint", emu.endpoint()], tmp_path
    )
    assert proc.returncode == 1, proc.stderr
    records = by_id(read_results(out)[0])
    expected = {
        "clip-001": ("missing", "permission denied"),
        "clip-002": ("missing", "not found"),
        "clip-003": ("invalid", "not a regular file"),
    }
    for item_id, (cause, words) in expected.items():
        record = records[item_id]
        assert (record["status"], record["cause"], record["attempts"]) == ("failed", cause, 0)
        assert words in record["error"], record
    assert records["clip-000"]["status"] == records["clip-004"]["status"] == "ok"
    assert emu.stats()["requests"] == 2


def _big_wav(path: Path, megabytes: int) -> bytes:
    """A valid WAV of about ``megabytes`` MB (a header and a repeated tone), written fast."""
    tone = wav_bytes(1.0, 440)
    header, pcm = tone[:44], tone[44:]
    data = pcm * (megabytes * 1_000_000 // len(pcm))
    header = header[:4] + (36 + len(data)).to_bytes(4, "little") + header[8:40]
    body = header + len(data).to_bytes(4, "little") + data
    path.write_bytes(body)
    return body


def _upload_position(pid: int, path: Path) -> int | None:
    """How far the process has read ``path`` (from /proc), or None if it has it not open."""
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            if os.readlink(fd) == str(path):
                info = (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text()
                return int(info.split("pos:")[1].split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@pytest.mark.parametrize("change", ["truncated", "deleted"])
def test_audio_changed_while_uploading(tmp_path, emulator, spawn_cli, change):
    """Truncated mid-upload fails file_changed; deleted mid-upload is sent whole from the fd."""
    emu = emulator(max_audio_minutes=None)  # 40 MB at 8 kHz: 41 minutes, past the session
    audio = tmp_path / "long.wav"
    body = _big_wav(audio, 40)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(orjson.dumps({"id": "long", "path": str(audio)}).decode() + "\n")
    out = tmp_path / "r.jsonl"
    # Hold the emulator's event loop so it stops reading: the upload blocks part-way, with the
    # client's socket buffers full, and the file half read.
    gate = threading.Event()
    emu._loop.call_soon_threadsafe(gate.wait, 60)
    try:
        proc = spawn_cli(
            "run", manifest, "--out", out, "--endpoint", emu.endpoint(), "--max-attempts", 2,
            "--no-progress", "--max-chunk", "24h",  # sent as it is, not in chunks
        )  # fmt: skip
        position = wait_until(
            lambda: (p := _upload_position(proc.pid, audio)) and p > 0 and p,
            what="the upload to be under way",
        )  # fmt: skip
        assert position < len(body)
        if change == "truncated":
            with audio.open("r+b") as handle:
                handle.truncate(len(body) // 4)
        else:
            audio.unlink()
    finally:
        gate.set()
    _, stderr = proc.communicate(timeout=60)
    record = read_results(out)[0][-1]
    if change == "truncated":
        assert proc.returncode == 1, stderr
        assert (record["status"], record["cause"]) == ("failed", "file_changed"), record
        assert record["size"] == len(body)
        assert emu.stats()["statuses"].get("200", 0) == 0
    else:
        assert proc.returncode == 0, stderr
        assert record["status"] == "ok"
        assert emu.stats()["by_content"] == {content_key(body): 1}


def test_directory_with_odd_entries(tmp_path, emulator, run_cli):
    """A folder of odd entries (empty, fake, non-UTF-8 name, loops, FIFO) runs to a valid file."""
    emu = emulator()
    root = tmp_path / "archive"
    good = make_wav(root / "good.wav", freq=610)
    (root / "empty.wav").write_bytes(b"")
    (root / "fake.wav").write_bytes(b"plain text, not audio\n" * 10)
    (root / "notes.txt").write_text("not audio")
    (root / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    odd_name = os.fsencode(root) + b"/caf\xe9-latin1.wav"
    odd_bytes = wav_bytes(0.2, 620)
    with open(odd_name, "wb") as handle:
        handle.write(odd_bytes)
    (root / "sub").mkdir()
    (root / "sub" / "loop").symlink_to(root)
    (root / "dangling.wav").symlink_to(root / "nowhere.wav")
    os.mkfifo(root / "pipe.wav")
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", root, "--out", out, "--endpoint", emu.endpoint(), timeout=60)
    assert proc.returncode == 1, proc.stderr
    records = by_id(read_results(out)[0])  # every line parses: the odd name is valid JSON
    assert set(records) == {"good.wav", "empty.wav", "fake.wav", "caf\\xe9-latin1.wav"}
    assert records["good.wav"]["status"] == "ok"
    assert records["good.wav"]["source"] == str(good)
    assert (records["empty.wav"]["cause"], records["empty.wav"]["attempts"]) == ("invalid", 0)
    fake = records["fake.wav"]  # not audio: failed by the probe, never sent
    assert (fake["cause"], fake["attempts"]) == ("invalid", 0)
    assert fake["error"].startswith("unreadable audio: ")
    odd = records["caf\\xe9-latin1.wav"]
    assert odd["status"] == "ok"
    assert odd["source"].endswith("caf\\xe9-latin1.wav")
    assert emu.stats()["by_content"][content_key(odd_bytes)] == 1
    # A rerun resumes from those ids (the odd one included): nothing is sent again.
    emu.reset_stats()
    again = run_cli("run", root, "--out", out, "--endpoint", emu.endpoint(), "--retry-failed")
    assert emu.stats()["by_content"].get(content_key(odd_bytes), 0) == 0
    assert again.returncode == 1
