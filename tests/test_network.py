"""HTTP edge cases between the client and the service: redirects, the endpoint's own query
string, stale keep-alive connections, odd but complete answers (a BOM, a wrong encoding).

Every server here is real and on loopback: the emulator, or a small aiohttp (or raw asyncio)
server in a thread that misbehaves in one precise way; the client is the real CLI.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from urllib.parse import quote

import orjson
import pytest
from aiohttp import web
from audio_fixtures import make_wav
from conftest import TEST_KEY, read_results

from batchscribe.pulse import LEGACY_PATH

#: A secret a redirect's Location (or the user's endpoint) carries: it must never be printed.
TOKEN = "tok-5ecret-9b1d7c3e2a"


class LoopbackServer:
    """An aiohttp application served on 127.0.0.1 by a thread with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def url(self, path: str = LEGACY_PATH) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def serve() -> Iterator[Callable[[web.Application], LoopbackServer]]:
    """``serve(app)``: the app on a loopback port until the test ends."""
    servers: list[LoopbackServer] = []

    def start(app: web.Application) -> LoopbackServer:
        server = LoopbackServer(app).__enter__()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        server.__exit__(None, None, None)


def _leaks(text: str) -> bool:
    return TOKEN in text or TEST_KEY[-12:] in text


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_fails_the_item_naming_where(
    tmp_path, run_cli, serve, status
):
    """A 3xx to a POST is not followed: the item fails once (cause ``redirect``) naming the
    Location without its query or credentials; no GET answer is taken for a transcript, and
    no body (a streamed one included) is sent twice."""
    seen: list[str] = []

    async def front(request: web.Request) -> web.StreamResponse:
        await request.read()
        seen.append(f"{request.method} {request.path}")
        if request.path == "/moved":  # where a followed redirect lands (a GET after 301-303)
            return web.json_response({"status": "success", "transcription": "MOVED ANSWER"})
        target = f"http://user:{TOKEN}@{request.host}/moved?token={TOKEN}&x=1#frag"
        return web.Response(status=status, headers={"Location": target})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", front)
    server = serve(app)
    make_wav(tmp_path / "small.wav", seconds=0.2, freq=300)
    make_wav(tmp_path / "large.wav", seconds=20, freq=310)  # 320 KB: streamed in chunks
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"id": "small", "path": "small.wav"}\n{"id": "large", "path": "large.wav"}\n'
    )
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", manifest, "--out", out, "--endpoint", server.url(), "-j", 1)
    assert proc.returncode == 1, proc.stderr
    records = {r["id"]: r for r in read_results(out)[0]}
    error = f"redirect to http://127.0.0.1:{server.port}/moved (not followed: check --endpoint)"
    for record in records.values():
        assert record["status"] == "failed"
        assert (record["cause"], record["http_status"], record["attempts"]) == (
            "redirect", status, 1,
        )  # fmt: skip
        assert record["error"] == f"HTTP {status} {error}"
        assert "transcription" not in record
    assert seen == [f"POST {LEGACY_PATH}"] * 2
    assert "failed: 2 (redirect: 2)" in proc.stdout
    assert not _leaks(proc.stdout + proc.stderr + out.read_text())
    listed = run_cli("failed", out, "--cause", "redirect")
    assert listed.returncode == 0, listed.stderr
    assert sorted(orjson.loads(line)["id"] for line in listed.stdout.splitlines()) == [
        "large", "small",
    ]  # fmt: skip
    report = run_cli("report", out)
    assert "redirect: 2" in report.stdout, report.stdout


# --------------------------------------------------------------------------- the endpoint's query


def test_the_endpoints_own_query_is_kept_and_never_printed(tmp_path, run_cli, serve):
    """``--endpoint URL?token=...&region=eu`` sends the user's parameters with Pulse's own on
    every request (Pulse's win a clash, with a warning naming it), and never prints the token."""
    queries: list[dict[str, str]] = []

    async def service(request: web.Request) -> web.StreamResponse:
        await request.read()
        queries.append(dict(request.query))
        return web.json_response({"status": "success", "transcription": "fine"})

    app = web.Application()
    app.router.add_post(LEGACY_PATH, service)
    server = serve(app)
    make_wav(tmp_path / "a.wav", freq=300)
    make_wav(tmp_path / "b.wav", freq=310)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"id": "a", "path": "a.wav"}\n{"id": "b", "path": "b.wav", "language": "de"}\n'
    )
    out = tmp_path / "r.jsonl"
    log = tmp_path / "run.log"
    token = TOKEN + "+/="  # as a base64 token may end
    endpoint = f"{server.url()}?token={quote(token, safe='')}&region=eu&model=pulse-pro"
    proc = run_cli(
        "run", manifest, "--out", out, "--endpoint", endpoint, "--log-file", log,
        "--log-format", "json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(queries) == 2
    by_language = {q["language"]: q for q in queries}
    for language in ("en", "de"):
        query = by_language[language]
        assert (query["token"], query["region"], query["model"]) == (token, "eu", "pulse")
    assert "--endpoint's query sets model" in proc.stderr
    for text in (proc.stdout, proc.stderr, log.read_text(), out.read_text()):
        assert not _leaks(text)


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        (f"ftp://files.example/get_text?token={TOKEN}", "must be an http(s) URL"),
        (f"https://user:{TOKEN}@api.example/get_text", "must not carry a user name or password"),
    ],
)
def test_a_bad_endpoint_is_refused_without_printing_its_secrets(
    tmp_path, run_cli, make_archive, endpoint, problem
):
    """An --endpoint that cannot work exits 2 naming the problem, not its token or password."""
    archive = make_archive(tmp_path, 1)
    proc = run_cli("run", archive.manifest, "--out", tmp_path / "r.jsonl", "--endpoint", endpoint)
    assert proc.returncode == 2, proc.stderr
    assert problem in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not _leaks(proc.stdout + proc.stderr)
