"""Preparation cost: CPU per audio hour, the probe per short clip, and a 3-hour stereo file.

1. CPU seconds per audio hour to probe, decode, downmix, resample to 16 kHz and encode (FLAC,
   and Opus) a 44.1 kHz stereo WAV of speech (the sample archive's recordings, looped), in
   this process after a warm-up. Goal <= 3 s per audio hour (aim 1.5).
2. The probe of a short clip the run sends as is: a 2-s 16 kHz mono WAV by path (``probe``)
   and from bytes already read (``probe_head``, what the run does for a small file), and an
   MP3 clip (PyAV). Microseconds per clip.
3. A 3-hour 44.1 kHz stereo WAV: ``prepare`` alone in a child process (peak RSS against the
   same child on a 1-minute file: goal <= +64 MB), and ``batchscribe run`` on it against the
   emulator (its own process): wall, peak RSS of the run's process, requests made.

    python benchmarks/prep.py [--hours 3] [--skip-long | --only-long]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from _bench import BENCH_KEY, PYTHON, batchscribe_argv, machine, run_child, table, workdir
from bandwidth import RATE, speech, start_emulator, stats

from batchscribe.audio.prepare import prepare
from batchscribe.audio.probe import PrepPolicy, probe, probe_head


def write_speech_wav(path: Path, seconds: float, channels: int = 2, rate: int = RATE) -> Path:
    """A 16-bit WAV of looped speech (a -66 dBFS floor), written a minute at a time."""
    voice = speech(rate)
    frames = int(seconds * rate)
    rng = np.random.default_rng(3)
    path.parent.mkdir(parents=True, exist_ok=True)
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout=layout)
        for first in range(0, frames, 60 * rate):
            n = min(60 * rate, frames - first)
            index = (first + np.arange(n)) % voice.size
            mono = voice[index] + rng.normal(0, 0.0005, n).astype(np.float32)
            block = np.stack([mono, 0.7 * mono][:channels], axis=1)
            pcm = (np.clip(block, -1, 1) * 32767).astype("<i2").reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def cpu_per_hour(path: Path, seconds: float, policy: PrepPolicy) -> tuple[float, int]:
    """CPU seconds per audio hour to probe and prepare ``path``; the bytes made."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.process_time()
        probe(str(path))
        prepared = prepare(str(path), policy, folder)
        cpu = time.process_time() - started
    return cpu * 3600 / seconds, sum(c.size for c in prepared.chunks)


def probe_cost(root: Path) -> list[list[str]]:
    """Microseconds per probe of short clips (best of 5 rounds of 200)."""
    clip = write_speech_wav(root / "clip.wav", 2.0, channels=1, rate=16000)
    mp3 = root / "clip.mp3"
    with av.open(str(clip)) as source, av.open(str(mp3), "w") as out:
        stream = out.add_stream("mp3", rate=16000, layout="mono")
        for frame in source.decode(audio=0):
            frame.pts = None
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = clip.read_bytes()
    cases = [
        ("probe(path), 2-s mono WAV", lambda: probe(str(clip))),
        ("probe_head(bytes), the same WAV", lambda: probe_head(data, len(data))),
        ("probe(path), 2-s MP3 (PyAV)", lambda: probe(str(mp3))),
    ]
    rows = []
    for name, call in cases:
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            for _ in range(200):
                call()
            best = min(best, (time.process_time() - started) / 200)
        rows.append([name, f"{best * 1e6:.0f}"])
    return rows


_CHILD = (
    "import sys, tempfile; from batchscribe.audio.prepare import prepare; "
    "from batchscribe.audio.probe import PrepPolicy; d = tempfile.mkdtemp(); "
    "p = prepare(sys.argv[1], PrepPolicy(), d); print(len(p.chunks))"
)


def long_file(root: Path, hours: float) -> list[list[str]]:
    """Peak RSS of ``prepare`` on a 1-minute and an ``hours`` file; the run on the long one."""
    short = write_speech_wav(root / "short.wav", 60.0)
    long = write_speech_wav(root / "long" / "long.wav", hours * 3600)
    rows = []
    for name, path in (("prepare, 1 min", short), (f"prepare, {hours:g} h", long)):
        result = run_child([PYTHON, "-c", _CHILD, str(path)])
        rows.append([name, f"{result.maxrss_mb:.0f}", f"{result.wall:.1f}", f"{result.cpu:.1f}",
                     result.stdout.strip() + " chunks"])  # fmt: skip
    emulator, url = start_emulator("100G")
    try:
        out = root / "r.jsonl"
        result = run_child(
            batchscribe_argv("run", long.parent, "--out", out, "--no-progress", "--endpoint",
                             url + "/waves/v1/stt/"),
            env={"SMALLEST_API_KEY": BENCH_KEY},
        )  # fmt: skip
        seen = stats(url)
    finally:
        emulator.terminate()
        emulator.wait()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    record = next(r for r in lines if r.get("id"))  # (the file also holds the run's record)
    if result.code != 0 or record.get("status") != "ok":
        raise SystemExit(f"run: exit {result.code}\n{result.stderr[-2000:]}")
    rows.append([f"batchscribe run, {hours:g} h", f"{result.maxrss_mb:.0f}",
                 f"{result.wall:.1f}", f"{result.cpu:.1f}",
                 f"{seen['requests']} requests, {len(record.get('words') or [])} words, "
                 f"prepared {record.get('prepared')}"])  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--only-long", action="store_true")
    ns = parser.parse_args()
    print(machine())
    with workdir("prep-") as root:
        if ns.only_long:
            print(f"\n3. A {ns.hours:g}-hour 44.1 kHz stereo WAV:")
            print(table(long_file(root, ns.hours),
                        ["case", "peak RSS MB", "wall s", "CPU s", "notes"]))  # fmt: skip
            return
        seconds = 600.0
        wav = write_speech_wav(root / "ten.wav", seconds)
        cpu_per_hour(root / "ten.wav", 30.0, PrepPolicy())  # warm-up: imports, first calls
        rows = []
        for name, policy in (("FLAC (default)", PrepPolicy()),
                             ("Opus 32k", PrepPolicy(transcode="opus"))):  # fmt: skip
            cpu, size = cpu_per_hour(wav, seconds, policy)
            rows.append([name, f"{cpu:.2f}", f"{size / seconds / 1000:.1f}"])
        print(f"\n1. 10 min of 44.1 kHz stereo speech ({wav.stat().st_size / 1e6:.0f} MB WAV):")
        print(table(rows, ["output", "CPU s per audio hour", "KB per audio s"]))
        print("\n2. Probe per short clip:")
        print(table(probe_cost(root), ["case", "CPU us per clip"]))
        if not ns.skip_long:
            print(f"\n3. A {ns.hours:g}-hour 44.1 kHz stereo WAV:")
            print(table(long_file(root, ns.hours),
                        ["case", "peak RSS MB", "wall s", "CPU s", "notes"]))  # fmt: skip


if __name__ == "__main__":
    main()
