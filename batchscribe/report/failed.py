"""The failed list: the items whose final state is failed, as a manifest ``run`` accepts.

:func:`failed_items` turns each failed item's final record back into a manifest entry (id,
path or url, its per-item parameters and extra fields), so a rerun of exactly what failed is
one command; :func:`write_lines` writes the list to a stream or, atomically, to a file.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any, TextIO

from batchscribe.errors import ConfigError
from batchscribe.pulse import Cause
from batchscribe.results import ReadCounts, final_states

#: Every ``cause`` a failed record can carry (see README.md, "Results format").
CAUSES = tuple(cause.value for cause in Cause)
#: Final states that are not failures (``failed`` never lists them).
DONE = ("ok", "submitted")
_BATCH_LINES = 1000  # lines a write (and flush) to a stream


def parse_causes(values: Sequence[str] | None) -> frozenset[str] | None:
    """The causes named by ``--cause`` values (repeatable, comma lists); None for all.

    Raises ConfigError naming an unknown cause and listing the known ones.
    """
    if not values:
        return None
    causes: set[str] = set()
    for value in values:
        for name in value.split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in CAUSES:
                raise ConfigError(
                    f"--cause {name!r} is not a failure cause; use one of: {', '.join(CAUSES)}"
                )
            causes.add(name)
    return frozenset(causes) if causes else None


def failed_items(
    paths: Sequence[str],
    *,
    causes: Collection[str] | None = None,
    counts: ReadCounts | None = None,
) -> Iterator[dict[str, Any]]:
    """Manifest entries (for ``batchscribe run``) of the items whose final state is failed.

    Each entry has the item's ``id``, its ``path`` (a local file, as resolved when it was sent)
    or ``url``, its per-item Pulse parameters when the record kept them (``params``), and the
    manifest's extra fields (``metadata``), so a rerun of the entries into the same results
    file with ``--retry-failed`` supersedes exactly the failed records.

    Args:
        paths: results files, in order.
        causes: only failures with one of these causes (None: every failure).
        counts: filled in with what the files hold.
    """
    for _, _, record in final_states(paths, counts=counts):
        if record.get("status") in DONE:
            continue  # ok, or submitted (its transcript is on its way to the webhook)
        if causes is not None and record.get("cause") not in causes:
            continue
        source = record.get("source")
        if not isinstance(source, str) or not source:
            continue  # cannot be sent again: nothing says where its audio is
        entry: dict[str, Any] = {"id": record["id"]}
        is_url = source.startswith(("http://", "https://"))
        entry["url" if is_url else "path"] = source
        params = record.get("params")
        if isinstance(params, dict):
            entry.update((k, v) for k, v in params.items() if k not in entry)
        metadata = record.get("metadata")
        if isinstance(metadata, dict):
            entry.update((k, v) for k, v in metadata.items() if k not in entry)
        yield entry


def write_lines(lines: Iterable[str], out: str | None, stream: TextIO) -> int:
    """Write ``lines`` (each without its newline) to the file ``out``, replaced atomically, or
    with ``out`` None to ``stream``, a thousand lines a write and flush; return how many.

    Raises ConfigError when ``out`` cannot be written.
    """
    from batchscribe.export import write_if_changed

    count = 0
    if out is None:
        batch: list[str] = []
        for line in lines:
            count += 1
            batch.append(line)
            if len(batch) >= _BATCH_LINES:  # one write and flush per thousand lines, not per line
                _flush(batch, stream)
        if batch:
            _flush(batch, stream)
        return count
    data = []
    for line in lines:
        count += 1
        data.append(line + "\n")
    try:
        write_if_changed(out, "".join(data).encode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write: {exc.strerror}") from None
    return count


def _flush(lines: list[str], stream: TextIO) -> None:
    """Write ``lines`` to ``stream`` in one write, flush it, and empty the list."""
    stream.write("\n".join(lines) + "\n")
    stream.flush()
    lines.clear()
