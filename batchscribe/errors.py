"""What a failure means for the run: fail the item, retry the item, or stop the whole run.

Classification happens in one place (:mod:`batchscribe.pulse` and the engine's transport edge);
the engine only acts on these types. Every exception that reaches the CLI carries its exit code.
"""

from __future__ import annotations

from batchscribe.pulse import Outcome

# Exit codes: a contract cron jobs depend on. Documented in README.md; never change one silently.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_BUDGET = 4
EXIT_BUSY = 75
EXIT_INTERRUPTED = 130


class BatchscribeError(Exception):
    """Base class: a problem that ends the run with ``exit_code``."""

    exit_code = EXIT_USAGE


class ConfigError(BatchscribeError):
    """Usage or configuration error, found before any request is sent (exit 2)."""

    exit_code = EXIT_USAGE


class ResultsBusy(BatchscribeError):
    """Another run holds the results file's lock (exit 75)."""

    exit_code = EXIT_BUSY


class RunAborted(BatchscribeError):
    """The run cannot go on: the key was rejected, the disk is full (exit 3)."""

    exit_code = EXIT_ABORTED


class RetryableError(Exception):
    """This attempt failed in a way worth trying again; ``outcome`` says why."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error or outcome.cause)
        self.outcome = outcome
