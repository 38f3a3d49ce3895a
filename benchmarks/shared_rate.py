"""A fleet against Pulse's 25/min with ``--rate-store``: N processes, one Redis, one limit.

Time-scaled by 12 (as ratelimit.py's 25/min cases, by 10 there): the emulator's token bucket
allows 5 starts/s with a burst of one and no delay header, answers take 1.5 s / 12; the figures
(shares of the limit, 429 share) are those of the real case. Each case runs N shards of one
manifest (``--shard K/N -j 4``) at once and reports, over the whole run (start-up included):
the ok items per second as a share of the limit, and 429 answers / all answers.

Cases: 1 process; 2 and 3 processes sharing one ``--rate-store`` (learned); 2 processes with
no store (each learns on its own); 2 processes at ``--rate 25/min`` (scaled) with the store.
Needs ``redis-server`` on PATH.

    python benchmarks/shared_rate.py [--items 120]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from _bench import BENCH_KEY, batchscribe_argv, machine, make_clips, table, workdir

SCALE = 12
LIMIT = 25 / 60 * SCALE  # starts per second


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_case(root: Path, items: int, n: int, store: str | None, *extra: str) -> list[object]:
    """One fleet of ``n`` processes; a table row."""
    from batchscribe.emulator import EmulatorConfig, EmulatorThread

    manifest = make_clips(root, items, seconds=0.05)
    emu = EmulatorThread(EmulatorConfig(
        key=BENCH_KEY, seed=7, latency_ms=1500 / SCALE, rate_limit=LIMIT, rate_burst=1.0,
        rate_headers=False,
    ))  # fmt: skip
    emu.start()
    out = root / f"out-{time.monotonic_ns()}"
    out.mkdir()
    env = dict(os.environ, SMALLEST_API_KEY=BENCH_KEY)
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            batchscribe_argv(
                "run",
                manifest,
                "--out",
                out / "r.{shard}.jsonl",
                "--shard",
                f"{k}/{n}",
                "-j",
                "4",
                "--endpoint",
                emu.endpoint(),
                "--no-progress",
                *(["--rate-store", store] if store else []),
                *extra,
            ),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for k in range(n)
    ]
    codes = [proc.wait() for proc in procs]
    took = time.monotonic() - started
    stats = emu.stats()
    emu.stop()
    refused = stats["rate_limited_by"]["rate_limit"]
    name = (
        f"{n} process(es)" + (", --rate-store" if store else "") + "".join(f" {a}" for a in extra)
    )
    return [name, f"{items / took / LIMIT:.2f}", f"{refused / stats['requests']:.1%}",
            f"{took:.1f}", " ".join(map(str, codes))]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=120)
    args = parser.parse_args()
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("redis-server is not on PATH")
    rows = []
    with workdir("bs-shared-") as root:
        for n, shared, extra in [(1, False, ()), (2, True, ()), (3, True, ()), (2, False, ()),
                                 (2, True, ("--rate", f"{LIMIT:g}/s"))]:  # fmt: skip
            port = _free_port()
            server = subprocess.Popen(
                [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(root)],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(0.3)
            try:
                store = f"redis://127.0.0.1:{port}/0" if shared else None
                rows.append(run_case(root, args.items, n, store, *extra))
            finally:
                server.kill()
                server.wait()
    print(f"{machine()}; {args.items} items, 25/min time-scaled by {SCALE}, whole run")
    print(table(rows, ["case", "ok/s / limit", "429 share", "seconds", "exit codes"]))


if __name__ == "__main__":
    main()
