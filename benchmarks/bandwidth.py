"""Bandwidth: the audio stage sends fewer bytes, and on a slow link that is the wall time.

The emulator (``batchscribe emulate --link-speed``, its own process) reads request bodies no
faster than a shared link of 8 MB/s. The archive: 44.1 kHz stereo WAVs of 2 minutes each, made
of the sample archive's recorded speech (so FLAC compresses them as it compresses speech).
``batchscribe run`` (a child process, default options: the files are downmixed, resampled to
16 kHz and sent as FLAC) is timed against two floors: the originals' bytes / link speed (what
sending them as they are would take at best, were the service to take stereo) and the prepared
bytes' (the emulator counts the body bytes it read). Also: the CPU the preparation costs (each
file prepared in this process, timed) against the wall time it saves.
Goal: wall <= 0.5 x the originals' floor (aim 0.3).

    python benchmarks/bandwidth.py [--files 16] [--minutes 2] [--link 8M]
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import av
import numpy as np
from _bench import BENCH_KEY, PYTHON, REPO, batchscribe_argv, machine, run_child, table, workdir

from batchscribe.audio.prepare import prepare
from batchscribe.audio.probe import PrepPolicy

RATE = 44100


def speech(rate: int = RATE) -> np.ndarray:
    """The sample archive's recordings, decoded to mono float at ``rate``, 0.6 s apart."""
    pieces = []
    for path in sorted(glob.glob(str(REPO / "sample_manifests" / "archive" / "**" / "*.*"),
                                 recursive=True)):  # fmt: skip
        try:
            container = av.open(path)
        except av.FFmpegError:
            continue
        with container:
            if not container.streams.audio:
                continue
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
            pieces.append(np.zeros(int(0.6 * rate), dtype=np.float32))
    return np.concatenate(pieces)


def write_archive(root: Path, files: int, minutes: float) -> list[Path]:
    """``files`` stereo 44.1 kHz WAVs of ``minutes``, each a different stretch of the speech
    (left as recorded, right 0.7x with a 12-ms delay: a second microphone), under a -66 dBFS
    noise floor (a real room's, so silence is not free for FLAC)."""
    voice = speech()
    need = int(minutes * 60 * RATE)
    loops = np.tile(voice, need // voice.size + 2)
    rng = np.random.default_rng(7)
    paths = []
    for n in range(files):
        start = (n * 7919 * RATE // 100) % voice.size
        left = loops[start : start + need] + rng.normal(0, 0.0005, need).astype(np.float32)
        right = 0.7 * np.roll(left, int(0.012 * RATE))
        pcm = (np.clip(np.stack([left, right], axis=1), -1, 1) * 32767).astype("<i2")
        path = root / "archive" / f"call-{n:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w", format="wav") as out:
            stream = out.add_stream("pcm_s16le", rate=RATE, layout="stereo")
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="stereo")
            frame.sample_rate = RATE
            for packet in stream.encode(frame):
                out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        paths.append(path)
    return paths


def start_emulator(link: str) -> tuple[subprocess.Popen[str], str]:
    """``batchscribe emulate`` on a free loopback port: the process and its URL."""
    proc = subprocess.Popen(
        [PYTHON, "-u", "-m", "batchscribe", "emulate", "--port", "0", "--link-speed", link,
         "--key", BENCH_KEY],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"emulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1].strip()


def stats(url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=10) as answer:
        result: dict[str, object] = json.load(answer)
        return result


def prep_cpu(paths: list[Path]) -> float:
    """CPU seconds to prepare every file (default policy), one after another in this process."""
    started = time.process_time()
    for path in paths:
        with tempfile.TemporaryDirectory() as folder:
            prepare(str(path), PrepPolicy(), folder)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--link", default="8M", help="the emulator's link speed (bytes/s)")
    ns = parser.parse_args()
    speed = float(ns.link.upper().rstrip("B").replace("M", "e6").replace("K", "e3"))
    with workdir("bandwidth-") as root:
        paths = write_archive(root, ns.files, ns.minutes)
        original = sum(p.stat().st_size for p in paths)
        cpu = prep_cpu(paths)
        emulator, url = start_emulator(ns.link)
        try:
            out = root / "r.jsonl"
            result = run_child(
                batchscribe_argv("run", root / "archive", "--out", out, "--no-progress",
                                 "--endpoint", url + "/waves/v1/stt/"),
                env={"SMALLEST_API_KEY": BENCH_KEY},
            )  # fmt: skip
            seen = stats(url)
        finally:
            emulator.terminate()
            emulator.wait()
        records = [json.loads(line) for line in out.read_text().splitlines()]
        ok = sum(r.get("status") == "ok" for r in records)
        if result.code != 0 or ok != ns.files:
            raise SystemExit(f"run: exit {result.code}, {ok} ok\n{result.stderr[-2000:]}")
    sent = int(seen["body_bytes"])  # type: ignore[call-overload]
    floor_original, floor_sent = original / speed, sent / speed
    print(machine())
    print(f"{ns.files} files x {ns.minutes:g} min, 44.1 kHz stereo WAV; link {speed / 1e6:g} MB/s; "
          f"requests {seen['requests']}")  # fmt: skip
    rows = [
        ["originals (as is)", f"{original / 1e6:.1f}", f"{floor_original:.1f}", "-", "1.00"],
        ["prepared (FLAC 16 kHz mono)", f"{sent / 1e6:.1f}", f"{floor_sent:.1f}", "-",
         f"{floor_sent / floor_original:.3f}"],
        ["batchscribe run (default)", f"{sent / 1e6:.1f}", "-", f"{result.wall:.1f}",
         f"{result.wall / floor_original:.3f}"],
    ]  # fmt: skip
    print(table(rows, ["what", "MB", "link floor s", "wall s", "x originals' floor"]))
    saved = floor_original - result.wall
    print(f"preparation CPU: {cpu:.2f} s for {ns.files * ns.minutes / 60:.2f} audio h "
          f"({cpu / (ns.files * ns.minutes / 60):.2f} s per audio hour); wall saved vs the "
          f"originals' floor: {saved:.1f} s; client process CPU {result.cpu:.1f} s "
          "(the pool's workers are the forkserver's children: not in it)")  # fmt: skip


if __name__ == "__main__":
    main()
