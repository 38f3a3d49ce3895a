"""One manifest file or stream -> its format's reader: opening, the folder relative paths
resolve against, and the format (from the name's extension, else sniffed from the first line)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from typing import BinaryIO, Literal

from batchscribe.errors import ManifestError
from batchscribe.ids import DigestSet
from batchscribe.items import Item, Problem
from batchscribe.manifest.fields import printable, problem_at, reason
from batchscribe.manifest.formats import parse_csv, parse_jsonl, parse_jsonl_blocks, parse_text
from batchscribe.manifest.lines import chunk_lines, first_content, read_chunks
from batchscribe.results.resume import Settler, Skipped

Kind = Literal["jsonl", "csv", "text", "sniff"]

_KINDS: dict[str, Kind] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".txt": "text",
    ".lst": "text",
    ".list": "text",
}
_BUFFER = 256 * 1024


def read_file(
    source: str, seen: DigestSet, settler: Settler | None = None
) -> Iterator[Item | Problem | Skipped]:
    """The entries of one manifest file (or named pipe), its format told by its extension."""
    name = printable(source)
    kind = _KINDS.get(os.path.splitext(source)[1].lower(), "sniff")
    try:
        stream = open(source, "rb", buffering=_BUFFER)  # noqa: SIM115 (closed below; a generator)
    except OSError as exc:
        raise ManifestError(f"{name}: cannot read manifest: {reason(exc)}") from exc
    with stream:
        # A pipe or an inherited descriptor (bash's <(...) is /dev/fd/63) has no folder of its
        # own: relative paths resolve against the working directory, as for stdin.
        if _is_stream(source, stream):
            base = os.getcwd()
        else:
            base = os.path.dirname(os.path.abspath(source))
        try:
            yield from read_stream(stream, name, base, kind, seen, settler)
        except OSError as exc:
            raise ManifestError(f"{name}: read failed: {reason(exc)}") from exc


def read_stream(
    stream: BinaryIO,
    file: str,
    base: str,
    kind: Kind,
    seen: DigestSet,
    settler: Settler | None = None,
) -> Iterator[Item | Problem | Skipped]:
    """The entries of an open manifest stream, shown as ``file``; ``base`` is the folder
    relative paths resolve against."""
    chunks = read_chunks(stream)
    if kind == "csv":
        yield from parse_csv(chunk_lines(chunks), file, base, seen)
        return
    head, chunks = first_content(chunks)
    if head is None:
        return
    lineno, first = head
    if kind == "sniff":
        kind = _sniff(first)
        if kind == "csv":
            yield from parse_csv(chunk_lines(chunks), file, base, seen)
            return
    if kind == "jsonl":
        if first[:1] == b"[":
            yield problem_at(
                file, lineno, "this is a JSON array, not JSON Lines: write one JSON object per line"
            )
            return
        if settler is None or not settler.runs:
            yield from parse_jsonl(chunk_lines(chunks), file, base, seen, settler)
        else:
            yield from parse_jsonl_blocks(chunks, file, base, seen, settler)
    else:
        yield from parse_text(chunk_lines(chunks), file, base, seen)


_FD_ALIAS = re.compile(r"/dev/(?:stdin|fd/\d+)|/proc/(?:self|thread-self|\d+)/fd/\d+")
_CSV_NAME = re.compile(r"[A-Za-z_][\w .-]*")  # (no "/": a text list's paths and URLs have one)


def _is_stream(source: str, stream: BinaryIO) -> bool:
    """A manifest that is not a file in a folder: a FIFO, a pipe, or a descriptor's alias."""
    if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
        return True
    return _FD_ALIAS.fullmatch(os.path.abspath(source)) is not None


def _sniff(first: bytes) -> Kind:
    """The format of a manifest whose name does not tell it, from its first non-blank line:
    JSONL if it starts with ``{``, CSV if it is a header naming an id, path or url column (and
    nothing that cannot be a column name), else a text list."""
    if first[:1] == b"{":
        return "jsonl"
    cells = [cell.strip().strip('"') for cell in first.decode("utf-8", "replace").split(",")]
    if {"id", "path", "url"} & set(cells) and all(
        _CSV_NAME.fullmatch(cell) for cell in cells if cell
    ):
        return "csv"
    return "text"
