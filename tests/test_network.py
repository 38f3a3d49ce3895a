"""HTTP edge cases between the client and the service: redirects, the endpoint's own query
string, stale keep-alive connections, odd but complete answers (a BOM, a wrong encoding).

Every server here is real and on loopback: the emulator, or a small aiohttp (or raw asyncio)
server in a thread that misbehaves in one precise way; the client is the real CLI.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
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


# --------------------------------------------------------------------------- keep-alive


class KeepAliveServer:
    """A raw HTTP/1.1 server on loopback (a thread's event loop) that answers a request 200 with
    ``Connection: keep-alive`` and then treats the connection according to ``mode``:

    - ``after_answer``: closes it right after the answer (an idle timeout of zero), so a client
      that reuses it at once writes into a connection the server has already closed;
    - ``on_next_request``: keeps it open, but closes it cleanly and unanswered when another
      request arrives on it (the server's idle timeout firing just as the request comes);
    - ``always``: closes every connection unanswered as soon as a request arrives.

    ``answered`` lists the sha256 of each request body answered; ``dropped`` counts requests
    closed unanswered.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.answered: list[str] = []
        self.dropped = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    def __enter__(self) -> KeepAliveServer:
        self._thread.start()
        start = asyncio.start_server(self._handle, "127.0.0.1", 0)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{LEGACY_PATH}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                assert length is not None
                if self.mode == "always":
                    self.dropped += 1
                    return  # (a large body still arriving makes the close a reset)
                body = await reader.readexactly(int(length.group(1)))
                if self.mode == "on_next_request" and served:
                    self.dropped += 1
                    return  # a clean close (end of stream), no answer
                answer = b'{"status": "success", "transcription": "fine"}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Connection: keep-alive\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(answer), answer)
                )
                await writer.drain()
                self.answered.append(hashlib.sha256(body).hexdigest())
                served += 1
                if self.mode == "after_answer":
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


def _archive(tmp_path: Path, n: int) -> tuple[Path, dict[str, str]]:
    """n small WAVs and one of 320 KB (streamed in chunks); the manifest and id -> sha256."""
    lines, digests = [], {}
    for i in range(n + 1):
        seconds = 20 if i == n else 0.2
        path = make_wav(tmp_path / f"c{i}.wav", seconds=seconds, freq=300 + 7 * i)
        digests[f"c{i}"] = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(orjson.dumps({"id": f"c{i}", "path": path.name}).decode())
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, digests


@pytest.mark.parametrize("mode", ["after_answer", "on_next_request"])
def test_a_kept_alive_connection_the_server_closed_costs_no_attempt(tmp_path, run_cli, mode):
    """A request that met a pooled connection the server had closed is sent again, whole, on a
    new connection without spending an attempt: with --max-attempts 1 every item is ok."""
    manifest, digests = _archive(tmp_path, 6)
    out = tmp_path / "r.jsonl"
    with KeepAliveServer(mode) as server:
        proc = run_cli(
            "run", manifest, "--out", out, "--endpoint", server.url(), "-j", 1,
            "--max-attempts", 1,
        )  # fmt: skip
        answered, dropped = server.answered, server.dropped
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = read_results(out)[0]
    assert [(r["status"], r["attempts"]) for r in records] == [("ok", 1)] * 7
    assert sorted(answered) == sorted(digests.values()), "a body was not re-sent whole"
    if mode == "on_next_request":
        assert dropped >= 1, "the scenario did not happen"


def test_a_new_connection_closed_unanswered_spends_the_attempt(tmp_path, run_cli):
    """A connection closed before any answer on a *new* connection may have reached the
    server: it spends the attempt (no free re-send, no loop)."""
    manifest, _ = _archive(tmp_path, 1)
    out = tmp_path / "r.jsonl"
    with KeepAliveServer("always") as server:
        proc = run_cli(
            "run", manifest, "--out", out, "--endpoint", server.url(), "--max-attempts", 1
        )
        dropped = server.dropped
    assert proc.returncode == 1, proc.stderr
    records = read_results(out)[0]
    assert [(r["status"], r["attempts"], r["cause"]) for r in records] == [
        ("failed", 1, "network")
    ] * 2
    # (the large body meets a reset: the server closed with it unread)
    errors = [r["error"] for r in records]
    assert all(e.startswith(("server disconnected", "connection error")) for e in errors), errors
    assert dropped == 2


# --------------------------------------------------------------------------- odd answers


def _answering(body: bytes, headers: dict[str, str]) -> web.Application:
    async def service(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_post(LEGACY_PATH, service)
    return app


def test_a_complete_answer_with_a_utf8_bom_is_taken(tmp_path, run_cli, serve, make_archive):
    """A 200 whose JSON body starts with a UTF-8 byte order mark is a transcript, not a cut
    body."""
    body = b"\xef\xbb\xbf" + orjson.dumps({"status": "success", "transcription": "mit BOM"})
    server = serve(_answering(body, {"Content-Type": "application/json; charset=utf-8"}))
    archive = make_archive(tmp_path, 1)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", archive.manifest, "--out", out, "--endpoint", server.url())
    assert proc.returncode == 0, proc.stderr
    [record] = read_results(out)[0]
    assert (record["status"], record["transcription"]) == ("ok", "mit BOM")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_an_answer_that_cannot_be_decoded_says_so(tmp_path, run_cli, serve, make_archive, encoding):
    """A body whose Content-Encoding is wrong (or not installed) is named as such, not as a
    body cut short, and the error shows no URL."""
    body = orjson.dumps({"status": "success", "transcription": "plain"})
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    server = serve(_answering(body, headers))
    archive = make_archive(tmp_path, 1)
    out = tmp_path / "r.jsonl"
    endpoint = f"{server.url()}?token={TOKEN}"
    proc = run_cli(
        "run", archive.manifest, "--out", out, "--endpoint", endpoint, "--max-attempts", 1
    )
    assert proc.returncode == 1, proc.stderr
    [record] = read_results(out)[0]
    assert record["status"] == "failed"
    if encoding == "br":  # not installed here: aiohttp refuses it before the body
        assert (
            "could not read the response: Can not decode content-encoding: brotli (br)"
            in (record["error"])
        )
    else:
        assert (
            f"could not decode the response body (Content-Encoding: {encoding})"
            in (record["error"])
        )
    assert "http://" not in record["error"]
    assert not _leaks(proc.stdout + proc.stderr + out.read_text())
