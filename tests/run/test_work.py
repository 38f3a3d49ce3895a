"""Request plans (batchscribe.run.work): the unit of work between the feed and the sender."""

from __future__ import annotations

import pytest

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


def test_assembling_several_answers_is_refused_until_planned() -> None:
    """No plan makes several requests per item yet: several answers are a bug, said loudly."""
    answer = Answer(Outcome(Verdict.OK, 200, "ok"), 1, 0.1)
    with pytest.raises(ValueError, match="only one request per item"):
        assemble(ITEM, [answer, answer])
