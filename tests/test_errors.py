"""The error tree: every failure the package raises says what it means for the run."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest
from conftest import REPO

import batchscribe
from batchscribe import cloud, manifest, retry, shard
from batchscribe.errors import (
    EXIT_ABORTED,
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_USAGE,
    BatchscribeError,
    CloudConfigError,
    CloudError,
    ConfigError,
    FileChanged,
    GiveUp,
    ItemError,
    ManifestError,
    ResultsBusy,
    RetryableError,
    RunAborted,
    ShardError,
    Stopped,
)
from batchscribe.pulse import Outcome, Verdict

#: Exceptions outside the tree, each with the reason it stays outside.
OUTSIDE = {
    # The emulator stands in for the service: its refusal becomes a 400 answer, never a
    # batchscribe failure.
    "batchscribe.emulator.transcripts.AudioError",
    # Control flow inside export(): one file not written, reported as a line of its summary.
    "batchscribe.export._Unrenderable",
    "batchscribe.export._Refused",
}


def _package_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(batchscribe.__path__, "batchscribe."):
        if info.name == "batchscribe.__main__":  # runs the CLI when imported
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("batchscribe"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_exception_type_is_in_the_tree() -> None:
    """No exception type of the package lives outside BatchscribeError (bar the listed ones)."""
    found = _package_exceptions()
    outside = {name for name, cls in found.items() if not issubclass(cls, BatchscribeError)}
    assert outside == OUTSIDE
    assert len(found) - len(OUTSIDE) >= 13  # the tree was walked, not skipped


@pytest.mark.parametrize(
    ("error", "exit_code"),
    [
        (ConfigError("x"), EXIT_USAGE),
        (ShardError("x"), EXIT_USAGE),
        (ManifestError("x"), EXIT_USAGE),
        (CloudConfigError("x"), EXIT_USAGE),
        (ResultsBusy("x"), EXIT_BUSY),
        (RunAborted("x"), EXIT_ABORTED),
        (FileChanged("a.wav"), EXIT_FAILED),
    ],
)
def test_each_branch_carries_its_exit_code(error: BatchscribeError, exit_code: int) -> None:
    """A configuration error exits 2, a busy file 75, an abort 3, an item's failure 1."""
    assert error.exit_code == exit_code


def test_config_errors_are_one_branch() -> None:
    """A bad shard, an unreadable source and an unusable bucket are all ConfigError (exit 2)."""
    assert issubclass(ShardError, ConfigError)
    assert issubclass(ManifestError, ConfigError)
    assert issubclass(CloudConfigError, ManifestError)  # a bucket is a source: counted mid-run


def test_item_errors_carry_their_outcome() -> None:
    """Every item error says what it means for the item: an Outcome with a verdict."""
    changed = FileChanged("a.wav")
    assert changed.outcome == Outcome(
        Verdict.RETRY, None, "file_changed", "file changed during upload"
    )
    assert str(changed) == "a.wav"
    cut = CloudError(Outcome(Verdict.RETRY, None, "network", "storage: reset"))
    assert cut.outcome.verdict is Verdict.RETRY and str(cut) == "storage: reset"
    last = RetryableError(Outcome(Verdict.RETRY, 503, "5xx", "HTTP 503", request_id="r-1"))
    give_up = GiveUp(last, "gave up after 6 attempts")
    assert give_up.outcome == Outcome(
        Verdict.FAIL, 503, "5xx", "HTTP 503 (gave up after 6 attempts)", request_id="r-1"
    )
    assert give_up.error is last and str(give_up) == "gave up after 6 attempts"


def test_give_up_and_stop_are_never_retried() -> None:
    """The retry loop catches RetryableError only: giving up or stopping ends the loop."""
    for cls in (GiveUp, Stopped, FileChanged, CloudError):
        assert not issubclass(cls, RetryableError)
    assert issubclass(RetryableError, ItemError) and not issubclass(Stopped, ItemError)


def test_modules_re_export_the_types_they_raise() -> None:
    """shard.ShardError, manifest.ManifestError, cloud.CloudError, ... are the tree's types."""
    assert shard.ShardError is ShardError
    assert manifest.ManifestError is ManifestError
    assert cloud.CloudConfigError is CloudConfigError
    assert cloud.CloudError is CloudError
    assert retry.GiveUp is GiveUp


def test_unreadable_source_is_a_config_error_from_the_api(tmp_path: object) -> None:
    """run_batch with a manifest that does not exist raises ConfigError naming it; nothing sent."""
    from batchscribe import RunOptions, run_batch

    options = RunOptions(
        sources=[f"{tmp_path}/nope.jsonl"], out=f"{tmp_path}/r.jsonl", api_key="sk-x",
        endpoint="http://127.0.0.1:9/waves/v1/stt/",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"nope\.jsonl: cannot read: no such file"):
        run_batch(options)


def test_fake_clock_is_not_loaded_by_a_run() -> None:
    """FakeClock lives in batchscribe.testing, which no run-time module imports."""
    code = (
        "import sys, batchscribe.cli, batchscribe.run.engine, batchscribe.run.plan;"
        "print('batchscribe.testing' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"
