"""The Pulse request/response contract: parameters, request building, outcome classification.

Everything here is pure (no network, no disk) so it can be tested on plain data. The engine
builds a request with :func:`build_query` / :func:`content_type_for`, sends it, and hands the
status, headers and body to :func:`classify` which says what the outcome means for the run.
"""

from __future__ import annotations

import dataclasses
import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePath
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import orjson

#: The unified endpoint (what the official SDK uses; ``model`` required): the default.
UNIFIED_ENDPOINT = "https://api.smallest.ai/waves/v1/stt/"
#: The legacy path on the current host, "continues to work alongside" the unified one.
LEGACY_ENDPOINT = "https://api.smallest.ai/waves/v1/pulse/get_text"
#: The URL of the original guide (moved to the host above; still answered).
ORIGINAL_ENDPOINT = "https://waves-api.smallest.ai/api/v1/pulse/get_text"
DEFAULT_ENDPOINT = UNIFIED_ENDPOINT
LEGACY_PATH = "/api/v1/pulse/get_text"
CURRENT_PATH = "/waves/v1/stt/"
ENDPOINT_PATHS = (LEGACY_PATH, CURRENT_PATH)

MAX_PAYLOAD = 250 * 1000 * 1000  # "Max payload 250 MB"; the decimal reading is the stricter one

MODELS = ("pulse", "pulse-pro")
LANGUAGES = (
    "en", "hi", "de", "es", "ru", "it", "fr", "nl", "pt", "uk", "pl", "cs", "sk", "lv", "et",
    "ro", "fi", "sv", "bg", "hu", "da", "lt", "mt", "zh", "ja", "ko",
    "multi-eu", "multi-asian", "multi-indic",
)  # fmt: skip
BOOL_PARAMS = (
    "word_timestamps", "diarize", "redact_pii", "redact_pci", "emotion_detection",
    "gender_detection",
)  # fmt: skip
WEBHOOK_METHODS = ("POST", "PUT")
#: Every query parameter the service knows; manifest fields with these names override the CLI.
PARAM_NAMES = ("model", "language", *BOOL_PARAMS, "webhook_url", "webhook_method", "webhook_extra")
#: Query parameters only the legacy ``.../get_text`` endpoints take (batchscribe never sends
#: them itself; an endpoint's own query may carry them, for a legacy endpoint only).
LEGACY_ONLY_PARAMS = ("encoding", "format", "punctuate", "capitalize")
#: The languages redaction (``redact_pii``, ``redact_pci``) works in.
REDACTION_LANGUAGES = ("en", "hi")

AUDIO_MIME = {
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".webm": "audio/webm",
    ".mp4": "audio/mp4",
    ".amr": "audio/amr",
}
AUDIO_EXTENSIONS = frozenset(AUDIO_MIME)
#: Recordings the service does not take but a run transcodes (video, AMR's cousins, AIFF, CAF,
#: WMA, ...): a directory scan finds them too (``--transcode off`` fails them, saying why).
TRANSCODED_EXTENSIONS = frozenset(
    {".mov", ".mkv", ".mka", ".avi", ".m4v", ".aiff", ".aif", ".aifc", ".caf", ".wma", ".wmv",
     ".3gp", ".3g2", ".wv", ".ac3", ".au", ".oga", ".mpg", ".mpeg", ".ts"}
)  # fmt: skip
#: What a directory scan picks up: the service's formats and those a run transcodes.
SCAN_EXTENSIONS = AUDIO_EXTENSIONS | TRANSCODED_EXTENSIONS


def content_type_for(path: str) -> str:
    """The audio MIME type for a file name, by extension (octet-stream when unknown)."""
    return AUDIO_MIME.get(PurePath(path).suffix.lower(), "application/octet-stream")


@dataclass(frozen=True)
class PulseParams:
    """The per-request Pulse query parameters (see shared/pulse-api.md)."""

    model: str = "pulse"
    language: str = "en"
    word_timestamps: bool = True
    diarize: bool = False
    redact_pii: bool = False
    redact_pci: bool = False
    emotion_detection: bool = False
    gender_detection: bool = False
    webhook_url: str | None = None
    webhook_method: str | None = None
    webhook_extra: str | None = None

    def with_overrides(self, overrides: Mapping[str, Any]) -> PulseParams:
        """A copy with per-item overrides applied (values already validated by :func:`coerce`)."""
        if not overrides:
            return self
        return dataclasses.replace(self, **overrides)


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def coerce_param(name: str, value: Any) -> Any:
    """Validate and normalise one parameter value; raise ValueError with a readable message."""
    if name == "model":
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r} (expected one of: {', '.join(MODELS)})")
        return value
    if name == "language":
        if value not in LANGUAGES:
            raise ValueError(
                f"unknown language {value!r} (expected one of: {', '.join(LANGUAGES)})"
            )
        return value
    if name in BOOL_PARAMS:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"{name} must be true or false, not {value!r}")
    if name == "webhook_method":
        if not isinstance(value, str) or value.upper() not in WEBHOOK_METHODS:
            raise ValueError(f"webhook_method must be POST or PUT, not {value!r}")
        return value.upper()
    if name == "webhook_url":
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise ValueError(f"webhook_url must be an http(s) URL, not {value!r}")
        if not _one_token(value):
            raise ValueError(f"webhook_url must not hold spaces or control characters: {value!r}")
        return value
    if name == "webhook_extra":
        if not isinstance(value, str) or not all(":" in pair for pair in value.split(",") if pair):
            raise ValueError(f"webhook_extra must look like key:value,key2:value2, not {value!r}")
        if not value.isprintable():
            raise ValueError(f"webhook_extra must not hold control characters: {value!r}")
        return value
    raise ValueError(f"unknown Pulse parameter {name!r}")


def _one_token(text: str) -> bool:
    """No whitespace, control or invisible characters (what a URL or a header value needs)."""
    return text.isprintable() and not any(char.isspace() for char in text)


def check_combination(params: PulseParams, *, url_input: bool) -> str | None:
    """Return a problem with a combination of parameters, or None when they fit together.

    The service's documented limits (shared/pulse-api.md): URL input and diarization are
    Pulse only, webhooks Pulse Pro only, redaction English or Hindi only. Checked before
    anything is sent: the service would refuse the request or answer unpredictably.
    ``url_input``: the request is URL input (the emulator's check: the run itself sends a URL
    as URL input with model=pulse only, and through the client otherwise: run.fetch).
    """
    if url_input and params.model != "pulse":
        return f"URL input works with model=pulse only, not {params.model}"
    if params.diarize and params.model != "pulse":
        return f"diarize works with model=pulse only, not {params.model}"
    if params.model != "pulse-pro" and (
        params.webhook_url or params.webhook_method or params.webhook_extra
    ):
        return f"webhook parameters need model=pulse-pro, not {params.model}"
    if (params.redact_pii or params.redact_pci) and params.language not in REDACTION_LANGUAGES:
        which = "redact_pii" if params.redact_pii else "redact_pci"
        return f"{which} works with language en or hi only, not {params.language}"
    return None


def endpoint_kind(endpoint: str) -> str | None:
    """``unified`` for a ``.../stt`` path, ``legacy`` for a ``.../get_text`` one, else None
    (a proxy's own path: nothing is assumed about it)."""
    try:
        path = urlsplit(endpoint).path.rstrip("/")
    except ValueError:
        return None
    if path.endswith("/stt"):
        return "unified"
    if path.endswith("/get_text"):
        return "legacy"
    return None


def endpoint_problem(endpoint: str) -> str | None:
    """Why ``endpoint`` cannot be used as given, or None: a unified endpoint whose own query
    sets a parameter only the legacy endpoints take (the service would refuse every request)."""
    if endpoint_kind(endpoint) != "unified":
        return None
    try:
        names = {name for name, _ in parse_qsl(urlsplit(endpoint).query, keep_blank_values=True)}
    except ValueError:
        return None
    legacy = sorted(names & set(LEGACY_ONLY_PARAMS))
    if not legacy:
        return None
    return (
        f"--endpoint {public_url(endpoint)} is the unified endpoint, which does not take "
        f"{', '.join(legacy)} (legacy .../pulse/get_text only): remove them from its query "
        f"or use {LEGACY_ENDPOINT}"
    )


def build_query(params: PulseParams) -> dict[str, str]:
    """The query string for a request: booleans as true/false, unset webhook fields left out."""
    query = {"model": params.model, "language": params.language}
    for name in BOOL_PARAMS:
        query[name] = "true" if getattr(params, name) else "false"
    for name in ("webhook_url", "webhook_method", "webhook_extra"):
        value = getattr(params, name)
        if value:
            query[name] = value
    return query


def clean_api_key(raw: str) -> str:
    """The API key as sent in ``Authorization: Bearer KEY``: surrounding whitespace and a
    UTF-8 BOM removed (key files and Secrets made from files often end in a newline). Raise
    ValueError, with a message holding no part of the key, when what is left cannot be one:
    a line break, other whitespace, a control character or a character that is not ASCII.
    """
    key = raw.strip().lstrip("\ufeff").strip()
    for position, char in enumerate(key, 1):
        if char.isascii() and char.isprintable() and char != " ":
            continue
        if char in "\r\n":
            what = "a line break (a file of several lines?)"
        elif char.isspace():
            what = "a space or other whitespace"
        elif not char.isascii():
            what = "a character that is not ASCII"
        else:
            what = "a control character"
        raise ValueError(
            f"contains {what} at character {position}; a key is one line of printable ASCII"
        )
    return key


class Verdict(Enum):
    """What an outcome means for the run."""

    OK = "ok"  # the item is done
    RETRY = "retry"  # try this item again (after the server's delay or a backoff)
    FAIL = "fail"  # record this item as failed; the run goes on
    ABORT = "abort"  # the whole run cannot go on (e.g. the key is rejected)
    SUBMITTED = "submitted"  # accepted for a webhook: the transcript goes there, not to us


class Cause(str, Enum):
    """Every ``cause`` a failed record can carry (README.md, "Results format"). A member is its
    text everywhere (records, events, messages, ``--cause``): it compares, hashes, prints and
    serialises as its value (``enum.StrEnum``, which Python 3.10 lacks). Outcomes, records and
    events carry the plain text (orjson refuses a dict key that is a str subclass)."""

    CLIENT = "4xx"  # the server refused the request (or the run: a rejected key, a wrong URL)
    RATE_LIMITED = "429"
    SERVER = "5xx"  # a server fault, or an answer cut short
    REDIRECT = "redirect"  # never followed: the endpoint is the thing to fix
    NETWORK = "network"
    TIMEOUT = "timeout"
    MISSING = "missing"  # the audio is gone (a file, an object)
    INVALID = "invalid"  # not audio the API takes (empty, not a regular file, a bad line)
    TOO_LARGE = "too_large"
    FILE_CHANGED = "file_changed"  # the file changed while it was uploaded
    LANGUAGE = "language"  # the language is not offered in the account's region

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)


@dataclass(frozen=True)
class Outcome:
    """The meaning of one HTTP exchange (or of a transport failure)."""

    verdict: Verdict
    http_status: int | None
    cause: str  # "ok" or the value of a Cause
    error: str | None = None
    payload: dict[str, Any] | None = None
    delay: float | None = None  # seconds the server asked us to wait, if it said
    request_id: str | None = None  # the body's request_id, else the x-request-id header


_RETRY_STATUSES = frozenset({408, 409, 429})


#: The fields an error body may carry its text in, across the unified shape
#: (``{error, request_id, details}``) and the legacy ones (``{errors, status, message}``,
#: ``{status, error_code, message}``, ``{message}``); joined in this order.
_ERROR_FIELDS = ("error_code", "error", "errors", "message", "details")
#: Wording of an error body that says the service was busy, not that the request was wrong.
_BUSY = re.compile(r"busy|overload|try again|retry later|unavailable|capacity", re.IGNORECASE)
_RATE_LIMITED = re.compile(r"rate.?limit|too many requests", re.IGNORECASE)


def _body_error(doc: Mapping[str, Any]) -> str:
    """The error text of a JSON body in any documented shape, one short line ("" if none)."""
    parts: list[str] = []
    for name in _ERROR_FIELDS:
        value = doc.get(name)
        if value is None or value == "" or value == [] or value == {}:
            continue
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        if text not in parts:
            parts.append(text)
    return " ".join(": ".join(parts).split())[:200]


def _error_text(status: int, body: bytes) -> tuple[str, object]:
    """A short, single-line description of an error response, and its body's JSON (or None)."""
    detail = ""
    doc = None
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict):
            detail = _body_error(doc)
    except orjson.JSONDecodeError:
        if body.strip():
            detail = "non-JSON error body"
    return (f"HTTP {status}: {detail}" if detail else f"HTTP {status}"), doc


def _request_id(doc: object, headers: Mapping[str, str]) -> str | None:
    """The answer's correlation id: the body's ``request_id``, else the ``x-request-id`` header."""
    if isinstance(doc, dict):
        value = doc.get("request_id")
        if isinstance(value, str) and value:
            return value
    return _header(headers, "X-Request-Id") or None


def classify(
    status: int, headers: Mapping[str, str], body: bytes, *, now: float, webhook: bool = False
) -> Outcome:
    """Classify a complete HTTP response.

    Args:
        status, headers, body: the response.
        now: the wall-clock epoch (for HTTP-date delays).
        webhook: the request carried a ``webhook_url`` (a "processing" answer is then
            submitted; without one it is a failure: nothing would ever deliver the transcript).
    """
    if body[:3] == b"\xef\xbb\xbf":  # a UTF-8 byte order mark: allowed before JSON, not JSON
        body = body[3:]
    if status == 200:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return Outcome(Verdict.RETRY, status, "5xx", "HTTP 200 with an incomplete body")
        if not isinstance(doc, dict):
            return Outcome(Verdict.RETRY, status, "5xx", "HTTP 200 with a non-object body")
        return _answer(doc, headers, now=now, webhook=webhook)
    error, doc = _error_text(status, body)
    rid = _request_id(doc, headers)
    if 300 <= status <= 399:
        # Never followed (the engine sends allow_redirects=False): a 301/302 would turn the
        # POST into a GET whose answer is no transcript, and a 307/308 needs the whole body
        # again, which a streamed upload cannot replay. The endpoint is the thing to fix.
        location = _header(headers, "Location")
        where = f" to {public_url(location)}" if location else ""
        return Outcome(
            Verdict.FAIL, status, "redirect",
            f"HTTP {status} redirect{where} (not followed: check --endpoint)", request_id=rid,
        )  # fmt: skip
    if status == 401:
        return Outcome(
            Verdict.ABORT, status, "4xx", f"{error} (the API key was rejected)", request_id=rid
        )
    if status == 404:
        return Outcome(
            Verdict.ABORT, status, "4xx", f"{error} (wrong endpoint URL: check --endpoint)",
            request_id=rid,
        )  # fmt: skip
    if status in _RETRY_STATUSES or 500 <= status <= 599:
        cause = "429" if status == 429 else ("5xx" if status >= 500 else "4xx")
        return Outcome(
            Verdict.RETRY, status, cause, error, delay=server_delay(headers, now=now),
            request_id=rid,
        )  # fmt: skip
    named = _body_cause(doc)
    if status == 413 or named == "too_large":
        return Outcome(Verdict.FAIL, status, "too_large", error, request_id=rid)
    if named == "language":
        return Outcome(Verdict.FAIL, status, named, _language_error(error, doc), request_id=rid)
    return Outcome(Verdict.FAIL, status, "4xx", error, request_id=rid)


#: The legacy endpoint's oversize answer is a 400 (or a 200 error body) saying so.
_TOO_LARGE = re.compile(r"(audio data|payload|file|request entity) (is )?too large", re.I)
#: The error code of a language the account's region does not offer (``multi-indic`` outside
#: India): every item in that language fails the same way.
LANGUAGE_NOT_ENABLED = "LANGUAGE_NOT_ENABLED_IN_REGION"


def _body_cause(doc: object) -> str | None:
    """The cause an error body names whatever its status: ``too_large`` (oversize audio) or
    ``language`` (the language is not offered in the region), else None."""
    if not isinstance(doc, dict):
        return None
    text = _body_error(doc)
    if doc.get("error_code") == LANGUAGE_NOT_ENABLED or LANGUAGE_NOT_ENABLED in text:
        return "language"
    if _TOO_LARGE.search(text):
        return "too_large"
    return None


def _language_error(error: str, doc: object) -> str:
    """``error`` with what to change: the language the body names (if it does) is not
    offered in the account's region."""
    fields = doc if isinstance(doc, dict) else {}
    language, region = fields.get("language"), fields.get("region")
    which = f"language {language}" if isinstance(language, str) and language else "the language"
    where = f" ({region})" if isinstance(region, str) and region else ""
    return (
        f"{error} ({which} is not enabled in this account's region{where}: choose another "
        "--language or manifest language field; multi-indic is offered in the India region only)"
    )[:400]


def _answer(
    doc: dict[str, Any], headers: Mapping[str, str], *, now: float, webhook: bool
) -> Outcome:
    """What a 200 with a JSON object means: only ``status: success`` with a transcription is ok.

    A service that answers 200 with an error body (legacy shapes do) must not be taken at its
    status code: the body is what says whether the audio was transcribed.
    """
    request_id = _request_id(doc, headers)
    state = doc.get("status")
    if state == "success" and "transcription" in doc:
        if isinstance(doc["transcription"], str):  # "" is silence, a valid transcript
            return Outcome(Verdict.OK, 200, "ok", None, doc, request_id=request_id)
    elif state == "processing":
        if webhook:
            return Outcome(Verdict.SUBMITTED, 200, "ok", None, doc, request_id=request_id)
        return Outcome(
            Verdict.FAIL, 200, "4xx",
            "HTTP 200: status 'processing' but the request had no webhook_url: "
            "the transcript would never arrive",
            request_id=request_id,
        )  # fmt: skip
    detail = _body_error(doc)
    if state == "success" or (not detail and state is None):
        # A success (or a bare object) without a transcript: cut short on the way, or a
        # server fault; worth asking again.
        return Outcome(
            Verdict.RETRY, 200, "5xx",
            "HTTP 200 with an incomplete answer (no status 'success' with a transcription)",
            delay=server_delay(headers, now=now), request_id=request_id,
        )  # fmt: skip
    if not detail:
        detail = f"status {str(state)[:60]!r} without a transcription"
    error = f"HTTP 200: {' '.join(detail.split())}"
    named = _body_cause(doc)
    if named == "language":
        error = _language_error(error, doc)
    if named is not None:
        return Outcome(Verdict.FAIL, 200, named, error, request_id=request_id)
    if _RATE_LIMITED.search(detail):
        cause = "429"
    elif _BUSY.search(detail):
        cause = "5xx"
    else:
        return Outcome(Verdict.FAIL, 200, "4xx", error, request_id=request_id)
    return Outcome(
        Verdict.RETRY, 200, cause, error, delay=server_delay(headers, now=now),
        request_id=request_id,
    )  # fmt: skip


def public_url(url: str) -> str:
    """``url`` as it may be shown: without ``user:password@``, query or fragment, any of which
    may carry a secret (a token, a presigned signature); one line, at most 200 characters."""
    try:
        parts = urlsplit(url.strip())
        netloc = parts.netloc.rpartition("@")[2]
        shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        shown = "(an invalid URL)"
    return " ".join(shown.split())[:200]


def endpoint_clashes(endpoint: str) -> list[str]:
    """The Pulse parameters an endpoint's own query sets. The run's values (flags, manifest
    fields) are sent in their place: they are per item, and one request cannot carry both."""
    try:
        query = urlsplit(endpoint).query
    except ValueError:  # not a URL at all: validation refuses it (exit 2)
        return []
    return sorted({name for name, _ in parse_qsl(query, keep_blank_values=True)} & _PARAMS)


def url_secrets(url: str) -> list[str]:
    """What in ``url`` may be a secret: its password, and the values of its query parameters
    that are not Pulse's own (a ``token=``), if at least 8 characters long (shorter ones, like
    ``region=eu``, would redact ordinary words from every line). Nothing for a URL that does not
    parse (validation refuses it, and error lines show no part of it: :func:`public_url`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [parts.password] if parts.password else []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _KNOWN and len(value) >= 8:
            found.append(value)
    return found


_PARAMS = frozenset(PARAM_NAMES)
_KNOWN = _PARAMS | frozenset(LEGACY_ONLY_PARAMS)  # names whose values are no secret


def server_delay(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds the server asked us to wait, from any of its delay headers (the longest wins).

    ``Retry-After`` (delta-seconds or an HTTP date), ``retry-after-ms`` (milliseconds) and
    ``X-RateLimit-Reset`` (delta-seconds, or an epoch timestamp when it is that large).
    ``headers`` must be case-insensitive (aiohttp's are) or use the canonical names.
    """
    delays: list[float] = []
    value = _header(headers, "Retry-After")
    if value is not None:
        seconds = _parse_seconds(value)
        if seconds is None:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                seconds = when.timestamp() - now
        if seconds is not None:
            delays.append(seconds)
    value = _header(headers, "retry-after-ms")
    if value is not None:
        ms = _parse_seconds(value)
        if ms is not None:
            delays.append(ms / 1000.0)
    value = _header(headers, "X-RateLimit-Reset")
    if value is not None:
        seconds = _parse_seconds(value)
        if seconds is not None:
            # Some services send an absolute epoch time here; anything past 2001 must be one.
            delays.append(seconds - now if seconds > 1e9 else seconds)
    if not delays:
        return None
    return max(0.0, max(delays))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return value.strip() if isinstance(value, str) else None


def _parse_seconds(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) else None


# ------------------------------------------------------------- presigned URL signatures

#: The credential-bearing query parameters of presigned URLs (S3 SigV4 and SigV2, GCS V4 and
#: V2, CloudFront, Azure SAS ``sig``) and of URLs that carry a token or key as a parameter of
#: their own (``token``, ``access_token``, ``key``, ...: named as a whole, after ``?`` or
#: ``&``). Their values are replaced; the rest of a URL stays readable.
_SIGNED_QUERY = re.compile(
    r"((?:X-Amz-(?:Signature|Credential|Security-Token)|X-Goog-(?:Signature|Credential)"
    r"|Signature|AWSAccessKeyId|GoogleAccessId|x-amz-security-token"
    r"|(?<=[?&])(?:sig|token|access_token|id_token|auth|authorization|api_?key|key|secret"
    r"|password|pass|pwd|credential|session|jwt))=)[^&\s\"'<>]+",
    re.IGNORECASE,
)


def scrub(text: str) -> str:
    """``text`` with the signature parts of any presigned URL replaced by ``***``."""
    if "=" not in text:
        return text
    return _SIGNED_QUERY.sub(r"\1***", text)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(v) for v in value]
    return value


def scrub_outcome(outcome: Outcome) -> Outcome:
    """An outcome whose error text and payload can no longer carry a URL signature."""
    error = scrub(outcome.error) if outcome.error else outcome.error
    payload = outcome.payload
    if payload is not None and _SIGNED_QUERY.search(orjson.dumps(payload).decode()):
        payload = _scrub_value(payload)
    if error is outcome.error and payload is outcome.payload:
        return outcome
    return dataclasses.replace(outcome, error=error, payload=payload)
