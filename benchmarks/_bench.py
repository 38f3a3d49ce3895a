"""Shared helpers for the benchmark scripts: the machine, generated clips, child processes.

Benchmarks are scripts, not tests: they measure wall time and memory on this machine and print
figures side by side. Every client runs as a child process, measured with ``os.wait4`` (its own
CPU time and peak RSS, not the parent's).
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import io
import math
import os
import platform
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable
BENCH_KEY = "sk-bench-0000000000000000"


def machine() -> str:
    """One line naming the machine, Python and the date (for benchmarks/README.md)."""
    return (
        f"nproc={os.cpu_count()} python={platform.python_version()} "
        f"arch={platform.machine()} date={datetime.date.today().isoformat()}"
    )


def wav_bytes(seconds: float, freq: float, rate: int = 8000) -> bytes:
    """A 16-bit mono sine tone as a complete WAV file."""
    frames = round(seconds * rate)
    step = 2 * math.pi * freq / rate
    pcm = struct.pack(f"<{frames}h", *(round(9000 * math.sin(step * i)) for i in range(frames)))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def make_clips(root: Path, n: int, seconds: float = 0.1) -> Path:
    """``n`` distinct tiny WAVs under ``root/audio`` and a JSONL manifest naming them."""
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        name = f"clip-{i:06d}.wav"
        path = audio / name
        if not path.exists():
            path.write_bytes(wav_bytes(seconds, 200 + (i % 2000) + i / 7919))
        lines.append(orjson.dumps({"id": f"clip-{i:06d}", "path": f"audio/{name}"}))
    manifest = root / f"manifest-{n}.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    return manifest


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (from /proc)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class LoopbackServer:
    """``benchmarks/loopback_server.py`` in its own process."""

    latency_ms: float
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    script: Path = HERE / "loopback_server.py"

    def __enter__(self) -> LoopbackServer:
        self.proc = subprocess.Popen(
            [PYTHON, str(self.script), "--latency-ms", str(self.latency_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"loopback server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{self.url}/api/v1/pulse/get_text"

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def stats(self, reset: bool = False) -> dict[str, Any]:
        """The server's ``/_stats`` (requests; mean hold and turnaround in ms), then reset."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/_stats?reset=1" if reset else "/_stats")
            stats: dict[str, Any] = orjson.loads(conn.getresponse().read())
        finally:
            conn.close()
        return stats

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class ChildResult:
    """What a child process cost: wall and CPU seconds, peak RSS, exit code and output."""

    wall: float
    user: float
    system: float
    maxrss_mb: float
    code: int
    stdout: str
    stderr: str
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds, RSS MB)

    @property
    def cpu(self) -> float:
        return self.user + self.system


def rss_mb(pid: int, field: bytes = b"VmRSS:") -> float | None:
    """The resident set (or, with ``VmHWM:``, its peak so far) of a live process in MB."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    sample_every: float | None = None,
    timeout: float = 1800,
    bytecode_cache: Path | None = None,
) -> ChildResult:
    """Run a child to completion; measure it with ``os.wait4`` (and /proc RSS samples).

    With ``bytecode_cache``, the child reads and writes compiled modules there
    (``PYTHONPYCACHEPREFIX``, ``PYTHONDONTWRITEBYTECODE`` dropped): after a first run nothing
    is compiled again, as for an installed package (pip compiles at install). Without it, a
    ``PYTHONDONTWRITEBYTECODE=1`` environment recompiles batchscribe at every start.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSCRIBE_")}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    if bytecode_cache is not None:
        full_env.pop("PYTHONDONTWRITEBYTECODE", None)
        full_env["PYTHONPYCACHEPREFIX"] = str(bytecode_cache)
    full_env.update(env or {})
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            list(argv), env=full_env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
        samples: list[tuple[float, float]] = []
        peak = [0.0]
        stop = threading.Event()

        def sample() -> None:
            # The peak comes from /proc's VmHWM (the high-water mark since exec), polled every
            # 20 ms: wait4's ru_maxrss also counts the moments between fork and exec, when the
            # child still shares this (possibly much larger) process's memory.
            last = 0.0
            while not stop.wait(0.02):
                hwm = rss_mb(proc.pid, b"VmHWM:")
                if hwm is not None:
                    peak[0] = max(peak[0], hwm)
                now = time.monotonic() - started
                if sample_every is not None and now - last >= sample_every:
                    value = rss_mb(proc.pid)
                    if value is not None:
                        samples.append((now, value))
                        last = now

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            stop.set()
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildResult(
            wall=wall,
            user=usage.ru_utime,
            system=usage.ru_stime,
            maxrss_mb=peak[0] or usage.ru_maxrss / 1024,
            code=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            samples=samples,
        )


def batchscribe_argv(*args: object) -> list[str]:
    """``batchscribe ...`` as the installed console script runs it."""
    return [PYTHON, "-m", "batchscribe", *map(str, args)]


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A markdown table (also readable on a terminal)."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
