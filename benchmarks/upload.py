"""Upload memory: a 200 MB file costs no more memory than a small one (it is streamed).

``batchscribe run`` (a child process) sends one item to the minimal loopback server
(``loopback_server.py``, which drains bodies without keeping them): first a small WAV, then a
200 MB WAV (a real header over a sparse file, so it costs no disk). Figures: each run's peak
RSS (``os.wait4``) and the difference. Target: the big upload adds under 20 MB.

    python benchmarks/upload.py [--mb 200] [--repeat 2]
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

from _bench import (
    BENCH_KEY,
    LoopbackServer,
    batchscribe_argv,
    machine,
    run_child,
    table,
    wav_bytes,
    workdir,
)


def sparse_wav(path: Path, size: int) -> None:
    """A WAV of ``size`` bytes: a valid 16 kHz mono header, then silence (a sparse file)."""
    data = size - 44
    header = b"RIFF" + struct.pack("<I", size - 8) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16
    ) + b"data" + struct.pack("<I", data)  # fmt: skip
    with open(path, "wb") as out:
        out.write(header)
        out.truncate(size)


def run_one(server: LoopbackServer, root: Path, name: str, audio: Path) -> tuple[float, float]:
    manifest = root / f"{name}.jsonl"
    manifest.write_text(f'{{"id": "{name}", "path": "{audio}"}}\n')
    out = root / f"{name}.results.jsonl"
    out.unlink(missing_ok=True)
    result = run_child(
        batchscribe_argv("run", manifest, "--out", out, "--no-progress", "--endpoint",
                         server.endpoint),
        env={"SMALLEST_API_KEY": BENCH_KEY},
    )  # fmt: skip
    if result.code != 0 or '"status":"ok"' not in out.read_text():
        raise SystemExit(f"{name}: exit {result.code}\n{result.stdout}{result.stderr}")
    return result.maxrss_mb, result.wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the big file in MB")
    parser.add_argument("--repeat", type=int, default=2)
    ns = parser.parse_args()
    size = ns.mb * 1000 * 1000
    print(f"# upload  {machine()}  big={ns.mb} MB")
    rows = []
    with workdir("bench-upload-") as root, LoopbackServer(0) as server:
        small = root / "small.wav"
        small.write_bytes(wav_bytes(0.5, 440))
        big = root / "big.wav"
        sparse_wav(big, size)
        for i in range(ns.repeat):
            small_rss, _ = run_one(server, root, "small", small)
            big_rss, big_wall = run_one(server, root, "big", big)
            grew = big_rss - small_rss
            speed = f"{big_wall:.2f} s ({ns.mb / big_wall:.0f} MB/s)"
            rows.append(
                [i + 1, f"{small_rss:.1f}", f"{big_rss:.1f}", f"{grew:+.1f}", "< +20", speed]
            )
    print()
    print(table(rows, ["run", "small: peak RSS MB", f"{ns.mb} MB: peak RSS MB", "difference",
                       "target", f"{ns.mb} MB upload wall"]))  # fmt: skip


if __name__ == "__main__":
    main()
