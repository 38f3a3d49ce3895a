"""Packing: clips joined with silence into one request, the answer split back into one per clip
as if each had been sent alone (words at their true times, none in a neighbour's, utterances
cut at clip boundaries, speakers renumbered per clip); the Packer's grouping; the gap measured
against the emulator's own speech detection."""

from __future__ import annotations

import io
import itertools
import pickle
import random
import wave
from collections.abc import AsyncIterator, Hashable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from audio_fixtures import Burst, bursts_pcm, write_wav
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscribe.audio.pack import (
    ALIGN_S,
    GAP_S,
    PACK_SECONDS,
    Packer,
    TooLong,
    Unsplittable,
    encode_flac,
    load_pcm,
    pack,
    spans_for,
    unpack,
)
from batchscribe.audio.probe import Unreadable
from batchscribe.emulator import EmulatorConfig
from batchscribe.emulator.answers import words as answer_words
from batchscribe.emulator.server import RunningEmulator, start_emulator
from batchscribe.emulator.transcripts import analyse, transcribe
from batchscribe.pulse import Verdict

RATE = 16000
#: Pitches of the scale (A3 .. A5): the emulator picks a region's words by its semitone.
PITCHES = tuple(220 * 2 ** (k / 12) for k in range(24))


def _bursts(seed: int, seconds: float, *, edges: bool) -> tuple[list[Burst], float]:
    """Tone bursts of whole half-seconds (the emulator gives a region a word per ~0.5 s, so a
    length at a rounding edge could get a word more on a 10-ms shifted analysis grid), 0.3-1 s
    apart; with ``edges`` speech starts at the clip's first sample and ends at its last (the
    worst case for a join across the gap). The clip's length is returned with them."""
    pick = random.Random(seed)
    at = 0.0 if edges else pick.uniform(0.1, 0.6)
    bursts: list[Burst] = []
    while True:
        length = 0.5 * pick.randint(1, 6)
        bursts.append((at, at + length, pick.choice(PITCHES)))
        at += length
        if at >= seconds:
            break
        at += pick.uniform(0.3, 1.0)
    return bursts, at if edges else at + pick.uniform(0.1, 0.6)


def _clip(seed: int, seconds: float, *, edges: bool = True, amplitude: float = 9000.0) -> Any:
    """A clip of speech-like bursts (int16, 16 kHz)."""
    bursts, length = _bursts(seed, seconds, edges=edges)
    return bursts_pcm(bursts, start=0, count=round(length * RATE), rate=RATE, amplitude=amplitude)


def _silent(seed: int, seconds: float) -> Any:
    """A clip of faint hiss (-84 dBFS): no speech."""
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(0, 2, round(seconds * RATE))).astype(np.int16)


def _hear(pcm: Any, path: Path) -> dict[str, Any]:
    """What the emulator answers for this audio sent as FLAC (word_timestamps and diarize):
    its own decoding, speech detection and transcript, shaped as its Pulse answer."""
    encode_flac(pcm, str(path))
    body = path.read_bytes()
    signal = analyse(io.BytesIO(body), "flac")
    transcript = transcribe(signal.regions)
    return {
        "status": "success",
        "transcription": transcript.text,
        "words": answer_words(transcript, diarize=True),
        "utterances": [
            {"start": s, "end": e, "text": text, "speaker": index % 2}
            for s, e, text, index in transcript.utterances()
        ],
        "metadata": {"duration": round(signal.duration, 3), "fileSize": len(body)},
    }


def _mismatches(alone: dict[str, Any], got: dict[str, Any], tolerance: float = 0.15) -> int:
    """Words of the clip sent alone not found in its unpacked answer (same text, start within
    ``tolerance``), plus words of the unpacked answer that the clip alone does not have."""
    rest = [(w["word"], w["start"]) for w in got["words"]]
    missing = 0
    for word in alone["words"]:
        match = next(
            (r for r in rest if r[0] == word["word"] and abs(r[1] - word["start"]) <= tolerance),
            None,
        )
        if match is None:
            missing += 1
        else:
            rest.remove(match)
    return missing + len(rest)


def _assert_as_alone(alone: dict[str, Any], got: dict[str, Any]) -> None:
    """The unpacked answer is the clip's own: the same words in order, each within 0.15 s."""
    assert [w["word"] for w in got["words"]] == [w["word"] for w in alone["words"]]
    for mine, true in zip(got["words"], alone["words"], strict=True):
        assert abs(mine["start"] - true["start"]) <= 0.15, (mine, true)
        assert abs(mine["end"] - true["end"]) <= 0.15, (mine, true)
        assert mine["speaker"] == true["speaker"]
    assert got["transcription"] == alone["transcription"]
    assert " ".join(u["text"] for u in got["utterances"]) == got["transcription"]
    assert [u["speaker"] for u in got["utterances"]] == [u["speaker"] for u in alone["utterances"]]


# --------------------------------------------------------------------------------------------
# Words of packed clips come back in their own clip's answer, at their true times


@settings(max_examples=25, deadline=None)
@given(
    specs=st.lists(
        st.tuples(st.sampled_from(["speech", "speech", "edges", "silent"]), st.integers(0, 10**6),
                  st.floats(0.5, 14.0)),
        min_size=1, max_size=6,
    ),
    gap=st.floats(0.3, 2.0),
)  # fmt: skip
def test_every_word_comes_back_in_its_own_clip(
    tmp_path_factory: pytest.TempPathFactory, specs: list[tuple[str, int, float]], gap: float
) -> None:
    """Random clip lengths, gaps and silence-only clips, heard by the emulator's own decoding
    and speech detection: every word of every clip comes back in that clip's answer at its
    true time (within 0.15 s), none in a neighbour's, speakers as the clip alone has them."""
    work = tmp_path_factory.mktemp("pack")
    clips = [
        _silent(seed, seconds) if kind == "silent" else _clip(seed, seconds, edges=kind == "edges")
        for kind, seed, seconds in specs
    ]
    alone = [_hear(clip, work / f"{n}.flac") for n, clip in enumerate(clips)]
    packed = pack(clips, gap_s=gap)
    answers = unpack(_hear(packed.pcm, work / "pack.flac"), packed.spans)
    assert len(answers) == len(clips)
    for clip, (start, end), own, got in zip(clips, packed.spans, alone, answers, strict=True):
        assert end - start == clip.size
        _assert_as_alone(own, got)
        assert got["duration"] == round(clip.size / RATE, 6)
        assert got["packed"] == {"offset": round(start / RATE, 6)}


# The gap measured against the emulator: 20 packs of 8 clips of 5-30 s whose speech runs to
# the clip's first and last sample (the worst case), 4 518 words in all (seed 17, the helpers
# above). "joined": words whose start and end lie in different clips (a speech region spanning
# a gap); "wrong": words lost, added or moved over 0.15 s against each clip sent alone (clips
# aligned to 20 ms, as pack does; without aligning, 0.2 s gives 1 706); "jitter": words that
# would go to another clip were a real service to report a word's midpoint up to
# that far off (uniform), by the nearest-clip rule.
# | gap s | joined | wrong | jitter 0.25 s | jitter 0.5 s | jitter 0.75 s |
# |  0.00 |    114 |  2074 |   5 |  68 | 108 |
# |  0.10 |     86 |  2050 |   4 |  67 |  98 |
# |  0.20 |      0 |     0 |   0 |  43 |  79 |
# |  0.26 |      0 |     0 |   0 |  35 |  75 |
# |  0.50 |      0 |     0 |   0 |   4 |  47 |
# |  1.00 |      0 |     0 |   0 |   0 |   3 |
# |  2.00 |      0 |     0 |   0 |   0 |   0 |
# The emulator bridges pauses under 0.2 s on a 20-ms grid, so from 0.2 s nothing joins; GAP_S
# is 1 s: no word moves to a neighbour unless a service misplaces it by more than half a second.
@pytest.mark.slow
def test_gap_table(tmp_path: Path) -> None:
    """Gaps under the emulator's 0.2-s bridge join speech across clips and misattribute words;
    from 0.26 s up, and at GAP_S, nothing is joined or misattributed (the table above)."""
    seeds = random.Random(17)
    packs = []
    for _ in range(4):
        clips = [_clip(seeds.randrange(10**6), seeds.uniform(5, 30)) for _ in range(6)]
        packs.append((clips, [_hear(c, tmp_path / "alone.flac") for c in clips]))
    measured = {}
    for gap in (0.1, 0.26, GAP_S):
        joined = wrong = 0
        for clips, alone in packs:
            packed = pack(clips, gap_s=gap)
            answer = _hear(packed.pcm, tmp_path / "pack.flac")
            answers = unpack(answer, packed.spans)
            wrong += sum(_mismatches(a, g) for a, g in zip(alone, answers, strict=True))
            edges = [(s / RATE, e / RATE) for s, e in packed.spans]
            joined += sum(
                1 for w in answer["words"]
                if not any(s - 0.05 <= w["start"] and w["end"] <= e + 0.05 for s, e in edges)
            )  # fmt: skip
        measured[gap] = (joined, wrong)
    assert measured[0.1][0] > 0 and measured[0.1][1] > 0
    assert measured[0.26] == (0, 0)
    assert measured[GAP_S] == (0, 0)


# --------------------------------------------------------------------------------------------
# The real emulator on loopback: a packed request, diarized


@pytest.fixture
async def server() -> AsyncIterator[RunningEmulator]:
    """The emulator on loopback (it decodes the audio and places words on its speech)."""
    running = await start_emulator(EmulatorConfig())
    yield running
    await running.close()


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> dict[str, Any]:
    params = {"model": "pulse", "word_timestamps": "true", "diarize": "true"}
    headers = {"Content-Type": "audio/flac"}
    async with session.post(url, params=params, data=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


async def test_emulator_pack_splits_as_if_each_clip_was_sent_alone(
    server: RunningEmulator, tmp_path: Path
) -> None:
    """Five clips (one silent) posted as one FLAC to the emulator: each unpacked answer equals
    the clip posted alone (words, times within 0.15 s, speakers renumbered from 0, text)."""
    clips = [_clip(1, 6.0), _clip(2, 3.0, edges=False), _silent(3, 2.0), _clip(4, 9.0), _clip(5, 1)]
    async with aiohttp.ClientSession() as session:
        alone = []
        for n, clip in enumerate(clips):
            encode_flac(clip, str(tmp_path / f"{n}.flac"))
            body = (tmp_path / f"{n}.flac").read_bytes()
            alone.append(await _post(session, server.endpoint(), body))
        packed = pack(clips)
        size = encode_flac(packed.pcm, str(tmp_path / "pack.flac"))
        answer = await _post(session, server.endpoint(), (tmp_path / "pack.flac").read_bytes())
    assert size == answer["metadata"]["fileSize"]
    assert answer["metadata"]["duration"] == pytest.approx(packed.seconds, abs=0.001)
    assert packed.seconds == pytest.approx(sum(c.size for c in clips) / RATE + 4 * GAP_S, abs=0.08)
    answers = unpack(answer, packed.spans, durations=[c.size / RATE for c in clips])
    assert {w["speaker"] for w in answer["words"]} == {0, 1}
    for own, got, clip in zip(alone, answers, clips, strict=True):
        _assert_as_alone(own, got)
        if got["words"]:
            assert got["words"][0]["speaker"] == 0 and got["utterances"][0]["speaker"] == 0
        assert got["metadata"] == {"duration": round(clip.size / RATE, 6)}
        assert got["status"] == "success"
    assert answers[2]["words"] == [] and answers[2]["transcription"] == ""


# --------------------------------------------------------------------------------------------
# unpack: the rules, on hand-made answers


def _w(text: str, start: float, end: float, speaker: int | None = None) -> dict[str, Any]:
    word: dict[str, Any] = {"word": text, "start": start, "end": end, "confidence": 0.9}
    if speaker is not None:
        word["speaker"] = speaker
    return word


# Three clips of 2 s at 0, 3 and 6 s (1-s gaps): spans in samples.
SPANS = ((0, 32000), (48000, 80000), (96000, 128000))


def test_a_word_goes_by_its_midpoint_and_gap_words_to_the_nearest_clip() -> None:
    """Midpoint inside a span: that clip; in a gap: the nearer clip (the earlier on a tie);
    before the first or after the last: the first or last; times relative and clamped."""
    payload = {
        "transcription": "x",
        "words": [
            _w("a", 1.8, 2.4),  # midpoint 2.1: clip 0, its end clamped to 2 s
            _w("b", 2.7, 3.2),  # midpoint 2.95 in the gap, nearer clip 1: start clamped to 0
            _w("c", 2.2, 2.8),  # midpoint 2.5: a tie, the earlier clip
            _w("d", 5.9, 6.3),  # midpoint 6.1: clip 2
            _w("e", 8.5, 9.0),  # after the last clip: clip 2
            _w("f", 1.9, 3.9),  # starts in clip 0, midpoint 2.9 nearer clip 1: clip 1
        ],
    }
    out = unpack(payload, SPANS)
    assert [[(w["word"], w["start"], w["end"]) for w in a["words"]] for a in out] == [
        [("a", 1.8, 2.0), ("c", 2.0, 2.0)],
        [("b", 0.0, 0.2), ("f", 0.0, 0.9)],
        [("d", 0.0, 0.3), ("e", 2.0, 2.0)],
    ]
    assert [a["transcription"] for a in out] == ["a c", "b f", "d e"]


def test_offsets_are_exact_samples() -> None:
    """A clip at an odd sample offset gets its words at that exact offset (microseconds)."""
    spans = spans_for([16001, 8000], gap_s=0.5, align_s=0)
    assert spans == ((0, 16001), (24001, 32001))
    # by default each clip starts on the 20-ms grid (the gap grows by under 20 ms)
    assert spans_for([16001, 8000], gap_s=0.5) == ((0, 16001), (24320, 32320))
    out = unpack({"words": [_w("a", 1.6, 1.9)]}, spans)
    assert out[1]["words"][0]["start"] == round(1.6 - 24001 / RATE, 6) == 0.099938
    assert out[1]["packed"] == {"offset": 1.500063}


def test_utterances_are_cut_at_clip_boundaries() -> None:
    """An utterance whose words fall in two clips becomes a piece in each, with that clip's
    words' times and text; one inside a clip keeps its own text; a wordless one goes by its
    midpoint."""
    words = [_w("a", 0.5, 0.9, 0), _w("b", 1.2, 1.7, 0), _w("c", 3.1, 3.5, 0), _w("d", 6.2, 6.6, 1)]
    utterances = [
        {"start": 0.5, "end": 3.5, "text": "a b c", "speaker": 0, "extra": 1},
        {"start": 6.2, "end": 6.6, "text": "D!", "speaker": 1},
        {"start": 4.0, "end": 4.6, "text": "", "speaker": 1},
    ]
    out = unpack({"words": words, "utterances": utterances}, SPANS)
    assert out[0]["utterances"] == [
        {"start": 0.5, "end": 1.7, "text": "a b", "speaker": 0, "extra": 1}
    ]
    assert out[1]["utterances"] == [
        {"start": 0.1, "end": 0.5, "text": "c", "speaker": 0, "extra": 1},
        {"start": 1.0, "end": 1.6, "text": "", "speaker": 1},
    ]
    assert out[2]["utterances"] == [{"start": 0.2, "end": 0.6, "text": "D!", "speaker": 0}]


def test_speakers_are_renumbered_per_clip_in_order_of_appearance() -> None:
    """The service numbers speakers per request; each clip's first speaker becomes 0, the
    next new one 1, in words and utterances alike."""
    words = [
        _w("a", 0.1, 0.4, 3), _w("b", 0.5, 0.9, 1), _w("c", 1.0, 1.2, 3),
        _w("d", 3.1, 3.4, 1), _w("e", 6.1, 6.4, 2), _w("f", 6.5, 6.8, 3),
    ]  # fmt: skip
    utterances = [
        {"start": 0.1, "end": 0.4, "text": "a", "speaker": 3},
        {"start": 0.5, "end": 1.2, "text": "b c", "speaker": 1},
        {"start": 3.1, "end": 3.4, "text": "d", "speaker": 1},
    ]
    out = unpack({"words": words, "utterances": utterances}, SPANS)
    assert [[w["speaker"] for w in a["words"]] for a in out] == [[0, 1, 0], [0], [0, 1]]
    assert [u["speaker"] for u in out[0]["utterances"]] == [0, 1]
    assert out[1]["utterances"][0]["speaker"] == 0


def test_request_fields_and_other_fields() -> None:
    """Each answer keeps the request's other fields, its own duration, no request sizes or
    timings; Pulse Pro's answers (no utterances) get none."""
    payload = {
        "status": "success", "language": "en", "request_id": "r1", "totalBytes": 999,
        "transcription": "a", "words": [_w("a", 3.2, 3.5)], "gender": "female",
        "metadata": {"duration": 8.0, "fileSize": 999, "processing_time_ms": 40, "rtfx": 200.0,
                     "num_chunks": 1, "other": "kept"},
    }  # fmt: skip
    out = unpack(payload, SPANS, durations=[1.5, 1.9999, 2.0])
    assert out[1] == {
        "status": "success", "language": "en", "request_id": "r1", "gender": "female",
        "transcription": "a", "words": [_w("a", 0.2, 0.5)], "duration": 1.9999,
        "metadata": {"duration": 1.9999, "other": "kept"}, "packed": {"offset": 3.0},
    }  # fmt: skip
    assert out[0]["transcription"] == "" and out[0]["words"] == []
    assert "utterances" not in out[0]


def test_an_answer_without_timed_words_cannot_be_split() -> None:
    """Text without word times cannot be attributed: Unsplittable (send the items alone);
    an empty answer splits into empty answers; bad spans are refused."""
    with pytest.raises(Unsplittable) as caught:
        unpack({"transcription": "hello there", "words": []}, SPANS)
    assert caught.value.outcome.verdict is Verdict.RETRY
    with pytest.raises(Unsplittable):
        unpack({"transcription": "hello", "words": [{"word": "hello", "start": "x"}]}, SPANS)
    out = unpack({"transcription": "", "words": [], "utterances": []}, SPANS)
    assert [a["transcription"] for a in out] == ["", "", ""]
    with pytest.raises(ValueError, match="in order"):
        unpack({"words": []}, ((10, 20), (5, 30)))
    with pytest.raises(ValueError, match="durations"):
        unpack({"words": []}, SPANS, durations=[1.0])
    with pytest.raises(ValueError, match="at least one"):
        unpack({"words": []}, ())


# --------------------------------------------------------------------------------------------
# pack, encode_flac, load_pcm


def test_pack_places_clips_at_exact_samples_with_silence_between(tmp_path: Path) -> None:
    """The packed PCM is the clips at their spans, digital silence between; the FLAC decodes
    back to exactly those samples (lossless), whole file or none."""
    clips = [_clip(7, 2.0), _silent(8, 0.3), _clip(9, 1.0, edges=False)]
    packed = pack(clips, gap_s=0.7)
    gap = round(0.7 * RATE)
    for (_, end), (start, _) in itertools.pairwise(packed.spans):
        assert gap <= start - end < gap + round(ALIGN_S * RATE) and start % 320 == 0
    assert packed.pcm.size == packed.spans[-1][1]
    for clip, (start, end) in zip(clips, packed.spans, strict=True):
        assert np.array_equal(packed.pcm[start:end], clip)
    assert not packed.pcm[packed.spans[0][1] : packed.spans[1][0]].any()
    path = tmp_path / "p.flac"
    assert encode_flac(packed.pcm, str(path)) == path.stat().st_size
    assert not (tmp_path / "p.flac.part").exists()
    assert np.array_equal(load_pcm(str(path), max_seconds=60), packed.pcm)
    with pytest.raises(ValueError, match="int16"):
        pack([clips[0].astype(np.float32)])
    with pytest.raises(ValueError, match="at least one"):
        pack([])


def test_load_pcm_downmixes_resamples_and_bounds_the_length(tmp_path: Path) -> None:
    """A 44.1 kHz stereo WAV becomes 16 kHz mono of its length; longer than max_seconds is
    TooLong (decoding stops there); what PyAV cannot read is Unreadable."""
    wav = write_wav(tmp_path / "s.wav", [[(0.2, 1.0, 440.0)], [(1.2, 2.0, 660.0)]], 2.5, 44100)
    pcm = load_pcm(str(wav), max_seconds=3)
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    assert abs(pcm.size - 2.5 * RATE) <= 16
    assert np.abs(pcm[round(0.5 * RATE) : round(0.7 * RATE)]).max() > 2000
    assert np.abs(pcm[round(1.5 * RATE) : round(1.7 * RATE)]).max() > 2000
    with pytest.raises(TooLong) as caught:
        load_pcm(str(wav), max_seconds=2.0)
    assert caught.value.outcome.verdict is Verdict.RETRY
    assert pickle.loads(pickle.dumps(caught.value)).seconds == 2.0
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 100)
    with pytest.raises(Unreadable, match="unreadable audio"):
        load_pcm(str(junk), max_seconds=3)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
    (tmp_path / "empty.wav").write_bytes(buffer.getvalue())
    with pytest.raises(Unreadable):
        load_pcm(str(tmp_path / "empty.wav"), max_seconds=3)


# --------------------------------------------------------------------------------------------
# Packer: grouping


def test_packer_groups_by_key_and_closes_full_packs() -> None:
    """Only equal keys share a pack; a pack closes when the next item would not fit (gaps
    counted); flush hands out the rest in the order they opened; long items are refused."""
    packer = Packer(pack_seconds=60, max_item=20, gap_s=1)
    assert packer.add("a", "en", 20) == []
    assert packer.add("b", "fr", 10) == []
    assert packer.add("c", "en", 20) == []  # 20 + 1.02 + 20 = 41.02
    assert packer.pending == 3
    full = packer.add("d", "en", 19)  # 41.02 + 1.02 + 19 > 60: the open pack goes first
    assert [(p.key, [i.id for i in p.items], p.seconds) for p in full] == [
        ("en", ["a", "c"], 41.02)
    ]  # a gap counts as 1 s + ALIGN_S
    rest = packer.flush()
    assert [(p.key, [i.id for i in p.items]) for p in rest] == [("fr", ["b"]), ("en", ["d"])]
    assert packer.flush() == [] and packer.pending == 0
    assert not packer.takes(20.5) and not packer.takes(None) and not packer.takes(0)
    assert not packer.takes(float("nan")) and packer.takes(20)
    with pytest.raises(ValueError, match="not packed"):
        packer.add("e", "en", 25)


def test_a_pack_nothing_more_fits_in_is_handed_out_at_once() -> None:
    """A pack with less room left than a gap is full: add returns it without waiting."""
    packer = Packer(pack_seconds=30, max_item=15, gap_s=1)
    assert packer.add("a", "k", 15) == []
    [full] = packer.add("b", "k", 13.9)  # 15 + 1.02 + 13.9 = 29.92: no room for a gap
    assert [i.id for i in full.items] == ["a", "b"] and full.seconds == 29.92
    assert packer.pending == 0


def test_packer_defaults_fit_the_session() -> None:
    """The defaults: packs just under the 10-minute session, items up to 2 minutes, 1-s gaps."""
    packer = Packer()
    assert PACK_SECONDS < 600 and packer.max_item == 120 and packer.gap_s == GAP_S == 1.0
    packs = [p for n in range(100) for p in packer.add(str(n), None, 20)] + packer.flush()
    assert [len(p.items) for p in packs] == [28, 28, 28, 16]  # 28 * 20 + 27 * 1.02 = 587.5 s
    assert all(p.seconds <= PACK_SECONDS for p in packs)


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(st.tuples(st.sampled_from("abc"), st.floats(0.01, 30.0)), max_size=60),
    pack_seconds=st.floats(30.0, 120.0),
    gap=st.floats(0.0, 3.0),
)
def test_packer_places_every_item_once_within_the_limit(
    items: list[tuple[Hashable, float]], pack_seconds: float, gap: float
) -> None:
    """Whatever arrives: every item in exactly one pack, in arrival order per key, one key per
    pack, no pack over pack_seconds (gaps included), and a pack closed early only when the
    next item of its key would not have fit."""
    packer = Packer(pack_seconds=pack_seconds, max_item=30, gap_s=gap)
    packs = []
    for n, (key, seconds) in enumerate(items):
        packs += packer.add(str(n), key, seconds)
    closed = len(packs)
    packs += packer.flush()
    assert sorted(int(i.id) for p in packs for i in p.items) == list(range(len(items)))
    for p in packs:
        assert {i.key for i in p.items} == {p.key}
        assert [int(i.id) for i in p.items] == sorted(int(i.id) for i in p.items)
        total = sum(i.seconds for i in p.items) + (gap + ALIGN_S) * (len(p.items) - 1)
        assert p.seconds == pytest.approx(total, abs=1e-6) and total <= pack_seconds + 1e-9
    for p in packs[:closed]:
        later = [
            i for q in packs for i in q.items if i.key == p.key and int(i.id) > int(p.items[-1].id)
        ]
        if later:
            room = pack_seconds - p.seconds
            assert room < gap + ALIGN_S + later[0].seconds or room <= gap + ALIGN_S
