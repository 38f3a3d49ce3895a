"""What a run will do with each item: the skip policy.

:func:`decide` is the one place that turns an item and the resume state into an action; the
engine and the dry run (:mod:`batchscribe.run.dry_run`) both use it, so a dry run predicts
exactly what a run sends. :func:`reader_settles` is the same policy on an id alone, asked by
the manifest reader so that a skipped item is never built.
"""

from __future__ import annotations

import operator
import os
import stat
from collections import deque
from itertools import compress

from batchscribe.ids import MASK64
from batchscribe.items import CLOUD_OBJECT, URL
from batchscribe.manifest import Item
from batchscribe.pulse import MAX_PAYLOAD, Outcome, Verdict
from batchscribe.results import ResumeState, SeenIds, Settler, fingerprint
from batchscribe.shard import Shard, in_shard, in_shard_many

#: Actions: new (never recorded), retry (failed, and --retry-failed), changed (ok, but the file
#: changed since, with --rescan-changed): these are sent. done (ok, or submitted: the transcript
#: goes to a webhook) / failed: skipped.
SEND_ACTIONS = frozenset({"new", "retry", "changed"})


def decide(resume: ResumeState, item: Item, *, retry_failed: bool, rescan_changed: bool) -> str:
    """The action for one item: ``new``, ``retry``, ``changed``, ``done`` or ``failed``."""
    if not len(resume):
        return "new"
    key = resume.key(item.id)
    state = resume.status(key)
    if state is None:
        return "new"
    if state == "failed":
        return "retry" if retry_failed else "failed"
    if not rescan_changed or state == "submitted":
        return "done"  # (a submitted item's transcript is on its way: never paid for twice)
    if rescan_changed and item.kind is not URL:
        stored = resume.ok_fingerprint(key)
        if stored is not None and item.kind is CLOUD_OBJECT:
            # The listing's size and ETag/generation (or a HEAD for a manifest-named object).
            from batchscribe import cloud

            live = cloud.live_fingerprint(item.source, item.size, item.version)
            return "changed" if live is not None and live != stored else "done"
        if stored is not None:
            try:
                st = os.stat(item.source)
            except OSError:
                return "done"  # gone since: keep its transcript, nothing to send
            if fingerprint(st.st_size, st.st_mtime) != stored:
                return "changed"
    return "done"


def file_problem(st: os.stat_result, *, oversize_ok: bool = False) -> Outcome | None:
    """Why a local file with this ``stat`` must not be sent (None when it can be), as far as
    its stat tells: not a regular file (a folder, a FIFO, a device), empty, over 250 MB
    (unless ``oversize_ok``: the audio stage makes it smaller)."""
    if not stat.S_ISREG(st.st_mode):
        return Outcome(Verdict.FAIL, None, "invalid", "not a regular file")
    if st.st_size == 0:
        return Outcome(Verdict.FAIL, None, "invalid", "empty file")
    if st.st_size > MAX_PAYLOAD and not oversize_ok:
        return Outcome(
            Verdict.FAIL, None, "too_large",
            f"file is {st.st_size / 1e6:.0f} MB, over the API's 250 MB limit",
        )  # fmt: skip
    return None


def check_file(
    path: str, *, oversize_ok: bool = False
) -> tuple[os.stat_result | None, Outcome | None]:
    """A local file's stat (None when it cannot be had) and why it must not be sent (None when
    it can be): the one per-file decision of a run and of a dry run. Never opens the file.
    ``oversize_ok``: a file over 250 MB is not refused (``--transcode`` other than off)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, Outcome(Verdict.FAIL, None, "missing", "file not found")
    except OSError as exc:
        return None, Outcome(Verdict.FAIL, None, "missing", f"cannot read file: {exc.strerror}")
    unfit = file_problem(st, oversize_ok=oversize_ok)
    if unfit is None and not os.access(path, os.R_OK):
        unfit = Outcome(Verdict.FAIL, None, "missing", "file is not readable (permission denied)")
    return st, unfit


def reader_settles(
    resume: ResumeState,
    shard: Shard | None,
    *,
    retry_failed: bool,
    rescan_changed: bool,
    seen: SeenIds | None = None,
) -> Settler | None:
    """The :class:`Settler` for :func:`manifest.iter_sources`: it skips the items
    :func:`decide` skips on their id alone (ok, unless --rescan-changed; failed, unless
    --retry-failed; submitted, always), and only the items of ``shard`` (items of other shards
    are built, and the shard filter drops them). None when the resume state is empty (nothing
    to settle). With ``seen`` (the state's :class:`SeenIds`, the reader's duplicate check),
    it settles runs of ids at once when the state is big (:meth:`Settler.settle_run`)."""
    if not len(resume):
        return None
    # As decide: ok is done unless --rescan-changed; failed is skipped unless retried. (A
    # submitted id is done: the resume table holds it as done, so this skips it too, as
    # decide does; with --rescan-changed it is built, and decide says done.)
    skip_done, skip_failed = not rescan_changed, not retry_failed
    if shard is None:
        return Settler(resume, skip_done=skip_done, skip_failed=skip_failed, seen=seen)
    return _ShardSettler(resume, shard, skip_done=skip_done, skip_failed=skip_failed, seen=seen)


class _ShardSettler(Settler):
    """A :class:`Settler` for one shard's reader: it settles only the ids of its shard."""

    __slots__ = ("_seen", "_shard")

    def __init__(
        self,
        resume: ResumeState,
        shard: Shard,
        *,
        skip_done: bool,
        skip_failed: bool,
        seen: SeenIds | None,
    ) -> None:
        super().__init__(resume, skip_done=skip_done, skip_failed=skip_failed, seen=seen)
        self._shard, self._seen = shard, seen
        settle_any = self.settle

        def settle(item_id: str) -> int:
            return settle_any(item_id) if in_shard(item_id, shard) else 0

        self.settle = settle

    def settle_run(self, ids: list[str] | list[bytes]) -> bool:
        """The ids of this shard are settled as :meth:`Settler.settle_run` does; the others
        pass the duplicate check (as the reader does for each item before the shard filter
        drops it) and are otherwise left alone, so no item is built only to be dropped. All
        or nothing: the others are checked first and added last, when nothing can fail."""
        seen = self._seen
        assert seen is not None  # (runs are settled only with the reader's SeenIds)
        inside = in_shard_many(ids, self._shard)
        if all(inside):
            return super().settle_run(ids)
        others = list(compress(ids, map(operator.not_, inside)))
        digests = list(map(MASK64.__and__, map(hash, others)))  # seen.key(id): id_key
        if not seen.all_new(digests):
            return False  # a duplicate: line by line
        mine: list[str] | list[bytes] = list(compress(ids, inside))  # type: ignore[assignment]
        if mine and not super().settle_run(mine):
            return False
        deque(map(seen.add, digests), maxlen=0)
        return True
