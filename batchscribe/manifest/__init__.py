"""Manifest reading: sources (JSONL, CSV, text list, directory, stdin) -> items and problems.

:func:`iter_sources` streams every source in order and yields an :class:`Item` for each usable
entry and a :class:`Problem` (``FILE:LINE: message``) for each bad one; a bad line never stops the
run. A source that cannot be read at all raises :class:`ManifestError`; call
:func:`check_sources` first to fail before any work starts.

Everything streams: files are read in binary, in runs of whole lines as they arrive, and parsed
one line at a time (decoded per line, so one bad byte spoils one line); directories are walked
lazily one level at a time, and the only state that grows with the input is the shared set of
id digests used to spot duplicate ids. A resumed run hands whole runs of ``{"id", "path"}``
lines to the resume's :class:`~batchscribe.results.resume.Settler`, which skips them at once
when all are done.
"""

from __future__ import annotations

import csv
import itertools
import os
import re
import stat
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO, Literal

import orjson

from batchscribe import cloud
from batchscribe.errors import ManifestError
from batchscribe.ids import MASK64, DigestSet, id_key
from batchscribe.items import CLOUD_OBJECT, LOCAL_FILE, URL, Item, Problem
from batchscribe.pulse import (
    AUDIO_EXTENSIONS,
    PARAM_NAMES,
    PulseParams,
    check_combination,
    coerce_param,
)
from batchscribe.results.resume import HAND_ON_EVERY, Settler, Skipped

__all__ = ["Item", "ManifestError", "Problem", "check_sources", "iter_sources"]


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
STDIN = "-"
STDIN_NAME = "<stdin>"

MAX_LINE = 16 * 1024 * 1024  # longest line read; a longer one is skipped with a problem
_READ_LIMIT = MAX_LINE + 1  # room for the newline
_CHUNK = 128 * 1024  # bytes asked for per read
_BUFFER = 256 * 1024
_BOM = b"\xef\xbb\xbf"
_QUOTE_MAX = 200  # characters of user content quoted in a message
_MESSAGE_MAX = 500

_OWN_FIELDS = frozenset({"id", "path", "url"})
_PARAM_FIELDS = frozenset(PARAM_NAMES)
_TOO_LONG = f"line is longer than {MAX_LINE // (1024 * 1024)} MiB; skipped"
_INVALID_UTF8 = "invalid UTF-8"

Line = tuple[int, bytes | None]  # (1-based line number, raw bytes or None when too long)


# --------------------------------------------------------------------------- public functions


def check_sources(sources: Sequence[str]) -> None:
    """Raise :class:`ManifestError` unless every source can be read.

    Args:
        sources: manifest paths, directories, or ``-`` for stdin (at most once).
    """
    stdin_seen = False
    for source in sources:
        if source == STDIN:
            if stdin_seen:
                raise ManifestError("- (stdin) is given more than once")
            stdin_seen = True
            continue
        if cloud.is_cloud_uri(source):
            cloud.check_source(source)  # lists one key: fails before any request is sent
            continue
        name = _printable(source)
        try:
            mode = os.stat(source).st_mode
        except OSError as exc:
            raise ManifestError(f"{name}: cannot read: {_reason(exc)}") from exc
        if stat.S_ISDIR(mode):
            try:
                with os.scandir(source):
                    pass
            except OSError as exc:
                raise ManifestError(f"{name}: cannot read directory: {_reason(exc)}") from exc
        elif stat.S_ISREG(mode):
            try:
                with open(source, "rb"):
                    pass
            except OSError as exc:
                raise ManifestError(f"{name}: cannot read manifest: {_reason(exc)}") from exc
        elif stat.S_ISFIFO(mode):
            # A pipe such as bash's <(...): opening it here could block or eat its data.
            if not os.access(source, os.R_OK):
                raise ManifestError(f"{name}: cannot read manifest: permission denied")
        else:
            raise ManifestError(f"{name}: not a manifest file or a directory")


def iter_sources(
    sources: Sequence[str],
    *,
    stdin: BinaryIO | None = None,
    seen: DigestSet | None = None,
    checked: bool = False,
    settler: Settler | None = None,
    defaults: PulseParams | None = None,
) -> Iterator[Item | Problem | Skipped]:
    """Stream the items and problems of every source, in order.

    Sources are checked with :func:`check_sources` when iteration starts. A source that fails
    while being read raises :class:`ManifestError`.

    Args:
        sources: manifest files (``.jsonl``/``.ndjson``/``.json``, ``.csv``, ``.txt``/``.lst``/
            ``.list``, anything else sniffed), directories (scanned for audio), or ``-``.
        stdin: the stream to read for ``-`` (default: ``sys.stdin.buffer``).
        seen: id digests already taken, shared across sources; an item whose id is in it is a
            duplicate (a problem). Created when None; valid items' ids are added to it, as
            ``seen.key(id)`` (:func:`~batchscribe.ids.id_digest` unless the set says otherwise;
            one created here uses the cheaper in-process :func:`~batchscribe.ids.id_key`).
        checked: the caller has just run :func:`check_sources` (a bucket check costs a request).
        settler: asked about the id of each valid item of the common JSONL shape (a path, no
            other fields) once its duplicate check passed; an item it settles (a resumed run
            skips it) is never built: the settler counts it, and the counts it holds are
            yielded as a :class:`~batchscribe.results.resume.Skipped` from time to time
            (the caller takes the rest from the settler).
        defaults: the run's Pulse parameters: an item whose own fields (or URL input) do not
            fit with them (:func:`~batchscribe.pulse.check_combination`) is a problem of its
            line. Without them, only an item that sets its own ``model`` is checked.
    """
    if defaults is None:
        yield from _iter_sources(sources, stdin, seen, checked, settler)
        return
    for entry in _iter_sources(sources, stdin, seen, checked, settler):
        if type(entry) is Item and (entry.params or entry.is_url):
            params = defaults.with_overrides(entry.params)
            problem = check_combination(params, url_input=entry.is_url)
            if problem is not None:
                file, _, line = entry.origin.rpartition(":")
                if not line.isdigit():  # (an origin without a line: a directory's file)
                    file, line = entry.origin, "0"
                yield _problem(file, int(line), problem)
                continue
        yield entry


def _iter_sources(
    sources: Sequence[str],
    stdin: BinaryIO | None,
    seen: DigestSet | None,
    checked: bool,
    settler: Settler | None,
) -> Iterator[Item | Problem | Skipped]:
    """:func:`iter_sources` without the check against the run's parameters."""
    if not checked:
        check_sources(sources)
    if seen is None:
        seen = DigestSet(key=id_key)  # private to this reader: the cheap in-process hash
    for source in sources:
        if source == STDIN:
            stream = stdin if stdin is not None else sys.stdin.buffer
            try:
                yield from _read_stream(stream, STDIN_NAME, os.getcwd(), "sniff", seen, settler)
            except OSError as exc:
                raise ManifestError(f"{STDIN_NAME}: read failed: {_reason(exc)}") from exc
        elif cloud.is_cloud_uri(source):
            yield from _read_bucket(source, seen)
        elif os.path.isdir(source):
            try:
                yield from _read_directory(source, seen)
            except OSError as exc:  # the folder went away after check_sources
                raise ManifestError(f"{_printable(source)}: cannot read: {_reason(exc)}") from exc
        else:
            yield from _read_file(source, seen, settler)


# --------------------------------------------------------------------------- sources


def _read_file(
    source: str, seen: DigestSet, settler: Settler | None = None
) -> Iterator[Item | Problem | Skipped]:
    name = _printable(source)
    kind = _KINDS.get(os.path.splitext(source)[1].lower(), "sniff")
    try:
        stream = open(source, "rb", buffering=_BUFFER)  # noqa: SIM115 (closed below; a generator)
    except OSError as exc:
        raise ManifestError(f"{name}: cannot read manifest: {_reason(exc)}") from exc
    with stream:
        # A pipe or an inherited descriptor (bash's <(...) is /dev/fd/63) has no folder of its
        # own: relative paths resolve against the working directory, as for stdin.
        if _is_stream(source, stream):
            base = os.getcwd()
        else:
            base = os.path.dirname(os.path.abspath(source))
        try:
            yield from _read_stream(stream, name, base, kind, seen, settler)
        except OSError as exc:
            raise ManifestError(f"{name}: read failed: {_reason(exc)}") from exc


def _read_stream(
    stream: BinaryIO,
    file: str,
    base: str,
    kind: Kind,
    seen: DigestSet,
    settler: Settler | None = None,
) -> Iterator[Item | Problem | Skipped]:
    chunks = _read_chunks(stream)
    if kind == "csv":
        yield from _parse_csv(_chunk_lines(chunks), file, base, seen)
        return
    head, chunks = _first_content(chunks)
    if head is None:
        return
    lineno, first = head
    if kind == "sniff":
        kind = _sniff(first)
        if kind == "csv":
            yield from _parse_csv(_chunk_lines(chunks), file, base, seen)
            return
    if kind == "jsonl":
        if first[:1] == b"[":
            yield _problem(
                file, lineno, "this is a JSON array, not JSON Lines: write one JSON object per line"
            )
            return
        if settler is None or not settler.runs:
            yield from _parse_jsonl(_chunk_lines(chunks), file, base, seen, settler)
        else:
            yield from _parse_jsonl_blocks(chunks, file, base, seen, settler)
    else:
        yield from _parse_text(_chunk_lines(chunks), file, base, seen)


Chunk = tuple[int, bytes | None]  # (number of its first line, whole lines; None: one too long)


def _read_chunks(stream: BinaryIO) -> Iterator[Chunk]:
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
        data = read(_CHUNK)
        if not data:
            break
        if start:
            data = head + data
            if len(data) < len(_BOM) and _BOM.startswith(data):
                head = data
                continue
            start = False
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        if skipping:
            newline = data.find(b"\n")
            if newline < 0:
                continue
            skipping = False
            data = data[newline + 1 :]
            if not data:
                continue
        if parts and (newline := data.find(b"\n")) >= 0:  # the line carried over ends here
            if size + newline >= _READ_LIMIT:
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
            if size >= _READ_LIMIT:
                yield lineno, None
                lineno += 1
                parts, size, skipping = [], 0, True
    if start and head:
        parts, size = [head], len(head)
    if parts:
        yield lineno, None if size >= _READ_LIMIT else b"".join(parts)


def _chunk_lines(chunks: Iterator[Chunk]) -> Iterator[Line]:
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


def _first_content(chunks: Iterator[Chunk]) -> tuple[tuple[int, bytes] | None, Iterator[Chunk]]:
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


# --------------------------------------------------------------------------- formats


def _parse_jsonl(
    lines: Iterator[Line],
    file: str,
    base: str,
    seen: DigestSet,
    settler: Settler | None = None,
) -> Iterator[Item | Problem | Skipped]:
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    add = seen.add
    key_of = None if seen.key is id_key else seen.key
    is_cloud = cloud.is_cloud_uri
    settle = None if settler is None else settler.settle
    for lineno, raw in lines:
        if raw is None:
            yield Problem(file, lineno, _TOO_LONG)
            continue
        try:
            doc = loads(raw)
        except decode_error as exc:
            # Blank lines land here too: checking only on failure keeps the common path short.
            if raw.strip():
                yield _problem(file, lineno, _json_error(raw, exc))
            continue
        if type(doc) is not dict:
            yield Problem(file, lineno, f"expected a JSON object, got {_json_type(doc)}")
            continue
        # Fast path for the commonest shape, {"id": "...", "path": "..."} (or only "path"): the
        # same checks as _item_from_fields + _make_item, without the field loop.
        path = doc.get("path")
        if type(path) is str and len(doc) == 1 + ("id" in doc):
            item_id = doc.get("id", path)
            if (
                type(item_id) is str
                and item_id
                and path
                and "\x00" not in path
                and not is_cloud(path)
            ):
                if add(hash(item_id) & MASK64 if key_of is None else key_of(item_id)):
                    if settle is not None:
                        held = settle(item_id)
                        if held:  # skipped, and counted by the settler: no item is built
                            if held >= HAND_ON_EVERY and settler is not None:
                                skipped = settler.take()  # (held: never None)
                                if skipped is not None:
                                    yield skipped
                            continue
                    yield Item(
                        item_id, _resolve(base, path), LOCAL_FILE, {}, None, f"{file}:{lineno}"
                    )
                else:
                    yield _problem(
                        file, lineno, f"duplicate id {_quote(item_id)} (first seen earlier)"
                    )
                continue
        result = _item_from_fields(doc, base, f"{file}:{lineno}", seen, from_json=True)
        yield _problem(file, lineno, result) if isinstance(result, str) else result


# The commonest manifest line, {"id": "...", "path": "..."}, as written by jq -c (first) or
# Python's json.dumps: whole lines whose strings hold no escape and no control character.
def _id_path_lines(space: bytes) -> re.Pattern[bytes]:
    chars = rb'[^"\\\x00-\x1f]+'
    parts = (
        rb"^\{",
        rb'"id"',
        b":",
        b'"(' + chars + b')"',
        b",",
        rb'"path"',
        b":",
        b'"' + chars + b'"',
        rb"\}",
    )
    return re.compile(space.join(parts) + space + rb"\r?$", re.MULTILINE)


_ID_PATH_LINES = (_id_path_lines(b""), _id_path_lines(rb"[ \t]*"))


def _parse_jsonl_blocks(
    chunks: Iterator[Chunk],
    file: str,
    base: str,
    seen: DigestSet,
    settler: Settler,
) -> Iterator[Item | Problem | Skipped]:
    """:func:`_parse_jsonl` for a resumed run, a run of lines at a time where it can be.

    A run of lines that are all ``{"id": ..., "path": ...}`` is handed to
    :meth:`~batchscribe.results.resume.Settler.settle_run` without parsing a line in Python:
    when it settles them all (done earlier, none read before), the run costs a regex pass and
    a few C-level passes; otherwise its lines are read one at a time by
    :func:`_parse_jsonl`, which gives the same answer for each line.
    """
    for chunk in chunks:
        data = chunk[1]
        if data is not None and b"s3://" not in data and b"gs://" not in data:
            lines = data.count(b"\n") + (data[-1] != 0x0A)
            found: list[bytes] = []
            for pattern in _ID_PATH_LINES:
                found = pattern.findall(data)
                if len(found) == lines:
                    break
            else:
                found = []
            ids: list[str] | list[bytes] = found
            if found and not data.isascii():
                try:
                    data.decode("utf-8")  # orjson refuses a line that is not UTF-8: so does this
                    ids = [raw.decode("utf-8") for raw in found]
                except UnicodeDecodeError:
                    ids = []
            if ids and settler.settle_run(ids):
                skipped = settler.take()
                if skipped is not None:  # (None: nothing of this shard's to count)
                    yield skipped
                continue
        yield from _parse_jsonl(_chunk_lines(iter((chunk,))), file, base, seen, settler)


def _parse_text(
    lines: Iterator[Line], file: str, base: str, seen: DigestSet
) -> Iterator[Item | Problem]:
    for lineno, raw in lines:
        if raw is None:
            yield Problem(file, lineno, _TOO_LONG)
            continue
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            yield Problem(file, lineno, _INVALID_UTF8)
            continue
        if not text or text[0] == "#":
            continue
        if _looks_like_url(text) and not cloud.is_cloud_uri(text):
            result = _make_item(None, text, None, {}, None, base, f"{file}:{lineno}", seen)
        else:
            result = _make_item(text, None, None, {}, None, base, f"{file}:{lineno}", seen)
        yield _problem(file, lineno, result) if isinstance(result, str) else result


class _CsvFeed:
    """Decoded lines for ``csv.reader``; remembers the line number and the first bad line."""

    __slots__ = ("bad", "lineno", "lines")

    def __init__(self, lines: Iterator[Line]) -> None:
        self.lines = lines
        self.lineno = 0
        self.bad: tuple[int, str] | None = None

    def __iter__(self) -> _CsvFeed:
        return self

    def __next__(self) -> str:
        self.lineno, raw = next(self.lines)
        if raw is None:
            if self.bad is None:
                self.bad = (self.lineno, _TOO_LONG)
            return "\n"
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            if self.bad is None:
                self.bad = (self.lineno, _INVALID_UTF8)
            return raw.decode("utf-8", "replace")


def _parse_csv(
    lines: Iterator[Line], file: str, base: str, seen: DigestSet
) -> Iterator[Item | Problem]:
    feed = _CsvFeed(lines)
    reader = csv.reader(feed)
    names: list[str] | None = None
    unnamed: list[int] = []
    while True:
        start = feed.lineno + 1
        feed.bad = None
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield _problem(file, feed.lineno, _csv_error(exc))
            continue
        if feed.bad is not None:
            yield Problem(file, *feed.bad)
            if names is None:
                return  # without a readable header no row can be understood
            continue
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if names is None:
            header_problem = _csv_header_problem(cells)
            if header_problem is not None:
                yield _problem(file, start, header_problem)
                return
            names = cells
            unnamed = [i for i, name in enumerate(names) if not name]
            continue
        if len(cells) > len(names) and any(cells[len(names) :]):
            yield Problem(
                file, start, f"row has {len(cells)} cells but the header has {len(names)}"
            )
            continue
        if unnamed:
            stray = next((i for i in unnamed if i < len(cells) and cells[i]), None)
            if stray is not None:
                yield Problem(file, start, f"value in column {stray + 1}, which has no header name")
                continue
        # A short row is fine: its missing cells are absent, like empty ones.
        fields = {name: cell for name, cell in zip(names, cells, strict=False) if cell}
        result = _item_from_fields(fields, base, f"{file}:{start}", seen, from_json=False)
        yield _problem(file, start, result) if isinstance(result, str) else result


def _csv_error(exc: csv.Error) -> str:
    text = str(exc)
    if text.startswith("new-line character"):
        # The csv module's advice (about how the file was opened) is not for our users.
        return "invalid CSV: a carriage return inside an unquoted cell (quote the cell)"
    if text.startswith("field larger than field limit"):
        return f"invalid CSV: a cell is longer than {csv.field_size_limit()} characters"
    return f"invalid CSV: {text}"


def _csv_header_problem(names: list[str]) -> str | None:
    if "path" not in names and "url" not in names:
        found = ", ".join(_quote(name) for name in names if name)
        return f"the CSV header needs a path or a url column (found: {found})"
    named = [name for name in names if name]
    if len(set(named)) != len(named):
        repeated = next(name for name in named if named.count(name) > 1)
        return f"the CSV header repeats the column {_quote(repeated)}"
    return None


def _read_bucket(uri: str, seen: DigestSet) -> Iterator[Item | Problem]:
    """The audio objects under a cloud prefix, streamed; ids are keys relative to the prefix."""
    # A bucket that cannot be listed raises CloudConfigError, a ManifestError.
    for found in cloud.iter_objects(uri):
        if not seen.add(seen.key(found.rel)):
            message = f"duplicate id {_quote(found.rel)} (first seen earlier)"
            yield Problem(found.uri, 0, message)
            continue
        yield Item(
            found.rel, found.uri, CLOUD_OBJECT, {}, None, found.uri, found.size, found.version
        )


def _read_directory(root: str, seen: DigestSet) -> Iterator[Item | Problem]:
    base = os.path.abspath(root)
    for found in _walk(base, root):
        if isinstance(found, Problem):
            yield found
            continue
        rel = found
        origin = _printable(os.path.join(root, rel))
        item_id = rel
        if not rel.isascii():
            # A name that is not UTF-8 arrives with surrogate escapes, which no JSON writer
            # accepts: the id spells those bytes as \xNN instead (the source keeps the real name).
            item_id = os.fsencode(rel).decode("utf-8", "backslashreplace")
        result = _make_item(rel, None, item_id, {}, None, base, origin, seen)
        yield Problem(origin, 0, result) if isinstance(result, str) else result


def _walk(base: str, shown: str) -> Iterator[str | Problem]:
    """Relative posix paths of audio files under ``base``, in sorted order, lazily.

    Each directory level is listed and sorted on its own (a directory sorts as ``name/`` so the
    order equals sorting the full relative paths); hidden entries are skipped; a directory
    reached twice (a symlink loop or alias) is walked once.
    """
    root_stat = os.stat(base)
    visited = {(root_stat.st_dev, root_stat.st_ino)}
    stack: list[tuple[str, Iterator[tuple[str, str, bool]]]] = []
    level = _list_level(base, "")
    if isinstance(level, Problem):  # the root vanished after check_sources
        raise ManifestError(f"{_printable(shown)}: {level.message}")
    stack.append(("", iter(level)))
    while stack:
        prefix, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        _key, name, is_dir = entry
        rel = prefix + name
        if not is_dir:
            yield rel
            continue
        path = os.path.join(base, rel)
        try:
            st = os.stat(path)
        except OSError:
            continue  # vanished since listed
        ident = (st.st_dev, st.st_ino)
        if ident in visited:
            continue
        visited.add(ident)
        sub = _list_level(path, rel)
        if isinstance(sub, Problem):
            yield Problem(_printable(os.path.join(shown, rel)), 0, sub.message)
            continue
        stack.append((rel + "/", iter(sub)))


def _list_level(path: str, rel: str) -> list[tuple[str, str, bool]] | Problem:
    """One directory's visible subdirectories and audio files as (sort key, name, is_dir)."""
    found: list[tuple[str, str, bool]] = []
    try:
        with os.scandir(path) as scan:
            for entry in scan:
                name = entry.name
                if name[0] == ".":
                    continue
                try:
                    if entry.is_dir():
                        found.append((name + "/", name, True))
                    elif os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS and entry.is_file():
                        found.append((name, name, False))
                except OSError:
                    continue  # e.g. a dangling symlink that cannot be followed
    except OSError as exc:
        return Problem(rel, 0, f"cannot read directory: {_reason(exc)}")
    found.sort()
    return found


# --------------------------------------------------------------------------- fields -> item


def _item_from_fields(
    fields: Mapping[str, Any], base: str, origin: str, seen: DigestSet, *, from_json: bool
) -> Item | str:
    """Build an item from one manifest record, or return the problem with it."""
    params: dict[str, Any] = {}
    metadata: dict[str, Any] | None = None
    for key, value in fields.items():
        if key in _OWN_FIELDS:
            continue
        if key in _PARAM_FIELDS:
            if value is None:  # JSON null: no override
                continue
            try:
                params[key] = coerce_param(key, value)
            except ValueError as exc:
                return str(exc)
        elif metadata is None:
            metadata = {key: value}
        else:
            metadata[key] = value
    item_id = fields.get("id")
    if item_id is not None and type(item_id) is not str:
        if not from_json or type(item_id) is not int:
            return f'"id" must be a string or an integer, not {_json_type(item_id)}'
        item_id = str(item_id)
    return _make_item(
        fields.get("path"), fields.get("url"), item_id, params, metadata, base, origin, seen
    )


def _make_item(
    path: Any,
    url: Any,
    item_id: str | None,
    params: dict[str, Any],
    metadata: dict[str, Any] | None,
    base: str,
    origin: str,
    seen: DigestSet,
) -> Item | str:
    """Validate a record's source and id and make the item, or return the problem with it.

    ``base`` is the absolute folder relative paths resolve against.
    """
    if path is not None:
        if url is not None:
            return 'give either "path" or "url", not both'
        if type(path) is not str:
            return f'"path" must be a string, not {_json_type(path)}'
        if not path:
            return '"path" is empty'
        if "\x00" in path:
            return f'"path" contains a NUL character: {_quote(path)}'
        kind = CLOUD_OBJECT if cloud.is_cloud_uri(path) else LOCAL_FILE
        source = path if kind is CLOUD_OBJECT else _resolve(base, path)
        if item_id is None:
            item_id = path
    else:
        if url is None:
            return 'needs a "path" or a "url" field'
        if type(url) is not str:
            return f'"url" must be a string, not {_json_type(url)}'
        url_problem = _url_problem(url)
        if url_problem is not None:
            return url_problem
        source = url
        kind = URL
        if item_id is None:
            item_id = url
    if not item_id:
        return '"id" is empty'
    if "model" in params:
        # Only what the item sets itself; the engine re-checks against the run's defaults.
        combination = check_combination(PulseParams().with_overrides(params), url_input=kind is URL)
        if combination is not None:
            return combination
    if not seen.add(seen.key(item_id)):
        return f"duplicate id {_quote(item_id)} (first seen earlier)"
    return Item(item_id, source, kind, params, metadata, origin)


def _resolve(base: str, path: str) -> str:
    """``path`` made absolute against ``base`` and normalised (without touching the disk)."""
    if os.sep == "/":
        # Fast path for the common case: plain concatenation, normpath only when needed.
        joined = path if path[0] == "/" else f"{base}/{path}"
        if "/." in joined or "//" in joined:
            return os.path.normpath(joined)
        return joined
    return os.path.normpath(os.path.join(base, path))  # pragma: no cover (not POSIX)


def _url_problem(url: str) -> str | None:
    head = url[:8].lower()
    if head.startswith("https://"):
        rest = url[8:]
    elif head.startswith("http://"):
        rest = url[7:]
    else:
        return f"url must start with http:// or https://, not {_quote(url)}"
    if not rest or rest[0] in "/?#":
        return f"url has no host: {_quote(url)}"
    if not url.isprintable():
        return f"url contains unprintable characters: {_quote(url)}"
    return None


def _looks_like_url(text: str) -> bool:
    """Whether a text-list line is a URL (``scheme://...``) rather than a path."""
    scheme, sep, _ = text.partition("://")
    return (
        bool(sep)
        and len(scheme) > 1  # not a drive letter
        and scheme.isascii()
        and scheme[0].isalpha()
        and all(c.isalnum() or c in "+-." for c in scheme)
    )


# --------------------------------------------------------------------------- messages


def _problem(file: str, line: int, message: str) -> Problem:
    """A problem whose message is one printable line of bounded length."""
    if not message.isprintable():
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    if len(message) > _MESSAGE_MAX:
        message = message[:_MESSAGE_MAX] + "..."
    return Problem(file, line, message)


def _quote(value: str) -> str:
    """``repr`` of user content (escapes control characters), cut to a readable length."""
    if len(value) > _QUOTE_MAX:
        return repr(value[:_QUOTE_MAX]) + "..."
    return repr(value)


def _printable(name: str) -> str:
    """A file name safe to print on one line."""
    return name if name.isprintable() else repr(name)[1:-1]


def _reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else str(exc)


def _json_error(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return _INVALID_UTF8
    if exc.lineno == 1:  # otherwise the error is past the end of the line: no useful column
        return f"invalid JSON: {exc.msg} (column {exc.colno})"
    return f"invalid JSON: {exc.msg}"


_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)
