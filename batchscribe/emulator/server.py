"""The Pulse emulator's server: a local aiohttp application that speaks the Pulse contract.

It serves the unified path (``/waves/v1/stt/``: ``model`` required, errors ``{error,
request_id, details}``) and both legacy paths (``/api/v1/pulse/get_text`` and
``/waves/v1/pulse/get_text``: errors ``{errors, status, message}``, oversize as 400 "Audio data
too large"), checks the key and every parameter the way the service does
(:mod:`~batchscribe.emulator.requests`), decodes the audio
(:mod:`~batchscribe.emulator.transcripts`) and answers in the shape of the model asked
(:mod:`~batchscribe.emulator.answers`): Pulse
(``words``, ``utterances``, ``metadata {duration, fileSize}``, no ``request_id`` in the body) or
Pulse Pro (``language``, ``request_id``, ``totalBytes``, timing metadata, no utterances). Every
answer carries an ``x-request-id`` header. It never fetches a URL and never calls a webhook.

Faults are deterministic: the fate of the n-th request carrying the same content is decided from
``(seed, content hash, n)``, so a run gives the same outcome per item whatever the arrival order.
Gateway limits (the plan's requests per minute per model, ``rate_limit``, ``max_concurrent``)
come before faults and depend on timing. Everything the server saw is counted in
:meth:`RunningEmulator.stats` (also ``GET /_emulator/stats``), so tests spy on the emulator
instead of mocking the client.

Order of checks for a POST to an endpoint: key (401), parameters (400), Content-Type (400),
Content-Length over the limit (413/400, before any body byte is read), the body is streamed
(413/400 past the limit; spooled to a temporary file past 1 MiB), the audio is decoded: not audio,
more than one channel, longer than the session (400), then the plan's limit (429), the rate limit
(429), the concurrency cap (429), the fault roll, latency, then the answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import math
import secrets
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import orjson
from aiohttp import web

from batchscribe.emulator.answers import (
    DELAY_HEADER_KINDS,
    RATE_LIMIT_MESSAGE,
    answer_body,
    delay_headers,
    error_response,
    refuse,
    reset_connection,
    too_large,
    truncated,
)
from batchscribe.emulator.config import LEGACY_PATHS, PATHS, UNIFIED_PATH, EmulatorConfig
from batchscribe.emulator.limits import Link, SlidingWindow, TokenBuckets
from batchscribe.emulator.requests import (
    JSON_BODY_LIMIT,
    PREFIX_LIMIT,
    Body,
    Job,
    analyse_body,
    is_audio_type,
    parse_params,
    read_body,
    url_from_json,
)
from batchscribe.emulator.stats import Stats
from batchscribe.emulator.transcripts import (
    AudioError,
    Signal,
    canonical_url,
    sample_for,
    sample_for_url,
    transcribe,
    url_audio,
    url_regions,
)
from batchscribe.pulse import PulseParams

__all__ = [
    "DELAY_HEADER_KINDS",
    "RATE_LIMIT_MESSAGE",
    "EmulatorThread",
    "RunningEmulator",
    "create_app",
    "serve_forever",
    "start_emulator",
]

_T = TypeVar("_T")

_EXAMPLES_KEPT = 20


# --------------------------------------------------------------------------------------------
# The server


class _Emulator:
    """The state and handlers of one emulator application."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._clock = time.monotonic  # replaced by the loop's clock on startup
        self.stats = Stats(self._clock())
        self._seen: dict[str, int] = {}  # short content key -> requests so far
        self._due: dict[str, tuple[float, float]] = {}  # short key -> (retry not before, asked)
        self._tokens = 0.0
        self._token_time = 0.0
        self._bucket: tuple[float, float] | None = None  # (rate, burst) the bucket was made for
        self._window = SlidingWindow()  # the plan's limit, per model
        self._buckets = TokenBuckets()
        self._link = Link()  # the upload link bodies share (config.link_bytes_per_s)
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)

    async def on_startup(self, app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        self.stats = Stats(loop.time())

    def reset(self) -> None:
        """Forget everything seen: counters, per-content sequences (so faults repeat), delays.
        Requests still in flight stay counted in ``in_flight`` until they end."""
        in_flight = self.stats.in_flight
        self.stats = Stats(self._clock())
        self.stats.in_flight = self.stats.max_in_flight = in_flight
        self._seen.clear()
        self._due.clear()

    def snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot(self._clock(), self._seen)

    # -- small helpers ------------------------------------------------------------------------

    def _request_id(self) -> str:
        return f"emu-{self._id_prefix}-{next(self._ids):08d}"

    def _authorized(self, request: web.Request) -> bool:
        key = self.config.key
        if key is None:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {key}".encode())

    def _take_token(self, now: float) -> float:
        """0 when the rate limit admits a request now, else the seconds until the next token."""
        rate = self.config.rate_limit
        if not rate or rate <= 0:
            self._bucket = None
            return 0.0
        burst = self.config.rate_burst or max(1.0, rate / 10)
        if self._bucket != (rate, burst):
            self._bucket = (rate, burst)
            self._tokens, self._token_time = burst, now
        tokens = min(burst, self._tokens + (now - self._token_time) * rate)
        self._token_time = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / rate

    def _plan_wait(self, model: str, now: float) -> float:
        """0 when the plan admits a request for ``model`` now, else the seconds until it would."""
        config = self.config
        per_minute = config.requests_per_minute()
        if per_minute is None:
            return 0.0
        if config.plan_algorithm == "bucket":
            burst = config.plan_burst or max(1.0, per_minute / 5)
            return self._buckets.admit(model, now, per_minute / config.plan_window_s, burst)
        return self._window.admit(model, now, per_minute, config.plan_window_s)

    def _ask_delay(
        self, status: int, message: str, request_id: str, short: str, kind: str, delay: float
    ) -> web.Response:
        headers, asked = delay_headers(kind, delay)
        self._due[short] = (self._clock() + asked, asked)
        return error_response(status, message, request_id, headers=headers)

    def _rate_limited(
        self, message: str, request_id: str, short: str, delay: float, *, plan: bool
    ) -> web.Response:
        """A rate-limit 429: with ``retry-after-ms`` (and, for the plan, ``Retry-After`` in
        whole seconds) when ``rate_headers`` is on; with no delay header at all when off."""
        if not self.config.rate_headers:
            return error_response(429, message, request_id)
        response = self._ask_delay(429, message, request_id, short, "retry-after-ms", delay)
        if plan:
            response.headers["Retry-After"] = str(max(1, math.ceil(delay)))
        return response

    def _note_arrival(self, short: str, arrived: float) -> None:
        """Count a request that came back before the delay asked of its content."""
        due = self._due.pop(short, None)
        if due is None:
            return
        not_before, asked = due
        if arrived < not_before - self.config.early_grace_s:
            stats = self.stats
            stats.early_retries += 1
            if len(stats.early_examples) < _EXAMPLES_KEPT:
                stats.early_examples.append(
                    {
                        "content": short,
                        "asked_s": round(asked, 3),
                        "early_by_s": round(not_before - arrived, 3),
                        "at_s": round(arrived - stats.started, 3),
                    }
                )

    # -- handlers -----------------------------------------------------------------------------

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse a bad key or an oversized body before it is sent."""
        legacy = request.path in LEGACY_PATHS
        response = None
        if not self._authorized(request):
            response = error_response(401, "missing or invalid API key", self._request_id(),
                                   legacy=legacy)  # fmt: skip
        elif (request.content_length or 0) > self.config.max_payload:
            response = too_large(self.config.max_payload, self._request_id(), legacy=legacy)
        if response is not None:
            self.stats.requests += 1
            self.stats.answered(response.status)
            return await refuse(request, response)
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def endpoint(self, request: web.Request) -> web.StreamResponse:
        """POST to a Pulse path: count, handle, and record how it ended."""
        # self.stats is read afresh after every await: a reset may replace it meanwhile.
        if request.method != "POST":
            self.stats.requests += 1
            self.stats.answered(405)
            return error_response(405, "use POST", self._request_id(), headers={"Allow": "POST"},
                               legacy=request.path in LEGACY_PATHS)  # fmt: skip
        arrived = self._clock()
        self.stats.arrive(arrived)
        self.stats.by_path["current" if request.path == UNIFIED_PATH else "legacy"] += 1
        by_endpoint = self.stats.by_endpoint
        by_endpoint[request.path] = by_endpoint.get(request.path, 0) + 1
        try:
            response, how = await self._transcribe(request, arrived)
        except asyncio.CancelledError:
            self.stats.cancelled += 1  # the client went away (the handler is cancelled with it)
            raise
        finally:
            self.stats.in_flight -= 1
        if how == "reset":
            self.stats.resets += 1
        elif how == "truncated":
            self.stats.truncations += 1
        else:
            self.stats.answered(response.status)
        return response

    async def _pace(self, size: int) -> None:
        """Count ``size`` body bytes read; at ``link_bytes_per_s``, wait until they have crossed
        the shared link (read afresh: the speed may change mid-run)."""
        stats = self.stats
        stats.body_bytes += size
        rate = self.config.link_bytes_per_s
        if rate is None:
            return
        wait = self._link.take(size, self._clock(), rate)
        if wait > 0:
            stats.link_wait_s += wait
            await asyncio.sleep(wait)

    async def _accept(
        self, request: web.Request, request_id: str, arrived: float
    ) -> Job | web.Response:
        """Validate a request up to its decoded audio: what it asks, or the refusal."""
        legacy = request.path in LEGACY_PATHS
        if not self._authorized(request):
            detail = "missing" if "Authorization" not in request.headers else "invalid"
            message = f"{detail} API key (Authorization: Bearer <key>)"
            return error_response(401, message, request_id, legacy=legacy)
        url_input = request.content_type == "application/json"
        params = parse_params(request.query.items(), url_input=url_input, legacy=legacy)
        if isinstance(params, str):
            return error_response(400, params, request_id, legacy=legacy)
        # What reached the service: Pulse answers do not echo the language, so tests read it here.
        stats = self.stats
        stats.by_model[params.model] = stats.by_model.get(params.model, 0) + 1
        stats.by_language[params.language] = stats.by_language.get(params.language, 0) + 1
        if not url_input and not is_audio_type(request.content_type):
            message = (
                f"unsupported Content-Type {request.content_type!r}: send audio/* or "
                "application/octet-stream, or application/json with a url"
            )
            return error_response(400, message, request_id, legacy=legacy)
        limit = JSON_BODY_LIMIT if url_input else self.config.max_payload
        body = None
        if (request.content_length or 0) <= limit:
            body = await read_body(request, limit, self._pace)
        if body is None:
            if url_input:
                refusal = error_response(413, f"JSON body over {limit} bytes", request_id)
            else:
                refusal = too_large(self.config.max_payload, request_id, legacy=legacy)
            return await refuse(request, refusal)
        try:
            return await self._decode(request, body, params, url_input, arrived, request_id)
        finally:
            if body.spool is not None:
                body.spool.close()

    async def _decode(
        self,
        request: web.Request,
        body: Body,
        params: PulseParams,
        url_input: bool,
        arrived: float,
        request_id: str,
    ) -> Job | web.Response:
        legacy = request.path in LEGACY_PATHS
        if body.size == 0:
            return error_response(400, "empty body: no audio", request_id, legacy=legacy)
        url = None
        if url_input:
            try:
                url = url_from_json(body.head)
            except ValueError as exc:
                return error_response(400, str(exc), request_id, legacy=legacy)
            digest = hashlib.sha256(canonical_url(url).encode()).digest()
        else:
            digest = body.digest
        short = digest.hex()[:12]
        n = self._seen.get(short, 0)
        self._seen[short] = n + 1
        self._note_arrival(short, arrived)
        if url is not None:
            text, duration = url_audio(url)
            sample = sample_for_url(url)
            filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or "audio"
            transcript = transcribe(url_regions(duration), text)
            return Job(params, digest, short, n, duration, round(duration * 16000),
                            transcript, sample.language if sample else None, filename)  # fmt: skip
        max_seconds = self.config.max_audio_seconds()
        try:
            signal = await analyse_body(body, max_seconds)
        except AudioError as exc:
            return error_response(400, str(exc), request_id, legacy=legacy)
        refusal = self._check_signal(signal, request_id, legacy=legacy)
        if refusal is not None:
            return refusal
        sample = sample_for(digest)
        transcript = transcribe(signal.regions, sample.sentence if sample else None)
        duration = sample.duration if sample else signal.duration
        return Job(params, digest, short, n, duration, body.size, transcript,
                        sample.language if sample else None, None)  # fmt: skip

    def _check_signal(
        self, signal: Signal, request_id: str, *, legacy: bool
    ) -> web.Response | None:
        """Refuse audio the service does not take: more than one channel, past the session."""
        if signal.channels != 1:
            message = "Only single channel (mono) audio is supported"
            details: dict[str, Any] = {"channels": signal.channels}
            return error_response(400, message, request_id, legacy=legacy, details=details)
        if signal.longer_than is not None:
            minutes = signal.longer_than / 60
            message = (
                f"Audio longer than the {minutes:g}-minute session limit: split it into chunks"
            )
            details = {"max_seconds": signal.longer_than}
            return error_response(400, message, request_id, legacy=legacy, details=details)
        return None

    def _gateway(self, job: Job, request_id: str) -> web.Response | None:
        """The limits that depend on timing only: the plan, the rate limit, the cap."""
        config = self.config
        now = self._clock()
        wait = self._plan_wait(job.params.model, now)
        if wait > 0:
            self.stats.rate_limited["plan"] += 1
            return self._rate_limited(RATE_LIMIT_MESSAGE, request_id, job.short, wait, plan=True)
        wait = self._take_token(now)
        if wait > 0:
            self.stats.rate_limited["rate_limit"] += 1
            message = f"rate limit of {config.rate_limit:g} requests/s exceeded"
            return self._rate_limited(message, request_id, job.short, wait, plan=False)
        if config.max_concurrent is not None and self.stats.in_flight > config.max_concurrent:
            self.stats.rate_limited["concurrency"] += 1
            message = f"more than {config.max_concurrent} requests in flight"
            delay = config.busy_retry_ms / 1000
            return self._ask_delay(429, message, request_id, job.short, "retry-after-ms", delay)
        return None

    async def _transcribe(
        self, request: web.Request, arrived: float
    ) -> tuple[web.StreamResponse, str]:
        config = self.config
        request_id = self._request_id()
        job = await self._accept(request, request_id, arrived)
        if isinstance(job, web.StreamResponse):
            return job, ""
        refusal = self._gateway(job, request_id)
        if refusal is not None:
            return refusal, ""

        # The fault roll and the jitter: a function of (seed, content, n) only.
        faults = config.faults
        key = job.digest.hex()
        roll = hashlib.blake2b(f"{config.seed}:{key}:{job.n}".encode(), digest_size=16).digest()
        latency = config.latency_ms
        if config.jitter_ms:
            latency += config.jitter_ms * (2 * int.from_bytes(roll[8:12], "big") / 2**32 - 1)
        latency = max(0.0, latency) / 1000
        fault = ""
        if faults.total() > 0:
            draw = int.from_bytes(roll[:8], "big") / 2**64
            for name, rate in (
                ("429", faults.p429),
                ("5xx", faults.p5xx),
                ("reset", faults.preset),
                ("truncate", faults.ptruncate),
                ("stall", faults.pstall),
            ):
                if draw < rate:
                    fault = name
                    break
                draw -= rate
        params = job.params
        if fault == "stall":
            self.stats.stalls += 1
            await asyncio.sleep(config.stall_seconds)
        if latency > 0 and not params.webhook_url:  # a webhook call is acknowledged at once
            await asyncio.sleep(latency)
        if fault == "429":
            self.stats.rate_limited["fault"] += 1
            # Successive 429s for one content rotate through every header form.
            kind = DELAY_HEADER_KINDS[(job.n + job.digest[29]) % len(DELAY_HEADER_KINDS)]
            message = "too many requests, slow down"
            delay = config.retry_delay_s
            return self._ask_delay(429, message, request_id, job.short, kind, delay), ""
        if fault == "5xx":
            self.stats.server_errors += 1
            return self._server_error(roll, request_id, job.short), ""
        if fault == "reset":
            reset_connection(request)
            return web.Response(status=200), "reset"

        if params.webhook_url:
            answer: dict[str, Any] = {"status": "processing", "request_id": request_id}
        else:
            elapsed = max(self._clock() - arrived, 0.001)
            answer = answer_body(job, request_id, elapsed)
        payload = orjson.dumps(answer)
        if fault == "truncate":
            return await truncated(request, payload, roll, request_id), "truncated"
        response = web.Response(body=payload, content_type="application/json")
        response.headers["X-Request-Id"] = request_id
        return response, ""

    def _server_error(self, roll: bytes, request_id: str, short: str) -> web.Response:
        status = (500, 502, 503)[roll[13] % 3]
        if status == 502:  # what a proxy in front of the service sends: HTML, not JSON
            html = (
                "<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body></html>"
            )
            response = web.Response(status=502, text=html, content_type="text/html")
            response.headers["X-Request-Id"] = request_id
            return response
        if status == 503 and roll[14] % 2:
            message = "service unavailable, retry later"
            delay = self.config.retry_delay_s
            return self._ask_delay(503, message, request_id, short, "retry-after", delay)
        if status == 503:
            # An empty body, as load balancers send.
            return web.Response(status=503, headers={"X-Request-Id": request_id})
        return error_response(500, "internal server error", request_id)

    async def stats_handler(self, request: web.Request) -> web.Response:
        """GET /_emulator/stats."""
        return web.Response(body=orjson.dumps(self.snapshot()), content_type="application/json")

    async def reset_handler(self, request: web.Request) -> web.Response:
        """POST /_emulator/reset."""
        self.reset()
        return web.Response(body=b'{"status":"reset"}', content_type="application/json")

    async def not_found(self, request: web.Request) -> web.Response:
        """Any other path: 404 with the error body, naming the paths that exist."""
        self.stats.requests += 1
        self.stats.answered(404)
        message = f"no endpoint at {request.path}; Pulse paths are {', '.join(PATHS.values())}"
        return error_response(404, message, self._request_id())


_STATE = web.AppKey("batchscribe_emulator", _Emulator)


def create_app(config: EmulatorConfig | None = None) -> web.Application:
    """The emulator as an aiohttp application (run it with :func:`start_emulator`).

    Args:
        config: behaviour; the application reads it afresh for every request.
    """
    state = _Emulator(config or EmulatorConfig())
    app = web.Application(client_max_size=PREFIX_LIMIT + 1)
    app[_STATE] = state
    app.on_startup.append(state.on_startup)
    app.router.add_get("/_emulator/stats", state.stats_handler)
    app.router.add_post("/_emulator/reset", state.reset_handler)
    for path in PATHS.values():
        app.router.add_route("*", path, state.endpoint, expect_handler=state.expect)
    app.router.add_route("*", "/{tail:.*}", state.not_found)
    return app


# --------------------------------------------------------------------------------------------
# Running it


def _listen(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=1024)


class RunningEmulator:
    """An emulator listening on a loopback port in the current event loop."""

    def __init__(self, runner: web.AppRunner, state: _Emulator, host: str, sock: socket.socket):
        self._runner = runner
        self._state = state
        self._host = host
        self._port: int = sock.getsockname()[1]
        self._site: web.SockSite | None = None
        self._sock = sock
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self._port}"

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        return self._port

    @property
    def config(self) -> EmulatorConfig:
        """The live configuration; change its fields (or assign a new one) while it runs."""
        return self._state.config

    @config.setter
    def config(self, value: EmulatorConfig) -> None:
        self._state.config = value

    def endpoint(self, kind: str = "current") -> str:
        """The full URL of an endpoint: ``"current"`` (the unified ``/waves/v1/stt/``, the
        default), ``"legacy"`` (the original guide's path) or ``"legacy-current"`` (the legacy
        path on the current host, ``/waves/v1/pulse/get_text``)."""
        if kind not in PATHS:
            raise ValueError(f"endpoint kind must be one of {', '.join(PATHS)}, not {kind!r}")
        return self.url + PATHS[kind]

    def stats(self) -> dict[str, Any]:
        """What it saw; the same JSON as ``GET /_emulator/stats``."""
        return self._state.snapshot()

    def reset_stats(self) -> None:
        """Forget counters, per-content fault sequences and pending delays."""
        self._state.reset()

    async def _start_site(self) -> None:
        self._site = web.SockSite(self._runner, self._sock)
        await self._site.start()

    async def stop_listening(self) -> None:
        """Close the listening socket and drop every open connection ("service unreachable")."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self._runner.server
        for handler in server.connections if server is not None else ():
            if handler.transport is not None:
                handler.transport.abort()

    async def start_listening(self) -> None:
        """Listen again on the same port after :meth:`stop_listening`."""
        if self._site is None:
            self._sock = _listen(self._host, self._port)
            await self._start_site()

    async def close(self) -> None:
        """Stop listening, cancel requests in progress (stalls included), free the port."""
        await self.stop_listening()
        await self._runner.cleanup()

    def __repr__(self) -> str:
        stats = self._state.stats
        return (
            f"<RunningEmulator {self.url} requests={stats.requests} "
            f"in_flight={stats.in_flight} listening={self._site is not None}>"
        )


async def start_emulator(
    config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> RunningEmulator:
    """Start an emulator in the running loop and return once it accepts connections.

    Args:
        config: behaviour (default: no key, no latency, no faults).
        host: interface to listen on (loopback by default).
        port: TCP port; 0 picks a free one (see ``.url``).
    """
    app = create_app(config)
    # handler_cancellation: a request whose client gave up (e.g. during a stall) stops counting
    # as in flight at once instead of lingering for stall_seconds.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        emulator = RunningEmulator(runner, app[_STATE], host, _listen(host, port))
        await emulator._start_site()
    except BaseException:
        await runner.cleanup()
        raise
    return emulator


async def serve_forever(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    on_ready: Callable[[str], None],
) -> None:
    """Run an emulator until cancelled (the ``batchscribe emulate`` command).

    Args:
        config: behaviour.
        host: interface to listen on.
        port: TCP port.
        on_ready: called with the base URL once it accepts connections.
    """
    emulator = await start_emulator(config, host, port)
    try:
        on_ready(emulator.url)
        await asyncio.get_running_loop().create_future()  # until cancelled
    finally:
        await emulator.close()


class EmulatorThread:
    """An emulator in a background thread with its own event loop; use it as a context manager.

    For tests that drive the CLI as a subprocess and for benchmarks. Its methods are safe to call
    from any thread.
    """

    def __init__(
        self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._config = config or EmulatorConfig()
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emulator: RunningEmulator | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> EmulatorThread:
        """Start the thread and wait until the emulator accepts connections."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._emulator = loop.run_until_complete(
                    start_emulator(self._config, self._host, self._port)
                )
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._emulator.close())
                loop.close()

        self._thread = threading.Thread(target=run, name="pulse-emulator", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop the emulator and join the thread."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._thread = None

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _running(self) -> RunningEmulator:
        if self._emulator is None:
            raise RuntimeError("the emulator thread is not started (use it as a context manager)")
        return self._emulator

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:43121``."""
        return self._running().url

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        return self._running().port

    @property
    def config(self) -> EmulatorConfig:
        """The live configuration (field assignments are atomic, safe from any thread)."""
        return self._running().config if self._emulator else self._config

    @config.setter
    def config(self, value: EmulatorConfig) -> None:
        self._config = value
        if self._emulator is not None:
            self._emulator.config = value

    def endpoint(self, kind: str = "current") -> str:
        """The full URL of an endpoint: see :meth:`RunningEmulator.endpoint`."""
        return self._running().endpoint(kind)

    def stats(self) -> dict[str, Any]:
        """What it saw (taken inside the emulator's loop, so it is consistent)."""
        emulator = self._running()

        async def snapshot() -> dict[str, Any]:
            return emulator.stats()

        return self._call(snapshot())

    def reset_stats(self) -> None:
        """Forget counters, per-content fault sequences and pending delays."""
        emulator = self._running()

        async def reset() -> None:
            emulator.reset_stats()

        self._call(reset())

    def stop_listening(self) -> None:
        """Close the listening socket and drop open connections; the port stays reserved."""
        self._call(self._running().stop_listening())

    def start_listening(self) -> None:
        """Listen again on the same port."""
        self._call(self._running().start_listening())
