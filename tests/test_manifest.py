"""Manifest reading: every source kind, item fields, FILE:LINE problems, robustness, streaming."""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from unittest.mock import patch

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchscribe.ids import DigestSet, id_digest, id_key
from batchscribe.items import CLOUD_OBJECT, LOCAL_FILE, URL
from batchscribe.manifest import (
    Item,
    ManifestError,
    Problem,
    check_sources,
    iter_sources,
)
from batchscribe.manifest import lines as manifest_lines
from batchscribe.pulse import PulseParams
from batchscribe.results import ResumeState, Settler, Skipped
from batchscribe.results import resume as results_module
from batchscribe.run.plan import reader_settles
from batchscribe.shard import Shard, ShardFilter

# --------------------------------------------------------------------------- helpers


def read(*sources: str | Path, stdin: io.BytesIO | None = None) -> list[Item | Problem]:
    """Everything ``iter_sources`` yields for these sources."""
    return list(iter_sources([str(s) for s in sources], stdin=stdin))


def items(results: Iterable[Item | Problem]) -> list[Item]:
    return [r for r in results if isinstance(r, Item)]


def problems(results: Iterable[Item | Problem]) -> list[str]:
    return [str(r) for r in results if isinstance(r, Problem)]


def jsonl(path: Path, *records: object) -> Path:
    """Write records as JSON lines (a str record is written as the raw line)."""
    lines = [r if isinstance(r, str) else orjson.dumps(r).decode() for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF")
    return path


# --------------------------------------------------------------------------- JSONL


def test_jsonl_item_carries_id_source_params_metadata_and_origin(tmp_path: Path) -> None:
    """A JSONL record becomes an item with resolved path, validated params, metadata, origin."""
    manifest = jsonl(
        tmp_path / "m.jsonl",
        {"id": "a", "path": "audio/a.wav", "language": "de", "diarize": True, "speaker": "Ada"},
    )
    [item] = read(manifest)
    assert item == Item(
        id="a",
        source=str(tmp_path / "audio" / "a.wav"),
        kind=LOCAL_FILE,
        params={"language": "de", "diarize": True},
        metadata={"speaker": "Ada"},
        origin=f"{manifest}:1",
    )


@pytest.mark.parametrize("suffix", [".ndjson", ".json", ".JSONL"])
def test_other_jsonl_extensions_read_as_jsonl(tmp_path: Path, suffix: str) -> None:
    """.ndjson, .json and upper-case extensions are read as JSON Lines."""
    manifest = jsonl(tmp_path / f"m{suffix}", {"path": "a.wav"})
    assert [i.id for i in items(read(manifest))] == ["a.wav"]


def test_each_entry_says_its_source_kind(tmp_path: Path) -> None:
    """A path is a local file, a url a URL and an s3:// / gs:// path a cloud object: the kind is
    read once, from the manifest, never guessed again from the string."""
    manifest = jsonl(
        tmp_path / "m.jsonl",
        {"id": "f", "path": "a.wav"},
        {"id": "u", "url": "https://h/a.wav"},
        {"id": "s", "path": "s3://bucket/a.wav"},
        {"id": "g", "path": "gs://bucket/a.wav"},
    )
    kinds = {item.id: item.kind for item in items(read(manifest))}
    assert kinds == {"f": LOCAL_FILE, "u": URL, "s": CLOUD_OBJECT, "g": CLOUD_OBJECT}


def test_item_without_extra_fields_has_empty_params_and_no_metadata(tmp_path: Path) -> None:
    """No overrides gives an empty params mapping and metadata None."""
    [item] = read(jsonl(tmp_path / "m.jsonl", {"path": "a.wav"}))
    assert isinstance(item, Item)
    assert item.params == {}
    assert item.metadata is None


def test_unknown_fields_go_to_metadata_with_their_json_types(tmp_path: Path) -> None:
    """Fields that are not id/path/url or Pulse parameters are kept as metadata, as written."""
    record = {"path": "a.wav", "tags": ["x", "y"], "n": 3, "nested": {"k": None}, "Model": "z"}
    [item] = read(jsonl(tmp_path / "m.jsonl", record))
    assert isinstance(item, Item)
    assert item.metadata == {"tags": ["x", "y"], "n": 3, "nested": {"k": None}, "Model": "z"}


def test_json_null_parameter_means_no_override(tmp_path: Path) -> None:
    """A parameter set to null is left to the run's default rather than rejected."""
    [item] = read(jsonl(tmp_path / "m.jsonl", {"path": "a.wav", "model": None, "diarize": None}))
    assert isinstance(item, Item)
    assert item.params == {}


def test_url_item(tmp_path: Path) -> None:
    """A url record is a URL item whose id defaults to the URL."""
    url = "https://example.org/a.mp3?sig=1"
    [item] = read(jsonl(tmp_path / "m.jsonl", {"url": url, "language": "fr"}))
    assert isinstance(item, Item)
    assert (item.id, item.source, item.is_url, item.params) == (url, url, True, {"language": "fr"})


def test_upper_case_http_scheme_is_accepted(tmp_path: Path) -> None:
    """URL schemes are case-insensitive."""
    [item] = read(jsonl(tmp_path / "m.jsonl", {"url": "HTTP://example.org/a.wav"}))
    assert isinstance(item, Item)


# --------------------------------------------------------------------------- ids


def test_id_defaults_to_the_path_as_written(tmp_path: Path) -> None:
    """Without an id, the id is the path exactly as the manifest wrote it."""
    [item] = read(jsonl(tmp_path / "m.jsonl", {"path": "./sub/../a.wav"}))
    assert isinstance(item, Item)
    assert item.id == "./sub/../a.wav"
    assert item.source == str(tmp_path / "a.wav")


def test_integer_id_becomes_a_string(tmp_path: Path) -> None:
    """An integer id is accepted and converted to its decimal string."""
    [item] = read(jsonl(tmp_path / "m.jsonl", {"id": 42, "path": "a.wav"}))
    assert isinstance(item, Item)
    assert item.id == "42"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, '"id" must be a string or an integer, not a boolean'),
        (1.5, '"id" must be a string or an integer, not a number'),
        (["a"], '"id" must be a string or an integer, not an array'),
        ("", '"id" is empty'),
    ],
)
def test_bad_ids_are_problems(tmp_path: Path, value: object, message: str) -> None:
    """Ids that are not non-empty strings or integers are reported at their line."""
    manifest = jsonl(tmp_path / "m.jsonl", {"id": value, "path": "a.wav"})
    assert problems(read(manifest)) == [f"{manifest}:1: {message}"]


def test_odd_ids_are_kept_as_given(tmp_path: Path) -> None:
    """Ids with separators, '..', control characters, NUL or newlines are kept verbatim."""
    odd = ["a/b", "../up", "tab\there", "nul\x00x", "new\nline", " spaced "]
    manifest = jsonl(tmp_path / "m.jsonl", *({"id": i, "path": "a.wav"} for i in odd))
    assert [i.id for i in items(read(manifest))] == odd


def test_duplicate_id_in_one_file_keeps_the_first(tmp_path: Path) -> None:
    """The first occurrence of an id wins; later ones are problems."""
    manifest = jsonl(
        tmp_path / "m.jsonl",
        {"id": "x", "path": "1.wav"},
        {"id": "x", "path": "2.wav"},
        {"path": "x"},
    )
    results = read(manifest)
    assert [i.source for i in items(results)] == [str(tmp_path / "1.wav")]
    assert problems(results) == [
        f"{manifest}:2: duplicate id 'x' (first seen earlier)",
        f"{manifest}:3: duplicate id 'x' (first seen earlier)",
    ]


def test_duplicate_ids_across_sources(tmp_path: Path) -> None:
    """Duplicate detection spans every source of a run, whatever their kinds."""
    first = jsonl(tmp_path / "a.jsonl", {"id": "a.wav", "path": "x.wav"})
    second = tmp_path / "b.txt"
    second.write_text("a.wav\nb.wav\n")
    third = tmp_path / "c.csv"
    third.write_text("id,path\nb.wav,y.wav\n")
    results = read(first, second, third)
    assert [i.origin for i in items(results)] == [f"{first}:1", f"{second}:2"]
    assert problems(results) == [
        f"{second}:1: duplicate id 'a.wav' (first seen earlier)",
        f"{third}:2: duplicate id 'b.wav' (first seen earlier)",
    ]


def test_shared_seen_set_is_used_and_filled(tmp_path: Path) -> None:
    """A caller's seen set marks ids as taken, and valid items' ids are added to it."""
    seen = DigestSet()
    seen.add(id_digest("taken"))
    manifest = jsonl(tmp_path / "m.jsonl", {"id": "taken", "path": "a"}, {"id": "new", "path": "b"})
    results = list(iter_sources([str(manifest)], seen=seen))
    assert problems(results) == [f"{manifest}:1: duplicate id 'taken' (first seen earlier)"]
    assert id_digest("new") in seen


def test_invalid_items_do_not_take_their_id(tmp_path: Path) -> None:
    """A rejected line does not reserve its id, so a later valid line with it is accepted."""
    manifest = jsonl(
        tmp_path / "m.jsonl", {"id": "x", "path": "a", "language": "xx"}, {"id": "x", "path": "b"}
    )
    assert [i.origin for i in items(read(manifest))] == [f"{manifest}:2"]


# --------------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_manifest_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths resolve against the manifest's folder, not the working directory."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "lists").mkdir()
    manifest = jsonl(
        tmp_path / "lists" / "m.jsonl",
        {"path": "a.wav"},
        {"path": "../audio/b.wav"},
        {"path": "/abs/c.wav"},
    )
    assert [i.source for i in items(read(os.path.relpath(manifest)))] == [
        str(tmp_path / "lists" / "a.wav"),
        str(tmp_path / "audio" / "b.wav"),
        "/abs/c.wav",
    ]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"path": "a.wav", "url": "https://h/a"}, 'give either "path" or "url", not both'),
        ({"id": "a"}, 'needs a "path" or a "url" field'),
        ({"path": 3}, '"path" must be a string, not a number'),
        ({"path": ""}, '"path" is empty'),
        ({"path": "a\x00b.wav"}, "\"path\" contains a NUL character: 'a\\x00b.wav'"),
        ({"url": None}, 'needs a "path" or a "url" field'),
        ({"url": {"u": 1}}, '"url" must be a string, not an object'),
    ],
)
def test_source_field_problems(tmp_path: Path, record: object, message: str) -> None:
    """Records without exactly one usable path or url are reported with the reason."""
    manifest = jsonl(tmp_path / "m.jsonl", {"path": "ok.wav"}, record)
    assert problems(read(manifest)) == [f"{manifest}:2: {message}"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://h/a.wav", "url must start with http:// or https://, not 'ftp://h/a.wav'"),
        ("file:///a.wav", "url must start with http:// or https://, not 'file:///a.wav'"),
        ("s3://bucket/a.wav", "url must start with http:// or https://, not 's3://bucket/a.wav'"),
        ("example.org/a.wav", "url must start with http:// or https://, not 'example.org/a.wav'"),
        ("https://", "url has no host: 'https://'"),
        ("http:///a.wav", "url has no host: 'http:///a.wav'"),
        ("https://h/a\nb", "url contains unprintable characters: 'https://h/a\\nb'"),
    ],
)
def test_bad_urls_are_problems(tmp_path: Path, url: str, message: str) -> None:
    """Only http(s) URLs with a host are accepted."""
    manifest = jsonl(tmp_path / "m.jsonl", {"url": url})
    assert problems(read(manifest)) == [f"{manifest}:1: {message}"]


# --------------------------------------------------------------------------- per-item params


def test_invalid_parameter_value_is_a_problem_with_coerce_params_message(tmp_path: Path) -> None:
    """A bad parameter value is reported with the Pulse module's own explanation."""
    manifest = jsonl(
        tmp_path / "m.jsonl",
        {"path": "a.wav", "diarize": "maybe"},
        {"path": "b.wav", "webhook_method": "GET"},
    )
    assert problems(read(manifest)) == [
        f"{manifest}:1: diarize must be true or false, not 'maybe'",
        f"{manifest}:2: webhook_method must be POST or PUT, not 'GET'",
    ]


def test_parameter_values_are_normalised(tmp_path: Path) -> None:
    """Parameter values come out as coerce_param normalises them."""
    manifest = jsonl(
        tmp_path / "m.jsonl",
        {"path": "a.wav", "model": "pulse-pro", "webhook_method": "put", "redact_pii": "yes"},
    )
    [item] = read(manifest)
    assert isinstance(item, Item)
    assert item.params == {"model": "pulse-pro", "webhook_method": "PUT", "redact_pii": True}


def test_url_item_with_pulse_pro_is_an_item(tmp_path: Path) -> None:
    """A URL with model=pulse-pro set on the item is an item (it goes through the client:
    pulse-pro takes no URL input), like a file with it."""
    manifest = jsonl(
        tmp_path / "m.jsonl",
        {"url": "https://h/a.wav", "model": "pulse-pro"},
        {"path": "a.wav", "model": "pulse-pro"},
        {"url": "https://h/b.wav", "model": "pulse"},
    )
    results = read(manifest)
    assert problems(results) == []
    assert len(items(results)) == 3


def test_webhook_without_pulse_pro_on_the_item_is_a_problem(tmp_path: Path) -> None:
    """An item that sets model=pulse and a webhook contradicts itself."""
    manifest = jsonl(
        tmp_path / "m.jsonl",
        {"path": "a.wav", "model": "pulse", "webhook_url": "https://hook/x"},
        {"path": "b.wav", "webhook_url": "https://hook/x"},  # model left to the run: engine checks
    )
    assert problems(read(manifest)) == [
        f"{manifest}:1: webhook parameters need model=pulse-pro, not pulse"
    ]


def test_items_are_checked_with_the_runs_parameters_when_given(tmp_path: Path) -> None:
    """With the run's parameters, an item whose own fields do not fit with them (a webhook
    under the run's pulse, redaction under the run's fr) is a FILE:LINE problem; an item whose
    own fields make it fit is an item, and so is a URL under the run's pulse-pro (it goes
    through the client)."""
    manifest = jsonl(
        tmp_path / "m.jsonl",
        {"path": "a.wav", "webhook_url": "https://hook/x"},
        {"path": "b.wav", "redact_pci": True},
        {"path": "c.wav", "redact_pci": True, "language": "hi"},
        {"url": "https://h/d.wav"},
        {"path": "e.wav"},
    )
    fr = list(iter_sources([str(manifest)], defaults=PulseParams(language="fr")))
    assert problems(fr) == [
        f"{manifest}:1: webhook parameters need model=pulse-pro, not pulse",
        f"{manifest}:2: redact_pci works with language en or hi only, not fr",
    ]
    assert [i.id for i in items(fr)] == ["c.wav", "https://h/d.wav", "e.wav"]
    pro = list(iter_sources([str(manifest)], defaults=PulseParams(model="pulse-pro")))
    assert problems(pro) == []
    assert "https://h/d.wav" in [i.id for i in items(pro)]


# --------------------------------------------------------------------------- JSONL problems


def test_jsonl_line_problems_name_file_and_line(tmp_path: Path) -> None:
    """Invalid JSON and non-object lines are reported at their physical line; others survive."""
    manifest = jsonl(
        tmp_path / "m.jsonl",
        '{"path": "a.wav"}',
        "",
        '{"path": "b.wav",',
        "[1, 2]",
        '"just a string"',
        "{'path': 'c.wav'}",
        '{"path": "d.wav"} trailing',
        "   ",
        '{"path": "e.wav"}',
    )
    results = read(manifest)
    assert [i.id for i in items(results)] == ["a.wav", "e.wav"]
    found = problems(results)
    assert found[:3] == [
        f"{manifest}:3: invalid JSON: unexpected end of data",
        f"{manifest}:4: expected a JSON object, got an array",
        f"{manifest}:5: expected a JSON object, got a string",
    ]
    # The reason is orjson's own wording; the location and the column are ours.
    assert found[3].startswith(f"{manifest}:6: invalid JSON: ")
    assert found[3].endswith(" (column 2)")
    assert found[4].startswith(f"{manifest}:7: invalid JSON: ")
    assert found[4].endswith(" (column 19)")
    assert len(found) == 5


def test_json_array_file_is_one_problem_with_a_fix(tmp_path: Path) -> None:
    """A .json file holding an array gets one problem saying to write JSON Lines, not one a line."""
    manifest = tmp_path / "m.json"
    manifest.write_text('[\n  {"path": "a.wav"},\n  {"path": "b.wav"}\n]\n')
    assert read(manifest) == [
        Problem(
            str(manifest), 1, "this is a JSON array, not JSON Lines: write one JSON object per line"
        )
    ]


def test_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    """A UTF-8 BOM and CRLF endings are accepted; blank lines are skipped but still counted."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(
        b'\xef\xbb\xbf{"path": "a.wav"}\r\n\r\n \t\r\n{"path": "b.wav", "x": 1\r\n'
    )
    results = read(manifest)
    assert [i.id for i in items(results)] == ["a.wav"]
    assert problems(results) == [f"{manifest}:4: invalid JSON: unexpected end of data"]


def test_invalid_utf8_spoils_only_its_line(tmp_path: Path) -> None:
    """A line with invalid UTF-8 is one problem; the lines around it are read normally."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"path": "a.wav"}\n{"path": "\xff\xfe.wav"}\n{"path": "c.wav"}\n')
    results = read(manifest)
    assert [i.id for i in items(results)] == ["a.wav", "c.wav"]
    assert problems(results) == [f"{manifest}:2: invalid UTF-8"]


def test_ten_megabyte_line_is_read(tmp_path: Path) -> None:
    """A valid 10 MB JSON line is an item like any other."""
    blob = "x" * (10 * 1000 * 1000)
    manifest = jsonl(tmp_path / "m.jsonl", {"path": "a.wav", "blob": blob}, {"path": "b.wav"})
    results = read(manifest)
    assert [i.id for i in items(results)] == ["a.wav", "b.wav"]
    first = items(results)[0]
    assert first.metadata is not None
    assert len(first.metadata["blob"]) == len(blob)


def test_line_over_16_mib_is_skipped_with_a_problem(tmp_path: Path) -> None:
    """A line longer than the cap is one problem and reading resumes at the next line."""
    manifest = tmp_path / "m.jsonl"
    with manifest.open("wb") as out:
        out.write(b'{"path": "' + b"x" * (17 * 1024 * 1024) + b'.wav"}\n')
        out.write(b'{"path": "b.wav"}\n')
    results = read(manifest)
    assert problems(results) == [f"{manifest}:1: line is longer than 16 MiB; skipped"]
    assert [i.origin for i in items(results)] == [f"{manifest}:2"]


@pytest.mark.parametrize("name", ["m.jsonl", "m.csv", "m.txt", "m.unknown"])
@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n"])
def test_empty_manifests_yield_nothing(tmp_path: Path, name: str, content: bytes) -> None:
    """Empty, blank-only and BOM-only manifests of every kind yield no items and no problems."""
    manifest = tmp_path / name
    manifest.write_bytes(content)
    assert read(manifest) == []


# --------------------------------------------------------------------------- messages


def test_messages_are_one_printable_line_of_bounded_length(tmp_path: Path) -> None:
    """User content in messages is escaped and cut, so a problem is one short printable line."""
    manifest = jsonl(
        tmp_path / "m.jsonl",
        {"id": "a\x1b[31m\nb", "path": "1.wav"},
        {"id": "a\x1b[31m\nb", "path": "2.wav"},
        {"path": "a.wav", "language": "\u2028" * 50_000},
        {"url": "ftp://" + "y" * 50_000},
    )
    found = problems(read(manifest))
    assert found[0] == f"{manifest}:2: duplicate id 'a\\x1b[31m\\nb' (first seen earlier)"
    assert len(found) == 3
    for text in found:
        assert text.isprintable()
        assert len(text) < len(str(manifest)) + 600


def test_control_characters_in_the_manifest_name_are_escaped(tmp_path: Path) -> None:
    """A manifest file name with a newline does not break the FILE:LINE line."""
    manifest = jsonl(tmp_path / "bad\nname.jsonl", "{")
    [problem] = read(manifest)
    assert isinstance(problem, Problem)
    assert str(problem).isprintable()
    assert "bad\\nname.jsonl:1:" in str(problem)


# --------------------------------------------------------------------------- CSV


def test_csv_rows_become_items(tmp_path: Path) -> None:
    """CSV rows map header names to fields; empty cells are absent; bool params come as text."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "id,path,url,language,diarize,speaker\n"
        "a,audio/a.wav,,de,true,Ada\n"
        ",b.wav,,,FALSE,\n"
        "c,,https://h/c.wav,,,\n"
    )
    assert read(manifest) == [
        Item("a", str(tmp_path / "audio/a.wav"), LOCAL_FILE, {"language": "de", "diarize": True},
             {"speaker": "Ada"}, f"{manifest}:2"),
        Item("b.wav", str(tmp_path / "b.wav"), LOCAL_FILE, {"diarize": False}, None,
             f"{manifest}:3"),
        Item("c", "https://h/c.wav", URL, {}, None, f"{manifest}:4"),
    ]  # fmt: skip


def test_csv_cells_are_stripped_and_short_rows_accepted(tmp_path: Path) -> None:
    """Spaces around cells are dropped, and a row with fewer cells than the header is fine."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("path , language, note\n a.wav , en \n")
    [item] = read(manifest)
    assert isinstance(item, Item)
    assert (item.id, item.params, item.metadata) == ("a.wav", {"language": "en"}, None)


def test_csv_row_problems(tmp_path: Path) -> None:
    """Bad CSV rows are reported at their line: too many cells, bad params, no source."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,url,model,\n"
        "a.wav,,,\n"
        "b.wav,,,,extra\n"
        "c.wav,,pulse-max,\n"
        ",https://h/d.wav,pulse-pro,\n"
        ",,pulse,\n"
        "e.wav,,,stray\n"
        ",,,\n"
        "\n"
        "f.wav,ftp://h/x,,\n"
    )
    results = read(manifest)
    assert [i.id for i in items(results)] == ["a.wav", "https://h/d.wav"]  # (d: via client)
    assert problems(results) == [
        f"{manifest}:3: row has 5 cells but the header has 4",
        f"{manifest}:4: unknown model 'pulse-max' (expected one of: pulse, pulse-pro)",
        f'{manifest}:6: needs a "path" or a "url" field',
        f"{manifest}:7: value in column 4, which has no header name",
        f'{manifest}:10: give either "path" or "url", not both',
    ]


def test_csv_quoted_newline_reports_the_record_start_line(tmp_path: Path) -> None:
    """A record spanning lines (a quoted newline) is located at its first line."""
    manifest = tmp_path / "m.csv"
    manifest.write_text('path,note\na.wav,"two\nlines"\nb.wav,x,y\nc.wav,z\n')
    results = read(manifest)
    first = items(results)[0]
    assert first.metadata == {"note": "two\nlines"}
    assert first.origin == f"{manifest}:2"
    assert problems(results) == [f"{manifest}:4: row has 3 cells but the header has 2"]
    assert items(results)[1].origin == f"{manifest}:5"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("id,file\n", "the CSV header needs a path or a url column (found: 'id', 'file')"),
        ("path,id,path\n", "the CSV header repeats the column 'path'"),
        ("a\xffb,path\n", "invalid UTF-8"),
    ],
)
def test_csv_bad_header_is_one_problem(tmp_path: Path, header: str, message: str) -> None:
    """A header that cannot map rows is reported once and the file is not read further."""
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(header.encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
    with manifest.open("ab") as out:
        out.write(b"a.wav,b,c\nb.wav,c,d\n")
    assert problems(read(manifest)) == [f"{manifest}:1: {message}"]


def test_csv_bom_crlf_and_invalid_utf8(tmp_path: Path) -> None:
    """A CSV with a BOM and CRLF reads normally; an undecodable row is a problem of its own."""
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"\xef\xbb\xbfpath,id\r\na.wav,A\r\nb\xff.wav,B\r\nc.wav,C\r\n")
    results = read(manifest)
    assert [i.id for i in items(results)] == ["A", "C"]
    assert problems(results) == [f"{manifest}:3: invalid UTF-8"]


def test_csv_parser_errors_are_problems_with_a_readable_reason(tmp_path: Path) -> None:
    """A stray carriage return or an oversized cell is a problem at its line; reading goes on."""
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(
        b"path,note\n" + b"a.wav,x\ry\n" + b"b.wav," + b"z" * 200_000 + b"\n" + b"c.wav,ok\n"
    )
    results = read(manifest)
    assert [i.id for i in items(results)] == ["c.wav"]
    assert problems(results) == [
        f"{manifest}:2: invalid CSV: a carriage return inside an unquoted cell (quote the cell)",
        f"{manifest}:3: invalid CSV: a cell is longer than 131072 characters",
    ]


# --------------------------------------------------------------------------- text lists


def test_text_list_paths_urls_comments_and_whitespace(tmp_path: Path) -> None:
    """A text list has one path or URL a line; comments and blanks are skipped; spaces stripped."""
    manifest = tmp_path / "list.txt"
    manifest.write_bytes(
        b"\xef\xbb\xbf# header comment\r\n"
        b"  a.wav  \r\n"
        b"\n"
        b"   # indented comment\n"
        b"https://example.org/b.mp3\n"
        b"dir with spaces/c #1.wav\n"
        b"C:/not-a-url.wav\n"
    )
    results = read(manifest)
    assert problems(results) == []
    assert [(i.id, i.is_url, i.origin) for i in items(results)] == [
        ("a.wav", False, f"{manifest}:2"),
        ("https://example.org/b.mp3", True, f"{manifest}:5"),
        ("dir with spaces/c #1.wav", False, f"{manifest}:6"),
        ("C:/not-a-url.wav", False, f"{manifest}:7"),
    ]
    assert items(results)[0].source == str(tmp_path / "a.wav")


def test_text_list_problems(tmp_path: Path) -> None:
    """Bad URL schemes and undecodable lines in a text list are problems at their line."""
    manifest = tmp_path / "list.lst"
    manifest.write_bytes(b"ftp://h/a.wav\nb\xff.wav\nfile:///c.wav\nd.wav\n")
    results = read(manifest)
    assert [i.id for i in items(results)] == ["d.wav"]
    assert problems(results) == [
        f"{manifest}:1: url must start with http:// or https://, not 'ftp://h/a.wav'",
        f"{manifest}:2: invalid UTF-8",
        f"{manifest}:3: url must start with http:// or https://, not 'file:///c.wav'",
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'\n\n  {"path": "a.wav", "id": "x"}\n', ["x"]),
        (b"# a list\na.wav\n", ["a.wav"]),
        (b'{"path": "a.wav", "id": "x"}\nplain.wav\n', ["x"]),
        (b"\xef\xbb\xbf\n id , path,speaker name\r\nx,a.wav,Ada\r\n", ["x"]),
        (b'"url","id"\nhttps://h/a.wav,y\n', ["y"]),
        (b"path\na.wav\n", ["a.wav"]),
        (b"[2019] a.wav\nb,c.wav\n", ["[2019] a.wav", "b,c.wav"]),
        (b"path,a.wav/x\n", ["path,a.wav/x"]),
    ],
    ids=["jsonl", "text", "jsonl-then-text", "csv", "csv-quoted", "csv-one-column",
         "text-with-bracket-and-comma", "text-path-with-comma"],
)  # fmt: skip
def test_unknown_extension_is_sniffed(tmp_path: Path, content: bytes, expected: list[str]) -> None:
    """A file with an unknown extension is JSONL when its first non-blank line starts with '{',
    CSV when that line is a header naming an id, path or url column, else a text list."""
    manifest = tmp_path / "manifest.data"
    manifest.write_bytes(content)
    assert [i.id for i in items(read(manifest))] == expected


# --------------------------------------------------------------------------- stdin


def test_stdin_jsonl_is_sniffed_and_resolves_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'-' reads stdin, sniffs JSONL, names the origin <stdin> and resolves paths from the cwd."""
    monkeypatch.chdir(tmp_path)
    stdin = io.BytesIO(b'\n{"path": "a.wav"}\n{"path": 1}\n')
    results = read("-", stdin=stdin)
    assert [(i.source, i.origin) for i in items(results)] == [
        (str(tmp_path / "a.wav"), "<stdin>:2")
    ]
    assert problems(results) == ['<stdin>:3: "path" must be a string, not a number']


def test_stdin_csv_is_sniffed(tmp_path: Path) -> None:
    """stdin whose first non-blank line is a CSV header with a path column is a CSV."""
    results = read("-", stdin=io.BytesIO(b"id,path,speaker\nx,/abs/a.wav,Ada\n"))
    assert [(i.id, i.source, i.metadata) for i in items(results)] == [
        ("x", "/abs/a.wav", {"speaker": "Ada"})
    ]


def test_descriptor_alias_of_a_file_resolves_like_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest named by a descriptor (/proc/self/fd/N, /dev/fd/N) resolves relative paths
    against the working directory, as stdin does, not against /proc/self/fd or /dev/fd."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    manifest = jsonl(elsewhere / "m.jsonl", {"path": "a.wav"})
    monkeypatch.chdir(tmp_path)
    fd = os.open(manifest, os.O_RDONLY)
    try:
        for alias in (f"/proc/self/fd/{fd}", f"/dev/fd/{fd}"):
            assert [i.source for i in items(read(alias))] == [str(tmp_path / "a.wav")]
    finally:
        os.close(fd)


def test_stdin_text_list(tmp_path: Path) -> None:
    """stdin whose first non-blank line is not '{' is a text list."""
    results = read("-", stdin=io.BytesIO(b"# list\r\nhttps://h/a.wav\r\n/abs/b.wav\r\n"))
    assert [(i.id, i.origin) for i in items(results)] == [
        ("https://h/a.wav", "<stdin>:2"),
        ("/abs/b.wav", "<stdin>:3"),
    ]


def test_stdin_streams_before_end_of_input() -> None:
    """Items from a pipe arrive as their lines do, without waiting for end of input."""
    read_fd, write_fd = os.pipe()
    writer = os.fdopen(write_fd, "wb")
    stream = os.fdopen(read_fd, "rb")
    closer = threading.Timer(10, writer.close)  # unblocks the reader if streaming is broken
    closer.start()
    try:
        writer.write(b'{"path": "/a.wav"}\n')
        writer.flush()
        started = time.monotonic()
        first = next(iter_sources(["-"], stdin=stream))
        assert time.monotonic() - started < 5
        assert isinstance(first, Item)
        assert first.source == "/a.wav"
    finally:
        closer.cancel()
        if not writer.closed:
            writer.close()
        stream.close()


# --------------------------------------------------------------------------- directories


def test_directory_walk_finds_audio_in_sorted_order(tmp_path: Path) -> None:
    """A directory yields audio files recursively, sorted by relative path, ids in posix form."""
    root = tmp_path / "archive"
    for rel in ["b.mp3", "a/z.WAV", "a.wav", "a/b/c.flac", "a-b.ogg", "Z.m4a", "notes.txt", "a/x"]:
        touch(root / rel)
    (root / "empty").mkdir()
    results = read(root)
    ids = [i.id for i in items(results)]
    assert ids == sorted(ids)
    assert ids == ["Z.m4a", "a-b.ogg", "a.wav", "a/b/c.flac", "a/z.WAV", "b.mp3"]
    first = items(results)[0]
    assert (first.source, first.is_url, first.params, first.metadata) == (
        str(root / "Z.m4a"), False, {}, None,
    )  # fmt: skip
    assert first.origin == f"{root}/Z.m4a"
    assert problems(results) == []


def test_directory_skips_hidden_files_and_folders(tmp_path: Path) -> None:
    """Hidden files and everything under hidden folders are skipped."""
    root = tmp_path / "archive"
    for rel in [".hidden.wav", ".git/objects/a.wav", "sub/.cache/b.wav", "sub/c.wav"]:
        touch(root / rel)
    assert [i.id for i in items(read(root))] == ["sub/c.wav"]


def test_hidden_root_directory_is_still_read(tmp_path: Path) -> None:
    """Only entries inside the directory are filtered, not the directory the user named."""
    touch(tmp_path / ".archive" / "a.wav")
    assert [i.id for i in items(read(tmp_path / ".archive"))] == ["a.wav"]


def test_directory_symlink_loop_is_walked_once(tmp_path: Path) -> None:
    """A symlink back to an ancestor does not loop; each directory is walked once."""
    root = tmp_path / "archive"
    touch(root / "a.wav")
    touch(root / "sub" / "b.wav")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "sub" / "self").symlink_to(root / "sub", target_is_directory=True)
    assert [i.id for i in items(read(root))] == ["a.wav", "sub/b.wav"]


def test_directory_follows_symlinked_files_and_ignores_dangling_links(tmp_path: Path) -> None:
    """A symlink to audio is an item; a dangling symlink is ignored."""
    root = tmp_path / "archive"
    target = touch(tmp_path / "outside" / "real.wav")
    root.mkdir()
    (root / "link.wav").symlink_to(target)
    (root / "dangling.wav").symlink_to(tmp_path / "missing.wav")
    [item] = read(root)
    assert isinstance(item, Item)
    assert (item.id, item.source) == ("link.wav", str(root / "link.wav"))


def test_directory_ids_collide_with_other_sources(tmp_path: Path) -> None:
    """Directory items take part in duplicate detection like manifest items."""
    touch(tmp_path / "d1" / "a.wav")
    touch(tmp_path / "d2" / "a.wav")
    results = read(tmp_path / "d1", tmp_path / "d2")
    assert problems(results) == [
        f"{tmp_path}/d2/a.wav:0: duplicate id 'a.wav' (first seen earlier)"
    ]


def test_directory_file_name_with_control_characters(tmp_path: Path) -> None:
    """A file name with a newline keeps its id verbatim but gets a printable origin."""
    touch(tmp_path / "d" / "bad\nname.wav")
    [item] = read(tmp_path / "d")
    assert isinstance(item, Item)
    assert item.id == "bad\nname.wav"
    assert item.origin == f"{tmp_path}/d/bad\\nname.wav"


def test_directory_file_name_that_is_not_utf8_gets_a_json_safe_id(tmp_path: Path) -> None:
    """A non-UTF-8 file name is an item whose id spells the bad bytes, source the real name."""
    folder = tmp_path / "d"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9 \xc3\xa9.wav")
    (folder / name).write_bytes(b"RIFF")
    [item] = read(folder)
    assert isinstance(item, Item)
    assert item.id == "caf\\xe9 \u00e9.wav"
    orjson.dumps(item.id)  # would raise on a surrogate escape
    assert item.source == str(folder / name)
    assert Path(item.source).read_bytes() == b"RIFF"


def test_unreadable_subdirectory_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subdirectory that cannot be listed is a problem; the rest of the walk goes on."""
    touch(tmp_path / "d" / "locked" / "a.wav")
    touch(tmp_path / "d" / "open" / "b.wav")
    locked = str(tmp_path / "d" / "locked")
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        # chmod 0 cannot lock out root (which CI may run as), so refuse the listing here.
        if path == locked:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    results = read(tmp_path / "d")
    assert [i.id for i in items(results)] == ["open/b.wav"]
    assert problems(results) == [f"{locked}:0: cannot read directory: permission denied"]


# --------------------------------------------------------------------------- unreadable sources


def test_missing_source_is_a_manifest_error_naming_it(tmp_path: Path) -> None:
    """A missing manifest fails up front, from check_sources and from iter_sources."""
    good = jsonl(tmp_path / "good.jsonl", {"path": "a.wav"})
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ManifestError, match=r"nope\.jsonl: cannot read: no such file"):
        check_sources([str(good), str(missing)])
    with pytest.raises(ManifestError, match=r"nope\.jsonl"):
        read(good, missing)  # fails before yielding anything from good.jsonl


def test_stdin_twice_is_a_manifest_error() -> None:
    """'-' can be read only once."""
    with pytest.raises(ManifestError, match=r"stdin"):
        check_sources(["-", "-"])


def test_socket_is_not_a_manifest(tmp_path: Path) -> None:
    """A path that is neither a file, a pipe nor a directory is refused."""
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s"))
        with pytest.raises(ManifestError, match="not a manifest file or a directory"):
            check_sources([str(tmp_path / "s")])


def test_named_pipe_is_accepted_and_sniffed(tmp_path: Path) -> None:
    """A named pipe (like bash's <(...)) is read as a stream and sniffed."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as out:
            out.write(b'{"path": "/a.wav"}\n')

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        assert [i.source for i in items(read(fifo))] == ["/a.wav"]
    finally:
        writer.join(10)


def test_named_pipe_resolves_relative_paths_against_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths in a FIFO manifest resolve against the working directory (a pipe has no
    folder of its own), and a CSV sent through it is read as a CSV."""
    (tmp_path / "pipes").mkdir()
    fifo = tmp_path / "pipes" / "pipe"
    os.mkfifo(fifo)
    monkeypatch.chdir(tmp_path)

    def feed() -> None:
        with open(fifo, "wb") as out:
            out.write(b"id,path\nx,a.wav\n")

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        assert [(i.id, i.source) for i in items(read(fifo))] == [("x", str(tmp_path / "a.wav"))]
    finally:
        writer.join(10)


# --------------------------------------------------------------------------- properties


_FRAGMENTS = st.sampled_from(
    [b"\n", b"\r\n", b"\r", b"\xef\xbb\xbf", b"{", b"}", b"[", b'"', b",", b":", b"#", b" ",
     b"\xff", b"\x00", b"\xc3", b'{"path": "a.wav"}', b'{"url": "ftp://x"}', b'{"id": 1, "url":',
     b'"model": "pulse-pro"', b"path,url,id,language\n", b"https://h/x.wav", b"../x.wav",
     b'"diarize": "maybe"', b"null", b"\\u0000", b"\xed\xa0\x80"]
)  # fmt: skip
_MANIFEST_BYTES = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(_FRAGMENTS, st.binary(max_size=8)), max_size=60).map(b"".join),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_MANIFEST_BYTES, suffix=st.sampled_from([".jsonl", ".csv", ".txt", ".bin"]))
def test_any_bytes_yield_only_items_and_problems(data: bytes, suffix: str) -> None:
    """Whatever the bytes, reading never raises and every result points inside the file."""
    line_count = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / f"m{suffix}"
        manifest.write_bytes(data)
        for result in iter_sources([str(manifest)]):
            if isinstance(result, Problem):
                assert 1 <= result.line <= line_count
                assert str(result).isprintable()
            else:
                assert isinstance(result, Item)
                line = int(result.origin.rsplit(":", 1)[1])
                assert 1 <= line <= line_count
                assert result.id


@settings(max_examples=100, deadline=None)
@given(data=_MANIFEST_BYTES)
def test_any_stdin_bytes_yield_only_items_and_problems(data: bytes) -> None:
    """Arbitrary bytes on stdin never raise either."""
    for result in iter_sources(["-"], stdin=io.BytesIO(data)):
        assert isinstance(result, Item | Problem)


# --------------------------------------------------------------------------- streaming


class _UnboundedIds(DigestSet):
    """A seen set that remembers nothing, so a memory measure sees only the reader's own use."""

    def add(self, digest: int) -> bool:
        return True


@pytest.mark.slow
def test_memory_stays_flat_over_a_large_manifest(tmp_path: Path) -> None:
    """Reading 200,000 lines allocates a small, fixed amount beyond the id set (it streams)."""
    count = 200_000
    manifest = tmp_path / "big.jsonl"
    with manifest.open("w") as out:
        out.writelines(
            f'{{"path": "archive/{i % 997:03d}/recording-{i:07d}-take-{i % 7}.wav"}}\n'
            for i in range(count)
        )
    assert manifest.stat().st_size > 10_000_000  # far more than the bound below
    tracemalloc.start()
    try:
        read_count = sum(
            isinstance(r, Item) for r in iter_sources([str(manifest)], seen=_UnboundedIds())
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read_count == count
    assert peak < 2_000_000, f"peak {peak} bytes"


# --------------------------------------------------------------------------- chunked reading


class _Trickle(io.RawIOBase):
    """A stream whose reads return at most the next of ``sizes`` bytes (a pipe, a slow disk)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data, self._sizes, self._at = data, sizes or [1], 0

    def readable(self) -> bool:
        return True

    def read1(self, n: int = -1) -> bytes:
        size = self._sizes[self._at % len(self._sizes)] if self._at < len(self._data) else 0
        chunk = self._data[self._at : self._at + min(n, size)]
        self._at += len(chunk)
        return chunk

    read = read1  # type: ignore[assignment]


def _readline_lines(data: bytes, limit: int) -> list[tuple[int, bytes | None]]:
    """The lines as ``readline(limit)`` reads them (the reader this one replaced)."""
    if data.startswith(manifest_lines.BOM):
        data = data[len(manifest_lines.BOM) :]
    stream = io.BytesIO(data)
    lineno, out = 0, list[tuple[int, bytes | None]]()
    while raw := stream.readline(limit):
        lineno += 1
        if len(raw) == limit and raw[-1] != 0x0A:
            while (rest := stream.readline(3)) and rest[-1] != 0x0A:
                pass
            out.append((lineno, None))
        else:
            out.append((lineno, raw))
    return out


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(
        st.sampled_from([b"\n", b"ab", b"\xef\xbb\xbf", b"\xef", b"x" * 9, b"\r\n", b""])
    ).map(b"".join),
    sizes=st.lists(st.integers(1, 12), max_size=6),
    limit=st.integers(2, 12),
)
def test_chunked_lines_match_readline(data: bytes, sizes: list[int], limit: int) -> None:
    """Lines, their numbers and the lines too long are those a readline loop finds, however
    the reads are cut (a BOM split across reads included)."""
    sizes = [
        min(size, limit - 1) for size in sizes
    ]  # as in use: a read is shorter than a line may be
    with patch.object(manifest_lines, "READ_LIMIT", limit):
        chunks = list(manifest_lines.read_chunks(_Trickle(data, sizes)))  # type: ignore[arg-type]
        got = list(manifest_lines.chunk_lines(iter(chunks)))
    assert got == _readline_lines(data, limit)
    for lineno, chunk in chunks:  # runs of whole lines: only the last may lack its newline
        assert chunk is None or chunk.endswith(b"\n") or (lineno, chunk) == chunks[-1]


# --------------------------------------------------------------------------- resumed reading


_POOL = ["a", "b", "c", "dé", "e/f", "g h", "2019/clip-1", "x" * 40]
_LINE_SHAPES = st.one_of(
    st.tuples(st.just("compact"), st.sampled_from(_POOL)),
    st.tuples(st.just("spaced"), st.sampled_from(_POOL)),
    st.tuples(
        st.sampled_from(
            ["path-only", "params", "blank", "bad-json", "empty-path", "s3", "escaped", "crlf"]
        ),
        st.sampled_from(_POOL),
    ),
)


def _manifest_line(shape: str, item_id: str) -> bytes:
    path = f"audio/{item_id}.wav"
    line = {
        "compact": orjson.dumps({"id": item_id, "path": path}).decode(),
        "spaced": f'{{"id": "{item_id}", "path": "{path}"}}',
        "path-only": orjson.dumps({"path": item_id}).decode(),
        "params": orjson.dumps({"id": item_id, "path": path, "language": "de"}).decode(),
        "blank": "   ",
        "bad-json": f'{{"id":"{item_id}","path":',
        "empty-path": orjson.dumps({"id": item_id, "path": ""}).decode(),
        "s3": orjson.dumps({"id": item_id, "path": f"s3://b/{item_id}"}).decode(),
        "escaped": f'{{"id":"{item_id}\\u0021","path":"{path}"}}',
        "crlf": orjson.dumps({"id": item_id, "path": path}).decode() + "\r",
    }[shape]
    return line.encode() + b"\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(_LINE_SHAPES, max_size=40),
    known=st.dictionaries(st.sampled_from([*_POOL, "a!"]), st.sampled_from(["ok", "failed"])),
    retry_failed=st.booleans(),
    chunk=st.integers(16, 400),
    shard=st.sampled_from([None, (0, 2), (1, 2), (2, 3)]),
)
def test_resumed_reading_settles_runs_as_lines_would(
    lines: list[tuple[str, str]],
    known: dict[str, str],
    retry_failed: bool,
    chunk: int,
    shard: tuple[int, int] | None,
) -> None:
    """Settling whole runs of lines at once (the resume fast path, with or without a shard)
    yields the same items, problems (duplicates included), skip counts and hidden problems
    as reading every line on its own."""
    data = b"".join(_manifest_line(*line) for line in lines)
    part = None if shard is None else Shard(*shard)
    outcomes = []
    with (
        tempfile.TemporaryDirectory() as folder,
        patch.object(manifest_lines, "CHUNK", chunk),
        patch.object(results_module, "BLOCK_SETTLE_FROM", 0),  # runs settle from the first id
    ):
        manifest = Path(folder) / "m.jsonl"
        manifest.write_bytes(data)
        for runs in (True, False):
            state = ResumeState()
            for item_id, status in known.items():
                state.add(item_id, status)
            seen = state.seen_ids() if runs else DigestSet(key=id_key)
            settler = reader_settles(
                state,
                part,
                retry_failed=retry_failed,
                rescan_changed=False,
                seen=seen if runs else None,  # type: ignore[arg-type]
            )
            assert settler is None or settler.runs == (runs and bool(known))
            entries: Any = iter_sources([str(manifest)], seen=seen, settler=settler)
            if part is not None:
                entries = ShardFilter(entries, part)
            read = [*entries, settler and settler.take()]
            yielded = [e for e in read[:-1] if not isinstance(e, Skipped)]
            skipped = [e for e in read if isinstance(e, Skipped)]
            counts = [sum(s.failed for s in skipped), sum(s.done for s in skipped)]
            outcomes.append((yielded, counts, getattr(entries, "hidden_problems", 0)))
    assert outcomes[0] == outcomes[1]


def test_a_settled_id_read_again_is_a_duplicate(tmp_path: Path) -> None:
    """An id the results file knows, settled with its run of lines, is still a duplicate when
    it comes again, on a line of another shape or in another run."""
    head = b"".join(_manifest_line("compact", f"id-{i}") for i in range(50))
    manifest = tmp_path / "m.jsonl"
    again = b"".join(_manifest_line("compact", f"id-{i}") for i in range(3))
    manifest.write_bytes(head + _manifest_line("params", "id-7") + again)
    state = ResumeState()
    for i in range(50):
        state.add(f"id-{i}", "ok")
    seen = state.seen_ids()
    with patch.object(results_module, "BLOCK_SETTLE_FROM", 0):
        settler = Settler(state, skip_done=True, skip_failed=True, seen=seen)
    with patch.object(manifest_lines, "CHUNK", len(head)):  # the 50 lines are one run
        entries = list(iter_sources([str(manifest)], seen=seen, settler=settler))
    assert entries[0] == Skipped(50, 0)  # the hand-off of a run settled at once
    assert problems(e for e in entries if not isinstance(e, Skipped)) == [
        f"{manifest}:51: duplicate id 'id-7' (first seen earlier)",
        *(f"{manifest}:{52 + i}: duplicate id 'id-{i}' (first seen earlier)" for i in range(3)),
    ]
    assert settler.take() is None  # all 50 handed on with their run
