"""Chaos: real runs against a hostile emulator, killed with SIGKILL at random moments, then
finished; and SIGTERM/SIGINT mid-run. Everything is checked from the outside: the results file
and what the emulator saw.

The campaign prints its figures (``pytest -s tests/test_chaos.py``); RELIABILITY.md quotes them.
``--soak`` runs the same campaign bigger (thousands of items, dozens of kills).
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from audio_fixtures import make_wav
from conftest import Archive, complete_lines, read_results, wait_until

from batchscribe.emulator import PROFILES, FaultRates, content_key, transcript_for

#: The per-request timeout the runs use and how long a stall fault hangs: a stall costs ~1 s.
TIMEOUT_S = 1.0
STALL_S = 1.5
#: The emulator refuses bodies over this with 413 (the must-fail "too large" items exceed it).
MAX_PAYLOAD = 48 * 1024
#: The hostile profile at half its rates, for the CI-sized campaign. At full rates half of all
#: requests fail and every 429 (and 503 with Retry-After) pauses the whole pool for about a
#: second, so a run crawls at ~2 items/s: right for --soak, too slow for a one-minute CI budget.
HALF_HOSTILE = FaultRates(**{k: v / 2 for k, v in vars(PROFILES["hostile"]).items()})


@dataclass
class Figures:
    """What one campaign did and saw, summed over its runs."""

    items: int = 0
    runs: int = 0
    kills: int = 0
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    early_retries: int = 0
    max_in_flight: int = 0
    lost: int = 0
    duplicate_ok: int = 0
    wrong_transcript: int = 0
    seconds: float = 0.0

    def add_run(self, stats: dict[str, Any]) -> None:
        """Fold one run's emulator stats into the totals."""
        self.runs += 1
        self.requests += stats["requests"]
        self.statuses.update(stats["statuses"])
        self.faults["429 (fault)"] += stats["rate_limited_by"]["fault"]
        self.faults["5xx"] += stats["server_errors"]
        self.faults["reset"] += stats["resets"]
        self.faults["truncated"] += stats["truncations"]
        self.faults["stall"] += stats["stalls"]
        self.early_retries += stats["early_retries"]
        self.max_in_flight = max(self.max_in_flight, stats["max_in_flight"])

    def lines(self) -> list[str]:
        """The figures as printable lines (what RELIABILITY.md records)."""
        faults = ", ".join(f"{k}: {v}" for k, v in sorted(self.faults.items()))
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return [
            f"items: {self.items}  runs: {self.runs}  kills (SIGKILL): {self.kills}  "
            f"requests: {self.requests}  wall: {self.seconds:.1f} s",
            f"faults injected: {faults}  (total {sum(self.faults.values())})",
            f"answers by status: {statuses}",
            f"records lost: {self.lost}  duplicate ok: {self.duplicate_ok}  "
            f"wrong transcript: {self.wrong_transcript}  early retries: {self.early_retries}  "
            f"max in flight: {self.max_in_flight}",
        ]


@dataclass
class Scenario:
    """An archive of good items plus items that must fail, each kind known by id."""

    archive: Archive
    manifest: Path
    junk: dict[str, Path]  # not audio: failed unread
    big: dict[str, Path]  # over MAX_PAYLOAD: 413
    gone: list[str]  # missing files: failed without a request

    @property
    def all_ids(self) -> set[str]:
        return set(self.archive.ids) | set(self.junk) | set(self.big) | set(self.gone)


def build_scenario(
    root: Path, make_archive: Any, good: int, bad_each: int, rng: random.Random
) -> Scenario:
    """``good`` distinct short WAVs and ``bad_each`` items of each must-fail kind, shuffled."""
    archive = make_archive(root, good, seconds=0.05)
    lines = archive.manifest.read_bytes().splitlines(keepends=True)
    junk: dict[str, Path] = {}
    big: dict[str, Path] = {}
    gone: list[str] = []
    for i in range(bad_each):
        path = root / "bad" / f"junk-{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"not audio at all, item {i}\n".encode() * 40)
        junk[f"junk-{i}"] = path
        big[f"big-{i}"] = make_wav(root / "bad" / f"big-{i}.wav", seconds=4.0, freq=300 + i)
        gone.append(f"gone-{i}")
    entries = [
        *({"id": k, "path": str(p)} for k, p in junk.items()),
        *({"id": k, "path": str(p)} for k, p in big.items()),
        *({"id": k, "path": str(root / "bad" / f"{k}.wav")} for k in gone),
    ]
    lines += [orjson.dumps(e) + b"\n" for e in entries]
    rng.shuffle(lines)
    manifest = root / "chaos.jsonl"
    manifest.write_bytes(b"".join(lines))
    assert all(p.stat().st_size > MAX_PAYLOAD for p in big.values())
    return Scenario(archive, manifest, junk, big, gone)


def check_run_invariants(stats: dict[str, Any], scenario: Scenario, concurrency: int) -> None:
    """What must hold for every run, killed or not, as the emulator saw it."""
    assert stats["early_retries"] == 0, stats["early_retry_examples"]
    assert stats["max_in_flight"] <= concurrency
    by_content = stats["by_content"]
    for item_id, path in scenario.junk.items():
        assert by_content.get(content_key(path.read_bytes()), 0) <= 1, item_id
    assert stats["statuses"].get("413", 0) <= len(scenario.big)


def check_final_results(out: Path, scenario: Scenario, figures: Figures, final: str = "") -> None:
    """The results file after the last run: whole, complete, unduplicated, each item its own."""
    items, _ = read_results(out)  # every line parses; the file ends with a newline
    last: dict[str, dict[str, Any]] = {}
    ok_count: Counter[str] = Counter()
    for record in items:
        last[record["id"]] = record
        if record["status"] == "ok":
            ok_count[record["id"]] += 1
            path = scenario.archive.paths[record["id"]]
            if record["transcription"] != transcript_for(path.read_bytes()):
                figures.wrong_transcript += 1
    figures.lost = len(scenario.all_ids - set(last))
    figures.duplicate_ok = sum(n - 1 for n in ok_count.values() if n > 1)
    assert set(last) == scenario.all_ids, f"records lost or foreign ids; last run said:\n{final}"
    assert figures.duplicate_ok == 0, [i for i, n in ok_count.items() if n > 1]
    assert figures.wrong_transcript == 0
    for item_id in scenario.archive.ids:
        assert last[item_id]["status"] == "ok", last[item_id]
    for item_id in scenario.junk:
        record = last[item_id]
        # (not audio: the run's probe fails it, without a request)
        assert (record["status"], record["http_status"], record["cause"]) == (
            "failed",
            None,
            "invalid",
        )
        assert record["attempts"] == 0
    for item_id in scenario.big:
        record = last[item_id]
        assert (record["status"], record["cause"]) == ("failed", "too_large"), record
        assert record["http_status"] == 413 and record["attempts"] == 1
    for item_id in scenario.gone:
        record = last[item_id]
        assert (record["status"], record["cause"], record["attempts"]) == ("failed", "missing", 0)


def run_campaign(
    tmp_path: Path,
    emulator: Any,
    make_archive: Any,
    spawn_cli: Any,
    *,
    good: int,
    kills: int,
    seed: int,
    faults: FaultRates,
    concurrency: int = 8,
) -> Figures:
    """Run, SIGKILL at random moments ``kills`` times, then let a final run finish; check
    every run's invariants and the final results. Returns the figures."""
    started = time.monotonic()
    rng = random.Random(seed)
    scenario = build_scenario(tmp_path, make_archive, good, bad_each=3, rng=rng)
    emu = emulator(
        faults=faults, stall_seconds=STALL_S, retry_delay_s=0.2, max_payload=MAX_PAYLOAD,
        latency_ms=20, jitter_ms=15, seed=seed,  # answers overlap, so the --concurrency cap bites
    )  # fmt: skip
    out = tmp_path / "results.jsonl"
    args = (
        "run", scenario.manifest, "--out", out, "--endpoint", emu.endpoint(),
        "--concurrency", concurrency, "--max-attempts", 12, "--timeout", TIMEOUT_S,
        "--retry-failed", "--no-progress",
    )  # fmt: skip
    figures = Figures(items=len(scenario.all_ids))
    total = len(scenario.all_ids)
    while True:
        emu.reset_stats()
        proc = spawn_cli(*args)
        kill = figures.kills < kills
        if kill:
            # A random point in the run: after a random number of new records, plus a random
            # fraction of a record's time, so the kill lands anywhere, mid-write included.
            before = complete_lines(out)
            left = max(1, total - before)
            step = rng.randint(1, max(1, 2 * left // (kills - figures.kills + 1)))
            wait_until(
                lambda: proc.poll() is not None or complete_lines(out) >= before + step,  # noqa: B023
                timeout=120, what="progress before the kill",
            )  # fmt: skip
            time.sleep(rng.uniform(0, 0.05))
        if kill and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            figures.kills += 1
            # Requests of the killed run end at the server when their sockets close.
            wait_until(lambda: emu.stats()["in_flight"] == 0, what="the killed run's requests")
        else:
            stdout, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 1, stderr  # the must-fail items failed
            stats = emu.stats()
            figures.add_run(stats)
            check_run_invariants(stats, scenario, concurrency)
            break
        stats = emu.stats()
        figures.add_run(stats)
        check_run_invariants(stats, scenario, concurrency)
    check_final_results(out, scenario, figures, stdout + stderr[-3000:])
    figures.seconds = time.monotonic() - started
    return figures


def print_figures(title: str, figures: Figures) -> None:
    print(f"\n== {title} ==")
    for line in figures.lines():
        print(line)


@pytest.mark.timeout(300)  # ~30 s alone; a loaded 2-core machine has taken over 120 s
def test_kill_9_at_random_moments_under_hostile_faults_loses_nothing(
    tmp_path, emulator, make_archive, spawn_cli
):
    """Random SIGKILLs under every fault: nothing lost, duplicated, mixed up or retried early."""
    figures = run_campaign(
        tmp_path, emulator, make_archive, spawn_cli, good=200, kills=6, seed=20261125,
        faults=HALF_HOSTILE,
    )  # fmt: skip
    print_figures("chaos (default)", figures)
    assert figures.kills >= 4, "the kills did not land mid-run"
    assert figures.max_in_flight > 4, "requests never overlapped: the cap was not exercised"
    for kind in ("429 (fault)", "5xx", "reset", "truncated", "stall"):
        assert figures.faults[kind] >= 1, f"no {kind} fault was injected: {figures.faults}"


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_soak_kill_9_thousands_of_items(tmp_path, emulator, make_archive, spawn_cli):
    """The chaos campaign at soak size: thousands of items, dozens of kills."""
    figures = run_campaign(
        tmp_path, emulator, make_archive, spawn_cli, good=2000, kills=40, seed=7_2026,
        faults=PROFILES["hostile"], concurrency=16,
    )  # fmt: skip
    print_figures("chaos (soak)", figures)
    assert figures.kills >= 30


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_under_faults_exits_130_and_resumes(
    tmp_path, emulator, make_archive, spawn_cli, run_cli, sig
):
    """SIGTERM/SIGINT under faults: exit 130 at once, nothing abandoned or failed, resumable."""
    archive = make_archive(tmp_path, 40, seconds=0.05)
    emu = emulator(
        faults=HALF_HOSTILE, stall_seconds=STALL_S, retry_delay_s=0.2, latency_ms=40, seed=5
    )
    out = tmp_path / "r.jsonl"
    args = (
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", 8,
        "--max-attempts", 12, "--timeout", TIMEOUT_S, "--no-progress",
    )  # fmt: skip
    proc = spawn_cli(*args)
    wait_until(lambda: complete_lines(out) >= 10, what="ten records before the signal")
    wait_until(lambda: emu.stats()["in_flight"] >= 1, what="a request in flight")
    started = time.monotonic()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    elapsed = time.monotonic() - started
    assert proc.returncode == 130, stderr
    assert "interrupted" in stdout
    # Requests in flight end within --timeout; nothing waits out a retry backoff or the grace.
    assert elapsed < TIMEOUT_S + 3, elapsed
    stats = wait_until(
        lambda: (s := emu.stats())["in_flight"] == 0 and s, what="the server to settle"
    )
    # The only requests the server saw abandoned are stalls the client timed out: none was cut
    # off by the stop.
    assert stats["cancelled"] == stats["stalls"]
    items, runs = read_results(out)
    assert runs[-1]["exit_code"] == 130 and runs[-1]["interrupted"] is True
    assert 10 <= len(items) < 40, "the signal did not land mid-run"
    assert all(r["status"] == "ok" for r in items), [r for r in items if r["status"] != "ok"]
    emu.reset_stats()
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    items, _ = read_results(out)
    assert sorted(r["id"] for r in items) == archive.ids
    for record in items:
        assert record["transcription"] == archive.transcript(record["id"])
    assert emu.stats()["early_retries"] == 0


def test_stop_sends_no_new_request(tmp_path, emulator, make_archive, spawn_cli, run_cli):
    """After a stop, an item waiting to retry is left for the next run, never sent again."""
    archive = make_archive(tmp_path, 6, seconds=0.05)
    emu = emulator(faults=FaultRates(p5xx=1.0), latency_ms=100)  # every answer a 5xx
    out = tmp_path / "r.jsonl"
    args = (
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", 2,
        "--max-attempts", 20, "--no-progress",
    )  # fmt: skip
    proc = spawn_cli(*args)
    # Both workers have failed at least once and are retrying, with backoff between attempts.
    wait_until(lambda: emu.stats()["requests"] >= 4, what="retries under way")
    wait_until(lambda: emu.stats()["in_flight"] >= 1, what="a request in flight")
    at_signal = emu.stats()["requests"]
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    elapsed = time.monotonic() - started
    assert proc.returncode == 130, stderr
    # At most the requests already on their way (one per worker) arrive after the signal.
    assert emu.stats()["requests"] - at_signal <= 2
    assert elapsed < 5, "the stop waited out retry backoffs instead of stopping"
    items, _ = read_results(out)
    assert items == [], "the stop recorded items it never finished"
    emu.config.faults = FaultRates()
    assert run_cli(*args).returncode == 0
    assert sorted(r["id"] for r in read_results(out)[0]) == archive.ids
