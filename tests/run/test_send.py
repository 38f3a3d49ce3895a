"""One request (batchscribe.run.send): how a file's body is read."""

from __future__ import annotations

from pathlib import Path

from batchscribe.run.send import SmallReads


async def test_small_reads_leave_the_event_loop_while_storage_is_slow(tmp_path: Path) -> None:
    """Small files are read inline while reads are quick, in a thread while their average is
    slow (a network mount), and inline again once it recovers; the bytes are the same."""
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF" + bytes(100))
    reads = SmallReads()
    assert reads.inline
    assert await reads.read(str(audio), 104) == audio.read_bytes()
    reads.note(0.05)  # one read of 50 ms
    assert not reads.inline
    assert await reads.read(str(audio), 104) == audio.read_bytes()  # (in a thread)
    for _ in range(60):
        reads.note(0.00001)
    assert reads.inline
