"""The pure Pulse contract: query building, parameter validation, outcome classification."""

from __future__ import annotations

import email.utils
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchscribe.pulse import (
    PulseParams,
    Verdict,
    build_query,
    check_combination,
    classify,
    clean_api_key,
    coerce_param,
    content_type_for,
    server_delay,
)

NOW = 1_700_000_000.0


def test_query_sends_booleans_as_true_false_and_omits_unset_webhooks() -> None:
    """Booleans go as true/false and unset webhook fields are not sent."""
    query = build_query(PulseParams(diarize=True))
    assert query["model"] == "pulse"
    assert query["language"] == "en"
    assert query["word_timestamps"] == "true"
    assert query["diarize"] == "true"
    assert query["redact_pii"] == "false"
    assert "webhook_url" not in query


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [("model", "pulse-pro", "pulse-pro"), ("language", "multi-eu", "multi-eu"),
     ("diarize", "TRUE", True), ("diarize", False, False), ("webhook_method", "put", "PUT")],
)  # fmt: skip
def test_coerce_accepts_valid_values(name: str, value: object, expected: object) -> None:
    """Valid parameter values are normalised."""
    assert coerce_param(name, value) == expected


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [("model", "whisper", "unknown model"), ("language", "xx", "unknown language"),
     ("diarize", "maybe", "true or false"), ("webhook_url", "ftp://x", "http(s)"),
     ("webhook_url", "https://hook/x\nHost: evil", "control characters"),
     ("webhook_url", "https://hook/a b", "spaces"),
     ("webhook_extra", "a:b,c:\x00", "control characters"),
     ("nonsense", 1, "unknown Pulse parameter")],
)  # fmt: skip
def test_coerce_rejects_invalid_values_with_a_clear_message(
    name: str, value: object, fragment: str
) -> None:
    """Invalid parameter values raise ValueError naming the problem."""
    with pytest.raises(ValueError) as info:  # noqa: PT011 (the message is checked below)
        coerce_param(name, value)
    assert fragment in str(info.value)


@given(st.text())
def test_a_cleaned_key_is_a_header_token_and_a_refusal_holds_none_of_it(raw: str) -> None:
    """Any string: the cleaned key is printable ASCII without spaces (safe in a header), or the
    refusal is one of a few fixed messages (so it holds no piece of the key)."""
    try:
        key = clean_api_key(raw)
    except ValueError as exc:
        refusal = str(exc)
    else:
        assert all(0x21 <= ord(char) <= 0x7E for char in key)
        assert key in raw
        return
    assert re.fullmatch(_REFUSAL, refusal), refusal


_REFUSAL = (
    r"contains (a line break \(a file of several lines\?\)|a space or other whitespace|"
    r"a character that is not ASCII|a control character) at character \d+; "
    r"a key is one line of printable ASCII"
)


def test_key_cleaning_strips_whitespace_and_a_bom_only_around_it() -> None:
    """A newline, CRLF, spaces or a BOM around the key go; inside it they are refused."""
    assert clean_api_key("\ufeff  sk-abc\r\n") == "sk-abc"
    assert clean_api_key("sk-abc\n\n") == "sk-abc"
    for raw in ("sk-a\nbc", "sk-a bc", "sk-a\x7fbc", "sk-\u00e9bc", "sk-a\u200bbc"):
        with pytest.raises(ValueError, match="a key is one line"):
            clean_api_key(raw)


def test_url_input_with_pulse_pro_is_refused_locally() -> None:
    """URL input only works with model=pulse: caught before sending."""
    assert check_combination(PulseParams(model="pulse-pro"), url_input=True)
    assert check_combination(PulseParams(), url_input=True) is None
    assert check_combination(PulseParams(webhook_url="https://h/x"), url_input=False)


def test_content_type_follows_the_extension() -> None:
    """Raw audio goes with the MIME type of its extension."""
    assert content_type_for("a/b.WAV") == "audio/wav"
    assert content_type_for("x.mp3") == "audio/mpeg"
    assert content_type_for("x.unknown") == "application/octet-stream"


def test_200_with_json_is_ok_and_keeps_every_field() -> None:
    """A 200 with a JSON object is OK and its payload is kept whole."""
    outcome = classify(200, {}, b'{"status":"success","transcription":"hi","extra":1}', now=NOW)
    assert outcome.verdict is Verdict.OK
    assert outcome.payload == {"status": "success", "transcription": "hi", "extra": 1}


def test_200_with_a_cut_body_is_retried() -> None:
    """A 200 whose body is not complete JSON is retried, not recorded as ok."""
    assert classify(200, {}, b'{"status":"succ', now=NOW).verdict is Verdict.RETRY


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    """408, 409, 429 and 5xx are retried."""
    assert classify(status, {}, b"", now=NOW).verdict is Verdict.RETRY


@pytest.mark.parametrize("status", [400, 403, 413, 422])
def test_other_4xx_fail_without_retry(status: int) -> None:
    """Other 4xx fail the item and are never retried."""
    outcome = classify(status, {}, b'{"error":"bad audio"}', now=NOW)
    assert outcome.verdict is Verdict.FAIL
    assert outcome.error is not None and str(status) in outcome.error


@pytest.mark.parametrize("status", [401, 404])
def test_401_and_404_abort_the_run(status: int) -> None:
    """A rejected key or a wrong endpoint would fail every item: the run aborts."""
    assert classify(status, {}, b"<html>no</html>", now=NOW).verdict is Verdict.ABORT


def test_error_text_is_one_short_line_even_for_html() -> None:
    """Error causes stay one short line whatever the body is."""
    outcome = classify(500, {}, b"<html>\n" + b"x" * 5000, now=NOW)
    assert outcome.error == "HTTP 500: non-JSON error body"
    outcome = classify(400, {}, b'{"error": "line1\\nline2' + b"y" * 900 + b'"}', now=NOW)
    assert outcome.error is not None and "\n" not in outcome.error and len(outcome.error) < 230


def test_retry_after_seconds() -> None:
    """Retry-After in seconds is honoured."""
    assert server_delay({"Retry-After": "7"}, now=NOW) == 7.0


def test_retry_after_http_date() -> None:
    """Retry-After as an HTTP date is turned into seconds from now."""
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert server_delay({"Retry-After": date}, now=NOW) == pytest.approx(30.0, abs=1.0)


def test_retry_after_ms() -> None:
    """retry-after-ms is milliseconds."""
    assert server_delay({"retry-after-ms": "1500"}, now=NOW) == 1.5


def test_ratelimit_reset_delta_and_epoch() -> None:
    """X-RateLimit-Reset may be a delta or an epoch time."""
    assert server_delay({"X-RateLimit-Reset": "12"}, now=NOW) == 12.0
    assert server_delay({"X-RateLimit-Reset": str(int(NOW + 20))}, now=NOW) == 20.0


def test_longest_delay_wins_and_garbage_is_ignored() -> None:
    """With several headers the longest delay wins; unparseable values are ignored."""
    headers = {"Retry-After": "2", "retry-after-ms": "4000", "X-RateLimit-Reset": "soon"}
    assert server_delay(headers, now=NOW) == 4.0
    assert server_delay({"Retry-After": "whenever"}, now=NOW) is None
    assert server_delay({}, now=NOW) is None


def test_delay_in_the_past_is_zero() -> None:
    """A date in the past means no wait, never a negative one."""
    date = email.utils.formatdate(NOW - 100, usegmt=True)
    assert server_delay({"Retry-After": date}, now=NOW) == 0.0


def test_429_carries_its_delay() -> None:
    """A 429's outcome carries the server's delay for the engine's pause."""
    outcome = classify(429, {"Retry-After": "3"}, b"", now=NOW)
    assert outcome.cause == "429"
    assert outcome.delay == 3.0
