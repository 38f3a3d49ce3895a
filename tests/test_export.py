"""Exports: subtitle cues, SRT/VTT read back by third-party parsers, safe paths, atomic writes."""

from __future__ import annotations

import html
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import srt
import webvtt
from conftest import SAMPLES, cli_env
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscribe.errors import ConfigError
from batchscribe.export import (
    MAX_CUE_SECONDS,
    MAX_LINE,
    MAX_LINES,
    Cue,
    beside_path,
    build_cues,
    export,
    relative_path,
    render,
    render_srt,
    render_vtt,
    speaker_label,
    timing_problem,
    voice_label,
    wrap,
)


def record(item_id: str, status: str = "ok", **fields: Any) -> dict[str, Any]:
    """An ok record in the writer's layout, with words and utterances as given."""
    rec: dict[str, Any] = {
        "id": item_id, "status": status, "source": fields.pop("source", f"/srv/{item_id}"),
        "attempts": 1, "http_status": 200 if status == "ok" else 503, "error": None,
        "cause": None if status == "ok" else "5xx", "finished_at": "2026-11-25T01:02:03.456Z",
        "run": "r",
    }  # fmt: skip
    if status == "ok":
        rec.update(
            transcription=fields.pop("transcription", "Hello there."),
            words=fields.pop("words", None),
            utterances=fields.pop("utterances", None),
            duration=fields.pop("duration", 3.0),
            request_id="req-1",
            response={"status": "success", "language": "en", "metadata": {"duration": 3.0}},
        )
    rec.update(fields)
    return rec


def write(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    return path


def words_of(text: str, start: float = 0.0, step: float = 0.4, speaker: Any = None) -> list[Any]:
    out = []
    for i, word in enumerate(text.split()):
        entry = {"start": round(start + i * step, 3), "end": round(start + i * step + 0.3, 3),
                 "word": word}  # fmt: skip
        if speaker is not None:
            entry["speaker"] = speaker
        out.append(entry)
    return out


LONG = (
    "The quarterly meeting has been moved to Thursday afternoon because the board wants "
    "everyone to see the final numbers before the holiday break begins next week."
)


def check_cue_limits(cues: list[Cue], label: bool = True) -> None:
    for cue in cues:
        assert 1 <= len(cue.lines) <= MAX_LINES
        first = cue.lines[0] if not (label and cue.speaker) else f"[{cue.speaker}] {cue.lines[0]}"
        assert all(len(line) <= MAX_LINE for line in (first, *cue.lines[1:])), cue
        assert cue.end_ms - cue.start_ms <= MAX_CUE_SECONDS * 1000 + 1, cue
        assert cue.start_ms <= cue.end_ms


# --------------------------------------------------------------------------- cues (pure)


def test_wrap_balances_two_lines_within_the_limit() -> None:
    """Short text stays one line; longer text breaks at the most balanced space; else None."""
    assert wrap("Hello there.") == ["Hello there."]
    lines = wrap("The quarterly meeting has been moved to Thursday afternoon.")
    assert lines == ["The quarterly meeting has been", "moved to Thursday afternoon."]
    assert wrap("x" * 43) is None
    assert wrap(LONG) is None
    assert wrap("a " * 20, first_indent=12) is not None


def test_utterances_that_fit_become_one_cue_each_with_exact_times() -> None:
    """Each short utterance is one cue; times are the API's, to the millisecond."""
    rec = record("a", utterances=[
        {"start": 0.25, "end": 1.999, "text": "Hello there."},
        {"start": 2.0004, "end": 4.063, "text": "Our train leaves at half past seven."},
    ])  # fmt: skip
    cues = build_cues(rec)
    assert [(c.start_ms, c.end_ms, c.lines) for c in cues] == [
        (250, 1999, ("Hello there.",)), (2000, 4063, ("Our train leaves at half past seven.",)),
    ]  # fmt: skip


def test_a_long_utterance_is_split_at_its_words_times() -> None:
    """Too long for one cue: split on word boundaries, each cue starting and ending on a word."""
    words = words_of(LONG, start=1.0)
    rec = record("a", words=words, utterances=[{"start": 1.0, "end": words[-1]["end"],
                                                  "text": LONG}])  # fmt: skip
    cues = build_cues(rec)
    assert len(cues) >= 2
    check_cue_limits(cues)
    assert " ".join(" ".join(c.lines) for c in cues) == LONG
    starts = {round(w["start"] * 1000) for w in words}
    ends = {round(w["end"] * 1000) for w in words}
    assert all(c.start_ms in starts and c.end_ms in ends for c in cues)
    assert cues[0].start_ms == 1000 and cues[-1].end_ms == round(words[-1]["end"] * 1000)


def test_without_utterances_words_are_grouped_at_pauses_and_speakers() -> None:
    """Words alone: a new cue at a speaker change or a long pause."""
    words = words_of("one two three", 0.0, speaker=0) + words_of("four five", 5.0, speaker=1)
    words += words_of("six seven", 10.0, speaker=1)
    cues = build_cues(record("a", words=words, utterances=None))
    assert [(c.speaker, " ".join(c.lines)) for c in cues] == [
        ("Speaker 0", "one two three"), ("Speaker 1", "four five"), ("Speaker 1", "six seven"),
    ]  # fmt: skip


def test_pulse_pro_words_alone_make_sentence_cues_that_players_read_back(tmp_path: Path) -> None:
    """A Pulse Pro answer (words with confidence, no utterances, no speakers) and a diarized
    Pulse one (integer speakers, speaker_confidence) export cues cut at sentence ends and
    speaker changes, that srt and webvtt-py read back with the same text and times."""
    first = "This sentence is long enough to end a cue."
    words = words_of(f"{first} And so is this one, said twice.", 0.0)
    for n, word in enumerate(words):
        word.update(confidence=0.9, speaker_confidence=0.8, speaker=0 if n < 9 else 1)
    for name, recorded in [("pro", [{**w, "speaker": None} for w in words]), ("pulse", words)]:
        rec = record(name, words=recorded, utterances=None)
        path = str(write(tmp_path / f"{name}.jsonl", rec))
        assert export([path], "srt", out_dir=str(tmp_path / "s")).written == 1
        assert export([path], "vtt", out_dir=str(tmp_path / "v")).written == 1
    pro = list(srt.parse((tmp_path / "s" / "pro.srt").read_text()))
    assert [c.content.replace("\n", " ") for c in pro] == [first, "And so is this one, said twice."]
    assert pro[1].start == timedelta(seconds=3.6)
    labelled = [c.content for c in srt.parse((tmp_path / "s" / "pulse.srt").read_text())]
    assert labelled[0].startswith("[Speaker 0] This") and labelled[1].startswith("[Speaker 1]")
    voices = [(c.voice, c.start) for c in webvtt.read(str(tmp_path / "v" / "pulse.vtt"))]
    assert voices == [("Speaker 0", "00:00:00.000"), ("Speaker 1", "00:00:03.600")]


def test_a_bare_transcript_is_spread_over_the_duration() -> None:
    """No timings at all: cues share the audio's duration by text length, within the limits."""
    cues = build_cues(record("a", transcription=LONG, duration=12.0))
    check_cue_limits(cues)
    assert cues[0].start_ms == 0 and cues[-1].end_ms <= 12000
    assert " ".join(" ".join(c.lines) for c in cues) == LONG


_ABSURD = [1e308, -5000.0, 1e300, 9e15, -1e308]


@pytest.mark.parametrize("bad", _ABSURD)
def test_impossible_times_in_a_record_never_reach_a_subtitle(bad: float) -> None:
    """A duration or word/utterance times that are negative or beyond any recording (a
    corrupt or hand-edited record) are ignored: the export still renders, with sane times."""
    rec = record(
        "a", transcription="one two three", duration=bad,
        words=[{"start": bad, "end": bad, "word": "one"},
               {"start": 0.5, "end": bad, "word": "two"}],
        utterances=[{"start": 0.0, "end": bad, "text": "one two three"}],
    )  # fmt: skip
    for cues in (build_cues(rec), build_cues({**rec, "words": None, "utterances": None})):
        assert cues and all(0 <= c.start_ms <= c.end_ms <= 3_600_000 for c in cues), cues
        srt.parse(render_srt(cues))
        render_vtt(cues)


def test_speaker_labels() -> None:
    """Diarized speakers read `Speaker N` whatever shape the API gives them."""
    assert [speaker_label(v) for v in (0, 3, "1", "speaker_2", "SPEAKER_07", None, "Ada")] == [
        "Speaker 0", "Speaker 3", "Speaker 1", "Speaker 2", "Speaker 7", None, "Ada",
    ]  # fmt: skip


_word = st.text(st.characters(codec="utf-8", categories=["L", "N", "P"]), min_size=1, max_size=50)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_word, st.floats(0.01, 3.0), st.floats(0, 2.0), st.sampled_from([0, 1])),
                min_size=1, max_size=40))  # fmt: skip
def test_cues_from_any_words_respect_player_limits(
    entries: list[tuple[str, float, float, int]],
) -> None:
    """Whatever the words, every cue fits 2 x 42 characters and 7 seconds, in time order."""
    t, words = 0.0, []
    for text, length, gap, speaker in entries:
        t += gap
        words.append({"start": round(t, 3), "end": round(t + length, 3), "word": text,
                      "speaker": speaker})  # fmt: skip
        t += length
    for label in (True, False):
        cues = build_cues(record("a", words=words, utterances=None), label_in_text=label)
        check_cue_limits(cues, label)
        assert [c.start_ms for c in cues] == sorted(c.start_ms for c in cues)
        assert "".join("".join(c.lines).replace(" ", "") for c in cues) == "".join(
            w["word"] for w in words
        )


_ANY_TIME = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-5, 400_000),
    st.integers(-(10**30), 10**30),
    st.none(),
    st.booleans(),
    st.text(max_size=4),
)
_ANY_ENTRY = st.fixed_dictionaries(
    {"start": _ANY_TIME, "end": _ANY_TIME},
    optional={"speaker": st.one_of(st.integers(0, 3), st.text(max_size=6), st.none())},
)


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(_ANY_ENTRY.map(lambda e: {**e, "word": "w"}), max_size=12),
    utterances=st.one_of(
        st.none(), st.lists(_ANY_ENTRY.map(lambda e: {**e, "text": "a few words"}), max_size=4)
    ),
    duration=_ANY_TIME,
)
def test_any_timings_make_valid_cues_and_never_raise(
    words: list[dict[str, Any]], utterances: list[dict[str, Any]] | None, duration: Any
) -> None:
    """Whatever the times (NaN, inf, negative, huge, reversed, not numbers), the cue builder and
    the SRT/VTT writers never raise, and every cue runs forwards: 0 <= start < end."""
    rec = record("a", words=words, utterances=utterances, duration=duration)
    assert timing_problem(rec) is None or isinstance(timing_problem(rec), str)
    for label in (True, False):
        cues = build_cues(rec, label_in_text=label)
        for cue in cues:
            assert 0 <= cue.start_ms < cue.end_ms, cue
        render_srt(cues)
        render_vtt(cues)
    try:
        orjson.dumps(rec)
    except TypeError:  # an integer past 64 bits: no results file can hold this record
        return
    for fmt in ("txt", "json"):
        render(rec, fmt)


def test_a_word_ending_before_it_starts_never_makes_an_empty_cue() -> None:
    """A word whose end is before (or at) its start still gets a cue that lasts, up to the
    next cue at most; reversed words never make a cue that runs backwards."""
    words = [
        {"start": 1.0, "end": 0.5, "word": "Backwards."},
        {"start": 4.0, "end": 4.0, "word": "Instant."},
        {"start": 4.2, "end": 4.6, "word": "Next."},
    ]
    cues = build_cues(record("a", words=words, utterances=None, transcription="x"))
    assert [(c.start_ms, c.end_ms) for c in cues] == [(1000, 1500), (4000, 4600)]
    reordered = build_cues(record("a", words=[words[2], words[0]], utterances=None))
    assert all(c.start_ms < c.end_ms for c in reordered)


def test_export_skips_a_record_it_cannot_render_and_writes_the_others(tmp_path: Path) -> None:
    """A record with an absurd time (a word at 1e20 s) is skipped with a FILE:LINE warning
    naming its id; the other records are written; exit 1 (one file not written)."""
    bad = record("bad.wav", words=[{"start": 1e20, "end": 1e20 + 1, "word": "Far."}])
    good = record("good.wav", words=words_of("Hello there."))
    path = write(tmp_path / "r.jsonl", good, bad, record("other.wav"))
    for fmt in ("srt", "vtt"):
        done = subprocess.run(
            [sys.executable, "-m", "batchscribe", "export", path, "--format", fmt, "--dir", fmt],
            cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert "internal error" not in done.stderr
        [warning] = done.stderr.splitlines()
        assert warning.startswith(f"batchscribe: {path}:2: bad.wav: not exported: "), warning
        assert "1e+20" in warning
        assert sorted(os.listdir(tmp_path / fmt)) == [f"good.{fmt}", f"other.{fmt}"]
        assert "1 error(s)" in done.stdout


# --------------------------------------------------------------------------- formats


def _diarized() -> dict[str, Any]:
    words = words_of("Good morning everyone.", 0.5, speaker=0)
    words += words_of(LONG, 2.5, speaker=1)
    return record("a", words=words, utterances=[
        {"start": 0.5, "end": 1.6, "text": "Good morning everyone.", "speaker": 0},
        {"start": 2.5, "end": words[-1]["end"], "text": LONG, "speaker": 1},
    ])  # fmt: skip


def test_srt_reads_back_with_exact_times_and_speaker_labels() -> None:
    """The srt library parses our SRT to the same cues, times exact to the millisecond."""
    rec = _diarized()
    cues = build_cues(rec, label_in_text=True)
    parsed = list(srt.parse(render(rec, "srt").decode()))
    assert len(parsed) == len(cues)
    for sub, cue in zip(parsed, cues, strict=True):
        assert sub.start == timedelta(milliseconds=cue.start_ms)
        assert sub.end == timedelta(milliseconds=cue.end_ms)
        assert sub.content.startswith(f"[{cue.speaker}] ")
        assert all(len(line) <= MAX_LINE for line in sub.content.split("\n"))
    assert parsed[0].content == "[Speaker 0] Good morning everyone."
    assert [s.index for s in parsed] == list(range(1, len(parsed) + 1))


def test_vtt_reads_back_with_exact_times_and_voices() -> None:
    """webvtt-py parses our WebVTT: exact times, `<v Speaker N>` voices, escaped text."""
    rec = _diarized()
    rec["utterances"][0]["text"] = "Tom & Jerry <3 -->"
    cues = build_cues(rec, label_in_text=False)
    text = render(rec, "vtt").decode()
    assert text.startswith("WEBVTT\n\n")
    parsed = webvtt.from_string(text)
    assert len(parsed) == len(cues)
    for caption, cue in zip(parsed, cues, strict=True):
        assert caption.start_time.in_milliseconds() == cue.start_ms
        assert caption.end_time.in_milliseconds() == cue.end_ms
        assert caption.voice == cue.speaker
        assert html.unescape(caption.text).split("\n") == list(cue.lines)
    assert html.unescape(parsed[0].text) == "Tom & Jerry <3 -->"


def test_renderers_on_plain_cues() -> None:
    """Hour-long timestamps, and no label for an undiarized cue, in both formats."""
    cues = [Cue(3_723_004, 3_725_000, ("Hi.",)), Cue(3_725_000, 3_726_500, ("a", "b"), "Ada")]
    assert render_srt(cues) == (
        "1\n01:02:03,004 --> 01:02:05,000\nHi.\n\n2\n01:02:05,000 --> 01:02:06,500\n[Ada] a\nb\n\n"
    )
    assert render_vtt(cues) == (
        "WEBVTT\n\n01:02:03.004 --> 01:02:05.000\nHi.\n\n"
        "01:02:05.000 --> 01:02:06.500\n<v Ada>a\nb\n"
    )


def test_txt_and_json_formats() -> None:
    """txt is the transcript (a line per speaker turn when diarized); json the API's answer."""
    assert render(record("a"), "txt") == b"Hello there.\n"
    txt = render(_diarized(), "txt").decode()
    assert txt.splitlines()[0] == "[Speaker 0] Good morning everyone."
    doc = orjson.loads(render(record("a", words=[]), "json"))
    assert doc == {
        "status": "success", "transcription": "Hello there.", "words": [], "utterances": None,
        "request_id": "req-1", "language": "en", "metadata": {"duration": 3.0},
    }  # fmt: skip


# --------------------------------------------------------------------------- paths


ESCAPES = [
    "../x", "/etc/passwd", "a/../../b", "..", ".", "", "a//b", "a/./b", "//", "/",
    "a\x00b", "new\nline", "tab\tand\x1besc", "back\\..\\..\\slash", "\u202e.wav",
    "C:\\Windows\\system32", "https://user:pw@host:8080/a/../b.mp3?sig=1", "x" * 600,
    "\ud800lone", "a/" + "é" * 200 + "/b.wav",
]  # fmt: skip


@pytest.mark.parametrize("item_id", ESCAPES)
def test_relative_paths_can_never_escape(item_id: str) -> None:
    """No absolute path, no `..`, no control characters, no empty parts, names within limits."""
    rel = relative_path(item_id, "srt")
    parts = rel.split("/")
    assert not rel.startswith("/") and rel.endswith(".srt")
    assert all(p not in ("", ".", "..") for p in parts)
    assert all(c.isprintable() for c in rel)
    assert all(len(p.encode()) <= 255 for p in parts)
    rel.encode("utf-8")  # no lone surrogates: every name can be created


def test_relative_path_mirrors_folders_and_replaces_audio_extensions() -> None:
    """Archive ids keep their folders; only an audio extension is replaced."""
    assert relative_path("2019/field/04-market.ogg", "vtt") == "2019/field/04-market.vtt"
    assert relative_path("2019-weather", "srt") == "2019-weather.srt"
    assert relative_path("talk.v2", "txt") == "talk.v2.txt"
    assert relative_path("https://b.s3.amazonaws.com/x/a.MP3?sig=1", "srt") == (
        "b.s3.amazonaws.com/x/a.srt"
    )
    assert beside_path("/a/b/c.flac", "txt") == "/a/b/c.txt"
    assert beside_path("/a/notes.txt", "txt") == "/a/notes.txt.txt"  # never the source itself


def test_export_keeps_every_file_inside_out_even_past_a_symlink(tmp_path: Path) -> None:
    """Escaping ids land inside OUT; a symlink in OUT that leads outside is refused."""
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    (out / "trap").parent.mkdir()
    (out / "trap").symlink_to(outside)
    # (a lone surrogate cannot be in a results file: JSON writers refuse it)
    ids = [i for i in ESCAPES if i and "\ud800" not in i] + ["trap/x.wav", "trap/../../outside/y"]
    path = write(tmp_path / "r.jsonl", *(record(i) for i in ids))
    problems: list[str] = []
    summary = export([str(path)], "txt", out_dir=str(out), on_problem=problems.append)
    assert summary.errors == 2 and all("leads outside" in p for p in problems)
    assert summary.written == len(ids) - 2
    assert list(outside.iterdir()) == []
    real_out = os.path.realpath(out)
    for folder, _, files in os.walk(out):
        for name in files:
            assert os.path.realpath(os.path.join(folder, name)).startswith(real_out + os.sep)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "outside", "r.jsonl"]


def test_export_skips_up_to_date_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    """A second export writes nothing; a changed record rewrites its file, atomically."""
    path = write(tmp_path / "r.jsonl", record("a/b.wav"), record("c"), record("d", "failed"))
    out = tmp_path / "out"
    first = export([str(path)], "srt", out_dir=str(out))
    assert (first.written, first.up_to_date, first.not_ok) == (2, 0, 1)
    assert first.line() == "export: 2 written, 0 up to date, 1 skipped (1 failed)"
    mtime = (out / "a" / "b.srt").stat().st_mtime_ns
    again = export([str(path)], "srt", out_dir=str(out))
    assert (again.written, again.up_to_date) == (0, 2)
    assert (out / "a" / "b.srt").stat().st_mtime_ns == mtime
    with open(path, "ab") as f:
        f.write(orjson.dumps(record("c", transcription="Changed.")) + b"\n")
    third = export([str(path)], "srt", out_dir=str(out))
    assert (third.written, third.up_to_date) == (1, 1)
    assert "Changed." in (out / "c.srt").read_text()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_two_ids_with_one_name_both_survive(tmp_path: Path) -> None:
    """`a.wav` and `a.mp3` both become `a.txt`: the second gets a distinct name."""
    path = write(tmp_path / "r.jsonl", record("a.wav", transcription="one"),
                 record("a.mp3", transcription="two"))  # fmt: skip
    export([str(path)], "txt", out_dir=str(tmp_path / "out"))
    texts = sorted(p.read_text() for p in (tmp_path / "out").iterdir())
    assert texts == ["one\n", "two\n"]


def test_beside_audio_writes_next_to_local_files_and_skips_urls(tmp_path: Path) -> None:
    """--beside-audio: next to each local source; URL items are skipped and counted."""
    audio = tmp_path / "lib" / "talk.flac"
    audio.parent.mkdir()
    audio.write_bytes(b"fLaC")
    path = write(tmp_path / "r.jsonl", record("t", source=str(audio)),
                 record("u", source="https://h/u.mp3"))  # fmt: skip
    summary = export([str(path)], "vtt", beside_audio=True)
    assert (summary.written, summary.urls) == (1, 1)
    assert (tmp_path / "lib" / "talk.vtt").read_text().startswith("WEBVTT")
    assert audio.read_bytes() == b"fLaC"
    with pytest.raises(ConfigError, match="either --dir OUT or --beside-audio"):
        export([str(path)], "vtt")
    with pytest.raises(ConfigError, match="--format must be one of"):
        export([str(path)], "docx", out_dir=str(tmp_path / "o"))


def test_export_cli_on_the_sample_archive(tmp_path: Path) -> None:
    """The real CLI exports the sample archive's real results; a symlinked file is replaced."""

    def cli(*args: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "batchscribe", *map(str, args)], cwd=tmp_path, env=cli_env(),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    done = cli("run", SAMPLES / "archive.jsonl", "--emulate", "--out", "r.jsonl")
    assert done.returncode == 0, done.stderr
    done = cli("export", "r*.jsonl", "--format", "srt", "--dir", "subs")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "export: 10 written, 0 up to date, 0 skipped"
    parsed = list(srt.parse((tmp_path / "subs" / "2020-meeting.srt").read_text()))
    assert parsed[0].content.startswith("[Speaker 0] The quarterly meeting")
    lines = (tmp_path / "r.jsonl").read_bytes().splitlines()
    meeting = next(r for r in map(orjson.loads, lines) if r.get("id") == "2020-meeting")
    start = meeting["utterances"][0]["start"]  # where the emulator found the speech
    assert parsed[0].start == timedelta(milliseconds=round(start * 1000))
    end = meeting["utterances"][-1]["end"]
    assert parsed[-1].end == timedelta(milliseconds=round(end * 1000))
    (tmp_path / "vtt").mkdir()
    (tmp_path / "vtt" / "2019-weather.vtt").symlink_to("/etc/hostname")  # replaced, not followed
    done = cli("export", "r.jsonl", "--format", "vtt", "--dir", "vtt")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "vtt" / "2019-weather.vtt").is_symlink()
    assert len(webvtt.read(str(tmp_path / "vtt" / "2019-weather.vtt"))) == 1


# --------------------------------------------------------------------------- channels


def _split_channels() -> dict[str, Any]:
    """A stitched record of a stereo call sent as two channels (``--channels split``): every
    word and utterance carries ``channel``, speakers are renumbered, and a ``speakers`` map
    rides along in the response."""
    from batchscribe.audio.stitch import Part, stitch

    def answer(text: str, start: float) -> dict[str, Any]:
        words = words_of(text, start, speaker=0)
        utterance = {"start": words[0]["start"], "end": words[-1]["end"], "text": text,
                     "speaker": 0}  # fmt: skip
        return {"status": "success", "transcription": text, "words": words,
                "utterances": [utterance]}  # fmt: skip

    parts = [
        Part(0.0, None, None, 0, answer("Thank you for calling.", 0.5)),
        Part(0.0, None, None, 1, answer("Hi, my card was blocked.", 2.5)),
        Part(0.0, None, None, 0, answer("Let me check that.", 5.0)),
    ]
    stitched = stitch(parts[:2], duration=8.0)
    later = stitch([parts[2]], duration=8.0)  # channel 0 again, later: one more utterance
    stitched["words"] += later["words"]
    stitched["utterances"] += [{**u, "channel": 0} for u in later["utterances"]]
    for entry in stitched["words"][-len(later["words"]) :]:
        entry["channel"] = 0
    rec = record("call", **{k: stitched[k] for k in ("transcription", "words", "utterances")})
    rec["response"]["speakers"] = stitched["speakers"]
    return rec


def test_channel_words_are_labelled_like_speakers_in_every_format() -> None:
    """A record whose words and utterances carry `channel` (a split stereo call) labels each
    cue and text line `Channel N, Speaker M` (N the record's channel, from 0): SRT in brackets,
    WebVTT as the voice, txt per utterance; the srt and webvtt parsers read it back."""
    rec = _split_channels()
    srt_cues = list(srt.parse(render(rec, "srt").decode()))
    assert [s.content.replace("\n", " ") for s in srt_cues] == [
        "[Channel 0, Speaker 0] Thank you for calling.",
        "[Channel 1, Speaker 1] Hi, my card was blocked.",
        "[Channel 0, Speaker 0] Let me check that.",
    ]
    check_cue_limits(build_cues(rec, label_in_text=True))
    voices = [c.voice for c in webvtt.from_string(render(rec, "vtt").decode())]
    assert voices == ["Channel 0, Speaker 0", "Channel 1, Speaker 1", "Channel 0, Speaker 0"]
    assert render(rec, "txt").decode().splitlines() == [
        "[Channel 0, Speaker 0] Thank you for calling.",
        "[Channel 1, Speaker 1] Hi, my card was blocked.",
        "[Channel 0, Speaker 0] Let me check that.",
    ]
    assert orjson.loads(render(rec, "json"))["speakers"] == rec["response"]["speakers"]


def test_channel_without_speakers_and_words_alone_start_a_cue_per_channel() -> None:
    """Words with `channel` but no speaker (undiarized) are labelled `Channel N`, and a
    change of channel starts a new cue even within a pause-free run of words."""
    words = words_of("yes please", 0.0) + words_of("one moment", 0.8)
    for n, word in enumerate(words):
        word["channel"] = 0 if n < 2 else 1
    cues = build_cues(record("w", words=words), label_in_text=True)
    assert [(c.speaker, " ".join(c.lines)) for c in cues] == [
        ("Channel 0", "yes please"), ("Channel 1", "one moment"),
    ]  # fmt: skip
    assert voice_label({"channel": True, "speaker": 2}) == "Speaker 2"  # a bool is no channel
    assert voice_label({"channel": "1"}) == "Channel 1"


def test_a_stitched_mixdown_record_exports_as_before() -> None:
    """A stitched record without channels (a downmix cut in chunks, with a `speakers` map)
    exports exactly as an unstitched one with the same words: labels stay `Speaker N`."""
    rec = _diarized()
    before = {fmt: render(rec, fmt) for fmt in ("srt", "vtt", "txt")}
    rec["response"]["speakers"] = [{"speaker": 0, "chunk": 0, "chunk_speaker": 0}]
    assert {fmt: render(rec, fmt) for fmt in ("srt", "vtt", "txt")} == before


def test_export_cli_labels_channels(tmp_path: Path) -> None:
    """The real `batchscribe export` writes channel labels into SRT files."""
    results = write(tmp_path / "r.jsonl", _split_channels())
    done = subprocess.run(
        [sys.executable, "-m", "batchscribe", "export", str(results), "--format", "srt",
         "--dir", str(tmp_path / "subs")],
        env=cli_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    parsed = list(srt.parse((tmp_path / "subs" / "call.srt").read_text()))
    assert parsed[1].content.replace("\n", " ") == "[Channel 1, Speaker 1] Hi, my card was blocked."
