"""Packing (``--pack``): items per minute under the Standard plan's 25 requests a minute, with and
without packing, side by side; words misattributed; the billed audio the gaps add.

Clips of 5-30 s of speech-like audio (tone bursts of whole half-seconds at the pitches of a
scale, 0.3-1 s apart, some starting or ending on speech; 16 kHz mono WAV), as
``tests/audio/test_pack.py`` makes them; their true words and times are what the emulator
hears in each clip alone (its own decoding, speech detection and words: ``analyse`` and
``transcribe``). The emulator runs in this process (a thread) with ``--plan standard``: a
sliding window of 25 admitted requests per model, time-scaled by ``--scale`` (the window lasts
60 / scale seconds, answers 1.5 / scale s) so the script takes a few minutes; every figure is
given per plan window ("a minute"), the same at any scale while the rate limit, not the CPU,
is the bottleneck (the CPU seconds of the run and of this process are printed to check).

Both arms are ``batchscribe run MANIFEST --rate 25/min`` (scaled; a run that knows its plan, so
the figures are packing's, not the rate learner's; ``--learn`` drops ``--rate``) as a child
process, and make about the same number of requests (``--requests``): the arm without packing
gets that many clips, the arm with ``--pack`` as many clips as fill that many packs (the run's
own :class:`~batchscribe.audio.pack.Packer` says how many). Figures:

- **items per minute** (ok records / wall time of the run, per plan window), each arm, and
  their ratio: goal >= 15x, aim 20x;
- **words misattributed**: per record, the clip's true words not found in it (same text, start
  within 0.15 s) plus its words not among the clip's true words; goal 0 (the arm without
  packing is the control);
- **extra billed audio per clip**: per packed request, its audio (the last clip's offset plus
  its duration) less its clips' durations (the gaps), over the packed clips.

    python benchmarks/pack.py [--scale 2] [--requests 30] [--clips 48] [--learn] [--real-time]
"""

from __future__ import annotations

import argparse
import io
import random
import time
import wave
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from _bench import BENCH_KEY, batchscribe_argv, machine, run_child, table, workdir

from batchscribe.audio.pack import Pack, Packer
from batchscribe.emulator import EmulatorConfig, EmulatorThread
from batchscribe.emulator.transcripts import analyse, sniff, transcribe

RATE = 16000
#: Pitches of the scale (A3 .. A5): the emulator picks a region's words by its semitone.
PITCHES = tuple(220 * 2 ** (k / 12) for k in range(24))
#: A word is where it should be when its start is within this of its true start.
TOLERANCE_S = 0.15
#: The Standard plan: admitted requests per model per minute.
PLAN_RPM = 25
#: An answer's time at the service, real seconds (time-scaled with the window).
ANSWER_S = 1.5

Truth = list[tuple[str, float, float]]


def clip_pcm(seed: int, seconds: float) -> np.ndarray[Any, np.dtype[np.int16]]:
    """About ``seconds`` of speech-like bursts (int16, 16 kHz): whole half-seconds of tone,
    0.3-1 s apart, each faded in and out over 5 ms; half the clips start and end on a burst
    (the worst case for a word joined across the gap), the others have silence at the edges."""
    pick = random.Random(seed)
    edges = seed % 2 == 0
    at = 0.0 if edges else pick.uniform(0.1, 0.6)
    bursts: list[tuple[float, float, float]] = []
    while True:
        length = 0.5 * pick.randint(1, 6)
        bursts.append((at, at + length, pick.choice(PITCHES)))
        at += length
        if at >= seconds:
            break
        at += pick.uniform(0.3, 1.0)
    end = at if edges else at + pick.uniform(0.1, 0.6)
    times = np.arange(round(end * RATE), dtype=np.float64) / RATE
    out = np.zeros(times.size, dtype=np.float64)
    for begin, stop, freq in bursts:
        inside = (times >= begin) & (times < stop)
        t = times[inside]
        envelope = np.minimum(1.0, np.minimum(t - begin, stop - t) / 0.005)
        out[inside] = 9000.0 * envelope * np.sin(2 * np.pi * freq * (t - begin))
    return np.round(out).astype(np.int16)


def write_clip(path: Path, pcm: np.ndarray[Any, Any]) -> bytes:
    """Write 16 kHz mono 16-bit WAV; its bytes."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm.astype("<i2").tobytes())
    body = buffer.getvalue()
    path.write_bytes(body)
    return body


def true_words(body: bytes) -> Truth:
    """The words the emulator hears in this clip sent alone: (text, start, end)."""
    signal = analyse(io.BytesIO(body), sniff(body[:16]) or "wav")
    return [(w.text, w.start, w.end) for w in transcribe(signal.regions).words]


def make_clips(root: Path, count: int) -> tuple[list[str], list[float], list[Truth]]:
    """``count`` distinct clips of 5-30 s under ``root/audio``: paths, seconds, true words."""
    audio = root / "audio"
    audio.mkdir(parents=True)
    paths, seconds, truths = [], [], []
    pick = random.Random(17)
    for k in range(count):
        pcm = clip_pcm(k, pick.uniform(5.0, 29.0))
        path = audio / f"clip-{k:03d}.wav"
        truths.append(true_words(write_clip(path, pcm)))
        paths.append(f"audio/{path.name}")
        seconds.append(pcm.size / RATE)
    return paths, seconds, truths


def items_for_packs(seconds: list[float], packs: int) -> int:
    """How many items (the clips in turn) fill ``packs`` packs of the run's Packer."""
    packer = Packer()
    made: list[Pack] = []
    n = 0
    while len(made) < packs:
        made += packer.add(str(n), "en", seconds[n % len(seconds)])
        n += 1
    return sum(len(p.items) for p in made[:packs])


def write_manifest(root: Path, name: str, paths: list[str], n: int) -> Path:
    """A manifest of ``n`` items, the clips in turn (item ``i`` is clip ``i % len(paths)``)."""
    manifest = root / name
    with manifest.open("wb") as out:
        for i in range(n):
            out.write(orjson.dumps({"id": f"i{i:06d}", "path": paths[i % len(paths)]}) + b"\n")
    return manifest


def misplaced(words: list[dict[str, Any]], truth: Truth) -> int:
    """True words not in ``words`` (same text, start within the tolerance) plus words of
    ``words`` that are not true words of the clip."""
    rest = [(w.get("word"), float(w.get("start", -1))) for w in words]
    missing = 0
    for text, start, _ in truth:
        found = next((r for r in rest if r[0] == text and abs(r[1] - start) <= TOLERANCE_S), None)
        if found is None:
            missing += 1
        else:
            rest.remove(found)
    return missing + len(rest)


def gaps(records: list[dict[str, Any]]) -> tuple[int, float]:
    """The packed clips and the billed audio the gaps between them add (seconds)."""
    by_request: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    for record in records:
        packed = record.get("packed")
        if isinstance(packed, dict) and record.get("duration") is not None:
            by_request[packed.get("request")].append((float(packed["offset"]), record["duration"]))
    extra = 0.0
    for clips in by_request.values():
        extra += max(at + length for at, length in clips) - sum(length for _, length in clips)
    return sum(len(c) for c in by_request.values()), extra


def arm(
    root: Path,
    manifest: Path,
    *,
    pack: bool,
    scale: float,
    learn: bool,
    truths: list[Truth],
) -> dict[str, Any]:
    """One run against a fresh emulator on the (scaled) Standard plan; its figures."""
    window = 60.0 / scale
    config = EmulatorConfig.for_plan(
        "standard", key=BENCH_KEY, plan_window_s=window, latency_ms=ANSWER_S * 1000 / scale,
        jitter_ms=ANSWER_S * 100 / scale,
    )  # fmt: skip
    out = root / ("packed.jsonl" if pack else "alone.jsonl")
    flags = [] if learn else ["--rate", f"{PLAN_RPM / window:g}/s"]
    if pack:
        flags.append("--pack")
    with EmulatorThread(config) as emulator:
        cpu = time.process_time()
        result = run_child(
            batchscribe_argv("run", manifest, "--out", out, "--no-progress",
                             "--endpoint", emulator.endpoint(), "--max-attempts", "100",
                             *flags),
            env={"SMALLEST_API_KEY": BENCH_KEY}, cwd=root,
        )  # fmt: skip
        cpu = time.process_time() - cpu
        stats = emulator.stats()
    if result.code != 0:
        raise SystemExit(f"exit {result.code}\n{result.stdout}{result.stderr}")
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    records = [r for r in records if "id" in r and r.get("status") == "ok"]
    wrong = true = 0
    for record in records:
        truth = truths[int(record["id"][1:]) % len(truths)]
        wrong += misplaced(record.get("words") or [], truth)
        true += len(truth)
    packed, extra = gaps(records)
    minutes = result.wall / window
    return {
        "items": len(records),
        "requests": stats["statuses"].get("200", 0),
        "throttled": stats["statuses"].get("429", 0),
        "wall": result.wall,
        "per_minute": len(records) / minutes,
        "requests_per_minute": stats["statuses"].get("200", 0) / minutes,
        "wrong": wrong,
        "words": true,
        "packed": packed,
        "extra": extra,
        "cpu_run": result.cpu,
        "cpu_here": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=2.0,
                        help="time scale: a plan minute lasts 60/scale s (default 2)")  # fmt: skip
    parser.add_argument("--real-time", action="store_true", help="--scale 1: real minutes")
    parser.add_argument("--requests", type=int, default=30,
                        help="requests each arm makes, about (default 30)")  # fmt: skip
    parser.add_argument("--clips", type=int, default=48, help="distinct clips (default 48)")
    parser.add_argument("--learn", action="store_true",
                        help="no --rate: the run learns the limit from 429s")  # fmt: skip
    ns = parser.parse_args()
    scale = 1.0 if ns.real_time else ns.scale
    with workdir("bench-pack-") as root:
        paths, seconds, truths = make_clips(root, ns.clips)
        alone_n = ns.requests
        packed_n = items_for_packs(seconds, ns.requests)
        print(f"# pack  {machine()}  scale={scale:g} (a plan minute = {60 / scale:g} s)  "
              f"clips: {ns.clips} distinct, {min(seconds):.1f}-{max(seconds):.1f} s, "
              f"mean {sum(seconds) / len(seconds):.1f} s, "
              f"{sum(len(t) for t in truths)} true words")  # fmt: skip
        common = {"scale": scale, "learn": ns.learn, "truths": truths}
        alone = arm(root, write_manifest(root, "alone.jsonl", paths, alone_n), pack=False,
                    **common)  # fmt: skip
        packed = arm(root, write_manifest(root, "packed.jsonl", paths, packed_n), pack=True,
                     **common)  # fmt: skip
    rows = []
    for name, got in (("without --pack", alone), ("--pack", packed)):
        extra = f"{got['extra'] / got['packed']:.2f} s" if got["packed"] else "-"
        rows.append([
            name, got["items"], got["requests"], got["throttled"], f"{got['wall']:.1f} s",
            f"{got['requests_per_minute']:.1f}", f"{got['per_minute']:.0f}",
            f"{got['wrong']} of {got['words']}", extra,
            f"{got['cpu_run']:.1f} s / {got['cpu_here']:.1f} s",
        ])  # fmt: skip
    print()
    print(table(rows, ["run", "items ok", "requests (200)", "429s", "wall",
                       "requests / plan minute", "items / plan minute",
                       "words misattributed", "extra billed audio per clip",
                       "CPU: run / emulator"]))  # fmt: skip
    ratio = packed["per_minute"] / alone["per_minute"]
    print()
    per_request = packed["items"] / max(1, packed["requests"])
    print(f"items per minute: {ratio:.1f}x with --pack (goal >= 15x, aim 20x); "
          f"{per_request:.1f} items per packed request")  # fmt: skip


if __name__ == "__main__":
    main()
