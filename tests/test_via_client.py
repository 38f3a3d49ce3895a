"""URL and cloud items whose bytes flow through this machine (``--via-client``, and
``model=pulse-pro``, which takes no URL input) get the audio stage local files get: downloaded
into the run's temp folder, probed, sent as is or prepared, chunks stitched into one record.

Real CLI subprocesses against the emulator; URLs served by a real aiohttp server on loopback
(with a 404, a 503 once, a connection dropped mid-body once, a redirect, a token in the query,
a throttled body); cloud objects in moto's S3 server (the fixtures of test_cloud.py).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from audio_fixtures import encode, write_wav
from conftest import complete_lines, read_results, wait_until
from test_audio_run import _assert_words, _speech, _truth

from batchscribe.emulator import content_key, transcript_for, transcript_for_url
from batchscribe.pulse import content_type_for

Run = Callable[..., subprocess.CompletedProcess[str]]

#: In the query of the URLs the tests list: it must never reach an output but the record's
#: ``source`` (the item as the user gave it).
TOKEN = "tok-5f0c2a9be17d4e3c8a6b"


# --------------------------------------------------------------------------- a file server


class FileServer:
    """Files over HTTP on loopback (its own thread and loop): ``/f/NAME`` serves ``files[NAME]``
    (404 for unknown names, echoing the request's path and query as a careless server does),
    ``/r/NAME`` redirects there (query kept). ``faults[NAME]``: one fault per GET, in order:
    ``503``, or ``drop`` (half the body, then the connection closed). ``etags[NAME]``: an ETag
    to send; ``slow``: names whose bodies trickle (64 KB each 50 ms). ``hits`` counts GETs."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.faults: dict[str, list[str]] = {}
        self.slow: set[str] = set()
        self.hits: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: Any = None
        self.port = 0

    def url(self, name: str, *, route: str = "f", token: bool = True) -> str:
        query = f"?token={TOKEN}" if token else ""
        return f"http://127.0.0.1:{self.port}/{route}/{name}{query}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    async def _start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/f/{name}", self._file)
        app.router.add_get("/r/{name}", self._redirect)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _redirect(self, request: Any) -> Any:
        from aiohttp import web

        raise web.HTTPFound(f"/f/{request.match_info['name']}?{request.query_string}")

    async def _file(self, request: Any) -> Any:
        from aiohttp import web

        name = request.match_info["name"]
        self.hits[name] += 1
        if name not in self.files:
            return web.Response(status=404, text=f"no such file: {request.path_qs}")
        pending = self.faults.get(name)
        fault = pending.pop(0) if pending else None
        if fault == "503":
            return web.Response(status=503, text=f"busy, try {request.path_qs} later")
        data = self.files[name]
        headers = {"Content-Type": content_type_for(name)}
        if name in self.etags:
            headers["ETag"] = self.etags[name]
        response = web.StreamResponse(headers=headers)
        response.content_length = len(data)
        await response.prepare(request)
        if fault == "drop":
            await response.write(data[: len(data) // 2])
            request.transport.close()
            return response
        step = 64 * 1024
        for first in range(0, len(data), step):
            await response.write(data[first : first + step])
            if name in self.slow:
                await asyncio.sleep(0.05)
        await response.write_eof()
        return response

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def files() -> Iterator[FileServer]:
    """A :class:`FileServer` on a free loopback port, stopped at teardown."""
    server = FileServer()
    server.start()
    yield server
    server.stop()


def manifest(path: Path, *lines: dict[str, Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def by_id(out: Path) -> dict[str, dict[str, Any]]:
    """The last record of each id."""
    return {record["id"]: record for record in read_results(out)[0]}


def assert_no_token(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text, text[:600]


def wav(path: Path, channels: list[Any], seconds: float, rate: int) -> bytes:
    return write_wav(path, channels, seconds, rate).read_bytes()


# --------------------------------------------------------------------------- URLs


def test_urls_via_client_are_prepared_chunked_and_stitched_at_the_true_times(
    tmp_path: Path, run_cli: Run, checked_emulator: Any, files: FileServer
) -> None:
    """--via-client: a 44.1 kHz stereo WAV URL is downmixed and transcoded, a 60-s one longer
    than --max-chunk is cut into chunks; each is ONE record (source the URL, size the bytes
    downloaded, ``prepared``), every word at its true time; the temp folder is left empty."""
    stereo_speech, long_speech = _speech(9, 4), _speech(60, 5)
    files.files["stereo.wav"] = wav(tmp_path / "a.wav", [stereo_speech] * 2, 9, 44100)
    files.files["long.wav"] = wav(tmp_path / "b.wav", [long_speech], 60, 16000)
    emu = checked_emulator()
    urls = {name: files.url(f"{name}.wav") for name in ("stereo", "long")}
    source = manifest(tmp_path / "m.jsonl", *({"id": k, "url": u} for k, u in urls.items()))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", source, "--out", out, "--endpoint", emu.endpoint(), "--via-client",
                   "--max-chunk", "20s", "--no-progress", env={"TMPDIR": str(scratch)},
                   timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = by_id(out)
    for name, speech in (("stereo", stereo_speech), ("long", long_speech)):
        record = records[name]
        assert record["status"] == "ok", record
        assert record["source"] == urls[name]
        assert record["size"] == len(files.files[f"{name}.wav"])
        assert record["prepared"]["transcoded_to"] == "flac"
        _assert_words(record["words"], _truth(speech))
    assert records["stereo"]["prepared"]["chunks"] == 1
    assert records["stereo"]["duration"] == pytest.approx(9, abs=0.01)
    assert records["long"]["prepared"]["chunks"] >= 3
    assert records["long"]["duration"] == pytest.approx(60, abs=0.01)
    assert emu.stats()["requests"] == 1 + records["long"]["prepared"]["chunks"]
    assert files.hits == {"stereo.wav": 1, "long.wav": 1}
    assert not list(scratch.iterdir())
    assert_no_token(proc.stdout, proc.stderr)


def test_a_pulse_pro_url_goes_through_the_client_and_a_pulse_one_as_url_input(
    tmp_path: Path, run_cli: Run, checked_emulator: Any, files: FileServer
) -> None:
    """Without --via-client, a URL item with model=pulse-pro (which takes no URL input) is no
    longer refused: it is downloaded and its bytes sent (a mono 16 kHz WAV: as they are); a
    model=pulse URL still goes as URL input (the service fetches it, not us)."""
    files.files["pro.wav"] = wav(tmp_path / "a.wav", [[(0.5, 1.5, 440.0)]], 2, 16000)
    files.files["plain.wav"] = wav(tmp_path / "b.wav", [[(0.5, 1.5, 330.0)]], 2, 16000)
    emu = checked_emulator()
    pro, plain = files.url("pro.wav"), files.url("plain.wav")
    source = manifest(
        tmp_path / "m.jsonl",
        {"id": "pro", "url": pro, "model": "pulse-pro"},
        {"id": "plain", "url": plain},
    )
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", source, "--out", out, "--endpoint", emu.endpoint(), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    records = by_id(out)
    assert records["pro"]["status"] == "ok", records["pro"]
    assert records["pro"]["transcription"] == transcript_for(files.files["pro.wav"])
    assert "prepared" not in records["pro"]
    assert records["plain"]["transcription"] == transcript_for_url(plain)
    assert emu.stats()["by_content"].get(content_key(files.files["pro.wav"])) == 1
    assert files.hits == {"pro.wav": 1}  # the pulse URL was never fetched here


def test_with_pack_downloaded_urls_go_alone_and_local_clips_are_packed(
    tmp_path: Path, run_cli: Run, checked_emulator: Any, files: FileServer
) -> None:
    """--pack --via-client: URL items (their downloaded copies are deleted as each item ends)
    are sent alone, each an ok record of its own bytes; the local clips share one pack."""
    for name, pitch in (("u1.wav", 440.0), ("u2.wav", 330.0)):
        files.files[name] = wav(tmp_path / name, [[(0.5, 1.5, pitch)]], 2, 16000)
    local = tmp_path / "local"
    local.mkdir()
    for name, pitch in (("l1.wav", 550.0), ("l2.wav", 660.0)):
        wav(local / name, [[(0.3, 1.3, pitch)]], 2, 16000)
    source = manifest(
        tmp_path / "m.jsonl",
        *({"id": name, "url": files.url(name)} for name in ("u1.wav", "u2.wav")),
        *({"id": name, "path": str(local / name)} for name in ("l1.wav", "l2.wav")),
    )
    emu = checked_emulator()
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", source, "--out", out, "--endpoint", emu.endpoint(), "--no-progress",
                   "--pack", "--via-client")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = by_id(out)
    for name in ("u1.wav", "u2.wav"):
        assert records[name]["status"] == "ok" and "packed" not in records[name]
        assert records[name]["transcription"] == transcript_for(files.files[name])
    assert {records[name]["packed"]["items"] for name in ("l1.wav", "l2.wav")} == {2}
    assert emu.stats()["requests"] == 3


def test_download_failures_fail_alone_retry_and_never_show_the_token(
    tmp_path: Path, run_cli: Run, checked_emulator: Any, files: FileServer
) -> None:
    """A 404 fails its item alone (missing, no request); a 503 once and a connection dropped
    mid-body once are retried (with the run's policy) and then succeed; a redirect is followed.
    The URLs' token never reaches stdout, stderr (tracebacks on), the log, or any record field
    but ``source``, nor the parts sidecar."""
    for name in ("busy.wav", "cut.wav", "moved.wav"):
        files.files[name] = wav(tmp_path / name, [[(0.3, 1.3, 300.0 + len(name))]], 2, 16000)
    files.faults = {"busy.wav": ["503"], "cut.wav": ["drop"]}
    emu = checked_emulator()
    source = manifest(
        tmp_path / "m.jsonl",
        {"id": "gone", "url": files.url("gone.wav")},
        {"id": "busy", "url": files.url("busy.wav")},
        {"id": "cut", "url": files.url("cut.wav")},
        {"id": "moved", "url": files.url("moved.wav", route="r")},
    )
    out, log = tmp_path / "r.jsonl", tmp_path / "run.log"
    proc = run_cli("run", source, "--out", out, "--endpoint", emu.endpoint(), "--via-client",
                   "--log-file", log, "--no-progress", env={"BATCHSCRIBE_DEBUG": "1"},
                   timeout=120)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    records = by_id(out)
    gone = records["gone"]
    assert (gone["status"], gone["cause"], gone["attempts"]) == ("failed", "missing", 0)
    assert gone["error"] == "download: HTTP 404"
    for name in ("busy", "cut", "moved"):
        record = records[name]
        assert record["status"] == "ok", record
        assert record["transcription"] == transcript_for(files.files[f"{name}.wav"])
    assert files.hits == {"gone.wav": 1, "busy.wav": 2, "cut.wav": 2, "moved.wav": 1}
    assert emu.stats()["requests"] == 3
    assert "download: HTTP 503" in log.read_text()
    for record in records.values():
        assert record.pop("source").endswith(TOKEN)
    assert_no_token(proc.stdout, proc.stderr, log.read_text(), orjson.dumps(records).decode())


@pytest.mark.slow
def test_a_rerun_after_kill_9_sends_only_the_missing_chunks_of_a_url(
    tmp_path: Path, run_cli: Run, spawn_cli: Callable[..., subprocess.Popen[str]],
    emulator: Any, files: FileServer,
) -> None:  # fmt: skip
    """SIGKILL while a downloaded URL's chunks are in flight: the temp folder (its copy and
    chunk files) goes with the run's workers, and the rerun (a new download, a new copy) sends
    only the chunks whose answers were kept: their key is the source's fingerprint (here the
    sha256 of its bytes: the server sends no ETag), never the copy's mtime."""
    speech = _speech(150, 9)
    files.files["talk.wav"] = wav(tmp_path / "talk.wav", [speech] * 2, 150, 16000)
    emu = emulator(latency_ms=1500)
    out = tmp_path / "r.jsonl"
    source = manifest(tmp_path / "m.jsonl", {"id": "talk", "url": files.url("talk.wav")})
    flags = ("--endpoint", emu.endpoint(), "--max-chunk", "30s", "-j", "1", "--no-progress",
             "--via-client")  # fmt: skip
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    proc = spawn_cli("run", source, "--out", out, *flags, env=env)
    parts = tmp_path / "r.parts.jsonl"
    wait_until(lambda: complete_lines(parts) >= 2, timeout=60, what="two chunk answers kept")
    wait_until(lambda: emu.stats()["in_flight"] >= 1, what="a chunk in flight")
    assert list(scratch.iterdir())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    wait_until(lambda: not list(scratch.iterdir()), timeout=10, what="the temp folder gone")
    kept = complete_lines(parts)
    first = emu.stats()["requests"]
    again = run_cli("run", source, "--out", out, *flags, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    (record,), _ = read_results(out)
    chunks = record["prepared"]["chunks"]
    assert chunks >= 5 and 2 <= kept < chunks
    assert emu.stats()["requests"] - first == chunks - kept  # only the missing ones
    assert files.hits["talk.wav"] == 2
    _assert_words(record["words"], _truth(speech))
    assert not list(scratch.iterdir())


def test_sigterm_mid_download_leaves_the_temp_folder_empty(
    tmp_path: Path, spawn_cli: Callable[..., subprocess.Popen[str]], checked_emulator: Any,
    files: FileServer,
) -> None:  # fmt: skip
    """A SIGTERM while a URL downloads stops the run at once (exit 130, the item left for the
    next run, no record) and deletes the partial copy with the run's temp folder."""
    files.files["big.wav"] = wav(tmp_path / "big.wav", [[(1.0, 2.0, 440.0)]], 120, 16000)
    files.slow.add("big.wav")  # 3.8 MB at 1.3 MB/s: about 3 s
    emu = checked_emulator()
    source = manifest(tmp_path / "m.jsonl", {"id": "big", "url": files.url("big.wav")})
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "r.jsonl"
    proc = spawn_cli("run", source, "--out", out, "--endpoint", emu.endpoint(), "--via-client",
                     "--no-progress", env={"TMPDIR": str(scratch)})  # fmt: skip

    def copy_growing() -> bool:
        return any(p.is_file() and p.stat().st_size > 0 for p in scratch.rglob("*"))

    wait_until(copy_growing, timeout=30, what="a partial copy in the temp folder")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert not list(scratch.iterdir())
    assert not read_results(out)[0]
    assert emu.stats()["requests"] == 0


# --------------------------------------------------------------------------- cloud objects

try:  # (the servers and buckets of test_cloud.py: it skips itself without the cloud extra)
    import test_cloud as cloud_fixtures
except pytest.skip.Exception:
    cloud_fixtures = None
else:
    s3_endpoint = cloud_fixtures.s3_endpoint
    gcs_host = cloud_fixtures.gcs_host
    service_account = cloud_fixtures.service_account
    cloud_env = cloud_fixtures.cloud_env
    buckets = cloud_fixtures.buckets
needs_cloud = pytest.mark.skipif(cloud_fixtures is None, reason="the cloud extra is missing")


@needs_cloud
def test_s3_objects_via_client_are_prepared_or_streamed_as_they_are(
    tmp_path: Path, buckets: Any, checked_emulator: Any
) -> None:
    """--via-client on a bucket: a stereo WAV object is downloaded and prepared (``prepared``,
    words at their times); a mono 16 kHz WAV (its head says the service takes it) is streamed
    as it is; an MP3 is downloaded, probed and sent as it is; nothing stays on disk."""
    bucket = buckets("s3")
    speech = _speech(9, 6)
    stereo = wav(tmp_path / "s.wav", [speech] * 2, 9, 44100)
    mono = wav(tmp_path / "m.wav", [[(0.5, 1.5, 440.0)]], 2, 16000)
    mp3 = encode(tmp_path / "c.mp3", [[(0.5, 1.5, 520.0)]], 2, 16000, codec="mp3").read_bytes()
    for key, data in (("stereo.wav", stereo), ("mono.wav", mono), ("clip.mp3", mp3)):
        bucket.put(f"in/{key}", data)
    emu = checked_emulator()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "r.jsonl"
    proc = cloud_fixtures.run_cli(
        tmp_path, {**bucket.env, "TMPDIR": str(scratch)}, "run", bucket.uri("in"), "--out",
        out, "--endpoint", emu.endpoint(), "--no-progress", "--via-client",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = by_id(out)
    assert records["stereo.wav"]["prepared"]["chunks"] == 1
    assert records["stereo.wav"]["size"] == len(stereo)
    assert records["stereo.wav"]["etag"].startswith('"')
    _assert_words(records["stereo.wav"]["words"], _truth(speech))
    by_content = emu.stats()["by_content"]
    for key, data in (("mono.wav", mono), ("clip.mp3", mp3)):
        assert "prepared" not in records[key]
        assert records[key]["transcription"] == transcript_for(data)
        assert by_content.get(content_key(data)) == 1
    assert not list(scratch.iterdir())
    cloud_fixtures.assert_no_signature(proc.stdout, proc.stderr, out.read_text())


@needs_cloud
def test_chunk_answers_of_an_object_are_kept_under_its_etag(
    tmp_path: Path, buckets: Any, checked_emulator: Any
) -> None:
    """A chunked object's answers are kept under its ETag, not its copy's mtime: run again
    (its record gone) on the same object, no chunk is sent again; on the object rewritten (a
    new ETag, same size), every chunk is."""
    bucket = buckets("s3")
    speech = _speech(30, 8)
    path = write_wav(tmp_path / "call.wav", [speech] * 2, 30, 16000)
    bucket.put("c/call.wav", path.read_bytes())
    emu = checked_emulator()
    out = tmp_path / "r.jsonl"

    def run() -> dict[str, Any]:
        out.unlink(missing_ok=True)  # (the record gone: the item is sent again)
        proc = cloud_fixtures.run_cli(
            tmp_path, bucket.env, "run", bucket.uri("c"), "--out", out, "--endpoint",
            emu.endpoint(), "--no-progress", "--via-client", "--max-chunk", "10s",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        (record,), _ = read_results(out)
        _assert_words(record["words"], _truth(speech))
        return record

    first = run()
    chunks = first["prepared"]["chunks"]
    assert chunks >= 3 and emu.stats()["requests"] == chunks
    assert run()["etag"] == first["etag"]
    assert emu.stats()["requests"] == chunks  # all kept: none sent again
    data = bytearray(path.read_bytes())
    middle = 44 + 2 * round(speech[0][0] * 16000 + 800) * 2  # a sample inside the first word
    data[middle] ^= 1
    bucket.put("c/call.wav", bytes(data))
    assert run()["etag"] != first["etag"]
    assert emu.stats()["requests"] == 2 * chunks


@needs_cloud
@pytest.mark.parametrize(("via_client", "oversize_ok", "refused"), [
    (True, True, False), (True, False, True), (False, True, False),
])  # fmt: skip
async def test_an_object_over_250_mb_is_refused_only_when_nothing_can_shrink_it(
    via_client: bool, oversize_ok: bool, refused: bool
) -> None:
    """An object over the API's 250 MB whose bytes flow through here is downloaded and
    prepared like a local file over 250 MB (not refused), unless --transcode off leaves it as
    it is (too_large, no request); sent as a presigned URL the service judges it."""
    from batchscribe.cloud import CloudSender
    from batchscribe.items import CLOUD_OBJECT, Item

    sender = CloudSender(timeout=60, via_client=via_client)
    size = 300_000_000  # (from a listing: nothing is looked up)
    item = Item("big.wav", "s3://b/big.wav", CLOUD_OBJECT, {}, None, "s3://b", size, '"e1"')
    record: dict[str, Any] = {}
    unfit = await sender.prepare(item, record, model="pulse", oversize_ok=oversize_ok)
    assert (unfit is not None and unfit.cause == "too_large") is refused, unfit
    assert record == {"size": size, "etag": '"e1"'}
    await sender.close()
