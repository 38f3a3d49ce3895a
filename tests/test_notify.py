"""End-of-run notifications: what they say, when they go, and delivery through Apprise to a
real webhook receiver on loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from batchscribe import notify
from batchscribe.events import Summary

TOKEN = "tok-5e1f0c2a9b7d4e38"


def _summary(**kw: Any) -> Summary:
    base: dict[str, Any] = {
        "ok": 120, "failed": 7, "total": 200, "skipped_ok": 10, "audio_seconds": 4500.0,
        "wall_seconds": 3725.0,
        "failed_by_cause": Counter({"timeout": 3, "invalid": 2, "server": 1, "network": 1}),
    }  # fmt: skip
    base.update(kw)
    return Summary(**base)


def test_compose_says_what_happened() -> None:
    """The body names ok/failed/left, the top causes, audio hours, cost, wall time, exit code
    and the results path; the title names the job and the verdict."""
    note = notify.compose(
        _summary(), results="/data/out.jsonl", exit_code=1, job="nightly", cost=0.2625
    )
    assert note.title == "batchscribe nightly: 7 item(s) failed"
    assert note.kind == "warning"
    assert "ok: 120  failed: 7  left: 63" in note.body  # 200 - 10 skipped - 127 done
    assert "top failure causes: timeout 3, invalid 2, network 1 (+1 other)" in note.body
    assert "audio: 1.25 h  cost: $0.2625  wall: 1 h 02 min" in note.body
    assert "exit code: 1  results: /data/out.jsonl" in note.body


def test_compose_unknown_total_and_success() -> None:
    """A run stopped before its sources were all read says so; an all-ok run is a success."""
    note = notify.compose(
        _summary(total=None, failed=0, failed_by_cause=Counter(), wall_seconds=42),
        results="r.jsonl", exit_code=0, job="j",
    )  # fmt: skip
    assert note.title == "batchscribe j: all ok" and note.kind == "success"
    assert "left: unknown" in note.body and "wall: 42 s" in note.body
    assert "cause" not in note.body and "cost" not in note.body


def test_compose_redacts_the_abort_reason() -> None:
    """Free text from the run goes through the redactor (presigned signatures by default)."""
    note = notify.compose(
        _summary(aborted="fetch https://b.s3/x?X-Amz-Signature=abcdef0123 failed"),
        results="r", exit_code=3, job="j",
    )  # fmt: skip
    assert "abcdef0123" not in note.body and note.kind == "failure"
    assert "aborted" in note.title


@pytest.mark.parametrize(
    ("on", "code", "expected"),
    [
        ("always", 0, True), ("always", 1, True), ("never", 1, False), ("never", 0, False),
        ("failure", 0, False), ("failure", 1, True), ("failure", 3, True), ("failure", 4, True),
        ("failure", 130, True),
    ],
)  # fmt: skip
def test_wanted(on: notify.NotifyOn, code: int, expected: bool) -> None:
    """--notify-on failure (the default) sends for every exit code but 0."""
    assert notify.wanted(on, code) is expected


def test_scheme_is_all_a_warning_shows() -> None:
    """Only the scheme of a URL is shown, never its host, path, query or password."""
    assert notify.scheme("Slack://T0/B0/secret") == "slack://"
    assert notify.scheme("user:pass@host") == "no scheme"


def test_invalid_urls_are_named_by_position() -> None:
    """A URL Apprise does not know is refused by position and scheme, without its token."""
    problems = notify.invalid_urls([f"json://127.0.0.1/x/{TOKEN}", f"nope://{TOKEN}@h"])
    assert len(problems) == 1 and problems[0].startswith("--notify #2 (nope://)")
    assert TOKEN not in problems[0]


@dataclass
class Receiver:
    """A webhook receiver on loopback: what it got, and the status it answers with."""

    port: int = 0
    status: int = 200
    got: list[dict[str, Any]] = field(default_factory=list)

    def url(self, path: str = "/hook") -> str:
        """A json:// URL with a token where webhooks keep them: the path and a parameter."""
        return f"json://127.0.0.1:{self.port}{path}/{TOKEN}?-key={TOKEN}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real aiohttp server on 127.0.0.1 recording every request."""
    state = Receiver()

    async def hook(request: web.Request) -> web.Response:
        state.got.append(
            {"method": request.method, "path": request.path, "query": dict(request.query),
             "json": await request.json()}
        )  # fmt: skip
        return web.Response(status=state.status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hook)
    runner = web.AppRunner(app, access_log=None)  # the receiver logs its own URLs: not ours
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    yield state
    await runner.cleanup()


async def test_delivers_exactly_one_json_notification(receiver: Receiver) -> None:
    """A json:// URL gets exactly one POST with the title, body and type."""
    note = notify.compose(_summary(), results="/data/out.jsonl", exit_code=1, job="nightly")
    problems = await asyncio.to_thread(notify.deliver, [receiver.url()], note)
    assert problems == []
    assert len(receiver.got) == 1
    got = receiver.got[0]
    assert got["method"] == "POST" and got["path"] == f"/hook/{TOKEN}"
    assert got["query"].get("key") == TOKEN  # the URL's own parameters reach the receiver
    assert got["json"]["title"] == note.title
    assert got["json"]["message"] == note.body
    assert got["json"]["type"] == "warning"


async def test_receiver_down_is_a_warning_without_the_token(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver that refuses connections, or answers 500, gives one warning per URL, no
    exception, and the token appears neither in the warnings nor in any log record."""
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    receiver.status = 500
    urls = [f"json://127.0.0.1:{dead}/hook/{TOKEN}?-key={TOKEN}", receiver.url("/p")]
    note = notify.Notification("t", "b", "failure")
    with caplog.at_level(logging.DEBUG):
        problems = await asyncio.to_thread(notify.deliver, urls, note)
    assert problems == [
        "--notify #1 (json://): the notification was not delivered",
        "--notify #2 (json://): the notification was not delivered",
    ]
    assert len(receiver.got) == 1  # tried once, not retried into a flood
    assert TOKEN not in caplog.text
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
