"""Prometheus metrics: the textfile parses and equals the summary; a Pushgateway stand-in on
loopback receives the push; a URL's credentials never show."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from batchscribe import metrics
from batchscribe.events import Summary

SECRET = "pw-0c9e4f7a2b51d6e8"


def _summary() -> Summary:
    return Summary(
        ok=41, failed=5, submitted=2, skipped_ok=10, skipped_failed=1, invalid_lines=3,
        failed_by_cause=Counter({"timeout": 3, "invalid": 2}), retries=9, throttled=4,
        audio_seconds=1234.5, total=70, concurrency=8, learned_rate=0.5, exit_code=1,
    )  # fmt: skip


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_textfile_parses_and_equals_the_summary(tmp_path: Path) -> None:
    """Every count in the file equals the summary's, each series labelled by job and shard."""
    summary = _summary()
    snap = metrics.Snapshot.take(
        summary, elapsed=61.5, in_flight=3, requests_by_status={"200": 43, "429": 4},
        bytes_uploaded=123456, last_success=1_760_000_000.0, cost=0.072, finished=True,
    )  # fmt: skip
    summary.ok += 1  # the run goes on: the snapshot does not move
    summary.failed_by_cause["server"] += 1
    path = tmp_path / "batchscribe.prom"
    metrics.write_textfile(str(path), snap, job="nightly", shard="2/4")
    s = _samples(path.read_text())
    assert all(dict(ls)["job"] == "nightly" and dict(ls)["shard"] == "2/4" for _, ls in s)
    items = "batchscribe_items_total"
    assert _value(s, items, status="ok") == 41
    assert _value(s, items, status="failed") == 5
    assert _value(s, items, status="submitted") == 2
    assert _value(s, items, status="skipped_ok") == 10
    assert _value(s, items, status="skipped_failed") == 1
    assert _value(s, items, status="invalid") == 3
    assert _value(s, "batchscribe_items_failed_total", cause="timeout") == 3
    assert _value(s, "batchscribe_items_failed_total", cause="invalid") == 2
    assert not any(dict(ls).get("cause") == "server" for _, ls in s)
    assert _value(s, "batchscribe_requests_total", code="429") == 4
    assert _value(s, "batchscribe_retries_total") == 9
    assert _value(s, "batchscribe_throttled_total") == 4
    assert _value(s, "batchscribe_audio_seconds_total") == 1234.5
    assert _value(s, "batchscribe_uploaded_bytes_total") == 123456
    assert _value(s, "batchscribe_items_expected") == 70
    assert _value(s, "batchscribe_in_flight") == 3
    assert _value(s, "batchscribe_learned_rate_per_second") == 0.5
    assert _value(s, "batchscribe_last_success_timestamp_seconds") == 1_760_000_000.0
    assert _value(s, "batchscribe_cost") == pytest.approx(0.072)
    assert _value(s, "batchscribe_finished") == 1
    assert _value(s, "batchscribe_exit_code") == 1
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # node_exporter's user can read it


def test_unknowns_are_left_out_not_zero(tmp_path: Path) -> None:
    """Counts the run does not keep (requests, bytes, learned rate, total) are absent, not 0;
    a run still going has no exit code; without a shard the label says ``all``."""
    text = metrics.render(metrics.Snapshot.take(Summary()), job="j").decode()
    s = _samples(text)
    names = {name for name, _ in s}
    absent = ("requests_total", "uploaded_bytes_total", "learned_rate_per_second",
              "items_expected", "exit_code", "last_success_timestamp_seconds", "cost")  # fmt: skip
    for name in absent:
        assert f"batchscribe_{name}" not in names
    assert _value(s, "batchscribe_finished", shard="all") == 0


_WRITER = textwrap.dedent(
    """
    import os, sys
    from batchscribe import atomicfile
    path = sys.argv[1]
    real = os.replace
    def stall(*args):  # stop between writing the temporary file and renaming it
        print("written", flush=True)
        sys.stdin.readline()
        real(*args)
    os.replace = stall
    atomicfile.replace_file(path, b"new complete content\\n")
    """
)


def test_kill_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    """kill -9 after the new content is written but before the rename: the file is the old one,
    whole, and the leftover temporary file is hidden from the collector's ``*.prom`` glob."""
    path = tmp_path / "m.prom"
    path.write_bytes(b"old\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "written\n"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    assert path.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.glob("*.prom")] == ["m.prom"]


@dataclass
class Gateway:
    """A Pushgateway stand-in: what it received, and the status it answers with."""

    port: int = 0
    status: int = 200
    got: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    """A real aiohttp server on 127.0.0.1 taking PUT/POST /metrics/job/..."""
    state = Gateway()

    async def receive(request: web.Request) -> web.Response:
        state.got.append(
            {"method": request.method, "path": request.path,
             "auth": request.headers.get("Authorization"), "body": await request.text()}
        )  # fmt: skip
        return web.Response(status=state.status)

    app = web.Application()
    app.router.add_route("*", "/metrics/job/{rest:.*}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state.port = runner.addresses[0][1]
    yield state
    await runner.cleanup()


async def test_push_reaches_the_gateway(gateway: Gateway) -> None:
    """A push is one PUT to /metrics/job/<job>/shard/<shard> (a shard with a slash in base64),
    with basic auth from the URL, and its body parses to the summary's counts."""
    snap = metrics.Snapshot.take(_summary(), finished=True)
    url = f"http://ops:{SECRET}@127.0.0.1:{gateway.port}"
    warning = await asyncio.to_thread(metrics.push, url, snap, "nightly", "2/4")
    assert warning is None
    assert len(gateway.got) == 1
    got = gateway.got[0]
    shard = base64.urlsafe_b64encode(b"2/4").decode()
    assert got["method"] == "PUT"
    assert got["path"] == f"/metrics/job/nightly/shard@base64/{shard}"
    assert got["auth"] == "Basic " + base64.b64encode(f"ops:{SECRET}".encode()).decode()
    s = _samples(got["body"])
    assert _value(s, "batchscribe_items_total", status="ok") == 41
    assert _value(s, "batchscribe_items_failed_total", cause="timeout") == 3
    assert _value(s, "batchscribe_exit_code") == 1


async def test_push_failure_is_a_warning_without_the_secret(gateway: Gateway) -> None:
    """A gateway that answers 500, or is down, gives a warning naming only the scheme."""
    snap = metrics.Snapshot.take(_summary())
    gateway.status = 500
    url = f"http://ops:{SECRET}@127.0.0.1:{gateway.port}/"
    warning = await asyncio.to_thread(metrics.push, url, snap, "j")
    assert warning is not None and "(http://)" in warning and "500" in warning
    assert SECRET not in warning and "ops" not in warning
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    warning = await asyncio.to_thread(
        metrics.push, f"http://ops:{SECRET}@127.0.0.1:{dead}", snap, "j"
    )
    assert warning is not None and "failed" in warning and SECRET not in warning
