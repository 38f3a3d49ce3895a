"""Replace a small file whole: readers see the old content or the new, never a part.

The metrics file (node_exporter's textfile collector reads it at any moment) and the status
file (``batchscribe status`` reads it while the run rewrites it) are written this way:
a temporary file in the same folder, written, fsynced, renamed over the target, and the folder
fsynced so the rename survives a crash. A crash (even ``kill -9``) before the rename leaves the
target as it was; the temporary file is hidden (a leading dot) and ends in ``.tmp``, so the
textfile collector, which reads only ``*.prom``, never picks it up.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["atomic_writer", "replace_file"]


def replace_file(path: str, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically and durably. Raises OSError.

    The file keeps the permission bits of the file it replaces, else gets ``mode``: readable by
    other users (node_exporter usually runs as its own user), as ``open()`` would make it.
    """
    with contextlib.suppress(FileNotFoundError):
        mode = stat.S_IMODE(os.stat(path).st_mode)
    with atomic_writer(path, mode=mode) as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_writer(path: str, *, mode: int, buffering: int = -1) -> Iterator[BinaryIO]:
    """A file to write ``path``'s new content into (streamed: a file of any size), put in its
    place, with ``mode``, durably when the block ends; an error in the block leaves ``path``
    as it was and deletes the temporary file. Raises OSError."""
    folder = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb", buffering=buffering) as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power loss
    finally:
        os.close(dir_fd)
