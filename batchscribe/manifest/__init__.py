"""Manifest reading: sources (JSONL, CSV, text list, directory, stdin) -> items and problems.

:func:`iter_sources` streams every source in order and yields an :class:`Item` for each usable
entry and a :class:`Problem` (``FILE:LINE: message``) for each bad one; a bad line never stops the
run. A source that cannot be read at all raises :class:`ManifestError`; call
:func:`check_sources` first to fail before any work starts.

Everything streams: files are read in binary, in runs of whole lines as they arrive, and parsed
one line at a time (decoded per line, so one bad byte spoils one line); directories are walked
lazily one level at a time, and the only state that grows with the input is the shared set of
id digests used to spot duplicate ids. A resumed run hands whole runs of ``{"id", "path"}``
lines to the resume's :class:`~batchscribe.results.resume.Settler`, which skips them at once
when all are done.

The package, from the outside in: this module (check the sources, stream them, check items
against the run's parameters); :mod:`.reading` (a manifest file or stream: open it, tell its
format); :mod:`.lines` (bytes -> runs of whole lines); :mod:`.formats` (JSON Lines, CSV, text
lists); :mod:`.walk` (directories and cloud prefixes); :mod:`.fields` (one record -> an item
or the problem with it, and the messages).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from batchscribe.errors import ManifestError
from batchscribe.ids import DigestSet, id_key
from batchscribe.items import Item, Problem, is_cloud_uri
from batchscribe.manifest.fields import printable, problem_at, reason
from batchscribe.manifest.reading import read_file, read_stream
from batchscribe.manifest.walk import read_bucket, read_directory
from batchscribe.pulse import PulseParams, check_combination
from batchscribe.results.resume import Settler, Skipped

__all__ = ["Item", "ManifestError", "Problem", "check_sources", "iter_sources"]

STDIN = "-"
STDIN_NAME = "<stdin>"


def check_sources(sources: Sequence[str]) -> None:
    """Raise :class:`ManifestError` unless every source can be read.

    Args:
        sources: manifest paths, directories, or ``-`` for stdin (at most once).
    """
    stdin_seen = False
    for source in sources:
        if source == STDIN:
            if stdin_seen:
                raise ManifestError("- (stdin) is given more than once")
            stdin_seen = True
            continue
        if is_cloud_uri(source):
            from batchscribe import cloud  # (only for buckets: a run of files never loads it)

            cloud.check_source(source)  # lists one key: fails before any request is sent
            continue
        name = printable(source)
        try:
            mode = os.stat(source).st_mode
        except OSError as exc:
            raise ManifestError(f"{name}: cannot read: {reason(exc)}") from exc
        if stat.S_ISDIR(mode):
            try:
                with os.scandir(source):
                    pass
            except OSError as exc:
                raise ManifestError(f"{name}: cannot read directory: {reason(exc)}") from exc
        elif stat.S_ISREG(mode):
            try:
                with open(source, "rb"):
                    pass
            except OSError as exc:
                raise ManifestError(f"{name}: cannot read manifest: {reason(exc)}") from exc
        elif stat.S_ISFIFO(mode):
            # A pipe such as bash's <(...): opening it here could block or eat its data.
            if not os.access(source, os.R_OK):
                raise ManifestError(f"{name}: cannot read manifest: permission denied")
        else:
            raise ManifestError(f"{name}: not a manifest file or a directory")


def iter_sources(
    sources: Sequence[str],
    *,
    stdin: BinaryIO | None = None,
    seen: DigestSet | None = None,
    checked: bool = False,
    settler: Settler | None = None,
    defaults: PulseParams | None = None,
) -> Iterator[Item | Problem | Skipped]:
    """Stream the items and problems of every source, in order.

    Sources are checked with :func:`check_sources` when iteration starts. A source that fails
    while being read raises :class:`ManifestError`.

    Args:
        sources: manifest files (``.jsonl``/``.ndjson``/``.json``, ``.csv``, ``.txt``/``.lst``/
            ``.list``, anything else sniffed), directories (scanned for audio), or ``-``.
        stdin: the stream to read for ``-`` (default: ``sys.stdin.buffer``).
        seen: id digests already taken, shared across sources; an item whose id is in it is a
            duplicate (a problem). Created when None; valid items' ids are added to it, as
            ``seen.key(id)`` (:func:`~batchscribe.ids.id_digest` unless the set says otherwise;
            one created here uses the cheaper in-process :func:`~batchscribe.ids.id_key`).
        checked: the caller has just run :func:`check_sources` (a bucket check costs a request).
        settler: asked about the id of each valid item of the common JSONL shape (a path, no
            other fields) once its duplicate check passed; an item it settles (a resumed run
            skips it) is never built: the settler counts it, and the counts it holds are
            yielded as a :class:`~batchscribe.results.resume.Skipped` from time to time
            (the caller takes the rest from the settler).
        defaults: the run's Pulse parameters: an item whose own fields do not fit with them
            (:func:`~batchscribe.pulse.check_combination`) is a problem of its line. Without
            them, only an item that sets its own ``model`` is checked.
    """
    if defaults is None:
        yield from _iter_sources(sources, stdin, seen, checked, settler)
        return
    for entry in _iter_sources(sources, stdin, seen, checked, settler):
        if type(entry) is Item and entry.params:
            params = defaults.with_overrides(entry.params)
            # (a URL is sent as URL input with model=pulse only, else through the client)
            problem = check_combination(params, url_input=False)
            if problem is not None:
                file, _, line = entry.origin.rpartition(":")
                if not line.isdigit():  # (an origin without a line: a directory's file)
                    file, line = entry.origin, "0"
                yield problem_at(file, int(line), problem)
                continue
        yield entry


def _iter_sources(
    sources: Sequence[str],
    stdin: BinaryIO | None,
    seen: DigestSet | None,
    checked: bool,
    settler: Settler | None,
) -> Iterator[Item | Problem | Skipped]:
    """:func:`iter_sources` without the check against the run's parameters."""
    if not checked:
        check_sources(sources)
    if seen is None:
        seen = DigestSet(key=id_key)  # private to this reader: the cheap in-process hash
    for source in sources:
        if source == STDIN:
            stream = stdin if stdin is not None else sys.stdin.buffer
            try:
                yield from read_stream(stream, STDIN_NAME, os.getcwd(), "sniff", seen, settler)
            except OSError as exc:
                raise ManifestError(f"{STDIN_NAME}: read failed: {reason(exc)}") from exc
        elif is_cloud_uri(source):
            yield from read_bucket(source, seen)
        elif os.path.isdir(source):
            try:
                yield from read_directory(source, seen)
            except OSError as exc:  # the folder went away after check_sources
                raise ManifestError(f"{printable(source)}: cannot read: {reason(exc)}") from exc
        else:
            yield from read_file(source, seen, settler)
