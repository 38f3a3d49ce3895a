"""A run nobody watches, end to end (the real CLI against the emulator): its notification, its
metrics file and push, its spend cap, and `batchscribe status` on a run that was killed."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import TEST_KEY, Archive, wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_notify import TOKEN, Receiver, receiver

from batchscribe.status import read_status, status_path

__all__ = ["receiver"]  # (the fixture, imported for pytest)

RunCli = Callable[..., Any]


def _run_record(results: Path) -> dict[str, Any]:
    """The last run record of a results file (the run's summary)."""
    runs = [orjson.loads(line) for line in results.read_bytes().splitlines() if b'"event"' in line]
    return runs[-1]


def _failing_archive(make_archive: Callable[..., Archive], where: Path, n: int = 3) -> Archive:
    """An archive whose first file is gone: its item fails (missing), the rest are ok."""
    archive = make_archive(where, n)
    archive.paths["clip-000"].unlink()
    return archive


def _written(results: Path) -> bytes:
    """The results file and its status file."""
    return results.read_bytes() + Path(status_path(str(results))).read_bytes()


async def _cli(run_cli: RunCli, *args: Any) -> Any:
    """The CLI in a thread, so this test's loop serves the receivers meanwhile."""
    return await asyncio.to_thread(run_cli, *args)


async def test_failing_run_sends_exactly_one_notification(
    tmp_path: Path, emulator: Callable[..., Any], run_cli: RunCli,
    make_archive: Callable[..., Archive], receiver: Receiver,
) -> None:  # fmt: skip
    """A run that ends with failed items sends one JSON notification naming the failure, its
    exit code and results; the URL's token appears in no output, record or status file."""
    emu = emulator()
    archive = _failing_archive(make_archive, tmp_path)
    out = tmp_path / "nightly.jsonl"
    proc = await _cli(
        run_cli, "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(),
        "--no-progress", "--notify", receiver.url(),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert len(receiver.got) == 1
    note = receiver.got[0]["json"]
    assert note["title"] == "batchscribe nightly: 1 item(s) failed"
    assert "ok: 2  failed: 1" in note["message"] and "missing 1" in note["message"]
    assert f"exit code: 1  results: {out}" in note["message"]
    written = await asyncio.to_thread(_written, out)
    assert TOKEN.encode() not in written and TOKEN not in proc.stdout + proc.stderr


async def test_successful_run_sends_nothing_by_default(
    tmp_path: Path, emulator: Callable[..., Any], run_cli: RunCli,
    make_archive: Callable[..., Archive], receiver: Receiver,
) -> None:  # fmt: skip
    """--notify-on failure (the default): a run with exit 0 sends no notification; always
    sends one."""
    emu = emulator()
    archive = make_archive(tmp_path, 2)
    args = ["run", archive.manifest, "--out", tmp_path / "r.jsonl", "--endpoint",
            emu.endpoint(), "--no-progress", "--notify", receiver.url()]  # fmt: skip
    proc = await _cli(run_cli, *args)
    assert proc.returncode == 0, proc.stderr
    assert receiver.got == []
    proc = await _cli(run_cli, *args, "--notify-on", "always")
    assert proc.returncode == 0, proc.stderr
    assert len(receiver.got) == 1 and receiver.got[0]["json"]["type"] == "success"


def test_receiver_down_keeps_the_runs_exit_code(
    tmp_path: Path, emulator: Callable[..., Any], run_cli: RunCli,
    make_archive: Callable[..., Archive],
) -> None:  # fmt: skip
    """A notification that cannot be delivered is one warning naming the URL by position and
    scheme (never its token); the run exits with its own code."""
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    emu = emulator()
    archive = _failing_archive(make_archive, tmp_path)
    proc = run_cli(
        "run", archive.manifest, "--out", tmp_path / "r.jsonl", "--endpoint", emu.endpoint(),
        "--no-progress", "--notify", f"json://127.0.0.1:{dead}/hook/{TOKEN}",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "warning: --notify #1 (json://): the notification was not delivered" in proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr


def test_a_notify_url_apprise_cannot_use_is_exit_2(tmp_path: Path, run_cli: RunCli) -> None:
    """--notify with a URL Apprise does not know stops the run before anything is opened,
    naming the flag by position, not the URL."""
    manifest = tmp_path / "m.txt"
    manifest.write_text("a.wav\n")
    proc = run_cli(
        "run", manifest, "--out", tmp_path / "r.jsonl", "--emulate",
        "--notify", f"nope://{TOKEN}",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--notify #1 (nope://)" in proc.stderr and TOKEN not in proc.stderr
    assert not (tmp_path / "r.jsonl").exists()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text document, parsed by prometheus_client's parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_file_parses_and_its_counts_equal_the_summary(
    tmp_path: Path, emulator: Callable[..., Any], run_cli: RunCli,
    make_archive: Callable[..., Archive],
) -> None:  # fmt: skip
    """--metrics-file holds Prometheus text that prometheus_client parses, labelled with
    --job-name and the shard, whose counts equal the run's summary (its run record)."""
    emu = emulator()
    archive = _failing_archive(make_archive, tmp_path, 5)
    out, prom = tmp_path / "r.jsonl", tmp_path / "batchscribe.prom"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "--no-progress",
        "--metrics-file", prom, "--job-name", "nightly",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    summary = _run_record(out)
    got = _samples(prom.read_text())
    labels = (("job", "nightly"), ("shard", "all"))

    def value(name: str, **extra: str) -> float:
        return got[(f"batchscribe_{name}", tuple(sorted((*labels, *extra.items()))))]

    assert value("items_total", status="ok") == summary["ok"] == 4
    assert value("items_total", status="failed") == summary["failed"] == 1
    assert value("items_failed_total", cause="missing") == 1
    assert value("requests_total", code="200") == summary["requests_by_status"]["200"] == 4
    assert value("audio_seconds_total") == pytest.approx(summary["audio_seconds"])
    assert value("uploaded_bytes_total") == summary["bytes_uploaded"] > 0
    assert value("finished") == 1 and value("exit_code") == 1
    assert value("last_success_timestamp_seconds") == pytest.approx(summary["last_success_at"])
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left for the collector


@dataclass
class Gateway:
    """A Pushgateway stand-in on loopback: the pushes it accepted."""

    port: int = 0
    pushes: list[tuple[str, str, str, str | None]] = field(default_factory=list)


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    """A real aiohttp server on 127.0.0.1 accepting pushes as a Pushgateway does (PUT, 200)."""
    state = Gateway()

    async def push(request: web.Request) -> web.Response:
        body = await request.text()
        auth = request.headers.get("Authorization")
        state.pushes.append((request.method, request.path, body, auth))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", push)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    yield state
    await runner.cleanup()


async def test_metrics_push_reaches_the_gateway_once_at_the_end(
    tmp_path: Path, emulator: Callable[..., Any], run_cli: RunCli,
    make_archive: Callable[..., Archive], gateway: Gateway,
) -> None:  # fmt: skip
    """--metrics-push PUTs the run's final metrics under its job and shard (basic auth from
    user:password@), once; the password appears in no output."""
    emu = emulator()
    archive = make_archive(tmp_path, 3)
    out = tmp_path / "r.{shard}.jsonl"
    proc = await _cli(
        run_cli, "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(),
        "--no-progress", "--shard", "0/1",
        "--metrics-push", f"http://ops:{TOKEN}@127.0.0.1:{gateway.port}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(gateway.pushes) == 1
    method, path, body, auth = gateway.pushes[0]
    # the grouping key: job r.0 (the results file's name), shard "0/1" (base64: it has a /)
    assert method == "PUT" and path == "/metrics/job/r.0/shard@base64/MC8x"
    assert auth is not None and auth.startswith("Basic ")
    got = _samples(body)
    assert got[("batchscribe_items_total", (("status", "ok"),))] == 3
    assert got[("batchscribe_finished", ())] == 1
    assert TOKEN not in proc.stdout + proc.stderr


def test_max_cost_stops_within_the_cap_and_a_rerun_continues(
    tmp_path: Path, checked_emulator: Callable[..., Any], run_cli: RunCli,
    make_archive: Callable[..., Archive],
) -> None:  # fmt: skip
    """--max-cost with 8 requests in flight sends no audio past the cap (durations from the
    headers; those in flight counted), exits 4 and says so; a rerun sends only what is left,
    and no item is sent twice; `report` shows what the two runs spent together, and the audio
    priced at --price-per-hour."""
    emu = checked_emulator()
    archive = make_archive(tmp_path, 6, seconds=30.0)
    out = tmp_path / "r.jsonl"
    # $3.60 an audio hour: $0.001 a second; $0.10 is 100 s: three 30-second clips, not four.
    args = ["run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", "8",
            "--no-progress", "--max-cost", "0.1", "--price-per-hour", "3.6"]  # fmt: skip
    proc = run_cli(*args)
    assert proc.returncode == 4, proc.stderr
    first = _run_record(out)
    assert first["ok"] == 3 and first["audio_seconds"] <= 100
    assert first["cost"] == pytest.approx(0.09)
    assert "spend cap reached" in proc.stderr and "spend: $0.0900" in proc.stdout
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    second = _run_record(out)
    assert second["ok"] == 3 and second["skipped_ok"] == 3
    assert emu.stats()["requests"] == 6  # every clip once
    report = run_cli("report", out, "--price-per-hour", "7.2")
    assert report.returncode == 0, report.stderr
    assert "spend recorded by runs: $0.1800 (2 of 2 run(s) priced" in report.stdout
    assert "audio transcribed at $7.2/h: $0.3600" in report.stdout
    doc = orjson.loads(run_cli("report", out, "--json").stdout)
    assert doc["spend"] == {"recorded_cost": pytest.approx(0.18), "priced_runs": 2,
                            "price_per_hour": None, "estimated_cost": None}  # fmt: skip


def test_max_audio_hours_of_zero_sends_nothing(
    tmp_path: Path, emulator: Callable[..., Any], run_cli: RunCli,
    make_archive: Callable[..., Archive],
) -> None:  # fmt: skip
    """--max-audio-hours 0 admits no item: nothing is sent, exit 4 (work left)."""
    emu = emulator()
    archive = make_archive(tmp_path, 2)
    proc = run_cli(
        "run", archive.manifest, "--out", tmp_path / "r.jsonl", "--endpoint", emu.endpoint(),
        "--no-progress", "--max-audio-hours", "0",
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    assert emu.stats()["requests"] == 0


def test_status_of_a_real_run_killed_with_sigkill_is_stale(
    tmp_path: Path, emulator: Callable[..., Any], run_cli: RunCli,
    spawn_cli: Callable[..., Any], make_archive: Callable[..., Archive],
) -> None:  # fmt: skip
    """A real run killed with kill -9 leaves its status file saying running: `batchscribe
    status` reports it stale (the lock is gone), exit 0, and its --json says so; the command
    line shown has no API key."""
    emu = emulator(latency_ms=2000)
    archive = make_archive(tmp_path, 4)
    out = tmp_path / "r.jsonl"
    proc = spawn_cli(
        "run", archive.manifest, "--out", out, "--endpoint", emu.endpoint(), "-j", "1",
        "--no-progress",
    )  # fmt: skip
    wait_until(lambda: out.exists() and read_status(str(out)).status, timeout=30, what="its status")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    shown = run_cli("status", out)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"stale: the run (pid {proc.pid} ")
    assert "run the same command again to resume" in shown.stdout
    assert TEST_KEY not in shown.stdout
    doc = orjson.loads(run_cli("status", out, "--json").stdout)
    assert doc["state"] == "stale" and not doc["locked"]


def test_status_of_no_results_file_is_exit_2(tmp_path: Path, run_cli: RunCli) -> None:
    """`batchscribe status` on a path with neither results nor status file: one error line,
    exit 2."""
    proc = run_cli("status", tmp_path / "nope.jsonl")
    assert proc.returncode == 2
    assert "nope.jsonl: no such results file" in proc.stderr


def _unattended_yaml() -> dict[str, Any]:
    """The Kubernetes CronJob of the README's "Running unattended" section."""
    import yaml  # type: ignore[import-untyped]

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = re.search(r"\n## Running unattended\n(.*?)\n## ", text, re.S)
    assert section, "README has no 'Running unattended' section"
    (block,) = re.findall(r"```yaml\n(.*?)```", section.group(1), re.S)
    doc: dict[str, Any] = yaml.safe_load(block)
    return doc


def test_readme_cronjob_fails_an_index_on_config_errors_and_retries_others() -> None:
    """The README's CronJob is a nightly Indexed Job that cannot overlap, whose
    podFailurePolicy fails an index at once on exit 2 and 3 (and 4: a retry would spend a
    second budget), retries other codes per index, and runs a command the parser accepts with
    a cap, a push and a notification whose URL comes from a Secret."""
    cron = _unattended_yaml()
    assert cron["apiVersion"] == "batch/v1" and cron["kind"] == "CronJob"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = cron["spec"]["jobTemplate"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] <= spec["completions"]
    assert isinstance(spec["backoffLimitPerIndex"], int) and spec["backoffLimitPerIndex"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    (container,) = pod["containers"]
    rules = spec["podFailurePolicy"]["rules"]
    failing = set()
    for rule in rules:
        if "onExitCodes" in rule:
            assert rule["action"] == "FailIndex" and rule["onExitCodes"]["operator"] == "In"
            assert rule["onExitCodes"]["containerName"] == container["name"]
            failing.update(rule["onExitCodes"]["values"])
    assert failing == {2, 3, 4}  # 1, 75, 130 and crashes: retried, and the rerun resumes
    command = container["command"]
    assert command[:2] == ["batchscribe", "run"]
    from batchscribe.cli import build_parser

    ns = build_parser().parse_args(command[1:])
    assert "{shard}" in ns.out and ns.shard == f"auto/{spec['completions']}"
    assert ns.max_cost is not None and ns.metrics_push and ns.notify == ["$(NOTIFY_URL)"]
    env = {e["name"]: e for e in container["env"]}
    assert set(env["SMALLEST_API_KEY"]["valueFrom"]) == {"secretKeyRef"}
    assert set(env["NOTIFY_URL"]["valueFrom"]) == {"secretKeyRef"}
