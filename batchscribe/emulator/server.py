"""The Pulse emulator's server: a local aiohttp application that speaks the Pulse contract.

It serves the unified path (``/waves/v1/stt/``: ``model`` required, errors ``{error,
request_id, details}``) and both legacy paths (``/api/v1/pulse/get_text`` and
``/waves/v1/pulse/get_text``: errors ``{errors, status, message}``, oversize as 400 "Audio data
too large"), checks the key and every parameter the way the service does, decodes the audio
(:mod:`~batchscribe.emulator.transcripts`) and answers in the shape of the model asked: Pulse
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
import dataclasses
import email.utils
import hashlib
import hmac
import io
import itertools
import math
import secrets
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import IO, Any, NamedTuple, TypeVar
from urllib.parse import unquote, urlsplit

import orjson
from aiohttp import web

from batchscribe.emulator.config import LEGACY_PATHS, PATHS, UNIFIED_PATH, EmulatorConfig
from batchscribe.emulator.limits import SlidingWindow, TokenBuckets
from batchscribe.emulator.transcripts import (
    AudioError,
    Signal,
    Transcript,
    canonical_url,
    num_chunks,
    sample_for,
    sample_for_url,
    signal_of,
    transcribe,
    url_audio,
    url_regions,
)
from batchscribe.pulse import (
    BOOL_PARAMS,
    PARAM_NAMES,
    PulseParams,
    check_combination,
    coerce_param,
)

__all__ = [
    "DELAY_HEADER_KINDS",
    "EmulatorThread",
    "RunningEmulator",
    "create_app",
    "serve_forever",
    "start_emulator",
]

_T = TypeVar("_T")

#: Bytes of each body kept in memory for sniffing and header parsing; the rest is spooled.
PREFIX_LIMIT = 1 << 20
#: A URL-mode JSON body larger than this is refused (it only carries a URL).
JSON_BODY_LIMIT = 64 * 1024
#: The delay-header forms a fault 429 rotates through (per content, by request number).
DELAY_HEADER_KINDS = (
    "retry-after",  # Retry-After: <whole seconds>
    "retry-after-date",  # Retry-After: <HTTP date>
    "retry-after-ms",  # retry-after-ms: <milliseconds>
    "x-ratelimit-reset",  # X-RateLimit-Reset: <whole seconds from now>
    "x-ratelimit-reset-epoch",  # X-RateLimit-Reset: <epoch seconds>
)
#: The documented body of a rate-limit 429.
RATE_LIMIT_MESSAGE = "Rate limit exceeded. Please retry after a short backoff."
_EXAMPLES_KEPT = 20
_GROUP_LANGUAGES = {
    "multi-eu": ("en", "de", "fr", "es", "it"),
    "multi-asian": ("zh", "ja", "ko"),
    "multi-indic": ("hi",),
}
_EMOTIONS = ("happiness", "sadness", "disgust", "fear", "anger")


# --------------------------------------------------------------------------------------------
# Requests: parameters and body


def _parse_params(
    items: Iterable[tuple[str, str]], *, url_input: bool, legacy: bool
) -> PulseParams | str:
    """Validate the query string as the service does; a problem comes back as a message.

    ``model`` is required on the unified path; the legacy paths default it to ``pulse`` and the
    language to ``multi-eu``. ``word_timestamps`` defaults to false (the service's default).
    """
    values: dict[str, Any] = {}
    for name, value in items:
        if name not in PARAM_NAMES:
            continue  # the service ignores parameters it does not know (e.g. age_detection)
        if name in values:
            return f"parameter {name} given more than once"
        if name in BOOL_PARAMS:
            if value not in ("true", "false"):
                return f"{name} must be true or false, not {value!r}"
            values[name] = value == "true"
            continue
        try:
            values[name] = coerce_param(name, value)
        except ValueError as exc:
            return str(exc)
    if legacy:
        values.setdefault("model", "pulse")
        values.setdefault("language", "multi-eu")
    if "model" not in values:
        return "model is required (pulse or pulse-pro)"
    if ("webhook_method" in values or "webhook_extra" in values) and "webhook_url" not in values:
        return "webhook_method and webhook_extra need webhook_url"
    values.setdefault("word_timestamps", False)
    params = PulseParams(**values)
    # Pulse Pro has no diarization: the service answers without speakers rather than refusing
    # (the client refuses the combination before sending, which is its own choice).
    checked = dataclasses.replace(params, diarize=False) if params.model == "pulse-pro" else params
    return check_combination(checked, url_input=url_input) or params


def _is_audio_type(content_type: str) -> bool:
    return content_type.startswith(("audio/", "video/")) or content_type in (
        "application/octet-stream",
        "binary/octet-stream",
    )


def _url_from_json(body: bytes) -> str:
    """The ``url`` of a URL-mode body; raises ValueError with the 400 message."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("the JSON body is not valid JSON") from None
    url = doc.get("url") if isinstance(doc, dict) else None
    if not isinstance(url, str):
        raise ValueError('the JSON body must be an object with a "url" string')
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(f"url must be an http(s) URL, not {url[:200]!r}")
    return url


class _Body(NamedTuple):
    head: bytes  # the first PREFIX_LIMIT bytes
    size: int
    digest: bytes  # sha256 of the whole body
    spool: IO[bytes] | None  # the whole body when larger than the head (closed by the caller)

    def source(self) -> IO[bytes]:
        """The whole body as a seekable file, at its start."""
        if self.spool is None:
            return io.BytesIO(self.head)
        self.spool.seek(0)
        return self.spool


async def _read_body(request: web.Request, limit: int) -> _Body | None:
    """Stream the body, hashing as it goes; past PREFIX_LIMIT it is spooled to a temporary
    file (in memory up to 8 MiB), so a 250 MB upload is never held in memory. None past
    ``limit``."""
    length = request.content_length
    if length is not None and length <= PREFIX_LIMIT:
        data = await request.read()
        if len(data) > limit:
            return None
        return _Body(data, len(data), hashlib.sha256(data).digest(), None)
    hasher = hashlib.sha256()
    head = bytearray()
    size = 0
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115
    try:
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                spool.close()
                return None
            hasher.update(chunk)
            spool.write(chunk)
            if len(head) < PREFIX_LIMIT:
                head += chunk[: PREFIX_LIMIT - len(head)]
    except BaseException:
        spool.close()
        raise
    if size <= PREFIX_LIMIT:
        spool.close()
        return _Body(bytes(head), size, hasher.digest(), None)
    return _Body(bytes(head), size, hasher.digest(), spool)


# --------------------------------------------------------------------------------------------
# Statistics


class _Stats:
    """What the emulator saw since start or the last reset."""

    def __init__(self, now: float) -> None:
        self.started = now
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.rate_limited = {"fault": 0, "rate_limit": 0, "concurrency": 0, "plan": 0}
        self.server_errors = 0
        self.resets = 0
        self.truncations = 0
        self.stalls = 0
        self.cancelled = 0
        self.early_retries = 0
        self.early_examples: list[dict[str, Any]] = []
        self.by_path = {"legacy": 0, "current": 0}  # both legacy paths count as legacy
        self.by_endpoint: dict[str, int] = {}  # path -> requests
        self.by_model: dict[str, int] = {}  # requests with valid parameters, by model asked
        self.by_language: dict[str, int] = {}  # ... and by language asked
        self.per_second: list[int] = []

    def arrive(self, now: float) -> None:
        self.requests += 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        second = int(now - self.started)
        per_second = self.per_second
        if second >= len(per_second):
            per_second.extend([0] * (second + 1 - len(per_second)))
        per_second[second] += 1

    def answered(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def snapshot(self, now: float, by_content: Mapping[str, int]) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "rate_limited": sum(self.rate_limited.values()),
            "rate_limited_by": dict(self.rate_limited),
            "server_errors": self.server_errors,
            "resets": self.resets,
            "truncations": self.truncations,
            "stalls": self.stalls,
            "cancelled": self.cancelled,
            "early_retries": self.early_retries,
            "early_retry_examples": list(self.early_examples),
            "by_content": dict(by_content),
            "by_path": dict(self.by_path),
            "by_endpoint": dict(self.by_endpoint),
            "by_model": dict(self.by_model),
            "by_language": dict(self.by_language),
            "requests_per_second": list(self.per_second),
            "uptime_s": round(now - self.started, 3),
        }


# --------------------------------------------------------------------------------------------
# The server


class _Request(NamedTuple):
    """What one endpoint request is about, once its body is read and decoded."""

    params: PulseParams
    digest: bytes
    short: str
    n: int  # requests with this content before this one
    duration: float
    size: int
    transcript: Transcript
    language: str | None  # a sample clip's language
    filename: str | None  # URL input only


class _Emulator:
    """The state and handlers of one emulator application."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._clock = time.monotonic  # replaced by the loop's clock on startup
        self.stats = _Stats(self._clock())
        self._seen: dict[str, int] = {}  # short content key -> requests so far
        self._due: dict[str, tuple[float, float]] = {}  # short key -> (retry not before, asked)
        self._tokens = 0.0
        self._token_time = 0.0
        self._bucket: tuple[float, float] | None = None  # (rate, burst) the bucket was made for
        self._window = SlidingWindow()  # the plan's limit, per model
        self._buckets = TokenBuckets()
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)

    async def on_startup(self, app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        self.stats = _Stats(loop.time())

    def reset(self) -> None:
        """Forget everything seen: counters, per-content sequences (so faults repeat), delays.
        Requests still in flight stay counted in ``in_flight`` until they end."""
        in_flight = self.stats.in_flight
        self.stats = _Stats(self._clock())
        self.stats.in_flight = self.stats.max_in_flight = in_flight
        self._seen.clear()
        self._due.clear()

    def snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot(self._clock(), self._seen)

    # -- small helpers ------------------------------------------------------------------------

    def _request_id(self) -> str:
        return f"emu-{self._id_prefix}-{next(self._ids):08d}"

    def _error(
        self,
        status: int,
        message: str,
        request_id: str,
        *,
        headers: dict[str, str] | None = None,
        legacy: bool = False,
        details: Mapping[str, Any] | None = None,
    ) -> web.Response:
        """An error answer in the shape of its endpoint: unified ``{error, request_id,
        details}``; legacy ``{errors, status: "error", message}`` for a 400, ``{message}`` for
        a 401, ``{error, request_id}`` otherwise; a 429 is ``{error, request_id}`` everywhere
        (the rate limit's documented body)."""
        doc: dict[str, Any]
        if status == 429:  # the documented rate-limit body, on every path
            doc = {"error": message, "request_id": request_id}
        elif not legacy:
            doc = {"error": message, "request_id": request_id, "details": dict(details or {})}
        elif status == 400:
            doc = {"errors": message, "status": "error", "message": message}
        elif status == 401:
            doc = {"message": message}
        else:
            doc = {"error": message, "request_id": request_id}
        response = web.Response(
            status=status, body=orjson.dumps(doc), content_type="application/json", headers=headers
        )
        response.headers["X-Request-Id"] = request_id
        return response

    def _too_large(self, request_id: str, *, legacy: bool) -> web.Response:
        """The oversize answer: 413 on the unified path, 400 "Audio data too large" on legacy."""
        limit = self.config.max_payload
        if legacy:
            return self._error(400, "Audio data too large", request_id, legacy=True)
        message = f"Audio data too large: payload over {limit} bytes"
        return self._error(413, message, request_id, details={"max_bytes": limit})

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

    def _delay_headers(self, kind: str, delay: float) -> tuple[dict[str, str], float]:
        """The header asking for ``delay`` seconds in one form, and the delay it truly asks
        (whole-second forms round up, so a client honouring them is never early)."""
        if kind == "retry-after-ms":
            ms = max(1, math.ceil(delay * 1000))
            return {"retry-after-ms": str(ms)}, ms / 1000
        if kind in ("retry-after-date", "x-ratelimit-reset-epoch"):
            wall = time.time()
            when = math.ceil(wall + delay)
            if kind == "retry-after-date":
                return {"Retry-After": email.utils.formatdate(when, usegmt=True)}, when - wall
            return {"X-RateLimit-Reset": str(when)}, when - wall
        seconds = max(1, math.ceil(delay))
        name = "Retry-After" if kind == "retry-after" else "X-RateLimit-Reset"
        return {name: str(seconds)}, float(seconds)

    def _ask_delay(
        self, status: int, message: str, request_id: str, short: str, kind: str, delay: float
    ) -> web.Response:
        headers, asked = self._delay_headers(kind, delay)
        self._due[short] = (self._clock() + asked, asked)
        return self._error(status, message, request_id, headers=headers)

    def _rate_limited(
        self, message: str, request_id: str, short: str, delay: float, *, plan: bool
    ) -> web.Response:
        """A rate-limit 429: with ``retry-after-ms`` (and, for the plan, ``Retry-After`` in
        whole seconds) when ``rate_headers`` is on; with no delay header at all when off."""
        if not self.config.rate_headers:
            return self._error(429, message, request_id)
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
            response = self._error(401, "missing or invalid API key", self._request_id(),
                                   legacy=legacy)  # fmt: skip
        elif (request.content_length or 0) > self.config.max_payload:
            response = self._too_large(self._request_id(), legacy=legacy)
        if response is not None:
            self.stats.requests += 1
            self.stats.answered(response.status)
            return await _refuse(request, response)
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def endpoint(self, request: web.Request) -> web.StreamResponse:
        """POST to a Pulse path: count, handle, and record how it ended."""
        # self.stats is read afresh after every await: a reset may replace it meanwhile.
        if request.method != "POST":
            self.stats.requests += 1
            self.stats.answered(405)
            return self._error(405, "use POST", self._request_id(), headers={"Allow": "POST"},
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

    async def _accept(
        self, request: web.Request, request_id: str, arrived: float
    ) -> _Request | web.Response:
        """Validate a request up to its decoded audio: what it asks, or the refusal."""
        legacy = request.path in LEGACY_PATHS
        if not self._authorized(request):
            detail = "missing" if "Authorization" not in request.headers else "invalid"
            message = f"{detail} API key (Authorization: Bearer <key>)"
            return self._error(401, message, request_id, legacy=legacy)
        url_input = request.content_type == "application/json"
        params = _parse_params(request.query.items(), url_input=url_input, legacy=legacy)
        if isinstance(params, str):
            return self._error(400, params, request_id, legacy=legacy)
        # What reached the service: Pulse answers do not echo the language, so tests read it here.
        stats = self.stats
        stats.by_model[params.model] = stats.by_model.get(params.model, 0) + 1
        stats.by_language[params.language] = stats.by_language.get(params.language, 0) + 1
        if not url_input and not _is_audio_type(request.content_type):
            message = (
                f"unsupported Content-Type {request.content_type!r}: send audio/* or "
                "application/octet-stream, or application/json with a url"
            )
            return self._error(400, message, request_id, legacy=legacy)
        limit = JSON_BODY_LIMIT if url_input else self.config.max_payload
        body = None
        if (request.content_length or 0) <= limit:
            body = await _read_body(request, limit)
        if body is None:
            if url_input:
                refusal = self._error(413, f"JSON body over {limit} bytes", request_id)
            else:
                refusal = self._too_large(request_id, legacy=legacy)
            return await _refuse(request, refusal)
        try:
            return await self._decode(request, body, params, url_input, arrived, request_id)
        finally:
            if body.spool is not None:
                body.spool.close()

    async def _decode(
        self,
        request: web.Request,
        body: _Body,
        params: PulseParams,
        url_input: bool,
        arrived: float,
        request_id: str,
    ) -> _Request | web.Response:
        legacy = request.path in LEGACY_PATHS
        if body.size == 0:
            return self._error(400, "empty body: no audio", request_id, legacy=legacy)
        url = None
        if url_input:
            try:
                url = _url_from_json(body.head)
            except ValueError as exc:
                return self._error(400, str(exc), request_id, legacy=legacy)
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
            return _Request(params, digest, short, n, duration, round(duration * 16000),
                            transcript, sample.language if sample else None, filename)  # fmt: skip
        max_seconds = self.config.max_audio_seconds()
        try:
            signal = await _analyse(body, max_seconds)
        except AudioError as exc:
            return self._error(400, str(exc), request_id, legacy=legacy)
        refusal = self._check_signal(signal, request_id, legacy=legacy)
        if refusal is not None:
            return refusal
        sample = sample_for(digest)
        transcript = transcribe(signal.regions, sample.sentence if sample else None)
        duration = sample.duration if sample else signal.duration
        return _Request(params, digest, short, n, duration, body.size, transcript,
                        sample.language if sample else None, None)  # fmt: skip

    def _check_signal(
        self, signal: Signal, request_id: str, *, legacy: bool
    ) -> web.Response | None:
        """Refuse audio the service does not take: more than one channel, past the session."""
        if signal.channels != 1:
            message = "Only single channel (mono) audio is supported"
            details: dict[str, Any] = {"channels": signal.channels}
            return self._error(400, message, request_id, legacy=legacy, details=details)
        if signal.longer_than is not None:
            minutes = signal.longer_than / 60
            message = (
                f"Audio longer than the {minutes:g}-minute session limit: split it into chunks"
            )
            details = {"max_seconds": signal.longer_than}
            return self._error(400, message, request_id, legacy=legacy, details=details)
        return None

    def _gateway(self, job: _Request, request_id: str) -> web.Response | None:
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
            _reset(request)
            return web.Response(status=200), "reset"

        if params.webhook_url:
            answer: dict[str, Any] = {"status": "processing", "request_id": request_id}
        else:
            elapsed = max(self._clock() - arrived, 0.001)
            answer = _answer(job, request_id, elapsed)
        payload = orjson.dumps(answer)
        if fault == "truncate":
            return await _truncated(request, payload, roll, request_id), "truncated"
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
        return self._error(500, "internal server error", request_id)

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
        return self._error(404, message, self._request_id())


async def _analyse(body: _Body, max_seconds: float | None) -> Signal:
    """Decode a body off the event loop (a small one inline: a thread costs more than it)."""
    if body.spool is None and body.size < 64 * 1024:
        return signal_of(body.source(), body.digest, body.head, max_seconds=max_seconds)
    return await asyncio.to_thread(
        signal_of, body.source(), body.digest, body.head, max_seconds=max_seconds
    )


def _words(transcript: Transcript, *, diarize: bool) -> list[dict[str, Any]]:
    words: list[dict[str, Any]] = []
    for word in transcript.words:
        entry: dict[str, Any] = {
            "start": word.start,
            "end": word.end,
            "word": word.text,
            "confidence": word.confidence,
        }
        if diarize:
            entry["speaker"] = word.utterance % 2
            entry["speaker_confidence"] = round(min(1.0, word.confidence + 0.05), 2)
        words.append(entry)
    return words


def _extras(job: _Request) -> dict[str, Any]:
    """The gender / emotions blocks their flags ask for (derived from the content hash)."""
    digest = job.digest
    extras: dict[str, Any] = {}
    if job.params.gender_detection:
        extras["gender"] = "female" if digest[20] % 2 else "male"
    if job.params.emotion_detection:
        raw = [1 + b for b in digest[21:26]]
        extras["emotions"] = {
            name: round(value / sum(raw), 2) for name, value in zip(_EMOTIONS, raw, strict=True)
        }
    return extras


def _answer(job: _Request, request_id: str, elapsed: float) -> dict[str, Any]:
    """The 200 body in the shape of the model asked (see shared/pulse-api.md, Response)."""
    params = job.params
    timed = params.word_timestamps
    transcript = job.transcript
    duration = round(job.duration, 3)
    answer: dict[str, Any] = {"status": "success", "transcription": transcript.text}
    if params.model == "pulse-pro":  # no utterances, no diarization; ids and timing in the body
        answer["words"] = _words(transcript, diarize=False) if timed else []
        language = params.language
        if language in _GROUP_LANGUAGES:
            group = _GROUP_LANGUAGES[language]
            language = job.language or group[job.digest[30] % len(group)]
        answer["language"] = language
        answer["request_id"] = request_id
        answer["totalBytes"] = job.size
        answer["metadata"] = {
            "duration": duration,
            "fileSize": job.size,
            "processing_time_ms": round(elapsed * 1000),
            "rtfx": round(job.duration / elapsed, 1),
            "num_chunks": num_chunks(job.duration),
        }
    else:
        answer["words"] = _words(transcript, diarize=params.diarize) if timed else []
        utterances = []
        for start, end, text, index in transcript.utterances() if timed else ():
            utterance: dict[str, Any] = {"start": start, "end": end, "text": text}
            if params.diarize:
                utterance["speaker"] = index % 2
            utterances.append(utterance)
        answer["utterances"] = utterances
        answer["metadata"] = {"duration": duration, "fileSize": job.size}
        if job.filename is not None:
            answer["metadata"]["filename"] = job.filename
    answer.update(_extras(job))
    return answer


async def _refuse(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response`` and close the connection without reading the rest of the body
    (aiohttp would otherwise drain up to 10 s of it to keep the connection alive)."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # closes after the response is flushed; no draining
    return response


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP RST and no response."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout turns close() into a reset.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _truncated(
    request: web.Request, payload: bytes, roll: bytes, request_id: str
) -> web.StreamResponse:
    """A 200 whose body is cut short: either the full Content-Length is declared and the
    connection closes mid-body, or a complete HTTP body carries only half of the JSON."""
    cut = max(1, len(payload) // 2)
    if roll[15] % 2:
        response = web.Response(body=payload[:cut], content_type="application/json")
        response.headers["X-Request-Id"] = request_id
        return response
    stream = web.StreamResponse(status=200, headers={"X-Request-Id": request_id})
    stream.content_type = "application/json"
    stream.content_length = len(payload)
    await stream.prepare(request)
    await stream.write(payload[:cut])
    if request.transport is not None:
        request.transport.close()  # close, not abort: the half body is flushed first
    return stream


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
