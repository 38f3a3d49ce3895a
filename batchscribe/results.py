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

import errno
import fcntl
import os
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
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
    version = record.get("etag", record.get("mtime"))
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

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self.dirty = False
        self.written = 0
        self.repaired_bytes = 0

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
        self.write_line(orjson.dumps(record) + b"\n")

    def write_line(self, data: bytes) -> None:
        """Write one complete line (bytes ending in a newline) in one ``write``."""
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # a short write (rare: signals, nearly full disks)
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            raise RunAborted(
                f"{self.path}: cannot write results: {exc.strerror or exc}; "
                "free some space or fix the disk, then run again to resume"
            ) from None
        self.dirty = True
        self.written += 1

    def sync(self) -> None:
        """fsync if anything was written since the last sync. Raises RunAborted on failure.

        A failed fsync is never retried as if it had worked: the kernel may have dropped the
        dirty pages, so the run stops and the next run re-checks the file.
        """
        if not self.dirty or self._fd < 0:
            return
        self.dirty = False
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise RunAborted(
                f"{self.path}: cannot sync results to disk: {exc.strerror or exc}"
            ) from None

    @property
    def fd(self) -> int:
        return self._fd

    def close(self) -> None:
        """Sync, unlock and close (safe to call twice)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            if self.dirty:
                self.dirty = False
                os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the flock

    def __repr__(self) -> str:
        return f"<ResultsStore {self.path!r} written={self.written} open={self._fd >= 0}>"
