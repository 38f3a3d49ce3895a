"""URL and cloud items whose bytes flow through this machine: with ``--via-client``, and with
``model=pulse-pro`` (which takes no URL input). They get the audio stage local files get
(:mod:`batchscribe.run.prep`):

- **a cloud object**: its head (a ranged GET of the first 64 KB) is probed; a plain WAV the
  service takes as it is streams from the bucket as before (no local copy), one it refuses
  (``--transcode off``) fails; anything else is downloaded.
- **a URL**: downloaded (aiohttp, redirects followed, a session of its own: the API key never
  goes to another host). A 404 or 410 fails the item (``missing``), another 4xx too
  (``invalid``); a 5xx, a broken connection or no byte for ``--timeout`` seconds is retried
  with the run's retry policy, but outside admission: a download is no Pulse request.

A download is streamed to disk (bounded memory) into a folder of its own in the run's temp
folder (:meth:`PrepStage.folder <batchscribe.run.prep.PrepStage.folder>`: deleted when the
item ends, and with the run's folder on a stop or a kill), then goes on as a local file: a
``LOCAL_FILE`` item whose ``version`` is the source's fingerprint, which keys its chunk
answers in the parts sidecar (never the copy's mtime, new at every download): a cloud object's
ETag or generation; a URL's ETag or Last-Modified, else the sha256 of its bytes, computed while
they arrive.

A URL's query may hold a token or a signature: no error here names the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import mimetypes
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from batchscribe.errors import GiveUp, ItemError, RetryableError, RunAborted, Stopped
from batchscribe.items import CLOUD_OBJECT, LOCAL_FILE, Item
from batchscribe.pulse import (
    AUDIO_EXTENSIONS,
    SCAN_EXTENSIONS,
    Outcome,
    Verdict,
    scrub,
    url_secrets,
)
from batchscribe.retry import RetryPolicy, call_with_retry
from batchscribe.run.prep import examine_head

if TYPE_CHECKING:
    import aiohttp

    from batchscribe.clock import Clock
    from batchscribe.cloud import CloudSender
    from batchscribe.run.options import RunOptions
    from batchscribe.run.prep import PrepStage
    from batchscribe.run.stop import StopState

__all__ = ["HEAD_BYTES", "Fetched", "Fetcher", "through_client"]

HEAD_BYTES = 64 * 1024  # of a cloud object, read to tell a plain WAV sent as is
_READ = 256 * 1024  # bytes a download reads at a time
_WRITE = 1024 * 1024  # bytes gathered before each write (in a thread): few hops, bounded memory

T = TypeVar("T")
#: The engine's ``_on_retry``: (item, attempt, error, delay).
OnRetry = Callable[[Item, int, RetryableError, float], None]


def through_client(item: Item, model: str, via_client: bool) -> bool:
    """Whether ``item``'s bytes flow through this machine: a URL or cloud object with
    ``--via-client`` or a model other than pulse (the only one that takes URL input)."""
    return item.kind is not LOCAL_FILE and (via_client or model != "pulse")


@dataclass(slots=True)
class Fetched:
    """What to send for a URL or cloud item: ``item`` (its downloaded copy as a local file, or
    the object itself, streamed), its ``size`` (0 for the object) and the ``folder`` the copy
    is in (None when there is none)."""

    item: Item
    size: int
    folder: str | None = None


class Fetcher:
    """Downloads the run's URL and cloud items whose bytes flow through here (made with the
    run; its aiohttp session is made on the first URL)."""

    def __init__(
        self,
        options: RunOptions,
        clock: Clock,
        policy: RetryPolicy,
        prep: PrepStage,
        stop: StopState,
        cloud: Callable[[], CloudSender],
        on_retry: OnRetry,
    ) -> None:
        self.timeout = options.timeout
        self.clock, self.policy, self.prep, self.stop = clock, policy, prep, stop
        self.cloud, self.on_retry = cloud, on_retry
        self._rng = random.Random()
        self._session: aiohttp.ClientSession | None = None

    async def get(
        self, item: Item, record: dict[str, Any], worker: asyncio.Task[Any]
    ) -> Fetched | Outcome:
        """What to send for ``item`` (its copy to :meth:`release` when the item ends), or why it
        fails without a request (ABORT: the temp folder cannot be written). The record gets the
        downloaded size. Raises Stopped when the run is stopping; a stop cancels ``worker``
        while it downloads (the item is left for the next run, its copy deleted)."""
        stop = self.stop
        if stop.stopping:
            raise Stopped
        stop.waiting.add(worker)
        try:
            got = await self._retrying(item, lambda: self._attempt(item, record))
        finally:
            stop.waiting.discard(worker)
        if isinstance(got, Fetched) and got.folder is not None:
            record["size"] = got.size
        return got

    async def _attempt(self, item: Item, record: dict[str, Any]) -> Fetched | Outcome:
        """One try at the item: its head (a cloud object), then its download."""
        if item.kind is CLOUD_OBJECT:
            size = int(record.get("size") or 0)
            head = b"".join([chunk async for chunk in await self.cloud().read(item, HEAD_BYTES)])
            examined = examine_head(head, size, self.prep.policy)
            if examined is not None:  # a plain WAV: streamed as is, or refused
                return examined.unfit or Fetched(item, 0)
        try:
            folder = self.prep.folder()
        except OSError as exc:
            return Outcome(Verdict.ABORT, None, "invalid", str(_no_temp(exc)))
        try:
            got = await self._download(item, record, folder)
        except RunAborted as exc:  # the temp folder cannot be written
            got = Outcome(Verdict.ABORT, None, "invalid", str(exc))
        except BaseException:
            self.prep.release(folder)
            raise
        if isinstance(got, Outcome):
            self.prep.release(folder)
            return got
        path, size, version = got
        return Fetched(replace(item, kind=LOCAL_FILE, source=path, version=version), size, folder)

    async def _download(
        self, item: Item, record: dict[str, Any], folder: str
    ) -> tuple[str, int, str] | Outcome:
        """The item's bytes into ``folder``: (path, size, fingerprint), or why not."""
        if item.kind is CLOUD_OBJECT:
            from batchscribe.cloud import version_field

            path = os.path.join(folder, "audio" + _extension(urlsplit(item.source).path, ""))
            size = await _save(await self.cloud().read(item), path, None)
            version = str(record.get(version_field(item.source), ""))
            return (path, size, version) if size else _empty()
        return await self._download_url(item, folder)

    async def _download_url(self, item: Item, folder: str) -> tuple[str, int, str] | Outcome:
        """A URL's bytes into ``folder`` (see the module docstring)."""
        import aiohttp

        url = item.source
        try:
            async with self._session_for().get(url) as response:
                if response.status >= 300:  # (redirects are followed: a 3xx here is unusable)
                    return _refused(response.status)
                headers = response.headers
                version = headers.get("ETag") or headers.get("Last-Modified")
                digest = None if version else hashlib.sha256()
                kind = headers.get("Content-Type", "")
                path = os.path.join(folder, "audio" + _extension(urlsplit(url).path, kind))
                size = await _save(response.content.iter_chunked(_READ), path, digest)
        except aiohttp.ClientPayloadError:
            return Outcome(Verdict.RETRY, None, "network", "download: the body was cut short")
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError):
            said = f"download: no data for {self.timeout:g} s (--timeout)"
            return Outcome(Verdict.RETRY, None, "timeout", said)
        except aiohttp.ClientError as exc:
            from batchscribe.run.send import _network_error

            said = _safe(f"download: {_network_error(exc)}", url)
            return Outcome(Verdict.RETRY, None, "network", said)
        if not size:
            return _empty()
        return path, size, version or f"sha256:{digest.hexdigest() if digest else ''}"

    def _session_for(self) -> aiohttp.ClientSession:
        """The downloads' session (made on first use): no Authorization header, redirects
        followed; a read that waits ``--timeout`` seconds for a byte fails (a big file may take
        longer than that whole; a stalled one may not)."""
        import aiohttp

        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=min(30.0, self.timeout), sock_read=self.timeout
            )
            self._session = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)
        return self._session

    async def _retrying(
        self, item: Item, attempt: Callable[[], Awaitable[T | Outcome]]
    ) -> T | Outcome:
        """``attempt`` until it is not a RETRY (a CloudError is its outcome), with the run's
        retry policy and clock; the last failure's outcome when attempts run out."""

        async def once() -> T | Outcome:
            try:
                got = await attempt()
            except ItemError as exc:  # cloud.CloudError, FileChanged
                got = exc.outcome
            if isinstance(got, Outcome) and got.verdict is Verdict.RETRY:
                raise RetryableError(got)
            return got

        def retried(attempt: int, error: RetryableError, delay: float) -> None:
            self.on_retry(item, attempt, error, delay)

        try:
            return await call_with_retry(
                once, self.policy, self.clock, rng=self._rng, on_retry=retried
            )
        except GiveUp as exc:
            return exc.outcome

    def release(self, fetched: Fetched) -> None:
        """Delete a downloaded copy (its item has ended)."""
        if fetched.folder is not None:
            self.prep.release(fetched.folder)

    async def close(self) -> None:
        """Close the downloads' session, if one was made."""
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None


async def _save(chunks: AsyncIterator[bytes], path: str, digest: Any) -> int:
    """Write ``chunks`` to ``path`` (each also into ``digest``, if any); the bytes written.
    Writing fails with RunAborted (every download would); reading with what the chunks raise."""
    loop = asyncio.get_running_loop()
    size = 0
    buffer = bytearray()
    try:
        out = open(path, "wb")  # noqa: SIM115 (closed below; microseconds on the temp disk)
    except OSError as exc:
        raise _no_temp(exc) from None
    try:
        async for chunk in chunks:
            size += len(chunk)
            if digest is not None:
                digest.update(chunk)
            buffer += chunk
            if len(buffer) >= _WRITE:
                data, buffer = buffer, bytearray()
                await loop.run_in_executor(None, _write, out, data)
        await loop.run_in_executor(None, _write, out, buffer)
    finally:
        out.close()
        if inspect.isasyncgen(chunks):  # (a cloud body left early: free its connection)
            with contextlib.suppress(Exception):
                await chunks.aclose()
    return size


def _write(out: Any, data: bytearray) -> None:
    """Write and flush ``data`` (in a thread); an OSError is the temp folder's: RunAborted."""
    try:
        out.write(data)
        out.flush()
    except OSError as exc:
        raise _no_temp(exc) from None


def _no_temp(exc: OSError) -> RunAborted:
    """The temp folder cannot be written (full, gone, read-only): every download would fail."""
    return RunAborted(f"cannot download into the temp folder: {exc.strerror or exc}")


def _extension(path: str, content_type: str) -> str:
    """The copy's extension: the source's when it is one of audio (an as-is request's
    Content-Type comes from it), else one for the server's Content-Type, else none (the probe
    reads the bytes, not the name)."""
    extension = os.path.splitext(path)[1].lower()
    if extension in SCAN_EXTENSIONS:
        return extension
    guessed = mimetypes.guess_extension(content_type.partition(";")[0].strip()) or ""
    return guessed if guessed in AUDIO_EXTENSIONS else ""


def _refused(status: int) -> Outcome:
    """What a download's HTTP status (not 2xx) means for the item: 404/410 missing; a 5xx, 408
    or 429 retried (the host's trouble, or its pace); any other status fails it."""
    said = f"download: HTTP {status}"
    if status in (404, 410):
        return Outcome(Verdict.FAIL, None, "missing", said)
    if status >= 500 or status in (408, 429):
        return Outcome(Verdict.RETRY, None, "429" if status == 429 else "5xx", said)
    return Outcome(Verdict.FAIL, None, "invalid", said)


def _empty() -> Outcome:
    return Outcome(Verdict.FAIL, None, "invalid", "download: no bytes (an empty body)")


def _safe(text: str, url: str) -> str:
    """``text`` without ``url``, its query or anything in it that may be a secret."""
    query = urlsplit(url).query
    for secret in (url, query, *url_secrets(url)):
        if secret:
            text = text.replace(secret, "***")
    return scrub(text)
