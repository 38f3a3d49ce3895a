"""Throughput: batchscribe vs a minimal aiohttp loop vs the vendor SDK, side by side.

The same N tiny WAVs, the same loopback server (``loopback_server.py``, its own process: fixed
latency, canned answer), three clients, each a child process measured from spawn to exit:

- **batchscribe**: ``batchscribe run MANIFEST --out R --endpoint URL --no-progress -j C`` as a
  user runs it (SMALLEST_API_KEY set);
- **lean**: ``lean_client.py``, a minimal aiohttp loop with a semaphore (the floor of Python
  overhead: no retry, resume or progress);
- **sdk**: ``sdk_client.py``, the ``smallestai`` SDK's async client driven by a semaphore.

Cases: latency 0 ms at concurrency 64 (CPU-bound), 50 ms at 16 and at 64 (latency-bound).
Each client runs ``--repeat`` times per case, interleaved; the best wall time counts.

    python benchmarks/throughput.py [--n 3000] [--quick] [--repeat 3] [--no-sdk]
"""

from __future__ import annotations

import argparse
import http.client
import re
import statistics
import sys
import time
from pathlib import Path

import orjson
from _bench import (
    BENCH_KEY,
    HERE,
    PYTHON,
    ChildResult,
    LoopbackServer,
    batchscribe_argv,
    machine,
    make_clips,
    run_child,
    table,
    workdir,
)

CASES = [(0.0, 64), (50.0, 16), (50.0, 64)]


def count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.startswith(b'{"id"'))


def measure_rtt(server: LoopbackServer, count: int = 40) -> float:
    """The median round trip of one small request at a time (keep-alive), in seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port)
    body = b"RIFF" + b"\0" * 1640
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request("POST", "/api/v1/pulse/get_text?model=pulse", body=body,
                         headers={"Content-Type": "audio/wav"})  # fmt: skip
            conn.getresponse().read()
            times.append(time.perf_counter() - started)
    finally:
        conn.close()
    return statistics.median(times)


def run_client(
    kind: str, manifest: Path, server: LoopbackServer, concurrency: int, out: Path
) -> ChildResult:
    env = {"SMALLEST_API_KEY": BENCH_KEY}
    if kind == "batchscribe":
        argv = batchscribe_argv(
            "run", manifest, "--out", out, "--endpoint", server.endpoint, "--no-progress",
            "--concurrency", concurrency,
        )  # fmt: skip
    elif kind == "lean":
        argv = [PYTHON, str(HERE / "lean_client.py"), str(manifest), "--endpoint",
                server.endpoint, "-j", str(concurrency), "--out", str(out)]  # fmt: skip
    else:
        argv = [PYTHON, str(HERE / "sdk_client.py"), str(manifest), "--base-url", server.url,
                "-j", str(concurrency), "--out", str(out)]  # fmt: skip
    result = run_child(argv, env=env)
    if result.code != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"{kind} exited {result.code}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="items per run (default 3000)")
    parser.add_argument("--quick", action="store_true", help="n=600, one repeat")
    parser.add_argument("--repeat", type=int, default=3, help="runs per client and case")
    parser.add_argument("--no-sdk", action="store_true", help="skip the SDK client")
    parser.add_argument("--only", choices=["batchscribe", "lean", "sdk"], action="append")
    parser.add_argument(
        "--case", action="append", metavar="MS/C", help="only these cases, e.g. 0/64"
    )
    ns = parser.parse_args()
    n = 600 if ns.quick else ns.n
    repeat = 1 if ns.quick else ns.repeat
    kinds = ns.only or ["batchscribe", "lean"] + ([] if ns.no_sdk else ["sdk"])
    print(f"# throughput  {machine()}  n={n} repeat={repeat}")
    rows = []
    ratios = []
    with workdir("bench-throughput-") as root:
        manifest = make_clips(root, n)
        cases = CASES
        if ns.case:
            cases = [(float(c.split("/")[0]), int(c.split("/")[1])) for c in ns.case]
        for latency, concurrency in cases:
            best: dict[str, ChildResult] = {}
            inrun: dict[str, float] = {}
            server_cpu: dict[str, float] = {}
            with LoopbackServer(latency) as server:
                rtt = measure_rtt(server)
                for r in range(repeat):
                    for kind in kinds:
                        out = root / f"{kind}-{latency:g}-{concurrency}-{r}.jsonl"
                        before = server.cpu()
                        result = run_client(kind, manifest, server, concurrency, out)
                        done = count_lines(out)
                        if done != n:
                            raise SystemExit(f"{kind}: {done} results, expected {n}")
                        seconds = run_seconds(kind, result, out)
                        out.unlink()
                        if kind not in best or result.wall < best[kind].wall:
                            best[kind] = result
                            server_cpu[kind] = server.cpu() - before
                        inrun[kind] = min(inrun.get(kind, seconds), seconds)
            ideal = n * latency / 1000 / concurrency
            for kind, result in best.items():
                rows.append([
                    f"{latency:g} ms", concurrency, kind, f"{result.wall:.2f}",
                    f"{inrun[kind]:.2f}", f"{n / result.wall:.0f}", f"{n / inrun[kind]:.0f}",
                    f"{result.cpu / n * 1e6:.0f}", f"{server_cpu[kind] / n * 1e6:.0f}",
                    f"{result.maxrss_mb:.0f}",
                ])  # fmt: skip
            bs = best.get("batchscribe")
            if bs is None:
                continue
            case = f"{latency:g} ms, c={concurrency}"

            compare = []
            if "lean" in best:
                compare.append(("batchscribe/lean", best["lean"].wall, inrun["lean"],
                                ">= 0.90 (aim 0.95)"))  # fmt: skip
            if latency > 0:
                compare.append(
                    ("batchscribe/ideal", ideal, ideal, f">= 0.95 (ideal {ideal:.2f} s)")
                )
                # The same with the server's real round trip (its timer and HTTP on top of the
                # nominal latency), measured one request at a time: what no client can beat.
                real = n * rtt / concurrency
                compare.append((f"batchscribe/ideal at RTT {rtt * 1000:.1f} ms", real, real,
                                f"(info: ideal {real:.2f} s)"))  # fmt: skip
            if "sdk" in best:
                compare.append(("batchscribe/SDK", best["sdk"].wall, inrun["sdk"],
                                ">= 5" if latency == 0 else "(info)"))  # fmt: skip
            for name, other, other_inrun, target in compare:
                ratios.append([case, name, f"{other / bs.wall:.3f}",
                               f"{other_inrun / inrun['batchscribe']:.3f}", target])  # fmt: skip
    print()
    print(table(rows, ["latency", "conc", "client", "process wall s", "in-run wall s",
                       "items/s (process)", "items/s (in-run)", "client CPU us/item",
                       "server CPU us/item", "peak RSS MB"]))  # fmt: skip
    print()
    print(table(ratios, ["case", "ratio (throughput)", "process", "in-run", "target"]))
    print(
        "\nprocess: spawn to exit, start-up included (what a user waits for); in-run: the "
        "client's own timing of its work (batchscribe: the run record's wall_seconds)."
    )


def run_seconds(kind: str, result: ChildResult, out: Path) -> float:
    """The client's own timing of its run (without interpreter start-up and imports)."""
    if kind == "batchscribe":
        with open(out, "rb") as handle:
            for line in handle:
                if line.startswith(b'{"event":"run"'):
                    return float(orjson.loads(line)["wall_seconds"])
        raise SystemExit("batchscribe: no run record in the results")
    match = re.search(r"items in ([0-9.]+) s", result.stdout)
    if match is None:
        raise SystemExit(f"{kind}: no timing in its output: {result.stdout!r}")
    return float(match.group(1))


if __name__ == "__main__":
    main()
