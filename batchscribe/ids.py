"""Item identity: a fixed-size digest per id, and a compact set of digests.

Resume state and duplicate detection over millions of ids must not hold the ids themselves:
each id is reduced to a 64-bit blake2b digest (collision odds for 10^7 ids ~ 3e-6), and sets of
digests live in flat ``array('Q')`` tables (8-16 bytes an id instead of ~100 for a Python set).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from hashlib import blake2b


def id_digest(item_id: str) -> int:
    """A stable 64-bit digest of an item id (the same on every machine and in every run)."""
    data = item_id.encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


#: The one 64-bit mask: an in-process key is Python's hash of an id, as unsigned 64 bits.
MASK64 = (1 << 64) - 1


def id_key(item_id: str) -> int:
    """A 64-bit key of an item id, valid only inside this process (Python's string hash).

    Much cheaper than :func:`id_digest`, and computed once per string (CPython caches it on the
    str), so the manifest's duplicate check and the resume look-up of one id share one hash.
    Never persist it or compare it across processes: use :func:`id_digest` for that.
    """
    return hash(item_id) & MASK64


def probe(table: array[int], mask: int, key: int, shift: int = 0) -> int:
    """The slot of ``key`` in an open-addressing ``table``: the slot holding it, else the empty
    slot where it goes. The one probe loop (linear probing; ``len(table) == mask + 1``).

    A slot holds 0 (empty) or a value whose top bits, ``value >> shift``, are its key (the
    low ``shift`` bits are flags). Keys are never 0. Hot loops inline this loop (one call
    costs as much as the look-up): each such copy says so and names this reference.
    """
    i = key & mask
    while True:
        current = table[i]
        if current == 0 or current >> shift == key:
            return i
        i = (i + 1) & mask


class DigestSet:
    """A set of 64-bit digests in an open-addressing table (linear probing, load <= 1/2)."""

    __slots__ = ("_mask", "_size", "_table", "key")

    def __init__(self, capacity: int = 1024, *, key: Callable[[str], int] | None = None) -> None:
        #: How callers that add ids turn an id into a digest (the manifest reader's duplicate
        #: check): :func:`id_digest` unless the set is private to one process (:func:`id_key`).
        self.key: Callable[[str], int] = key or id_digest
        slots = 1024
        while slots < capacity * 2:
            slots *= 2
        self._table = array("Q", bytes(8 * slots))
        self._mask = slots - 1
        self._size = 0

    def add(self, digest: int) -> bool:
        """Add a digest; return False when it was already present."""
        digest = digest or 1  # 0 marks an empty slot
        table, mask = self._table, self._mask
        # probe(table, mask, digest), inlined: once per manifest line of a fresh run.
        i = digest & mask
        while True:
            current = table[i]
            if current == 0:
                break
            if current == digest:
                return False
            i = (i + 1) & mask
        table[i] = digest
        self._size += 1
        if self._size * 2 > mask:
            self._grow()
        return True

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, int):
            return False
        return self._table[probe(self._table, self._mask, digest or 1)] != 0

    def _grow(self) -> None:
        old = self._table
        slots = len(old) * 2
        table = array("Q", bytes(8 * slots))
        mask = slots - 1
        for digest in old:
            if digest:
                # probe(table, mask, digest), inlined: every id again at each growth, and
                # each is known to be new (no compare).
                i = digest & mask
                while table[i]:
                    i = (i + 1) & mask
                table[i] = digest
        self._table, self._mask = table, mask

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"<DigestSet size={self._size} slots={self._mask + 1}>"
