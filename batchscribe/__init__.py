"""batchscribe: bulk-transcribe audio archives through the Pulse speech-to-text API.

The public API (the CLI is a thin shell over it)::

    from batchscribe import RunOptions, run_batch
    summary = run_batch(RunOptions(sources=["archive/"], out="results.jsonl", api_key=KEY))
    print(summary.ok, summary.failed, summary.exit_code)

Reading results: :func:`build_report` (and :func:`render_html`), :func:`failed_items`,
:func:`export_transcripts`, :func:`merge_results`; before a run, :func:`dry_run`. These are
imported on first use, so a run does not pay for the readers' imports.
"""

from __future__ import annotations

__version__ = "0.1.0"

import gc
import importlib
from typing import TYPE_CHECKING, Any

# Importing the run (aiohttp, asyncio and most of this package) makes ~100,000 objects that
# live until exit and next to no garbage, and the collector's ~70 passes meanwhile were pure
# cost: 8 ms of every start (measured, benchmarks/README.md). Collection is off during these
# imports and back as it was after them.
_collecting = gc.isenabled()
gc.disable()
try:
    from batchscribe.errors import (
        BatchscribeError,
        ConfigError,
        ResultsBusy,
        RunAborted,
    )
    from batchscribe.events import Summary
    from batchscribe.pulse import PulseParams
    from batchscribe.run.engine import run_batch, run_batch_async
    from batchscribe.run.options import RunOptions
finally:
    if _collecting:
        gc.enable()

if TYPE_CHECKING:
    from batchscribe.export import export as export_transcripts
    from batchscribe.report import build_report, failed_items, render_html
    from batchscribe.results import merge_results
    from batchscribe.run.dry_run import dry_run

#: Public name -> (module, name there), imported on first use. (The export function is
#: ``export_transcripts``: a package attribute ``export`` would be replaced by the submodule
#: ``batchscribe.export`` the moment that is imported.)
_LAZY = {
    "build_report": ("batchscribe.report", "build_report"),
    "render_html": ("batchscribe.report", "render_html"),
    "failed_items": ("batchscribe.report", "failed_items"),
    "export_transcripts": ("batchscribe.export", "export"),
    "merge_results": ("batchscribe.results", "merge_results"),
    "dry_run": ("batchscribe.run.dry_run", "dry_run"),
}


def __getattr__(name: str) -> Any:
    """The public functions of :data:`_LAZY`, imported when first asked for."""
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'batchscribe' has no attribute {name!r}")
    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


__all__ = [
    "BatchscribeError",
    "ConfigError",
    "PulseParams",
    "ResultsBusy",
    "RunAborted",
    "RunOptions",
    "Summary",
    "__version__",
    "build_report",
    "dry_run",
    "export_transcripts",
    "failed_items",
    "merge_results",
    "render_html",
    "run_batch",
    "run_batch_async",
]
