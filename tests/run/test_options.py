"""RunOptions (batchscribe.run.options): the audio stage's options and their one check."""

from __future__ import annotations

import pytest

from batchscribe.audio.probe import PrepPolicy
from batchscribe.errors import ConfigError
from batchscribe.run.options import RunOptions


def _options(**audio: object) -> RunOptions:
    return RunOptions(sources=["m.jsonl"], out="r.jsonl", emulate=True, **audio)  # type: ignore[arg-type]


def test_the_prep_policy_carries_the_audio_flags() -> None:
    """prep_policy hands the audio stage exactly the run's --max-chunk/--transcode/... values."""
    options = _options(max_chunk=300.0, transcode="opus", opus_bitrate=24000, channels="split")
    assert options.prep_policy == PrepPolicy(
        max_chunk=300.0, transcode="opus", channels="split", opus_bitrate=24000
    )
    assert _options().prep_policy == PrepPolicy()


@pytest.mark.parametrize(
    ("audio", "flag"),
    [
        ({"max_chunk": 1.0}, "--max-chunk"),
        ({"max_chunk": float("nan")}, "--max-chunk"),
        ({"transcode": "mp3"}, "--transcode"),
        ({"channels": "left"}, "--channels"),
        ({"opus_bitrate": 100}, "--opus-bitrate"),
        ({"prep_workers": 0}, "--prep-workers"),
    ],
)
def test_a_bad_audio_option_is_one_line_naming_its_flag(
    audio: dict[str, object], flag: str
) -> None:
    """Each audio option out of range is refused by validate() with one line naming the flag."""
    with pytest.raises(ConfigError, match=flag) as caught:
        _options(**audio).validate()
    assert "\n" not in str(caught.value)
