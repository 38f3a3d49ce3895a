"""Transcript exports: one file per ok item (txt, srt, vtt or json), mirroring the archive.

The core is pure and tested on plain data: :func:`build_cues` turns a record's utterances (or
its words, or its bare transcript) into subtitle cues that players accept (at most 42
characters a line, 2 lines a cue, 7 seconds a cue; times exact to the millisecond), the
renderers turn cues into SRT (composed by the ``srt`` library), WebVTT or text, and
:func:`relative_path` turns an item id into a safe relative path. The I/O edge,
:func:`export`, writes each file atomically (temporary file + rename), leaves a file whose
content is already right untouched, and never writes outside the output folder: ids are
sanitised (no absolute paths, ``..``, control characters or empty components) and every
folder on the way is checked to resolve inside it, so a symlink placed in it cannot lead out.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeGuard

import orjson
import srt

from batchscribe.errors import ConfigError
from batchscribe.ids import DigestSet, id_digest
from batchscribe.pulse import AUDIO_EXTENSIONS
from batchscribe.report.text import display_id, number
from batchscribe.results import HEAVY_FIELDS, ReadCounts, final_states

FORMATS = ("txt", "srt", "vtt", "json")
MAX_LINE = 42  # characters a subtitle line (the common broadcast / Netflix limit)
MAX_LINES = 2  # lines a cue
MAX_CUE_SECONDS = 7.0  # longest cue
PAUSE_SECONDS = 1.5  # a silence this long between words starts a new cue
_SENTENCE_BREAK = 24  # after a sentence end, start a new cue once this many characters are shown
MAX_SECONDS = 359_999.0  # 99:59:59, SRT's two-digit hours; no audio the API takes is this long
_MIN_CUE_MS = 500  # a cue whose words take no time (end <= start) shows this long at most
_NAME_MAX = 240  # bytes of one path component (filesystems allow 255; room for a suffix)


# ------------------------------------------------------------------------------ cues (pure)


@dataclass(frozen=True, slots=True)
class Cue:
    """One subtitle: start and end in milliseconds, its lines, and the speaker (or None): its
    label (``Speaker 0``, or with ``channel`` in the record ``Channel 1, Speaker 0``)."""

    start_ms: int
    end_ms: int
    lines: tuple[str, ...]
    speaker: str | None = None


@dataclass(frozen=True, slots=True)
class _Span:
    start: float
    end: float
    text: str
    speaker: str | None


def speaker_label(value: object) -> str | None:
    """``Speaker 0`` for a diarized speaker (``0``, ``"0"``, ``"speaker_0"``); None for none."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return f"Speaker {value}"
    text = " ".join(str(value).split())
    if not text:
        return None
    match = re.fullmatch(r"(?i)(?:speaker[ _-]?)?0*(\d+)", text)
    return f"Speaker {int(match.group(1))}" if match else text


def channel_label(value: object) -> str | None:
    """``Channel 1`` for a word or utterance from channel 1 (``--channels split``: the record's
    number, from 0, as ``Speaker N`` is); None for none (a bool or other value is no channel)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return f"Channel {value}"
    if isinstance(value, str) and value.strip().isdigit():
        return f"Channel {int(value)}"
    return None


def voice_label(entry: dict[str, Any]) -> str | None:
    """Who says a word or utterance: ``Channel 0, Speaker 1``, ``Channel 0``, ``Speaker 1``, or
    None. A channel is labelled like a speaker: a change of either starts a new cue."""
    speaker = speaker_label(entry.get("speaker"))
    channel = channel_label(entry.get("channel"))
    if channel is None:
        return speaker
    return channel if speaker is None else f"{channel}, {speaker}"


def _spans(values: object, key: str) -> list[_Span]:
    """Timed entries of a ``words`` or ``utterances`` list (untimed or empty ones dropped, and
    those whose times are not numbers a subtitle can show: see :func:`timing_problem`)."""
    if not isinstance(values, list):
        return []
    out = []
    for value in values:
        if not isinstance(value, dict):
            continue
        # A time is a number within +-MAX_SECONDS (a negative one is shown from 0).
        start, end = number(value.get("start"), MAX_SECONDS), number(value.get("end"), MAX_SECONDS)
        text = value.get(key)
        if start is None or end is None or not isinstance(text, str):
            continue
        text = " ".join(text.split())
        if text:
            out.append(_Span(start, max(start, end), text, voice_label(value)))
    return out


def _numeric(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def timing_problem(record: dict[str, Any]) -> str | None:
    """Why a record's subtitles cannot be trusted (None when they can): a word or utterance
    time that is a number but infinite or beyond 99:59:59 (the cue builder drops such entries;
    the export skips the record rather than write subtitles with a hole)."""
    for name in ("utterances", "words"):
        values = record.get(name)
        if not isinstance(values, list):
            continue
        for n, value in enumerate(values, 1):
            if not isinstance(value, dict):
                continue
            for end in ("start", "end"):
                time = value.get(end)
                if _numeric(time) and number(time, MAX_SECONDS) is None:
                    shown = repr(time) if len(repr(time)) <= 24 else repr(time)[:20] + "..."
                    return f"{name[:-1]} {n} has {end} {shown} s, not a time in the audio"
    return None


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def wrap(text: str, first_indent: int = 0) -> list[str] | None:
    """``text`` on at most two lines of at most :data:`MAX_LINE` characters, or None.

    The break is at the space that balances the lines best. ``first_indent`` characters (a
    speaker label) are taken on the first line.
    """
    if first_indent + len(text) <= MAX_LINE:
        return [text]
    best: tuple[int, int] | None = None
    for i, char in enumerate(text):
        if char != " ":
            continue
        first, second = first_indent + i, len(text) - i - 1
        if first <= MAX_LINE and second <= MAX_LINE:
            score = abs(first - second)
            if best is None or score < best[0]:
                best = (score, i)
    if best is None:
        return None
    return [text[: best[1]], text[best[1] + 1 :]]


def _split_long(spans: list[_Span], room: int) -> list[_Span]:
    """Cut any token longer than ``room`` characters, sharing its time by length."""
    out: list[_Span] = []
    for span in spans:
        if len(span.text) <= room:
            out.append(span)
            continue
        pieces = [span.text[i : i + room] for i in range(0, len(span.text), room)]
        step = (span.end - span.start) / len(span.text)
        at = 0
        for piece in pieces:
            start = span.start + step * at
            at += len(piece)
            out.append(_Span(start, span.start + step * at, piece, span.speaker))
    return out


def _spread(text: str, start: float, end: float, speaker: str | None) -> list[_Span]:
    """A text's words with times shared out by length over ``start``..``end``."""
    words = text.split()
    total = sum(len(w) + 1 for w in words) or 1
    step = (end - start) / total
    out, at = [], 0
    for word in words:
        begin = start + step * at
        at += len(word) + 1
        out.append(_Span(begin, start + step * (at - 1), word, speaker))
    return out


def _chunk(tokens: list[_Span], indent: Callable[[str | None], int]) -> list[Cue]:
    """Greedy: add words to a cue until it would not fit, run too long, or a pause comes."""
    cues: list[Cue] = []
    current: list[_Span] = []

    def flush() -> None:
        if current:
            text = " ".join(t.text for t in current)
            speaker = current[0].speaker
            lines = wrap(text, indent(speaker)) or [text]
            # min/max, not first/last: words out of order must not make a cue run backwards
            start, end = min(t.start for t in current), max(t.end for t in current)
            cues.append(Cue(_ms(start), _ms(end), tuple(lines), speaker))
            current.clear()

    for token in tokens:
        if current:
            shown = " ".join(t.text for t in current)
            if (
                token.speaker != current[0].speaker
                or token.end - current[0].start > MAX_CUE_SECONDS
                or token.start - current[-1].end >= PAUSE_SECONDS
                or (shown[-1] in ".?!…" and len(shown) >= _SENTENCE_BREAK)
                or wrap(f"{shown} {token.text}", indent(token.speaker)) is None
            ):
                flush()
        current.append(token)
    flush()
    return cues


def build_cues(record: dict[str, Any], *, label_in_text: bool = True) -> list[Cue]:
    """Subtitle cues for an ok record.

    From its utterances (each one cue when it fits, else split at its words' times, or at
    times shared out by length); else from its words; else from its bare transcript spread
    over its duration.

    Args:
        record: a results record (``utterances``, ``words``, ``transcription``, ``duration``).
        label_in_text: the speaker label (``[Speaker 0] ``) is part of the cue's text, so it
            counts towards the first line's length (SRT); False when the format carries the
            speaker apart (WebVTT's ``<v Speaker 0>``).
    """
    utterances = _spans(record.get("utterances"), "text")
    words = _spans(record.get("words"), "word")

    def indent(speaker: str | None) -> int:
        return len(f"[{speaker}] ") if label_in_text and speaker else 0

    room = MAX_LINE - max([indent(s.speaker) for s in utterances + words] or [0])
    if utterances:
        cues: list[Cue] = []
        for u in utterances:
            lines = wrap(u.text, indent(u.speaker))
            if lines is not None and u.end - u.start <= MAX_CUE_SECONDS:
                cues.append(Cue(_ms(u.start), _ms(u.end), tuple(lines), u.speaker))
                continue
            inside = [
                w for w in words if w.start >= u.start - 0.05 and w.end <= u.end + 0.05
            ]  # fmt: skip
            texts = u.text.split()
            if inside and len(inside) == len(texts):  # the utterance's own spelling, words' times
                tokens = [
                    _Span(w.start, w.end, t, u.speaker) for w, t in zip(inside, texts, strict=True)
                ]
            elif inside:
                tokens = [_Span(w.start, w.end, w.text, u.speaker) for w in inside]
            else:
                tokens = _spread(u.text, u.start, u.end, u.speaker)
            cues.extend(_chunk(_split_long(tokens, room), indent))
        return _lasting(cues)
    if words:
        return _lasting(_chunk(_split_long(words, room), indent))
    text = record.get("transcription")
    if not isinstance(text, str) or not text.strip():
        return []
    duration = number(record.get("duration"), MAX_SECONDS)
    end = duration if duration is not None and duration > 0 else 0.4 * len(text.split())
    return _lasting(
        _chunk(_split_long(_spread(text, 0.0, min(end, MAX_SECONDS), None), room), indent)
    )


def _lasting(cues: list[Cue]) -> list[Cue]:
    """Cues as given, but one that would last no time (its words' ends at or before their
    starts) lasts :data:`_MIN_CUE_MS`, or until the next cue starts if that is sooner."""
    out = []
    for i, cue in enumerate(cues):
        if cue.end_ms <= cue.start_ms:
            end = cue.start_ms + _MIN_CUE_MS
            if i + 1 < len(cues) and cue.start_ms < cues[i + 1].start_ms:
                end = min(end, cues[i + 1].start_ms)
            cue = Cue(cue.start_ms, end, cue.lines, cue.speaker)
        out.append(cue)
    return out


# ------------------------------------------------------------------------------ renderers


def render_srt(cues: Iterable[Cue]) -> str:
    """SubRip text (``[Speaker 0] `` before a diarized cue's first line)."""
    subtitles = []
    for i, cue in enumerate(cues, 1):
        lines = list(cue.lines)
        if cue.speaker:
            lines[0] = f"[{cue.speaker}] {lines[0]}"
        subtitles.append(
            srt.Subtitle(
                i, timedelta(milliseconds=cue.start_ms), timedelta(milliseconds=cue.end_ms),
                "\n".join(lines),
            )
        )  # fmt: skip
    text: str = srt.compose(subtitles, reindex=False)
    return text


def _vtt_time(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_vtt(cues: Iterable[Cue]) -> str:
    """WebVTT text; a diarized cue starts with a voice span, ``<v Speaker 0>``."""
    out = ["WEBVTT", ""]
    for cue in cues:
        out.append(f"{_vtt_time(cue.start_ms)} --> {_vtt_time(cue.end_ms)}")
        lines = [_vtt_escape(line) for line in cue.lines]
        if cue.speaker:
            lines[0] = f"<v {_vtt_escape(cue.speaker)}>{lines[0]}"
        out.extend(lines)
        out.append("")
    return "\n".join(out)


def render_txt(record: dict[str, Any]) -> str:
    """The transcript as text; diarized, one ``[Speaker 0] …`` line per utterance."""
    utterances = _spans(record.get("utterances"), "text")
    if any(u.speaker for u in utterances):
        return "".join(
            (f"[{u.speaker}] {u.text}" if u.speaker else u.text) + "\n" for u in utterances
        )
    text = record.get("transcription")
    if isinstance(text, str):
        return text.strip() + "\n"
    return "".join(u.text + "\n" for u in utterances)


def render_json(record: dict[str, Any]) -> bytes:
    """The API's answer for the item, as it returned it (indented JSON)."""
    response = record.get("response")
    payload: dict[str, Any] = {}
    if isinstance(response, dict) and "status" in response:
        payload["status"] = response["status"]
    for name in (*HEAVY_FIELDS, "request_id"):
        if name in record:
            payload[name] = record[name]
    if isinstance(response, dict):
        payload.update((k, v) for k, v in response.items() if k not in payload)
    return orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n"


def render(record: dict[str, Any], fmt: str) -> bytes:
    """The export of one ok record in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "json":
        return render_json(record)
    if fmt == "txt":
        return render_txt(record).encode("utf-8")
    if fmt == "srt":
        return render_srt(build_cues(record, label_in_text=True)).encode("utf-8")
    if fmt == "vtt":
        return render_vtt(build_cues(record, label_in_text=False)).encode("utf-8")
    raise ValueError(f"unknown export format {fmt!r}")


# ------------------------------------------------------------------------------ paths (pure)


def _unsafe(char: str) -> bool:
    code = ord(char)
    return (
        code < 32  # control characters, NUL
        or 0x7F <= code < 0xA0
        or 0xD800 <= code < 0xE000  # lone surrogates: no file can be named with one
        or 0x202A <= code <= 0x202E  # bidi overrides, which can disguise a name
        or 0x2066 <= code <= 0x2069
    )


def _clean_component(part: str) -> str:
    """Control characters, lone surrogates and bidi overrides become ``_``."""
    return "".join("_" if _unsafe(c) else c for c in part)


def _fit(part: str, keep: str = "") -> str:
    """A component cut to the filesystem's name limit (unique: a digest replaces the cut)."""
    if len((part + keep).encode("utf-8")) <= _NAME_MAX:
        return part + keep
    tag = f"~{id_digest(part):016x}"
    room = _NAME_MAX - len((tag + keep).encode("utf-8"))
    cut = part.encode("utf-8")[:room].decode("utf-8", "ignore")
    return cut + tag + keep


def relative_path(item_id: str, ext: str, *, tag: str = "") -> str:
    """A safe relative path (``/``-separated) for an item's export file.

    The id's folders are kept; a URL becomes ``host/path`` (query and credentials dropped);
    ``\\`` separates too; empty and ``.`` components are dropped, ``..`` becomes ``__``,
    control characters become ``_``, and an audio extension is replaced by ``ext`` (any other
    is kept, and ``ext`` added; ``tag`` goes before it). Never absolute, never climbing out,
    never empty.
    """
    text = item_id
    scheme, sep, rest = text.partition("://")
    if sep and scheme.isascii() and scheme.isalnum():
        rest = rest.split("?", 1)[0].split("#", 1)[0]
        host, _, path = rest.partition("/")
        text = host.rpartition("@")[2].replace(":", "_") + "/" + path
    parts = []
    for raw in re.split(r"[/\\]", text):
        part = _clean_component(raw)
        if part in ("", "."):
            continue
        parts.append("__" if part == ".." else part)
    if not parts:
        parts = [f"item-{id_digest(item_id):016x}"]
    name = parts[-1]
    stem, dot, suffix = name.rpartition(".")
    if dot and stem and f".{suffix.lower()}" in AUDIO_EXTENSIONS:
        name = stem
    parts = [_fit(p) for p in parts[:-1]] + [_fit(name, f"{tag}.{ext}")]
    return "/".join(parts)


def beside_path(source: str, ext: str) -> str:
    """The export path next to a local audio file (never the audio file itself)."""
    stem, suffix = os.path.splitext(source)
    target = f"{stem}.{ext}" if suffix.lower() in AUDIO_EXTENSIONS else f"{source}.{ext}"
    return f"{source}.{ext}" if target == source else target


# ------------------------------------------------------------------------------ writing


@dataclass
class ExportSummary:
    """What an export did."""

    written: int = 0
    up_to_date: int = 0
    not_ok: int = 0  # final state failed: nothing to export
    no_transcript: int = 0  # submitted: the transcript went to a webhook (or ok without one)
    urls: int = 0  # --beside-audio: URL items have no folder to write beside
    errors: int = 0
    counts: ReadCounts = field(default_factory=ReadCounts)

    @property
    def skipped(self) -> int:
        return self.not_ok + self.no_transcript + self.urls

    def line(self) -> str:
        """The one-line summary."""
        why = [
            f"{n:,} {what}"
            for n, what in (
                (self.not_ok, "failed"), (self.no_transcript, "without transcript"),
                (self.urls, "URL items"),
            )
            if n
        ]  # fmt: skip
        text = (
            f"export: {self.written:,} written, {self.up_to_date:,} up to date, "
            f"{self.skipped:,} skipped" + (f" ({', '.join(why)})" if why else "")
        )
        if self.errors:
            text += f", {self.errors:,} error(s)"
        return text


class _Unrenderable(Exception):
    """This record's data cannot make a file of the format (the message says why)."""


def _rendered(record: dict[str, Any], fmt: str) -> bytes:
    """:func:`render`, or _Unrenderable: subtitles from times that are not in any audio, or
    data no renderer can take (one bad record must not stop the export of the others)."""
    if fmt in ("srt", "vtt"):
        problem = timing_problem(record)
        if problem is not None:
            raise _Unrenderable(problem)
    try:
        return render(record, fmt)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _Unrenderable(f"{type(exc).__name__}: {exc}") from None


class _Refused(Exception):
    """This item's file cannot be written where it should go (the message says why)."""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _safe_folder(root: str, parts: Sequence[str]) -> str:
    """Create ``root/parts...`` one level at a time, each checked to resolve inside root."""
    current = root
    for part in parts:
        current = os.path.join(current, part)
        try:
            os.mkdir(current, 0o777)
        except FileExistsError:
            pass
        except OSError as exc:
            raise _Refused(f"cannot create folder {current}: {exc.strerror}") from None
        real = os.path.realpath(current)
        if not _inside(real, root):
            raise _Refused(f"{current} leads outside {root} (a symlink); not written")
        if not os.path.isdir(real):
            raise _Refused(f"{current} is not a folder")
    return current


def write_if_changed(
    path: str, data: bytes, mode: int | None = None, *, through_links: bool = True
) -> bool:
    """Write ``data`` to ``path`` atomically (a temporary file beside it, renamed over it)
    unless it already holds exactly that. Returns True when written.

    ``mode``: the file's permission bits (default: an existing file's own, else 0o644).
    ``through_links``: a symlink at ``path`` (a file the user named) stays a link and its
    target is written, as a shell's ``>`` would; False (exports, whose names come from ids):
    a symlink is replaced, never followed, so no write can land outside the chosen folder.
    """
    if through_links:
        path = os.path.realpath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    existing = st is not None and stat.S_ISREG(st.st_mode)
    if mode is None:
        mode = stat.S_IMODE(st.st_mode) if st is not None and existing else 0o644
    if st is not None and existing and st.st_size == len(data):
        with open(path, "rb") as handle:
            if handle.read() == data:
                return False
    folder = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(prefix=".batchscribe-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), mode)
        # No fsync per file: an export is rebuilt from the results file at will, and a
        # rename over a file is atomic for readers either way.
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def export(
    paths: Sequence[str],
    fmt: str,
    *,
    out_dir: str | None = None,
    beside_audio: bool = False,
    on_problem: Callable[[str], None] | None = None,
) -> ExportSummary:
    """Write one ``fmt`` file per item whose final state is ok.

    Args:
        paths: results files, in order (each id's final record is exported).
        fmt: ``txt``, ``srt``, ``vtt`` or ``json``.
        out_dir: the folder to mirror the ids into (created if missing).
        beside_audio: write next to each local source file instead (URL items are skipped).
        on_problem: called with a one-line message for each item that could not be written.

    Raises ConfigError for a bad format or output folder, or unreadable results files.
    """
    root = _output_root(fmt, out_dir, beside_audio)
    mode = 0o666 & ~_umask()
    summary = ExportSummary()
    taken = DigestSet()
    for path, lineno, record in final_states(paths, counts=summary.counts):
        status = record.get("status")
        if status == "submitted":
            summary.no_transcript += 1  # the transcript went to the webhook
            continue
        if status != "ok":
            summary.not_ok += 1
            continue
        if not _has_transcript(record):
            summary.no_transcript += 1
            continue
        item_id = record["id"]
        try:
            if beside_audio:
                source = record.get("source")
                if not isinstance(source, str) or "://" in source or not os.path.isabs(source):
                    summary.urls += 1
                    continue
                target = _beside_target(source, fmt)
            else:
                rel = relative_path(item_id, fmt)
                if not taken.add(id_digest(rel)):  # two ids, one name: keep both
                    rel = relative_path(item_id, fmt, tag=f"~{id_digest(item_id):016x}")
                    taken.add(id_digest(rel))
                *folders, name = rel.split("/")
                target = os.path.join(_safe_folder(root, folders), name)
            data = _rendered(record, fmt)
            if write_if_changed(target, data, mode, through_links=False):
                summary.written += 1
            else:
                summary.up_to_date += 1
        except _Unrenderable as exc:
            summary.errors += 1
            if on_problem is not None:
                on_problem(f"{path}:{lineno}: {display_id(item_id)}: not exported: {exc}")
        except _Refused as exc:
            summary.errors += 1
            if on_problem is not None:
                on_problem(f"{display_id(item_id)}: {exc}")
        except OSError as exc:
            summary.errors += 1
            if on_problem is not None:
                on_problem(f"{display_id(item_id)}: cannot write: {exc.strerror or exc}")
    return summary


def _output_root(fmt: str, out_dir: str | None, beside_audio: bool) -> str:
    """The real path of the output folder (created if missing; "" with ``beside_audio``).

    Raises ConfigError for a bad format, both or neither of the two places, or a folder that
    cannot be made.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if beside_audio == (out_dir is not None):
        raise ConfigError("give either --dir OUT or --beside-audio")
    if out_dir is None:
        return ""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out_dir}: cannot create output folder: {exc.strerror}") from None
    root = os.path.realpath(out_dir)
    if not os.path.isdir(root):
        raise ConfigError(f"{out_dir}: not a folder")
    return root


def _beside_target(source: str, fmt: str) -> str:
    """The export path next to a local audio file whose folder exists (else _Refused)."""
    target = beside_path(source, fmt)
    if not os.path.isdir(os.path.dirname(target)):
        raise _Refused(f"folder {os.path.dirname(target)} does not exist")
    return target


def _has_transcript(record: dict[str, Any]) -> bool:
    """False for an ok record whose transcript went to a webhook (or that has none)."""
    response = record.get("response")
    if isinstance(response, dict) and response.get("status") == "processing":
        return False
    return any(isinstance(record.get(name), (str, list)) for name in HEAVY_FIELDS)
