"""Adaptive concurrency (``--concurrency auto``), the start pacer and ``--rate``: on a fake clock.

The controller is pure decision logic, so these tests feed it answers and step a FakeClock:
deterministic, no sleeps, no timed assertions.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import read_results

from batchscribe.cli import build_parser, main
from batchscribe.control import AdaptiveConcurrency, Pacer
from batchscribe.run.engine import run_batch_async
from batchscribe.run.options import RunOptions
from batchscribe.testing import FakeClock, settle

RTT = 0.3


def grow(ctl: AdaptiveConcurrency, clock: FakeClock, successes: int, in_flight: int = 999) -> None:
    """Report ``successes`` healthy answers, each one round trip long, at full use."""
    for _ in range(successes):
        ctl.on_response(clock.now() - RTT, 200, min(in_flight, ctl.limit))


async def step(clock: FakeClock, seconds: float = RTT) -> None:
    await clock.advance(seconds)


# ------------------------------------------------------------------------------ controller


def test_slow_start_doubles_the_limit_per_round_trip_while_healthy() -> None:
    """Every healthy answer at full use adds one slot: a window's worth of answers doubles it."""
    ctl = AdaptiveConcurrency(FakeClock(), ceiling=256)
    assert ctl.limit == 8
    grow(ctl, FakeClock(), 8)
    assert ctl.limit == 16
    assert ctl.rate is None  # unpaced until the server first pushes back


def test_an_idle_window_does_not_grow() -> None:
    """With under half the window in use, healthy answers teach nothing about the server."""
    clock = FakeClock()
    ctl = AdaptiveConcurrency(clock, ceiling=256)
    grow(ctl, clock, 50, in_flight=3)
    assert ctl.limit == 8


def test_never_exceeds_the_ceiling() -> None:
    """However long answers stay healthy, the limit stops at the ceiling."""
    clock = FakeClock()
    ctl = AdaptiveConcurrency(clock, ceiling=12)
    grow(ctl, clock, 1000)
    assert ctl.limit == 12
    assert ctl.high == 12


async def test_a_burst_of_429s_cuts_once_per_round_trip() -> None:
    """429s for requests sent before the cut echo the same event: one cut, not one per 429."""
    clock = FakeClock()
    ctl = AdaptiveConcurrency(clock, ceiling=256)
    grow(ctl, clock, 12)  # window 20
    sent = clock.now()
    await step(clock)
    for _ in range(15):
        ctl.on_response(sent, 429, 21)  # the refused request and the 20 others the server saw
    assert ctl.cuts == 1
    assert ctl.w_max == 20
    assert ctl.window == pytest.approx(20 * ctl.beta)
    assert ctl.limit == int(20 * ctl.beta) + 1
    # A request sent after the cut that is refused again is fresh evidence: a second cut, from
    # where the server refused it (11 others in flight), not from the window.
    resent = clock.now()
    await step(clock)
    ctl.on_response(resent, 503, 12)
    assert ctl.cuts == 2
    assert ctl.w_max == 11
    assert ctl.window == pytest.approx(11 * ctl.beta)


async def test_never_below_one() -> None:
    """Overload after overload, the limit stays at one request and the pacer keeps a rate."""
    clock = FakeClock()
    ctl = AdaptiveConcurrency(clock, ceiling=64)
    grow(ctl, clock, 4)
    for _ in range(40):
        sent = clock.now()
        await step(clock)
        ctl.on_response(sent, 429, 1)
    assert ctl.cuts == 40
    assert ctl.window == 1.0
    assert ctl.limit >= 1
    assert ctl.low >= 1
    assert ctl.rate is not None and ctl.rate > 0


async def test_recovers_to_just_under_the_overload_point_then_probes_beyond() -> None:
    """After a cut it climbs back, holds just under where it was refused, and only then probes."""
    clock = FakeClock()
    ctl = AdaptiveConcurrency(clock, ceiling=256)
    grow(ctl, clock, 12)  # window 20
    sent = clock.now()
    await step(clock)
    ctl.on_response(sent, 429, 21)
    cut_to = ctl.window
    plateau = 20 * (1 - ctl.margin)
    seen: list[float] = []
    for _ in range(60):  # sixty round trips of healthy answers
        await step(clock)
        grow(ctl, clock, ctl.limit)
        seen.append(ctl.window)
    assert seen[0] > cut_to  # climbing at once
    assert any(w == pytest.approx(plateau) for w in seen)  # holds the plateau for a while
    assert max(seen) > 20  # and later probes past the old overload point
    assert all(b >= a for a, b in itertools.pairwise(seen))  # never falls without a 429


async def test_pacing_starts_after_the_first_overload_at_window_over_round_trip() -> None:
    """The start rate is off in slow start, then follows the window: W / smoothed RTT."""
    clock = FakeClock()
    ctl = AdaptiveConcurrency(clock, ceiling=256)
    grow(ctl, clock, 2)
    assert ctl.rate is None
    sent = clock.now()
    await step(clock)
    ctl.on_response(sent, 429, 10)
    assert ctl.srtt == pytest.approx(RTT)
    assert ctl.rate == pytest.approx(ctl.window / RTT)


def test_transport_failures_teach_nothing() -> None:
    """A reset or a timeout (no HTTP status) neither grows nor cuts the limit."""
    clock = FakeClock()
    ctl = AdaptiveConcurrency(clock, ceiling=256)
    assert not ctl.on_response(clock.now(), None, 8)
    assert (ctl.limit, ctl.cuts, ctl.srtt) == (8, 0, None)


def test_client_errors_count_as_healthy_answers() -> None:
    """A 400 for one bad file says nothing about load: it grows the limit like a 200."""
    clock = FakeClock()
    ctl = AdaptiveConcurrency(clock, ceiling=256)
    assert ctl.on_response(clock.now(), 400, 8)
    assert ctl.limit == 9


# ------------------------------------------------------------------------------ pacer


async def test_pacer_lets_starts_through_one_gap_apart() -> None:
    """At 10 starts/s the first goes at once and the others 0.1 s apart, in arrival order."""
    clock = FakeClock()
    pacer = Pacer(clock, rate=10.0)
    started: list[tuple[int, float]] = []

    async def start(i: int) -> None:
        await pacer.wait()
        started.append((i, round(clock.now() - 1000.0, 3)))

    tasks = [asyncio.create_task(start(i)) for i in range(4)]
    await settle()
    assert started == [(0, 0.0)]
    await clock.advance(0.35)
    await asyncio.gather(*tasks)
    assert started == [(0, 0.0), (1, 0.1), (2, 0.2), (3, 0.3)]


async def test_pacer_applies_a_new_rate_to_those_already_waiting() -> None:
    """A rate cut while starts wait spaces the rest at the new gap."""
    clock = FakeClock()
    pacer = Pacer(clock, rate=10.0)
    times: list[float] = []

    async def start() -> None:
        await pacer.wait()
        times.append(round(clock.now() - 1000.0, 3))

    tasks = [asyncio.create_task(start()) for _ in range(3)]
    await settle()
    pacer.rate = 2.0
    await clock.advance(2.0)
    await asyncio.gather(*tasks)
    assert times[0] == 0.0
    assert times[1] >= 0.5  # the new gap (the sleep begun under the old one ends first)
    assert times[2] - times[1] == pytest.approx(0.5)


async def test_pacer_skips_a_cancelled_waiter() -> None:
    """A start cancelled while it waits gives its turn to the next one."""
    clock = FakeClock()
    pacer = Pacer(clock, rate=1.0)
    await pacer.wait()
    first = asyncio.create_task(pacer.wait())
    second = asyncio.create_task(pacer.wait())
    await settle()
    first.cancel()
    await clock.advance(1.0)
    await asyncio.wait_for(second, 1)
    assert pacer.waiting == 0


async def test_pacer_without_a_rate_never_waits() -> None:
    """Unpaced (rate None), every start goes at once."""
    pacer = Pacer(FakeClock())
    for _ in range(100):
        await pacer.wait()


# ------------------------------------------------------------------------------ a whole run


async def test_auto_run_against_a_capped_server_finishes_every_item(
    emulator: Any, make_archive: Any, tmp_path: Path
) -> None:
    """Against a server allowing 3 in flight, --concurrency auto ends with every item ok."""
    emu = emulator(max_concurrent=3, latency_ms=20)
    archive = make_archive(tmp_path, 40)
    from conftest import TEST_KEY

    run = RunOptions(
        sources=[str(archive.manifest)], out=str(tmp_path / "r.jsonl"), api_key=TEST_KEY,
        endpoint=emu.endpoint(), concurrency=16, adaptive=True, max_attempts=50,
    )  # fmt: skip
    summary = await run_batch_async(run)
    assert summary.ok == 40 and summary.failed == 0
    assert summary.adaptive
    assert 1 <= summary.concurrency_low <= summary.concurrency_high <= 16
    assert "concurrency: auto" in "\n".join(summary.lines())
    stats = emu.stats()
    assert stats["statuses"]["200"] == 40
    assert summary.overload_cuts >= (1 if stats["rate_limited"] else 0)


# ------------------------------------------------------------------------------ CLI


def test_cli_accepts_auto_a_ceiling_and_a_rate() -> None:
    """`-j auto --max-concurrency 32 --rate 2.5` parse to the values the run needs."""
    ns = build_parser().parse_args(
        ["run", "m.jsonl", "--out", "r.jsonl", "-j", "auto", "--max-concurrency", "32",
         "--rate", "2.5"]
    )  # fmt: skip
    assert (ns.concurrency, ns.max_concurrency, ns.rate) == ("auto", 32, 2.5)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-concurrency", "4"], "--max-concurrency goes with --concurrency auto"),
        (["--rate", "0"], "--rate"),
        (["-j", "many"], "--concurrency"),
    ],
)
def test_cli_refuses_a_bad_pace(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ceiling without auto, a zero rate or a word for N is a usage error (exit 2)."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.wav"}\n')
    argv = ["run", str(manifest), "--out", str(tmp_path / "r.jsonl"), "--emulate", *args]
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(argv))
    assert exited.value.code == 2
    assert needle in capsys.readouterr().err


# ------------------------------------------------------------------- an unknown rate limit
# 25 requests per 4 s (Pulse's 25/min, 15 times faster: the suite stays fast) with a burst of
# one and short answers. Wide bounds: the machine may be loaded; the exact checks are on the
# fake clock (test_control.py).
FAST_25 = 25 / 4


@pytest.mark.parametrize("headers", [False, True])
def test_default_run_holds_an_unknown_rate_limit_without_failing_items(
    emulator: Any, make_archive: Any, tmp_path: Path, run_cli: Any, headers: bool
) -> None:
    """Default options against an unknown rate limit: no item fails by 429s, few 429s, near
    the limit, and the summary names the rate it learnt."""
    emu = emulator(rate_limit=FAST_25, rate_headers=headers, latency_ms=40)
    archive = make_archive(tmp_path, 60)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(),
                   "--no-progress", timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = read_results(out)[0]
    assert len(records) == 60 and all(r["status"] == "ok" for r in records)
    stats = emu.stats()
    refused = stats["statuses"].get("429", 0)
    assert refused <= 0.25 * stats["requests"], stats["statuses"]  # (cold start included)
    assert "/min learned" in proc.stdout + proc.stderr or "/s learned" in proc.stdout + proc.stderr
    run = read_results(out)[1][-1]
    assert run["throttled"] == refused
    # Near the limit over the whole run (learning included), with a wide bound for a busy box.
    assert run["wall_seconds"] <= 60 / (0.5 * FAST_25)


def test_429s_spend_no_attempts(
    emulator: Any, make_archive: Any, tmp_path: Path, run_cli: Any
) -> None:
    """With --max-attempts 1, items refused by a rate limit are sent again, not failed."""
    emu = emulator(rate_limit=FAST_25, rate_headers=False, latency_ms=20)
    archive = make_archive(tmp_path, 12)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(),
                   "--max-attempts", "1", "--no-progress")  # fmt: skip
    assert emu.stats()["statuses"].get("429", 0) >= 1  # the limit was met
    assert proc.returncode == 0, proc.stderr
    assert all(r["status"] == "ok" for r in read_results(out)[0])


def test_the_next_run_starts_from_the_rate_learnt_beside_the_results(
    emulator: Any, make_archive: Any, tmp_path: Path, run_cli: Any
) -> None:
    """A run keeps the learnt rate in RESULTS.rate.json; the next run on it starts paced there."""
    emu = emulator(rate_limit=FAST_25, rate_headers=False, latency_ms=20)
    first = make_archive(tmp_path / "a", 30)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", first.manifest, "--out", out, "--endpoint", emu.endpoint(),
                   "--no-progress", timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    hint = orjson.loads((tmp_path / "r.jsonl.rate.json").read_bytes())
    assert 0.3 * FAST_25 * 60 <= hint["per_minute"] <= 2 * FAST_25 * 60  # (30 items: rough)
    before = emu.stats()["statuses"].get("429", 0)
    second = make_archive(tmp_path / "b", 30)
    proc = run_cli("run", second.manifest, "--out", out, "--endpoint", emu.endpoint(),
                   "--no-progress", timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "rate learnt last time" in proc.stderr
    # No cold start (8 at once, then a search): a paced start costs a few probes at most.
    assert emu.stats()["statuses"].get("429", 0) - before <= 4


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("25/min", 25 / 60), ("0.5/s", 0.5), ("1000/h", 1000 / 3600), ("2", 2.0), ("3/m", 0.05)],
)
def test_rate_accepts_units(text: str, per_second: float) -> None:
    """--rate reads 25/min, 0.5/s, 1000/h; a bare number is per second, as it always was."""
    from batchscribe.cli import parse_rate

    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["25/week", "fast", "0/min", "-1/s", "nan/s", "inf"])
def test_rate_refuses_what_is_not_a_rate(text: str) -> None:
    """A unit we do not know, zero, negative or not a number: ValueError (exit 2 in the CLI)."""
    from batchscribe.cli import parse_rate

    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)
