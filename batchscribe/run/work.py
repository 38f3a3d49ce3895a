"""The unit of work between the feed and the sender: a request plan, not an item.

An item becomes one or more :class:`RequestPlan` s (:func:`plan_requests`); each is sent, with
its own retries, and answers an :class:`Answer`; :func:`assemble` turns an item's answers back
into the one answer its record is built from. A file sent as it is is one request; a prepared
recording (downmixed, transcoded, cut at silences: :mod:`batchscribe.audio.prepare`) is one
request per chunk, stitched back into one answer (:mod:`batchscribe.audio.stitch`). Short
clips packed together (one request, several items) are meant to land here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from batchscribe.items import Item
from batchscribe.pulse import Outcome, PulseParams, Verdict

if TYPE_CHECKING:
    from batchscribe.audio.prepare import Chunk, Prepared

# (Plain slotted dataclasses: made twice per item, they cost a third of a NamedTuple or of a
# frozen dataclass, measured: 0.3 us against 0.5 and 0.9.)


@dataclass(slots=True)
class RequestPlan:
    """One request to make: the item whose audio it carries, the Pulse parameters it is sent
    with, and the size of its body (a local file's bytes, as planned; 0 otherwise).

    ``chunk``: the prepared chunk it sends (its file, content type, size, place in the
    timeline), None for the item's own source. ``body``: the file's bytes, already read for
    the probe, for the first attempt only (the sender clears it: a retry reads afresh).
    """

    item: Item
    params: PulseParams
    size: int
    chunk: Chunk | None = None
    body: bytes | None = None


@dataclass(slots=True)
class Answer:
    """How one request plan ended: its last outcome, the attempts it took, and the seconds the
    last attempt's request took (the record's ``elapsed_ms``)."""

    outcome: Outcome
    attempts: int
    elapsed: float


def plan_requests(
    item: Item, params: PulseParams, size: int, prepared: Prepared | None = None
) -> list[RequestPlan]:
    """The requests that transcribe ``item``: one with its whole audio, or one per chunk of
    its ``prepared`` recording (in the chunks' order)."""
    if prepared is None:
        return [RequestPlan(item, params, size)]
    return [RequestPlan(item, params, chunk.size, chunk) for chunk in prepared.chunks]


def assemble(item: Item, answers: Sequence[Answer], prepared: Prepared | None = None) -> Answer:
    """The one answer of ``item`` from its requests' answers, in plan order.

    Unprepared: that one request's answer. Prepared: the chunks' answers stitched into one
    (times in the original timeline, ``duration`` the file's) when every chunk is OK, else
    the first chunk that is not, its error prefixed ``chunk K/N: ``. Attempts add up; the
    elapsed time is the longest chunk's.
    """
    if prepared is None:
        if len(answers) != 1:
            raise ValueError(f"{item.id}: {len(answers)} answers for an unprepared item")
        return answers[0]
    chunks = prepared.chunks
    if len(answers) != len(chunks):
        raise ValueError(f"{item.id}: {len(answers)} answers for {len(chunks)} chunks")
    attempts = sum(answer.attempts for answer in answers)
    elapsed = max(answer.elapsed for answer in answers)
    for number, answer in enumerate(answers, 1):
        outcome = answer.outcome
        if outcome.verdict is not Verdict.OK:
            if len(chunks) > 1:
                error = f"chunk {number}/{len(chunks)}: {outcome.error or outcome.cause}"
                outcome = replace(outcome, error=error)
            return Answer(outcome, attempts, elapsed)
    payload = stitch_answers(prepared, [answer.outcome.payload or {} for answer in answers])
    first = answers[0].outcome
    return Answer(Outcome(Verdict.OK, first.http_status, "ok", None, payload), attempts, elapsed)


def stitch_answers(prepared: Prepared, payloads: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The chunks' payloads (in chunk order) as one, with how the recording was prepared."""
    from batchscribe.audio.stitch import Part, stitch

    parts = [
        Part(chunk.start / chunk.rate, chunk.keep_from, chunk.keep_until, chunk.channel, payload)
        for chunk, payload in zip(prepared.chunks, payloads, strict=True)
    ]
    return stitch(parts, duration=prepared.duration)


def prepared_summary(prepared: Prepared) -> dict[str, Any]:
    """The record's ``prepared`` field: how the recording was sent."""
    channels = {chunk.channel for chunk in prepared.chunks}
    return {
        "chunks": len(prepared.chunks),
        "channels": len(channels) if None not in channels else 1,
        "transcoded_to": prepared.transcoded_to,
        "bytes_sent": sum(chunk.size for chunk in prepared.chunks),
    }
