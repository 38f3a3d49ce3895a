"""The public API: every name in ``batchscribe.__all__`` resolves; the readers load on use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import batchscribe


def test_every_public_name_resolves() -> None:
    """Each name in __all__ is reachable as ``batchscribe.NAME`` (the lazy ones included)."""
    missing = [name for name in batchscribe.__all__ if getattr(batchscribe, name, None) is None]
    assert missing == []


def test_export_transcripts_survives_importing_the_export_module() -> None:
    """``export_transcripts`` stays the function once the module ``batchscribe.export`` loads."""
    import batchscribe.export

    assert batchscribe.export_transcripts is batchscribe.export.export


@pytest.mark.parametrize("collecting", [True, False])
def test_importing_the_package_leaves_the_collector_as_it_was(collecting: bool) -> None:
    """The collector, paused while the package imports the run, is on or off afterwards as it
    was before."""
    code = (
        "import gc\n"
        f"{'gc.enable()' if collecting else 'gc.disable()'}\n"
        "import batchscribe\n"
        "print(gc.isenabled())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == str(collecting)


def test_importing_the_package_does_not_load_the_readers() -> None:
    """A run does not pay for the report, export and HTML modules' imports."""
    code = (
        "import sys, batchscribe; "
        "print(sorted(m for m in sys.modules if m.startswith(('batchscribe.report', "
        "'batchscribe.export'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
