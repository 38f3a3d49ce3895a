"""The Pulse emulator: a local aiohttp server that speaks the Pulse contract, with faults on demand.

It serves both endpoint paths, checks the key and every parameter the way the service does, and
answers with a deterministic transcript: the real sentence for the clips of the sample archive
(known by the sha256 of their bytes, ``batchscribe/data/samples.json``), a pseudo-transcript
derived from the content hash for any other audio or URL. It never fetches a URL and never calls
a webhook.

Faults are deterministic: the fate of the n-th request carrying the same content is decided from
``(seed, content hash, n)``, so a run gives the same outcome per item whatever the arrival order.
Gateway limits (``rate_limit``, ``max_concurrent``) come before faults and depend on timing.
Everything the server saw is counted in :meth:`RunningEmulator.stats` (also ``GET
/_emulator/stats``), so tests spy on the emulator instead of mocking the client.

Order of checks for a POST to an endpoint: key (401), parameters (400), Content-Type (400),
Content-Length over the limit (413, before any body byte is read), the body is streamed (413 past
the limit; only the first MiB is kept, for sniffing), body validity (400), the rate limit (429),
the concurrency cap (429), the fault roll, latency, then the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import email.utils
import functools
import hashlib
import hmac
import io
import itertools
import math
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson
from aiohttp import web

from batchscribe.audio import wav_duration
from batchscribe.pulse import (
    BOOL_PARAMS,
    CURRENT_PATH,
    ENDPOINT_PATHS,
    LEGACY_PATH,
    MAX_PAYLOAD,
    PARAM_NAMES,
    PulseParams,
    check_combination,
    coerce_param,
)

__all__ = [
    "PROFILES",
    "EmulatorConfig",
    "EmulatorThread",
    "FaultRates",
    "RunningEmulator",
    "add_arguments",
    "config_from_args",
    "content_key",
    "create_app",
    "serve_forever",
    "start_emulator",
    "transcript_for",
    "transcript_for_url",
]

_T = TypeVar("_T")

#: Bytes of each body kept in memory for sniffing and header parsing; the rest is only hashed.
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
_EXAMPLES_KEPT = 20


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass
class FaultRates:
    """Per-request fault probabilities (0..1), rolled in this order; their sum must be <= 1.

    Args:
        p429: answer 429 with a delay header (``EmulatorConfig.retry_delay_s``).
        p5xx: answer 500, 502 (an HTML proxy page) or 503 (sometimes with Retry-After).
        preset: reset the connection without any response.
        ptruncate: answer 200 with a body cut short.
        pstall: hang ``EmulatorConfig.stall_seconds`` before answering normally.
    """

    p429: float = 0.0
    p5xx: float = 0.0
    preset: float = 0.0
    ptruncate: float = 0.0
    pstall: float = 0.0

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault rate {spec.name} must be between 0 and 1, not {value!r}")
        if self.total() > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {self.total():g}; they must add up to <= 1")

    def total(self) -> float:
        """The probability that a request meets any fault."""
        return self.p429 + self.p5xx + self.preset + self.ptruncate + self.pstall


PROFILES: dict[str, FaultRates] = {
    "none": FaultRates(),
    # A service having a bad day: every kind of transient trouble, rarely. No stalls, so a run
    # is not slowed down by client timeouts.
    "flaky": FaultRates(p429=0.05, p5xx=0.05, preset=0.02, ptruncate=0.02),
    # Heavy throttling: one request in three is told to come back later.
    "rate-limited": FaultRates(p429=0.35),
    # Mostly down: most requests fail with 5xx or a dropped connection.
    "outage": FaultRates(p5xx=0.6, preset=0.2),
    # Everything, often, stalls included.
    "hostile": FaultRates(p429=0.15, p5xx=0.15, preset=0.08, ptruncate=0.08, pstall=0.04),
}


@dataclass
class EmulatorConfig:
    """How the emulator behaves; mutable while it runs (read afresh for every request).

    Args:
        key: when set, requests need ``Authorization: Bearer <key>`` (else 401).
        latency_ms: added before every answer (not before 4xx and gateway 429s).
        jitter_ms: latency varies uniformly by +/- this much (seeded, per content).
        faults: fault probabilities; see :data:`PROFILES`.
        seed: makes fault rolls and jitter differ between runs while staying reproducible.
        rate_limit: token bucket refilled at this many requests/s; an empty bucket answers 429
            with ``retry-after-ms`` set to the time until the next token.
        rate_burst: bucket capacity; default ``max(1, rate_limit / 10)`` (100 ms of tokens), so a
            client has to pace itself rather than fire a second's worth at once.
        rate_headers: when False, the rate limit's 429s carry no delay header (no
            ``Retry-After``, ``retry-after-ms`` or ``X-RateLimit-Reset``): Pulse promises none.
        max_concurrent: with more than this many requests in flight, answer 429 with
            ``retry-after-ms: busy_retry_ms``.
        stall_seconds: how long a stall fault hangs before answering normally.
        retry_delay_s: the delay fault 429s (and 503s with Retry-After) ask for.
        busy_retry_ms: the delay concurrency-cap 429s ask for.
        max_payload: bodies over this many bytes get 413 (the service's 250 MB by default).
        early_grace_s: a retry this much before the asked delay is not counted as early
            (clock granularity between client and server).
    """

    key: str | None = None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    faults: FaultRates = field(default_factory=FaultRates)
    seed: int = 0
    rate_limit: float | None = None
    rate_headers: bool = True
    max_concurrent: int | None = None
    stall_seconds: float = 3600.0
    retry_delay_s: float = 1.0
    rate_burst: float | None = None
    busy_retry_ms: int = 50
    max_payload: int = MAX_PAYLOAD
    early_grace_s: float = 0.05


# --------------------------------------------------------------------------------------------
# Content: sniffing, durations, transcripts (pure)


class _Sample(NamedTuple):
    sentence: str
    duration: float
    file: str
    language: str


@functools.cache
def _samples() -> dict[str, _Sample]:
    """The sample archive table: sha256 hex -> clip (see sample_manifests/make_samples.sh)."""
    text = resources.files("batchscribe").joinpath("data/samples.json").read_text("utf-8")
    table: dict[str, Any] = orjson.loads(text)
    return {
        sha: _Sample(row["sentence"], float(row["duration"]), row["file"], row["language"])
        for sha, row in table.items()
    }


def _sniff(head: bytes) -> str | None:
    """The audio container of a body from its first bytes, or None when it is not audio."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:3] == b"ID3":
        return "mp3"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:5] == b"#!AMR":
        return "amr"
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:  # 12-bit sync, layer 00: ADTS AAC
            return "aac"
        if head[1] & 0xE0 == 0xE0 and head[1] & 0x06:  # 11-bit sync, layer I/II/III
            return "mp3"
    return None


def _mutagen_info(data: bytes) -> Any:
    import mutagen  # deferred: only non-WAV bodies of unknown content need it

    try:
        parsed = mutagen.File(io.BytesIO(data))
    except Exception:  # mutagen raises many kinds of error on odd or partial files
        return None
    return None if parsed is None else parsed.info


def _audio_duration(fmt: str, head: bytes, size: int) -> float:
    """Duration in seconds from the audio header; ``head`` is the body's first bytes, ``size``
    its total length. Falls back to size/16000 (a 128 kbit/s guess) when the header says nothing.
    """
    if fmt == "amr":
        return size / 1600  # AMR-NB 12.2 kbit/s: 32-byte frames every 20 ms
    truncated = size > len(head)
    info = _mutagen_info(head)
    length = float(getattr(info, "length", 0.0) or 0.0)
    bitrate = float(getattr(info, "bitrate", 0) or 0)
    if not truncated or fmt == "flac":  # FLAC's STREAMINFO holds the total sample count
        if length > 0:
            return length
    elif fmt == "mp3" and bitrate > 0:
        # mutagen knows the full length from a Xing/VBRI header; else it measured the prefix.
        return max(length, size * 8 / bitrate)
    elif bitrate > 0:
        return size * 8 / bitrate
    return size / 16000


_WORDS = (
    "amber", "anchor", "apple", "arrow", "autumn", "basket", "beacon", "birch", "bridge",
    "candle", "canyon", "cedar", "copper", "coral", "crystal", "dawn", "desert", "ember",
    "falcon", "feather", "forest", "garden", "glacier", "harbor", "hazel", "horizon", "island",
    "ivory", "jasmine", "lantern", "meadow", "meteor", "mirror", "maple", "marble", "nectar",
    "ocean", "orchard", "pebble", "pepper", "pilot", "planet", "prairie", "quartz", "rain",
    "raven", "ribbon", "river", "saddle", "shadow", "silver", "spruce", "summit", "thunder",
    "timber", "tulip", "valley", "velvet", "violet", "walnut", "willow", "winter", "yonder",
    "zephyr",
)  # fmt: skip


def _pseudo_sentence(digest: bytes) -> str:
    """One to three short sentences picked from a word list by the digest's bytes; the last ends
    with the first 8 hex digits of the digest, so a test can tell which content it belongs to."""
    count = 1 + digest[0] % 3
    pos = 1
    sentences = []
    for index in range(count):
        length = 3 + digest[pos] % 5
        words = [_WORDS[b % len(_WORDS)] for b in digest[pos + 1 : pos + 1 + length]]
        pos += 1 + length
        if index == count - 1:
            words.append(digest.hex()[:8])
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def transcript_for(body: bytes) -> str:
    """The transcription the emulator returns for a raw-audio body.

    Args:
        body: the complete request body; a sample-archive clip gives its real sentence.
    """
    digest = hashlib.sha256(body).digest()
    sample = _samples().get(digest.hex())
    return sample.sentence if sample else _pseudo_sentence(digest)


def _sample_for_url(url: str) -> _Sample | None:
    path = unquote(urlsplit(url).path)
    for sample in _samples().values():
        if path.endswith("/" + sample.file):
            return sample
    return None


_SIGNING_PREFIXES = ("x-amz-", "x-goog-")
_SIGNING_NAMES = frozenset({"signature", "expires", "awsaccesskeyid", "googleaccessid"})


def canonical_url(url: str) -> str:
    """``url`` without the query parameters that sign it (``X-Amz-*``, ``X-Goog-*``,
    ``Signature``, ``Expires``, ...): what names the audio. The service fetches the same object
    whatever the signature, so a URL signed anew for a retry is the same content."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    kept = [
        pair
        for pair in parts.query.split("&")
        if not (
            (name := unquote(pair.partition("=")[0]).lower()).startswith(_SIGNING_PREFIXES)
            or name in _SIGNING_NAMES
        )
    ]
    return urlunsplit(parts._replace(query="&".join(kept)))


def transcript_for_url(url: str) -> str:
    """The transcription the emulator returns for a URL-mode request (it fetches nothing).

    Args:
        url: the ``url`` of the JSON body; one whose path ends with a sample clip's path under
            ``archive/`` (``https://example.org/a/2019/01-weather.wav``) gives its sentence.
            Its signing query parameters do not count (see :func:`canonical_url`).
    """
    sample = _sample_for_url(url)
    if sample:
        return sample.sentence
    return _pseudo_sentence(hashlib.sha256(canonical_url(url).encode()).digest())


def content_key(content: bytes | str) -> str:
    """The short content hash the emulator files requests under in ``stats()["by_content"]``:
    the first 12 hex digits of the sha256 of a raw body, or of a URL string in URL mode
    (without its signing query parameters: see :func:`canonical_url`)."""
    data = canonical_url(content).encode() if isinstance(content, str) else content
    return hashlib.sha256(data).hexdigest()[:12]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_GROUP_LANGUAGES = {
    "multi-eu": ("en", "de", "fr", "es", "it"),
    "multi-asian": ("zh", "ja", "ko"),
    "multi-indic": ("hi",),
}
_EMOTIONS = ("happiness", "sadness", "disgust", "fear", "anger")


def _transcript_body(
    text: str, duration: float, digest: bytes, params: PulseParams
) -> dict[str, Any]:
    """words / utterances (and gender / emotions) for a transcript spread over ``duration``:
    one utterance per sentence, word times in proportion to word length, a short lead-in."""
    sentences = [sentence.split() for sentence in _SENTENCE_END.split(text)]
    lead = min(0.25, duration * 0.06)
    total = sum(len(word) + 2 for sentence in sentences for word in sentence) or 1
    scale = max(duration - 2 * lead, 0.0) / total
    diarize = params.diarize
    words: list[dict[str, Any]] = []
    utterances: list[dict[str, Any]] = []
    clock = lead
    position = 0
    for index, sentence in enumerate(sentences):
        if not sentence:
            continue
        first = len(words)
        for word in sentence:
            share = scale * (len(word) + 2)
            entry: dict[str, Any] = {
                "start": round(clock, 3),
                "end": round(min(clock + share * 0.88, duration), 3),
                "word": word,
                "confidence": (80 + digest[position & 31] % 20) / 100,
            }
            if diarize:
                entry["speaker"] = index % 2
            words.append(entry)
            clock += share
            position += 1
        utterance: dict[str, Any] = {
            "start": words[first]["start"],
            "end": words[-1]["end"],
            "text": " ".join(sentence),
        }
        if diarize:
            utterance["speaker"] = index % 2
        utterances.append(utterance)
    answer: dict[str, Any] = {}
    if params.word_timestamps:
        answer["words"] = words
    answer["utterances"] = utterances
    if params.gender_detection:
        answer["gender"] = "female" if digest[20] % 2 else "male"
    if params.emotion_detection:
        raw = [1 + b for b in digest[21:26]]
        answer["emotions"] = {
            name: round(value / sum(raw), 2) for name, value in zip(_EMOTIONS, raw, strict=True)
        }
    return answer


# --------------------------------------------------------------------------------------------
# Requests: parameters and body


def _parse_params(items: Iterable[tuple[str, str]], *, url_input: bool) -> PulseParams | str:
    """Validate the query string as the service does; a problem comes back as a message."""
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
    if "model" not in values:
        return "model is required (pulse or pulse-pro)"
    if ("webhook_method" in values or "webhook_extra" in values) and "webhook_url" not in values:
        return "webhook_method and webhook_extra need webhook_url"
    params = PulseParams(**values)
    return check_combination(params, url_input=url_input) or params


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


async def _read_body(request: web.Request, limit: int) -> _Body | None:
    """Stream the body, hashing as it goes and keeping only its head; None past ``limit``."""
    length = request.content_length
    if length is not None and length <= PREFIX_LIMIT:
        data = await request.read()
        if len(data) > limit:
            return None
        return _Body(data, len(data), hashlib.sha256(data).digest())
    hasher = hashlib.sha256()
    head = bytearray()
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        hasher.update(chunk)
        if len(head) < PREFIX_LIMIT:
            head += chunk[: PREFIX_LIMIT - len(head)]
    return _Body(bytes(head), size, hasher.digest())


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
        self.rate_limited = {"fault": 0, "rate_limit": 0, "concurrency": 0}
        self.server_errors = 0
        self.resets = 0
        self.truncations = 0
        self.stalls = 0
        self.cancelled = 0
        self.early_retries = 0
        self.early_examples: list[dict[str, Any]] = []
        self.by_path = {"legacy": 0, "current": 0}
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
            "requests_per_second": list(self.per_second),
            "uptime_s": round(now - self.started, 3),
        }


# --------------------------------------------------------------------------------------------
# The server


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
        self, status: int, message: str, request_id: str, *, headers: dict[str, str] | None = None
    ) -> web.Response:
        body = orjson.dumps({"error": message, "request_id": request_id})
        response = web.Response(
            status=status, body=body, content_type="application/json", headers=headers
        )
        response.headers["X-Request-Id"] = request_id
        return response

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
        status, message = 0, ""
        if not self._authorized(request):
            status, message = 401, "missing or invalid API key"
        elif (request.content_length or 0) > self.config.max_payload:
            status, message = 413, f"payload over {self.config.max_payload} bytes"
        if status:
            self.stats.requests += 1
            self.stats.answered(status)
            return await _refuse(request, self._error(status, message, self._request_id()))
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def endpoint(self, request: web.Request) -> web.StreamResponse:
        """POST to a Pulse path: count, handle, and record how it ended."""
        # self.stats is read afresh after every await: a reset may replace it meanwhile.
        if request.method != "POST":
            self.stats.requests += 1
            self.stats.answered(405)
            return self._error(405, "use POST", self._request_id(), headers={"Allow": "POST"})
        arrived = self._clock()
        self.stats.arrive(arrived)
        self.stats.by_path["legacy" if request.path == LEGACY_PATH else "current"] += 1
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

    async def _transcribe(
        self, request: web.Request, arrived: float
    ) -> tuple[web.StreamResponse, str]:
        config = self.config
        request_id = self._request_id()
        if not self._authorized(request):
            detail = "missing" if "Authorization" not in request.headers else "invalid"
            return self._error(
                401, f"{detail} API key (Authorization: Bearer <key>)", request_id
            ), ""
        url_input = request.content_type == "application/json"
        params = _parse_params(request.query.items(), url_input=url_input)
        if isinstance(params, str):
            return self._error(400, params, request_id), ""
        if not url_input and not _is_audio_type(request.content_type):
            message = (
                f"unsupported Content-Type {request.content_type!r}: send audio/* or "
                "application/octet-stream, or application/json with a url"
            )
            return self._error(400, message, request_id), ""
        limit = JSON_BODY_LIMIT if url_input else config.max_payload
        body = None
        if (request.content_length or 0) <= limit:
            body = await _read_body(request, limit)
        if body is None:
            too_large = self._error(413, f"payload over {limit} bytes", request_id)
            return await _refuse(request, too_large), ""
        if body.size == 0:
            return self._error(400, "empty body: no audio", request_id), ""

        if url_input:
            try:
                url = _url_from_json(body.head)
            except ValueError as exc:
                return self._error(400, str(exc), request_id), ""
            digest = hashlib.sha256(canonical_url(url).encode()).digest()
        else:
            digest = body.digest
            url = None
        key = digest.hex()
        short = key[:12]
        n = self._seen.get(short, 0)
        self._seen[short] = n + 1
        self._note_arrival(short, arrived)

        fmt = None if url_input else _sniff(body.head[:16])
        if not url_input and fmt is None:
            return self._error(400, "unreadable audio: not a known audio format", request_id), ""
        duration: float | None
        if url is not None:
            sample = _sample_for_url(url)
            duration = sample.duration if sample else 2.0 + digest[31] / 16
            size = round(duration * 16000)
            filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or "audio"
        else:
            sample = _samples().get(key)
            if sample:
                duration = sample.duration
            elif fmt == "wav":
                duration = wav_duration(body.head, body.size)
            else:
                duration = _audio_duration(fmt or "", body.head, body.size)
            if duration is None:
                return self._error(400, "unreadable audio: broken WAV header", request_id), ""
            size = body.size
            filename = sample.file.rsplit("/", 1)[-1] if sample else f"{short}.{fmt}"

        # Gateway limits: they do not depend on content, only on timing.
        wait = self._take_token(self._clock())
        if wait > 0:
            self.stats.rate_limited["rate_limit"] += 1
            message = f"rate limit of {config.rate_limit:g} requests/s exceeded"
            if not config.rate_headers:
                return self._error(429, message, request_id), ""
            response = self._ask_delay(429, message, request_id, short, "retry-after-ms", wait)
            return response, ""
        if config.max_concurrent is not None and self.stats.in_flight > config.max_concurrent:
            self.stats.rate_limited["concurrency"] += 1
            message = f"more than {config.max_concurrent} requests in flight"
            delay = config.busy_retry_ms / 1000
            return self._ask_delay(429, message, request_id, short, "retry-after-ms", delay), ""

        # The fault roll and the jitter: a function of (seed, content, n) only.
        faults = config.faults
        roll = hashlib.blake2b(f"{config.seed}:{key}:{n}".encode(), digest_size=16).digest()
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
        if fault == "stall":
            self.stats.stalls += 1
            await asyncio.sleep(config.stall_seconds)
        if latency > 0 and not params.webhook_url:  # a webhook call is acknowledged at once
            await asyncio.sleep(latency)
        if fault == "429":
            self.stats.rate_limited["fault"] += 1
            # Successive 429s for one content rotate through every header form.
            kind = DELAY_HEADER_KINDS[(n + digest[29]) % len(DELAY_HEADER_KINDS)]
            message = "too many requests, slow down"
            return self._ask_delay(429, message, request_id, short, kind, config.retry_delay_s), ""
        if fault == "5xx":
            self.stats.server_errors += 1
            return self._server_error(roll, request_id, short), ""
        if fault == "reset":
            _reset(request)
            return web.Response(status=200), "reset"

        if params.webhook_url:
            answer: dict[str, Any] = {"status": "processing", "request_id": request_id}
        else:
            answer = self._answer(params, sample, digest, duration, size, filename, request_id)
            elapsed = max(self._clock() - arrived, 0.001)
            answer["metadata"]["processing_time_ms"] = round(elapsed * 1000)
            answer["metadata"]["rtfx"] = round(duration / elapsed, 1)
        payload = orjson.dumps(answer)
        if fault == "truncate":
            return await _truncated(request, payload, roll, request_id), "truncated"
        response = web.Response(body=payload, content_type="application/json")
        response.headers["X-Request-Id"] = request_id
        return response, ""

    def _answer(
        self,
        params: PulseParams,
        sample: _Sample | None,
        digest: bytes,
        duration: float,
        size: int,
        filename: str,
        request_id: str,
    ) -> dict[str, Any]:
        text = sample.sentence if sample else _pseudo_sentence(digest)
        language = params.language
        if language in _GROUP_LANGUAGES:
            group = _GROUP_LANGUAGES[language]
            language = sample.language if sample else group[digest[30] % len(group)]
        answer: dict[str, Any] = {"status": "success", "transcription": text}
        answer.update(_transcript_body(text, duration, digest, params))
        answer["language"] = language
        answer["request_id"] = request_id
        answer["metadata"] = {
            "duration": round(duration, 3),
            "fileSize": size,
            "filename": filename,
            "processing_time_ms": 0,
            "rtfx": 0.0,
            "num_chunks": max(1, math.ceil(duration / 30)),
        }
        return answer

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
            return web.Response(status=503)  # an empty body, as load balancers send
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
        message = f"no endpoint at {request.path}; Pulse paths are {', '.join(ENDPOINT_PATHS)}"
        return self._error(404, message, self._request_id())


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
    for path in ENDPOINT_PATHS:
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

    def endpoint(self, kind: str = "legacy") -> str:
        """The full URL of an endpoint: ``"legacy"`` or ``"current"``."""
        paths = {"legacy": LEGACY_PATH, "current": CURRENT_PATH}
        if kind not in paths:
            raise ValueError(f"endpoint kind must be 'legacy' or 'current', not {kind!r}")
        return self.url + paths[kind]

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

    def endpoint(self, kind: str = "legacy") -> str:
        """The full URL of an endpoint: ``"legacy"`` or ``"current"``."""
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


# --------------------------------------------------------------------------------------------
# Command line: `batchscribe emulate`


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability must be between 0 and 1, not {text}")
    return value


def _latency(text: str) -> tuple[float, float]:
    base, _, jitter = text.partition(":")
    try:
        values = float(base), float(jitter or 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"latency must look like MS or MS:JITTER (e.g. 200:50), not {text!r}"
        ) from None
    if not all(0 <= value < math.inf for value in values):  # (NaN too)
        raise argparse.ArgumentTypeError(f"latency and jitter must be >= 0, not {text!r}")
    return values


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < value < math.inf:  # (NaN too)
            raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
        return value

    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``batchscribe emulate`` flags to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: loopback only)")
    parser.add_argument("--port", type=_port, default=8787, help="TCP port (default: 8787; 0: any)")
    parser.add_argument("--key", help="require Authorization: Bearer KEY (default: no key check)")
    parser.add_argument(
        "--latency",
        type=_latency,
        default=(0.0, 0.0),
        metavar="MS[:JITTER]",
        help="added latency per answer in ms, optionally +/- JITTER ms (default: 0)",
    )
    parser.add_argument(
        "--faults",
        choices=sorted(PROFILES),
        default="none",
        help="fault profile (default: none); --p* flags override single rates",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault rolls (default: 0)")
    parser.add_argument(
        "--rate-limit",
        type=_positive(float),
        metavar="R",
        help="token bucket of R requests/s (burst max(1, R/10)); beyond it 429 + retry-after-ms",
    )
    parser.add_argument(
        "--max-concurrent",
        type=_positive(int),
        metavar="C",
        help="429 when more than C requests are in flight",
    )
    for flag, what in (
        ("--p429", "429 with a delay header"),
        ("--p5xx", "500/502/503"),
        ("--preset", "connection reset without a response"),
        ("--ptruncate", "200 with a body cut short"),
        ("--pstall", "hang --stall-seconds before answering"),
    ):
        parser.add_argument(flag, type=_rate, metavar="P", help=f"probability of {what}")
    parser.add_argument(
        "--stall-seconds",
        type=_positive(float),
        default=3600.0,
        metavar="S",
        help="how long a stall hangs (default: 3600)",
    )


def config_from_args(ns: argparse.Namespace) -> EmulatorConfig:
    """The configuration the ``batchscribe emulate`` flags describe (profile, then overrides).

    Raises:
        ValueError: when the fault rates add up to more than 1.
    """
    rates = dataclasses.asdict(PROFILES[ns.faults])
    for name in rates:
        value = getattr(ns, name, None)
        if value is not None:
            rates[name] = value
    latency, jitter = ns.latency
    return EmulatorConfig(
        key=ns.key,
        latency_ms=latency,
        jitter_ms=jitter,
        faults=FaultRates(**rates),
        seed=ns.seed,
        rate_limit=ns.rate_limit,
        max_concurrent=ns.max_concurrent,
        stall_seconds=ns.stall_seconds,
    )
