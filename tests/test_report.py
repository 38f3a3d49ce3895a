"""Reading results files: paths and globs, final states, report, HTML page, failed list, merge."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
from conftest import REPO, SAMPLES, TEST_KEY, cli_env, read_results
from damage import damaged_results
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscribe.errors import ConfigError, ResultsBusy
from batchscribe.report import (
    build_report,
    display_id,
    epoch,
    epochs,
    failed_manifest,
    render_html,
)
from batchscribe.report import tally as tally_module
from batchscribe.results import (
    FINAL,
    HEAVY_FIELDS,
    ReadCounts,
    ResultsStore,
    expand_paths,
    final_states,
    index_final,
    iter_records,
    iter_run_records,
    load_light,
    load_light_many,
    load_records,
    load_split,
    merge_results,
)
from batchscribe.results import read as results_module

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# --------------------------------------------------------------------------- building records


def record(item_id: str, status: str = "ok", **fields: Any) -> dict[str, Any]:
    """A record in the writer's layout (README.md, "Results format")."""
    ok = status == "ok"
    rec: dict[str, Any] = {
        "id": item_id,
        "status": status,
        "source": fields.pop("source", f"/srv/archive/{item_id}"),
        "size": 1000,
        "mtime": 1.7e9,
        "attempts": fields.pop("attempts", 1),
        "http_status": fields.pop("http_status", 200 if ok else 503),
        "error": None if ok else fields.pop("error", "HTTP 503: unavailable"),
        "cause": None if ok else fields.pop("cause", "5xx"),
        "finished_at": fields.pop("finished_at", "2026-11-25T01:02:03.456Z"),
        "run": fields.pop("run", "run-a"),
    }
    if ok:
        duration = fields.pop("duration", 2.0)
        text = fields.pop("transcription", f"words of {item_id}")
        rec.update(
            transcription=text,
            words=[{"start": 0.1, "end": 0.5, "word": w} for w in text.split()],
            utterances=[{"start": 0.1, "end": 1.5, "text": text}],
            duration=duration,
            request_id=f"req-{item_id}",
            response={
                "status": fields.pop("response_status", "success"),
                "language": "en",
                "metadata": {"duration": duration, **fields.pop("meta", {})},
            },
        )
    rec.update(fields)
    return rec


def run_record(run_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "event": "run", "started_at": "2026-11-25T01:00:00.000Z",
        "finished_at": "2026-11-25T01:10:00.000Z", "run_id": run_id, "ok": 1, "failed": 0,
        "retries": 0, "wall_seconds": 600.0, "items_per_second": 0.5, **fields,
    }  # fmt: skip


def write(path: Path, *docs: dict[str, Any] | bytes) -> Path:
    """A results file with these records (bytes are written as they are: torn lines, junk)."""
    path.write_bytes(b"".join(d if isinstance(d, bytes) else orjson.dumps(d) + b"\n" for d in docs))
    return path


def cli(*args: Any, cwd: Path, env: dict[str, str | None] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "batchscribe", *map(str, args)],
        cwd=cwd, env=cli_env(env), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def main(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    """The CLI in-process (quicker than a subprocess): exit code, stdout, stderr."""
    from batchscribe.cli import main as cli_main

    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def sample_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real results of `batchscribe run sample_manifests/archive.jsonl --emulate`."""
    where = tmp_path_factory.mktemp("sample")
    done = cli("run", SAMPLES / "archive.jsonl", "--emulate", "--out", "r.jsonl", cwd=where)
    assert done.returncode == 0, done.stderr
    return where / "r.jsonl"


# --------------------------------------------------------------------------- paths and globs


def test_expand_paths_globs_sorted_deduplicated_and_named_errors(tmp_path: Path) -> None:
    """Globs expand sorted, a file named twice is read once, and a miss names the pattern."""
    for name in ("b.jsonl", "a.jsonl", "odd[1].jsonl"):
        write(tmp_path / name, record("x"))
    os.chdir(tmp_path)
    assert expand_paths(["*.jsonl"]) == ["a.jsonl", "b.jsonl", "odd[1].jsonl"]
    assert expand_paths(["b.jsonl", "*.jsonl"]) == ["b.jsonl", "a.jsonl", "odd[1].jsonl"]
    assert expand_paths(["odd[1].jsonl"]) == ["odd[1].jsonl"]  # an existing name is literal
    with pytest.raises(ConfigError, match=r"nope\*\.jsonl: matches no results file"):
        expand_paths(["a.jsonl", "nope*.jsonl"])
    with pytest.raises(ConfigError, match=r"missing\.jsonl: no such results file"):
        expand_paths(["missing.jsonl"])
    with pytest.raises(ConfigError, match="is a directory"):
        expand_paths([str(tmp_path)])


# --------------------------------------------------------------------------- streaming readers


def test_readers_skip_torn_junk_and_event_lines_and_count_them(tmp_path: Path) -> None:
    """Item and run records stream out; junk, other events and a torn tail are only counted."""
    path = write(
        tmp_path / "r.jsonl",
        record("a"), b"not json\n", b"\n", run_record("r1"), {"event": "note"},
        record("b", "failed"), b'{"id":"c","status":"ok","sou',
    )  # fmt: skip
    counts = ReadCounts()
    items = [(line, rec["id"]) for _, line, rec in iter_records([str(path)], counts)]
    assert items == [(1, "a"), (6, "b")]
    assert (counts.records, counts.runs, counts.events, counts.unreadable) == (2, 1, 1, 2)
    runs = [(line, rec["run_id"]) for _, line, rec in iter_run_records([str(path)])]
    assert runs == [(4, "r1")]


def test_final_state_is_the_last_record_across_files_in_order(tmp_path: Path) -> None:
    """A later record of an id wins, in the same file or a later one; order is file order."""
    one = write(tmp_path / "1.jsonl", record("a", "failed"), record("b"), record("c"))
    two = write(tmp_path / "2.jsonl", record("c", "failed"), record("a", attempts=3))
    finals = [(Path(p).name, line, r["id"], r["status"]) for p, line, r in final_states(
        [str(one), str(two)]
    )]  # fmt: skip
    assert finals == [("1.jsonl", 2, "b", "ok"), ("2.jsonl", 1, "c", "failed"),
                      ("2.jsonl", 2, "a", "ok")]  # fmt: skip


def test_keep_ok_prefers_the_latest_ok_over_a_later_failure(tmp_path: Path) -> None:
    """With keep_ok an id whose last record failed keeps its latest ok record instead."""
    path = write(
        tmp_path / "r.jsonl",
        record("a", transcription="first"), record("a", transcription="second"),
        record("a", "failed"), record("b", "failed"), record("b", "failed", cause="timeout"),
    )  # fmt: skip
    kept = {r["id"]: r for _, _, r in final_states([str(path)], keep_ok=True)}
    assert kept["a"]["transcription"] == "second"
    assert kept["b"]["cause"] == "timeout"
    plain = {r["id"]: r["status"] for _, _, r in final_states([str(path)])}
    assert plain == {"a": "failed", "b": "failed"}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from("abcdef"), st.booleans()), max_size=12),
        min_size=1, max_size=3,
    ),
    st.booleans(),
)  # fmt: skip
def test_final_states_match_a_dict_model(
    tmp_path_factory: pytest.TempPathFactory, files: list[list[tuple[str, bool]]], keep_ok: bool
) -> None:
    """The two-pass compact index agrees with "last record wins" (or "latest ok wins")."""
    where = tmp_path_factory.mktemp("model")
    paths, expected, position = [], {}, {}
    n = 0
    for i, entries in enumerate(files):
        docs = []
        for item_id, ok in entries:
            docs.append(record(item_id, "ok" if ok else "failed", attempts=n))
            if not (keep_ok and not ok and expected.get(item_id, (None, False))[1]):
                expected[item_id], position[item_id] = (n, ok), n
            n += 1
        paths.append(str(write(where / f"{i}.jsonl", *docs)))
    got = [(r["id"], r["attempts"]) for _, _, r in final_states(paths, keep_ok=keep_ok)]
    assert got == sorted(((k, v[0]) for k, v in expected.items()), key=lambda kv: position[kv[0]])


def test_pass_two_refuses_a_file_replaced_in_between(tmp_path: Path) -> None:
    """A file swapped between the two passes is an error, never a silently wrong answer."""
    path = write(tmp_path / "r.jsonl", record("a"), record("b"))
    index = index_final([str(path)])
    write(tmp_path / "new.jsonl", record("x"))
    os.replace(tmp_path / "new.jsonl", path)
    with pytest.raises(ConfigError, match="replaced or truncated"):
        list(index.lines(FINAL))


_tricky = st.one_of(
    st.text(max_size=8),
    st.sampled_from([',"duration":', ',"transcription":', '"}', "]}", "\\", '\\"']),
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | _tricky,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["duration", "transcription", "x", "words"]), inner, max_size=3
        )
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(_json_values, _json_values, _json_values, st.booleans())
def test_light_load_equals_a_full_parse_without_the_transcript(
    words: Any, metadata: Any, text: Any, drop_duration: bool
) -> None:
    """Skipping the transcript never changes any other field, whatever the records hold."""
    rec = record("x/y", transcription="a b")
    rec.update(words=words, utterances=[words], transcription=text, metadata=metadata)
    if drop_duration:
        del rec["duration"]
    line = orjson.dumps(rec)
    expected = {k: v for k, v in orjson.loads(line).items() if k not in HEAVY_FIELDS}
    assert load_split(line) in (expected, None)
    assert load_split(line) == expected or drop_duration  # the writer always writes duration
    assert load_light(line) == expected
    assert load_light(line + b" " * 5000) == expected  # long enough for the split path


# --------------------------------------------------------------------------- block and batch paths
# The readers work a block of lines or a batch of records at a time; each fast path must give
# exactly what its one-line-at-a-time reference gives, whatever the files hold.

_odd_ids = st.sampled_from(
    ["a", "b", "c", 'q"x', "back\\slash", "caf\u00e9", "\u65e5\u672c", "", "tab\tx", "a\nb"]
)
_ids = st.one_of(_odd_ids, st.text(st.characters(blacklist_categories=("Cs",)), max_size=3))
_other_lines = st.sampled_from([
    b"", b"  ", b"\r", b"junk", b"[1]", b"{}", b'{"id":"x"}', b'{"id":5,"status":"ok"}',
    orjson.dumps(run_record("r1")), orjson.dumps(run_record("r2")), b'{"event":"note"}',
    b'{"event":1}', b'{"event":"run","run_id":"torn"', b'{"id":"bad\xff","status":"ok"}',
    b'{"id":"o","status":"okay"}', b'{"id":"a\\u0062","status":"ok"}',
    b'{"id":"p"q","status":"ok"}', b'{"id":"s\\ud800","status":"failed"}',
    b'{"id":"a","status":"ok","x":[', b'{"id":"c","status":"ok"}{"id":"a"',
    b'  {"id":"b","status":"failed"}', b'{"status":"ok","id":"a"}',
])  # fmt: skip


@st.composite
def _results_lines(draw: st.DrawFn) -> bytes:
    """One line: an item record (writer's layout or fields in another order) or anything else."""
    if draw(st.integers(0, 3)) == 0:
        return draw(
            st.one_of(_other_lines, st.binary(max_size=12).filter(lambda b: b"\n" not in b))
        )
    doc = {"id": draw(_ids), "status": draw(st.sampled_from(["ok", "failed", "ok", "odd"]))}
    doc["attempts"] = draw(st.integers(0, 3))
    if draw(st.booleans()):
        doc = dict(reversed(doc.items()))  # another order: the line-by-line path reads it
    return orjson.dumps(doc)


def _index_model(
    files: list[list[bytes]], torn: list[bool], keep_ok: bool, paths: list[str]
) -> tuple[Any, ...]:
    """What pass one must make of the files: each line read alone, then "last record wins"."""
    from batchscribe.results.read import SUPERSEDED, _index_line

    counts, kinds, records = ReadCounts(), bytearray(), []
    for lines, is_torn, path in zip(files, torn, paths, strict=True):
        counts.files += 1
        for lineno, line in enumerate(lines, 1):
            kind, key, ok = _index_line(line, counts)
            if kind == FINAL:
                records.append((len(kinds), key, ok))
            elif key == -1:
                counts.note_damaged(path, lineno)
            kinds.append(kind)
        counts.unreadable += is_torn
        if is_torn:
            counts.torn.append(path)
    by_key: dict[int, list[tuple[int, bool]]] = {}
    for line, key, ok in records:
        by_key.setdefault(key, []).append((line, ok))
    ok_ids = kept = 0
    for recs in by_key.values():
        final = recs[-1]
        if keep_ok and not final[1] and any(ok for _, ok in recs):
            final = [r for r in recs if r[1]][-1]
            kept += 1
        ok_ids += final[1]
        for line, _ in recs:
            kinds[line] = FINAL if line == final[0] else SUPERSEDED
    return bytes(kinds), counts, len(by_key), ok_ids, kept


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(_results_lines(), max_size=14), min_size=1, max_size=3),
    st.lists(st.booleans(), min_size=3, max_size=3),
    st.sampled_from([8, 24, 64, 1 << 20]),
    st.booleans(),
)
def test_pass_one_blocks_match_reading_line_by_line(
    tmp_path_factory: pytest.TempPathFactory,
    files: list[list[bytes]],
    torn: list[bool],
    chunk: int,
    keep_ok: bool,
) -> None:
    """Blocks of any size, the writer's layout or not, index every line as it reads alone."""
    where = tmp_path_factory.mktemp("blocks")
    torn = torn[: len(files)]
    paths = []
    for i, (lines, is_torn) in enumerate(zip(files, torn, strict=True)):
        tail = b'{"id":"t","status":"ok"' if is_torn else b""
        (where / f"{i}.jsonl").write_bytes(b"".join(line + b"\n" for line in lines) + tail)
        paths.append(str(where / f"{i}.jsonl"))
    with mock.patch.multiple(results_module, READ_CHUNK=chunk, VECTOR_FROM=0):
        index = index_final(paths, keep_ok=keep_ok)
        blocks = [(first, lines, kinds) for _, first, lines, kinds in index.blocks()]
    kinds, counts, ids, ok, kept = _index_model(files, torn, keep_ok, paths)
    assert bytes(index.kinds) == kinds
    assert index.counts == counts
    assert (index.ids, index.ok, index.kept_ok) == (ids, ok, kept)
    assert [line for _, lines, _ in blocks for line in lines] == [x for f in files for x in f]
    assert b"".join(k for _, _, k in blocks) == kinds


@settings(max_examples=300, deadline=None)
@given(damaged_results(), st.sampled_from([8, 64, 512, 1 << 20]))
def test_pass_one_agrees_with_a_full_parse_of_every_line_of_damaged_files(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, chunk: int
) -> None:
    """Cuts, bit flips and splices anywhere: report, failed, export and merge index exactly the
    lines that parse whole as records, and name every damaged line by FILE:LINE."""
    path = str(tmp_path_factory.mktemp("damaged") / "r.jsonl")
    Path(path).write_bytes(data)
    lines = data.split(b"\n")
    tail = lines.pop()
    with mock.patch.multiple(results_module, READ_CHUNK=chunk, VECTOR_FROM=0):
        index = index_final([path])
        finals = [(n, r["id"]) for _, n, r in final_states([path])]
    kinds, counts, ids, ok, _ = _index_model([lines], [bool(tail)], False, [path])
    assert bytes(index.kinds) == kinds
    assert index.counts == counts
    assert (index.ids, index.ok) == (ids, ok)
    expected = [(n, orjson.loads(lines[n - 1])["id"]) for n, k in enumerate(kinds, 1) if k == FINAL]
    assert finals == expected


@pytest.mark.parametrize("chunk", [300, 1000, 1 << 20])
def test_the_writers_own_files_take_the_fast_paths(tmp_path: Path, chunk: int) -> None:
    """Blocks cut anywhere, records in the writer's layout, a file big enough for the block
    path: no line or record read alone."""
    docs = [record(f"id-{i % 40}", "failed" if i % 7 == 0 else "ok") for i in range(100)]
    path = write(tmp_path / "r.jsonl", *docs)
    refuse = mock.Mock(side_effect=AssertionError("read one at a time"))
    with (
        mock.patch.multiple(results_module, READ_CHUNK=chunk, VECTOR_FROM=0),
        mock.patch.object(results_module._IndexBuilder, "_add_lines", refuse),
        mock.patch.object(tally_module._Tally, "_add_each", refuse),
    ):
        report = build_report([str(path)], charts=True)
    assert (report.items, report.counts.records, report.superseded) == (40, 100, 60)


def test_pass_two_reads_a_line_longer_than_a_block_and_refuses_changed_lines(
    tmp_path: Path,
) -> None:
    """A line bigger than a read is read whole; a file rewritten in place is refused."""
    long = orjson.dumps(record("long", transcription="x " * 3000))
    path = write(tmp_path / "r.jsonl", record("a"), long + b"\n", record("b"))
    with mock.patch.object(results_module, "READ_CHUNK", 256):
        index = index_final([str(path)])
        assert [(n, len(line)) for _, n, line, _ in index.lines(FINAL)][1] == (2, len(long))
        path.write_bytes(path.read_bytes().replace(b"\n", b" ", 1))  # same size, fewer lines
        with pytest.raises(ConfigError, match="replaced or truncated"):
            list(index.lines(FINAL))


_stamps = st.one_of(
    st.builds(
        "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}Z".format,
        st.sampled_from([1969, 1970, 2026, 9999]), st.integers(0, 13), st.integers(0, 32),
        st.integers(0, 25), st.integers(0, 60), st.integers(0, 61), st.integers(0, 999),
    ),
    st.sampled_from([
        "2026-11-25T01:02:03Z", "2026-11-25T01:02:03.456+02:00", "2026-11-25T01:02:03.456",
        "2026-11-25 01:02:03.456Z", "2026-11-25T01:02:03.4\u0665\u0666Z",
        "2026-11-25T01:02:03,456Z", "2026-11-25T01:02:03.456z", "garbage", "",
        "\u0662026-11-25T01:02:03.456Z",
    ]),
    st.sampled_from([None, 5, 1.5, True, [], {}]),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_stamps, max_size=8))
def test_epochs_of_a_batch_are_exactly_epoch_of_each(values: list[Any]) -> None:
    """The batch reading of finish times gives the very same floats (or None) as epoch()."""
    assert epochs(values) == [epoch(v) for v in values]
    assert epochs(values * 3) == [epoch(v) for v in values] * 3


_odd = st.sampled_from([None, True, False, 0, 1, 2, 7, -1, 2.5, "3", "", [], {}, 1e300])


_meta = st.fixed_dictionaries(
    {}, optional={"processing_time_ms": st.one_of(st.integers(0, 5000), st.floats(0, 9e3), _odd)}
)
_response = st.one_of(
    st.fixed_dictionaries(
        {"status": st.sampled_from(["success", "processing", 1])},
        optional={"metadata": st.one_of(_meta, _odd)},
    ),
    _odd,
)


@st.composite
def _report_records(draw: st.DrawFn) -> bytes:
    """A results line for the report: a record with odd values here and there, or not one."""
    kind = draw(st.integers(0, 12))
    if kind == 0:
        return draw(_other_lines)
    status = draw(
        st.sampled_from(["ok", "ok", "ok", "failed", "failed", "submitted", "okay", None])
    )
    fields: dict[str, Any] = {
        "attempts": draw(st.one_of(st.integers(-1, 6), _odd)),
        "finished_at": draw(_stamps),
        "run": draw(st.one_of(st.sampled_from(["r1", "r2", "r3"]), _odd)),
        "http_status": draw(st.one_of(st.sampled_from([200, 429, 503]), _odd)),
        "cause": draw(st.one_of(st.sampled_from(["5xx", "429", "timeout"]), _odd)),
        "error": draw(st.one_of(st.sampled_from(["HTTP 503: down", "a\x07b", "e" * 400]), _odd)),
        "transcription": draw(st.sampled_from(["a b", "word " * 900])),  # short and long lines
        "duration": draw(
            st.one_of(
                st.floats(0, 1e4), st.integers(0, 99), _odd, st.sampled_from([-3.5, 1e308, 7e5])
            )
        ),
        "response": draw(_response),
    }
    rec = record(draw(st.sampled_from(["a", "b", "c", "d", "https://h/x.wav?sig=1"])), "ok")
    rec.update(fields, status=status)
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3)):
        rec.pop(name, None)
    line = orjson.dumps(rec)
    return line[: len(line) // 2] if kind == 1 else line  # torn in the middle: unreadable


def _one_at_a_time(tally: Any, bodies: Any, seqs: Any, kinds: Any) -> None:
    tally._add_each([load_light(body) for body in bodies], seqs, kinds)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(_report_records(), max_size=25), min_size=1, max_size=2),
    st.sampled_from([1, 3, 64]),
    st.sampled_from([64, 1 << 20]),
    st.integers(0, 4),
    st.booleans(),
)
def test_report_batches_match_adding_one_record_at_a_time(
    tmp_path_factory: pytest.TempPathFactory,
    files: list[list[bytes]],
    batch: int,
    chunk: int,
    top: int,
    charts: bool,
) -> None:
    """Totals, top lists, chart data, text, JSON and HTML: batches change nothing."""
    where = tmp_path_factory.mktemp("tally")
    paths = [str(write(where / f"{i}.jsonl", *(x + b"\n" for x in f))) for i, f in enumerate(files)]
    with (
        mock.patch.object(tally_module, "BATCH", batch),
        mock.patch.object(results_module, "READ_CHUNK", chunk),
    ):
        got = build_report(paths, top=top, charts=charts)
        with mock.patch.object(tally_module._Tally, "add", _one_at_a_time):
            want = build_report(paths, top=top, charts=charts)
    assert orjson.dumps(got.as_dict()) == orjson.dumps(want.as_dict())
    assert got.lines(runs=0) == want.lines(runs=0)
    for counter in ("failed_by_cause", "failed_by_status", "errors"):
        assert list(getattr(got, counter).items()) == list(getattr(want, counter).items())
    assert list(got.durations) == list(want.durations)
    assert [(k, list(v)) for k, v in got.timeline.items()] == [
        (k, list(v)) for k, v in want.timeline.items()
    ]
    if charts:
        assert render_html(got) == render_html(want)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_results_lines(), _report_records()), max_size=10))
def test_batch_loaders_match_the_line_loaders(lines: list[bytes]) -> None:
    """load_records and load_light_many read each line as _load_record and load_light do."""
    from batchscribe.results.record import load_record as _load_record

    assert load_records(lines) == [_load_record(line) for line in lines]
    assert load_light_many(lines) == [load_light(line) for line in lines]
    loose = load_light_many(lines, strip=False)
    assert [r is None for r in loose] == [load_light(line) is None for line in lines]


# --------------------------------------------------------------------------- the report


def test_report_totals_over_final_states(tmp_path: Path) -> None:
    """States, causes, HTTP statuses, retries, audio, runs (once each) and the slowest items."""
    one = write(
        tmp_path / "1.jsonl",
        record("a", "failed", attempts=6, cause="5xx", http_status=503),
        record("b", attempts=2, duration=10.0, meta={"processing_time_ms": 900}),
        record("c", "failed", attempts=0, cause="missing", http_status=None, error="not found"),
        record("d", response_status="processing", duration=None, transcription=""),  # (as of 0.1)
        record("f", "submitted", error=None, cause=None, http_status=200, request_id="req-f"),
        run_record("r1"),
    )  # fmt: skip
    two = write(
        tmp_path / "2.jsonl",
        run_record("r1"),  # the same run, as a merged file would carry it
        record("a", attempts=3, duration=5.5, meta={"processing_time_ms": 4000}),
        record("e", "failed", attempts=4, cause="429", http_status=429),
        run_record("r2", ok=1, failed=1),
        b"garbage\n",
    )  # fmt: skip
    report = build_report([str(one), str(two)], top=5)
    assert (report.items, report.ok, report.failed, report.submitted) == (6, 2, 2, 2)
    assert report.failed_by_cause == {"missing": 1, "429": 1}
    assert report.failed_by_status == {"none": 1, "429": 1}
    assert report.retries == (3 - 1) + (2 - 1) + (4 - 1)
    assert report.audio_seconds == pytest.approx(15.5)
    assert [r["run_id"] for r in report.runs] == ["r1", "r2"]
    assert [e["id"] for e in report.slowest] == ["a", "b"]
    assert [e["id"] for e in report.most_attempts] == ["e", "a", "b"]
    assert report.superseded == 1 and report.counts.unreadable == 1
    doc = report.as_dict()
    assert doc["failed_by_http_status"] == {"none": 1, "429": 1}
    assert doc["top_errors"][0]["count"] == 1
    text = "\n".join(report.lines())
    assert "items: 6  ok: 2 (33.3%)  failed: 2  submitted: 2 (answers go to the webhook)" in text
    assert report.as_dict()["submitted"] == 2
    assert "failed by cause: missing: 1  429: 1" in text


def test_impossible_durations_and_times_are_flagged_not_printed_as_hours(tmp_path: Path) -> None:
    """A record's negative or absurd duration (1e308) is left out of the audio hours and
    flagged; absurd run times show as "-": no text, JSON or HTML line prints them as hours."""
    path = write(
        tmp_path / "r.jsonl",
        record("huge", duration=1e308, meta={"processing_time_ms": 1e308}, attempts=2),
        record("negative", duration=-5000.0),
        record("fine", duration=3.0),
        run_record("r1", wall_seconds=1e308, items_per_second=1e308),
        run_record("r2", wall_seconds=-7.0),
    )  # fmt: skip
    report = build_report([str(path)], top=5, charts=True)
    assert report.audio_seconds == 3.0
    assert report.implausible_durations == 2
    assert list(report.durations) == [3.0]
    text = "\n".join(report.lines(runs=0))
    assert "2 ok item(s) with an impossible duration (negative or over a week)" in text
    assert "audio transcribed: 0.001 h (3.0 s)" in text
    assert not re.search(r"[0-9,]{16}", text), text  # no 300-digit "hours" anywhere
    doc = report.as_dict()
    assert doc["audio_seconds"] == 3.0 and doc["implausible_durations"] == 2
    assert all(e["duration"] is None for e in doc["slowest"] if e["id"] != "fine")
    page = render_html(report)
    assert not re.search(r"[0-9,]{16}", page)


def _generate(path: Path, n: int) -> dict[str, Any]:
    """n records (5% failed, every 10th id retried later) and what a report must find."""
    expect = {"ok": 0, "failed": 0, "retries": 0, "audio": 0.0, "items": 0}
    with open(path, "wb") as out:
        for i in range(n):
            failed = i % 20 == 7
            rec = record(
                f"arch/{i // 1000:03d}/c{i}.wav", "failed" if failed else "ok",
                attempts=3 if failed else 1, duration=1.5, run=f"run{i * 4 // n}",
            )  # fmt: skip
            out.write(orjson.dumps(rec) + b"\n")
        for i in range(0, n, 10):  # a later run retries every 10th id: ok, one retry
            rec = record(f"arch/{i // 1000:03d}/c{i}.wav", attempts=2, duration=1.5, run="run9")
            out.write(orjson.dumps(rec) + b"\n")
        out.write(orjson.dumps(run_record("run9")) + b"\n")
    retried = set(range(0, n, 10))
    for i in range(n):
        expect["items"] += 1
        if i in retried:
            expect["ok"] += 1
            expect["retries"] += 1
            expect["audio"] += 1.5
        elif i % 20 == 7:
            expect["failed"] += 1
            expect["retries"] += 2
        else:
            expect["ok"] += 1
            expect["audio"] += 1.5
    return expect


def test_report_streams_a_hundred_thousand_lines(tmp_path: Path) -> None:
    """A 110k-line file reports exact counts (the 1M-line timing is measured by hand)."""
    path = tmp_path / "big.jsonl"
    expect = _generate(path, 100_000)
    report = build_report([str(path)], charts=True)
    assert report.counts.records == 110_000
    assert (report.items, report.ok, report.failed) == (
        expect["items"], expect["ok"], expect["failed"],
    )  # fmt: skip
    assert report.retries == expect["retries"]
    assert report.audio_seconds == pytest.approx(expect["audio"])
    assert report.failed_by_cause == {"5xx": expect["failed"]}
    assert sum(len(t) for t in report.timeline.values()) == 110_000
    assert len(report.durations) == expect["ok"]


def test_light_load_of_the_engines_real_records(sample_results: Path) -> None:
    """The engine's own layout takes the fast path and loses nothing but the transcript."""
    for line in sample_results.read_bytes().splitlines():
        full = orjson.loads(line)
        if "event" not in full:
            assert line.find(b',"transcription":') < line.rfind(b',"duration":')
            assert load_split(line) == {k: v for k, v in full.items() if k not in HEAVY_FIELDS}


def test_report_cli_on_the_sample_archive(sample_results: Path, tmp_path: Path) -> None:
    """`batchscribe report` (text and --json) over the real results of the sample archive."""
    items, runs = read_results(sample_results)
    text = cli("report", sample_results, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "items: 10  ok: 10 (100.0%)  failed: 0" in text.stdout
    assert runs[0]["run_id"] in text.stdout
    done = cli("report", "--json", sample_results, cwd=tmp_path)
    doc = orjson.loads(done.stdout)
    assert doc["items"] == 10 and doc["ok"] == 10 and doc["failed"] == 0
    assert doc["audio_seconds"] == pytest.approx(sum(r["duration"] for r in items), abs=1e-3)
    assert [r["run_id"] for r in doc["runs"]] == [runs[0]["run_id"]]
    assert len(doc["slowest"]) == 10
    missing = cli("report", tmp_path / "nope-*.jsonl", cwd=tmp_path)
    assert missing.returncode == 2 and "matches no results file" in missing.stderr


def test_report_output_never_shows_the_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key that found its way into a record is redacted in text, JSON and HTML output."""
    monkeypatch.setenv("SMALLEST_API_KEY", TEST_KEY)
    path = write(
        tmp_path / "r.jsonl",
        record(f"https://h/a.mp3?key={TEST_KEY}", "failed", error=f"HTTP 400: key {TEST_KEY}"),
        record("b"),
    )  # fmt: skip
    page = tmp_path / "page.html"
    for args in (["--json"], [], ["--html", page]):
        code, out, err = main(capsys, "report", path, *args)
        assert code == 0, err
        assert TEST_KEY not in out + err
    assert TEST_KEY not in page.read_text()
    assert "***" in page.read_text()


def test_display_id_hides_a_url_query_and_escapes_control_characters() -> None:
    """Signed URLs lose their signature in reports; control characters cannot garble a line."""
    assert display_id("https://b.s3.amazonaws.com/a.mp3?X-Amz-Signature=abc") == (
        "https://b.s3.amazonaws.com/a.mp3?…"
    )
    assert display_id("a\nb\x1b") == "a\\nb\\x1b"


# --------------------------------------------------------------------------- the HTML page


def _html_report(tmp_path: Path) -> Path:
    docs: list[dict[str, Any]] = []
    for run, (start, n) in enumerate([(0, 60), (7200, 90)]):
        for i in range(n):
            second = start + i * 7 + (i % 3)
            stamp = (
                f"2026-11-25T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}.000Z"
            )
            status = "failed" if i % 11 == 0 else "ok"
            cause = ["5xx", "429", "timeout", "network"][i % 4]
            docs.append(record(f"r{run}/c{i}.wav", status, cause=cause, finished_at=stamp,
                               run=f"run{run}", duration=1 + (i * 37 % 23) / 2,
                               http_status=503 if cause == "5xx" else None))  # fmt: skip
        docs.append(run_record(f"run{run}", started_at=docs[-n]["finished_at"]))
    path = write(tmp_path / "r.jsonl", *docs)
    page = tmp_path / "report.html"
    done = cli("report", path, "--html", page, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return page


def test_html_report_is_self_contained(tmp_path: Path) -> None:
    """One file: inline CSS and SVG, no script, nothing fetched; every chart is there."""
    html = _html_report(tmp_path).read_text()
    assert html.startswith("<!DOCTYPE html>")
    for banned in ("<script", "src=", "<link", "url(", "@import"):
        assert banned not in html
    assert html.count("<svg") == 4  # timeline, outcomes, HTTP statuses, durations
    for title in ("Items finished over time", "Outcomes and failure causes", "Audio duration"):
        assert title in html
    assert "time since the run started" in html and "audio duration (s)" in html


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """A real browser draws the page: the screenshot is colourful, not blank."""
    from PIL import Image

    page = _html_report(tmp_path)
    shot = tmp_path / "shot.png"
    assert CHROMIUM is not None
    subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
            "--window-size=1200,1600", page.as_uri(),
        ],
        capture_output=True, timeout=90, check=True,
    )  # fmt: skip
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1200, 1600)
        colours = rgb.getcolors(maxcolors=1 << 20) or []
    non_white = sum(n for n, c in colours if min(c) < 235)
    assert len(colours) > 200  # text antialiasing, several chart colours
    assert non_white > 0.04 * 1200 * 1600
    palette = {"#4e79a7": (78, 121, 167), "#59a14f": (89, 161, 79)}  # line 1, ok bar
    present = {c for _, c in colours}
    assert all(rgb_value in present for rgb_value in palette.values())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.floats(-50, 1e5), st.integers(-50, 10**6)), max_size=40),
    st.integers(1, 30),
    st.sampled_from([1.0, 60.0, 3600.0]),
    st.sampled_from([0.1, 0.25, 1.0, 2.5, 50.0]),
)
def test_histogram_counts_runs_of_values_as_one_at_a_time(
    values: list[float], bins: int, scale: float, step: float
) -> None:
    """Counting a run of a bin at a time gives the counts of a value at a time; a negative
    duration (a server's bogus figure) counts in the first bin instead of crashing the page."""
    from batchscribe.report.html import _bin_counts

    ordered = sorted(values)
    want = [0] * bins
    for value in ordered:
        want[max(0, min(bins - 1, int(value / scale / step)))] += 1
    assert _bin_counts(ordered, bins, scale, step) == want


def test_html_report_of_empty_and_failure_only_files(tmp_path: Path) -> None:
    """Nothing to chart is said in words, never a crash or an empty axis."""
    empty = write(tmp_path / "empty.jsonl")
    html = render_html(build_report([str(empty)], charts=True))
    assert "No finish times recorded." in html and "No ok items with a duration." in html
    failed = write(tmp_path / "f.jsonl", record("a", "failed", finished_at="bad"))
    html = render_html(build_report([str(failed)], charts=True))
    assert "failed: 5xx" in html and "HTTP 503" in html and "No run records." in html


# --------------------------------------------------------------------------- failed items


def test_failed_manifest_lists_final_failures_with_source_and_metadata(tmp_path: Path) -> None:
    """Ids whose last record failed come back as manifest entries, filtered by cause."""
    path = write(
        tmp_path / "r.jsonl",
        record("a", "failed", cause="5xx", metadata={"speaker": "Ada", "n": 1}),
        record("b", "failed", cause="timeout", source="https://h/b.mp3?sig=1"),
        record("c", "failed", cause="429"),
        record("c"),
        record("d", "failed", cause="missing", params={"language": "de"}),
    )  # fmt: skip
    entries = list(failed_manifest([str(path)]))
    assert entries == [
        {"id": "a", "path": "/srv/archive/a", "speaker": "Ada", "n": 1},
        {"id": "b", "url": "https://h/b.mp3?sig=1"},
        {"id": "d", "path": "/srv/archive/d", "language": "de"},
    ]
    only = [e["id"] for e in failed_manifest([str(path)], causes={"timeout", "missing"})]
    assert only == ["b", "d"]


def test_failed_cli_causes_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--cause takes repeats and comma lists, rejects unknown causes, --out never hits input."""
    path = write(
        tmp_path / "r.jsonl", record("a", "failed", cause="5xx"),
        record("b", "failed", cause="network"), record("c", "failed", cause="4xx"),
    )  # fmt: skip
    code, out, err = main(capsys, "failed", path, "--cause", "5xx,network", "--cause", "4xx")
    assert [orjson.loads(x)["id"] for x in out.splitlines()] == ["a", "b", "c"]
    assert "3 failed item(s) listed" in err
    again = tmp_path / "again.jsonl"
    code, out, err = main(capsys, "failed", path, "--cause", "network", "--out", again)
    assert code == 0 and out == ""
    assert again.read_bytes().count(b"\n") == 1
    code, _, err = main(capsys, "failed", path, "--cause", "5xx,oops")
    assert code == 2 and "'oops' is not a failure cause" in err
    code, _, err = main(capsys, "failed", path, "--out", path)
    assert code == 2 and "is one of the results files" in err


def test_failed_into_a_pipe_closed_early_is_not_an_error(tmp_path: Path) -> None:
    """`batchscribe failed r.jsonl | head -1` exits 0 without a traceback or internal error."""
    path = write(tmp_path / "r.jsonl", *(record(f"item-{i:05d}", "failed") for i in range(5000)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchscribe", "failed", str(path)], cwd=tmp_path, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert orjson.loads(proc.stdout.readline())["id"] == "item-00000"
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0
    assert b"error" not in err


def test_failed_then_run_retries_exactly_what_failed(tmp_path: Path, make_archive: Any) -> None:
    """`failed r > again && run again --out r --retry-failed` turns the failures ok."""
    archive = make_archive(tmp_path, 3)
    with open(archive.manifest, "ab") as out:
        out.write(b'{"id": "late", "path": "audio/late.wav", "speaker": "Zoe", "n": 99}\n')
    first = cli("run", archive.manifest, "--emulate", "--out", "r.jsonl", cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    shutil.copy(archive.paths["clip-000"], tmp_path / "audio" / "late.wav")
    listed = cli("failed", "r.jsonl", "--out", "again.jsonl", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    again = [orjson.loads(x) for x in (tmp_path / "again.jsonl").read_bytes().splitlines()]
    assert again == [{"id": "late", "path": str(tmp_path / "audio" / "late.wav"),
                      "speaker": "Zoe", "n": 99}]  # fmt: skip
    rerun = cli("run", "again.jsonl", "--emulate", "--out", "r.jsonl", "--retry-failed",
                cwd=tmp_path)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    final = {r["id"]: r for _, _, r in final_states([str(tmp_path / "r.jsonl")])}
    assert {k: r["status"] for k, r in final.items()} == dict.fromkeys(
        ["clip-000", "clip-001", "clip-002", "late"], "ok"
    )
    assert final["late"]["metadata"] == {"speaker": "Zoe", "n": 99}
    assert cli("failed", "r.jsonl", cwd=tmp_path).stdout == ""


# --------------------------------------------------------------------------- merge


def test_merge_keeps_last_states_never_loses_an_ok_and_carries_runs(tmp_path: Path) -> None:
    """Last record wins across inputs in order, except that an ok outlives a later failure."""
    one = write(tmp_path / "1.jsonl", record("a"), record("b", "failed"), record("c"),
                run_record("r1"))  # fmt: skip
    two = write(tmp_path / "2.jsonl", record("a", "failed"), record("b", attempts=4),
                record("d", "failed"), run_record("r1"), run_record("r2"))  # fmt: skip
    out = tmp_path / "all.jsonl"
    summary = merge_results([str(one), str(two)], str(out))
    items, runs = read_results(out)
    assert [(r["id"], r["status"], r["attempts"]) for r in items] == [
        ("a", "ok", 1), ("c", "ok", 1), ("b", "ok", 4), ("d", "failed", 1),
    ]  # fmt: skip
    assert [r["run_id"] for r in runs] == ["r1", "r2"]
    assert (summary.items, summary.ok, summary.kept_ok, summary.runs) == (4, 3, 1, 2)
    # Merging into an existing file adds to it: what it holds comes first, and stays.
    three = write(tmp_path / "3.jsonl", record("e"), record("d"))
    merge_results([str(three)], str(out))
    items, runs = read_results(out)
    assert sorted((r["id"], r["status"]) for r in items) == [
        ("a", "ok"), ("b", "ok"), ("c", "ok"), ("d", "ok"), ("e", "ok"),
    ]  # fmt: skip
    assert len(runs) == 2


def test_merge_refuses_its_input_and_a_locked_output(tmp_path: Path) -> None:
    """--out may not be an input, and a results file a run holds is never written."""
    one = write(tmp_path / "1.jsonl", record("a"))
    with pytest.raises(ConfigError, match="both an input and --out"):
        merge_results([str(one)], str(one))
    busy = tmp_path / "busy.jsonl"
    store = ResultsStore(str(busy))
    store.open()
    try:
        with pytest.raises(ResultsBusy):
            merge_results([str(one)], str(busy))
        done = cli("merge", one, "--out", busy, cwd=tmp_path)
        assert done.returncode == 75, done.stderr
    finally:
        store.close()
    assert busy.read_bytes() == b""


@pytest.mark.parametrize("dangling", [False, True], ids=["link", "dangling-link"])
def test_outputs_named_by_a_symlink_are_written_through_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dangling: bool
) -> None:
    """merge --out, failed --out and report --html given a symlink write the link's target
    (atomically, beside the target) and leave the link a link; a file already there keeps its
    permission bits."""
    one = write(tmp_path / "1.jsonl", record("a"), record("b", "failed"))
    real = tmp_path / "real"
    real.mkdir()
    links = tmp_path / "links"
    links.mkdir()
    for name in ("all.jsonl", "failed.jsonl", "report.html"):
        if not dangling:
            (real / name).write_bytes(b"")
            (real / name).chmod(0o600)
        (links / name).symlink_to(real / name)
    runs = [
        ("merge", one, "--out", links / "all.jsonl"),
        ("failed", one, "--out", links / "failed.jsonl"),
        ("report", one, "--html", links / "report.html"),
    ]
    for args in runs:
        code, _, err = main(capsys, *args)
        assert code == 0, err
    for name in ("all.jsonl", "failed.jsonl", "report.html"):
        assert (links / name).is_symlink(), name
        assert (real / name).stat().st_size > 0, name
        if not dangling:
            assert (real / name).stat().st_mode & 0o777 == 0o600, name
    assert [r["id"] for r in read_results(real / "all.jsonl")[0]] == ["a", "b"]
    assert sorted(os.listdir(links)) == ["all.jsonl", "failed.jsonl", "report.html"]
    assert sorted(os.listdir(real)) == ["all.jsonl", "failed.jsonl", "report.html"]


def test_merge_cli_with_globs_feeds_a_resumable_run(sample_results: Path, tmp_path: Path) -> None:
    """`merge 'part-*.jsonl' --out all` makes a file a run resumes from: nothing is resent."""
    lines = sample_results.read_bytes().splitlines(keepends=True)
    (tmp_path / "part-1.jsonl").write_bytes(b"".join(lines[:4]))
    (tmp_path / "part-2.jsonl").write_bytes(b"".join(lines[4:]))
    done = cli("merge", "part-*.jsonl", "--out", "all.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "-> 10 item(s) (10 ok, 0 failed)" in done.stdout
    rerun = cli("run", SAMPLES / "archive.jsonl", "--emulate", "--out", "all.jsonl",
                cwd=tmp_path)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert "skipped (done earlier): 10" in rerun.stdout


def test_readme_documents_the_results_commands() -> None:
    """Each command has a README usage line, and every flag the section names exists."""
    import re

    from batchscribe.cli import build_parser

    readme = (REPO / "README.md").read_text()
    section = readme.split("## Reading results", 1)[1].split("\n## ", 1)[0]
    assert "batchscribe failed r.jsonl > again.jsonl" in readme
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in ("report", "failed", "export", "merge"):
        usage = re.search(rf"\*\*`batchscribe {command} ([^`]*)`\*\*", section)
        assert usage, f"no usage line for {command}"
        helptext = sub.choices[command].format_help()  # type: ignore[attr-defined]
        for flag in re.findall(r"--[a-z][a-z-]+", usage.group(1)):
            assert flag in helptext, (command, flag)


@pytest.fixture(autouse=True)
def _keep_cwd() -> Iterator[None]:
    cwd = os.getcwd()
    yield
    os.chdir(cwd)


def test_slowest_items_use_the_servers_time_else_the_clients(tmp_path: Path) -> None:
    """Pulse answers carry no processing time: the slowest list falls back to the request's
    elapsed_ms; a Pulse Pro record's own processing_time_ms wins over it."""
    pro = record("pro", elapsed_ms=50, response={"metadata": {"processing_time_ms": 900}})
    path = write(
        tmp_path / "r.jsonl",
        record("fast", elapsed_ms=120), record("slow", elapsed_ms=4000), pro, record("none"),
    )  # fmt: skip
    report = build_report([str(path)])
    assert [(e["id"], e["processing_time_ms"]) for e in report.slowest] == [
        ("slow", 4000.0), ("pro", 900.0), ("fast", 120.0),
    ]  # fmt: skip
