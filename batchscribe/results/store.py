"""The results store: the single writer of a results file, which is also the resume state.

- **lock**: an OS file lock (``flock``) on the results file itself, so only one run writes it
  and a killed run never leaves it stuck; a second run gets :class:`ResultsBusy` at once.
- **repair**: a torn last line (a kill mid-write) is cut back to the last newline, touching no
  byte before it.
- **scan**: at open, the resume state (:func:`batchscribe.results.resume.scan`).
- **append**: each record is one ``os.write`` of one line on an ``O_APPEND`` descriptor, from a
  single writer, so records are never interleaved and a ``kill -9`` loses nothing finished.
  ``fsync`` runs at most once a second (:meth:`ResultsStore.sync`) and at close.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Sequence
from typing import Any

import orjson

from batchscribe.errors import ConfigError, ResultsBusy, RunAborted
from batchscribe.results.record import READ_CHUNK
from batchscribe.results.resume import ResumeState, scan


def torn_tail_length(fd: int) -> int:
    """How many bytes after the last newline (0 when the file ends with one, or is empty)."""
    size = os.fstat(fd).st_size
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        chunk = os.pread(fd, pos - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return size - (start + newline + 1)
        pos = start
    return size


class ResultsStore:
    """The single writer of a results file. Use :meth:`open`, then :meth:`append`, :meth:`close`."""

    def __init__(self, path: str, *, secrets: Sequence[str | None] = ()) -> None:
        self.path = path
        # Secrets (the API key) as they would appear inside a JSON string: a server that
        # echoes the key in an error or an answer must not get it written to disk.
        self._secrets = [orjson.dumps(s)[1:-1] for s in secrets if s and len(s) >= 4]
        self._fd = -1
        self.dirty = False
        self.written = 0
        self.repaired_bytes = 0
        # Set by the first failed write or fsync: the store then refuses every later write, so
        # nothing lands after a partial line. After a failed fsync it never fsyncs again (the
        # kernel may have dropped the dirty pages and a second fsync would report success).
        self.failed: str | None = None
        self._fsync_failed = False
        # (st_dev, st_ino) of the file locked at open: the path must still name it, or the
        # run is writing into a file that was deleted or replaced (and is lost with it).
        self._identity: tuple[int, int] | None = None

    def open(self, *, fingerprints: bool = False) -> ResumeState:
        """Lock the file, repair a torn tail, and scan it. Raises ResultsBusy, ConfigError."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: cannot open results file: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ResultsBusy(
                    f"{self.path}: another batchscribe run holds this results file; "
                    "wait for it to finish (or stop it) and run again"
                ) from None
            raise ConfigError(f"{self.path}: cannot lock results file: {exc.strerror}") from None
        self._fd = fd
        try:
            if not os.path.isfile(self.path):
                raise ConfigError(f"{self.path}: results path is not a regular file")
            st = os.fstat(fd)
            self._identity = (st.st_dev, st.st_ino)
            torn = torn_tail_length(fd)
            if torn:
                os.ftruncate(fd, os.fstat(fd).st_size - torn)
                os.fsync(fd)
                self.repaired_bytes = torn
            with open(self.path, "rb", buffering=READ_CHUNK) as stream:
                return scan(stream, fingerprints=fingerprints)
        except BaseException:
            self.close()
            raise

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, in one write. Raises RunAborted on an I/O error."""
        line = orjson.dumps(record)
        for secret in self._secrets:
            if secret in line:
                line = line.replace(secret, b"***")
        self.write_line(line + b"\n")

    def write_line(self, data: bytes) -> None:
        """Write one complete line (bytes ending in a newline) in one ``write``."""
        if self.failed:
            raise RunAborted(self.failed)
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # a short write (rare: signals, nearly full disks)
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            self.failed = (
                f"{self.path}: cannot write results: {exc.strerror or exc}; "
                "free some space or fix the disk, then run again to resume"
            )
            raise RunAborted(self.failed) from None
        self.dirty = True
        self.written += 1

    def sync(self) -> None:
        """fsync if anything was written since the last sync. Raises RunAborted on failure.

        A failed fsync is never retried as if it had worked: the kernel may have dropped the
        dirty pages, so the run stops and the next run re-checks the file.
        """
        if self._fsync_failed:
            raise RunAborted(self.failed or f"{self.path}: an earlier fsync failed")
        if self._fd < 0:
            return
        self.check_path()
        if not self.dirty:
            return
        self.dirty = False
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self.failed = f"{self.path}: cannot sync results to disk: {exc.strerror or exc}"
            self._fsync_failed = True
            raise RunAborted(self.failed) from None

    def check_path(self) -> None:
        """RunAborted if the path no longer names the file this store holds: deleted, or
        replaced (renamed over, or deleted and made anew, maybe by a second run). Whatever the
        run appends goes to a file no one can open, so the run must stop, and say so."""
        if self._identity is None or self.failed:
            if self.failed:
                raise RunAborted(self.failed)
            return
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            now = "nothing"
        except OSError:
            return  # cannot tell (e.g. a permission change on a folder): not a verdict
        else:
            if (st.st_dev, st.st_ino) == self._identity:
                return
            now = "another file"
        self.failed = (
            f"{self.path}: the results file was deleted or replaced while this run was writing "
            f"it (the path now holds {now}); what it held is lost with it: stopping. Run again "
            "to send those items again"
        )
        raise RunAborted(self.failed)

    def close(self) -> None:
        """Sync, unlock and close (safe to call twice)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            if self.dirty and not self._fsync_failed:
                self.dirty = False
                os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the flock

    def __repr__(self) -> str:
        return f"<ResultsStore {self.path!r} written={self.written} open={self._fd >= 0}>"
