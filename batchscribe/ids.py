"""Item identity: a fixed-size digest per id, and a compact set of digests.

Resume state and duplicate detection over millions of ids must not hold the ids themselves:
each id is reduced to a 64-bit blake2b digest (collision odds for 10^7 ids ~ 3e-6), and sets of
digests live in flat ``array('Q')`` tables (8-16 bytes an id instead of ~100 for a Python set).
"""

from __future__ import annotations

from array import array
from hashlib import blake2b


def id_digest(item_id: str) -> int:
    """A stable 64-bit digest of an item id (the same on every machine and in every run)."""
    data = item_id.encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


class DigestSet:
    """A set of 64-bit digests in an open-addressing table (linear probing, load <= 1/2)."""

    __slots__ = ("_mask", "_size", "_table")

    def __init__(self, capacity: int = 1024) -> None:
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
        digest = digest or 1
        table, mask = self._table, self._mask
        i = digest & mask
        while True:
            current = table[i]
            if current == 0:
                return False
            if current == digest:
                return True
            i = (i + 1) & mask

    def _grow(self) -> None:
        old = self._table
        slots = len(old) * 2
        self._table = array("Q", bytes(8 * slots))
        self._mask = slots - 1
        self._size = 0
        for digest in old:
            if digest:
                self.add(digest)

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"<DigestSet size={self._size} slots={self._mask + 1}>"
