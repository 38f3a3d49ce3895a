"""The results store: one JSONL file, append-only, that is also the resume state.

- **lock**: an OS file lock (``flock``) on the results file itself, so only one run writes it
  and a killed run never leaves it stuck; a second run gets :class:`ResultsBusy` at once.
- **repair**: a torn last line (a kill mid-write) is cut back to the last newline, touching no
  byte before it.
- **scan**: streams the file and keeps, per id, only a 62-bit in-process key and its last
  status, in a flat hash table (:class:`ResumeState`). A line counts only when the whole line
  is a valid record (:func:`parse_head`, the reference); blocks of lines are checked at once by
  :func:`block_heads` (msgspec validates every byte and decodes just ``id`` and ``status``).
  A damaged line is reported by its line number and its item is not done.
- **append**: each record is one ``os.write`` of one line on an ``O_APPEND`` descriptor, from a
  single writer, so records are never interleaved and a ``kill -9`` loses nothing finished.
  ``fsync`` runs at most once a second (:meth:`ResultsStore.sync`) and at close.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import io
import operator
import os
import stat
import tempfile
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import compress, count, pairwise, repeat
from typing import Any, BinaryIO

import msgspec
import orjson

from batchscribe.errors import ConfigError, ResultsBusy, RunAborted
from batchscribe.ids import DigestSet, id_key

_ID_PREFIX = b'{"id":"'
_READ_CHUNK = 1 << 20


def parse_head(line: bytes) -> tuple[str, str] | None:
    """The ``(id, status)`` of a line that is a whole, valid item record; None for any other line.

    The reference every reader agrees with: the whole line must parse as JSON (orjson), be an
    object, have a string ``id`` and a ``status``. A line whose head looks right but whose rest
    is cut, spliced or bit-flipped is not a record (issue 13: a head-only check counted a cut
    line as done). :func:`block_heads` is the fast path that must agree with it.
    """
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is dict and type(doc.get("id")) is str and "status" in doc:
        return doc["id"], str(doc["status"])
    return None


class _Head(msgspec.Struct):
    """The two fields of an item record the scans need; msgspec validates and skips the rest."""

    id: str
    status: str


_HEADS = msgspec.json.Decoder(_Head)
_HEAD_ID = operator.attrgetter("id")
_HEAD_STATUS = operator.attrgetter("status")


def block_heads(lines: bytes, ends: Any) -> list[_Head] | None:
    """The heads of the whole lines in ``lines`` (each ending in ``\n``; ``ends``: the
    positions of those newlines, from :func:`newlines`), in order, when every line is a whole
    valid item record with a string status; else None (read those lines one at a time with
    :func:`parse_head`).

    Measured fast path of the resume scan and the readers' pass one (benchmarks/memory.py):
    one C call validates every byte of a block of lines and builds only two strings per line,
    ~0.45 µs a line against ~1.2 µs for a full orjson parse. It agrees with :func:`parse_head`
    (held by tests/test_results.py's damage tests) because:

    - ``decode_lines`` reads JSON values separated by any whitespace, newlines included, so it
      alone would take two records on one line, or one record spread over two lines. Every
      line must start with ``{`` and end with ``}``: a value can then never span a newline
      (``}`` then ``{`` is never valid inside an object or an array), so each line holds whole
      values, at least one; and the count of values must equal the count of lines: exactly one
      each. (A blank or padded line fails the first check and falls back.)
    - msgspec rejects all malformed JSON orjson rejects, except invalid UTF-8 inside a value
      it skips: checked here for the whole block (``isascii`` first, a ~10 GB/s pass).
    - a status that is not a string, a missing id, a nesting depth orjson accepts and msgspec
      does not: msgspec refuses, and the block falls back to the reference.

    One gap stays, and it is written down rather than paid for: a number beyond the double
    range (``1e400``) in a field msgspec skips is valid JSON that msgspec accepts and orjson
    refuses. No writer of records produces one (orjson cannot), and finding one would cost a
    scan of every byte (~0.5 s a million lines).
    """
    n = int(ends.size)
    view = _numpy().frombuffer(lines, dtype=_numpy().uint8)
    if not n or view[0] != _OPEN or not (view[ends - 1] == _CLOSE).all():
        return None
    if not (view[ends[:-1] + 1] == _OPEN).all():
        return None
    if not (lines.isascii() or _is_utf8(lines)):
        return None
    try:
        heads = _HEADS.decode_lines(lines)
    except (msgspec.DecodeError, RecursionError):
        return None
    return heads if len(heads) == n else None


_OPEN, _CLOSE = ord("{"), ord("}")


def newlines(data: bytes) -> Any:
    """The positions of the newlines in ``data`` (a numpy array)."""
    np = _numpy()
    return np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == _NEWLINE)


_NEWLINE = 10


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


_MASK62 = (1 << 62) - 1
#: The statuses after which an item is not sent again (``submitted``: its answer goes to a
#: webhook). Every other status is a failure.
_DONE_STATUSES = frozenset({"ok", "submitted"})
#: Damaged line numbers kept for the warnings (all of them are counted).
DAMAGED_KEPT = 1000
#: Results files from this size on are scanned a block at a time (msgspec and numpy); smaller
#: ones line by line, which is quicker than importing numpy (~60 ms) for them.
VECTOR_FROM = 4 << 20
#: Resume states of this many ids and more settle runs of manifest lines at once.
BLOCK_SETTLE_FROM = 10_000


def _numpy() -> Any:
    """numpy, imported on first use: only big results files and manifests need it."""
    import numpy

    return numpy


def _repeats(keys: Any) -> bool:
    """Whether a numpy array holds a value twice (one sort, no unique's bookkeeping)."""
    ordered = _numpy().sort(keys)
    return bool((ordered[1:] == ordered[:-1]).any())


def _find(table: Any, mask: int, keys: Any) -> Any:
    """The slots of distinct ``keys`` (numpy uint64) in ``table`` (numpy view of a
    :class:`ResumeState` table), or None when one of them is not there. Linear probing in
    rounds of numpy passes: a key is found, or an empty slot proves it absent, or it moves on.
    """
    np = _numpy()
    pos = (keys & mask).astype(np.intp)
    slots = np.empty(keys.size, np.intp)
    todo = np.arange(keys.size)
    while todo.size:
        current = table[pos]
        hit = (current >> 2) == keys
        if not (current[~hit]).all():
            return None  # an empty slot on its path
        slots[todo[hit]] = pos[hit]
        rest = ~hit
        todo, keys, pos = todo[rest], keys[rest], (pos[rest] + 1) & mask
    return slots


_BLOCK = 1 << 20  # bytes read per block by scan


def _table_slots(capacity: int) -> int:
    slots = 1024
    while slots < capacity * 2:
        slots *= 2
    return slots


class ResumeState:
    """The last status of every id in a results file, in an open-addressing hash table.

    Each id is reduced to a 62-bit key (:meth:`key`: Python's own string hash, which is
    computed once per string and cached on it; only valid inside one process). A slot of
    ``array('Q')`` holds ``key << 2 | seen << 1 | is_ok`` (0: empty); linear probing, load
    <= 1/2, so ~16 bytes an id. The ``seen`` bit is the manifest reader's duplicate check for
    the ids the results file knows (:class:`SeenIds`): they need no second table. With
    fingerprints (``--rescan-changed``), a parallel ``array('I')`` holds the source fingerprint
    of each id's last ok record.
    """

    __slots__ = ("_fps", "_mask", "_size", "_table", "corrupt_lines", "damaged", "records")

    def __init__(self, capacity: int = 0, *, fingerprints: bool = False) -> None:
        slots = _table_slots(capacity)
        self._table = array("Q", bytes(8 * slots))
        self._mask = slots - 1
        self._size = 0
        self._fps: array[int] | None = array("I", bytes(4 * slots)) if fingerprints else None
        self.records = 0
        self.corrupt_lines = 0
        #: The line numbers of the first :data:`DAMAGED_KEPT` damaged lines (for the warning).
        self.damaged: list[int] = []

    @staticmethod
    def key(item_id: str) -> int:
        """The key used for look-ups (62 bits, never 0)."""
        return hash(item_id) & _MASK62 or 1

    def _slot(self, key: int) -> int:
        """The slot holding ``key``, or -1."""
        table, mask = self._table, self._mask
        i = key & mask
        while True:
            current = table[i]
            if current >> 2 == key:
                return i
            if current == 0:
                return -1
            i = (i + 1) & mask

    def status(self, key: int) -> str | None:
        """``"ok"``, ``"failed"`` or None (never seen) for a key from :meth:`key`."""
        i = self._slot(key)
        if i < 0:
            return None
        return "ok" if self._table[i] & 1 else "failed"

    def mark_seen(self, key: int) -> bool | None:
        """Mark ``key`` as read from a manifest: True the first time, False if it already was,
        None when the results file does not know it."""
        i = self._slot(key)
        if i < 0:
            return None
        current = self._table[i]
        if current & 2:
            return False
        self._table[i] = current | 2
        return True

    def settler(
        self,
        ok_action: str | None,
        failed_action: str | None,
        counts: list[int] | None = None,
        *,
        seen: SeenIds | None = None,
    ) -> Callable[[str], str | None]:
        """A look-up by id: ``ok_action`` for an id whose last status is ok, ``failed_action``
        for a failed one, None for an id never seen (the probe of :meth:`status`, inlined).

        With ``counts`` (``[failed, ok, total]``), an id given an action is counted there and
        ``""`` is returned instead, except for every 4096th, which returns its action. With
        ``counts`` and ``seen`` (this state's :class:`SeenIds`, which the reader uses for its
        duplicate check), and at least :data:`BLOCK_SETTLE_FROM` ids, the look-up also has a
        ``block`` attribute: :meth:`settle_block` for many ids at once.
        """
        table, mask = self._table, self._mask

        def settle(item_id: str) -> str | None:
            key = hash(item_id) & _MASK62 or 1
            i = key & mask
            while True:
                current = table[i]
                if current >> 2 == key:
                    break
                if current == 0:
                    return None
                i = (i + 1) & mask
            is_ok = current & 1
            action = ok_action if is_ok else failed_action
            if counts is None or action is None:
                return action
            counts[is_ok] += 1
            counts[2] += 1
            return action if not counts[2] & 4095 else ""

        if counts is not None and seen is not None and self._size >= BLOCK_SETTLE_FROM:
            if seen.resume is not self:
                raise ValueError("seen belongs to another resume state")
            marker = ok_action or failed_action or ""
            block_counts = counts

            def block(ids: list[str] | list[bytes]) -> str | None:
                return self.settle_block(ids, ok_action, failed_action, block_counts, marker)

            settle.block = block  # type: ignore[attr-defined]
        return settle

    def settle_block(
        self,
        ids: list[str] | list[bytes],
        ok_action: str | None,
        failed_action: str | None,
        counts: list[int],
        marker: str,
    ) -> str | None:
        """Settle a run of manifest ids at once, or none of them.

        When every id is known, none was read before (nor twice here), and each has an action
        (``ok_action`` / ``failed_action`` by its status), they are all marked seen and counted
        in ``counts`` (see :meth:`settler`) and ``marker`` is returned. Otherwise nothing
        changes and None is returned: the reader then takes those lines one at a time (which
        reports duplicates and builds the items to send). ``ids`` may be bytes when they are
        ASCII (CPython hashes an ASCII str as its bytes). The look-ups run as numpy passes
        over the run (:func:`_find`); only the hashes are computed per id.
        """
        if not ids or (ok_action is None and failed_action is None):
            return None
        np = _numpy()
        n = len(ids)
        keys = np.fromiter(map(hash, ids), np.int64, n).view(np.uint64) & np.uint64(_MASK62)
        if not keys.all() or _repeats(keys):
            return None  # a key of 0, or a duplicate within the run: line by line
        table = self._vector()
        slots = _find(table, self._mask, keys)
        if slots is None:
            return None  # an id the results file does not know
        currents = table[slots]
        if (currents & 2).any():
            return None  # read before: a duplicate
        ok = int((currents & 1).sum())
        failed = n - ok
        if (ok and ok_action is None) or (failed and failed_action is None):
            return None
        table[slots] = currents | 2
        counts[0] += failed
        counts[1] += ok
        counts[2] += n
        return marker

    def _vector(self) -> Any:
        """The table as a numpy array sharing its memory (valid until :meth:`reserve`)."""
        return _numpy().frombuffer(self._table, dtype=_numpy().uint64)

    def insert_block(self, keys: Any, values: Any) -> None:
        """Put ``values`` (numpy uint64: ``key << 2 | done``) for distinct ``keys`` (numpy
        uint64, never 0) into the table: :meth:`_put` for many ids, as numpy passes.

        Linear probing in rounds: each round looks at every pending key's slot, where a key
        finds itself (its later record wins) or an empty slot (with no deletion, an empty slot
        on a key's path proves it is not in the table). Keys that want the same empty slot are
        all written there: one write wins, read back by its value, and the others (and keys
        meeting another id) try the next slot. No sort: conflicts are settled by the table.
        """
        np = _numpy()
        n = int(keys.size)
        if (self._size + n) * 2 > self._mask:
            self.reserve(self._size + n)
        table, mask = self._vector(), self._mask
        pos = (keys & mask).astype(np.intp)
        while keys.size:
            current = table[pos]
            empty = current == 0
            write = empty | ((current >> 2) == keys)
            table[pos[write]] = values[write]
            done = write & (table[pos] == values)  # (distinct keys: distinct values)
            self._size += int(np.count_nonzero(done & empty))
            rest = ~done
            keys, values, pos = keys[rest], values[rest], (pos[rest] + 1) & mask

    def seen_ids(self) -> SeenIds:
        """A duplicate check for a manifest read against this state (see :class:`SeenIds`)."""
        return SeenIds(self)

    def ok_fingerprint(self, key: int) -> int | None:
        """The source fingerprint of an ok id's last ok record (None if unknown or not ok)."""
        if self._fps is None:
            return None
        i = self._slot(key)
        if i < 0 or not self._table[i] & 1:
            return None
        return self._fps[i] or None

    def add(self, item_id: str, status: str, fp: int = 0) -> None:
        """Record one item record (in file order: the last record of an id wins).

        ``ok`` and ``submitted`` (answered later through a webhook) are done; anything else is
        failed. A submitted id keeps no fingerprint: ``--rescan-changed`` never sends it again
        (its transcript is on its way; a second request would be paid twice).
        """
        self._put(
            hash(item_id) & _MASK62 or 1, status in _DONE_STATUSES, fp if status == "ok" else 0
        )

    def note_damaged(self, lineno: int) -> None:
        """Count a line that is not a valid record (nor an event, nor blank)."""
        self.corrupt_lines += 1
        if len(self.damaged) < DAMAGED_KEPT:
            self.damaged.append(lineno)

    def entries(self) -> list[tuple[int, bool]]:
        """Every ``(key, done)`` in the table, sorted: for comparing two states."""
        return sorted((value >> 2, bool(value & 1)) for value in self._table if value)

    def _put(self, key: int, is_ok: bool, fp: int = 0) -> None:
        table, mask = self._table, self._mask
        i = key & mask
        while True:
            current = table[i]
            if current == 0:
                self._size += 1
                break
            if current >> 2 == key:
                break
            i = (i + 1) & mask
        table[i] = key << 2 | is_ok
        if is_ok and self._fps is not None:
            self._fps[i] = fp
        self.records += 1
        if self._size * 2 > mask:
            self.reserve(self._size + 1)

    def reserve(self, capacity: int) -> None:
        """Grow the table to hold ``capacity`` ids without growing again."""
        slots = _table_slots(capacity)
        if slots <= self._mask + 1:
            return
        old, old_fps = self._table, self._fps
        table = array("Q", bytes(8 * slots))
        fps = array("I", bytes(4 * slots)) if old_fps is not None else None
        mask = slots - 1
        if fps is None and self._size >= BLOCK_SETTLE_FROM:  # a big table: numpy passes
            np = _numpy()
            values = np.frombuffer(old, dtype=np.uint64)
            values = values[values != 0]
            self._table, self._mask, self._size = table, mask, 0
            self.insert_block(values >> np.uint64(2), values)
            return
        for j, value in enumerate(old):
            if value:
                i = (value >> 2) & mask
                while table[i]:
                    i = (i + 1) & mask
                table[i] = value
                if fps is not None and old_fps is not None:
                    fps[i] = old_fps[j]
        self._table, self._fps, self._mask = table, fps, mask

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"<ResumeState ids={self._size} records={self.records}>"


class SeenIds(DigestSet):
    """The manifest reader's duplicate check for a run against a resume state.

    An id the results file knows is marked in the resume table itself (its ``seen`` bit, see
    :meth:`ResumeState.mark_seen`); only new ids take room in this set. A resume of a million
    ids then holds one table, not two, and :meth:`ResumeState.settle_block` can settle and
    mark a run of ids at once. Digests are :func:`~batchscribe.ids.id_key` (in-process).
    """

    __slots__ = ("resume",)

    def __init__(self, resume: ResumeState, capacity: int = 1024) -> None:
        super().__init__(capacity, key=id_key)
        self.resume = resume

    def add(self, digest: int) -> bool:
        known = self.resume.mark_seen(digest & _MASK62 or 1)
        return super().add(digest) if known is None else known

    def all_new(self, digests: list[int]) -> bool:
        """Whether every digest is distinct and not in the set yet (then adding each succeeds)."""
        return len(set(digests)) == len(digests) and not any(map(self.__contains__, digests))

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, int):
            return False
        i = self.resume._slot(digest & _MASK62 or 1)
        if i >= 0:
            return bool(self.resume._table[i] & 2)
        return super().__contains__(digest)

    def __len__(self) -> int:
        marked = sum(map(operator.and_, self.resume._table, repeat(2)))
        return super().__len__() + int(marked) // 2

    def __repr__(self) -> str:
        return f"<SeenIds new={super().__len__()} resume={self.resume!r}>"


def scan(stream: BinaryIO, *, fingerprints: bool = False) -> ResumeState:
    """Build the resume state from a results stream (only whole, valid record lines count).

    The reference reads one line at a time (:func:`_scan_line`: :func:`parse_head`, orjson).
    A stream of :data:`VECTOR_FROM` bytes or more is read a block at a time instead: a block
    whose every line is a valid item record goes through :func:`_scan_block` (msgspec and
    numpy); any other block line by line. Either way a line that is neither a record, an
    event nor blank is counted in ``corrupt_lines`` and its number kept in ``damaged``.
    ``fingerprints`` also keeps each ok record's source fingerprint (the reference path).
    """
    state = ResumeState(fingerprints=fingerprints)
    size = _stream_size(stream)
    vector = not fingerprints and size >= VECTOR_FROM
    read = stream.read
    tail = b""
    lineno = 0  # lines before the block
    while True:
        chunk = read(_BLOCK)
        if not chunk:
            break
        data = tail + chunk if tail else chunk
        cut = data.rfind(b"\n") + 1
        block, tail = data[:cut], data[cut:]
        if not block:
            continue
        ends = newlines(block) if vector else None  # (numpy: ~3x bytes.count's speed)
        n = block.count(b"\n") if ends is None else int(ends.size)
        if not lineno and size:  # the first block tells the size of a line: room for all
            state.reserve(size // max(1, len(block) // n) + 1024)
        if ends is None or not _scan_block(state, block, ends):
            for i, line in enumerate(block.split(b"\n")[:-1], lineno + 1):
                _scan_line(state, line, i, fingerprints)
        lineno += n
    if tail:
        _scan_line(state, tail, lineno + 1, fingerprints)
    return state


def _stream_size(stream: BinaryIO) -> int:
    """The size of a file (or seekable stream), 0 when it cannot be told."""
    try:
        return os.fstat(stream.fileno()).st_size
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass
    try:
        here = stream.tell()
        end = stream.seek(0, os.SEEK_END)
        stream.seek(here)
    except (OSError, ValueError):
        return 0
    return end


def _scan_block(state: ResumeState, block: bytes, ends: Any) -> bool:
    """Add a block of whole lines (newlines at ``ends``) if every one is a valid item record;
    else add nothing
    (False). The same state as :func:`_scan_line` on each line (tests hold them together):
    msgspec checks and decodes the block (:func:`block_heads`), Python hashes the ids, numpy
    does the rest (:meth:`ResumeState.insert_block`) after keeping each id's last record.
    """
    heads = block_heads(block, ends)
    if heads is None:
        return False
    np = _numpy()
    n = len(heads)
    keys = np.fromiter(map(hash, map(_HEAD_ID, heads)), np.int64, n).view(np.uint64)
    keys &= np.uint64(_MASK62)
    keys[keys == 0] = 1  # as ResumeState.key
    statuses = list(map(_HEAD_STATUS, heads))
    if statuses.count("ok") == n:
        values = (keys << np.uint64(2)) | np.uint64(1)
    else:
        done = np.fromiter(map(_DONE_STATUSES.__contains__, statuses), np.bool_, n)
        values = (keys << np.uint64(2)) | done
    if _repeats(keys):  # an id twice in the block (a retry): its last record wins
        _, last = np.unique(keys[::-1], return_index=True)
        keep = np.sort(n - 1 - last)
        keys, values = keys[keep], values[keep]
    state.insert_block(keys, values)
    state.records += n
    return True


def _scan_line(state: ResumeState, line: bytes, lineno: int, fingerprints: bool) -> None:
    """The reference for one line (:func:`parse_head`); a damaged line is noted by number."""
    if not line.strip():
        return
    if fingerprints:
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            doc = None
        if type(doc) is dict and type(doc.get("id")) is str and "status" in doc:
            state.add(doc["id"], str(doc["status"]), record_fingerprint(doc))
        elif not (type(doc) is dict and "event" in doc):
            state.note_damaged(lineno)
        return
    head = parse_head(line)
    if head is not None:
        state.add(*head)
    elif _load_event(line) is None:
        state.note_damaged(lineno)


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
        # (st_dev, st_ino) of the file locked at open: the path must still name it, or the
        # run is writing into a file that was deleted or replaced (and is lost with it).
        self._identity: tuple[int, int] | None = None

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
            st = os.fstat(fd)
            self._identity = (st.st_dev, st.st_ino)
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
        if self._fd < 0:
            return
        self.check_path()
        if not self.dirty:
            return
        self.dirty = False
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self.failed = f"{self.path}: cannot sync results to disk: {exc.strerror or exc}"
            self._fsync_failed = True
            raise RunAborted(self.failed) from None

    def check_path(self) -> None:
        """RunAborted if the path no longer names the file this store holds: deleted, or
        replaced (renamed over, or deleted and made anew, maybe by a second run). Whatever the
        run appends goes to a file no one can open, so the run must stop, and say so."""
        if self._identity is None or self.failed:
            if self.failed:
                raise RunAborted(self.failed)
            return
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            now = "nothing"
        except OSError:
            return  # cannot tell (e.g. a permission change on a folder): not a verdict
        else:
            if (st.st_dev, st.st_ino) == self._identity:
                return
            now = "another file"
        self.failed = (
            f"{self.path}: the results file was deleted or replaced while this run was writing "
            f"it (the path now holds {now}); what it held is lost with it: stopping. Run again "
            "to send those items again"
        )
        raise RunAborted(self.failed)

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


#: Damaged lines named one by one in a warning; the rest are counted in one more line.
DAMAGED_SHOWN = 20


def damaged_lines(where: Sequence[tuple[str, int]], total: int, what: str) -> list[str]:
    """``FILE:LINE: damaged record (WHAT)`` for the first :data:`DAMAGED_SHOWN` of ``where``,
    and ``... and N more`` for the rest of ``total``."""
    lines = [f"{_shown(path)}:{n}: damaged record ({what})" for path, n in where[:DAMAGED_SHOWN]]
    hidden = total - len(lines)
    if hidden > 0:
        lines.append(f"... and {hidden:,} more damaged record(s) ({what})")
    return lines


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
    """A whole item record, or None when the line is not one (as :func:`parse_head`)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is dict and type(doc.get("id")) is str and "status" in doc:
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
            _count_event(_load_event(body), counts)
            continue
        record = _load_record(body)
        if record is not None:
            counts.records += 1
            yield path, lineno, record
        else:
            event = _load_event(body)
            _count_event(event, counts)
            if event is None:
                counts.note_damaged(path, lineno)


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
    """A file's complete lines, about :data:`_READ_CHUNK` bytes of them at a time.

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
    size = _READ_CHUNK
    while end < 0 or pos < end:
        want = size if end < 0 else min(size, end - pos + 1)
        data = os.pread(fd, want, pos - 1) if pos else b"\n" + os.pread(fd, want - 1, 0)
        cut = data.rfind(b"\n")
        if cut > 0:
            yield data, cut
            pos += cut
            size = _READ_CHUNK
        elif len(data) < want:  # the end of the file, within a line or after the last one
            if len(data) > 1:
                yield data, 0
            return
        else:
            size *= 2  # a line longer than a block


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
    event = _load_event(line)
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
        self._add_keys(list(map(hash, map(_HEAD_ID, heads))))
        self.oks += bytes(map(_OK_STATUS.__eq__, map(_HEAD_STATUS, heads)))
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


def load_records(bodies: Sequence[bytes]) -> list[dict[str, Any] | None]:
    """Each line as a whole item record, or None where it is not one (a batch of lines).

    The same as ``[_load_record(b) for b in bodies]``, with the parse and the checks done as
    C-level passes over the batch.
    """
    try:
        docs = list(map(orjson.loads, bodies))
    except orjson.JSONDecodeError:
        return list(map(_load_record, bodies))
    if (
        set(map(type, docs)) <= _DICT
        and set(map(type, map(dict.get, docs, repeat("id")))) <= _STR
        and all(map(dict.__contains__, docs, repeat("status")))
    ):
        return docs
    return [
        doc if type(doc) is dict and type(doc.get("id")) is str and "status" in doc else None
        for doc in docs
    ]  # orjson makes exact types: `type(x) is` is _load_record's isinstance


_DICT: frozenset[type] = frozenset((dict,))
_STR: frozenset[type] = frozenset((str,))


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


def load_light_many(bodies: Sequence[bytes], *, strip: bool = True) -> list[dict[str, Any] | None]:
    """:func:`load_light` of each line of a batch, a line parsed whole in a C-level pass.

    Args:
        bodies: the lines.
        strip: drop :data:`HEAVY_FIELDS` from every record; ``False`` leaves them in the
            records parsed whole (the same records otherwise, None for the same lines), for
            callers that never look at them.
    """
    if not bodies or max(map(len, bodies)) >= _SPLIT_FROM:
        return list(map(load_light, bodies))
    records = load_records(bodies)
    if strip:
        for record in records:
            if record is not None:
                for name in HEAVY_FIELDS:
                    record.pop(name, None)
    return records


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
    the new one, never half of one; a symlink ``out`` stays one, and its target is replaced.

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
            os.replace(temp, out_real)  # through a symlink: the link stays, its target is new
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
