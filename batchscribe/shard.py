"""Shards: split one archive between N machines, each taking the items whose id hashes to it.

``--shard K/N`` (0 <= K < N, counted from 0 as Kubernetes does) takes exactly the items whose id
hashes to shard K. The hash is the item id's stable 64-bit digest (:func:`batchscribe.ids.
id_digest`) scaled to ``[0, N)`` by its high bits, ``digest * N >> 64``: the same item lands in
the same shard on every machine, in every run, whatever the order of the manifest. Shards are
disjoint and together cover every item.

``--shard auto/N`` and ``--shard auto`` read K (and N where the scheduler tells it) from the
environment of a Kubernetes Indexed Job, a Slurm job array, an AWS Batch array job or GNU
parallel; see :data:`SCHEDULERS`.

Everything here is pure: :func:`parse_shard` takes the environment as a mapping.
"""

from __future__ import annotations

import operator
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from hashlib import blake2b
from itertools import repeat
from operator import methodcaller
from typing import Literal

from batchscribe.errors import ShardError
from batchscribe.ids import id_digest
from batchscribe.manifest import Item, Problem
from batchscribe.results import Skipped

__all__ = [
    "SCHEDULERS",
    "Shard",
    "ShardError",
    "ShardFilter",
    "expand_path",
    "in_shard",
    "in_shard_many",
    "parse_shard",
    "shard_of",
]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count).

    ``origin`` names the scheduler variable it was read from (``JOB_COMPLETION_INDEX=3``), if any.
    """

    index: int
    count: int
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ShardError(f"the shard count must be at least 1, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ShardError(
                f"shard index {self.index} is out of range for {self.count} shard(s): "
                f"it must be 0 to {self.count - 1}"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(item_id: str, count: int) -> int:
    """The shard (0 to ``count - 1``) an item id belongs to, on every machine and in every run."""
    # The high bits of the digest: uniform, and independent of the low bits that DigestSet
    # uses to place digests in its table.
    return (id_digest(item_id) * count) >> 64


def in_shard(item_id: str, shard: Shard) -> bool:
    """True when the item with this id belongs to ``shard``."""
    return shard.count == 1 or shard_of(item_id, shard.count) == shard.index


_DIGEST8 = partial(blake2b, digest_size=8)
_DIGEST = methodcaller("digest")


def in_shard_many(ids: Sequence[str] | Sequence[bytes], shard: Shard) -> list[bool]:
    """:func:`in_shard` of each id (bytes: the id's UTF-8), in C-level ``map`` passes."""
    if shard.count == 1:
        return [True] * len(ids)
    data: Iterable[bytes] = (
        map(str.encode, ids, repeat("utf-8"), repeat("surrogatepass"))  # type: ignore[arg-type]
        if ids and isinstance(ids[0], str)
        else ids  # type: ignore[assignment]
    )
    big: Literal["big"] = "big"
    digests = map(int.from_bytes, map(_DIGEST, map(_DIGEST8, data)), repeat(big))
    shards = map(operator.rshift, map(operator.mul, digests, repeat(shard.count)), repeat(64))
    return list(map(shard.index.__eq__, shards))


# --------------------------------------------------------------------------- --shard parsing


@dataclass(frozen=True)
class Scheduler:
    """Where one scheduler puts a task's index (and maybe the task count) in the environment."""

    name: str
    index_var: str
    base: int  # the index of the first task: 0, or 1 for GNU parallel
    count_var: str | None  # the variable holding the task count, if the scheduler sets one


#: The schedulers ``--shard auto`` understands, by the variable that gives the task's index.
SCHEDULERS: tuple[Scheduler, ...] = (
    Scheduler("a Kubernetes Indexed Job", "JOB_COMPLETION_INDEX", 0, None),
    Scheduler("a Slurm job array", "SLURM_ARRAY_TASK_ID", 0, "SLURM_ARRAY_TASK_COUNT"),
    Scheduler("an AWS Batch array job", "AWS_BATCH_JOB_ARRAY_INDEX", 0, "AWS_BATCH_JOB_ARRAY_SIZE"),
    Scheduler("GNU parallel", "PARALLEL_SEQ", 1, None),
)

_USAGE = "use --shard K/N (0 <= K < N), --shard auto/N or --shard auto"


def parse_shard(text: str, env: Mapping[str, str]) -> Shard:
    """The shard a ``--shard`` value names; ShardError (with the fix) when it names none.

    Args:
        text: ``K/N``, ``auto/N`` or ``auto``.
        env: the process environment, read only for ``auto``.
    """
    spec = text.strip()
    head, slash, tail = spec.partition("/")
    count: int | None = None
    if slash:
        count = _whole(tail, f"--shard {text!r}: the shard count")
        if count < 1:
            raise ShardError(f"--shard {text!r}: the shard count must be at least 1")
    if head.strip().lower() == "auto":
        return _from_env(env, count)
    if not slash:
        raise ShardError(f"--shard {text!r}: {_USAGE}")
    assert count is not None
    index = _whole(head, f"--shard {text!r}: the shard index")
    if index >= count:
        raise ShardError(
            f"--shard {text!r}: shards are counted from 0, so the index must be 0 to {count - 1}"
        )
    return Shard(index, count)


def _whole(text: str, what: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise ShardError(f"{what} must be a whole number, not {text!r} ({_USAGE})")
    return int(text)


def _from_env(env: Mapping[str, str], count: int | None) -> Shard:
    found = [s for s in SCHEDULERS if env.get(s.index_var, "").strip()]
    if not found:
        names = ", ".join(s.index_var for s in SCHEDULERS)
        raise ShardError(
            f"--shard auto: no scheduler index in the environment (looked for {names}); "
            "run under an Indexed Job, a job array or GNU parallel, or pass --shard K/N"
        )
    if len(found) > 1:
        names = ", ".join(s.index_var for s in found)
        raise ShardError(
            f"--shard auto: several schedulers' indexes are set ({names}), so which one counts "
            "is ambiguous; pass --shard K/N"
        )
    scheduler = found[0]
    var = scheduler.index_var
    raw = _whole(env[var], f"--shard auto: {var}")
    if scheduler.index_var == "SLURM_ARRAY_TASK_ID":
        index, env_count = _slurm_index(env, raw)
    else:
        index = raw - scheduler.base
        env_count = None
        if scheduler.count_var and env.get(scheduler.count_var, "").strip():
            env_count = _whole(env[scheduler.count_var], f"--shard auto: {scheduler.count_var}")
    origin = f"{var}={env[var].strip()}"
    if env_count is not None:
        if count is not None and count != env_count:
            raise ShardError(
                f"--shard auto/{count}: {scheduler.name} has {env_count} tasks "
                f"({scheduler.count_var}={env_count}); the shard counts must agree, or some "
                "items would be taken twice or never"
            )
        count = env_count
    if count is None:
        raise ShardError(
            f"--shard auto: {scheduler.name} gives the task's index ({var}) but not the number "
            f"of tasks; pass it as --shard auto/N"
        )
    if index < 0 or index >= count:
        first = "1" if scheduler.base else "0"
        raise ShardError(
            f"--shard auto/{count}: {origin} is out of range: {scheduler.name} must number its "
            f"{count} tasks from {first} ({var} {first} to {count - 1 + scheduler.base})"
        )
    return Shard(index, count, origin=origin)


def _slurm_index(env: Mapping[str, str], task_id: int) -> tuple[int, int | None]:
    """A Slurm array task's index from 0, whatever the array's first id and step.

    ``--array=0-7``, ``--array=1-8`` and ``--array=0-14:2`` all give indexes 0 to 7. An array
    that is not evenly spaced (``--array=1,2,7``) cannot be numbered from its ids: an error.
    """

    def number(name: str) -> int | None:
        value = env.get(name, "").strip()
        return _whole(value, f"--shard auto: {name}") if value else None

    first = number("SLURM_ARRAY_TASK_MIN") or 0
    step = number("SLURM_ARRAY_TASK_STEP") or 1
    count = number("SLURM_ARRAY_TASK_COUNT")
    last = number("SLURM_ARRAY_TASK_MAX")
    offset = task_id - first
    spaced = offset % step == 0 and (
        count is None or last is None or first + (count - 1) * step == last
    )
    if not spaced:
        raise ShardError(
            f"--shard auto: the Slurm array is not evenly spaced (SLURM_ARRAY_TASK_ID={task_id}, "
            f"MIN={first}, MAX={last}, STEP={step}, COUNT={count}); use a range such as "
            "--array=0-7, or pass --shard K/N"
        )
    return offset // step, count


# --------------------------------------------------------------------------- using a shard


def expand_path(path: str, shard: Shard | None, *, option: str = "--out") -> str:
    """``path`` with ``{shard}`` replaced by the shard's index and ``{shards}`` by the count.

    Raises ShardError when the path names ``{shard}`` or ``{shards}`` but no shard is given.
    """
    if "{shard" not in path:
        return path
    if shard is None:
        raise ShardError(
            f"{option} {path!r} names {{shard}}, which only --shard fills in: add --shard K/N "
            "(or --shard auto), or drop {shard} from the path"
        )
    return path.replace("{shards}", str(shard.count)).replace("{shard}", str(shard.index))


class ShardFilter:
    """The manifest entries one shard takes: its items, and bad lines only in shard 0.

    Every shard reads the whole manifest, so every shard meets every bad line; only shard 0
    reports (and counts) them, so a fleet reports each bad line once and its counts add up.
    Other shards count the ones they hid in :attr:`hidden_problems`. A :class:`Skipped` (items
    the reader settled, see :func:`batchscribe.manifest.iter_sources`) passes: the reader only
    settles items of this shard.
    """

    def __init__(self, entries: Iterable[Item | Problem | Skipped], shard: Shard) -> None:
        self._entries = iter(entries)
        self.shard = shard
        self.hidden_problems = 0
        self._iterator = self._select()

    def _select(self) -> Generator[Item | Problem | Skipped, None, None]:
        shard = self.shard
        report_problems = shard.index == 0
        for entry in self._entries:
            if isinstance(entry, Skipped):  # items the reader settled: all in this shard
                yield entry
            elif isinstance(entry, Problem):
                if report_problems:
                    yield entry
                else:
                    self.hidden_problems += 1
            elif in_shard(entry.id, shard):
                yield entry

    def __iter__(self) -> Iterator[Item | Problem | Skipped]:
        return self._iterator

    def __next__(self) -> Item | Problem | Skipped:
        return next(self._iterator)

    def close(self) -> None:
        """Close the underlying reader (its open files)."""
        self._iterator.close()
        close = getattr(self._entries, "close", None)
        if close is not None:
            close()

    def __repr__(self) -> str:
        return f"<ShardFilter shard={self.shard} hidden_problems={self.hidden_problems}>"
