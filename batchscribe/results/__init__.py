"""The results file: one JSONL file, append-only, that is also the resume state.

- :mod:`~batchscribe.results.record`: an item record's layout; the writer (``build_record``)
  and the parsers that depend on its layout, side by side.
- :mod:`~batchscribe.results.store`: the single writer (lock, repair, append, fsync).
- :mod:`~batchscribe.results.resume`: the resume state, its scans, and the reader's Settler.
- :mod:`~batchscribe.results.read`: the lock-free readers (each id's final record).
- :mod:`~batchscribe.results.merge`: many results files into one.

The names other modules use are re-exported here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchscribe.results.merge import MergeSummary, merge_results
    from batchscribe.results.read import (
        BATCH,
        FINAL,
        RUN,
        SKIP,
        SUPERSEDED,
        FinalIndex,
        ReadCounts,
        expand_paths,
        final_states,
        index_final,
        iter_records,
        iter_run_records,
        kind_table,
    )

from batchscribe.results.record import (
    DONE_STATUSES,
    HEAVY_FIELDS,
    block_heads,
    build_record,
    fingerprint,
    load_light,
    load_light_many,
    load_records,
    load_split,
    newlines,
    parse_head,
    payload_duration,
    record_fingerprint,
)
from batchscribe.results.resume import (
    BLOCK_SETTLE_FROM,
    DAMAGED_KEPT,
    DAMAGED_SHOWN,
    HAND_ON_EVERY,
    VECTOR_FROM,
    ResumeState,
    SeenIds,
    Settler,
    Skipped,
    damaged_lines,
    scan,
)
from batchscribe.results.store import ResultsStore, torn_tail_length

#: The readers (report, failed, export, merge, --dry-run) are imported on first use: a run
#: appends and resumes, and does not pay for compiling them (~17 ms without a bytecode cache).
_READERS = (
    "BATCH", "FINAL", "RUN", "SKIP", "SUPERSEDED", "FinalIndex", "ReadCounts", "expand_paths",
    "final_states", "index_final", "iter_records", "iter_run_records", "kind_table",
)  # fmt: skip
_LAZY = {
    **dict.fromkeys(("MergeSummary", "merge_results"), "batchscribe.results.merge"),
    **dict.fromkeys(_READERS, "batchscribe.results.read"),
}


def __getattr__(name: str) -> Any:
    """The readers' names of :data:`_LAZY`, imported when first asked for."""
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'batchscribe.results' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


__all__ = [
    "BATCH",
    "BLOCK_SETTLE_FROM",
    "DAMAGED_KEPT",
    "DAMAGED_SHOWN",
    "DONE_STATUSES",
    "FINAL",
    "HAND_ON_EVERY",
    "HEAVY_FIELDS",
    "RUN",
    "SKIP",
    "SUPERSEDED",
    "VECTOR_FROM",
    "FinalIndex",
    "MergeSummary",
    "ReadCounts",
    "ResultsStore",
    "ResumeState",
    "SeenIds",
    "Settler",
    "Skipped",
    "block_heads",
    "build_record",
    "damaged_lines",
    "expand_paths",
    "final_states",
    "fingerprint",
    "index_final",
    "iter_records",
    "iter_run_records",
    "kind_table",
    "load_light",
    "load_light_many",
    "load_records",
    "load_split",
    "merge_results",
    "newlines",
    "parse_head",
    "payload_duration",
    "record_fingerprint",
    "scan",
    "torn_tail_length",
]
