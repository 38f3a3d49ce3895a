"""Stitching chunk answers into one: exact offsets, overlaps kept once, utterances cut at the
keep boundary, speakers kept apart per chunk and channel, channels interleaved; and a real
recording cut at silences by split, each chunk transcribed by the emulator, stitched back."""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscribe.audio.levels import hop_levels, hop_samples
from batchscribe.audio.split import keep_windows, plan_cuts
from batchscribe.audio.stitch import Part, stitch
from batchscribe.emulator import EmulatorConfig
from batchscribe.emulator.server import RunningEmulator, start_emulator

RATE = 16000


def _word(text: str, start: float, end: float, **extra: Any) -> dict[str, Any]:
    return {"word": text, "start": start, "end": end, "confidence": 0.9, **extra}


def _answer(words: list[dict[str, Any]], per_utterance: int = 3) -> dict[str, Any]:
    """A Pulse answer for these words: utterances of consecutive words, speaker = utterance % 2."""
    utterances = []
    for n, at in enumerate(range(0, len(words), per_utterance)):
        group = words[at : at + per_utterance]
        for w in group:
            w["speaker"] = n % 2
        utterances.append({
            "start": group[0]["start"], "end": group[-1]["end"], "speaker": n % 2,
            "text": " ".join(w["word"] for w in group),
        })  # fmt: skip
    return {
        "status": "success",
        "transcription": " ".join(w["word"] for w in words),
        "words": words,
        "utterances": utterances,
        "metadata": {"duration": 1.0, "fileSize": 100},
    }


def test_offsets_shift_words_and_utterances() -> None:
    """Each chunk's times move by its exact offset; the duration is the file's, not a sum."""
    first = _answer([_word("a", 0.5, 0.9), _word("b", 1.0, 1.4)])
    second = _answer([_word("c", 0.25, 0.5)])
    offset = 96001 / RATE  # 6.0000625 s: a chunk starting at sample 96001
    out = stitch(
        [Part(offset, None, None, None, second), Part(0.0, None, None, None, first)], duration=9.5
    )
    assert [(w["word"], w["start"], w["end"]) for w in out["words"]] == [
        ("a", 0.5, 0.9), ("b", 1.0, 1.4), ("c", 6.250063, 6.500063),
    ]  # fmt: skip
    assert out["transcription"] == "a b c"
    assert [u["text"] for u in out["utterances"]] == ["a b", "c"]
    assert out["utterances"][1]["start"] == 6.250063
    assert out["duration"] == 9.5 and out["metadata"]["duration"] == 9.5
    assert out["metadata"]["fileSize"] == 200
    assert "prepared" not in out


def test_overlap_words_kept_once_and_utterance_cut() -> None:
    """Words heard by two overlapping chunks are kept by one (by midpoint); an utterance that
    crosses the keep boundary shrinks to its kept words."""
    # chunk 0: 0..10 s; chunk 1 starts at 8 s; the overlap 8..10 is split at 9 s.
    first = _answer([_word("x", 7.0, 7.5), _word("y", 8.6, 8.9), _word("z", 9.2, 9.6)])
    second = _answer([_word("y", 0.6, 0.9), _word("z", 1.2, 1.6), _word("w", 2.0, 2.4)])
    out = stitch(
        [Part(0.0, None, 9.0, None, first), Part(8.0, 9.0, None, None, second)], duration=12.0
    )
    assert [(w["word"], w["start"]) for w in out["words"]] == [
        ("x", 7.0), ("y", 8.6), ("z", 9.2), ("w", 10.0),
    ]  # fmt: skip
    assert out["transcription"] == "x y z w"
    assert [(u["text"], u["start"], u["end"]) for u in out["utterances"]] == [
        ("x y", 7.0, 8.9),
        ("z w", 9.2, 10.4),
    ]


def test_speakers_are_kept_apart_per_chunk() -> None:
    """Speaker 0 of two chunks become two numbers; `speakers` says where each came from."""
    first = _answer([_word("a", 0.1, 0.2), _word("b", 0.3, 0.4)], per_utterance=1)
    second = _answer([_word("c", 0.1, 0.2), _word("d", 0.3, 0.4)], per_utterance=1)
    out = stitch(
        [Part(0.0, None, None, None, first), Part(5.0, None, None, None, second)], duration=6.0
    )
    assert [w["speaker"] for w in out["words"]] == [0, 1, 2, 3]
    assert [u["speaker"] for u in out["utterances"]] == [0, 1, 2, 3]
    assert out["speakers"] == [
        {"speaker": 0, "chunk": 0, "chunk_speaker": 0},
        {"speaker": 1, "chunk": 0, "chunk_speaker": 1},
        {"speaker": 2, "chunk": 1, "chunk_speaker": 0},
        {"speaker": 3, "chunk": 1, "chunk_speaker": 1},
    ]
    alone = stitch([Part(0.0, None, None, None, first)], duration=1.0)
    assert [w["speaker"] for w in alone["words"]] == [0, 1] and "speakers" not in alone


def test_channels_interleave_by_time() -> None:
    """Split channels: every word and utterance says its channel, and they interleave by time."""
    left = _answer([_word("hello", 0.1, 0.5), _word("fine", 2.0, 2.4)], per_utterance=1)
    right = _answer([_word("hi", 1.0, 1.3)], per_utterance=1)
    out = stitch([Part(0.0, None, None, 1, right), Part(0.0, None, None, 0, left)], duration=3.0)
    assert [(w["word"], w["channel"]) for w in out["words"]] == [
        ("hello", 0), ("hi", 1), ("fine", 0),
    ]  # fmt: skip
    assert [(u["text"], u["channel"]) for u in out["utterances"]] == [
        ("hello", 0), ("hi", 1), ("fine", 0),
    ]  # fmt: skip
    assert out["transcription"] == "hello hi fine"
    # channel 0's speakers are numbered before channel 1's: no number is shared
    assert [(s["channel"], s["chunk_speaker"]) for s in out["speakers"]] == [(0, 0), (0, 1), (1, 0)]
    assert [w["speaker"] for w in out["words"]] == [0, 2, 1]


def test_untimed_answers_join_transcriptions() -> None:
    """Without word timestamps the chunks' transcriptions are joined in time order."""
    parts = [
        Part(30.0, None, None, None, {"transcription": "second part.", "words": [],
                                      "utterances": []}),
        Part(0.0, None, None, None, {"transcription": " first part. ", "words": [],
                                     "utterances": []}),
        Part(60.0, None, None, None, {"transcription": "", "words": [], "utterances": []}),
    ]  # fmt: skip
    out = stitch(parts, duration=70.0)
    assert out["transcription"] == "first part. second part."
    assert out["words"] == [] and out["utterances"] == []


def test_pulse_pro_answers_stay_pulse_pro_shaped() -> None:
    """No utterances in, none out; additive metadata summed, rtfx recomputed, ids from the first."""

    def pro(request_id: str, words: list[dict[str, Any]], took: int) -> dict[str, Any]:
        return {
            "status": "success", "transcription": " ".join(w["word"] for w in words),
            "words": words, "language": "en", "request_id": request_id, "totalBytes": 1000,
            "metadata": {"duration": 600.0, "fileSize": 1000, "processing_time_ms": took,
                         "rtfx": 250.0, "num_chunks": 20},
        }  # fmt: skip

    out = stitch(
        [
            Part(0.0, None, None, None, pro("r1", [_word("one", 1.0, 1.2)], 2000)),
            Part(600.0, None, None, None, pro("r2", [_word("two", 1.0, 1.2)], 2000)),
        ],
        duration=1200.0,
    )
    assert "utterances" not in out and "speakers" not in out
    assert out["request_id"] == "r1" and out["language"] == "en"
    assert out["totalBytes"] == 2000
    meta = out["metadata"]
    assert meta["fileSize"] == 2000 and meta["num_chunks"] == 40
    assert meta["processing_time_ms"] == 4000 and meta["rtfx"] == 300.0
    assert meta["duration"] == 1200.0


def test_untimed_entries_and_no_parts() -> None:
    """Words without numeric times are left out (no place in time); no parts is an error."""
    answer = {"transcription": "a b", "words": [_word("a", 0.1, 0.2), _word("b", "x", None)]}
    out = stitch([Part(1.0, None, None, None, answer)], duration=2.0)
    assert [w["word"] for w in out["words"]] == ["a"] and out["transcription"] == "a"
    with pytest.raises(ValueError, match="at least one part"):
        stitch([], duration=1.0)


# --------------------------------------------------------------------------------------------
# Hypothesis: random chunkings of a timeline of words


@st.composite
def _timelines(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
    """Words as (start, end) samples, and chunks as (start, end, overlap_before) samples."""
    words, at = [], draw(st.integers(0, RATE))
    for _ in range(draw(st.integers(0, 40))):
        length = draw(st.integers(RATE // 50, RATE * 2 // 5))  # 20-400 ms
        words.append((at, at + length))
        at += length + draw(st.integers(0, RATE // 2))
    total = at + draw(st.integers(0, RATE))
    chunks, start, overlap = [], 0, 0
    while True:
        seam = start + overlap + draw(st.integers(RATE, 8 * RATE))
        if seam >= total:
            chunks.append((start, total, overlap))
            return words, chunks
        straddled = any(a < seam < b for a, b in words)
        if not straddled and draw(st.booleans()):  # a silent cut: no overlap
            chunks.append((start, seam, overlap))
            start, overlap = seam, 0
        else:  # an overlap at least as long as the longest word, split at its middle
            half = draw(st.integers(RATE // 5, RATE // 2))
            chunks.append((start, seam + half, overlap))
            start, overlap = seam - half, 2 * half


@settings(max_examples=200, deadline=None)
@given(timeline=_timelines())
def test_random_chunkings_lose_and_double_nothing(
    timeline: tuple[list[tuple[int, int]], list[tuple[int, int, int]]],
) -> None:
    """Whatever the chunk lengths and overlaps: every word once, at its true time to the
    microsecond; utterances spell the transcription; speakers point at their chunk."""
    words, chunks = timeline
    bounds: list[tuple[float | None, float | None]] = []
    for index, (start, _end, overlap) in enumerate(chunks):
        keep_from = (start + overlap // 2) / RATE if overlap else None
        following = chunks[index + 1] if index + 1 < len(chunks) else None
        keep_until = None
        if following is not None and following[2]:
            keep_until = (following[0] + following[2] // 2) / RATE
        bounds.append((keep_from, keep_until))
    parts = []
    for index, ((start, end, _), (keep_from, keep_until)) in enumerate(
        zip(chunks, bounds, strict=True)
    ):
        offset = start / RATE
        heard = [
            _word(f"w{n}", a / RATE - offset, b / RATE - offset)
            for n, (a, b) in enumerate(words) if start <= a and b <= end
        ]  # fmt: skip
        payload = _answer(heard, per_utterance=2 + index % 3)
        parts.append(Part(offset, keep_from, keep_until, None, payload))
    out = stitch(parts[::-1], duration=chunks[-1][1] / RATE)
    got = [(w["word"], w["start"], w["end"]) for w in out["words"]]
    assert [g[0] for g in got] == [f"w{n}" for n in range(len(words))]
    for (_, start, end), (a, b) in zip(got, words, strict=True):
        assert abs(start - a / RATE) <= 1e-6 and abs(end - b / RATE) <= 1e-6
    assert out["transcription"] == " ".join(f"w{n}" for n in range(len(words)))
    assert " ".join(u["text"] for u in out["utterances"]) == out["transcription"]
    for word in out["words"]:
        origin = out["speakers"][word["speaker"]] if len(parts) > 1 else None
        if origin is not None:
            start = chunks[origin["chunk"]][0] / RATE
            assert word["start"] >= start - 1e-6


# --------------------------------------------------------------------------------------------
# A real recording: split at silences, each chunk transcribed by the emulator, stitched


@pytest.fixture
async def server() -> AsyncIterator[RunningEmulator]:
    """The emulator on loopback (it decodes the audio and places words on its speech)."""
    running = await start_emulator(EmulatorConfig())
    yield running
    await running.close()


def _wav(pcm: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm.astype("<i2").tobytes())
    return buffer.getvalue()


def _recording(seconds: float) -> np.ndarray:
    """Tone bursts of 1-4 s at pitches of the scale, with 0.5-1.5 s of faint hiss between.

    Burst lengths are whole half-seconds: the emulator gives a region one word per ~0.5 s, and
    a chunk's 20-ms analysis grid may sit 10 ms off the whole file's, so a length near a
    rounding edge of that count could get a word more or less in a chunk than in the file.
    """
    rng = np.random.default_rng(16)
    pcm = rng.normal(0, 2, round(seconds * RATE))
    at = 0.7
    while at < seconds - 5:
        length = 0.5 * int(rng.integers(2, 9))
        freq = 220 * 2 ** (int(rng.integers(0, 24)) / 12)
        a, b = round(at * RATE), round((at + length) * RATE)
        pcm[a:b] += 9000 * np.sin(2 * np.pi * freq * np.arange(b - a) / RATE)
        at += length + rng.uniform(0.5, 1.5)
    return np.clip(np.round(pcm), -32768, 32767).astype(np.int16)


async def _transcribe(session: aiohttp.ClientSession, url: str, body: bytes) -> dict[str, Any]:
    params = {"model": "pulse", "word_timestamps": "true", "diarize": "true"}
    headers = {"Content-Type": "audio/wav"}
    async with session.post(url, params=params, data=io.BytesIO(body), headers=headers) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


@pytest.mark.slow
async def test_emulator_chunks_stitch_to_the_whole_file(server: RunningEmulator) -> None:
    """A 3-minute recording cut at silences into <= 40 s chunks, each sent to the emulator:
    the stitched words are the whole file's, each within 0.15 s of its true time."""
    pcm = _recording(180.0)
    hop = hop_samples(RATE)
    spans = plan_cuts(hop_levels(pcm, RATE), hop / RATE, 40.0)
    assert len(spans) >= 5 and all(s.overlap_before_hops == 0 for s in spans)
    async with aiohttp.ClientSession() as session:
        whole = await _transcribe(session, server.endpoint(), _wav(pcm))
        parts = []
        for span, (keep_from, keep_until) in zip(spans, keep_windows(spans), strict=True):
            a, b = span.start_hop * hop, min(span.end_hop * hop, pcm.size)
            answer = await _transcribe(session, server.endpoint(), _wav(pcm[a:b]))
            parts.append(Part(
                a / RATE,
                None if keep_from is None else keep_from * hop / RATE,
                None if keep_until is None else keep_until * hop / RATE,
                None,
                answer,
            ))  # fmt: skip
    out = stitch(parts, duration=pcm.size / RATE)
    assert len(whole["words"]) > 40
    assert [w["word"] for w in out["words"]] == [w["word"] for w in whole["words"]]
    for got, true in zip(out["words"], whole["words"], strict=True):
        assert abs(got["start"] - true["start"]) <= 0.15, (got, true)
        assert abs(got["end"] - true["end"]) <= 0.15, (got, true)
    assert out["transcription"] == whole["transcription"]
    assert out["duration"] == 180.0
    assert len(out["speakers"]) >= len(spans)
