"""The Pulse emulator on a real loopback server: contract, validation, faults, limits, stats."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import math
import socket
import struct
import time
import wave
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from audio_fixtures import make_wav, wav_bytes

from batchscribe.emulator import (
    DELAY_HEADER_KINDS,
    PATHS,
    PLANS,
    PROFILES,
    RATE_LIMIT_MESSAGE,
    EmulatorConfig,
    EmulatorThread,
    FaultRates,
    RunningEmulator,
    add_arguments,
    config_from_args,
    content_key,
    serve_forever,
    start_emulator,
    transcript_for,
    transcript_for_url,
)
from batchscribe.emulator.limits import Link, SlidingWindow, TokenBuckets
from batchscribe.pulse import (
    BOOL_PARAMS,
    CURRENT_PATH,
    LANGUAGES,
    LEGACY_PATH,
    MAX_PAYLOAD,
    MODELS,
    content_type_for,
    server_delay,
)

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = ROOT / "sample_manifests" / "archive"
SAMPLES: dict[str, dict[str, Any]] = json.loads(
    (ROOT / "batchscribe" / "data" / "samples.json").read_text("utf-8")
)
PULSE = {"model": "pulse"}


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
async def server() -> AsyncIterator[RunningEmulator]:
    """A fresh emulator with the default configuration; tests change ``.config`` as needed."""
    running = await start_emulator(EmulatorConfig())
    yield running
    await running.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session without retries of its own."""
    async with aiohttp.ClientSession() as client:
        yield client


class Answer:
    """What one exchange ended with: a status and body, or a transport failure."""

    def __init__(
        self, status: int | str, headers: Mapping[str, str], body: bytes, elapsed: float
    ) -> None:
        self.status = status  # an HTTP status, or "reset" / "truncated"
        self.headers = headers
        self.body = body
        self.elapsed = elapsed

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def outcome(self) -> str:
        """The status, with a 200 carrying incomplete JSON reported as truncated."""
        if self.status == 200:
            try:
                self.json()
            except ValueError:
                return "truncated"
        return str(self.status)


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: Any = None,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    timeout: float = 10.0,
) -> Answer:
    """POST and capture the outcome, turning transport failures into a status string."""
    started = time.monotonic()
    try:
        async with session.post(
            url,
            params=PULSE if params is None else params,
            data=body,
            json=json_body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            data = await response.read()
            return Answer(
                response.status, response.headers.copy(), data, time.monotonic() - started
            )
    except aiohttp.ClientPayloadError:
        return Answer("truncated", {}, b"", time.monotonic() - started)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        return Answer("reset", {}, b"", time.monotonic() - started)


def distinct_wavs(count: int, seconds: float = 0.1) -> list[bytes]:
    """``count`` different tiny WAV bodies."""
    return [wav_bytes(seconds, 200 + index, 8000) for index in range(count)]


def sample_path(sha: str) -> Path:
    return ARCHIVE / SAMPLES[sha]["file"]


async def outcomes(session: aiohttp.ClientSession, url: str, bodies: list[bytes]) -> dict[str, str]:
    """Send each body once, concurrently; content key -> outcome."""
    answers = await asyncio.gather(*(post(session, url, body) for body in bodies))
    return {content_key(body): answer.outcome for body, answer in zip(bodies, answers, strict=True)}


# --------------------------------------------------------------------------------------------
# Synthetic signals: tones separated by silence


def tones_wav(
    segments: list[tuple[float, float, float]],
    seconds: float,
    rate: int = 8000,
    *,
    channels: int = 1,
) -> bytes:
    """A 16-bit WAV of ``seconds`` of silence with a sine tone over each (start, end, freq)."""
    samples = [0.0] * round(seconds * rate)
    for start, end, freq in segments:
        for i in range(round(start * rate), round(end * rate)):
            samples[i] = 12000 * math.sin(2 * math.pi * freq * i / rate)
    frames = struct.pack(f"<{len(samples)}h", *(round(v) for v in samples))
    if channels == 2:  # the tone on the left, silence on the right
        frames = b"".join(frames[i : i + 2] + b"\0\0" for i in range(0, len(frames), 2))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buffer.getvalue()


def encode(wav: bytes, container: str, codec: str, rate: int = 16000) -> bytes:
    """``wav`` re-encoded with PyAV (the same library the emulator decodes with)."""
    import av

    out = io.BytesIO()
    with av.open(io.BytesIO(wav)) as source, av.open(out, "w", format=container) as sink:
        stream = sink.add_stream(codec, rate=rate)
        stream.layout = "mono"  # type: ignore[union-attr]
        for frame in source.decode(audio=0):
            frame.pts = None
            for packet in stream.encode(frame):  # type: ignore[union-attr]
                sink.mux(packet)
        for packet in stream.encode(None):  # type: ignore[union-attr]
            sink.mux(packet)
    return out.getvalue()


TIMED = {"model": "pulse", "word_timestamps": "true"}
#: Two tones in silence: 440 Hz over 0.5-1.5 s, 880 Hz over 2.2-3.0 s, in 3.5 s. (Tones of the
#: equal-tempered scale: the emulator's pitch bins are semitones centred on them.)
TONES = [(0.5, 1.5, 440.0), (2.2, 3.0, 880.0)]


# --------------------------------------------------------------------------------------------
# The success contract


async def test_pulse_answer_has_the_documented_shape(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """Pulse: status, transcription, words, utterances, metadata {duration, fileSize}; no
    request_id or language in the body; the x-request-id header carries the id."""
    body = wav_bytes(0.5)
    answer = await post(session, server.endpoint(), body, params=TIMED)
    assert answer.status == 200
    doc = answer.json()
    assert set(doc) == {"status", "transcription", "words", "utterances", "metadata"}
    assert doc["status"] == "success"
    assert doc["transcription"] == transcript_for(body)
    assert doc["metadata"] == {"duration": 0.5, "fileSize": len(body)}
    assert answer.headers["X-Request-Id"].startswith("emu-")
    assert " ".join(u["text"] for u in doc["utterances"]) == doc["transcription"]
    assert all(set(w) == {"start", "end", "word", "confidence"} for w in doc["words"])


async def test_pulse_pro_answer_has_the_documented_shape(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """Pulse Pro: adds language, request_id (= x-request-id), totalBytes and timing metadata;
    no utterances, and no speaker in words even when diarize is asked."""
    body = wav_bytes(0.5)
    params = {"model": "pulse-pro", "word_timestamps": "true", "diarize": "true"}
    answer = await post(session, server.endpoint(), body, params=params)
    assert answer.status == 200
    doc = answer.json()
    assert set(doc) == {
        "status", "transcription", "words", "language", "request_id", "totalBytes", "metadata"
    }  # fmt: skip
    assert doc["request_id"] == answer.headers["X-Request-Id"]
    assert doc["language"] == "en"
    assert doc["totalBytes"] == len(body)
    assert set(doc["metadata"]) == {
        "duration", "fileSize", "processing_time_ms", "rtfx", "num_chunks"
    }  # fmt: skip
    assert doc["words"]
    assert all("speaker" not in w for w in doc["words"])


@pytest.mark.parametrize("kind", ["legacy", "legacy-current"])
async def test_legacy_paths_answer_like_the_unified_one(
    server: RunningEmulator, session: aiohttp.ClientSession, kind: str
) -> None:
    """Both legacy paths answer as the unified one, and default model to pulse (not required)."""
    body = wav_bytes(0.3, 500)
    unified = await post(session, server.endpoint("current"), body, params=TIMED)
    legacy = await post(session, server.endpoint(kind), body, params={"word_timestamps": "true"})
    assert unified.status == legacy.status == 200
    assert legacy.json() == unified.json()
    assert server.endpoint("current").endswith(CURRENT_PATH)
    stats = server.stats()
    assert stats["by_path"] == {"legacy": 1, "current": 1}
    assert stats["by_endpoint"] == {CURRENT_PATH: 1, PATHS[kind]: 1}


async def test_words_and_utterances_are_empty_without_word_timestamps(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """word_timestamps defaults to false: words and utterances come back empty, the text not."""
    for params in (PULSE, {"model": "pulse", "word_timestamps": "false"}):
        doc = (await post(session, server.endpoint(), wav_bytes(), params=params)).json()
        assert doc["words"] == []
        assert doc["utterances"] == []
        assert doc["transcription"]


async def test_words_are_ordered_inside_the_duration(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """With word_timestamps, the words spell the transcription with ordered times in the clip."""
    body = wav_bytes(1.5, 610)
    doc = (await post(session, server.endpoint(), body, params=TIMED)).json()
    words = doc["words"]
    assert [w["word"] for w in words] == doc["transcription"].split()
    previous_end = 0.0
    for word in words:
        assert previous_end <= word["start"] < word["end"] <= 1.5
        assert 0 < word["confidence"] <= 1
        previous_end = word["end"]


async def test_words_sit_on_the_tones_of_a_synthetic_file(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """Tones separated by silence: every word lies on a tone, each tone has words, and the two
    tones (different pitches) have different words."""
    body = tones_wav(TONES, 3.5)
    doc = (await post(session, server.endpoint(), body, params=TIMED)).json()
    on: dict[int, list[str]] = {0: [], 1: []}
    for word in doc["words"]:
        index = next(
            i for i, (a, b, _) in enumerate(TONES)
            if a - 0.03 <= word["start"] < word["end"] <= b + 0.03
        )  # fmt: skip
        on[index].append(word["word"])
    assert on[0] and on[1]
    assert on[0] != on[1]
    assert len(doc["utterances"]) == 2  # one per region
    assert doc["metadata"]["duration"] == 3.5


async def test_words_follow_the_signal_through_cutting_and_transcoding(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A cut at a silence keeps the words of the tone it holds, shifted by the cut; an MP3 or
    FLAC of the same signal has the same words at the same times (within a hop or two)."""
    whole = (await post(session, server.endpoint(), tones_wav(TONES, 3.5), params=TIMED)).json()
    second = [w for w in whole["words"] if w["start"] >= 2.0]
    cut = tones_wav([(0.2, 1.0, 880.0)], 1.5)  # the second tone, cut from 2.0 s
    part = (await post(session, server.endpoint(), cut, params=TIMED)).json()
    assert [w["word"] for w in part["words"]] == [w["word"] for w in second]
    for a, b in zip(part["words"], second, strict=True):
        assert a["start"] + 2.0 == pytest.approx(b["start"], abs=0.021)
    wav16 = tones_wav(TONES, 3.5, rate=16000)
    for container, codec in (("mp3", "libmp3lame"), ("flac", "flac")):
        coded = encode(wav16, container, codec)
        doc = (await post(session, server.endpoint(), coded, params=TIMED)).json()
        assert [w["word"] for w in doc["words"]] == [w["word"] for w in whole["words"]], container
        for a, b in zip(doc["words"], whole["words"], strict=True):
            assert a["start"] == pytest.approx(b["start"], abs=0.07), container


async def test_silence_has_an_empty_transcription(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A file of digital silence is transcribed to nothing: no text, no words."""
    doc = (await post(session, server.endpoint(), tones_wav([], 2.0), params=TIMED)).json()
    assert (doc["transcription"], doc["words"], doc["utterances"]) == ("", [], [])
    assert doc["metadata"]["duration"] == 2.0


async def test_diarize_gives_integer_speakers_by_utterance(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """diarize=true (Pulse) adds integer speakers: utterances alternate 0/1, words follow
    their utterance and carry speaker_confidence."""
    params = {**TIMED, "diarize": "true"}
    body = tones_wav([(0.2, 0.9, 220.0), (1.4, 2.0, 440.0), (2.6, 3.1, 660.0)], 3.4)
    doc = (await post(session, server.endpoint(), body, params=params)).json()
    speakers = [u["speaker"] for u in doc["utterances"]]
    assert speakers == [0, 1, 0]
    for word in doc["words"]:
        utterance = next(u for u in doc["utterances"] if u["start"] <= word["start"] <= u["end"])
        assert word["speaker"] == utterance["speaker"]
        assert 0 < word["speaker_confidence"] <= 1


async def test_gender_and_emotions_blocks_follow_their_flags(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """gender_detection / emotion_detection add their blocks; without them they are absent."""
    plain = (await post(session, server.endpoint(), wav_bytes())).json()
    assert "gender" not in plain
    assert "emotions" not in plain
    params = {"model": "pulse", "gender_detection": "true", "emotion_detection": "true"}
    doc = (await post(session, server.endpoint(), wav_bytes(), params=params)).json()
    assert doc["gender"] in ("male", "female")
    assert set(doc["emotions"]) == {"happiness", "sadness", "disgust", "fear", "anger"}
    assert all(0 <= v <= 1 for v in doc["emotions"].values())


@pytest.mark.parametrize("sha", sorted(SAMPLES), ids=lambda sha: SAMPLES[sha]["file"])
async def test_sample_clips_are_transcribed_to_their_sentences(
    server: RunningEmulator, session: aiohttp.ClientSession, sha: str
) -> None:
    """Each archive clip is answered with its real sentence, language (Pulse Pro) and true
    duration, its words inside the speech of the clip (after the 0.2 s of padding)."""
    sample = SAMPLES[sha]
    path = sample_path(sha)
    params = {"model": "pulse-pro", "language": "multi-eu", "word_timestamps": "true"}
    headers = {"Content-Type": content_type_for(path.name)}
    doc = (await post(session, server.endpoint(), path.read_bytes(), params=params,
                      headers=headers)).json()  # fmt: skip
    assert doc["transcription"] == sample["sentence"]
    assert doc["language"] == sample["language"]
    assert doc["metadata"]["duration"] == sample["duration"]
    assert doc["words"][0]["start"] >= 0.15
    assert doc["words"][-1]["end"] <= sample["duration"] - 0.1
    assert transcript_for(path.read_bytes()) == sample["sentence"]


async def test_unknown_compressed_audio_is_decoded_for_its_duration(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """An unknown MP3/FLAC (not in the table) gets the duration of its decoded samples."""
    for sha, sample in SAMPLES.items():
        if not sample["file"].endswith((".mp3", ".flac")):
            continue
        body = sample_path(sha).read_bytes() + b"\x00"  # different bytes, same audio
        doc = (await post(session, server.endpoint(), body)).json()
        assert doc["transcription"] != sample["sentence"]
        # (MP3: the container's figure counts the encoder's padding; the decoder drops it.)
        assert doc["metadata"]["duration"] == pytest.approx(sample["duration"], abs=0.12)


@pytest.mark.parametrize(
    ("container", "codec"),
    [("mp3", "libmp3lame"), ("flac", "flac"), ("ogg", "libopus"), ("ipod", "aac"),
     ("ipod", "alac"), ("webm", "libopus"), ("wav", "pcm_s24le")],
)  # fmt: skip
async def test_every_documented_format_is_decoded(
    server: RunningEmulator, session: aiohttp.ClientSession, container: str, codec: str
) -> None:
    """WAV, MP3, FLAC, OGG Opus, M4A (AAC/ALAC), WebM: decoded and transcribed, the words on
    the tone (octet-stream). OGG Vorbis is the sample archive's .ogg clips."""
    rate = 48000 if codec == "libopus" else 16000
    body = encode(tones_wav([(0.5, 1.5, 440.0)], 2.0, rate=rate), container, codec, rate)
    headers = {"Content-Type": "application/octet-stream"}
    answer = await post(session, server.endpoint(), body, params=TIMED, headers=headers)
    assert answer.status == 200, answer.body
    doc = answer.json()
    assert doc["metadata"]["duration"] == pytest.approx(2.0, abs=0.15)  # AAC priming samples
    assert doc["words"]
    assert all(0.4 <= w["start"] < w["end"] <= 1.6 for w in doc["words"])


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"#!AMR\n" + bytes(320), "unsupported audio format: amr"),
     (b"\xff\xf1\x50\x80" + bytes(400), "unsupported audio format: aac"),
     (b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(200), "unreadable audio"),
     (b"fLaC" + bytes(200), "unreadable audio")],
    ids=["amr", "adts", "mp3-empty", "flac-empty"],
)  # fmt: skip
async def test_other_formats_and_undecodable_audio_are_400(
    server: RunningEmulator, session: aiohttp.ClientSession, body: bytes, fragment: str
) -> None:
    """AMR and raw ADTS (not documented) and bodies PyAV cannot decode get 400."""
    answer = await post(session, server.endpoint(), body)
    assert answer.status == 400
    assert fragment in answer.json()["error"]
    assert answer.headers["X-Request-Id"] == answer.json()["request_id"]


async def test_wav_duration_is_exact_at_any_rate(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """WAV durations come from the decoded samples exactly (16 kHz and 44.1 kHz)."""
    for seconds, rate in ((2.0, 16000), (0.25, 44100)):
        doc = (await post(session, server.endpoint(), wav_bytes(seconds, 440, rate))).json()
        assert doc["metadata"]["duration"] == seconds


# --------------------------------------------------------------------------------------------
# The documented limits: mono, the 10-minute session


@pytest.mark.parametrize("kind", ["current", "legacy"])
async def test_stereo_is_refused(
    server: RunningEmulator, session: aiohttp.ClientSession, kind: str
) -> None:
    """A two-channel body gets 400 "Only single channel (mono) audio is supported", in the
    error shape of its endpoint."""
    body = tones_wav([(0.1, 0.5, 440.0)], 0.6, channels=2)
    answer = await post(session, server.endpoint(kind), body)
    assert answer.status == 400
    doc = answer.json()
    if kind == "current":
        assert doc["error"] == "Only single channel (mono) audio is supported"
        assert doc["details"] == {"channels": 2}
        assert doc["request_id"] == answer.headers["X-Request-Id"]
    else:
        assert doc == {
            "errors": "Only single channel (mono) audio is supported",
            "status": "error",
            "message": "Only single channel (mono) audio is supported",
        }


def silent_wav(seconds: float, rate: int = 1000) -> bytes:
    """A long file made cheaply: silence at a low sample rate (11 minutes = 1.3 MB)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(2 * round(seconds * rate)))
    return buffer.getvalue()


async def test_audio_longer_than_the_session_is_refused(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """An 11-minute file is refused (400, the 10-minute session); a 9-minute one is taken; with
    max_audio_minutes=None there is no limit."""
    long = silent_wav(11 * 60)
    answer = await post(session, server.endpoint(), io.BytesIO(long))
    assert answer.status == 400
    assert "10-minute session" in answer.json()["error"]
    legacy = await post(session, server.endpoint("legacy"), io.BytesIO(long))
    assert legacy.status == 400
    assert "10-minute session" in legacy.json()["errors"]
    assert (await post(session, server.endpoint(), io.BytesIO(silent_wav(9 * 60)))).status == 200
    server.config.max_audio_minutes = None
    doc = (await post(session, server.endpoint(), io.BytesIO(long))).json()
    assert doc["metadata"]["duration"] == 660.0


async def test_session_limit_reads_the_decoded_audio_not_the_header(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A WAV whose header claims a short data chunk but streams on (length 0: never patched)
    is measured by decoding."""
    server.config.max_audio_minutes = 0.05  # 3 s
    body = bytearray(wav_bytes(4.0))
    body[40:44] = (0).to_bytes(4, "little")  # data chunk size 0: a streamed WAV
    answer = await post(session, server.endpoint(), bytes(body))
    assert answer.status == 400
    assert "session limit" in answer.json()["error"]


# --------------------------------------------------------------------------------------------
# Errors: paths, key, parameters, bodies


async def test_unknown_path_is_404_with_error_body(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A wrong URL gets 404 with the JSON error body naming the real paths."""
    answer = await post(session, server.url + "/api/v2/nothing", wav_bytes())
    assert answer.status == 404
    assert LEGACY_PATH in answer.json()["error"]
    assert answer.json()["request_id"]


async def test_get_on_an_endpoint_is_405(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """Only POST is served on the endpoint paths."""
    async with session.get(server.endpoint()) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "secret"}, 401),
        ({"Authorization": "Bearer secret"}, 200),
    ],
    ids=["missing", "wrong", "no-bearer", "right"],
)
async def test_key_is_checked_when_set(
    server: RunningEmulator, session: aiohttp.ClientSession, headers: dict[str, str], status: int
) -> None:
    """With a key configured, only "Authorization: Bearer <key>" passes; others get 401, as
    ``{error, request_id, details}`` on the unified path and ``{message}`` on the legacy one."""
    server.config.key = "secret"
    answer = await post(session, server.endpoint(), wav_bytes(), headers=headers)
    assert answer.status == status
    legacy = await post(session, server.endpoint("legacy"), wav_bytes(), headers=headers)
    assert legacy.status == status
    if status == 401:
        assert set(answer.json()) == {"error", "request_id", "details"}
        assert set(legacy.json()) == {"message"}
        assert legacy.headers["X-Request-Id"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({}, "model is required"),
        ({"model": "whisper"}, "unknown model"),
        ({"model": "pulse", "language": "xx"}, "unknown language"),
        ({"model": "pulse", "webhook_url": "https://example.org/hook"}, "pulse-pro"),
        ({"model": "pulse-pro", "webhook_url": "ftp://example.org/hook"}, "http(s) URL"),
        (
            {"model": "pulse-pro", "webhook_url": "https://e.org/h", "webhook_method": "GET"},
            "POST or PUT",
        ),
        (
            {"model": "pulse-pro", "webhook_url": "https://e.org/h", "webhook_extra": "novalue"},
            "key:value",
        ),
        ({"model": "pulse-pro", "webhook_method": "POST"}, "need webhook_url"),
    ],
    ids=[
        "model-missing", "model-unknown", "language", "webhook-on-pulse", "webhook-url",
        "webhook-method", "webhook-extra", "webhook-method-alone",
    ],
)  # fmt: skip
async def test_bad_parameters_are_400(
    server: RunningEmulator, session: aiohttp.ClientSession, params: dict[str, str], fragment: str
) -> None:
    """Each invalid parameter (or combination) is refused with 400 and a readable message."""
    answer = await post(session, server.endpoint(), wav_bytes(), params=params)
    assert answer.status == 400
    assert fragment in answer.json()["error"]
    assert server.stats()["by_content"] == {}, "refused before the body was read"


@pytest.mark.parametrize("name", BOOL_PARAMS)
async def test_boolean_parameters_take_only_true_or_false(
    server: RunningEmulator, session: aiohttp.ClientSession, name: str
) -> None:
    """Each boolean accepts "true"/"false" and refuses anything else (e.g. "yes", "1")."""
    for value, status in (("true", 200), ("false", 200), ("yes", 400), ("1", 400)):
        params = {"model": "pulse", name: value}
        answer = await post(session, server.endpoint(), wav_bytes(), params=params)
        assert answer.status == status, (name, value)


async def test_every_language_and_model_is_accepted(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """All documented languages (groups included) and both models pass validation."""
    for model in MODELS:
        for language in LANGUAGES:
            params = {"model": model, "language": language}
            answer = await post(session, server.endpoint(), wav_bytes(), params=params)
            assert answer.status == 200, (model, language)


async def test_repeated_parameter_is_400_and_unknown_ones_are_ignored(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """model given twice is refused; a parameter the contract does not list is ignored."""
    url = server.endpoint() + "?model=pulse&model=pulse-pro"
    assert (await post(session, url, wav_bytes(), params={})).status == 400
    params = {"model": "pulse", "age_detection": "true"}
    assert (await post(session, server.endpoint(), wav_bytes(), params=params)).status == 200


async def test_pulse_pro_webhook_answers_processing_at_once(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """pulse-pro with webhook_url answers 200 {"status": "processing", "request_id"} at once."""
    server.config.latency_ms = 2000  # the transcript would take this long; the ack does not
    params = {
        "model": "pulse-pro",
        "webhook_url": "https://example.org/hook",
        "webhook_method": "PUT",
        "webhook_extra": "job:7,team:audio",
    }
    answer = await post(session, server.endpoint(), wav_bytes(), params=params)
    assert answer.status == 200
    assert answer.elapsed < 1.5
    doc = answer.json()
    assert doc["status"] == "processing"
    assert set(doc) == {"status", "request_id"}


async def test_empty_and_non_audio_bodies_are_400(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """An empty body and bytes that are no known audio format get 400 ("unreadable audio")."""
    empty = await post(session, server.endpoint(), b"", headers={"Content-Type": "audio/wav"})
    assert empty.status == 400
    assert "empty" in empty.json()["error"]
    junk = await post(session, server.endpoint(), b"hello, not audio" * 10,
                      headers={"Content-Type": "audio/wav"})  # fmt: skip
    assert junk.status == 400
    assert "unreadable audio" in junk.json()["error"]
    broken = await post(session, server.endpoint(), b"RIFF\x00\x00\x00\x00WAVEjunk")
    assert broken.status == 400
    assert "unreadable audio" in broken.json()["error"]


async def test_non_audio_content_type_is_400(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A text/plain body is refused; audio/*, octet-stream and a missing type are accepted."""
    body = wav_bytes()
    refused = await post(session, server.endpoint(), body, headers={"Content-Type": "text/plain"})
    assert refused.status == 400
    assert "Content-Type" in refused.json()["error"]
    for content_type in ("audio/wav", "audio/mpeg", "application/octet-stream"):
        headers = {"Content-Type": content_type}
        assert (await post(session, server.endpoint(), body, headers=headers)).status == 200


# --------------------------------------------------------------------------------------------
# URL input


async def test_url_input_transcribes_from_the_url_string(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """{"url": ...} with model=pulse gets a transcript derived from the URL (nothing fetched)."""
    url = "https://bucket.s3.amazonaws.com/a/b%20c.mp3?X-Amz-Signature=abc&X-Amz-Expires=60"
    answer = await post(session, server.endpoint(), json_body={"url": url})
    assert answer.status == 200
    doc = answer.json()
    assert doc["transcription"] == transcript_for_url(url)
    # Derived from the URL without its signature: a URL signed anew names the same audio.
    bare = url.partition("?")[0]
    assert hashlib.sha256(bare.encode()).hexdigest()[:8] in doc["transcription"]
    assert doc["metadata"]["filename"] == "b c.mp3"
    assert server.stats()["by_content"] == {content_key(url): 1}


async def test_url_of_a_sample_clip_gives_its_sentence(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A URL whose path ends with a sample clip's archive path is answered with its sentence."""
    sample = next(iter(SAMPLES.values()))
    url = "https://media.example.org/archive/" + sample["file"]
    doc = (await post(session, server.endpoint(), json_body={"url": url})).json()
    assert doc["transcription"] == sample["sentence"]
    assert doc["metadata"]["duration"] == sample["duration"]


@pytest.mark.parametrize(
    ("body", "params", "fragment"),
    [
        (b'{"url": "https://example.org/a.wav"}', {"model": "pulse-pro"}, "model=pulse only"),
        (b'{"url": "ftp://example.org/a.wav"}', PULSE, "http(s) URL"),
        (b'{"url": "file:///etc/passwd"}', PULSE, "http(s) URL"),
        (b'{"url": 7}', PULSE, '"url" string'),
        (b'{"link": "https://example.org/a.wav"}', PULSE, '"url" string'),
        (b'{"url": "https://exam', PULSE, "not valid JSON"),
    ],
    ids=["pulse-pro", "ftp", "file", "not-string", "no-url", "bad-json"],
)
async def test_bad_url_requests_are_400(
    server: RunningEmulator,
    session: aiohttp.ClientSession,
    body: bytes,
    params: dict[str, str],
    fragment: str,
) -> None:
    """URL input with pulse-pro, a non-http(s) URL, or a malformed JSON body gets 400."""
    headers = {"Content-Type": "application/json"}
    answer = await post(session, server.endpoint(), body, params=params, headers=headers)
    assert answer.status == 400
    assert fragment in answer.json()["error"]


# --------------------------------------------------------------------------------------------
# The payload limit, streamed


def raw_exchange(port: int, request: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes on a fresh connection and return what comes back until close/timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):  # the server closes after a 413
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("path", "status", "text"),
    [(CURRENT_PATH, 413, b"Audio data too large: payload over"),
     (LEGACY_PATH, 400, b'"errors":"Audio data too large"'),
     ("/waves/v1/pulse/get_text", 400, b'"errors":"Audio data too large"')],
    ids=["unified", "legacy", "legacy-current"],
)  # fmt: skip
@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100"])
async def test_content_length_over_250mb_is_refused_before_the_body(
    server: RunningEmulator, path: str, status: int, text: bytes, expect: bool
) -> None:
    """A declared Content-Length over 250 MB is refused at once, without any body byte sent
    (and instead of 100 Continue): 413 on the unified path, 400 "Audio data too large" on
    the legacy ones."""
    head = (
        f"POST {path}?model=pulse HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
        + ("Expect: 100-continue\r\n" if expect else "")
        + f"Content-Length: {MAX_PAYLOAD + 1}\r\n\r\n"
    ).encode()
    reply = await asyncio.to_thread(raw_exchange, server.port, head)
    assert reply.startswith(f"HTTP/1.1 {status}".encode()), reply[:100]
    assert text in reply
    assert b"X-Request-Id: emu-" in reply
    assert b"100 Continue" not in reply


async def test_chunked_body_over_the_limit_is_refused_while_streaming(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A chunked upload is cut off with 413 once it passes max_payload, without the rest sent."""
    server.config.max_payload = 1_000_000
    sent = 0
    stop = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        head = wav_bytes(0.1)
        yield head
        sent += len(head)
        while sent < 1_500_000:
            yield bytes(100_000)
            sent += 100_000
        await stop.wait()  # never finish: the server must answer without the end of the body

    try:
        answer = await post(session, server.endpoint(), body(), timeout=5)
    finally:
        stop.set()
    assert answer.status in (413, "reset")
    if answer.status == 413:
        assert "Audio data too large" in answer.json()["error"]
    assert server.stats()["statuses"].get("413") == 1
    # the emulator is healthy afterwards
    assert (await post(session, server.endpoint(), wav_bytes())).status == 200


async def test_large_chunked_wav_is_streamed_and_measured(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A chunked WAV larger than the sniffing buffer is hashed whole and timed exactly."""
    body = wav_bytes(40.0, 300, 16000)  # 1.28 MB: more than the 1 MiB kept in memory

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64_000):
            yield body[start : start + 64_000]

    answer = await post(session, server.endpoint(), chunks())
    assert answer.status == 200
    doc = answer.json()
    assert doc["metadata"]["duration"] == 40.0
    assert doc["metadata"]["fileSize"] == len(body)
    assert doc["transcription"] == transcript_for(body)


# --------------------------------------------------------------------------------------------
# Faults


async def test_fault_429_rotates_through_every_delay_header(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """Successive fault 429s for one content use each delay header form, all asking ~the delay."""
    server.config.faults = FaultRates(p429=1.0)
    server.config.retry_delay_s = 2.0
    body = wav_bytes()
    seen = set()
    for _ in DELAY_HEADER_KINDS:
        answer = await post(session, server.endpoint(), body)
        assert answer.status == 429
        assert set(answer.json()) == {"error", "request_id"}
        names = {k.lower() for k in answer.headers} & {
            "retry-after", "retry-after-ms", "x-ratelimit-reset"
        }  # fmt: skip
        assert len(names) == 1
        (name,) = names
        value = answer.headers[next(k for k in answer.headers if k.lower() == name)]
        form = name
        if name == "retry-after" and not value.isdigit():
            form = "retry-after-date"
        if name == "x-ratelimit-reset" and int(value) > 1e9:
            form = "x-ratelimit-reset-epoch"
        seen.add(form)
        delay = server_delay(answer.headers, now=time.time())
        assert delay is not None
        assert 1.9 <= delay <= 3.1
    assert seen == set(DELAY_HEADER_KINDS)


async def test_fault_5xx_gives_500_502_503(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """p5xx=1 answers 500 (JSON), 502 (an HTML page) and 503 (empty, or with Retry-After)."""
    server.config.faults = FaultRates(p5xx=1.0)
    statuses = {}
    for body in distinct_wavs(30):
        answer = await post(session, server.endpoint(), body)
        statuses.setdefault(answer.status, []).append(answer)
    assert set(statuses) == {500, 502, 503}
    assert all(a.json()["error"] for a in statuses[500])
    assert all(a.body.startswith(b"<html>") for a in statuses[502])
    with_delay = [a for a in statuses[503] if "Retry-After" in a.headers]
    assert all(a.body == b"" for a in statuses[503] if a not in with_delay)
    assert with_delay
    assert all(a.headers["Retry-After"] == "1" for a in with_delay)
    assert server.stats()["server_errors"] == 30


async def test_fault_reset_drops_the_connection(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """preset=1 closes the connection with no response; stats count resets, not statuses."""
    server.config.faults = FaultRates(preset=1.0)
    answers = [await post(session, server.endpoint(), body) for body in distinct_wavs(3)]
    assert [a.status for a in answers] == ["reset"] * 3
    stats = server.stats()
    assert stats["resets"] == 3
    assert stats["statuses"] == {}


async def test_fault_truncate_cuts_the_200_body(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """ptruncate=1 gives both forms: a body short of its Content-Length, and half a JSON."""
    server.config.faults = FaultRates(ptruncate=1.0)
    answers = [await post(session, server.endpoint(), body) for body in distinct_wavs(12)]
    assert {a.outcome for a in answers} == {"truncated"}
    assert {a.status for a in answers} == {200, "truncated"}, "both forms occur"
    assert server.stats()["truncations"] == 12


async def test_fault_stall_hangs_then_answers(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """pstall=1 hangs stall_seconds and then answers normally."""
    server.config.faults = FaultRates(pstall=1.0)
    server.config.stall_seconds = 0.3
    answer = await post(session, server.endpoint(), wav_bytes())
    assert answer.status == 200
    assert answer.elapsed >= 0.3
    assert server.stats()["stalls"] == 1


async def test_stalled_request_abandoned_by_the_client_leaves_flight(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A client timing out on a stall is no longer counted in flight (the handler is cancelled)."""
    server.config.faults = FaultRates(pstall=1.0)
    answer_task = asyncio.create_task(post(session, server.endpoint(), wav_bytes(), timeout=0.2))
    with pytest.raises(asyncio.TimeoutError):
        await answer_task
    for _ in range(50):
        if server.stats()["in_flight"] == 0:
            break
        await asyncio.sleep(0.02)
    stats = server.stats()
    assert stats["in_flight"] == 0
    assert stats["cancelled"] == 1


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_fault_profiles_are_deterministic_by_seed(
    session: aiohttp.ClientSession, profile: str
) -> None:
    """A profile gives the same outcome per content for the same seed, whatever the order."""
    bodies = distinct_wavs(60)
    results = []
    for seed, order in ((1, bodies), (1, bodies[::-1]), (2, bodies)):
        config = EmulatorConfig(faults=PROFILES[profile], seed=seed, stall_seconds=0.05)
        running = await start_emulator(config)
        try:
            results.append(await outcomes(session, running.endpoint(), order))
        finally:
            await running.close()
    first, reordered, other_seed = results
    assert first == reordered
    kinds = set(first.values())
    if profile == "none":
        assert kinds == {"200"}
        assert other_seed == first
    else:
        assert kinds - {"200"}, "the profile injects faults"
        assert other_seed != first, "another seed gives another sequence"
    allowed = {
        "none": {"200"},
        "rate-limited": {"200", "429"},
        "outage": {"200", "500", "502", "503", "reset"},
    }.get(profile)
    if allowed is not None:
        assert kinds <= allowed


async def test_the_nth_retry_of_a_content_has_its_own_fate(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """Repeating one content walks a seeded sequence (so retries eventually pass), reproducibly."""
    server.config.faults = FaultRates(p5xx=0.5)
    body = wav_bytes()
    first = [(await post(session, server.endpoint(), body)).status for _ in range(12)]
    server.reset_stats()
    again = [(await post(session, server.endpoint(), body)).status for _ in range(12)]
    assert first == again
    assert 200 in first
    assert set(first) - {200}


async def test_latency_and_jitter_delay_answers(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """latency_ms +/- jitter_ms is added before answering."""
    server.config.latency_ms = 150
    server.config.jitter_ms = 50
    answers = await asyncio.gather(
        *(post(session, server.endpoint(), body) for body in distinct_wavs(6))
    )
    assert all(a.status == 200 for a in answers)
    assert all(a.elapsed >= 0.095 for a in answers)
    assert max(a.elapsed for a in answers) < 2.0


# --------------------------------------------------------------------------------------------
# Rate limit, concurrency cap, early retries


async def test_rate_limit_refuses_beyond_the_bucket_with_the_time_to_the_next_token(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """rate_limit R: past the burst, 429 with retry-after-ms = time to the next token."""
    server.config.rate_limit = 1  # burst max(1, 1/10) = 1; the next token is 1 s away
    bodies = distinct_wavs(5)
    answers = await asyncio.gather(*(post(session, server.endpoint(), b) for b in bodies))
    statuses = sorted(a.status for a in answers)
    assert statuses == [200, 429, 429, 429, 429]
    for answer in answers:
        if answer.status == 429:
            assert 1 <= int(answer.headers["retry-after-ms"]) <= 1000
            assert "Retry-After" not in answer.headers
    stats = server.stats()
    assert stats["rate_limited_by"]["rate_limit"] == 4
    assert sum(stats["requests_per_second"]) == 5


async def test_rate_limit_burst_is_configurable_and_refills(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """rate_burst sets the bucket size; after the asked delay a request is admitted again."""
    server.config.rate_limit = 2
    server.config.rate_burst = 3
    bodies = distinct_wavs(4)
    answers = [await post(session, server.endpoint(), b) for b in bodies]
    assert [a.status for a in answers] == [200, 200, 200, 429]
    await asyncio.sleep(int(answers[-1].headers["retry-after-ms"]) / 1000 + 0.01)
    assert (await post(session, server.endpoint(), bodies[-1])).status == 200
    assert server.stats()["early_retries"] == 0


async def test_concurrency_cap_refuses_beyond_c_in_flight(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """max_concurrent C: past C in flight, extra requests get 429 with a small retry-after-ms."""
    server.config.max_concurrent = 2
    server.config.latency_ms = 500
    answers = await asyncio.gather(
        *(post(session, server.endpoint(), body) for body in distinct_wavs(5))
    )
    statuses = sorted(a.status for a in answers)
    assert statuses == [200, 200, 429, 429, 429]
    assert all(a.headers["retry-after-ms"] == "50" for a in answers if a.status == 429)
    stats = server.stats()
    assert 3 <= stats["max_in_flight"] <= 5  # refused requests leave at once
    assert stats["rate_limited_by"]["concurrency"] == 3


async def test_early_retry_is_detected_and_exampled(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A request for content that was told to wait, arriving before the delay, is an early retry."""
    server.config.faults = FaultRates(p429=1.0)
    server.config.retry_delay_s = 5.0
    body = wav_bytes()
    assert (await post(session, server.endpoint(), body)).status == 429
    await post(session, server.endpoint(), body)  # at once: early
    await post(session, server.endpoint(), wav_bytes(0.5, 880))  # other content: not early
    stats = server.stats()
    assert stats["early_retries"] == 1
    (example,) = stats["early_retry_examples"]
    assert example["content"] == content_key(body)
    assert example["asked_s"] >= 5.0
    assert example["early_by_s"] > 4.5


async def test_retry_after_the_asked_delay_is_not_early(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A client that waits what retry-after-ms asked is not counted as early."""
    server.config.max_concurrent = 1
    server.config.latency_ms = 400
    server.config.busy_retry_ms = 120
    first, second = distinct_wavs(2)
    answers = await asyncio.gather(
        post(session, server.endpoint(), first), post(session, server.endpoint(), second)
    )
    refused = next(a for a, b in zip(answers, (first, second), strict=True) if a.status == 429)
    await asyncio.sleep(int(refused.headers["retry-after-ms"]) / 1000)
    assert (await post(session, server.endpoint(), second)).status == 200
    assert server.stats()["early_retries"] == 0


# --------------------------------------------------------------------------------------------
# Stats, reset, live configuration


async def test_stats_endpoint_matches_stats_and_counts_per_content(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """GET /_emulator/stats equals .stats(): totals, statuses, per-content counts, per second."""
    one, two = distinct_wavs(2)
    for body in (one, two, two):
        await post(session, server.endpoint(), body)
    await post(session, server.endpoint(), one, params={})  # 400: not counted per content
    async with session.get(server.url + "/_emulator/stats") as response:
        served = await response.json()
    local = server.stats()
    served.pop("uptime_s"), local.pop("uptime_s")
    assert served == local
    assert local["requests"] == 4
    assert local["statuses"] == {"200": 3, "400": 1}
    assert local["by_content"] == {content_key(one): 1, content_key(two): 2}
    assert sum(local["requests_per_second"]) == 4
    assert local["in_flight"] == 0
    assert local["max_in_flight"] >= 1


async def test_requests_per_second_is_a_timeline_by_whole_second(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """requests_per_second[i] counts the requests that arrived in second i since start/reset."""
    server.reset_stats()
    await post(session, server.endpoint(), wav_bytes())
    await asyncio.sleep(1.05)
    await post(session, server.endpoint(), wav_bytes())
    await post(session, server.endpoint(), wav_bytes(0.5, 300))
    timeline = server.stats()["requests_per_second"]
    assert sum(timeline) == 3
    assert timeline[0] == 1
    assert timeline[-1] >= 1


async def test_reset_endpoint_clears_the_stats(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """POST /_emulator/reset starts the counters afresh."""
    await post(session, server.endpoint(), wav_bytes())
    async with session.post(server.url + "/_emulator/reset") as response:
        assert response.status == 200
    stats = server.stats()
    assert stats["requests"] == 0
    assert stats["by_content"] == {}
    assert stats["statuses"] == {}


async def test_reset_while_requests_are_in_flight_keeps_counts_consistent(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """Requests in flight across a reset finish into the new counters; in_flight returns to 0."""
    server.config.latency_ms = 200
    pending = [asyncio.create_task(post(session, server.endpoint(), b)) for b in distinct_wavs(2)]
    for _ in range(50):
        if server.stats()["in_flight"] == 2:
            break
        await asyncio.sleep(0.01)
    server.reset_stats()
    assert server.stats()["in_flight"] == 2
    assert [a.status for a in await asyncio.gather(*pending)] == [200, 200]
    stats = server.stats()
    assert stats["in_flight"] == 0
    assert stats["statuses"] == {"200": 2}
    assert stats["requests"] == 0


async def test_config_changes_take_effect_mid_run(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """Changing .config (or replacing it) while running applies to the next request."""
    body = wav_bytes()
    assert (await post(session, server.endpoint(), body)).status == 200
    server.config = EmulatorConfig(faults=FaultRates(p5xx=1.0))
    assert (await post(session, server.endpoint(), body)).status in (500, 502, 503)
    server.config.faults = FaultRates()
    server.config.key = "k"
    assert (await post(session, server.endpoint(), body)).status == 401


async def test_stop_and_start_listening_keeps_the_port(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """stop_listening makes the service unreachable; start_listening serves the same URL again."""
    assert (await post(session, server.endpoint(), wav_bytes())).status == 200
    await server.stop_listening()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.post(server.endpoint(), params=PULSE, data=wav_bytes()):
            pass
    await server.start_listening()
    assert (await post(session, server.endpoint(), wav_bytes())).status == 200


# --------------------------------------------------------------------------------------------
# Plans: the Standard plan's 25 requests per minute per model


def test_sliding_window_admits_n_per_window_per_key() -> None:
    """The window admits 25 starts in any 60 s per key, tells the wait until the oldest
    leaves, counts keys apart, ignores refused requests, and follows a limit lowered mid-run."""
    window = SlidingWindow()
    assert all(window.admit("pulse", i * 0.1, 25, 60) == 0 for i in range(25))
    assert window.admit("pulse", 2.5, 25, 60) == pytest.approx(57.5)
    assert window.admit("pulse-pro", 2.5, 25, 60) == 0  # per model
    assert window.admit("pulse", 59.99, 25, 60) == pytest.approx(0.01)  # refusals do not count
    assert window.admit("pulse", 60.0, 25, 60) == 0  # the first start left the window
    # The limit drops to 12: a slot frees when all but 11 of the 25 in the window have left
    # (the 14th oldest, started at 1.4 s, leaves at 61.4 s).
    assert window.admit("pulse", 60.05, 12, 60) == pytest.approx(61.4 - 60.05)


def test_token_bucket_admits_a_burst_then_the_refill_rate() -> None:
    """The bucket admits its burst, then one request per 60/25 = 2.4 s, per key."""
    buckets = TokenBuckets()
    rate = 25 / 60
    assert [buckets.admit("pulse", 0.0, rate, 5) for _ in range(5)] == [0.0] * 5
    assert buckets.admit("pulse", 0.0, rate, 5) == pytest.approx(2.4)
    assert buckets.admit("pulse-pro", 0.0, rate, 5) == 0.0
    assert buckets.admit("pulse", 2.4, rate, 5) == 0.0
    assert buckets.admit("pulse", 2.5, rate, 5) == pytest.approx(2.3)


def test_plans_and_their_defaults() -> None:
    """standard: 25/min per model and no delay header unless asked; unlimited (the default):
    no limit; the CLI's --emulate-plan offers exactly these plans."""
    from batchscribe.cli import EMULATOR_PLANS

    assert set(EMULATOR_PLANS) == set(PLANS)
    assert EmulatorConfig().requests_per_minute() is None
    standard = EmulatorConfig.for_plan("standard")
    assert (standard.requests_per_minute(), standard.rate_headers) == (25.0, False)
    assert EmulatorConfig.for_plan("standard", rate_headers=True).rate_headers
    assert EmulatorConfig.for_plan("standard", plan_rpm=12).requests_per_minute() == 12
    with pytest.raises(ValueError, match="unknown plan"):
        EmulatorConfig(plan="gold")


async def gather_posts(
    session: aiohttp.ClientSession, url: str, bodies: list[bytes], params: dict[str, str]
) -> list[Answer]:
    return list(await asyncio.gather(*(post(session, url, b, params=params) for b in bodies)))


async def test_standard_plan_refuses_the_26th_request_of_a_minute_per_model(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """Standard plan: 25 requests of a model are admitted, the 26th gets 429 with the documented
    body and no delay header; the other model has its own 25."""
    server.config = EmulatorConfig.for_plan("standard", plan_window_s=30)
    bodies = distinct_wavs(27)
    answers = await gather_posts(session, server.endpoint(), bodies[:25], PULSE)
    assert [a.status for a in answers] == [200] * 25
    refused = await post(session, server.endpoint("legacy"), bodies[25])
    assert refused.status == 429
    assert refused.json() == {
        "error": RATE_LIMIT_MESSAGE, "request_id": refused.headers["X-Request-Id"]
    }  # fmt: skip
    delay_headers = {"retry-after", "retry-after-ms", "x-ratelimit-reset"}
    assert not delay_headers & {k.lower() for k in refused.headers}
    pro = await post(session, server.endpoint(), bodies[26], params={"model": "pulse-pro"})
    assert pro.status == 200
    assert server.stats()["rate_limited_by"]["plan"] == 1


async def test_standard_plan_sends_delay_headers_when_asked_and_readmits_after_the_window(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """With rate_headers, the plan's 429 says when a slot frees (Retry-After and
    retry-after-ms); a retry after that delay is admitted and is not early."""
    server.config = EmulatorConfig.for_plan("standard", plan_window_s=1.0, rate_headers=True)
    bodies = distinct_wavs(26)
    await gather_posts(session, server.endpoint(), bodies[:25], PULSE)
    refused = await post(session, server.endpoint(), bodies[25])
    assert refused.status == 429
    wait_ms = int(refused.headers["retry-after-ms"])
    assert 0 < wait_ms <= 1000
    assert refused.headers["Retry-After"] == "1"
    await asyncio.sleep(wait_ms / 1000 + 0.02)
    assert (await post(session, server.endpoint(), bodies[25])).status == 200
    assert server.stats()["early_retries"] == 0


async def test_plan_as_a_token_bucket(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """plan_algorithm="bucket": a burst of 25/5 = 5 is admitted, then 429 (per model)."""
    server.config = EmulatorConfig.for_plan("standard", plan_algorithm="bucket")
    answers = [await post(session, server.endpoint(), b) for b in distinct_wavs(6)]
    assert [a.status for a in answers] == [200] * 5 + [429]


async def test_rate_limit_without_rate_headers_sends_no_delay(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """rate_headers=False: the rate_limit bucket's 429s carry no delay header either."""
    server.config.rate_limit = 1
    server.config.rate_headers = False
    answers = [await post(session, server.endpoint(), b) for b in distinct_wavs(2)]
    assert [a.status for a in answers] == [200, 429]
    names = {k.lower() for k in answers[1].headers}
    assert not names & {"retry-after", "retry-after-ms", "x-ratelimit-reset"}


# --------------------------------------------------------------------------------------------
# Request ids and the unified path's requirements


async def test_every_answer_carries_an_x_request_id(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """200, 400, 401, 404, 429 and 503 answers all carry an x-request-id header."""
    seen = [await post(session, server.endpoint(), wav_bytes())]
    seen.append(await post(session, server.endpoint(), wav_bytes(), params={}))  # no model
    seen.append(await post(session, server.url + "/nothing", wav_bytes()))
    server.config.faults = FaultRates(p5xx=1.0)
    seen += [await post(session, server.endpoint(), body) for body in distinct_wavs(6)]
    server.config.faults = FaultRates()
    server.config.rate_limit = 0.001
    seen += [await post(session, server.endpoint(), body) for body in distinct_wavs(2, 0.3)]
    server.config.key = "k"
    seen.append(await post(session, server.endpoint("legacy"), wav_bytes()))
    statuses = {a.status for a in seen}
    assert {200, 400, 401, 404, 429, 503} <= statuses
    ids = [a.headers["X-Request-Id"] for a in seen]
    assert len(set(ids)) == len(ids)


async def test_model_is_required_on_the_unified_path_only(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """Without model the unified path answers 400 {error, request_id, details}; the legacy
    path takes pulse."""
    unified = await post(session, server.endpoint(), wav_bytes(), params={})
    assert unified.status == 400
    assert set(unified.json()) == {"error", "request_id", "details"}
    assert "model is required" in unified.json()["error"]
    legacy = await post(session, server.endpoint("legacy"), wav_bytes(), params={})
    assert legacy.status == 200
    assert "request_id" not in legacy.json()  # a Pulse answer


async def test_legacy_400_has_the_legacy_shape(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A bad parameter on a legacy path is 400 {errors, status: "error", message}."""
    params = {"model": "pulse", "language": "xx"}
    answer = await post(session, server.endpoint("legacy-current"), wav_bytes(), params=params)
    assert answer.status == 400
    doc = answer.json()
    assert doc["status"] == "error"
    assert "unknown language" in doc["errors"] == doc["message"]


# --------------------------------------------------------------------------------------------
# Thread, CLI flags, serve_forever


def test_emulator_thread_serves_blocking_clients(tmp_path: Path) -> None:
    """EmulatorThread runs in the background: plain blocking HTTP works, stats are readable."""
    import urllib.error
    import urllib.request

    wav = make_wav(tmp_path / "a" / "clip.wav", seconds=0.2)
    with EmulatorThread(EmulatorConfig(key="k")) as thread:
        request = urllib.request.Request(
            thread.endpoint("current") + "?model=pulse",
            data=wav.read_bytes(),
            headers={"Authorization": "Bearer k", "Content-Type": "audio/wav"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            doc = json.loads(response.read())
        assert doc["transcription"] == transcript_for(wav.read_bytes())
        assert thread.stats()["by_content"] == {content_key(wav.read_bytes()): 1}
        thread.config.key = None
        thread.stop_listening()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(request, timeout=2)
        thread.start_listening()
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        thread.reset_stats()
        assert thread.stats()["requests"] == 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_flags_build_the_config() -> None:
    """`batchscribe emulate` flags: profile first, then per-fault overrides, latency MS:JITTER."""
    config = config_from_args(
        parse(["--faults", "flaky", "--p429", "0.3", "--latency", "200:50", "--key", "k",
               "--seed", "7", "--rate-limit", "12.5", "--max-concurrent", "4"])
    )  # fmt: skip
    assert config.faults == FaultRates(p429=0.3, p5xx=0.05, preset=0.02, ptruncate=0.02)
    assert (config.latency_ms, config.jitter_ms) == (200, 50)
    assert (config.key, config.seed, config.rate_limit, config.max_concurrent) == (
        "k", 7, 12.5, 4
    )  # fmt: skip
    defaults = parse([])
    assert (defaults.host, defaults.port) == ("127.0.0.1", 8787)
    assert config_from_args(defaults) == EmulatorConfig()
    standard = config_from_args(parse(["--plan", "standard"]))
    assert (standard.plan, standard.rate_headers, standard.max_audio_minutes) == (
        "standard", False, 10.0
    )  # fmt: skip
    asked = config_from_args(
        parse(["--plan", "standard", "--rate-headers", "--plan-rpm", "12",
               "--plan-algorithm", "bucket", "--max-audio-minutes", "30"])
    )  # fmt: skip
    assert (asked.rate_headers, asked.requests_per_minute(), asked.plan_algorithm) == (
        True, 12, "bucket"
    )  # fmt: skip
    assert asked.max_audio_minutes == 30
    assert not config_from_args(parse(["--no-rate-headers"])).rate_headers
    speeds = [config_from_args(parse(["--link-speed", v])).link_bytes_per_s
              for v in ("8M", "8MB", "500k", "8000000", "1.5G")]  # fmt: skip
    assert speeds == [8e6, 8e6, 5e5, 8e6, 1.5e9]


@pytest.mark.parametrize(
    "argv",
    [
        ["--p429", "1.5"],
        ["--latency", "fast"],
        ["--faults", "nope"],
        ["--max-concurrent", "0"],
        ["--plan", "gold"],
        ["--plan-rpm", "0"],
        ["--max-audio-minutes", "-1"],
        ["--link-speed", "0"],
        ["--link-speed", "fast"],
        ["--link-speed", "nan"],
    ],
)
def test_cli_flags_refuse_bad_values(argv: list[str]) -> None:
    """Out-of-range rates, bad latency, unknown profiles and zero limits are usage errors."""
    with pytest.raises(SystemExit):
        parse(argv)


def test_fault_rates_must_add_up_to_at_most_one() -> None:
    """Rates summing over 1 are refused with a message saying so."""
    with pytest.raises(ValueError, match="add up"):
        config_from_args(parse(["--faults", "hostile", "--p5xx", "0.9"]))


async def test_serve_forever_reports_its_url_and_stops_when_cancelled() -> None:
    """serve_forever calls on_ready with the URL, serves, and frees the port when cancelled."""
    ready: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(
        serve_forever(EmulatorConfig(), "127.0.0.1", 0, on_ready=ready.put_nowait)
    )
    url = await asyncio.wait_for(ready.get(), 5)
    async with aiohttp.ClientSession() as client:
        assert (await post(client, url + LEGACY_PATH, wav_bytes())).status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --------------------------------------------------------------------------------------------
# The audio fixtures other tests use


def test_audio_fixtures_make_valid_distinct_wavs(tmp_path: Path) -> None:
    """wav_bytes/make_wav produce readable WAVs of the asked length; freq changes the content."""
    data = wav_bytes(0.5, 440, 8000)
    with wave.open(io.BytesIO(data)) as clip:
        assert (clip.getnframes(), clip.getframerate(), clip.getnchannels()) == (4000, 8000, 1)
    assert wav_bytes(0.5, 441, 8000) != data
    path = make_wav(tmp_path / "x" / "y.wav", seconds=0.25, rate=16000)
    assert path.read_bytes() == wav_bytes(0.25, 440, 16000)


# --------------------------------------------------------------------------------------------
# The upload link


def test_link_books_bytes_one_after_another_for_every_connection() -> None:
    """The link is shared: two bodies arriving together cross one after the other (the second
    waits for the first), an idle link gives no burst credit, and the speed may change."""
    link = Link()
    assert link.take(1000, 10.0, 1000.0) == pytest.approx(1.0)  # crosses 10.0 -> 11.0
    assert link.take(500, 10.0, 1000.0) == pytest.approx(1.5)  # behind it: 11.0 -> 11.5
    assert link.take(100, 20.0, 1000.0) == pytest.approx(0.1)  # idle since 11.5: no credit
    assert link.take(100, 20.0, 100.0) == pytest.approx(1.1)  # a slower link from now on


def silence_wav(size: int, rate: int = 16000) -> bytes:
    """A 16-bit mono WAV of silence of about ``size`` bytes (cheap to make at any size)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(size - size % 2))
    return buffer.getvalue()


async def test_link_speed_holds_the_total_over_all_connections(
    server: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """With link_bytes_per_s, bodies sent at once over four connections take at least their
    total / the speed (the link is shared, not per connection), the stats count every body
    byte and the seconds bodies waited; without it the same bytes are counted and never wait."""
    bodies = [silence_wav(600_000 + n * 2) for n in range(3)] + [silence_wav(1_200_000)]
    total = sum(map(len, bodies))
    answers = await asyncio.gather(
        *(post(session, server.endpoint(), io.BytesIO(b)) for b in bodies)
    )
    assert [a.status for a in answers] == [200] * 4
    fast = server.stats()
    assert (fast["body_bytes"], fast["link_wait_s"]) == (total, 0)
    server.reset_stats()
    speed = 4_000_000.0
    server.config.link_bytes_per_s = speed
    started = time.monotonic()
    answers = await asyncio.gather(
        *(post(session, server.endpoint(), io.BytesIO(b[:-2] + b"\1\0")) for b in bodies)
    )
    elapsed = time.monotonic() - started
    assert [a.status for a in answers] == [200] * 4
    floor = total / speed  # 0.75 s (one body streamed past the in-memory head)
    assert floor * 0.97 <= elapsed < floor * 4 + 2  # never faster; slower only by overheads
    stats = server.stats()
    assert stats["body_bytes"] == total
    # each body waited for its own bytes and those booked before it: at least the floor
    assert stats["link_wait_s"] >= floor * 0.97
