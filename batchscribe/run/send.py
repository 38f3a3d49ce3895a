"""One request: its body (a file read whole or streamed, a URL, a cloud object), the POST, and
every transport failure turned into an :class:`~batchscribe.pulse.Outcome`.

:class:`Sender` is the transport seam: it owns the aiohttp session (or uses one it is given) and
answers ``send(plan) -> Outcome``; the engine never touches aiohttp. The measured details of the
per-request path live here, each next to the plain code it stands in for: small files read
inline (:class:`SmallReads`), stale kept-alive connections dropped before use
(:class:`_Connector`) and a request that met one re-sent once (``_STALE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import select
import socket
import time
import weakref
from collections.abc import AsyncIterator
from contextvars import ContextVar
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp.http_exceptions import ContentEncodingError
from yarl import URL

from batchscribe.clock import Clock
from batchscribe.errors import FileChanged, ItemError
from batchscribe.items import CLOUD_OBJECT
from batchscribe.items import URL as URL_SOURCE
from batchscribe.pulse import (
    Outcome,
    PulseParams,
    Verdict,
    build_query,
    classify,
    content_type_for,
    scrub_outcome,
)

if TYPE_CHECKING:
    from batchscribe import cloud
    from batchscribe.run.options import RunOptions
    from batchscribe.run.work import RequestPlan

# aiofiles (files over one chunk) is imported where it is used: a run without it starts sooner.

UPLOAD_CHUNK = 256 * 1024


@lru_cache(maxsize=256)
def _request_url(endpoint: str, params: PulseParams) -> URL:
    """The endpoint with Pulse's query parameters added to its own (``?token=...&region=eu``
    is kept; Pulse's win a clash), built once per distinct set of parameters."""
    return URL(endpoint).update_query(build_query(params))


@lru_cache(maxsize=64)
def _small_file_headers(extension: str) -> dict[str, str]:
    """The headers of a file body sent whole, by extension: one dict per type, shared by every
    request and never changed (aiohttp copies it; Content-Length it sets from the bytes)."""
    return {"Content-Type": content_type_for("x" + extension)}


def _file_headers(path: str, size: int) -> dict[str, str]:
    """The headers of a file body: its Content-Type, by extension (os.path is far cheaper than
    PurePath), and for a streamed one its Content-Length (else it would go chunked)."""
    shared = _small_file_headers(os.path.splitext(path)[1])
    if size <= UPLOAD_CHUNK:
        return shared
    return {**shared, "Content-Length": str(size)}


def _chunk_headers(content_type: str, size: int) -> dict[str, str]:
    """The headers of a prepared chunk's body: its own Content-Type (FLAC or Ogg)."""
    if size <= UPLOAD_CHUNK:
        return {"Content-Type": content_type}
    return {"Content-Type": content_type, "Content-Length": str(size)}


class Sender:
    """Sends one request plan and classifies the answer; transport failures become retryable
    outcomes. ``session``: an aiohttp session to send on instead of the sender's own (the
    caller opens and closes it); a test or an embedding program injects its transport here."""

    def __init__(
        self,
        options: RunOptions,
        clock: Clock,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.options = options
        self.clock = clock
        self.session: aiohttp.ClientSession | None = session
        self._own_session = session is None
        self._fresh: aiohttp.ClientSession | None = None  # for re-sends after a stale connection
        self._cloud: cloud.CloudSender | None = None  # made with the first s3:// / gs:// item
        self._small_reads = SmallReads()
        self._endpoint = options.endpoint
        self._url: URL | None = None  # the request URL with options.params (set by open)

    async def open(self, endpoint: str) -> None:
        """Get ready to send to ``endpoint`` (the run's, or the in-process emulator's)."""
        options = self.options
        self._endpoint = endpoint
        self._url = _request_url(endpoint, options.params)
        if self.session is None:
            connector = _Connector(
                limit=options.concurrency, limit_per_host=0, keepalive_timeout=30
            )
            timeout = aiohttp.ClientTimeout(
                total=options.timeout, sock_connect=min(30.0, options.timeout)
            )
            headers = {"Authorization": f"Bearer {options.api_key or 'emulated'}"}
            self.session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, headers=headers, raise_for_status=False
            )

    async def close(self) -> None:
        """Close the sessions this sender made (not an injected one)."""
        if self._fresh is not None:
            await self._fresh.close()
        if self._own_session and self.session is not None:
            await self.session.close()

    async def close_cloud(self) -> None:
        """Close the cloud clients, if any object was sent."""
        if self._cloud is not None:
            await self._cloud.close()

    def cloud(self) -> cloud.CloudSender:
        """The sender of ``s3://``/``gs://`` objects (made on first use)."""
        if self._cloud is None:
            from batchscribe import cloud  # (a run of local files never loads it)

            options = self.options
            self._cloud = cloud.CloudSender(timeout=options.timeout, via_client=options.via_client)
        return self._cloud

    def read_inline(self, path: str, size: int) -> bytes | None:
        """A small file's bytes read on the event loop, as a request body is while reads are
        quick; None when they are not (or the file is over one chunk): :meth:`read_small`.
        Raises FileChanged, OSError."""
        reads = self._small_reads
        if size > UPLOAD_CHUNK or reads.average >= reads.limit:
            return None
        data, seconds = _read_small_timed(path, size)
        reads.note(seconds)
        return data

    async def read_small(self, path: str, size: int) -> bytes:
        """A small file's bytes (at most one upload chunk), read as a request body is: inline
        while reads are quick. Raises FileChanged, OSError."""
        data = await self._small_reads.read(path, min(size, UPLOAD_CHUNK))
        assert type(data) is bytes
        return data

    async def send(self, plan: RequestPlan) -> Outcome:
        """One HTTP exchange, classified. Transport failures become retryable outcomes.

        A request that met a kept-alive connection the server had closed (before any answer)
        is sent once more, whole, on a new connection, spending no attempt: see _Connector.
        """
        session = self.session
        assert session is not None
        outcome = await self._exchange(session, plan)
        if outcome is _STALE:
            outcome = await self._exchange(self._fresh_session(), plan)
        if plan.item.kind is CLOUD_OBJECT:  # a signed URL must never reach a record or a log
            outcome = scrub_outcome(outcome)
        return outcome

    def _fresh_session(self) -> aiohttp.ClientSession:
        """A session that opens a new connection for every request (made on first use)."""
        if self._fresh is None:
            session = self.session
            assert session is not None
            self._fresh = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                timeout=session.timeout, headers=session.headers, raise_for_status=False,
            )  # fmt: skip
        return self._fresh

    async def _exchange(self, session: aiohttp.ClientSession, plan: RequestPlan) -> Outcome:
        """One request on ``session``, its body built afresh (a file read from its start)."""
        item, params, size = plan.item, plan.params, plan.size
        data: Any
        if item.kind is CLOUD_OBJECT:
            try:
                data, headers = await self.cloud().request(item, model=params.model)
            except ItemError as exc:  # cloud.CloudError
                return exc.outcome
        elif item.kind is URL_SOURCE:
            data = orjson.dumps({"url": item.source})
            headers = {"Content-Type": "application/json"}
        else:
            # (None: read inside the try below: a file that vanished is an outcome)
            data, plan.body = plan.body, None  # read for the probe: the first attempt only
            chunk = plan.chunk
            if chunk is None:
                path = item.source
                headers = _file_headers(path, size)
            else:
                path = chunk.path
                headers = _chunk_headers(chunk.content_type, size)
        try:
            if data is None:
                data = await self._small_reads.read(path, size)
            url = self._url
            if url is None or params is not self.options.params:
                url = _request_url(self._endpoint, params)
            _REUSED.set(False)
            answered = False
            # allow_redirects=False: a 3xx is an answer (pulse.classify), never followed.
            async with session.post(
                url, data=data, headers=headers, allow_redirects=False
            ) as response:
                answered = True
                try:
                    body = await response.read()
                except aiohttp.ClientPayloadError as exc:
                    return _unreadable_body(response, exc)
                return classify(
                    response.status, response.headers, body, now=self.clock.wall(),
                    webhook=params.webhook_url is not None,
                )  # fmt: skip
        except asyncio.TimeoutError:
            return Outcome(
                Verdict.RETRY, None, "timeout", f"no response within {self.options.timeout:g} s"
            )
        except FileNotFoundError:
            return Outcome(Verdict.FAIL, None, "missing", "file disappeared before upload")
        except ItemError as exc:  # FileChanged; CloudError: the bucket failed mid-stream
            return exc.outcome
        except aiohttp.ClientPayloadError:
            return Outcome(Verdict.RETRY, None, "network", "response body cut short")
        except aiohttp.ClientError as exc:
            return _client_error(exc, answered)
        except OSError as exc:
            return Outcome(Verdict.RETRY, None, "network", f"{type(exc).__name__}: {exc.strerror}")
        finally:
            # A streamed body not read to its end: release its connection. If the connection
            # broke mid-upload, aiohttp's writer task may still be inside the generator
            # (aclose() then raises RuntimeError); the writer's cancellation closes it.
            if type(data) is not bytes and inspect.isasyncgen(data):
                with contextlib.suppress(RuntimeError):
                    await data.aclose()


def _client_error(exc: aiohttp.ClientError, answered: bool) -> Outcome:
    """What an aiohttp error means for the item: its cause's outcome (a file that changed, a
    bucket that failed), ``_STALE`` (a reused connection closed before an answer: re-send),
    or a network failure."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ItemError):  # raised by the body while aiohttp sent it
        return cause.outcome
    if not answered and _REUSED.get() and isinstance(exc, aiohttp.ServerDisconnectedError):
        return _STALE
    return Outcome(Verdict.RETRY, None, "network", _network_error(exc))


class SmallReads:
    """Where small files are read: inline while reads are quick, else in a thread.

    A file of at most one chunk is read whole (open, read, close) and sent as bytes: the same
    memory as streaming it, and a body that is complete when sent, so the connection goes back
    to the pool for reuse. On a local disk that takes microseconds, far less than a hop to a
    thread and back (~200 us of CPU on a 2-core machine, most of a small item's cost); but a
    network mount may take milliseconds, which must not stall the event loop. So reads go
    inline while a moving average of their time (wherever they ran) stays under ``limit``, and
    to a thread while it does not: one slow read (a preempted process, a cold cache) costs a
    few reads in a thread, a slow mount keeps them all there.
    """

    limit = 0.001  # seconds: the average read time above which reads leave the event loop
    _weight = 0.1  # of the newest read in the moving average

    def __init__(self) -> None:
        self.average = 0.0

    @property
    def inline(self) -> bool:
        return self.average < self.limit

    def note(self, seconds: float) -> None:
        """Count a read that took ``seconds``."""
        self.average += (seconds - self.average) * self._weight

    async def read(self, path: str, size: int) -> bytes | AsyncIterator[bytes]:
        """The upload body of a file, opened afresh for each attempt (FileChanged if its size
        moved); files over one chunk stream."""
        if size > UPLOAD_CHUNK:
            return _file_chunks(path, size)
        if self.inline:
            data, seconds = _read_small_timed(path, size)
        else:
            loop = asyncio.get_running_loop()
            data, seconds = await loop.run_in_executor(None, _read_small_timed, path, size)
        self.note(seconds)
        return data


def _read_small_timed(path: str, size: int) -> tuple[bytes, float]:
    """:func:`_read_small` and the seconds it took."""
    started = time.perf_counter()
    data = _read_small(path, size)
    return data, time.perf_counter() - started


def _read_small(path: str, size: int) -> bytes:
    """A whole small file, checked against the size it had when it was planned."""
    with open(path, "rb", buffering=0) as stream:
        data = stream.read(size + 1)
    if len(data) != size:
        raise FileChanged(path)
    return data


async def _file_chunks(path: str, size: int) -> AsyncIterator[bytes]:
    """Stream a file in chunks; FileChanged if its size moved.

    Nothing is awaited after the last chunk is handed over (the check that nothing follows it
    and the close come first): aiohttp cancels an upload still running when the response ends
    and then closes the connection instead of reusing it.
    """
    import aiofiles

    sent = 0
    async with aiofiles.open(path, "rb") as stream:
        chunk = await stream.read(UPLOAD_CHUNK)
        while chunk:
            sent += len(chunk)
            if sent > size:
                raise FileChanged(path)
            if sent == size:
                if await stream.read(1):
                    raise FileChanged(path)
                break
            yield chunk
            chunk = await stream.read(UPLOAD_CHUNK)
    if sent != size:
        raise FileChanged(path)
    yield chunk


#: ``_REUSED.get()``: the connection of this task's latest request had carried one before.
_REUSED: ContextVar[bool] = ContextVar("batchscribe_reused", default=False)

#: An exchange that failed on a kept-alive connection the server closed before answering: the
#: request is sent again on a new connection (it is also the outcome if that cannot happen).
_STALE = Outcome(
    Verdict.RETRY, None, "network",
    "server disconnected (closed a kept-alive connection before answering)",
)  # fmt: skip


class _Connector(aiohttp.TCPConnector):
    """A TCPConnector that tells, through ``_REUSED``, whether the connection it hands out has
    carried a request before, and never hands out one the server has already closed.

    A server may close an idle kept-alive connection at any moment. aiohttp notices only when
    the event loop next reads the socket, so a request sent at once (the next item, right after
    an answer) can be written into a connection whose end (FIN) is already here, and fail with
    ServerDisconnectedError: a request that never reached the server. Here each pooled
    connection is checked before use (a non-blocking peek: end of stream or a reset means
    closed) and a closed one is dropped for another, so nothing is written into it: provably
    never sent. What the check cannot see is a close racing the request itself: a reused
    connection closed cleanly (end of stream, not a reset) before any byte of an answer. The
    engine re-sends that once on a new connection (``_STALE``) without spending an attempt.
    This is not proof (a server that read the request and then closed looks the same) but it
    is the kept-alive race's signature; a reset (how the emulator's fault and a crashing
    server drop a request) and any failure on a new connection spend an attempt as before.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._used: weakref.WeakSet[Any] = weakref.WeakSet()  # protocols handed out before

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        while True:
            conn = await super().connect(req, traces, timeout)
            protocol = conn.protocol
            if protocol is None or protocol not in self._used:
                if protocol is not None:
                    self._used.add(protocol)
                _REUSED.set(False)
                return conn
            if not _closed_by_peer(conn.transport):
                _REUSED.set(True)
                return conn
            conn.close()  # never written to: take another (or a new) connection


def _closed_by_peer(transport: asyncio.Transport | None) -> bool:
    """True if the server closed (or reset) this idle connection; False if open or unknown."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    # Nothing to read (no data, no end of stream, no reset pending) is the common case: one
    # select(2) (~0.5 us) tells it without the dup, socket object and close (~3.3 us).
    if not select.select((sock.fileno(),), (), (), 0)[0]:
        return False
    try:
        # asyncio's socket wrapper has no recv(): peek through a duplicate descriptor.
        with socket.socket(fileno=os.dup(sock.fileno())) as probe:
            data = probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False  # nothing to read: open
    except OSError:
        return True  # reset
    return not data  # end of stream: closed (bytes, e.g. a TLS record: leave it to aiohttp)


def _unreadable_body(response: aiohttp.ClientResponse, exc: aiohttp.ClientPayloadError) -> Outcome:
    """What went wrong reading an answer's body: undecodable, or cut short."""
    if isinstance(exc.__cause__, ContentEncodingError):
        encoding = " ".join(response.headers.get("Content-Encoding", "?").split())[:40]
        return Outcome(
            Verdict.RETRY, response.status, "5xx",
            f"could not decode the response body (Content-Encoding: {encoding})",
        )  # fmt: skip
    return Outcome(Verdict.RETRY, None, "network", "response body cut short")


def _network_error(exc: aiohttp.ClientError) -> str:
    """A one-line description of a transport failure (never includes request headers or the
    request URL, whose query may hold a token)."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientResponseError):  # an answer aiohttp could not parse
        message = " ".join(str(exc.message).split())[:160]
        return f"could not read the response: {message}" if message else "unreadable response"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"connection error: {exc.strerror or type(exc).__name__}"
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
