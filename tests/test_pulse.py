"""The pure Pulse contract: query building, parameter validation, outcome classification."""

from __future__ import annotations

import email.utils
import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscribe.pulse import (
    DEFAULT_ENDPOINT,
    LANGUAGES,
    LEGACY_ENDPOINT,
    MODELS,
    ORIGINAL_ENDPOINT,
    UNIFIED_ENDPOINT,
    Cause,
    PulseParams,
    Verdict,
    build_query,
    check_combination,
    classify,
    clean_api_key,
    coerce_param,
    content_type_for,
    endpoint_clashes,
    endpoint_kind,
    endpoint_problem,
    public_url,
    server_delay,
    url_secrets,
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


@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308])
def test_a_redirect_fails_the_item_naming_the_location_without_secrets(status: int) -> None:
    """A 3xx is a failure with cause ``redirect`` naming the Location minus userinfo and query."""
    location = "https://u:pw@eu.example/waves/v1/stt/?X-Amz-Signature=abc&token=t0k#frag"
    outcome = classify(status, {"Location": location}, b"<html>moved</html>", now=0.0)
    assert (outcome.verdict, outcome.cause, outcome.http_status) == (
        Verdict.FAIL, "redirect", status,
    )  # fmt: skip
    where = "https://eu.example/waves/v1/stt/"
    assert outcome.error == f"HTTP {status} redirect to {where} (not followed: check --endpoint)"
    assert outcome.payload is None


def test_a_redirect_without_location_still_says_what_happened() -> None:
    """A 3xx with no Location is still a ``redirect`` failure, with a readable error."""
    outcome = classify(302, {}, b"", now=0.0)
    assert outcome.error == "HTTP 302 redirect (not followed: check --endpoint)"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://h.example/p?q=1", "https://h.example/p"),
        ("https://user:secret@h.example:8443/p#f", "https://h.example:8443/p"),
        ("/relative/path?sig=x", "/relative/path"),
        ("http://[::1", "(an invalid URL)"),
        ("https://h.example/a\nb  c", "https://h.example/ab c"),
    ],
)
def test_public_url_drops_credentials_query_and_fragment(url: str, shown: str) -> None:
    """A URL shown to the user carries no userinfo, query or fragment, on one line."""
    assert public_url(url) == shown


def test_a_utf8_bom_before_the_json_is_accepted() -> None:
    """A complete 200 JSON body led by a UTF-8 BOM is ok, not an incomplete body."""
    outcome = classify(200, {}, b'\xef\xbb\xbf{"status": "success", "transcription": "hi"}', now=0)
    assert (outcome.verdict, outcome.payload) == (
        Verdict.OK, {"status": "success", "transcription": "hi"},
    )  # fmt: skip


def test_endpoint_query_clashes_and_secrets() -> None:
    """Pulse's own names in an endpoint's query are clashes; other long values and a password
    are secrets, short ones (``region=eu``) are not."""
    endpoint = "https://u:hunter2-pw@h.example/p?token=abcdefgh12&region=eu&model=pulse-pro"
    assert endpoint_clashes(endpoint) == ["model"]
    assert url_secrets(endpoint) == ["hunter2-pw", "abcdefgh12"]
    assert url_secrets("https://h.example/p") == []


# --------------------------------------------------------------------------------------------
# What a 200 says: only a transcript is ok; "processing" is submitted only with a webhook.


def test_200_success_with_an_empty_transcription_is_ok() -> None:
    """Silence transcribes to an empty string: still ok."""
    outcome = classify(200, {}, b'{"status":"success","transcription":""}', now=NOW)
    assert outcome.verdict is Verdict.OK


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b'{"status":"error","message":"Invalid audio file"}', "Invalid audio file"),
     (b'{"errors":"Audio data too large","status":"error","message":"Bad request"}',
      "Audio data too large"),
     (b'{"status":"error","error_code":"LANGUAGE_NOT_ENABLED_IN_REGION","message":"no hi"}',
      "LANGUAGE_NOT_ENABLED_IN_REGION"),
     (b'{"error":"unsupported codec","request_id":"r-1","details":{"codec":"amr"}}',
      "unsupported codec"),
     (b'{"message":"Forbidden"}', "Forbidden"),
     (b'{"status":"failed"}', "status 'failed'")],
)  # fmt: skip
def test_200_whose_body_says_it_did_not_succeed_fails_with_its_error(
    body: bytes, fragment: str
) -> None:
    """A 200 whose body is an error (any documented shape) fails the item with the body's
    error text, never ok."""
    outcome = classify(200, {}, body, now=NOW)
    assert outcome.verdict is Verdict.FAIL
    assert outcome.http_status == 200
    assert outcome.error is not None and fragment in outcome.error
    assert outcome.error.startswith("HTTP 200: ")


@pytest.mark.parametrize(
    ("body", "cause"),
    [(b'{"status":"error","message":"Server busy, please try again later"}', "5xx"),
     (b'{"status":"error","errors":"Model overloaded"}', "5xx"),
     (b'{"status":"error","message":"Service temporarily unavailable"}', "5xx"),
     (b'{"error":"Rate limit exceeded. Please retry after a short backoff."}', "429"),
     (b'{"status":"error","message":"Too many requests"}', "429")],
)  # fmt: skip
def test_200_error_body_saying_busy_is_retried(body: bytes, cause: str) -> None:
    """A 200 error body saying the service is busy, overloaded or rate limited is retried,
    honouring any delay header."""
    outcome = classify(200, {"Retry-After": "4"}, body, now=NOW)
    assert outcome.verdict is Verdict.RETRY
    assert outcome.cause == cause
    assert outcome.delay == 4.0


@pytest.mark.parametrize(
    "body",
    [b'{"status":"success"}', b'{"status":"success","transcription":null}',
     b'{"status":"success","transcription":7}', b"{}", b'{"transcription":"hi"}'],
)  # fmt: skip
def test_200_success_without_a_transcription_is_retried_as_incomplete(body: bytes) -> None:
    """status success without a transcription string is an incomplete answer: retried."""
    outcome = classify(200, {}, body, now=NOW)
    assert outcome.verdict is Verdict.RETRY
    assert outcome.error is not None and "incomplete answer" in outcome.error


def test_processing_with_a_webhook_is_submitted_with_its_request_id() -> None:
    """A pulse-pro webhook request answered "processing" is submitted, not ok, with the
    request id to match the webhook's delivery."""
    body = b'{"status":"processing","request_id":"req-9"}'
    outcome = classify(200, {}, body, now=NOW, webhook=True)
    assert outcome.verdict is Verdict.SUBMITTED
    assert outcome.request_id == "req-9"


def test_processing_without_a_webhook_fails() -> None:
    """ "processing" without a webhook_url fails: nothing will ever deliver the transcript."""
    outcome = classify(200, {}, b'{"status":"processing","request_id":"r"}', now=NOW)
    assert outcome.verdict is Verdict.FAIL
    assert outcome.error is not None and "webhook" in outcome.error


def test_request_id_comes_from_the_body_or_the_x_request_id_header() -> None:
    """The correlation id is the body's request_id, else the x-request-id header."""
    ok = b'{"status":"success","transcription":"hi"}'
    assert classify(200, {"x-request-id": "h-1"}, ok, now=NOW).request_id == "h-1"
    body = b'{"status":"processing","request_id":"b-1"}'
    headers = {"X-Request-Id": "h-2"}
    assert classify(200, headers, body, now=NOW, webhook=True).request_id == "b-1"
    assert classify(400, headers, b'{"error":"x"}', now=NOW).request_id == "h-2"


def test_legacy_error_shapes_of_4xx_give_their_message() -> None:
    """Legacy 4xx bodies ({errors, message}, {error_code, message}, {message}) name their error."""
    for body, fragment in [
        (b'{"errors":"Audio data too large","status":"error","message":"x"}', "too large"),
        (b'{"status":"error","error_code":"LANGUAGE_NOT_ENABLED_IN_REGION"}', "LANGUAGE_NOT"),
        (b'{"message":"Forbidden"}', "Forbidden"),
    ]:
        error = classify(400, {}, body, now=NOW).error
        assert error is not None and fragment in error


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_ANSWER = st.dictionaries(
    st.sampled_from(["status", "transcription", "error", "errors", "message", "error_code",
                     "details", "request_id", "words"]) | st.text(max_size=5),
    _JSON | st.sampled_from(["success", "processing", "error", "busy", ""]),
    max_size=6,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(doc=_ANSWER, webhook=st.booleans())
def test_a_200_is_ok_only_for_a_success_with_a_transcription(
    doc: dict[str, object], webhook: bool
) -> None:
    """Property: whatever a 200 body holds, it is ok exactly when it says success and carries
    a transcription string, submitted exactly when a webhook request is processing; every
    other answer fails or is retried with a one-line error."""
    outcome = classify(200, {}, orjson.dumps(doc), now=NOW, webhook=webhook)
    success = doc.get("status") == "success" and isinstance(doc.get("transcription"), str)
    processing = doc.get("status") == "processing" and webhook
    assert (outcome.verdict is Verdict.OK) == success
    assert (outcome.verdict is Verdict.SUBMITTED) == processing
    if not success and not processing:
        assert outcome.verdict in (Verdict.FAIL, Verdict.RETRY)
        assert outcome.error is not None and outcome.error.startswith("HTTP 200")
        assert "\n" not in outcome.error and len(outcome.error) < 260


# --------------------------------------------------------------------------------------------
# The current contract (issue 14): endpoints, both error shapes, oversize, local validation.


def test_the_default_endpoint_is_the_unified_one_and_kinds_follow_the_path() -> None:
    """The default is the unified .../stt/ endpoint; the kind of an endpoint is read from its
    path (.../stt unified, .../get_text legacy, anything else unknown)."""
    assert DEFAULT_ENDPOINT == UNIFIED_ENDPOINT == "https://api.smallest.ai/waves/v1/stt/"
    assert endpoint_kind(UNIFIED_ENDPOINT) == "unified"
    assert endpoint_kind("http://127.0.0.1:9/waves/v1/stt?token=x") == "unified"
    assert endpoint_kind(LEGACY_ENDPOINT) == endpoint_kind(ORIGINAL_ENDPOINT) == "legacy"
    assert endpoint_kind("https://proxy.example/transcribe") is None


def test_legacy_only_parameters_in_a_unified_endpoint_are_refused_by_name() -> None:
    """encoding/format/punctuate/capitalize in a unified endpoint's query is a problem naming
    them and the fix; in a legacy endpoint's query they are fine (and no secret)."""
    problem = endpoint_problem(f"{UNIFIED_ENDPOINT}?punctuate=false&encoding=linear16&t=1")
    assert problem is not None and "encoding, punctuate" in problem and "get_text" in problem
    assert "linear16" not in problem  # (the query is not shown: it may hold a token)
    assert endpoint_problem(f"{LEGACY_ENDPOINT}?punctuate=false&encoding=linear16") is None
    assert endpoint_problem(f"{UNIFIED_ENDPOINT}?token=abc") is None
    assert url_secrets(f"{LEGACY_ENDPOINT}?encoding=ogg_opus&capitalize=false") == []


@pytest.mark.parametrize(
    ("params", "url_input", "fragment"),
    [(PulseParams(model="pulse-pro", diarize=True), False, "diarize works with model=pulse"),
     (PulseParams(model="pulse-pro"), True, "URL input works with model=pulse"),
     (PulseParams(webhook_url="https://h.example/x"), False, "need model=pulse-pro, not pulse"),
     (PulseParams(redact_pii=True, language="fr"), False, "redact_pii works with language en"),
     (PulseParams(redact_pci=True, language="multi-eu"), False, "not multi-eu")],
)  # fmt: skip
def test_documented_limits_are_refused_locally_with_the_fix(
    params: PulseParams, url_input: bool, fragment: str
) -> None:
    """Diarization or URL input with pulse-pro, a webhook with pulse, redaction outside en/hi:
    one line naming the parameter and what it needs."""
    problem = check_combination(params, url_input=url_input)
    assert problem is not None and fragment in problem and "\n" not in problem


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from(MODELS), language=st.sampled_from(LANGUAGES), diarize=st.booleans(),
    pii=st.booleans(), pci=st.booleans(), hook=st.booleans(), url_input=st.booleans(),
)  # fmt: skip
def test_a_combination_is_refused_exactly_when_a_documented_limit_is_broken(
    model: str, language: str, diarize: bool, pii: bool, pci: bool, hook: bool, url_input: bool
) -> None:
    """Property: check_combination says nothing exactly when URL input and diarization come
    with pulse, a webhook with pulse-pro and redaction with en or hi."""
    params = PulseParams(
        model=model, language=language, diarize=diarize, redact_pii=pii, redact_pci=pci,
        webhook_url="https://h.example/x" if hook else None,
    )  # fmt: skip
    fits = (
        (not url_input or model == "pulse")
        and (not diarize or model == "pulse")
        and (not hook or model == "pulse-pro")
        and (not (pii or pci) or language in ("en", "hi"))
    )
    assert (check_combination(params, url_input=url_input) is None) == fits


@pytest.mark.parametrize(
    ("status", "body"),
    [(413, b'{"error":"Payload too large","request_id":"r-1"}'),
     (413, b""),
     (400, b'{"errors":"Audio data too large","status":"error","message":"Bad request"}'),
     (400, b'{"status":"error","message":"Audio data too large"}'),
     (200, b'{"errors":"Audio data too large","status":"error","message":"Bad request"}')],
)  # fmt: skip
def test_oversize_is_its_own_cause_on_both_endpoints(status: int, body: bytes) -> None:
    """413 (unified) and 400 "Audio data too large" (legacy) are cause too_large: failed, not
    retried, and told apart from other 4xx (the audio stage acts on it)."""
    outcome = classify(status, {"x-request-id": "h-1"}, body, now=NOW)
    assert (outcome.verdict, outcome.cause) == (Verdict.FAIL, "too_large")
    assert outcome.request_id in ("r-1", "h-1")


@pytest.mark.parametrize(
    ("status", "body", "named"),
    [(400, b'{"status":"error","error_code":"LANGUAGE_NOT_ENABLED_IN_REGION",'
           b'"message":"Language not enabled","language":"multi-indic","region":"eu"}',
      "language multi-indic is not enabled in this account's region (eu)"),
     (400, b'{"error":"LANGUAGE_NOT_ENABLED_IN_REGION","request_id":"r","details":{}}',
      "the language is not enabled"),
     (200, b'{"status":"error","error_code":"LANGUAGE_NOT_ENABLED_IN_REGION","message":"no"}',
      "the language is not enabled")],
)  # fmt: skip
def test_a_language_not_enabled_in_the_region_says_what_to_change(
    status: int, body: bytes, named: str
) -> None:
    """LANGUAGE_NOT_ENABLED_IN_REGION (any shape) is cause ``language`` with a message naming
    the language and the fix (another --language), one line."""
    outcome = classify(status, {}, body, now=NOW)
    assert (outcome.verdict, outcome.cause) == (Verdict.FAIL, "language")
    assert outcome.error is not None and named in outcome.error
    assert "--language" in outcome.error and "\n" not in outcome.error


@pytest.mark.parametrize(
    ("status", "body", "fragment"),
    [(400, b'{"error":"model is required","request_id":"r-2","details":{"param":"model"}}',
      'model is required: {"param":"model"}'),
     (400, b'{"errors":"bad header","status":"error","message":"Invalid audio"}',
      "bad header: Invalid audio"),
     (403, b'{"message":"Forbidden"}', "Forbidden"),
     (401, b'{"error":"Invalid API key"}', "Invalid API key")],
)  # fmt: skip
def test_every_error_shape_gives_one_short_message(status: int, body: bytes, fragment: str) -> None:
    """Unified {error, request_id, details} and legacy {errors, status, message} / {message}
    bodies give one line with their text, status first."""
    outcome = classify(status, {}, body, now=NOW)
    assert outcome.error is not None and outcome.error.startswith(f"HTTP {status}: ")
    assert fragment in outcome.error


@pytest.mark.parametrize("status", [200, 301, 400, 401, 404, 408, 413, 422, 429, 500, 503])
@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b"[]", b'{"status":"success","transcription":"hi"}', b'{"status":"processing"}',
     b'{"status":"failed","message":"rate limit"}', b'{"message":"audio data too large"}',
     b'{"error_code":"LANGUAGE_NOT_ENABLED_IN_REGION"}', b'{"status":"error","message":"busy"}'],
)  # fmt: skip
def test_every_cause_classify_gives_is_a_cause_as_plain_text(status: int, body: bytes) -> None:
    """A classified outcome's cause is "ok" or a Cause's value, as a plain str (records, events
    and the summary's counters are serialised with orjson, which refuses a str subclass key)."""
    cause = classify(status, {}, body, now=NOW).cause
    assert type(cause) is str
    assert cause == "ok" or cause in {c.value for c in Cause}
