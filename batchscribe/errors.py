"""What a failure means for the run: one tree, each branch one meaning, exit codes beside it.

::

    BatchscribeError                 ends the run with ``exit_code`` when it reaches the CLI
    ├── ConfigError          2       usage or configuration: found before any request is sent
    │   ├── ShardError               a --shard value (or a {shard} path) that names no shard
    │   └── ManifestError            a source that cannot be read at all (mid-run: counted as
    │       └── CloudConfigError     a bad line, the rest kept); a bucket that cannot be used
    ├── ResultsBusy          75      another run holds the results file's lock
    ├── RunAborted           3       stop the run: the key was rejected, the disk is full
    ├── Stopped              -       stop this item: the run is stopping, the item is left for
    │                                the next run (never reaches the CLI: Summary.exit_code does)
    └── ItemError            1       about one item; ``outcome`` says what it means for it
        ├── RetryableError           retry this item (the retry loop's signal)
        ├── GiveUp                   fail this item: attempts ran out or the wait is too long
        ├── FileChanged              the file changed during the upload (retry)
        └── CloudError               one attempt at one cloud object failed (its outcome says)

Classification happens in one place (:mod:`batchscribe.pulse` and the engine's transport edge);
the engine only acts on these types. The modules that raise one re-export it (``shard.ShardError``,
``manifest.ManifestError``, ``cloud.CloudError``, ...), so either import works.
"""

from __future__ import annotations

from batchscribe.pulse import Outcome, Verdict

# Exit codes: a contract cron jobs depend on. Documented in README.md; never change one silently.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_BUDGET = 4
EXIT_BUSY = 75
EXIT_INTERRUPTED = 130

__all__ = [
    "EXIT_ABORTED",
    "EXIT_BUDGET",
    "EXIT_BUSY",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "BatchscribeError",
    "CloudConfigError",
    "CloudError",
    "ConfigError",
    "FileChanged",
    "GiveUp",
    "ItemError",
    "ManifestError",
    "ResultsBusy",
    "RetryableError",
    "RunAborted",
    "ShardError",
    "Stopped",
]


class BatchscribeError(Exception):
    """Base class: a problem that ends the run with ``exit_code``."""

    exit_code = EXIT_USAGE


# ------------------------------------------------------------------- before any request


class ConfigError(BatchscribeError):
    """Usage or configuration error, found before any request is sent (exit 2)."""

    exit_code = EXIT_USAGE


class ShardError(ConfigError):
    """A ``--shard`` value, or a path naming ``{shard}``, that selects no shard; says the fix."""


class ManifestError(ConfigError):
    """A source that cannot be read at all (missing, unreadable, or not a file or directory).

    Before a run it is a configuration error (exit 2); a source that fails mid-way is counted
    as a bad line and the items read before it are kept.
    """


class CloudConfigError(ManifestError):
    """A cloud source that cannot be used at all (exit 2): no bucket, no access, no credentials."""


class ResultsBusy(BatchscribeError):
    """Another run holds the results file's lock (exit 75)."""

    exit_code = EXIT_BUSY


# ------------------------------------------------------------------- stopping the run


class RunAborted(BatchscribeError):
    """The run cannot go on: the key was rejected, the disk is full (exit 3)."""

    exit_code = EXIT_ABORTED


class Stopped(BatchscribeError):
    """A stop came before this item's next request: it is left, unrecorded, for the next run.

    Control flow inside the engine; the reason for the stop (interrupt, budget, abort) sets the
    run's exit code in its Summary, so this type's own code is only a fallback.
    """

    exit_code = EXIT_INTERRUPTED


# ------------------------------------------------------------------- one item


class ItemError(BatchscribeError):
    """About one item, not the run; ``outcome`` says what it means (retry, fail, abort)."""

    exit_code = EXIT_FAILED

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error or outcome.cause)
        self.outcome = outcome


class RetryableError(ItemError):
    """This attempt failed in a way worth trying again; ``outcome`` says why."""


class GiveUp(ItemError):
    """The item is not retried any more; ``error`` is the last retryable failure, ``outcome``
    the item's failure (the last answer's status and cause, the reason appended)."""

    def __init__(self, error: RetryableError, reason: str) -> None:
        last = error.outcome
        failed = Outcome(
            Verdict.FAIL, last.http_status, last.cause, f"{last.error} ({reason})",
            request_id=last.request_id,
        )  # fmt: skip
        super().__init__(failed)
        self.args = (reason,)
        self.error = error
        self.reason = reason


class FileChanged(ItemError):
    """The file's size changed while it was being uploaded (retry: the next attempt reads it
    afresh)."""

    def __init__(self, path: str) -> None:
        super().__init__(Outcome(Verdict.RETRY, None, "file_changed", "file changed during upload"))
        self.args = (path,)
        self.path = path


class CloudError(ItemError):
    """One attempt at one cloud object failed; ``outcome`` says what that means for the item."""
