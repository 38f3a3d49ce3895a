"""Sources that are not manifests: a directory walked for audio files, and a cloud prefix
listed for audio objects; both streamed, in sorted order."""

from __future__ import annotations

import os
from collections.abc import Iterator

from batchscribe.errors import ManifestError
from batchscribe.ids import DigestSet
from batchscribe.items import CLOUD_OBJECT, Item, Problem
from batchscribe.manifest.fields import make_item, printable, quote, reason
from batchscribe.pulse import SCAN_EXTENSIONS


def read_directory(root: str, seen: DigestSet) -> Iterator[Item | Problem]:
    """The audio files under a folder, streamed; ids are paths relative to it."""
    base = os.path.abspath(root)
    for found in _walk(base, root):
        if isinstance(found, Problem):
            yield found
            continue
        rel = found
        origin = printable(os.path.join(root, rel))
        item_id = rel
        if not rel.isascii():
            # A name that is not UTF-8 arrives with surrogate escapes, which no JSON writer
            # accepts: the id spells those bytes as \xNN instead (the source keeps the real name).
            item_id = os.fsencode(rel).decode("utf-8", "backslashreplace")
        result = make_item(rel, None, item_id, {}, None, base, origin, seen)
        yield Problem(origin, 0, result) if isinstance(result, str) else result


def _walk(base: str, shown: str) -> Iterator[str | Problem]:
    """Relative posix paths of audio files under ``base``, in sorted order, lazily.

    Each directory level is listed and sorted on its own (a directory sorts as ``name/`` so the
    order equals sorting the full relative paths); hidden entries are skipped; a directory
    reached twice (a symlink loop or alias) is walked once.
    """
    root_stat = os.stat(base)
    visited = {(root_stat.st_dev, root_stat.st_ino)}
    stack: list[tuple[str, Iterator[tuple[str, str, bool]]]] = []
    level = _list_level(base, "")
    if isinstance(level, Problem):  # the root vanished after check_sources
        raise ManifestError(f"{printable(shown)}: {level.message}")
    stack.append(("", iter(level)))
    while stack:
        prefix, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        _key, name, is_dir = entry
        rel = prefix + name
        if not is_dir:
            yield rel
            continue
        path = os.path.join(base, rel)
        try:
            st = os.stat(path)
        except OSError:
            continue  # vanished since listed
        ident = (st.st_dev, st.st_ino)
        if ident in visited:
            continue
        visited.add(ident)
        sub = _list_level(path, rel)
        if isinstance(sub, Problem):
            yield Problem(printable(os.path.join(shown, rel)), 0, sub.message)
            continue
        stack.append((rel + "/", iter(sub)))


def _list_level(path: str, rel: str) -> list[tuple[str, str, bool]] | Problem:
    """One directory's visible subdirectories and audio files as (sort key, name, is_dir)."""
    found: list[tuple[str, str, bool]] = []
    try:
        with os.scandir(path) as scan:
            for entry in scan:
                name = entry.name
                if name[0] == ".":
                    continue
                try:
                    if entry.is_dir():
                        found.append((name + "/", name, True))
                    elif os.path.splitext(name)[1].lower() in SCAN_EXTENSIONS and entry.is_file():
                        found.append((name, name, False))
                except OSError:
                    continue  # e.g. a dangling symlink that cannot be followed
    except OSError as exc:
        return Problem(rel, 0, f"cannot read directory: {reason(exc)}")
    found.sort()
    return found


def read_bucket(uri: str, seen: DigestSet) -> Iterator[Item | Problem]:
    """The audio objects under a cloud prefix, streamed; ids are keys relative to the prefix."""
    # A bucket that cannot be listed raises CloudConfigError, a ManifestError.
    from batchscribe import cloud  # (only for buckets: a run of files never loads it)

    for found in cloud.iter_objects(uri):
        if not seen.add(seen.key(found.rel)):
            message = f"duplicate id {quote(found.rel)} (first seen earlier)"
            yield Problem(found.uri, 0, message)
            continue
        yield Item(
            found.rel, found.uri, CLOUD_OBJECT, {}, None, found.uri, found.size, found.version
        )
