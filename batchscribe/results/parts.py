"""The chunk answers of recordings sent in several requests, kept so a rerun sends only the
chunks still missing: ``RESULTS.parts.jsonl`` beside the results file (the sidecar).

Each line is one chunk's answer: ``{"part": KEY, "id": ID, "chunk": K, "answer": {...}}``,
appended in one ``write`` (like a record) and fsynced on the results file's schedule. ``KEY``
names the item *and* what its chunks are: the id, the file's size and version (a local
file's mtime; for a downloaded URL or cloud object the source's own fingerprint, never the
copy's mtime: see :mod:`batchscribe.run.fetch`), the preparation policy and the chunk layout
(every chunk's channel and samples). A changed file, changed flags or a different cut never
match old answers. A torn last line (a kill mid-write) is cut at
open; any other line that does not parse is skipped. Only the run holding the results file's
lock writes it (so it needs no lock of its own); ``report``, ``failed``, ``merge`` and
``export`` never read it. It can be deleted once its items are done.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from batchscribe.errors import RunAborted
from batchscribe.results.store import torn_tail_length

if TYPE_CHECKING:
    from batchscribe.audio.prepare import Prepared
    from batchscribe.audio.probe import PrepPolicy

__all__ = ["PartsFile", "part_key", "parts_path"]


def parts_path(results: str) -> str:
    """The sidecar of a results file: ``r.jsonl`` -> ``r.parts.jsonl`` (else ``+.parts.jsonl``)."""
    stem = results[: -len(".jsonl")] if results.endswith(".jsonl") else results
    return f"{stem}.parts.jsonl"


def part_key(
    item_id: str, size: int, version: float | str, policy: PrepPolicy, prepared: Prepared
) -> str:
    """The key chunk answers are kept under (see the module docstring); ``version``: a local
    file's mtime, or a downloaded source's fingerprint."""
    layout = [
        (chunk.channel, chunk.start, chunk.end, chunk.rate, chunk.keep_from, chunk.keep_until)
        for chunk in prepared.chunks
    ]
    named = orjson.dumps(
        [item_id, size, version, policy.transcode, policy.channels, policy.opus_bitrate,
         policy.max_chunk, prepared.transcoded_to, layout]
    )  # fmt: skip
    return hashlib.sha256(named).hexdigest()[:32]


class PartsFile:
    """The sidecar, opened on first use: :meth:`answers` (what a past run kept for a key),
    :meth:`append` (one chunk's answer), :meth:`sync`, :meth:`close`."""

    def __init__(self, path: str, *, secrets: Sequence[str | None] = ()) -> None:
        self.path = path
        self._secrets = [orjson.dumps(s)[1:-1] for s in secrets if s and len(s) >= 4]
        self._fd = -1
        self._kept: dict[str, dict[int, dict[str, Any]]] = {}
        self.dirty = False
        self.skipped = 0  # lines that did not parse

    def open(self) -> None:
        """Open (creating it), cut a torn tail, and load every kept answer; RunAborted on an
        I/O error (the run cannot keep chunk answers)."""
        if self._fd >= 0:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise RunAborted(f"{self.path}: cannot open: {exc.strerror or exc}") from None
        try:
            torn = torn_tail_length(fd)
            if torn:
                os.ftruncate(fd, os.fstat(fd).st_size - torn)
            with open(self.path, "rb") as stream:
                for line in stream:
                    self._load(line)
        except OSError as exc:
            os.close(fd)
            raise RunAborted(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        self._fd = fd

    def _load(self, line: bytes) -> None:
        try:
            doc = orjson.loads(line)
            key, chunk, answer = doc["part"], doc["chunk"], doc["answer"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.skipped += 1
            return
        if isinstance(key, str) and type(chunk) is int and isinstance(answer, dict):
            self._kept.setdefault(key, {})[chunk] = answer
        else:
            self.skipped += 1

    def answers(self, key: str) -> dict[int, dict[str, Any]]:
        """The answers kept under ``key``, by chunk index (empty when none)."""
        return self._kept.get(key, {})

    def append(self, key: str, item_id: str, chunk: int, answer: dict[str, Any]) -> None:
        """Keep one chunk's answer: one line, one write. RunAborted on an I/O error."""
        line = orjson.dumps({"part": key, "id": item_id, "chunk": chunk, "answer": answer})
        for secret in self._secrets:
            line = line.replace(secret, b"***")
        data = line + b"\n"
        try:
            written = os.write(self._fd, data)
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            raise RunAborted(f"{self.path}: cannot write: {exc.strerror or exc}") from None
        self._kept.setdefault(key, {})[chunk] = answer
        self.dirty = True

    def forget(self, key: str) -> None:
        """Drop the answers of an item that is finished (memory; the file keeps them)."""
        self._kept.pop(key, None)

    def sync(self) -> None:
        """fsync if anything was appended since the last sync."""
        if self._fd >= 0 and self.dirty:
            self.dirty = False
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise RunAborted(f"{self.path}: cannot sync: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Sync and close (safe to call twice)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            if self.dirty:
                self.dirty = False
                os.fsync(fd)
        finally:
            os.close(fd)
