"""The Pulse emulator: a local aiohttp server that models the service as documented.

``config`` holds the behaviour (fault profiles, plans, the ``batchscribe emulate`` flags),
``limits`` the request-rate limiters, ``transcripts`` what the emulator hears (the audio decoded,
speech found by energy, words placed on it), ``requests`` what a request asks (parameters,
body), ``answers`` the answer shapes per endpoint and model, ``stats`` what the server saw,
``server`` the application and the ways to run it.
The names below are the emulator's public surface, used by the tests and the benchmarks.
"""

from __future__ import annotations

from batchscribe.emulator.config import (
    LEGACY_PATHS,
    PATHS,
    PLANS,
    PROFILES,
    UNIFIED_PATH,
    EmulatorConfig,
    FaultRates,
    Plan,
    add_arguments,
    config_from_args,
)
from batchscribe.emulator.server import (
    DELAY_HEADER_KINDS,
    RATE_LIMIT_MESSAGE,
    EmulatorThread,
    RunningEmulator,
    create_app,
    serve_forever,
    start_emulator,
)
from batchscribe.emulator.transcripts import (
    AudioError,
    Region,
    Signal,
    canonical_url,
    content_key,
    transcribe,
    transcript_for,
    transcript_for_url,
)

__all__ = [
    "DELAY_HEADER_KINDS",
    "LEGACY_PATHS",
    "PATHS",
    "PLANS",
    "PROFILES",
    "RATE_LIMIT_MESSAGE",
    "UNIFIED_PATH",
    "AudioError",
    "EmulatorConfig",
    "EmulatorThread",
    "FaultRates",
    "Plan",
    "Region",
    "RunningEmulator",
    "Signal",
    "add_arguments",
    "canonical_url",
    "config_from_args",
    "content_key",
    "create_app",
    "serve_forever",
    "start_emulator",
    "transcribe",
    "transcript_for",
    "transcript_for_url",
]
