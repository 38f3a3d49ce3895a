"""build_pack, the pool worker's job of the packing stage: clips decoded, joined and written
as one FLAC; a clip that cannot be decoded or is longer than its headers said is set apart."""

from __future__ import annotations

from pathlib import Path

import av
from audio_fixtures import write_wav

from batchscribe.audio.pack import GAP_S, RATE
from batchscribe.run.packing import build_pack


def test_build_pack_sets_apart_undecodable_and_too_long_clips(tmp_path: Path) -> None:
    """Clips that decode go in the FLAC at their spans (a gap apart); a junk file is refused
    with its reason (it fails alone, no request); one longer than the limit goes alone."""
    good = [
        write_wav(tmp_path / f"g{i}.wav", [[(0.2, 1.0, 440.0)]], 2.0 + i, 8000) for i in range(2)
    ]
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    long = write_wav(tmp_path / "long.wav", [[(0.2, 1.0, 440.0)]], 12.0, 16000)
    paths = [str(good[0]), str(junk), str(long), str(good[1])]
    built = build_pack(paths, 10.0, GAP_S, str(tmp_path))
    assert built.packed == (0, 3) and built.alone == (2,)
    assert set(built.refused) == {1} and built.refused[1].cause == "invalid"
    assert built.refused[1].error.startswith("unreadable audio")
    assert built.durations == (2.0, 3.0)
    (first, end0), (second, end1) = built.spans
    assert (first, end0) == (0, 2 * RATE) and second >= end0 + GAP_S * RATE
    with av.open(built.path) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
    assert samples == end1 and Path(built.path).stat().st_size == built.size
