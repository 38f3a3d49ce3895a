"""The results store: one JSONL file, append-only, that is also the resume state.

- **lock**: an OS file lock (``flock``) on the results file itself, so only one run writes it
  and a killed run never leaves it stuck; a second run gets :class:`ResultsBusy` at once.
- **repair**: a torn last line (a kill mid-write) is cut back to the last newline, touching no
  byte before it.
- **scan**: streams the file and keeps, per id, only a 63-bit digest and its last status, in
  sorted arrays. The writer puts ``id`` and ``status`` first, so the scan reads them without
  parsing whole records.
- **append**: each record is one ``os.write`` of one line on an ``O_APPEND`` descriptor, from a
  single writer, so records are never interleaved and a ``kill -9`` loses nothing finished.
  ``fsync`` runs at most once a second (:meth:`ResultsStore.sync`) and at close.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import stat
import tempfile
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, BinaryIO

import orjson

from batchscribe.errors import ConfigError, ResultsBusy, RunAborted
from batchscribe.ids import id_digest

_ID_PREFIX = b'{"id":"'
_STATUS_SEP = b'","status":"'
_READ_CHUNK = 1 << 20


def parse_head(line: bytes) -> tuple[str, str] | None:
    """The ``(id, status)`` of a results line, or None for a line that is not an item record.

    Fast path for the layout this writer produces (``{"id":"…","status":"…",…``): no full parse.
    In a JSON string every ``"`` byte is escaped, so the first ``","status":"`` is the real
    separator. Other layouts fall back to a full parse.
    """
    if line.startswith(_ID_PREFIX):
        end = line.find(_STATUS_SEP, 7)
        if end > 0:
            raw = line[7:end]
            start = end + len(_STATUS_SEP)
            stop = line.find(b'"', start)
            if stop > 0:
                try:
                    item_id = (
                        orjson.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode("utf-8")
                    )
                    return item_id, line[start:stop].decode("ascii")
                except (orjson.JSONDecodeError, UnicodeDecodeError):
                    return None
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("id"), str) and "status" in doc:
        return doc["id"], str(doc["status"])
    return None


def iter_lines(stream: BinaryIO) -> Iterator[bytes]:
    """Complete lines (without the newline) of a binary stream; a final unterminated line too."""
    for line in stream:
        yield line[:-1] if line.endswith(b"\n") else line


def fingerprint(size: object, version: object) -> int:
    """A 32-bit fingerprint of a source's size and version (mtime, or a cloud ETag).

    ``--rescan-changed`` compares it with the fingerprint of the item's last ok record.
    """
    return zlib.crc32(f"{size}:{version!r}".encode())


def record_fingerprint(record: dict[str, Any]) -> int:
    """The fingerprint of the source as a record saw it (0 when it recorded neither)."""
    size = record.get("size")
    version = record.get("etag", record.get("generation", record.get("mtime")))
    if size is None or version is None:
        return 0
    return fingerprint(size, version)


@dataclass(frozen=True)
class ResumeState:
    """The last status of every id in a results file, as sorted arrays of 63-bit digests.

    With ``fingerprints`` (``--rescan-changed``), ``ok_fingerprints[i]`` is the source
    fingerprint of the last ok record of ``ok[i]``.
    """

    ok: array[int]
    failed: array[int]
    records: int = 0
    corrupt_lines: int = 0
    ok_fingerprints: array[int] | None = None

    @staticmethod
    def key(item_id: str) -> int:
        """The digest used for lookups (63 bits, so a status bit fits beside it)."""
        return id_digest(item_id) >> 1

    def status(self, key: int) -> str | None:
        """``"ok"``, ``"failed"`` or None (never seen) for a digest from :meth:`key`."""
        if _contains(self.ok, key):
            return "ok"
        if _contains(self.failed, key):
            return "failed"
        return None

    def ok_fingerprint(self, key: int) -> int | None:
        """The source fingerprint of an ok id's last ok record (None if unknown or not ok)."""
        if self.ok_fingerprints is None:
            return None
        i = bisect_left(self.ok, key)
        if i < len(self.ok) and self.ok[i] == key:
            return self.ok_fingerprints[i] or None
        return None

    def __len__(self) -> int:
        return len(self.ok) + len(self.failed)


def _contains(values: array[int], key: int) -> bool:
    i = bisect_left(values, key)
    return i < len(values) and values[i] == key


class _StateBuilder:
    """Collects (digest, status) in file order, then keeps the last status of each digest."""

    def __init__(self, fingerprints: bool = False) -> None:
        self._entries = array("Q")  # (digest63 << 1) | is_ok, in file order
        self._fingerprints = array("I") if fingerprints else None  # parallel to _entries
        self.records = 0
        self.corrupt = 0

    def add(self, item_id: str, status: str, fp: int = 0) -> None:
        self._entries.append((id_digest(item_id) >> 1) << 1 | (status == "ok"))
        if self._fingerprints is not None:
            self._fingerprints.append(fp)
        self.records += 1

    def build(self) -> ResumeState:
        entries = self._entries
        ordered = sorted(entries)
        # Ids recorded more than once (a failure later retried, a rescan): resolve by file order.
        last: dict[int, int] = {}
        for a, b in pairwise(ordered):
            if a >> 1 == b >> 1:
                last[a >> 1] = -1
        if last:
            for value in entries:
                if value >> 1 in last:
                    last[value >> 1] = value & 1
        ok, failed = array("Q"), array("Q")
        previous = -1
        for value in ordered:
            key = value >> 1
            if key == previous:
                continue
            previous = key
            is_ok = last[key] if key in last else value & 1
            (ok if is_ok else failed).append(key)
        fps = None
        if self._fingerprints is not None:
            fps = array("I", [0]) * len(ok)
            for value, fp in zip(entries, self._fingerprints, strict=True):
                if value & 1:  # an ok record: the last one in file order wins
                    i = bisect_left(ok, value >> 1)
                    if i < len(ok) and ok[i] == value >> 1:
                        fps[i] = fp
        return ResumeState(ok, failed, self.records, self.corrupt, fps)


def scan(stream: BinaryIO, *, fingerprints: bool = False) -> ResumeState:
    """Build the resume state from a results stream (only complete, parseable lines count).

    ``fingerprints`` also keeps each ok record's source fingerprint (a full parse per line).
    """
    builder = _StateBuilder(fingerprints)
    for line in iter_lines(stream):
        if not line.strip():
            continue
        if fingerprints:
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict) and isinstance(doc.get("id"), str) and "status" in doc:
                builder.add(doc["id"], str(doc["status"]), record_fingerprint(doc))
            elif not line.startswith(b'{"event":'):
                builder.corrupt += 1
            continue
        head = parse_head(line)
        if head is None:
            if not line.startswith(b'{"event":'):
                builder.corrupt += 1
            continue
        builder.add(*head)
    return builder.build()


def torn_tail_length(fd: int) -> int:
    """How many bytes after the last newline (0 when the file ends with one, or is empty)."""
    size = os.fstat(fd).st_size
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        chunk = os.pread(fd, pos - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return size - (start + newline + 1)
        pos = start
    return size


class ResultsStore:
    """The single writer of a results file. Use :meth:`open`, then :meth:`append`, :meth:`close`."""

    def __init__(self, path: str, *, secrets: Sequence[str | None] = ()) -> None:
        self.path = path
        # Secrets (the API key) as they would appear inside a JSON string: a server that
        # echoes the key in an error or an answer must not get it written to disk.
        self._secrets = [orjson.dumps(s)[1:-1] for s in secrets if s and len(s) >= 4]
        self._fd = -1
        self.dirty = False
        self.written = 0
        self.repaired_bytes = 0
        # Set by the first failed write or fsync: the store then refuses every later write, so
        # nothing lands after a partial line. After a failed fsync it never fsyncs again (the
        # kernel may have dropped the dirty pages and a second fsync would report success).
        self.failed: str | None = None
        self._fsync_failed = False

    def open(self, *, fingerprints: bool = False) -> ResumeState:
        """Lock the file, repair a torn tail, and scan it. Raises ResultsBusy, ConfigError."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: cannot open results file: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ResultsBusy(
                    f"{self.path}: another batchscribe run holds this results file; "
                    "wait for it to finish (or stop it) and run again"
                ) from None
            raise ConfigError(f"{self.path}: cannot lock results file: {exc.strerror}") from None
        self._fd = fd
        try:
            if not os.path.isfile(self.path):
                raise ConfigError(f"{self.path}: results path is not a regular file")
            torn = torn_tail_length(fd)
            if torn:
                os.ftruncate(fd, os.fstat(fd).st_size - torn)
                os.fsync(fd)
                self.repaired_bytes = torn
            with open(self.path, "rb", buffering=_READ_CHUNK) as stream:
                return scan(stream, fingerprints=fingerprints)
        except BaseException:
            self.close()
            raise

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, in one write. Raises RunAborted on an I/O error."""
        line = orjson.dumps(record)
        for secret in self._secrets:
            if secret in line:
                line = line.replace(secret, b"***")
        self.write_line(line + b"\n")

    def write_line(self, data: bytes) -> None:
        """Write one complete line (bytes ending in a newline) in one ``write``."""
        if self.failed:
            raise RunAborted(self.failed)
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # a short write (rare: signals, nearly full disks)
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            self.failed = (
                f"{self.path}: cannot write results: {exc.strerror or exc}; "
                "free some space or fix the disk, then run again to resume"
            )
            raise RunAborted(self.failed) from None
        self.dirty = True
        self.written += 1

    def sync(self) -> None:
        """fsync if anything was written since the last sync. Raises RunAborted on failure.

        A failed fsync is never retried as if it had worked: the kernel may have dropped the
        dirty pages, so the run stops and the next run re-checks the file.
        """
        if self._fsync_failed:
            raise RunAborted(self.failed or f"{self.path}: an earlier fsync failed")
        if not self.dirty or self._fd < 0:
            return
        self.dirty = False
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self.failed = f"{self.path}: cannot sync results to disk: {exc.strerror or exc}"
            self._fsync_failed = True
            raise RunAborted(self.failed) from None

    @property
    def fd(self) -> int:
        return self._fd

    def close(self) -> None:
        """Sync, unlock and close (safe to call twice)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            if self.dirty and not self._fsync_failed:
                self.dirty = False
                os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the flock

    def __repr__(self) -> str:
        return f"<ResultsStore {self.path!r} written={self.written} open={self._fd >= 0}>"


# ==================================================================================== reading
# The read side, shared by the operator commands (report, failed, export, merge). Readers take
# no lock: a run may be appending while they read. Each file is read up to its last complete
# line; an unterminated tail (a write in progress, or a kill) is skipped and counted. Item
# records are recognised exactly as the resume scan recognises them (:func:`parse_head`), so a
# "final state" here always agrees with what the next run skips or retries.

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
    unreadable: int = 0  # torn or unparseable lines, skipped


def _shown(name: str) -> str:
    return name if name.isprintable() else repr(name)


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
        return open(path, "rb", buffering=_READ_CHUNK)
    except OSError as exc:
        raise ConfigError(
            f"{_shown(path)}: cannot read results file: {exc.strerror or exc}"
        ) from None


def _load_record(body: bytes) -> dict[str, Any] | None:
    """A whole item record, or None when the line is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("id"), str) and "status" in doc:
        return doc
    return None


def _load_event(body: bytes) -> dict[str, Any] | None:
    """An ``{"event": ...}`` line, or None."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) and "event" in doc else None


def _complete_lines(paths: Sequence[str], counts: ReadCounts) -> Iterator[tuple[str, int, bytes]]:
    """(path, line number, line) of every complete non-blank line; a torn tail is counted."""
    for path in paths:
        with _open_for_reading(path) as stream:
            counts.files += 1
            for lineno, line in enumerate(stream, 1):
                if not line.endswith(b"\n"):
                    counts.unreadable += 1  # torn, or being written right now
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
            _count_event(_load_event(body), counts)
            continue
        record = _load_record(body)
        if record is not None:
            counts.records += 1
            yield path, lineno, record
        else:
            _count_event(_load_event(body), counts)


def iter_run_records(
    paths: Sequence[str], counts: ReadCounts | None = None
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Every ``{"event":"run",...}`` record (one per run, written as it ends), streamed."""
    counts = counts if counts is not None else ReadCounts()
    for path, lineno, body in _complete_lines(paths, counts):
        if body.startswith(_ID_PREFIX) or b'"event"' not in body:
            continue  # an item record (or garbage): not parsed
        event = _load_event(body)
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


@dataclass
class FinalIndex:
    """Where each id's final record is, across results files read in order (pass one).

    ``kinds`` holds one byte per complete line of every file, in order: :data:`FINAL` (the
    line holding an id's final record), :data:`SUPERSEDED` (an earlier record of an id),
    :data:`RUN` (a run record) or :data:`SKIP`. Memory is ~18 bytes per item record and one
    byte per line, so a million-line file costs ~20 MB, whatever the size of its records.
    Pass two, :meth:`lines`, streams the files again and yields the lines asked for.
    """

    paths: list[str]
    counts: ReadCounts
    kinds: bytearray = field(default_factory=bytearray)
    ends: list[int] = field(default_factory=list)  # bytes of complete lines read per file
    files: list[tuple[int, int]] = field(default_factory=list)  # (st_dev, st_ino) per file
    ids: int = 0  # distinct ids
    ok: int = 0  # ids whose final record is ok
    kept_ok: int = 0  # ids whose ok was kept over a later failure (keep_ok)

    def lines(self, *wanted: int) -> Iterator[tuple[str, int, bytes, int]]:
        """``(path, line number, line, kind)`` of the lines of the ``wanted`` kinds, in order.

        Raises ConfigError when a file was replaced or truncated since pass one.
        """
        want = bytes(kind in wanted for kind in range(4))
        kinds = self.kinds
        g = 0
        for path, end, ident in zip(self.paths, self.ends, self.files, strict=True):
            with _open_for_reading(path) as stream:
                st = os.fstat(stream.fileno())
                if (st.st_dev, st.st_ino) != ident or st.st_size < end:
                    raise ConfigError(
                        f"{_shown(path)}: was replaced or truncated while being read; "
                        "run the command again"
                    )
                pos = 0
                for lineno, line in enumerate(stream, 1):
                    if pos >= end:
                        break
                    pos += len(line)
                    kind = kinds[g]
                    g += 1
                    if want[kind]:
                        yield path, lineno, line[:-1], kind


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
    counts = index.counts
    kinds = index.kinds
    # Per item record, in file order: a 64-bit hash of its id's UTF-8 bytes. Python's own
    # bytes hash is enough inside one process (SipHash: collision odds as for ids.id_digest)
    # and several times cheaper than a blake2b digest on this, the hottest loop.
    digests = array("q")
    oks = bytearray()  # 1 when the record is ok
    line_of = array("Q")  # the record's line, as an index into kinds
    lines = records = 0
    for path in index.paths:
        with _open_for_reading(path) as stream:
            st = os.fstat(stream.fileno())
            index.files.append((st.st_dev, st.st_ino))
            counts.files += 1
            pos = 0
            for line in stream:
                if line[-1:] != b"\n":
                    counts.unreadable += 1  # torn, or being written right now
                    break
                pos += len(line)
                # The hot path, for the layout the writer produces: parse_head's fast path,
                # inlined, hashing the id's bytes as they are (no escapes, valid UTF-8).
                if line.startswith(_ID_PREFIX):
                    end = line.find(_STATUS_SEP, 7)
                    start = end + 12  # len(_STATUS_SEP)
                    if end > 0 and line.find(b'"', start) > 0:
                        raw = line[7:end]
                        if b"\\" not in raw:
                            try:
                                raw.decode("utf-8")
                            except UnicodeDecodeError:
                                pass  # corrupt: parse_head says so below
                            else:
                                digests.append(hash(raw))
                                oks.append(line.startswith(b'ok"', start))
                                line_of.append(len(kinds))
                                kinds.append(FINAL)  # until a later record of the id is met
                                lines += 1
                                records += 1
                                continue
                kind = SKIP
                if line.startswith(_EVENT_PREFIX):
                    lines += 1
                    event = _load_event(line)
                    _count_event(event, counts)
                    if event is not None and event.get("event") == "run":
                        kind = RUN
                else:
                    head = parse_head(line)
                    if head is not None:
                        lines += 1
                        records += 1
                        digests.append(hash(head[0].encode("utf-8", "surrogatepass")))
                        oks.append(head[1] == "ok")
                        line_of.append(len(kinds))
                        kind = FINAL
                    elif line.strip():
                        lines += 1
                        _count_event(_load_event(line), counts)
                kinds.append(kind)
            index.ends.append(pos)
    counts.lines += lines
    counts.records += records
    _resolve_final(index, digests, oks, line_of, keep_ok)
    return index


def _resolve_final(
    index: FinalIndex, digests: array[int], oks: bytearray, line_of: array[int], keep_ok: bool
) -> None:
    """Demote every record but the last of each id to SUPERSEDED (pass one marked all FINAL).

    Most ids appear once, so the ids that repeat are found first with a sort (in C), and only
    their records are walked, backwards: the first one met is the last written.
    """
    kinds = index.kinds
    ordered = sorted(digests)
    repeated = {a for a, b in pairwise(ordered) if a == b}
    del ordered
    index.ids = len(digests)
    index.ok = oks.count(1)
    if not repeated:
        return
    seen: set[int] = set()
    failed_last: dict[int, int] = {}  # keep_ok: id hash -> index of its last (failed) record
    for i in range(len(digests) - 1, -1, -1):
        digest = digests[i]
        if digest not in repeated:
            continue
        if digest in seen:
            kinds[line_of[i]] = SUPERSEDED
            index.ids -= 1
            index.ok -= oks[i]
        else:
            seen.add(digest)
            if keep_ok and not oks[i]:
                failed_last[digest] = i
    if not failed_last:
        return
    for i in range(len(digests) - 1, -1, -1):  # the latest ok of each, if it has one
        last = failed_last.pop(digests[i], None) if oks[i] else None
        if last is not None:
            kinds[line_of[i]] = FINAL
            kinds[line_of[last]] = SUPERSEDED
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
    for path, lineno, body, _ in index.lines(FINAL):
        record = _load_record(body)
        if record is None:
            index.counts.unreadable += 1
            continue
        yield path, lineno, record


_HEAVY_FROM = b',"transcription":'
_HEAVY_TO = b',"duration":'
#: The fields :func:`load_light` leaves out: the transcript, the bulk of every ok record.
HEAVY_FIELDS = ("transcription", "words", "utterances")


def load_light(body: bytes) -> dict[str, Any] | None:
    """An item record without its transcript fields (:data:`HEAVY_FIELDS`), or None.

    A long record in the writer's layout is read by :func:`load_split`, so reading it costs
    the same whatever the length of its transcript; a short one (where two small parses cost
    more than one) or any other layout by a full parse.
    """
    if len(body) >= _SPLIT_FROM:
        record = load_split(body)
        if record is not None:
            return record
    record = _load_record(body)
    if record is not None:
        for name in HEAVY_FIELDS:
            record.pop(name, None)
    return record


_SPLIT_FROM = 4096  # bytes: below this a full parse is as quick


def load_split(body: bytes) -> dict[str, Any] | None:
    """A record in the writer's layout without :data:`HEAVY_FIELDS`; None for another layout.

    The layout is ``…,"run":…,"transcription":…,"words":…,"utterances":…,"duration":…}``: only
    the part before ``transcription`` and the part from ``duration`` on are parsed. Each part is
    parsed as a JSON object on its own, which fails unless its cut is at the record's top level
    (a cut inside a nested value leaves unbalanced brackets; one inside a string is impossible,
    as ``"`` is escaped there).
    """
    cut = body.find(_HEAVY_FROM)
    if cut <= 0 or not body.startswith(b"{"):
        return None
    try:
        head = orjson.loads(body[:cut] + b"}")
    except orjson.JSONDecodeError:
        return None
    if not (isinstance(head, dict) and isinstance(head.get("id"), str) and "status" in head):
        return None
    tail = body.rfind(_HEAVY_TO)
    while tail > cut:  # the last top-level `"duration"`: later ones are nested, so invalid
        try:
            rest = orjson.loads(b"{" + body[tail + 1 :])
        except orjson.JSONDecodeError:
            tail = body.rfind(_HEAVY_TO, cut, tail)
            continue
        if not isinstance(rest, dict):
            return None
        head.update(rest)
        return head
    return None


@dataclass
class MergeSummary:
    """What :func:`merge_results` read and wrote."""

    out: str
    counts: ReadCounts
    items: int = 0
    ok: int = 0
    kept_ok: int = 0  # ids whose ok was kept over a later failure
    runs: int = 0  # run records written (each run once)

    def line(self) -> str:
        """The one-line summary."""
        c = self.counts
        kept = f"; {self.kept_ok:,} ok kept over a later failure" if self.kept_ok else ""
        skipped = f", {c.unreadable:,} unreadable line(s) skipped" if c.unreadable else ""
        return (
            f"merge: {c.files} file(s), {c.records:,} record(s) -> {self.items:,} item(s) "
            f"({self.ok:,} ok, {self.items - self.ok:,} failed{kept}), {self.runs:,} run "
            f"record(s){skipped} -> {self.out}"
        )


def merge_results(paths: Sequence[str], out: str) -> MergeSummary:
    """Merge results files into ``out``: each id's final record, and every run record once.

    The rule: an id's record is its last one across ``out`` (when it already has records: a
    merge adds to it, never drops what it holds) and then ``paths`` in order, except that an
    ok is never lost: when the last record is failed but an earlier one is ok, the latest ok
    is kept. Superseded records are dropped. ``out`` is locked like a run's results file
    (ResultsBusy when a run holds it) and replaced atomically, so readers see the old file or
    the new one, never half of one.

    Raises ConfigError when ``out`` is one of ``paths``.
    """
    out_real = os.path.realpath(out)
    for path in paths:
        if os.path.realpath(path) == out_real:
            raise ConfigError(
                f"{_shown(out)}: is both an input and --out; to add files to it, name it only "
                "as --out (an existing --out is read first, so nothing in it is lost)"
            )
    store = ResultsStore(out)
    store.open()
    try:
        st = os.stat(out)
        inputs = ([out] if st.st_size else []) + list(paths)
        summary = MergeSummary(out, ReadCounts())
        index = index_final(inputs, keep_ok=True, counts=summary.counts)
        summary.items, summary.ok, summary.kept_ok = index.ids, index.ok, index.kept_ok
        folder = os.path.dirname(out_real)
        fd, temp = tempfile.mkstemp(prefix=".batchscribe-merge-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb", buffering=_READ_CHUNK) as handle:
                runs: set[bytes | str] = set()
                for _, _, body, kind in index.lines(FINAL, RUN):
                    if kind == RUN:
                        event = _load_event(body) or {}
                        key = str(event.get("run_id") or "") or body
                        if key in runs:
                            continue  # the same run, from a file merged before
                        runs.add(key)
                        summary.runs += 1
                    handle.write(body + b"\n")
                handle.flush()
                os.fchmod(handle.fileno(), stat.S_IMODE(st.st_mode))
                os.fsync(handle.fileno())
            os.replace(temp, out)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
        return summary
    except OSError as exc:
        raise ConfigError(f"{_shown(out)}: cannot write merged results: {exc.strerror}") from None
    finally:
        store.close()
