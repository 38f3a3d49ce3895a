"""Hypothesis strategies for damaged results files: real records, then cuts, bit flips, splices.

A results file in the writer's layout is built from records shaped like the engine's, then
damaged where a disk, an editor or a bad copy would: bytes cut out, bits flipped, a piece of the
file spliced in elsewhere, newlines lost or added. The readers' fast paths must read what the
line-at-a-time reference reads from every such file.
"""

from __future__ import annotations

import orjson
from hypothesis import strategies as st

_IDS = st.one_of(
    st.sampled_from(["f00.wav", "f01.wav", "f02.wav", 'q"x', "back\\slash", "caf\u00e9", "\u65e5"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=4),
)


@st.composite
def record_line(draw: st.DrawFn) -> bytes:
    """One line as the engine writes it (``id`` and ``status`` first), or a run record."""
    if draw(st.integers(0, 9)) == 0:
        return orjson.dumps({"event": "run", "run_id": "r1", "ok": 1}) + b"\n"
    status = draw(st.sampled_from(["ok", "ok", "failed", "submitted", "odd"]))
    doc = {
        "id": draw(_IDS), "status": status, "source": "/srv/a/f.wav", "size": 126930,
        "mtime": 1764028140.0, "attempts": 1, "http_status": 200, "error": None,
        "cause": None, "finished_at": "2026-11-25T01:02:03.456Z", "run": "3f2a9c1b7d20",
        "transcription": draw(st.sampled_from(["", "The weather.", "caf\u00e9 \u65e5", "a\tb"])),
        "words": [{"start": 0.48, "end": 0.9, "word": "The", "confidence": 0.98, "speaker": 0}],
        "utterances": [], "duration": draw(st.sampled_from([3.9, 1e-7, 1e20, 0])),
        "request_id": None, "response": {"status": "success", "x": [[{"y": True}]]},
    }  # fmt: skip
    return orjson.dumps(doc) + b"\n"


@st.composite
def damaged_results(draw: st.DrawFn) -> bytes:
    """A results file of real lines with up to four kinds of damage anywhere in it."""
    data = bytearray(b"".join(draw(st.lists(record_line(), min_size=1, max_size=12))))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        kind = draw(st.sampled_from(["cut", "flip", "splice", "newline", "unnewline", "tail"]))
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "cut":  # bytes gone (a line cut short, or two lines run together)
            del data[pos : pos + draw(st.integers(1, 60))]
        elif kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "splice":  # a piece of the file copied in elsewhere
            start = draw(st.integers(0, len(data) - 1))
            data[pos:pos] = data[start : start + draw(st.integers(1, 200))]
        elif kind == "newline":
            data[pos:pos] = b"\n"
        elif kind == "unnewline":
            at = data.find(b"\n", pos)
            if at >= 0:
                del data[at]
        else:  # the line cut to its first bytes, newline kept (the case)
            end = data.find(b"\n", pos)
            if end > pos:
                del data[pos + draw(st.integers(0, end - pos)) : end]
    return bytes(data)
