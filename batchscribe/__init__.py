"""batchscribe: bulk-transcribe audio archives through the Pulse speech-to-text API.

The public API (the CLI is a thin shell over it)::

    from batchscribe import RunOptions, run_batch
    summary = run_batch(RunOptions(sources=["archive/"], out="results.jsonl", api_key=KEY))
    print(summary.ok, summary.failed, summary.exit_code)
"""

__version__ = "0.1.0"

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

__all__ = [
    "BatchscribeError",
    "ConfigError",
    "PulseParams",
    "ResultsBusy",
    "RunAborted",
    "RunOptions",
    "Summary",
    "__version__",
    "run_batch",
    "run_batch_async",
]
