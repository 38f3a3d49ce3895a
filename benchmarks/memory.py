"""Memory: a 1,000,000-item resume, and RSS over a long run.

1. **Resume at scale**: a generated manifest of N items (default 1,000,000) and a results file
   that already holds an ok record for every one of them: the run has nothing to send. Figures:
   the child's peak RSS (``os.wait4``'s ``ru_maxrss``) and its wall time, side by side (runs
   alternating) with the resume a user would write by hand (``hand_resume.py``: ``json.loads``
   of each results line into a set of ok ids, the manifest streamed past it).
   Targets: peak RSS < 100 MB (aim 64 MB), wall < 5 s (aim 2 s), and with every results line
   validated whole, wall <= 0.5 of the hand-written resume's (aim 0.2).
2. **Long run**: ``--items`` items (default 200,000; ids unique, audio drawn from 64 small WAVs)
   against the bundled emulator at latency 0, in this process's thread (the client is its own
   process); the child's RSS is sampled from /proc every half second. It must stay flat.

    python benchmarks/memory.py [--n 1000000] [--items 200000] [--skip-long] [--skip-resume]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import orjson
from _bench import (
    BENCH_KEY,
    HERE,
    PYTHON,
    batchscribe_argv,
    machine,
    run_child,
    table,
    wav_bytes,
    workdir,
)

RECORD_TAIL = (
    b'"source":"/srv/archive/2019/{id}.wav","size":126930,"mtime":1764028140.0,"attempts":1,'
    b'"http_status":200,"error":null,"cause":null,"finished_at":"2026-11-25T01:02:03.456Z",'
    b'"run":"3f2a9c1b7d20","transcription":"The weather today is sunny with a light breeze.",'
    b'"words":[{"start":0.48,"end":0.9,"word":"The","confidence":0.98}],"utterances":[],'
    b'"duration":3.9,"request_id":"0f4e","response":{"status":"success","language":"en"}}\n'
)


def make_resume_case(root: Path, n: int) -> tuple[Path, Path]:
    """A manifest of ``n`` items and a results file with an ok record for each."""
    manifest = root / "big.jsonl"
    results = root / "big.results.jsonl"
    step = 100_000
    with open(manifest, "wb") as m, open(results, "wb") as r:
        for lo in range(0, n, step):
            ids = [f"2019/clip-{i:07d}" for i in range(lo, min(n, lo + step))]
            m.write(b"".join(b'{"id":"%s","path":"audio/%s.wav"}\n' % (i.encode(), i.encode())
                             for i in ids))  # fmt: skip
            r.write(b"".join(b'{"id":"%s","status":"ok",' % i.encode()
                             + RECORD_TAIL.replace(b"{id}", i.encode()) for i in ids))  # fmt: skip
    return manifest, results


def resume_case(n: int, repeat: int) -> list[list[str]]:
    rows = []
    with workdir("bench-memory-") as root:
        started = time.monotonic()
        manifest, results = make_resume_case(root, n)
        print(f"generated {n} items + {results.stat().st_size / 1e6:.0f} MB of results "
              f"in {time.monotonic() - started:.1f} s")  # fmt: skip
        ratios = []
        for i in range(repeat):
            result = run_child(
                batchscribe_argv(
                    "run",
                    manifest,
                    "--out",
                    results,
                    "--no-progress",
                    "--endpoint",
                    "http://127.0.0.1:9/unused",
                ),
                env={"SMALLEST_API_KEY": BENCH_KEY},
            )
            skipped = [line for line in result.stdout.splitlines() if "skipped" in line]
            if result.code != 0 or f"skipped (done earlier): {n}" not in result.stdout:
                raise SystemExit(f"unexpected run (exit {result.code}):\n{result.stdout}"
                                 f"{result.stderr}")  # fmt: skip
            hand = run_child([PYTHON, str(HERE / "hand_resume.py"), str(manifest), str(results)])
            if hand.code != 0 or "to send: 0" not in hand.stdout:
                raise SystemExit(f"hand-written resume failed:\n{hand.stdout}{hand.stderr}")
            ratios.append(result.wall / hand.wall)
            rows.append([f"resume {n:,} (run {i + 1})", f"{result.maxrss_mb:.1f}",
                         f"{result.wall:.2f}", f"{result.cpu:.2f}",
                         "< 100 MB (aim 64) / < 5 s (aim 2)", skipped[0].strip()])  # fmt: skip
            rows.append([f"hand-written resume (run {i + 1})", f"{hand.maxrss_mb:.1f}",
                         f"{hand.wall:.2f}", f"{hand.cpu:.2f}", "",
                         f"batchscribe/hand wall {result.wall / hand.wall:.2f}"])  # fmt: skip
        rows.append([f"resume {n:,}: batchscribe/hand-written", "", "", "",
                     "<= 0.5 (aim 0.2)", f"median {statistics.median(ratios):.2f} "
                     f"(runs: {', '.join(f'{r:.2f}' for r in ratios)})"])  # fmt: skip
    return rows


def long_case(items: int) -> tuple[list[str], list[tuple[float, float]]]:
    from batchscribe.emulator import EmulatorConfig, EmulatorThread

    with (
        workdir("bench-memory-long-") as root,
        EmulatorThread(EmulatorConfig(key=BENCH_KEY, latency_ms=0)) as emulator,
    ):
        audio = root / "audio"
        audio.mkdir()
        for k in range(64):
            (audio / f"a{k:02d}.wav").write_bytes(wav_bytes(0.1, 300 + 7 * k))
        manifest = root / "long.jsonl"
        with open(manifest, "wb") as m:
            for i in range(items):
                m.write(orjson.dumps({"id": f"item-{i:07d}", "path": f"audio/a{i % 64:02d}.wav",
                                      "batch": i // 1000}) + b"\n")  # fmt: skip
        result = run_child(
            batchscribe_argv("run", manifest, "--out", root / "long.results.jsonl",
                             "--no-progress", "--endpoint", emulator.endpoint(), "-j", "32"),
            env={"SMALLEST_API_KEY": BENCH_KEY},
            sample_every=0.5,
        )  # fmt: skip
        if result.code != 0:
            raise SystemExit(f"long run exited {result.code}:\n{result.stdout}{result.stderr}")
    samples = result.samples
    quarter = [rss for t, rss in samples if t >= result.wall * 0.25]
    row = [
        f"long run {items:,} items, emulator 0 ms, -j 32", f"{result.maxrss_mb:.1f}",
        f"{result.wall:.1f}", f"{result.cpu:.1f}", "flat",
        f"RSS after 25% of the run: min {min(quarter):.1f} max {max(quarter):.1f} MB; "
        f"{items / result.wall:.0f} items/s",
    ]  # fmt: skip
    return row, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="items in the resume case")
    parser.add_argument("--items", type=int, default=200_000, help="items in the long run")
    parser.add_argument("--repeat", type=int, default=3, help="resume runs (the file is reused)")
    parser.add_argument("--skip-resume", action="store_true")
    parser.add_argument("--skip-long", action="store_true")
    ns = parser.parse_args()
    print(f"# memory  {machine()}")
    rows = []
    if not ns.skip_resume:
        rows += resume_case(ns.n, ns.repeat)
    samples: list[tuple[float, float]] = []
    if not ns.skip_long:
        row, samples = long_case(ns.items)
        rows.append(row)
    print()
    print(table(rows, ["case", "peak RSS MB", "wall s", "CPU s", "target", "notes"]))
    if samples:
        print("\nRSS over the long run (seconds: MB):")
        stride = max(1, len(samples) // 20)
        print("  " + "  ".join(f"{t:.0f}s:{rss:.1f}" for t, rss in samples[::stride]))


if __name__ == "__main__":
    main()
