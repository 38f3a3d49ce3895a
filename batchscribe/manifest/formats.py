"""The manifest formats, parsed line by line: JSON Lines (with the resumed run's block path
beside the line path it must agree with), CSV, and text lists (one path or URL a line)."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator

import orjson

from batchscribe.ids import MASK64, DigestSet, id_key
from batchscribe.items import LOCAL_FILE, Item, Problem, is_cloud_uri
from batchscribe.manifest.fields import (
    item_from_fields,
    json_type,
    looks_like_url,
    make_item,
    problem_at,
    quote,
    resolve,
)
from batchscribe.manifest.lines import INVALID_UTF8, TOO_LONG, Chunk, Line, chunk_lines
from batchscribe.results.resume import HAND_ON_EVERY, Settler, Skipped


def parse_jsonl(
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
    is_cloud = is_cloud_uri
    settle = None if settler is None else settler.settle
    for lineno, raw in lines:
        if raw is None:
            yield Problem(file, lineno, TOO_LONG)
            continue
        try:
            doc = loads(raw)
        except decode_error as exc:
            # Blank lines land here too: checking only on failure keeps the common path short.
            if raw.strip():
                yield problem_at(file, lineno, _json_error(raw, exc))
            continue
        if type(doc) is not dict:
            yield Problem(file, lineno, f"expected a JSON object, got {json_type(doc)}")
            continue
        # Fast path for the commonest shape, {"id": "...", "path": "..."} (or only "path"): the
        # same checks as item_from_fields + make_item, without the field loop.
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
                        item_id, resolve(base, path), LOCAL_FILE, {}, None, f"{file}:{lineno}"
                    )
                else:
                    yield problem_at(
                        file, lineno, f"duplicate id {quote(item_id)} (first seen earlier)"
                    )
                continue
        result = item_from_fields(doc, base, f"{file}:{lineno}", seen, from_json=True)
        yield problem_at(file, lineno, result) if isinstance(result, str) else result


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


def parse_jsonl_blocks(
    chunks: Iterator[Chunk],
    file: str,
    base: str,
    seen: DigestSet,
    settler: Settler,
) -> Iterator[Item | Problem | Skipped]:
    """:func:`parse_jsonl` for a resumed run, a run of lines at a time where it can be.

    A run of lines that are all ``{"id": ..., "path": ...}`` is handed to
    :meth:`~batchscribe.results.resume.Settler.settle_run` without parsing a line in Python:
    when it settles them all (done earlier, none read before), the run costs a regex pass and
    a few C-level passes; otherwise its lines are read one at a time by
    :func:`parse_jsonl`, which gives the same answer for each line.
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
        yield from parse_jsonl(chunk_lines(iter((chunk,))), file, base, seen, settler)


def _json_error(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return INVALID_UTF8
    if exc.lineno == 1:  # otherwise the error is past the end of the line: no useful column
        return f"invalid JSON: {exc.msg} (column {exc.colno})"
    return f"invalid JSON: {exc.msg}"


def parse_text(
    lines: Iterator[Line], file: str, base: str, seen: DigestSet
) -> Iterator[Item | Problem]:
    for lineno, raw in lines:
        if raw is None:
            yield Problem(file, lineno, TOO_LONG)
            continue
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            yield Problem(file, lineno, INVALID_UTF8)
            continue
        if not text or text[0] == "#":
            continue
        if looks_like_url(text) and not is_cloud_uri(text):
            result = make_item(None, text, None, {}, None, base, f"{file}:{lineno}", seen)
        else:
            result = make_item(text, None, None, {}, None, base, f"{file}:{lineno}", seen)
        yield problem_at(file, lineno, result) if isinstance(result, str) else result


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
                self.bad = (self.lineno, TOO_LONG)
            return "\n"
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            if self.bad is None:
                self.bad = (self.lineno, INVALID_UTF8)
            return raw.decode("utf-8", "replace")


def parse_csv(
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
            yield problem_at(file, feed.lineno, _csv_error(exc))
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
                yield problem_at(file, start, header_problem)
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
        result = item_from_fields(fields, base, f"{file}:{start}", seen, from_json=False)
        yield problem_at(file, start, result) if isinstance(result, str) else result


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
        found = ", ".join(quote(name) for name in names if name)
        return f"the CSV header needs a path or a url column (found: {found})"
    named = [name for name in names if name]
    if len(set(named)) != len(named):
        repeated = next(name for name in named if named.count(name) > 1)
        return f"the CSV header repeats the column {quote(repeated)}"
    return None
