"""What the emulator answers, in the shape of each endpoint and model.

Errors: unified ``{error, request_id, details}``; legacy ``{errors, status, message}`` for a
400, ``{message}`` for a 401; a 429 is ``{error, request_id}`` everywhere. Successes: Pulse
(``words``, ``utterances``, ``metadata {duration, fileSize}``) or Pulse Pro (``language``,
``request_id``, ``totalBytes``, timing metadata, no utterances). Delay headers in each form the
service (or a proxy in front of it) uses. And the ways an answer goes wrong on the wire: a
refusal that does not drain the body, a reset, a body cut short.
"""

from __future__ import annotations

import email.utils
import math
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from batchscribe.emulator.requests import Job
from batchscribe.emulator.transcripts import Transcript, num_chunks

__all__ = [
    "DELAY_HEADER_KINDS",
    "RATE_LIMIT_MESSAGE",
    "answer_body",
    "delay_headers",
    "error_response",
    "refuse",
    "reset_connection",
    "too_large",
    "truncated",
]

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
_GROUP_LANGUAGES = {
    "multi-eu": ("en", "de", "fr", "es", "it"),
    "multi-asian": ("zh", "ja", "ko"),
    "multi-indic": ("hi",),
}
_EMOTIONS = ("happiness", "sadness", "disgust", "fear", "anger")


def error_response(
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


def too_large(limit: int, request_id: str, *, legacy: bool) -> web.Response:
    """The oversize answer: 413 on the unified path, 400 "Audio data too large" on legacy."""
    if legacy:
        return error_response(400, "Audio data too large", request_id, legacy=True)
    message = f"Audio data too large: payload over {limit} bytes"
    return error_response(413, message, request_id, details={"max_bytes": limit})


def delay_headers(kind: str, delay: float) -> tuple[dict[str, str], float]:
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


def words(transcript: Transcript, *, diarize: bool) -> list[dict[str, Any]]:
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


def extras(job: Job) -> dict[str, Any]:
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


def answer_body(job: Job, request_id: str, elapsed: float) -> dict[str, Any]:
    """The 200 body in the shape of the model asked (see shared/pulse-api.md, Response)."""
    params = job.params
    timed = params.word_timestamps
    transcript = job.transcript
    duration = round(job.duration, 3)
    answer: dict[str, Any] = {"status": "success", "transcription": transcript.text}
    if params.model == "pulse-pro":  # no utterances, no diarization; ids and timing in the body
        answer["words"] = words(transcript, diarize=False) if timed else []
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
        answer["words"] = words(transcript, diarize=params.diarize) if timed else []
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
    answer.update(extras(job))
    return answer


async def refuse(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response`` and close the connection without reading the rest of the body
    (aiohttp would otherwise drain up to 10 s of it to keep the connection alive)."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # closes after the response is flushed; no draining
    return response


def reset_connection(request: web.Request) -> None:
    """Drop the connection with a TCP RST and no response."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout turns close() into a reset.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def truncated(
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
