"""An item record: its byte layout, how the run builds it, and how readers parse it.

The writer (:func:`build_record`) and the readers that depend on its layout sit side by side:

- every record starts ``{"id":…,"status":…`` (the run's :meth:`ResultsStore.append` writes
  the dict in insertion order): :data:`ID_PREFIX` tells an item record from an event line;
- ``transcription``, ``words``, ``utterances`` come together and right before ``duration``:
  :func:`load_split` parses the rest of a long record without its transcript.

:func:`parse_head` is the reference for what a record is; :func:`block_heads` the measured fast
path that must agree with it (msgspec over a block of lines).
"""

from __future__ import annotations

import operator
import zlib
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import orjson

from batchscribe.audio import plausible_seconds
from batchscribe.pulse import Outcome, Verdict

ID_PREFIX = b'{"id":"'
#: Bytes read at a time from a results file.
READ_CHUNK = 1 << 20


def parse_head(line: bytes) -> tuple[str, str] | None:
    """The ``(id, status)`` of a line that is a whole, valid item record; None for any other line.

    The reference every reader agrees with: the whole line must parse as JSON (orjson), be an
    object, have a string ``id`` and a ``status``. A line whose head looks right but whose rest
    is cut, spliced or bit-flipped is not a record (issue 13: a head-only check counted a cut
    line as done). :func:`block_heads` is the fast path that must agree with it.
    """
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is dict and type(doc.get("id")) is str and "status" in doc:
        return doc["id"], str(doc["status"])
    return None


def _head_decoder() -> Any:
    """msgspec's decoder of record heads (``.id``, ``.status``), made on first use: only the
    block scans of big results files need it, and importing msgspec at start cost every run
    ~4 ms (measured)."""
    global _heads
    if _heads is None:
        import msgspec

        class _Head(msgspec.Struct):
            """The two fields of an item record the scans need; msgspec validates and skips
            the rest."""

            id: str
            status: str

        _heads = msgspec.json.Decoder(_Head)
    return _heads


_heads: Any = None
HEAD_ID = operator.attrgetter("id")
HEAD_STATUS = operator.attrgetter("status")


def block_heads(lines: bytes, ends: Any) -> list[Any] | None:
    """The heads of the whole lines in ``lines`` (each ending in ``\n``; ``ends``: the
    positions of those newlines, from :func:`newlines`), in order, when every line is a whole
    valid item record with a string status; else None (read those lines one at a time with
    :func:`parse_head`).

    Measured fast path of the resume scan and the readers' pass one (benchmarks/memory.py):
    one C call validates every byte of a block of lines and builds only two strings per line,
    ~0.45 µs a line against ~1.2 µs for a full orjson parse. It agrees with :func:`parse_head`
    (held by tests/test_results.py's damage tests) because:

    - ``decode_lines`` reads JSON values separated by any whitespace, newlines included, so it
      alone would take two records on one line, or one record spread over two lines. Every
      line must start with ``{`` and end with ``}``: a value can then never span a newline
      (``}`` then ``{`` is never valid inside an object or an array), so each line holds whole
      values, at least one; and the count of values must equal the count of lines: exactly one
      each. (A blank or padded line fails the first check and falls back.)
    - msgspec rejects all malformed JSON orjson rejects, except invalid UTF-8 inside a value
      it skips: checked here for the whole block (``isascii`` first, a ~10 GB/s pass).
    - a status that is not a string, a missing id, a nesting depth orjson accepts and msgspec
      does not: msgspec refuses, and the block falls back to the reference.

    One gap stays, and it is written down rather than paid for: a number beyond the double
    range (``1e400``) in a field msgspec skips is valid JSON that msgspec accepts and orjson
    refuses. No writer of records produces one (orjson cannot), and finding one would cost a
    scan of every byte (~0.5 s a million lines).
    """
    n = int(ends.size)
    view = lazy_numpy().frombuffer(lines, dtype=lazy_numpy().uint8)
    if not n or view[0] != _OPEN or not (view[ends - 1] == _CLOSE).all():
        return None
    if not (view[ends[:-1] + 1] == _OPEN).all():
        return None
    if not (lines.isascii() or _is_utf8(lines)):
        return None
    decoder = _head_decoder()
    import msgspec  # (imported by the decoder already: a dictionary look-up)

    try:
        heads: list[Any] = decoder.decode_lines(lines)
    except (msgspec.DecodeError, RecursionError):
        return None
    return heads if len(heads) == n else None


_OPEN, _CLOSE = ord("{"), ord("}")


def newlines(data: bytes) -> Any:
    """The positions of the newlines in ``data`` (a numpy array)."""
    np = lazy_numpy()
    return np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == _NEWLINE)


_NEWLINE = 10


def fingerprint(size: object, version: object) -> int:
    """A 32-bit fingerprint of a source's size and version (mtime, or a cloud ETag).

    ``--rescan-changed`` compares it with the fingerprint of the item's last ok record.
    """
    return zlib.crc32(f"{size}:{version!r}".encode())


def record_fingerprint(record: dict[str, Any]) -> int:
    """The fingerprint of the source as a record saw it (0 when it recorded neither)."""
    size = record.get("size")
    version = record.get("etag", record.get("generation", record.get("mtime")))
    if size is None or version is None:
        return 0
    return fingerprint(size, version)


#: The statuses after which an item is not sent again (``submitted``: its answer goes to a
#: webhook). Every other status is a failure.
DONE_STATUSES = frozenset({"ok", "submitted"})


def lazy_numpy() -> Any:
    """numpy, imported on first use: only big results files and manifests need it."""
    import numpy

    return numpy


def load_record(body: bytes) -> dict[str, Any] | None:
    """A whole item record, or None when the line is not one (as :func:`parse_head`)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is dict and type(doc.get("id")) is str and "status" in doc:
        return doc
    return None


def load_event(body: bytes) -> dict[str, Any] | None:
    """An ``{"event": ...}`` line, or None."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) and "event" in doc else None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def load_records(bodies: Sequence[bytes]) -> list[dict[str, Any] | None]:
    """Each line as a whole item record, or None where it is not one (a batch of lines).

    The same as ``[load_record(b) for b in bodies]``, with the parse and the checks done as
    C-level passes over the batch.
    """
    try:
        docs = list(map(orjson.loads, bodies))
    except orjson.JSONDecodeError:
        return list(map(load_record, bodies))
    if (
        set(map(type, docs)) <= _DICT
        and set(map(type, map(dict.get, docs, repeat("id")))) <= _STR
        and all(map(dict.__contains__, docs, repeat("status")))
    ):
        return docs
    return [
        doc if type(doc) is dict and type(doc.get("id")) is str and "status" in doc else None
        for doc in docs
    ]  # orjson makes exact types: `type(x) is` is load_record's isinstance


_DICT: frozenset[type] = frozenset((dict,))
_STR: frozenset[type] = frozenset((str,))


_HEAVY_FROM = b',"transcription":'
_HEAVY_TO = b',"duration":'
#: The fields :func:`load_light` leaves out: the transcript, the bulk of every ok record.
HEAVY_FIELDS = ("transcription", "words", "utterances")


def load_light(body: bytes) -> dict[str, Any] | None:
    """An item record without its transcript fields (:data:`HEAVY_FIELDS`), or None.

    A long record in the writer's layout is read by :func:`load_split`, so reading it costs
    the same whatever the length of its transcript; a short one (where two small parses cost
    more than one) or any other layout by a full parse.
    """
    if len(body) >= _SPLIT_FROM:
        record = load_split(body)
        if record is not None:
            return record
    record = load_record(body)
    if record is not None:
        for name in HEAVY_FIELDS:
            record.pop(name, None)
    return record


_SPLIT_FROM = 4096  # bytes: below this a full parse is as quick


def load_split(body: bytes) -> dict[str, Any] | None:
    """A record in the writer's layout without :data:`HEAVY_FIELDS`; None for another layout.

    The layout is ``…,"run":…,"transcription":…,"words":…,"utterances":…,"duration":…}``: only
    the part before ``transcription`` and the part from ``duration`` on are parsed. Each part is
    parsed as a JSON object on its own, which fails unless its cut is at the record's top level
    (a cut inside a nested value leaves unbalanced brackets; one inside a string is impossible,
    as ``"`` is escaped there).
    """
    cut = body.find(_HEAVY_FROM)
    if cut <= 0 or not body.startswith(b"{"):
        return None
    try:
        head = orjson.loads(body[:cut] + b"}")
    except orjson.JSONDecodeError:
        return None
    if not (isinstance(head, dict) and isinstance(head.get("id"), str) and "status" in head):
        return None
    tail = body.rfind(_HEAVY_TO)
    while tail > cut:  # the last top-level `"duration"`: later ones are nested, so invalid
        try:
            rest = orjson.loads(b"{" + body[tail + 1 :])
        except orjson.JSONDecodeError:
            tail = body.rfind(_HEAVY_TO, cut, tail)
            continue
        if not isinstance(rest, dict):
            return None
        head.update(rest)
        return head
    return None


def load_light_many(bodies: Sequence[bytes], *, strip: bool = True) -> list[dict[str, Any] | None]:
    """:func:`load_light` of each line of a batch, a line parsed whole in a C-level pass.

    Args:
        bodies: the lines.
        strip: drop :data:`HEAVY_FIELDS` from every record; ``False`` leaves them in the
            records parsed whole (the same records otherwise, None for the same lines), for
            callers that never look at them.
    """
    if not bodies or max(map(len, bodies)) >= _SPLIT_FROM:
        return list(map(load_light, bodies))
    records = load_records(bodies)
    if strip:
        for record in records:
            if record is not None:
                for name in HEAVY_FIELDS:
                    record.pop(name, None)
    return records


# ------------------------------------------------------------------------------ the writer
#: Payload fields a record holds under their own names, so not again in its ``response``.
_RESERVED = frozenset({"transcription", "words", "utterances", "request_id"})


def payload_duration(payload: Mapping[str, Any] | None) -> float | None:
    """Audio seconds from a response: its top-level ``duration``, else ``metadata.duration``
    (Pulse's ``{duration, fileSize}``), if it says."""
    if not payload:
        return None
    # (An absurd or negative one is no duration: the file's header says instead.)
    duration = plausible_seconds(payload.get("duration"))
    if duration is None:
        meta = payload.get("metadata")
        duration = plausible_seconds(meta.get("duration")) if isinstance(meta, dict) else None
    return duration


def build_record(
    record: dict[str, Any],
    outcome: Outcome,
    *,
    attempts: int,
    run_id: str,
    finished_at: str,
    params: Mapping[str, Any],
    metadata: Mapping[str, Any] | None,
    header_duration: float | None = None,
    elapsed: float | None = None,
) -> dict[str, Any]:
    """Complete an item's record (begun ``{"id", "status", "source", ...}``) with its outcome.

    Args:
        record: the record so far, in layout order (id and status first); completed in place.
        outcome: the item's final outcome.
        attempts: requests sent for it.
        run_id: this run's id.
        finished_at: the time it finished (ISO 8601 UTC).
        params: the item's own Pulse overrides (recorded for reruns when any).
        metadata: the manifest's other fields for it, if any.
        header_duration: audio seconds read from the file's header, used when the answer
            does not say.
        elapsed: the seconds the last attempt's request took (``elapsed_ms`` of an answered one).

    Returns the record. The fields are added in the order :func:`load_split` relies on.
    """
    record["attempts"] = attempts
    record["http_status"] = outcome.http_status
    if outcome.http_status is not None and elapsed is not None:
        record["elapsed_ms"] = round(elapsed * 1000)
    if outcome.verdict is Verdict.OK or outcome.verdict is Verdict.SUBMITTED:
        record["status"] = "ok" if outcome.verdict is Verdict.OK else "submitted"
        record["error"] = None
        record["cause"] = None
    else:
        record["error"] = outcome.error or outcome.cause
        record["cause"] = outcome.cause
    record["finished_at"] = finished_at
    record["run"] = run_id
    if outcome.request_id is not None and outcome.verdict is Verdict.FAIL:
        record["request_id"] = outcome.request_id  # what support asks for
    payload = outcome.payload
    if outcome.verdict is Verdict.SUBMITTED:
        # No transcript: the service sends it to the webhook, under this request id.
        record["request_id"] = outcome.request_id
        if payload is not None:
            record["response"] = {k: v for k, v in payload.items() if k not in _RESERVED}
    elif payload is not None:
        _add_answer(record, payload, outcome.request_id, header_duration)
    if params:
        record["params"] = dict(params)  # per-item Pulse overrides, for reruns
    if metadata:
        record["metadata"] = metadata
    return record


def _add_answer(
    record: dict[str, Any],
    payload: dict[str, Any],
    request_id: str | None,
    header_duration: float | None,
) -> None:
    """The transcript fields, in :func:`load_split`'s order: the heavy ones, then duration."""
    duration = payload_duration(payload)
    if duration is None and header_duration is not None:
        duration = round(header_duration, 3)
        record["duration_from"] = "header"
    record["transcription"] = payload.get("transcription")
    record["words"] = payload.get("words")
    record["utterances"] = payload.get("utterances")
    record["duration"] = duration
    record["request_id"] = request_id
    record["response"] = {k: v for k, v in payload.items() if k not in _RESERVED}
