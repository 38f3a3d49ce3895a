"""Bytes -> lines: a manifest stream read in runs of whole lines, as they arrive.

Files are read in binary, a block at a time (``read1``: a trickling pipe is read as it comes),
and handed on as runs of whole lines; a line longer than :data:`MAX_LINE` is skipped as it is
read, never held. The formats split runs into physical lines (:func:`chunk_lines`) and decode
each line on its own, so one bad byte spoils one line; the resumed JSONL reader scans whole runs
at once (:func:`batchscribe.manifest.formats.parse_jsonl_blocks`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import BinaryIO

MAX_LINE = 16 * 1024 * 1024  # longest line read; a longer one is skipped with a problem
READ_LIMIT = MAX_LINE + 1  # room for the newline
CHUNK = 128 * 1024  # bytes asked for per read
BOM = b"\xef\xbb\xbf"

#: the problem of a line too long, and of a line that is not UTF-8
TOO_LONG = f"line is longer than {MAX_LINE // (1024 * 1024)} MiB; skipped"
INVALID_UTF8 = "invalid UTF-8"

Line = tuple[int, bytes | None]  # (1-based line number, raw bytes or None when too long)

Chunk = tuple[int, bytes | None]  # (number of its first line, whole lines; None: one too long)


def read_chunks(stream: BinaryIO) -> Iterator[Chunk]:
    """The stream as runs of whole lines, as they arrive.

    Each run ends with a newline (the last one at the end of the stream may not); a leading BOM
    is dropped. A line longer than :data:`MAX_LINE` is not held: it is skipped as it is read
    and stands for itself as ``(lineno, None)``. ``read1`` returns what a pipe has now, so a
    trickling stdin is read line by line as it comes, while a file is read a block at a time.
    """
    read = getattr(stream, "read1", stream.read)
    lineno = 1
    parts: list[bytes] = []  # the unfinished last line, as read so far
    size = 0  # its length
    skipping = False  # inside a line too long: drop up to its newline
    head = b""  # the stream's first bytes, while they may still be a BOM cut short
    start = True
    while True:
        data = read(CHUNK)
        if not data:
            break
        if start:
            data = head + data
            if len(data) < len(BOM) and BOM.startswith(data):
                head = data
                continue
            start = False
            if data.startswith(BOM):
                data = data[len(BOM) :]
        if skipping:
            newline = data.find(b"\n")
            if newline < 0:
                continue
            skipping = False
            data = data[newline + 1 :]
            if not data:
                continue
        if parts and (newline := data.find(b"\n")) >= 0:  # the line carried over ends here
            if size + newline >= READ_LIMIT:
                yield lineno, None
            else:
                parts.append(data[: newline + 1])
                yield lineno, b"".join(parts)
            lineno += 1
            parts, size = [], 0
            data = data[newline + 1 :]
        cut = data.rfind(b"\n") + 1
        if cut:
            yield lineno, data if cut == len(data) else data[:cut]
            lineno += data.count(b"\n", 0, cut)
        if cut < len(data):
            parts.append(data[cut:])
            size += len(data) - cut
            if size >= READ_LIMIT:
                yield lineno, None
                lineno += 1
                parts, size, skipping = [], 0, True
    if start and head:
        parts, size = [head], len(head)
    if parts:
        yield lineno, None if size >= READ_LIMIT else b"".join(parts)


def chunk_lines(chunks: Iterator[Chunk]) -> Iterator[Line]:
    """Physical lines (``(lineno, raw)``, ``raw`` None for a line too long) of ``chunks``."""
    for lineno, data in chunks:
        if data is None:
            yield lineno, None
            continue
        lines = data.split(b"\n")
        last = lines.pop()  # b"" after a final newline, else the unfinished last line
        yield from zip(itertools.count(lineno), [line + b"\n" for line in lines])
        if last:
            yield lineno + len(lines), last


def first_content(chunks: Iterator[Chunk]) -> tuple[tuple[int, bytes] | None, Iterator[Chunk]]:
    """The line number and content of the first non-blank line (without leading whitespace or
    its line break; ``b""`` for one too long), and the chunks, all still to be read."""
    held: list[Chunk] = []
    for chunk in chunks:
        held.append(chunk)
        lineno, data = chunk
        if data is None:
            return (lineno, b""), itertools.chain(held, chunks)
        body = data.lstrip()
        if body:
            skipped = len(data) - len(body)
            first = body.split(b"\n", 1)[0].rstrip(b"\r")
            return (lineno + data.count(b"\n", 0, skipped), first), itertools.chain(held, chunks)
    return None, iter(held)
