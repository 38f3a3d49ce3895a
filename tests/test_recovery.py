"""Results-file recovery: torn tails at every byte, kills while large records are written, and
the lock under racing starts and kill -9.

tests/test_results.py sweeps a synthetic record through the store; here the records are the
ones the real CLI writes, garbage follows the cut, and the next start is the real CLI.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from audio_fixtures import make_wav
from conftest import complete_lines, read_results, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchscribe.emulator import content_key
from batchscribe.results import ResultsStore, ResumeState

# --------------------------------------------------------------------------- helpers


def real_records(tmp_path: Path, emu: Any, make_archive: Any, run_cli: Any, n: int) -> Any:
    """An archive of ``n`` items and the item lines the real CLI wrote for them, in id order."""
    archive = make_archive(tmp_path, n)
    out = tmp_path / "seed.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 0, proc.stderr
    lines = {}
    for line in out.read_bytes().splitlines(keepends=True):
        doc = orjson.loads(line)
        if "id" in doc:
            lines[doc["id"]] = line
    return archive, [lines[i] for i in archive.ids]


def garbage(rng: random.Random, kind: str) -> bytes:
    """1 to 1024 bytes after the cut: random ones or NULs (never a newline: the tail is torn)."""
    size = rng.randint(1, 1024)
    if kind == "nul":
        return b"\x00" * size
    return rng.randbytes(size).replace(b"\n", b"\x00")


def sent_ids(emu: Any, archive: Any) -> set[str]:
    by_content = emu.stats()["by_content"]
    return {i for i, p in archive.paths.items() if by_content.get(content_key(p.read_bytes()))}


# --------------------------------------------------------------------------- truncation sweep


def test_store_keeps_exactly_the_complete_lines_at_every_cut_of_a_real_record(
    tmp_path, emulator, make_archive, run_cli, monkeypatch
):
    """A real record cut at every byte, plus garbage: the store keeps exactly the lines before."""
    emu = emulator()
    _, lines = real_records(tmp_path, emu, make_archive, run_cli, 3)
    head, last = b"".join(lines[:2]), lines[2]
    rng = random.Random(1)
    # fsync is irrelevant to what is kept, and thousands of them would dominate the time.
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    path = tmp_path / "r.jsonl"
    for cut in range(len(last)):
        tail = last[:cut] + (garbage(rng, ("random", "nul")[cut % 2]) if cut % 3 else b"")
        path.write_bytes(head + tail)
        store = ResultsStore(str(path))
        state = store.open()
        store.close()
        assert path.read_bytes() == head, cut
        assert store.repaired_bytes == len(tail)
        assert state.status(ResumeState.key("clip-002")) is None, cut
        assert state.status(ResumeState.key("clip-001")) == "ok"
        assert state.records == 2 and state.corrupt_lines == 0
    print(f"\ntruncation sweep (store): {len(last)} offsets of a {len(last)}-byte real record")


def test_cli_repairs_a_torn_record_at_sampled_offsets(tmp_path, emulator, make_archive, run_cli):
    """The CLI cuts a torn record at sampled offsets, keeps every earlier byte, resends it."""
    emu = emulator()
    archive, lines = real_records(tmp_path, emu, make_archive, run_cli, 4)
    head, last = b"".join(lines[:3]), lines[3]
    after_status = last.index(b'"ok"') + 4  # a torn line that looks like an ok record's head
    rng = random.Random(2)
    offsets = sorted({0, after_status, len(last) - 1, *rng.sample(range(len(last)), 2)})
    out = tmp_path / "r.jsonl"
    args = ("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint())
    for i, cut in enumerate(offsets):
        tail = last[:cut] + (garbage(rng, ("random", "nul")[i % 2]) if i % 3 else b"")
        out.write_bytes(head + tail)
        emu.reset_stats()
        proc = run_cli(*args)
        assert proc.returncode == 0, (cut, proc.stderr)
        if tail:
            assert f"cut a torn last line ({len(tail)} bytes)" in proc.stderr, cut
        data = out.read_bytes()
        assert data.startswith(head), cut
        assert sent_ids(emu, archive) == {"clip-003"}, cut
        items, _ = read_results(out)
        assert [r["id"] for r in items] == archive.ids, cut
    print(f"\ntruncation sweep (CLI): offsets {offsets} of {len(last)}")


#: Per test call (keyed by its emulator factory): the archive and real records, made once.
_PREPARED: dict[Any, Any] = {}


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    keep=st.lists(st.booleans(), min_size=4, max_size=4),
    cut=st.floats(min_value=0, max_value=1, exclude_max=True),
    tail=st.binary(max_size=1024),
)
def test_cli_repair_never_drops_a_complete_line(
    tmp_path_factory, emulator, make_archive, run_cli, keep, cut, tail
):
    """Property: the CLI never drops a complete line before a torn tail, nor resends its item."""
    # The examples share the fixtures: the archive and its real records are made once.
    if emulator not in _PREPARED:
        where = tmp_path_factory.mktemp("prop")
        emu = emulator()
        _PREPARED[emulator] = (where, emu, *real_records(where, emu, make_archive, run_cli, 5))
    where, emu, archive, lines = _PREPARED[emulator]
    complete = b"".join(line for line, k in zip(lines[:4], keep, strict=True) if k)
    torn = lines[4][: int(cut * len(lines[4]))] + tail.replace(b"\n", b"\x00")
    out = where / "r.jsonl"
    out.write_bytes(complete + torn)
    emu.reset_stats()
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(complete)
    kept = {i for i, k in zip(archive.ids[:4], keep, strict=True) if k}
    assert sent_ids(emu, archive) == set(archive.ids) - kept
    items, _ = read_results(out)
    assert sorted(r["id"] for r in items) == archive.ids


# --------------------------------------------------------------------------- large records


def _ends_mid_line(path: Path) -> bool:
    """Whether the file's last byte is not a newline: a record is being written right now
    (the kernel grows the file page by page while one large ``write`` copies in)."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            return size > 0 and os.pread(f.fileno(), 1, size - 1) != b"\n"
    except FileNotFoundError:
        return False


def test_kill_9_while_large_records_are_written(tmp_path, emulator, spawn_cli, run_cli):
    """kill -9 mid-write of 256 KiB+ records: lines parse but a torn last one, then repaired."""
    rng = random.Random(64)
    emu = emulator(latency_ms=100)  # a run takes a few seconds: room for every kill
    letters = bytes(range(97, 123)) * 10
    table = bytes(letters[i % len(letters)] for i in range(256))
    notes = {}
    entries = []
    for i in range(20):
        item_id = f"big-{i:02d}"
        make_wav(tmp_path / "audio" / f"{item_id}.wav", seconds=0.05, freq=300 + 7 * i)
        # Manifest fields beyond the known ones are kept in the record: a long one makes the
        # record long, whatever the transcript.
        size = rng.randint(256 * 1024, 4 << 20)
        notes[item_id] = rng.randbytes(size).translate(table).decode() + ' \u00e9\u4e2d\n"q'
        entries.append({"id": item_id, "path": f"audio/{item_id}.wav", "notes": notes[item_id]})
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    out = tmp_path / "r.jsonl"
    args = ("run", manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", 2, "--no-progress")
    kills = torn_seen = aimed = 0
    while kills < 6:
        before = complete_lines(out)
        proc = spawn_cli(*args)
        if kills % 2 == 0:
            # Aimed: kill the moment the file is seen ending mid-line (a write in progress). A
            # write lasts a millisecond or so: poll without sleeping, for a bounded time.
            deadline = time.monotonic() + 60
            while proc.poll() is None and not _ends_mid_line(out):
                assert time.monotonic() < deadline, "no write was ever seen in progress"
            aimed += 1
        else:
            step = rng.randint(1, 3)
            wait_until(
                lambda: proc.poll() is not None or complete_lines(out) >= before + step,  # noqa: B023
                what="records before the kill",
            )  # fmt: skip
            time.sleep(rng.uniform(0, 0.02))  # a random instant, not a wait for anything
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        data = out.read_bytes()
        body, _, torn = data.rpartition(b"\n")
        for line in body.split(b"\n") if body else []:
            orjson.loads(line)  # every complete line parses
        if torn:
            torn_seen += 1
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(torn)
    final = run_cli(*args, timeout=120)
    assert final.returncode == 0, final.stderr
    items, _ = read_results(out)
    assert sorted(r["id"] for r in items) == sorted(notes)
    for record in items:
        assert record["metadata"]["notes"] == notes[record["id"]]
    assert kills >= 4, "the kills did not land mid-run"
    assert torn_seen >= 1, "no kill landed mid-write: the repair of a torn record went untested"
    print(f"\nlarge records: {kills} kills ({aimed} aimed mid-write), {torn_seen} torn tails")


# --------------------------------------------------------------------------- the lock


def test_racing_starts_exactly_one_proceeds_and_kill_9_frees_the_lock_at_once(
    tmp_path, emulator, make_archive, spawn_cli, request
):
    """Racing starts: exactly one runs, the other exits 75; a kill -9 frees the lock at once."""
    emu = emulator(latency_ms=600_000)  # a holder stays in flight until it is killed
    archive = make_archive(tmp_path, 3)
    out = tmp_path / "r.jsonl"
    out.write_bytes(b'{"id":"earlier","status":"ok"}\n')
    before = out.read_bytes()
    args = ("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", 1)
    busy_seconds: list[float] = []
    trials = 100 if request.config.getoption("--soak") else 20
    for trial in range(trials):
        started = time.monotonic()
        pair = [spawn_cli(*args), spawn_cli(*args)]
        # The loser exits on its own; the winner's one request reaches the server.
        loser = wait_until(
            lambda: next((p for p in pair if p.poll() is not None), None),  # noqa: B023
            timeout=15, what="one of the two to give up",
        )  # fmt: skip
        busy_seconds.append(time.monotonic() - started)
        winner = pair[1 - pair.index(loser)]
        _, stderr = loser.communicate(timeout=10)
        assert loser.returncode == 75, stderr
        assert "another batchscribe run" in stderr
        wait_until(lambda: emu.stats()["requests"] == trial + 1, what="the winner's request")  # noqa: B023
        assert winner.poll() is None, "both runs stopped"
        winner.send_signal(signal.SIGKILL)
        winner.wait(timeout=30)
        assert out.read_bytes() == before
    stats = emu.stats()
    assert stats["requests"] == trials  # one per winner: the losers sent nothing
    # Both runs start Python at the same moment; the loser's whole life (start-up included)
    # stays short: it never waits for the lock.
    assert max(busy_seconds) < 5, busy_seconds
    print(f"\nlock: {trials} racing pairs; loser's whole run {max(busy_seconds):.2f} s at most")
