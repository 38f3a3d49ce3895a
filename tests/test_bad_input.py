"""Bad input through the real CLI, end to end: broken manifests are reported line by line
(``FILE:LINE: problem`` on stderr) while the rest is done (exit 1); odd ids are recorded as
given and exported only inside the export folder.

tests/test_manifest.py covers the parsers in depth; this file checks what a user sees.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from audio_fixtures import make_wav
from conftest import read_results


def bad_lines(stderr: str, manifest: Path) -> dict[int, str]:
    """``{line number: problem}`` from the ``FILE:LINE: problem`` lines of stderr."""
    pattern = re.compile(rf"^{re.escape(str(manifest))}:(\d+): (.+)$", re.M)
    return {int(m.group(1)): m.group(2) for m in pattern.finditer(stderr)}


def test_broken_jsonl_lines_are_reported_and_the_rest_is_done(tmp_path, emulator, run_cli):
    """Every kind of bad JSONL line is named FILE:LINE; the good ones are done; exit 1."""
    emu = emulator()
    for i in range(4):
        make_wav(tmp_path / f"{i}.wav", seconds=0.1, freq=700 + 9 * i)
    big = "x" * (10 * 1024 * 1024)
    rows: list[bytes] = [
        b'\xef\xbb\xbf{"id": "bom", "path": "0.wav"}\r\n',  # 1: BOM and CRLF: fine
        b'{"id": "broken", "path": \r\n',  # 2: invalid JSON
        b'{"id": "t1", "path": 5}\n',  # 3: wrong type
        b'{"id": ["t2"], "path": "1.wav"}\n',  # 4: wrong type
        b'{"id": "t3", "path": "1.wav", "diarize": "perhaps"}\n',  # 5: wrong type
        b'{"id": "utf8", "path": "1.wav", "who": "\xff\xfe"}\n',  # 6: invalid UTF-8
        b'{"id": "bom", "path": "1.wav"}\n',  # 7: duplicate id
        b'{"id": "f", "url": "file:///etc/passwd"}\n',  # 8: bad scheme
        b'{"id": "g", "url": "ftp://example.org/a.wav"}\n',  # 9: bad scheme
        b'{"id": "extra", "path": "1.wav", "shelf": {"row": 3}, "tags": ["a", "b"]}\r\n',  # 10
        b"\n",  # 11: blank: ignored
        orjson.dumps({"id": "huge", "path": "2.wav", "note": big}) + b"\n",  # 12: 10 MB, fine
        b'"just a string"\n',  # 13: not an object
        b'{"path": "3.wav", "id": ""}\n',  # 14: empty id
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"".join(rows))
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", manifest, "--out", out, "--endpoint", emu.endpoint(), timeout=120)
    assert proc.returncode == 1, proc.stderr
    problems = bad_lines(proc.stderr, manifest)
    assert sorted(problems) == [2, 3, 4, 5, 6, 7, 8, 9, 13, 14], proc.stderr
    assert "duplicate id" in problems[7]
    assert "UTF-8" in problems[6]
    assert all("http" in problems[n] for n in (8, 9))
    records = {r["id"]: r for r in read_results(out)[0]}
    assert sorted(records) == ["bom", "extra", "huge"]
    assert all(r["status"] == "ok" for r in records.values())
    assert records["extra"]["metadata"] == {"shelf": {"row": 3}, "tags": ["a", "b"]}
    assert records["huge"]["metadata"]["note"] == big
    assert "invalid lines: 10" in proc.stdout
    assert emu.stats()["requests"] == 3


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.jsonl", b""),
        ("blank.jsonl", b"\xef\xbb\xbf\n \r\n\t\n"),
        ("empty.csv", b""),
        ("comments.txt", b"# nothing here\n\n"),
    ],
)
def test_empty_manifests_send_nothing_and_exit_0(tmp_path, emulator, run_cli, name, content):
    """An empty, blank or comment-only manifest is not an error: nothing sent, exit 0."""
    emu = emulator()
    manifest = tmp_path / name
    manifest.write_bytes(content)
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", manifest, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 0, proc.stderr
    assert read_results(out)[0] == []
    assert emu.stats()["requests"] == 0


def test_csv_and_text_list_problems_through_the_cli(tmp_path, emulator, run_cli):
    """Bad CSV rows and text-list lines are named FILE:LINE; their good rows are done."""
    emu = emulator()
    make_wav(tmp_path / "a.wav", freq=801)
    make_wav(tmp_path / "b.wav", freq=802)
    csv_file = tmp_path / "m.csv"
    csv_file.write_bytes(
        b"id,path,url\r\none,a.wav,\r\ntwo,,ftp://example.org/x.wav\r\nthree,b.wav,,surplus\r\n"
    )
    text = tmp_path / "list.txt"
    text.write_bytes(b"# comment\nb.wav\nfile:///etc/hosts\n\xff\xfe.wav\n")
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", csv_file, text, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 1, proc.stderr
    assert sorted(bad_lines(proc.stderr, csv_file)) == [3, 4]
    assert sorted(bad_lines(proc.stderr, text)) == [3, 4]
    assert sorted(r["id"] for r in read_results(out)[0]) == ["b.wav", "one"]


ODD_IDS = [
    "../../escape",
    "/etc/cron.d/evil",
    "a/../../b",
    "..",
    "dir\\..\\..\\win",
    "tab\there",
    "bell\x07and\x1b[31mred",
    "new\nline",
    "nul-ish\x7f",
    "caf\u00e9/\u4e2d\u6587",
]


def test_odd_ids_are_recorded_faithfully_and_exports_stay_inside(tmp_path, emulator, run_cli):
    """Ids with separators, .. or control characters are kept as given; exports stay in --dir."""
    emu = emulator()
    lines = []
    for i, item_id in enumerate(ODD_IDS):
        make_wav(tmp_path / "audio" / f"{i}.wav", seconds=0.1, freq=900 + 7 * i)
        lines.append(orjson.dumps({"id": item_id, "path": f"audio/{i}.wav"}) + b"\n")
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"".join(lines))
    out = tmp_path / "r.jsonl"
    args = ("run", manifest, "--out", out, "--endpoint", emu.endpoint())
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    records = read_results(out)[0]
    assert sorted(r["id"] for r in records) == sorted(ODD_IDS)
    assert out.read_bytes().count(b"\n") == len(ODD_IDS) + 1  # a newline in an id is escaped
    emu.reset_stats()
    assert run_cli(*args).returncode == 0
    assert emu.stats()["requests"] == 0  # resumed by those exact ids
    # Export: every file lands inside the folder; nothing is written anywhere else.
    export_dir = tmp_path / "exports" / "txt"
    export_dir.parent.mkdir()
    outside_before = _tree(tmp_path, skip=export_dir)
    proc = run_cli("export", out, "--format", "txt", "--dir", export_dir)
    assert proc.returncode == 0, proc.stderr
    written = [p for p in export_dir.rglob("*") if p.is_file()]
    assert len(written) == len(ODD_IDS)
    root = export_dir.resolve()
    for path in written:
        assert path.resolve().is_relative_to(root)
        assert all(ch.isprintable() for ch in path.relative_to(root).as_posix()), path
    assert _tree(tmp_path, skip=export_dir) == outside_before
    texts = sorted(p.read_text().strip() for p in written)
    assert texts == sorted(r["transcription"].strip() for r in records)


def _tree(root: Path, *, skip: Path) -> set[str]:
    """Every path under ``root`` except those under ``skip``, and / and /etc's entries."""
    found = {str(p) for p in root.rglob("*") if not str(p).startswith(str(skip))}
    return found | {f"/etc/{name}" for name in os.listdir("/etc")}


def test_manifest_that_is_not_utf8_or_not_jsonl_at_all(tmp_path, emulator, run_cli) -> Any:
    """A binary file given as a manifest and a JSON array file give problems, not a crash."""
    emu = emulator()
    binary = tmp_path / "audio.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    array = tmp_path / "array.json"
    array.write_text('[{"path": "a.wav"}]\n')
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", binary, array, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert bad_lines(proc.stderr, binary)
    assert "JSON Lines" in bad_lines(proc.stderr, array)[1]
    assert emu.stats()["requests"] == 0
