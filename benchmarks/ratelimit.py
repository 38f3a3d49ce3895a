"""Rate limits: ``--concurrency auto`` against the emulator enforcing a rate or a concurrency cap.

The bundled emulator runs in this process (a thread) with ~300 ms latency and enforces either
``rate_limit`` R (a token bucket with 100 ms of burst) or ``max_concurrent`` C (429 beyond C in
flight); ``batchscribe run --concurrency auto --max-runtime T`` is a child process. The
emulator's counters are sampled every 0.25 s. Figures, over the run after a warm-up:

- **sustained throughput** (200s per second) as a share of the limit (R, or C / latency):
  target >= 0.90 (aim 0.95);
- **429 share**: 429 answers / all answers: target < 5% (aim 2.5%).

Halving cases change the emulator's limit at T/2 while the run goes on, and report how long it
takes to get back under the new limit (the end of the last 1 s window with more than 5% 429s),
in seconds and in round trips, and the throughput after that against the new limit.

The 25/min cases (Pulse's Standard plan) run batchscribe with *default options* against a
token bucket of 25 requests/min with a burst of one, answer times 0.3, 1.5 and 8 s, with and
without a delay header, and one with the limit changed mid-run from 25 to 12/min; beside them
``--rate 25/min``, a run that knows the limit. Real 25/min runs take minutes each, so by default
they are time-scaled by 10: the limit is 250/min and the answers 0.03, 0.15 and 0.8 s, which
keeps every ratio (starts per answer time, round trips per gap) of the real case; the figures
are shares of the limit, the same in either. ``--real-time`` runs them at 25/min (10 minutes
each).

``--short``: a short job must not pay for the learning. 15 s runs (a cap of 16 in flight, 20/s;
``--concurrency auto`` and default options; a fixed ``-j 16`` and an unlimited server beside
them), the whole run counted: 200s / 15 s as a share of the limit, slow start and probes included.

    python benchmarks/ratelimit.py [--seconds 40] [--warmup 10] [--quick] [--only NAME]
    python benchmarks/ratelimit.py --only-25 [--real-time]
    python benchmarks/ratelimit.py --short
    python benchmarks/ratelimit.py --window [--real-time]

``--window``: the same targets against the emulator's ``--plan standard`` limit, a sliding log
of 25 admitted requests in any window (its default) and its token-bucket reading, with the
window time-scaled to 6 s (answers a tenth as long); 30 s runs (5 real minutes), the first
12 s (2 real minutes) not counted, beside a fixed ``--rate 25/min`` run.
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from _bench import BENCH_KEY, batchscribe_argv, machine, run_child, table, wav_bytes, workdir

LATENCY_MS = 300.0


@dataclasses.dataclass
class Scenario:
    name: str
    config: dict[str, Any]
    limit: float  # successful requests per second the server allows
    halve: bool = False
    args: tuple[str, ...] = ("--concurrency", "auto")
    latency_ms: float = LATENCY_MS
    change_to: float | None = None  # the limit's new value at half time (requests/s)
    seconds: float | None = None  # a short job: this long, the whole run counted (no warm-up)


SCENARIOS = [
    Scenario("R=20/s", {"rate_limit": 20.0}, 20.0),
    Scenario("R=200/s", {"rate_limit": 200.0}, 200.0),
    Scenario("C=16", {"max_concurrent": 16}, 16 / (LATENCY_MS / 1000)),
    Scenario("R=200/s -> 100/s", {"rate_limit": 200.0}, 200.0, halve=True),
    Scenario("C=16 -> 8", {"max_concurrent": 16}, 16 / (LATENCY_MS / 1000), halve=True),
    # References: what a user who knows the cap gets with a fixed -j 16, and --rate on its own.
    Scenario(
        "C=16, fixed -j 16",
        {"max_concurrent": 16},
        16 / (LATENCY_MS / 1000),
        args=("--concurrency", "16"),
    ),
    Scenario("--rate 50 -j 64, no server limit", {}, 50.0, args=("-j", "64", "--rate", "50")),
]

#: Short jobs (issue 14): 15 s runs, the whole run counted, slow start and probing included.
SHORT = [
    Scenario("short: C=16, auto", {"max_concurrent": 16}, 16 / (LATENCY_MS / 1000), seconds=15),
    Scenario(
        "short: C=16, fixed -j 16",
        {"max_concurrent": 16},
        16 / (LATENCY_MS / 1000),
        args=("--concurrency", "16"),
        seconds=15,
    ),
    Scenario("short: R=20/s, auto", {"rate_limit": 20.0}, 20.0, seconds=15),
    Scenario("short: R=20/s, default options", {"rate_limit": 20.0}, 20.0, args=(), seconds=15),
    Scenario(
        "short: C=16 as the ceiling, -j 16 auto",
        {},
        16 / (LATENCY_MS / 1000),
        args=("--concurrency", "auto", "--max-concurrency", "16"),
        seconds=15,
    ),
]


def per_minute_25(scale: float) -> list[Scenario]:
    """The 25/min cases, time-scaled by ``scale`` (10: 250/min, answers a tenth as long)."""
    limit = 25 / 60 * scale
    out = []
    for answer in (0.3, 1.5, 8.0):
        for headers in (False, True):
            name = f"25/min, {answer:g} s answers, {'retry-after-ms' if headers else 'no header'}"
            config = {"rate_limit": limit, "rate_headers": headers}
            out.append(Scenario(name, config, limit, args=(), latency_ms=answer * 1000 / scale))
    out.append(Scenario("25/min -> 12/min, 1.5 s answers, no header",
                        {"rate_limit": limit, "rate_headers": False}, limit, args=(),
                        latency_ms=1500 / scale, change_to=12 / 60 * scale))  # fmt: skip
    fixed = ("--rate", f"{25 * scale:g}/min")
    out.append(Scenario("25/min, 1.5 s answers, no header, --rate 25/min",
                        {"rate_limit": limit, "rate_headers": False}, limit,
                        args=fixed, latency_ms=1500 / scale))  # fmt: skip
    return out


def per_minute_25_window(scale: float) -> list[Scenario]:
    """The 25/min cases against the emulator's ``--plan standard`` (a sliding log: 25 admitted
    in any window) and its token-bucket reading, time-scaled by ``scale`` (the window lasts
    60 / scale seconds), beside a fixed ``--rate 25/min`` run that knows the limit."""
    limit, width = 25 / 60 * scale, 60 / scale
    out = []
    for algorithm in ("window", "bucket"):
        for answer in (0.3, 1.5, 8.0):
            for headers in (False, True):
                if algorithm == "bucket" and answer != 1.5:
                    continue
                name = (f"plan {algorithm}, {answer:g} s answers, "
                        f"{'retry-after-ms' if headers else 'no header'}")  # fmt: skip
                config = {"plan": "standard", "plan_window_s": width,
                          "plan_algorithm": algorithm, "rate_headers": headers}  # fmt: skip
                out.append(Scenario(name, config, limit, args=(), latency_ms=answer * 1000 / scale))
    config = {"plan": "standard", "plan_window_s": width, "plan_algorithm": "window",
              "rate_headers": False}  # fmt: skip
    out.append(Scenario("plan window, 25 -> 12/min, 1.5 s answers, no header", config, limit,
                        args=(), latency_ms=1500 / scale, change_to=12 / 60 * scale))  # fmt: skip
    fixed = ("--rate", f"{25 * scale:g}/min")
    out.append(Scenario("plan window, 1.5 s answers, no header, --rate 25/min", config, limit,
                        args=fixed, latency_ms=1500 / scale))  # fmt: skip
    return out


def make_manifest(root: Path, n: int) -> Path:
    audio = root / "audio"
    audio.mkdir(exist_ok=True)
    for k in range(64):
        (audio / f"a{k:02d}.wav").write_bytes(wav_bytes(0.1, 300 + 7 * k))
    manifest = root / f"m{n}.jsonl"
    with open(manifest, "wb") as out:
        for i in range(n):
            out.write(orjson.dumps({"id": f"i{i:07d}", "path": f"audio/a{i % 64:02d}.wav"}) + b"\n")
    return manifest


def sample(emulator: Any, stop: threading.Event, into: list[tuple[float, int, int, int]]) -> None:
    """(seconds since start, 200s, 429s, all answers) every 0.25 s."""
    started = time.monotonic()
    while not stop.wait(0.25):
        stats = emulator.stats()
        statuses = stats["statuses"]
        into.append((time.monotonic() - started, statuses.get("200", 0), statuses.get("429", 0),
                     sum(statuses.values())))  # fmt: skip


def window(samples: list[tuple[float, int, int, int]], t0: float, t1: float) -> tuple[float, float]:
    """(200s per second, 429 share) between the samples nearest t0 and t1."""
    a = min(samples, key=lambda s: abs(s[0] - t0))
    b = min(samples, key=lambda s: abs(s[0] - t1))
    seconds = max(1e-9, b[0] - a[0])
    answers = b[3] - a[3]
    return (b[1] - a[1]) / seconds, (b[2] - a[2]) / answers if answers else 0.0


def settle_time(samples: list[tuple[float, int, int, int]], change: float, end: float) -> float:
    """Seconds after ``change`` until the end of the last 1 s window with > 5% 429 answers."""
    last_bad = change
    t = change
    while t + 1.0 <= end:
        _, share = window(samples, t, t + 1.0)
        if share > 0.05:
            last_bad = t + 1.0
        t += 0.25
    return last_bad - change


def run(scenario: Scenario, seconds: float, warmup: float) -> list[str]:
    from batchscribe.emulator import EmulatorConfig, EmulatorThread

    n = int(scenario.limit * seconds * 1.5) + 200
    jitter = min(20.0, scenario.latency_ms / 10)
    config = EmulatorConfig(key=BENCH_KEY, latency_ms=scenario.latency_ms, jitter_ms=jitter,
                            **scenario.config)  # fmt: skip
    samples: list[tuple[float, int, int, int]] = []
    stop = threading.Event()
    with workdir("bench-ratelimit-") as root, EmulatorThread(config) as emulator:
        manifest = make_manifest(root, n)
        sampler = threading.Thread(target=sample, args=(emulator, stop, samples), daemon=True)
        change_at = seconds / 2
        timer = None
        if scenario.change_to is not None and "plan" in scenario.config:
            per_window = scenario.change_to * config.plan_window_s
            changed = dataclasses.replace(config, plan_rpm=per_window)
            timer = threading.Timer(change_at, lambda: setattr(emulator, "config", changed))
        elif scenario.change_to is not None:
            changed = dataclasses.replace(config, rate_limit=scenario.change_to)
            timer = threading.Timer(change_at, lambda: setattr(emulator, "config", changed))
        elif scenario.halve:
            halved = dataclasses.replace(config)
            if "rate_limit" in scenario.config:
                halved.rate_limit = scenario.config["rate_limit"] / 2
            else:
                halved.max_concurrent = scenario.config["max_concurrent"] // 2
            timer = threading.Timer(change_at, lambda: setattr(emulator, "config", halved))
        sampler.start()
        if timer:
            timer.start()
        result = run_child(
            batchscribe_argv("run", manifest, "--out", root / "r.jsonl", "--no-progress",
                             "--endpoint", emulator.endpoint(), *scenario.args,
                             "--max-runtime", f"{seconds:g}", "--max-attempts", "100"),
            env={"SMALLEST_API_KEY": BENCH_KEY},
        )  # fmt: skip
        stop.set()
        sampler.join()
        per_second = emulator.stats()["requests_per_second"]
        if timer:
            timer.cancel()
    if result.code not in (0, 4):
        raise SystemExit(f"{scenario.name}: exit {result.code}\n{result.stdout}{result.stderr}")
    auto_line = next((line for line in result.stdout.splitlines()
                      if "concurrency: auto" in line or line.startswith("rate: ")),
                     " ".join(scenario.args))  # fmt: skip
    if "--rate" in scenario.args and scenario.config:
        # --rate against a server limit: the same figures as the learning runs.
        pass
    elif "--rate" in scenario.args:
        # Request starts per second as the server counted them (whole seconds of the run).
        full = per_second[1:-1]
        mean = sum(full) / len(full)
        return [scenario.name, f"{scenario.limit:.1f}", f"{mean:.1f} starts/s",
                f"{mean / scenario.limit:.3f}", "", "", "",
                f"max in one second: {max(full)}", f"starts over {len(full)} s: {sum(full)}"
                f" (allowed {scenario.limit * len(full):.0f} + 2)"]  # fmt: skip
    end = min(seconds, samples[-1][0])
    total = samples[-1]
    all_share = total[2] / total[3] if total[3] else 0.0
    if scenario.change_to is not None:
        before, share_before = window(samples, warmup, change_at)
        settle = settle_time(samples, change_at, end)
        after, share_after = window(samples, change_at + settle, end)
        new_limit = scenario.change_to
        return [scenario.name, f"{scenario.limit * 60:.0f} -> {new_limit * 60:.0f}/min",
                f"{before * 60:.1f} -> {after * 60:.1f}/min",
                f"{before / scenario.limit:.3f} -> {after / new_limit:.3f}",
                f"{share_before:.2%} -> {share_after:.2%}", f"{all_share:.2%}", "",
                f"{settle:.1f} s", auto_line.strip()]  # fmt: skip
    if scenario.seconds is not None:
        whole = total[1] / seconds
        return [scenario.name, f"{scenario.limit:.1f}", f"{whole:.1f}",
                f"{whole / scenario.limit:.3f}", "", f"{all_share:.2%}", "", "",
                auto_line.strip()]  # fmt: skip
    if not scenario.halve:
        throughput, share = window(samples, warmup, end)
        early, _ = window(samples, 0.0, warmup)
        return [scenario.name, f"{scenario.limit:.1f}", f"{throughput:.1f}",
                f"{throughput / scenario.limit:.3f}", f"{share:.2%}", f"{all_share:.2%}",
                f"{early / scenario.limit:.2f}", "", auto_line.strip()]  # fmt: skip
    new_limit = scenario.limit / 2
    before, share_before = window(samples, warmup, change_at)
    settle = settle_time(samples, change_at, end)
    after, share_after = window(samples, change_at + settle, end)
    return [scenario.name, f"{scenario.limit:.1f} -> {new_limit:.1f}",
            f"{before:.1f} -> {after:.1f}",
            f"{before / scenario.limit:.3f} -> {after / new_limit:.3f}",
            f"{share_before:.2%} -> {share_after:.2%}", f"{all_share:.2%}", "",
            f"{settle:.2f} s = {settle / (LATENCY_MS / 1000):.1f} RTT",
            auto_line.strip()]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each run")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds not counted")
    parser.add_argument("--quick", action="store_true", help="20 s runs, 6 s warm-up")
    parser.add_argument("--only", action="append", help="scenario names to run")
    parser.add_argument("--only-25", action="store_true", help="only the 25/min cases")
    parser.add_argument("--short", action="store_true",
                        help="only the short jobs: 15 s, the whole run counted")  # fmt: skip
    parser.add_argument(
        "--window",
        action="store_true",
        help="only the 25/min cases against --plan standard (window, bucket)",
    )
    parser.add_argument("--real-time", action="store_true",
                        help="the 25/min cases at 25/min (10 min each), not scaled")  # fmt: skip
    ns = parser.parse_args()
    seconds, warmup = (20.0, 6.0) if ns.quick else (ns.seconds, ns.warmup)
    scale = 1.0 if ns.real_time else 10.0
    if ns.window:
        seconds, warmup = 300.0 / scale, 120.0 / scale  # (5 real minutes, 2 of them warm-up)
        scenarios = per_minute_25_window(scale)
    elif ns.only_25:
        # 60 s scaled = 10 real minutes; the first 12 s (2 real minutes) are the warm-up.
        seconds, warmup = 600.0 / scale, 120.0 / scale
        scenarios = per_minute_25(scale)
    else:
        scenarios = SCENARIOS
    print(f"# ratelimit  {machine()}  latency={LATENCY_MS:g} ms  run={seconds:g} s "
          f"warm-up={warmup:g} s")  # fmt: skip
    if ns.short:
        scenarios = SHORT
    rows = [run(s, s.seconds or seconds, warmup) for s in scenarios
            if not ns.only or s.name in ns.only]  # fmt: skip
    print()
    print(table(rows, ["limit", "allowed/s", "ok/s", "ok/limit (>=0.90)", "429 share (<5%)",
                       "429 share, whole run", "warm-up ok/limit", "back under",
                       "batchscribe's summary"]))  # fmt: skip


if __name__ == "__main__":
    main()
