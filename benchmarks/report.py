"""Reading results: `batchscribe report` (text, --json, --html) and `failed` on a big file.

A generated results file of N items (default 1,000,000) as two runs leave it: the first run
finishes every item (5% failed: 5xx, 429, timeout), a second one retries half the failures,
whose new records supersede the failed ones; each ok record carries the server's processing
time, and each run its run record. Every command runs as a child process; figures: wall
time, CPU time and peak RSS (VmHWM). Targets for 1,000,000 items: wall < 4 s, peak RSS a few
tens of MB.

    python benchmarks/report.py [--n 1000000] [--repeat 2] [--results FILE]

``--results FILE`` measures an existing results file instead (nothing is generated).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _bench import batchscribe_argv, machine, run_child, table, workdir

_RECORD = (
    b'{"id":"%(id)s","status":"%(status)s","source":"/srv/archive/%(id)s.wav","size":126930,'
    b'"mtime":1764028140.0,"attempts":%(attempts)d,"http_status":%(http)d,"error":%(error)s,'
    b'"cause":%(cause)s,"finished_at":"%(at)s","run":"%(run)s"%(payload)s}\n'
)
_PAYLOAD = (
    b',"transcription":"The weather today is sunny with a light breeze.","words":[{"start":0.48,'
    b'"end":0.9,"word":"The","confidence":0.98}],"utterances":[],"duration":%(duration)d.%(tenth)d,'
    b'"request_id":"%(request)x","response":{"status":"success","language":"en",'
    b'"metadata":{"processing_time_ms":%(ms)d}}'
)
_FAILURES = (
    (503, b'"HTTP 503: unavailable"', b'"5xx"'),
    (429, b'"HTTP 429: slow down"', b'"429"'),
    (0, b'"read timeout after 120 s"', b'"timeout"'),
)
_RUN = (
    b'{"event":"run","started_at":"%s","finished_at":"%s","run_id":"%s","ok":%d,"failed":%d,'
    b'"retries":%d,"wall_seconds":%.1f,"items_per_second":%.1f,"interrupted":false}\n'
)


def _stamp(second: float) -> bytes:
    whole = int(second)
    day, rest = divmod(whole, 86400)
    return b"2026-11-%02dT%02d:%02d:%02d.%03dZ" % (
        25 + day, rest // 3600, rest // 60 % 60, rest % 60, int((second - whole) * 1000)
    )  # fmt: skip


def _record(i: int, run: bytes, second: float, failed: bool, attempts: int) -> bytes:
    fields = {
        b"id": b"2019/clip-%07d" % i, b"status": b"ok", b"attempts": attempts, b"http": 200,
        b"error": b"null", b"cause": b"null", b"at": _stamp(second), b"run": run, b"payload": b"",
    }  # fmt: skip
    if failed:
        http, error, cause = _FAILURES[i % len(_FAILURES)]
        fields.update({b"status": b"failed", b"http": http, b"error": error, b"cause": cause})
    else:
        fields[b"payload"] = _PAYLOAD % {
            b"duration": 2 + i % 300, b"tenth": i % 10, b"request": i, b"ms": 200 + i * 7919 % 9000,
        }  # fmt: skip
    return (_RECORD % fields).replace(b'http_status":0', b'http_status":null')


def _attempts(i: int) -> int:
    """Failures took 4 attempts, one item in 50 took 2, the rest 1."""
    return 4 if i % 20 == 7 else 2 if i % 50 == 0 else 1


def make_results(path: Path, n: int) -> int:
    """Write the two runs' results for ``n`` items to ``path``; return the number of lines."""
    first, second = b"a1b2c3d4e5f6", b"0f9e8d7c6b5a"
    failed = [i for i in range(n) if i % 20 == 7]
    retried = failed[::2]
    rate = 120.0  # items a second
    with open(path, "wb") as out:
        step = 100_000
        for lo in range(0, n, step):
            out.write(b"".join(
                _record(i, first, 3600 + i / rate, i % 20 == 7, _attempts(i))
                for i in range(lo, min(n, lo + step))
            ))  # fmt: skip
        end = 3600 + n / rate
        out.write(_RUN % (_stamp(3600), _stamp(end), first, n - len(failed), len(failed),
                          3 * len(failed), n / rate, rate))  # fmt: skip
        start = end + 600
        out.write(b"".join(
            _record(i, second, start + k / rate, False, 2) for k, i in enumerate(retried)
        ))  # fmt: skip
        out.write(_RUN % (_stamp(start), _stamp(start + len(retried) / rate), second, len(retried),
                          0, len(retried), len(retried) / rate, rate))  # fmt: skip
    return n + len(retried) + 2


def measure(results: Path, repeat: int) -> list[list[str]]:
    rows = []
    html = results.with_suffix(".html")
    commands = [
        ("report", ["report", results]),
        ("report --json", ["report", "--json", results]),
        ("report --html", ["report", results, "--html", html]),
        ("failed", ["failed", results]),
    ]
    for name, args in commands:
        for i in range(repeat):
            result = run_child(batchscribe_argv(*args), cwd=results.parent)
            if result.code != 0:
                raise SystemExit(f"{name} exited {result.code}:\n{result.stderr}")
            first = (result.stdout.splitlines() or result.stderr.splitlines() or [""])[0]
            rows.append([f"{name} (run {i + 1})", f"{result.wall:.2f}", f"{result.cpu:.2f}",
                         f"{result.maxrss_mb:.1f}", first[:80]])  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="items in the generated file")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each command")
    parser.add_argument("--results", type=Path, help="measure this results file instead")
    ns = parser.parse_args()
    print(f"# report  {machine()}")
    header = ["command", "wall s", "CPU s", "peak RSS MB", "first line of output"]
    if ns.results is not None:
        print(f"{ns.results}: {ns.results.stat().st_size / 1e6:.0f} MB")
        print(table(measure(ns.results.resolve(), ns.repeat), header))
        return
    with workdir("bench-report-") as root:
        started = time.monotonic()
        path = root / "big.results.jsonl"
        lines = make_results(path, ns.n)
        print(f"generated {ns.n:,} items, {lines:,} lines, {path.stat().st_size / 1e6:.0f} MB "
              f"in {time.monotonic() - started:.1f} s")  # fmt: skip
        print(table(measure(path, ns.repeat), header))


if __name__ == "__main__":
    main()
