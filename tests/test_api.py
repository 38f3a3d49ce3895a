"""The public API: every name in ``batchscribe.__all__`` resolves; the readers load on use."""

from __future__ import annotations

import subprocess
import sys

import batchscribe


def test_every_public_name_resolves() -> None:
    """Each name in __all__ is reachable as ``batchscribe.NAME`` (the lazy ones included)."""
    missing = [name for name in batchscribe.__all__ if getattr(batchscribe, name, None) is None]
    assert missing == []


def test_export_transcripts_survives_importing_the_export_module() -> None:
    """``export_transcripts`` stays the function once the module ``batchscribe.export`` loads."""
    import batchscribe.export

    assert batchscribe.export_transcripts is batchscribe.export.export


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
