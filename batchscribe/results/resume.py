"""The resume state: the last status of every id in a results file, and the scans that build it.

- **scan**: streams the file and keeps, per id, only a 62-bit in-process key and its last
  status, in a flat hash table (:class:`ResumeState`). A line counts only when the whole line
  is a valid record (:func:`~batchscribe.results.record.parse_head`, the reference); blocks of
  lines are checked at once by :func:`~batchscribe.results.record.block_heads` (msgspec
  validates every byte and decodes just ``id`` and ``status``). A damaged line is reported by
  its line number and its item is not done.
- **settle**: the manifest reader asks a :class:`Settler` about each id, on its own thread,
  so an item the results file settles (done, or failed and not retried) is never built; the
  skips are handed on as :class:`Skipped` counts.

Each table operation has its reference (:meth:`ResumeState._slot`, :func:`_scan_line`) next
to its measured fast path (the inlined probe of :meth:`Settler.settle`, :func:`_scan_block`,
the numpy passes of :meth:`ResumeState.settle_block`); tests hold each pair together.
"""

from __future__ import annotations

import io
import operator
import os
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, BinaryIO

import orjson

from batchscribe.ids import DigestSet, id_key, probe
from batchscribe.results.record import (
    DONE_STATUSES,
    HEAD_ID,
    HEAD_STATUS,
    block_heads,
    lazy_numpy,
    load_event,
    newlines,
    parse_head,
    record_fingerprint,
)

_MASK62 = (1 << 62) - 1


def key_of(digest: int) -> int:
    """A :class:`ResumeState` key (62 bits, never 0) from an id's in-process hash (or its
    :func:`~batchscribe.ids.id_key`): the same key for both, so the reader's duplicate check
    and the look-up share one hash. Numpy passes and the inlined probe compute it inline."""
    return digest & _MASK62 or 1


#: Damaged line numbers kept for the warnings (all of them are counted).
DAMAGED_KEPT = 1000
#: Results files from this size on are scanned a block at a time (msgspec and numpy); smaller
#: ones line by line, which is quicker than importing numpy (~60 ms) for them.
VECTOR_FROM = 4 << 20
#: Resume states of this many ids and more settle runs of manifest lines at once.
BLOCK_SETTLE_FROM = 10_000


def _repeats(keys: Any) -> bool:
    """Whether a numpy array holds a value twice (one sort, no unique's bookkeeping)."""
    ordered = lazy_numpy().sort(keys)
    return bool((ordered[1:] == ordered[:-1]).any())


def _find(table: Any, mask: int, keys: Any) -> Any:
    """The slots of distinct ``keys`` (numpy uint64) in ``table`` (numpy view of a
    :class:`ResumeState` table), or None when one of them is not there. Linear probing in
    rounds of numpy passes: a key is found, or an empty slot proves it absent, or it moves on.
    """
    np = lazy_numpy()
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
        return key_of(hash(item_id))

    def _slot(self, key: int) -> int:
        """The slot holding ``key``, or -1: the reference look-up (:func:`ids.probe`)."""
        i = probe(self._table, self._mask, key, 2)
        return i if self._table[i] else -1

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

    def settle_block(
        self, ids: list[str] | list[bytes], skip_done: bool, skip_failed: bool, held: list[int]
    ) -> bool:
        """Settle a run of manifest ids at once, or none of them (:meth:`Settler.settle_run`).

        When every id is known, none was read before (nor twice here), and each is skipped
        (``skip_done`` / ``skip_failed`` by its status), they are all marked seen, counted in
        ``held`` (``[failed, done, both]``, see :class:`Settler`) and True is returned.
        Otherwise nothing changes and False is returned: the reader then takes those lines one
        at a time (which reports duplicates and builds the items to send). ``ids`` may be bytes
        when they are ASCII (CPython hashes an ASCII str as its bytes). The look-ups run as
        numpy passes over the run (:func:`_find`); only the hashes are computed per id.
        """
        if not ids or not (skip_done or skip_failed):
            return False
        np = lazy_numpy()
        n = len(ids)
        keys = np.fromiter(map(hash, ids), np.int64, n).view(np.uint64) & np.uint64(_MASK62)
        if not keys.all() or _repeats(keys):
            return False  # a key of 0, or a duplicate within the run: line by line
        table = self._vector()
        slots = _find(table, self._mask, keys)
        if slots is None:
            return False  # an id the results file does not know
        currents = table[slots]
        if (currents & 2).any():
            return False  # read before: a duplicate
        ok = int((currents & 1).sum())
        failed = n - ok
        if (ok and not skip_done) or (failed and not skip_failed):
            return False
        table[slots] = currents | 2
        held[0] += failed
        held[1] += ok
        held[2] += n
        return True

    def _vector(self) -> Any:
        """The table as a numpy array sharing its memory (valid until :meth:`reserve`)."""
        return lazy_numpy().frombuffer(self._table, dtype=lazy_numpy().uint64)

    def insert_block(self, keys: Any, values: Any) -> None:
        """Put ``values`` (numpy uint64: ``key << 2 | done``) for distinct ``keys`` (numpy
        uint64, never 0) into the table: :meth:`_put` for many ids, as numpy passes.

        Linear probing in rounds: each round looks at every pending key's slot, where a key
        finds itself (its later record wins) or an empty slot (with no deletion, an empty slot
        on a key's path proves it is not in the table). Keys that want the same empty slot are
        all written there: one write wins, read back by its value, and the others (and keys
        meeting another id) try the next slot. No sort: conflicts are settled by the table.
        """
        np = lazy_numpy()
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
        self._put(key_of(hash(item_id)), status in DONE_STATUSES, fp if status == "ok" else 0)

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
        i = probe(table, mask, key, 2)
        if table[i] == 0:
            self._size += 1
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
            np = lazy_numpy()
            values = np.frombuffer(old, dtype=np.uint64)
            values = values[values != 0]
            self._table, self._mask, self._size = table, mask, 0
            self.insert_block(values >> np.uint64(2), values)
            return
        for j, value in enumerate(old):
            if value:
                i = probe(table, mask, value >> 2, 2)
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
        known = self.resume.mark_seen(key_of(digest))
        return super().add(digest) if known is None else known

    def all_new(self, digests: list[int]) -> bool:
        """Whether every digest is distinct and not in the set yet (then adding each succeeds)."""
        return len(set(digests)) == len(digests) and not any(map(self.__contains__, digests))

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, int):
            return False
        i = self.resume._slot(key_of(digest))
        if i >= 0:
            return bool(self.resume._table[i] & 2)
        return super().__contains__(digest)

    def __len__(self) -> int:
        marked = sum(map(operator.and_, self.resume._table, repeat(2)))
        return super().__len__() + int(marked) // 2

    def __repr__(self) -> str:
        return f"<SeenIds new={super().__len__()} resume={self.resume!r}>"


@dataclass(frozen=True, slots=True)
class Skipped:
    """A run of items the manifest reader skipped as the results file settles them: ``done``
    (ok or submitted earlier) and ``failed`` (failed earlier, and not retried)."""

    done: int
    failed: int


#: Skips a :class:`Settler` holds before the reader hands them on as one :class:`Skipped`, so
#: the progress moves while a long resumed manifest is skipped.
HAND_ON_EVERY = 4096


class Settler:
    """Which items a resumed run skips without building them, asked by the manifest reader.

    Made by :func:`batchscribe.run.plan.reader_settles` (the skip policy) and used on the
    reader's thread only. The skips it counts are held until :meth:`take` hands them on.

    - :attr:`settle` ``(item_id) -> int``: 0 when the item is to be built (an id the results
      file does not know, or one to send again); else the item is skipped, counted, and the
      number of skips held is returned (hand them on with :meth:`take` from
      :data:`HAND_ON_EVERY`).
    - :meth:`settle_run` ``(ids) -> bool``: a run of ids at once, or none of them; only when
      :attr:`runs` is True (a big resume state, and the reader's duplicate check is its
      :class:`SeenIds`).
    """

    __slots__ = ("_held", "_resume", "_skip_done", "_skip_failed", "runs", "settle")

    def __init__(
        self,
        resume: ResumeState,
        *,
        skip_done: bool,
        skip_failed: bool,
        seen: SeenIds | None = None,
    ) -> None:
        if seen is not None and seen.resume is not resume:
            raise ValueError("seen belongs to another resume state")
        self._resume = resume
        self._skip_done, self._skip_failed = skip_done, skip_failed
        self._held = [0, 0, 0]  # failed, done, both: counted and not yet handed on
        self.runs = seen is not None and len(resume) >= BLOCK_SETTLE_FROM
        self.settle: Callable[[str], int] = self._lookup()

    def _lookup(self) -> Callable[[str], int]:
        """:attr:`settle`: a closure, so the hot loop reads its state from cells."""
        table, mask = self._resume._table, self._resume._mask
        skip_done, skip_failed, held = self._skip_done, self._skip_failed, self._held

        def settle(item_id: str) -> int:
            # ResumeState.key + _slot (ids.probe), inlined: this runs once per manifest line
            # of a resumed run, where a call costs as much as the look-up. Tests hold the two
            # together (test_manifest's resumed-reading test against line-by-line reading).
            key = hash(item_id) & _MASK62 or 1
            i = key & mask
            while True:
                current = table[i]
                if current >> 2 == key:
                    break
                if current == 0:
                    return 0
                i = (i + 1) & mask
            is_ok = current & 1
            if not (skip_done if is_ok else skip_failed):
                return 0
            held[is_ok] += 1
            held[2] += 1
            return held[2]

        return settle

    def settle_run(self, ids: list[str] | list[bytes]) -> bool:
        """Skip a run of ids at once (all known, unread, skipped by the policy) and mark them
        read; False, changing nothing, when one is not (:meth:`ResumeState.settle_block`)."""
        return self._resume.settle_block(ids, self._skip_done, self._skip_failed, self._held)

    def take(self) -> Skipped | None:
        """The skips held (None when there are none), handed on: the count starts again."""
        held = self._held
        if not held[2]:
            return None
        skipped = Skipped(held[1], held[0])
        held[0] = held[1] = held[2] = 0
        return skipped

    def __repr__(self) -> str:
        return f"<Settler held={self._held[2]} runs={self.runs}>"


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
    np = lazy_numpy()
    n = len(heads)
    keys = np.fromiter(map(hash, map(HEAD_ID, heads)), np.int64, n).view(np.uint64)
    keys &= np.uint64(_MASK62)
    keys[keys == 0] = 1  # as ResumeState.key
    statuses = list(map(HEAD_STATUS, heads))
    if statuses.count("ok") == n:
        values = (keys << np.uint64(2)) | np.uint64(1)
    else:
        done = np.fromiter(map(DONE_STATUSES.__contains__, statuses), np.bool_, n)
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
    elif load_event(line) is None:
        state.note_damaged(lineno)


#: Damaged lines named one by one in a warning; the rest are counted in one more line.
DAMAGED_SHOWN = 20


def damaged_lines(where: Sequence[tuple[str, int]], total: int, what: str) -> list[str]:
    """``FILE:LINE: damaged record (WHAT)`` for the first :data:`DAMAGED_SHOWN` of ``where``,
    and ``... and N more`` for the rest of ``total``."""
    lines = [f"{shown(path)}:{n}: damaged record ({what})" for path, n in where[:DAMAGED_SHOWN]]
    hidden = total - len(lines)
    if hidden > 0:
        lines.append(f"... and {hidden:,} more damaged record(s) ({what})")
    return lines


def shown(name: str) -> str:
    return name if name.isprintable() else repr(name)
