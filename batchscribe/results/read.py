"""The read side of results files, shared by the operator commands (report, failed, export, merge).

Readers take no lock: a run may be appending while they read. Each file is read up to its last
complete line; an unterminated tail (a write in progress, or a kill) is skipped and counted.
Item records are recognised exactly as the resume scan recognises them
(:func:`~batchscribe.results.record.parse_head`), so a "final state" here always agrees with
what the next run skips or retries. :func:`final_states` finds each id's final record in two
streaming passes (:class:`FinalIndex`).
"""

from __future__ import annotations

import glob
import operator
import os
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import compress, count, pairwise, repeat
from typing import Any, BinaryIO

from batchscribe.errors import ConfigError
from batchscribe.results.record import (
    HEAD_ID,
    HEAD_STATUS,
    ID_PREFIX,
    READ_CHUNK,
    block_heads,
    load_event,
    load_record,
    load_records,
    newlines,
    parse_head,
)
from batchscribe.results.resume import (
    DAMAGED_KEPT,
    VECTOR_FROM,
    damaged_lines,
)
from batchscribe.results.resume import (
    shown as _shown,
)

#: Line kinds in a :class:`FinalIndex`.
SKIP, FINAL, SUPERSEDED, RUN = 0, 1, 2, 3
_EVENT_PREFIX = b'{"event":'
_GLOB_CHARS = frozenset("*?[")


@dataclass
class ReadCounts:
    """What reading results files met; filled in as the lines stream by."""

    files: int = 0
    lines: int = 0  # complete, non-blank lines
    records: int = 0  # item records
    runs: int = 0  # {"event":"run",...} lines
    events: int = 0  # other {"event":...} lines
    unreadable: int = 0  # torn or damaged lines, skipped
    #: ``(path, line number)`` of the first :data:`DAMAGED_KEPT` damaged lines.
    damaged: list[tuple[str, int]] = field(default_factory=list)
    #: Files whose last line was unfinished (a run writing it now, or a killed one).
    torn: list[str] = field(default_factory=list)

    def note_damaged(self, path: str, lineno: int) -> None:
        """A complete line that is no record, no event and not blank (counted unreadable)."""
        if len(self.damaged) < DAMAGED_KEPT:
            self.damaged.append((path, lineno))

    def problems(self) -> list[str]:
        """The warning lines: ``FILE:LINE: damaged record`` (see :func:`damaged_lines`), then
        one per unfinished last line."""
        lines = damaged_lines(self.damaged, self.unreadable - len(self.torn), "skipped")
        lines += [f"{_shown(path)}: unfinished last line skipped (a run writing it, or killed)"
                  for path in self.torn]  # fmt: skip
        return lines


def expand_paths(patterns: Sequence[str]) -> list[str]:
    """The results files named by ``patterns``, in order, each file once.

    Args:
        patterns: file paths or globs (``*``, ``?``, ``[...]``, ``**``); an existing file is
            taken as named even if its name has glob characters. A glob's matches are sorted.

    Raises ConfigError naming a pattern that matches no file, or that names a directory.
    """
    found: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        if os.path.isdir(pattern):
            raise ConfigError(f"{_shown(pattern)}: is a directory; name the results file(s)")
        if os.path.exists(pattern):
            if not os.path.isfile(pattern):
                raise ConfigError(
                    f"{_shown(pattern)}: not a regular file (results files are read twice)"
                )
            matches = [pattern]
        elif _GLOB_CHARS.intersection(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise ConfigError(f"{_shown(pattern)}: matches no results file")
        else:
            raise ConfigError(f"{_shown(pattern)}: no such results file")
        for match in matches:
            key = os.path.realpath(match)
            if key not in seen:
                seen.add(key)
                found.append(match)
    if not found:
        raise ConfigError("no results file given")
    return found


def _open_for_reading(path: str) -> BinaryIO:
    try:
        return open(path, "rb", buffering=READ_CHUNK)
    except OSError as exc:
        raise ConfigError(
            f"{_shown(path)}: cannot read results file: {exc.strerror or exc}"
        ) from None


def _complete_lines(paths: Sequence[str], counts: ReadCounts) -> Iterator[tuple[str, int, bytes]]:
    """(path, line number, line) of every complete non-blank line; a torn tail is counted."""
    for path in paths:
        with _open_for_reading(path) as stream:
            counts.files += 1
            for lineno, line in enumerate(stream, 1):
                if not line.endswith(b"\n"):
                    counts.unreadable += 1  # torn, or being written right now
                    counts.torn.append(path)
                    break
                body = line[:-1]
                if body.strip():
                    counts.lines += 1
                    yield path, lineno, body


def iter_records(
    paths: Sequence[str], counts: ReadCounts | None = None
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Every item record, streamed: ``(path, line number, record)`` in file order.

    Event lines and torn or unparseable lines are skipped and counted in ``counts``.
    """
    counts = counts if counts is not None else ReadCounts()
    for path, lineno, body in _complete_lines(paths, counts):
        if body.startswith(_EVENT_PREFIX):
            _count_event(load_event(body), counts)
            continue
        record = load_record(body)
        if record is not None:
            counts.records += 1
            yield path, lineno, record
        else:
            event = load_event(body)
            _count_event(event, counts)
            if event is None:
                counts.note_damaged(path, lineno)


def iter_run_records(
    paths: Sequence[str], counts: ReadCounts | None = None
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Every ``{"event":"run",...}`` record (one per run, written as it ends), streamed."""
    counts = counts if counts is not None else ReadCounts()
    for path, lineno, body in _complete_lines(paths, counts):
        if body.startswith(ID_PREFIX) or b'"event"' not in body:
            continue  # an item record (or garbage): not parsed
        event = load_event(body)
        _count_event(event, counts)
        if event is not None and event.get("event") == "run":
            yield path, lineno, event


def _count_event(event: dict[str, Any] | None, counts: ReadCounts) -> None:
    if event is None:
        counts.unreadable += 1
    elif event.get("event") == "run":
        counts.runs += 1
    else:
        counts.events += 1


# ------------------------------------------------------------------------------ the final index
# Both passes read whole-line blocks (:func:`_blocks`) and do their per-line work a block or a
# batch at a time in C-level passes (``bytes.split`` and ``map`` over the pieces, orjson over a
# batch): Python code runs per line only for lines outside the writer's layout (events, junk,
# escaped ids), and those are read one at a time exactly as before (:func:`_index_line`).

_FINAL_BYTE = bytes((FINAL,))
_OK_STATUS = "ok"
_PARTS = 16  # value ranges of the id keys, searched for repeats one at a time
_PIVOTS = [-(1 << 63) + k * ((1 << 64) // _PARTS) for k in range(1, _PARTS)]
#: Lines parsed per C-level pass in pass two: small enough that a batch's records are freed
#: before the cyclic garbage collector would walk them, and stay in the CPU cache.
BATCH = 64


def kind_table(*kinds: int) -> bytes:
    """A ``bytes.translate`` table turning a block's kinds into 1 (one of ``kinds``) or 0."""
    return bytes(kind in kinds for kind in range(256))


_FINAL_ONLY = kind_table(FINAL)


def _blocks(fd: int, end: int = -1) -> Iterator[tuple[bytes, int]]:
    """A file's complete lines, about :data:`READ_CHUNK` bytes of them at a time.

    Yields ``(data, cut)``: ``data[:cut]`` holds whole lines, each *after* a ``\\n``
    (``b"\\nline 1\\nline 2"``), so it is as long as its lines are in the file and a pattern
    can anchor a line on its ``\\n``; ``data`` may go on past ``cut`` with the start of the
    next line. A ``cut`` of 0 marks an unterminated tail at the end of the file (``data[1:]``).
    Each read starts at the newline before the next line: no block is copied or joined.

    Args:
        fd: read with ``os.pread`` from offset 0 (the file position is not used).
        end: stop after this many bytes (negative: at the end of the file).
    """
    pos = 0
    size = READ_CHUNK
    while end < 0 or pos < end:
        want = size if end < 0 else min(size, end - pos + 1)
        data = os.pread(fd, want, pos - 1) if pos else b"\n" + os.pread(fd, want - 1, 0)
        cut = data.rfind(b"\n")
        if cut > 0:
            yield data, cut
            pos += cut
            size = READ_CHUNK
        elif len(data) < want:  # the end of the file, within a line or after the last one
            if len(data) > 1:
                yield data, 0
            return
        else:
            size *= 2  # a line longer than a block


def _index_line(line: bytes, counts: ReadCounts) -> tuple[int, int, bool]:
    """``(kind, id key, ok)`` of one complete line (without its newline); counted in ``counts``.

    The reference for what pass one makes of a line (:func:`parse_head`: only a whole valid
    record is one); :meth:`_IndexBuilder.add_block` reads blocks of records the same way.
    The key is ``-1`` for a damaged line (neither a record, an event nor blank): Python's
    ``hash`` never returns -1.
    """
    head = parse_head(line)
    if head is not None:
        counts.lines += 1
        counts.records += 1
        return FINAL, hash(head[0]), head[1] == "ok"
    if not line.strip():
        return SKIP, 0, False
    counts.lines += 1
    event = load_event(line)
    _count_event(event, counts)
    if event is None:
        return SKIP, -1, False
    return (RUN if event.get("event") == "run" else SKIP), 0, False


class _IndexBuilder:
    """Pass one's memory: per item record its id's key and whether it is ok (17 bytes).

    A key is Python's hash of the id: enough inside one process (SipHash:
    collision odds as for ids.id_digest) and much cheaper than a blake2b digest. The keys are
    kept in record order, and a second copy is sorted into :data:`_PARTS` value ranges a block
    at a time, so that the ids that repeat are found one range at a time with a small set,
    instead of sorting a million Python ints at once (~60 MB).
    """

    def __init__(self, index: FinalIndex) -> None:
        self.index = index
        self.keys = array("q")
        self.oks = bytearray()
        self.parts = [array("q") for _ in range(_PARTS)]
        self.others = array("Q")  # the line (index into kinds) of every line not a record
        self.path = ""  # the file being read, and the index into kinds of its first line
        self.file_start = 0
        self.vector = False  # the file is big enough for the block path (VECTOR_FROM)

    def add_block(self, data: bytes, cut: int) -> None:
        """Index the whole lines in ``data[:cut]`` (see :func:`_blocks`)."""
        if not self._add_records(data, cut):
            lines = data[:cut].split(b"\n")
            del lines[0]
            self._add_lines(lines)

    def _add_records(self, data: bytes, cut: int) -> bool:
        """Add the block if every line is a valid item record (:func:`block_heads`); else False.

        The same kinds, keys and oks as :func:`_index_line` on each line, in C-level passes.
        Only for files of :data:`VECTOR_FROM` bytes or more (smaller ones: line by line).
        """
        if not self.vector:
            return False
        lines = data[1 : cut + 1]  # the lines, each after a newline, and the newline after the last
        heads = block_heads(lines, newlines(lines))
        if heads is None:
            return False
        n = len(heads)
        self._add_keys(list(map(hash, map(HEAD_ID, heads))))
        self.oks += bytes(map(_OK_STATUS.__eq__, map(HEAD_STATUS, heads)))
        index = self.index
        index.kinds += _FINAL_BYTE * n
        index.counts.lines += n
        index.counts.records += n
        return True

    def _add_lines(self, lines: list[bytes]) -> None:
        """Add lines one at a time (:func:`_index_line`); note the damaged ones."""
        index = self.index
        counts, kinds = index.counts, index.kinds
        keys = []
        for line in lines:
            kind, key, ok = _index_line(line, counts)
            if kind == FINAL:
                keys.append(key)
                self.oks.append(ok)
            else:
                if key == -1:
                    counts.note_damaged(self.path, len(kinds) - self.file_start + 1)
                self.others.append(len(kinds))
            kinds.append(kind)
        self._add_keys(keys)

    def _add_keys(self, keys: list[int]) -> None:
        self.keys.fromlist(keys)
        keys.sort()
        lo = 0
        for part, pivot in zip(self.parts, _PIVOTS, strict=False):  # the last part: the rest
            hi = bisect_left(keys, pivot, lo)
            part.fromlist(keys[lo:hi])
            lo = hi
        self.parts[-1].fromlist(keys[lo:])

    def repeated(self) -> set[int]:
        """The keys of more than one record (frees the sorted copies)."""
        found: set[int] = set()
        parts, self.parts = self.parts, []
        while parts:
            part = parts.pop()
            if len(set(part)) < len(part):
                ordered = sorted(part)
                found.update(a for a, b in pairwise(ordered) if a == b)
        return found

    def line_of(self) -> Callable[[int], int]:
        """A function from a record's number (in record order) to its line (index into kinds)."""
        # The records before each other line; a record's line is its number plus the other
        # lines that come before it.
        before = array("q", map(operator.sub, self.others, count()))
        return lambda i: i + bisect_right(before, i)


@dataclass
class FinalIndex:
    """Where each id's final record is, across results files read in order (pass one).

    ``kinds`` holds one byte per complete line of every file, in order: :data:`FINAL` (the
    line holding an id's final record), :data:`SUPERSEDED` (an earlier record of an id),
    :data:`RUN` (a run record) or :data:`SKIP`. It is all that pass one keeps: the ids take
    17 bytes a record while it runs (:class:`_IndexBuilder`), so a million-line file costs
    ~18 MB, then 1 MB, whatever the size of its records. Pass two, :meth:`blocks` or
    :meth:`lines`, streams the files again.
    """

    paths: list[str]
    counts: ReadCounts
    kinds: bytearray = field(default_factory=bytearray)
    ends: list[int] = field(default_factory=list)  # bytes of complete lines read per file
    files: list[tuple[int, int]] = field(default_factory=list)  # (st_dev, st_ino) per file
    line_counts: list[int] = field(default_factory=list)  # complete lines read per file
    ids: int = 0  # distinct ids
    ok: int = 0  # ids whose final record is ok
    kept_ok: int = 0  # ids whose ok was kept over a later failure (keep_ok)

    def blocks(self) -> Iterator[tuple[str, int, list[bytes], bytes]]:
        """Pass two a block at a time: ``(path, first line number, lines, kinds)``, in order.

        ``lines`` are the complete lines of about a megabyte of a file (without newlines)
        and ``kinds`` their kinds, one byte a line (select with ``kinds.translate``, see
        :func:`kind_table`). Raises ConfigError when a file was replaced or truncated since
        pass one.
        """
        kinds = self.kinds
        g = 0
        for path, end, ident, total in zip(
            self.paths, self.ends, self.files, self.line_counts, strict=True
        ):
            with _open_for_reading(path) as stream:
                st = os.fstat(stream.fileno())
                if (st.st_dev, st.st_ino) != ident or st.st_size < end:
                    raise _changed(path)
                lineno = 1
                for data, cut in _blocks(stream.fileno(), end):
                    lines = data.split(b"\n")  # b"", the lines, the start of the next one
                    del lines[0]
                    lines.pop()
                    n = len(lines)
                    if not cut or lineno + n - 1 > total:
                        raise _changed(path)  # not the lines pass one read
                    yield path, lineno, lines, bytes(kinds[g : g + n])
                    g += n
                    lineno += n
                if lineno - 1 != total:
                    raise _changed(path)

    def lines(self, *wanted: int) -> Iterator[tuple[str, int, bytes, int]]:
        """``(path, line number, line, kind)`` of the lines of the ``wanted`` kinds, in order.

        Raises ConfigError when a file was replaced or truncated since pass one.
        """
        keep = kind_table(*wanted)
        for path, first, lines, kinds in self.blocks():
            chosen = kinds.translate(keep)
            yield from zip(
                repeat(path),
                compress(count(first), chosen),
                compress(lines, chosen),
                compress(kinds, chosen),
                strict=False,  # repeat() and count() never end
            )


def _changed(path: str) -> ConfigError:
    return ConfigError(
        f"{_shown(path)}: was replaced or truncated while being read; run the command again"
    )


def index_final(
    paths: Sequence[str], *, keep_ok: bool = False, counts: ReadCounts | None = None
) -> FinalIndex:
    """Pass one over results files: find the line of each id's final record.

    Args:
        paths: results files, read in this order (a later record of an id supersedes one
            before it, in the same file or an earlier one).
        keep_ok: an id whose last record is failed but that has an ok record earlier keeps
            its last ok record instead (the merge rule: an ok is never lost).
        counts: filled in with what the files hold (records, runs, unreadable lines).
    """
    index = FinalIndex(list(paths), counts if counts is not None else ReadCounts())
    built = _IndexBuilder(index)
    for path in index.paths:
        with _open_for_reading(path) as stream:
            st = os.fstat(stream.fileno())
            index.files.append((st.st_dev, st.st_ino))
            index.counts.files += 1
            pos = 0
            before = len(index.kinds)
            built.path, built.file_start = path, before
            built.vector = st.st_size >= VECTOR_FROM
            for data, cut in _blocks(stream.fileno()):
                if not cut:
                    index.counts.unreadable += 1  # torn, or being written right now
                    index.counts.torn.append(path)
                    break
                pos += cut
                built.add_block(data, cut)
            index.ends.append(pos)
            index.line_counts.append(len(index.kinds) - before)
    _resolve_final(index, built, keep_ok)
    return index


def _resolve_final(index: FinalIndex, built: _IndexBuilder, keep_ok: bool) -> None:
    """Demote every record but the last of each id to SUPERSEDED (pass one marked all FINAL).

    Most ids appear once, so the ids that repeat are found first, and only their records are
    walked, backwards: the first one met is the last written.
    """
    kinds, keys, oks = index.kinds, built.keys, built.oks
    repeated = built.repeated()
    index.ids = len(keys)
    index.ok = oks.count(1)
    if not repeated:
        return
    line_of = built.line_of()
    mine = list(compress(count(), map(repeated.__contains__, keys)))  # their records, in order
    seen: set[int] = set()
    failed_last: dict[int, int] = {}  # keep_ok: id key -> number of its last (failed) record
    for i in reversed(mine):
        key = keys[i]
        if key in seen:
            kinds[line_of(i)] = SUPERSEDED
            index.ids -= 1
            index.ok -= oks[i]
        else:
            seen.add(key)
            if keep_ok and not oks[i]:
                failed_last[key] = i
    if not failed_last:
        return
    for i in reversed(mine):  # the latest ok of each, if it has one
        last = failed_last.pop(keys[i], None) if oks[i] else None
        if last is not None:
            kinds[line_of(i)] = FINAL
            kinds[line_of(last)] = SUPERSEDED
            index.kept_ok += 1
            index.ok += 1
            if not failed_last:
                break


def final_states(
    paths: Sequence[str], *, keep_ok: bool = False, counts: ReadCounts | None = None
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Each id's final record across ``paths`` read in order: ``(path, line number, record)``.

    Yielded in the order the final records appear. Two streaming passes (see
    :class:`FinalIndex`): memory does not grow with the size of the records.

    Args:
        paths: results files, in order.
        keep_ok: prefer an id's last ok record over a later failure (see :func:`index_final`).
        counts: filled in with what the files hold.
    """
    index = index_final(paths, keep_ok=keep_ok, counts=counts)
    for path, first, lines, kinds in index.blocks():
        chosen = kinds.translate(_FINAL_ONLY)
        bodies = list(compress(lines, chosen))
        numbers = list(compress(count(first), chosen))
        for lo in range(0, len(bodies), BATCH):
            records = load_records(bodies[lo : lo + BATCH])
            for lineno, record in zip(numbers[lo : lo + BATCH], records, strict=True):
                if record is None:
                    index.counts.unreadable += 1
                else:
                    yield path, lineno, record
