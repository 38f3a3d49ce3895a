"""Shared fixtures: a real loopback emulator, real audio archives, the real CLI as a subprocess.

Every fixture cleans up after itself: emulators are stopped, spawned runs are killed and reaped.
The emulator is imported lazily so the pure unit tests never depend on it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from audio_fixtures import make_wav

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_manifests"

#: The key every emulator expects and every run sends, unless a test says otherwise. Long and
#: distinctive so a leak check cannot miss it or hit it by chance.
TEST_KEY = "sk-test-7f3a9c2e51d84b06a1c0ffee5eed1e55"

#: Variables of the developer's shell that would change what a run does.
_SCRUBBED = ("SMALLEST_API_KEY", "BATCHSCRIBE_ENDPOINT", "BATCHSCRIBE_DEBUG", "PYTHONWARNINGS")


# --------------------------------------------------------------------------- soak runs


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--soak``: also run the tests marked ``soak`` (long; by hand, not in CI)."""
    parser.addoption(
        "--soak", action="store_true", default=False,
        help="run the long soak tests (marked soak): thousands of items, dozens of kills",
    )  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``soak`` unless ``--soak`` is given."""
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------- the emulator


@pytest.fixture
def emulator() -> Iterator[Callable[..., Any]]:
    """A factory: ``emulator(latency_ms=50, ...)`` starts an EmulatorThread; all stop at teardown.

    Defaults: the key is :data:`TEST_KEY`, the seed is fixed, and no latency is added.
    """
    from batchscribe.emulator import EmulatorConfig, EmulatorThread

    started: list[Any] = []

    def start(**config: Any) -> Any:
        config.setdefault("key", TEST_KEY)
        config.setdefault("seed", 7)
        thread = EmulatorThread(EmulatorConfig(**config))
        thread.__enter__()
        started.append(thread)
        return thread

    yield start
    for thread in reversed(started):
        thread.__exit__(None, None, None)


@pytest.fixture
def checked_emulator(emulator: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """``emulator``, checked at teardown: no run retried before the server's delay."""
    started: list[Any] = []

    def start(**config: Any) -> Any:
        emu = emulator(**config)
        started.append(emu)
        return emu

    yield start
    for emu in started:
        stats = emu.stats()
        assert stats["early_retries"] == 0, stats["early_retry_examples"]


# --------------------------------------------------------------------------- audio archives


@dataclass
class Archive:
    """A folder of distinct small WAVs and a JSONL manifest naming them (with extra metadata)."""

    root: Path
    manifest: Path
    paths: dict[str, Path]  # id -> audio file

    @property
    def ids(self) -> list[str]:
        return list(self.paths)

    def transcript(self, item_id: str) -> str:
        """What the emulator answers for this item's file bytes."""
        from batchscribe.emulator import transcript_for

        return transcript_for(self.paths[item_id].read_bytes())


def _make_archive(
    where: Path, n: int, *, name: str = "manifest", seconds: float = 0.2, first: int = 0
) -> Archive:
    root = Path(where)
    audio = root / "audio"
    paths: dict[str, Path] = {}
    lines = []
    for i in range(first, first + n):
        item_id = f"clip-{i:03d}"
        # A distinct tone per item: distinct bytes, so a distinct emulator transcript.
        path = make_wav(audio / f"{item_id}.wav", seconds=seconds, freq=200 + 13 * i)
        paths[item_id] = path
        lines.append(
            {"id": item_id, "path": f"audio/{item_id}.wav", "speaker": f"spk{i % 3}", "n": i}
        )
    manifest = root / f"{name}.jsonl"
    manifest.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return Archive(root, manifest, paths)


@pytest.fixture
def make_archive() -> Callable[..., Archive]:
    """``make_archive(tmp_path, n)``: n distinct WAVs under ``audio/`` and ``manifest.jsonl``."""
    return _make_archive


# --------------------------------------------------------------------------- the CLI


def cli_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """A clean environment for a CLI run: the test key set, the repo importable.

    ``overrides`` adds variables; a value of None removes one (e.g. the key).
    """
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["SMALLEST_API_KEY"] = TEST_KEY
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _argv(args: tuple[Any, ...]) -> list[str]:
    return [sys.executable, "-m", "batchscribe", *map(str, args)]


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli(*args, env=None, timeout=60, input=None, cwd=tmp_path)``: run to completion."""

    def run(
        *args: Any,
        env: Mapping[str, str | None] | None = None,
        timeout: float = 60,
        input: str | bytes | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _argv(args),
            env=cli_env(env),
            cwd=cwd or tmp_path,
            input=input.decode() if isinstance(input, bytes) else input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture
def spawn_cli(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``spawn_cli(*args, env=None, cwd=tmp_path, stdin=DEVNULL)``: start a run in the
    background (stdout and stderr piped); killed and reaped at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def spawn(
        *args: Any,
        env: Mapping[str, str | None] | None = None,
        cwd: str | Path | None = None,
        stdin: int = subprocess.DEVNULL,
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            _argv(args),
            env=cli_env(env),
            cwd=cwd or tmp_path,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        if proc.stdin is not None and proc.stdin.closed:
            proc.stdin = None  # closed by the test; communicate() would try to flush it
        proc.communicate(timeout=30)


# --------------------------------------------------------------------------- helpers


def wait_until(condition: Callable[[], Any], *, timeout: float = 30, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds.

    This waits for an observable state (records on disk, requests at the emulator), never for
    an amount of time that is hoped to be enough.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.01)


def read_results(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The item records and the run records of a results file (every line must parse)."""
    items: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    data = Path(path).read_bytes()
    assert not data or data.endswith(b"\n"), "results file does not end with a newline"
    for line in data.splitlines():
        doc = orjson.loads(line)
        (runs if "event" in doc else items).append(doc)
    return items, runs


def complete_lines(path: str | Path) -> int:
    """How many newline-terminated lines a file has (0 if it does not exist yet)."""
    try:
        return Path(path).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0
