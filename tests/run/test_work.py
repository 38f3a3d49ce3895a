"""Request plans (batchscribe.run.work): the unit of work between the feed and the sender."""

from __future__ import annotations

import pytest

from batchscribe.audio.prepare import Chunk, Prepared
from batchscribe.items import LOCAL_FILE, Item
from batchscribe.pulse import Outcome, PulseParams, Verdict
from batchscribe.run.work import Answer, RequestPlan, assemble, plan_requests

ITEM = Item("a", "/audio/a.wav", LOCAL_FILE, {}, None, "m.jsonl:1")


def test_an_item_is_one_request_with_its_whole_audio() -> None:
    """Today an item becomes exactly one request plan: the item, its parameters, its size."""
    params = PulseParams(language="de")
    assert plan_requests(ITEM, params, 1234) == [RequestPlan(ITEM, params, 1234)]


def test_the_one_answer_of_a_one_request_item_is_its_answer() -> None:
    """Assembling a single request's answer gives that answer (outcome, attempts, elapsed)."""
    answer = Answer(Outcome(Verdict.OK, 200, "ok", None, {"transcription": "hi"}), 2, 0.25)
    assert assemble(ITEM, [answer]) is answer


def test_assembling_several_answers_of_an_unprepared_item_is_refused() -> None:
    """An unprepared item is one request: several answers are a bug, said loudly."""
    answer = Answer(Outcome(Verdict.OK, 200, "ok"), 1, 0.1)
    with pytest.raises(ValueError, match="unprepared item"):
        assemble(ITEM, [answer, answer])


def _prepared(*chunks: tuple[int, int, float | None, float | None]) -> Prepared:
    """A prepared recording of mono 16 kHz chunks (start, end, keep_from, keep_until)."""
    made = tuple(
        Chunk(i, None, a, b, 16000, kf, ku, f"/tmp/{i}.flac", "audio/flac", 100 + i)
        for i, (a, b, kf, ku) in enumerate(chunks)
    )
    return Prepared(made, chunks[-1][1] / 16000, 2, "flac", 10_000)


def _said(*words: tuple[str, float, float]) -> dict[str, object]:
    return {
        "status": "success",
        "transcription": " ".join(w for w, _, _ in words),
        "words": [{"word": w, "start": a, "end": b} for w, a, b in words],
    }


def test_a_prepared_item_is_one_request_per_chunk() -> None:
    """plan_requests gives one plan per chunk, carrying the chunk and its size."""
    prepared = _prepared((0, 160000, None, None), (160000, 320000, None, None))
    plans = plan_requests(ITEM, PulseParams(), 0, prepared)
    assert [(p.chunk, p.size) for p in plans] == [(c, c.size) for c in prepared.chunks]


def test_chunk_answers_are_stitched_at_their_offsets() -> None:
    """All chunks OK: one answer, words shifted by each chunk's exact offset, the file's
    duration; attempts add up, elapsed is the longest chunk's."""
    prepared = _prepared((0, 160000, None, None), (160000, 320000, None, None))
    answers = [
        Answer(Outcome(Verdict.OK, 200, "ok", None, _said(("a", 1.0, 1.4))), 1, 0.5),
        Answer(Outcome(Verdict.OK, 200, "ok", None, _said(("b", 0.5, 0.9))), 2, 0.7),
    ]
    answer = assemble(ITEM, answers, prepared)
    assert answer.outcome.verdict is Verdict.OK and (answer.attempts, answer.elapsed) == (3, 0.7)
    payload = answer.outcome.payload
    assert payload is not None and payload["transcription"] == "a b"
    assert [(w["word"], w["start"]) for w in payload["words"]] == [("a", 1.0), ("b", 10.5)]
    assert payload["duration"] == 20.0


def test_a_failed_chunk_fails_the_item_naming_it() -> None:
    """A chunk that failed after its retries fails the item with its cause, the error
    prefixed "chunk K/N: "."""
    prepared = _prepared((0, 16000, None, None), (16000, 32000, None, None))
    answers = [
        Answer(Outcome(Verdict.OK, 200, "ok", None, _said()), 1, 0.1),
        Answer(Outcome(Verdict.FAIL, 500, "5xx", "HTTP 500: boom"), 6, 0.1),
    ]
    outcome = assemble(ITEM, answers, prepared).outcome
    assert (outcome.verdict, outcome.cause) == (Verdict.FAIL, "5xx")
    assert outcome.error == "chunk 2/2: HTTP 500: boom"
