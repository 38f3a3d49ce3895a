"""Merge results files into one: each id's final record, and every run record once."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from batchscribe.atomicfile import atomic_writer
from batchscribe.errors import ConfigError
from batchscribe.results.read import FINAL, RUN, ReadCounts, index_final
from batchscribe.results.record import READ_CHUNK, load_event
from batchscribe.results.resume import shown as _shown
from batchscribe.results.store import ResultsStore


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
        # (through a symlink: the link stays, its target is new)
        with atomic_writer(
            out_real, mode=stat.S_IMODE(st.st_mode), buffering=READ_CHUNK
        ) as out_file:
            runs: set[bytes | str] = set()
            for _, _, body, kind in index.lines(FINAL, RUN):
                if kind == RUN:
                    event = load_event(body) or {}
                    key = str(event.get("run_id") or "") or body
                    if key in runs:
                        continue  # the same run, from a file merged before
                    runs.add(key)
                    summary.runs += 1
                out_file.write(body + b"\n")
        return summary
    except OSError as exc:
        raise ConfigError(f"{_shown(out)}: cannot write merged results: {exc.strerror}") from None
    finally:
        store.close()
