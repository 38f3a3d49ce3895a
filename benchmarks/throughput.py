"""Throughput: batchscribe vs a minimal aiohttp loop vs the vendor SDK, side by side.

The same N tiny WAVs, the same loopback server (``loopback_server.py``, its own process: fixed
latency, canned answer), three clients, each a child process measured from spawn to exit:

- **batchscribe**: ``batchscribe run MANIFEST --out R --endpoint URL --no-progress -j C`` as a
  user runs it (SMALLEST_API_KEY set);
- **lean**: ``lean_client.py``, a minimal aiohttp loop with a semaphore (the floor of Python
  overhead: no retry, resume or progress);
- **sdk**: ``sdk_client.py``, the ``smallestai`` SDK's async client driven by a semaphore.

Cases: latency 0 ms at concurrency 64 (CPU-bound), 50 ms at 16 and at 64 (latency-bound), and
**web**: the independent check's set-up (2,000 clips, 64 in flight, no latency, a plain
``aiohttp.web`` server with a canned answer: ``aiohttp_server.py``), where batchscribe is the
installed console script (``.venv/bin/batchscribe run ...``) and both clients start as the
environment makes them (no shared bytecode cache: an editable install under
``PYTHONDONTWRITEBYTECODE=1`` compiles batchscribe at every start, as the check's runs did).
Each client runs ``--repeat`` times per case, interleaved; the best wall time counts. The CPU
ratio (client CPU seconds, spawn to exit) is printed beside the wall ratios: on a loaded
machine it moves least.

Where a request slot's time goes: the server reports, per client run, its mean *hold* (request
arrived to response sent: the latency plus its own lateness) and the clients' mean *turnaround*
(a connection's response sent to its next request arriving); the slot column is the in-run wall
x concurrency / N, about hold + turnaround.

``--baseline DIR`` adds ``batchscribe@base``: the same command from another checkout (e.g. the
last commit, copied aside), interleaved with the others, to measure a change side by side.
``--server PATH`` runs another loopback server script (e.g. an older one).

Children run with a bytecode cache in the work folder, warmed by one small run of each client
before anything is timed: a user's installed package is compiled once, at install, whereas a
``PYTHONDONTWRITEBYTECODE=1`` environment (this sandbox's) would recompile batchscribe's
9,500 lines at every start (+55 ms a run here). ``--no-bytecode-cache`` measures that way.

    python benchmarks/throughput.py [--n 3000] [--quick] [--repeat 3] [--no-sdk]
        [--case 50/16] [--case web] [--web-n 2000] [--baseline DIR] [--server PATH]
        [--no-bytecode-cache]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from _bench import (
    BENCH_KEY,
    HERE,
    PYTHON,
    REPO,
    ChildResult,
    LoopbackServer,
    batchscribe_argv,
    machine,
    make_clips,
    run_child,
    table,
    workdir,
)

BS = "batchscribe"
BASE = "batchscribe@base"
WEB_SERVER = HERE / "aiohttp_server.py"


@dataclass(frozen=True)
class Case:
    """One server set-up the clients run against, side by side."""

    latency: float  # ms
    concurrency: int
    web: bool = False  # the independent check's set-up (see the module's docstring)

    @property
    def name(self) -> str:
        return f"{'web, ' if self.web else ''}{self.latency:g} ms, c={self.concurrency}"


CASES = [Case(0.0, 64), Case(50.0, 16), Case(50.0, 64), Case(0.0, 64, web=True)]


def installed_batchscribe() -> list[str]:
    """The console script pip installed next to this interpreter (``python -m`` if none)."""
    script = Path(PYTHON).parent / "batchscribe"
    return [str(script)] if script.exists() else [PYTHON, "-m", "batchscribe"]


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
    kind: str,
    manifest: Path,
    server: LoopbackServer,
    concurrency: int,
    out: Path,
    baseline: Path | None = None,
    bytecode_cache: Path | None = None,
    installed: bool = False,
) -> ChildResult:
    """Run one client to the end (SystemExit if it fails); ``installed``: batchscribe as the
    console script, not ``python -m``."""
    env = {"SMALLEST_API_KEY": BENCH_KEY}
    # ``python -m`` puts the working folder first on sys.path: run each checkout from its own.
    cwd = REPO
    if kind == BASE:
        assert baseline is not None
        env["PYTHONPATH"] = str(baseline)
        cwd = baseline
    if kind in (BS, BASE):
        argv = batchscribe_argv(
            "run", manifest, "--out", out, "--endpoint", server.endpoint, "--no-progress",
            "--concurrency", concurrency,
        )  # fmt: skip
        if installed:
            argv[:3] = installed_batchscribe()
    elif kind == "lean":
        argv = [PYTHON, str(HERE / "lean_client.py"), str(manifest), "--endpoint",
                server.endpoint, "-j", str(concurrency), "--out", str(out)]  # fmt: skip
    else:
        argv = [PYTHON, str(HERE / "sdk_client.py"), str(manifest), "--base-url", server.url,
                "-j", str(concurrency), "--out", str(out)]  # fmt: skip
    result = run_child(argv, env=env, cwd=cwd, bytecode_cache=bytecode_cache)
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
    parser.add_argument("--only", choices=[BS, "lean", "sdk"], action="append")
    parser.add_argument(
        "--case", action="append", metavar="MS/C", help="only these cases, e.g. 0/64, web"
    )
    parser.add_argument("--web-n", type=int, default=2000, help="items in the web case")
    parser.add_argument(
        "--baseline", type=Path, metavar="DIR", help="also run batchscribe from this checkout"
    )
    parser.add_argument(
        "--server", type=Path, default=HERE / "loopback_server.py", help="the server script"
    )
    parser.add_argument(
        "--no-bytecode-cache", action="store_true", help="let children compile as the env says"
    )
    ns = parser.parse_args()
    n = n_default = 600 if ns.quick else ns.n
    repeat = 1 if ns.quick else ns.repeat
    kinds = ns.only or [BS, "lean"] + ([] if ns.no_sdk else ["sdk"])
    if ns.baseline is not None:
        kinds.insert(kinds.index(BS) + 1 if BS in kinds else 0, BASE)
    print(
        f"# throughput  {machine()}  n={n} (web: {ns.web_n}) repeat={repeat}  "
        f"server={ns.server.name} (web: {WEB_SERVER.name})"
    )
    rows = []
    ratios = []
    loads = [os.getloadavg()[0]]
    with workdir("bench-throughput-") as root:
        cache = None if ns.no_bytecode_cache else root / "pycache"
        # Warm-up, not timed: each client once (fills the bytecode cache and the page cache).
        small = make_clips(root, 20)
        with LoopbackServer(0, script=ns.server) as server:
            for kind in kinds:
                out = root / f"warm-up-{kind}.jsonl"
                run_client(kind, small, server, 4, out, ns.baseline, cache)
                out.unlink()
        cases = CASES
        if ns.case:
            cases = [
                Case(0.0, 64, web=True) if c == "web"
                else Case(float(c.split("/")[0]), int(c.split("/")[1]))
                for c in ns.case
            ]  # fmt: skip
        for case in cases:
            latency, concurrency = case.latency, case.concurrency
            n = ns.web_n if case.web else n_default
            manifest = make_clips(root, n)
            # The web case: the environment's own start-up (no shared cache), as a user's.
            cache_here = None if case.web else cache
            best: dict[str, ChildResult] = {}
            inrun: dict[str, float] = {}
            server_cpu: dict[str, float] = {}
            held: dict[str, dict[str, float]] = {}
            walls: dict[str, list[float]] = {}
            inruns: dict[str, list[float]] = {}
            cpus: dict[str, list[float]] = {}
            script = WEB_SERVER if case.web else ns.server
            with LoopbackServer(latency, script=script) as server:
                rtt = measure_rtt(server)
                for r in range(repeat):
                    for kind in kinds:
                        out = root / f"{kind}-{latency:g}-{concurrency}-{r}.jsonl"
                        before = server.cpu()
                        server.stats(reset=True)
                        result = run_client(
                            kind, manifest, server, concurrency, out, ns.baseline, cache_here,
                            installed=case.web,
                        )  # fmt: skip
                        stats = server.stats(reset=True)
                        done = count_lines(out)
                        if done != n:
                            raise SystemExit(f"{kind}: {done} results, expected {n}")
                        seconds = run_seconds(kind, result, out)
                        out.unlink()
                        if kind not in best or result.wall < best[kind].wall:
                            best[kind] = result
                            server_cpu[kind] = server.cpu() - before
                            held[kind] = stats
                        inrun[kind] = min(inrun.get(kind, seconds), seconds)
                        walls.setdefault(kind, []).append(result.wall)
                        inruns.setdefault(kind, []).append(seconds)
                        cpus.setdefault(kind, []).append(result.cpu)
                        loads.append(os.getloadavg()[0])
            ideal = n * latency / 1000 / concurrency
            for kind, result in best.items():
                hold = held[kind].get("hold_ms")
                turnaround = held[kind].get("turnaround_ms")
                rows.append([
                    f"{'web ' if case.web else ''}{latency:g} ms", concurrency, kind,
                    f"{result.wall:.2f}",
                    f"{inrun[kind]:.2f}", f"{n / result.wall:.0f}", f"{n / inrun[kind]:.0f}",
                    f"{inrun[kind] * concurrency / n * 1000:.2f}",
                    "-" if hold is None else f"{hold:.2f}",
                    "-" if turnaround is None else f"{turnaround:.2f}",
                    f"{result.cpu / n * 1e6:.0f}", f"{server_cpu[kind] / n * 1e6:.0f}",
                    f"{result.maxrss_mb:.0f}",
                ])  # fmt: skip
            med = {kind: statistics.median(v) for kind, v in walls.items()}
            med_cpu = {kind: statistics.median(v) for kind, v in cpus.items()}
            med_inrun = {kind: statistics.median(v) for kind, v in inruns.items()}
            for mine in (BS, BASE):
                bs = best.get(mine)
                if bs is None:
                    continue
                # (name, other's best process and in-run, their medians, CPU median, target)
                compare: list[tuple[str, float, float, float, float, float, str]] = []
                for other, name, target in (
                    (BASE, f"{BS}/{BASE}", "(change)"),
                    ("lean", f"{mine}/lean", ">= 0.90 (aim 0.95)"),
                    ("sdk", f"{mine}/SDK", ">= 5" if latency == 0 else "(info)"),
                ):
                    if other in best and other != mine and (other != BASE or mine == BS):
                        compare.append((name, best[other].wall, inrun[other], med[other],
                                        med_inrun[other], med_cpu[other], target))  # fmt: skip
                if latency > 0:
                    target = f">= 0.95 (ideal {ideal:.2f} s)"
                    compare.append((f"{mine}/ideal", ideal, ideal, ideal, ideal, 0.0, target))
                    # The same with the server's real round trip (its timer and HTTP on top of
                    # the nominal latency), measured one request at a time.
                    real = n * rtt / concurrency
                    compare.append((f"{mine}/ideal at RTT {rtt * 1000:.2f} ms", real, real,
                                    real, real, 0.0, f"(info: ideal {real:.2f} s)"))  # fmt: skip
                for name, o_wall, o_inrun, o_med, o_med_inrun, o_cpu, target in compare:
                    ratios.append([
                        case.name, name, f"{o_wall / bs.wall:.3f}",
                        f"{o_inrun / inrun[mine]:.3f}", f"{o_med / med[mine]:.3f}",
                        f"{o_med_inrun / med_inrun[mine]:.3f}",
                        f"{o_cpu / med_cpu[mine]:.3f}" if o_cpu else "-", target,
                    ])  # fmt: skip
    print()
    print(table(rows, ["latency", "conc", "client", "process wall s", "in-run wall s",
                       "items/s (process)", "items/s (in-run)", "slot ms",
                       "server hold ms", "client turnaround ms", "client CPU us/item",
                       "server CPU us/item", "peak RSS MB"]))  # fmt: skip
    print()
    print(table(ratios, ["case", "ratio (throughput)", "process (best)", "in-run (best)",
                         "process (median)", "in-run (median)", "CPU (median)",
                         "target"]))  # fmt: skip
    print(
        f"\nload average (1 min) during the runs: {min(loads):.2f} to {max(loads):.2f}\n"
        "process: spawn to exit, start-up included (what a user waits for); in-run: the "
        "client's own timing of its work (batchscribe: the run record's wall_seconds).\n"
        "The first table is each client's fastest run (CPU, hold and turnaround of that run); "
        "the ratios are of the fastest runs and of the medians of all runs; CPU: the other's "
        "median CPU seconds (spawn to exit) over this one's."
    )


def run_seconds(kind: str, result: ChildResult, out: Path) -> float:
    """The client's own timing of its run (without interpreter start-up and imports)."""
    if kind in (BS, BASE):
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
