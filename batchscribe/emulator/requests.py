"""What a request to the emulator asks: its query parameters checked as the service checks them,
its body streamed and hashed (spooled to disk past 1 MiB), its audio decoded.

Pure where it can be: :func:`parse_params` and :func:`url_from_json` turn input into a value or
the 400 message; :func:`read_body` and :func:`analyse_body` are the only I/O.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from typing import IO, Any, NamedTuple
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from batchscribe.emulator.transcripts import Signal, Transcript, signal_of
from batchscribe.pulse import (
    BOOL_PARAMS,
    PARAM_NAMES,
    PulseParams,
    check_combination,
    coerce_param,
)

__all__ = [
    "JSON_BODY_LIMIT",
    "PREFIX_LIMIT",
    "Body",
    "Job",
    "analyse_body",
    "is_audio_type",
    "parse_params",
    "read_body",
    "url_from_json",
]

#: Bytes of each body kept in memory for sniffing and header parsing; the rest is spooled.
PREFIX_LIMIT = 1 << 20
#: A URL-mode JSON body larger than this is refused (it only carries a URL).
JSON_BODY_LIMIT = 64 * 1024


def parse_params(
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


def is_audio_type(content_type: str) -> bool:
    return content_type.startswith(("audio/", "video/")) or content_type in (
        "application/octet-stream",
        "binary/octet-stream",
    )


def url_from_json(body: bytes) -> str:
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


class Body(NamedTuple):
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


async def read_body(
    request: web.Request, limit: int, pace: Callable[[int], Awaitable[None]]
) -> Body | None:
    """Stream the body, hashing as it goes; past PREFIX_LIMIT it is spooled to a temporary
    file (in memory up to 8 MiB), so a 250 MB upload is never held in memory. None past
    ``limit``. ``pace`` is awaited with the size of every piece read (the link's speed: while
    it waits, nothing more is read, and TCP's flow control slows the sender)."""
    length = request.content_length
    if length is not None and length <= PREFIX_LIMIT:
        data = await request.read()
        await pace(len(data))
        if len(data) > limit:
            return None
        return Body(data, len(data), hashlib.sha256(data).digest(), None)
    hasher = hashlib.sha256()
    head = bytearray()
    size = 0
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115
    try:
        async for chunk in request.content.iter_any():
            await pace(len(chunk))
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
        return Body(bytes(head), size, hasher.digest(), None)
    return Body(bytes(head), size, hasher.digest(), spool)


async def analyse_body(body: Body, max_seconds: float | None) -> Signal:
    """Decode a body off the event loop (a small one inline: a thread costs more than it)."""
    if body.spool is None and body.size < 64 * 1024:
        return signal_of(body.source(), body.digest, body.head, max_seconds=max_seconds)
    return await asyncio.to_thread(
        signal_of, body.source(), body.digest, body.head, max_seconds=max_seconds
    )


class Job(NamedTuple):
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
