"""What a run is asked to do: :class:`RunOptions`, checked in one place (``validate``)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from yarl import URL

from batchscribe.errors import ConfigError
from batchscribe.pulse import (
    DEFAULT_ENDPOINT,
    PulseParams,
    check_combination,
    clean_api_key,
    endpoint_problem,
    public_url,
)
from batchscribe.shard import Shard

if TYPE_CHECKING:
    from batchscribe.audio.probe import PrepPolicy

MAX_CONCURRENCY = 10_000  # requests in flight; far above any API key's limit


@dataclass(frozen=True)
class RunOptions:
    """Everything a run needs. The CLI builds one from its flags; Python callers may too.

    Args:
        sources: manifests (JSONL, CSV, text list), directories, or ``-`` for stdin.
        out: the results JSONL file (created if missing; resumed if present).
        api_key: the Pulse API key (not needed with ``emulate``).
        endpoint: the Pulse URL (either documented endpoint shape).
        params: Pulse parameters for every item (manifest fields override them per item).
        concurrency: requests in flight never exceed this (with ``adaptive``: the ceiling).
        adaptive: ``--concurrency auto``: learn the in-flight limit (and a start rate) from the
            server's answers, growing while they are healthy and cutting on 429/503.
        rate: at most this many request starts per second (``--rate``).
        max_attempts: attempts per item, the first included.
        timeout: seconds per request (connect, upload and response).
        max_retry_wait: a server-requested delay longer than this fails the item.
        retry_failed: also re-attempt items whose last record is ``failed``.
        emulate: run against the bundled emulator, in-process on a free loopback port.
        emulate_plan: the emulator's plan (``unlimited`` or ``standard``: 25 requests/min per
            model, no delay header), with ``emulate``.
        grace: seconds requests in flight may take to finish after a stop request.
        sync_interval: seconds between fsyncs of the results file.
        rescan_changed: re-send ok items whose file's size or mtime changed since.
        max_items: send at most this many items, then stop (exit 4 if work is left).
        max_runtime: stop taking items after this many seconds (exit 4 if work is left).
        shard: take only the items of this shard (``--shard K/N``); bad manifest lines are
            reported by shard 0 only.
        rate_store: ``redis://HOST[:PORT][/DB]``: every process using this Redis, API key,
            endpoint and model holds one learned rate and one start schedule, under ``rate``
            for all of them together when given (``--rate-store``).
        via_client: pass URLs and ``s3://``/``gs://`` objects through this machine even for
            ``model=pulse``, with the audio stage of local files (default: send them as URL
            input and presigned URLs; ``--via-client``; always so for other models).
        max_chunk: seconds of audio per request at most; longer local files are cut into
            chunks at silences (``--max-chunk``).
        transcode: ``auto`` re-encodes what is bigger than needed (16 kHz mono FLAC),
            ``flac``/``opus`` re-encode every local file, ``off`` sends originals and fails
            what the service cannot take (``--transcode``).
        opus_bitrate: bits per second of Opus chunks (``--opus-bitrate``).
        channels: ``mix`` downmixes to mono; ``split`` transcribes each channel apart and
            labels every word with its ``channel`` (``--channels``).
        prep_workers: processes that prepare audio (None: the CPU count; ``--prep-workers``).
        pack: send short local files with equal parameters together, several to a request,
            and split the answer back into one record each (``--pack``).
        pack_max_item: seconds: only files shorter than this are packed (``--pack-max-item``).
        pack_seconds: seconds of audio per packed request at most, gaps included
            (``--pack-seconds``).
        max_cost: stop taking items once the audio answered plus the audio in flight would
            cost more than this at ``price_per_hour`` (exit 4, resumable; ``--max-cost``).
        price_per_hour: the price of one audio hour (None: the model's list price,
            :func:`batchscribe.spend.default_price`; ``--price-per-hour``).
        max_audio_hours: the same cap on audio hours (``--max-audio-hours``).
        metrics_file: write Prometheus text format here every 30 s and at the end
            (``--metrics-file``).
        job_name: the ``job`` label of the metrics (None: the results file's name without its
            extension; ``--job-name``).
        status_file: keep ``RESULTS.status.json`` up to date for ``batchscribe status``.
        command: the command line shown by ``batchscribe status`` (stored without secrets).
    """

    sources: Sequence[str]
    out: str
    api_key: str | None = None
    endpoint: str = DEFAULT_ENDPOINT
    params: PulseParams = field(default_factory=PulseParams)
    concurrency: int = 8
    adaptive: bool = False
    rate: float | None = None
    max_attempts: int = 6
    timeout: float = 900.0
    max_retry_wait: float = 300.0
    retry_failed: bool = False
    emulate: bool = False
    emulate_plan: str = "unlimited"
    grace: float = 10.0
    sync_interval: float = 1.0
    rescan_changed: bool = False
    max_items: int | None = None
    max_runtime: float | None = None
    shard: Shard | None = None
    rate_store: str | None = None
    via_client: bool = False
    max_chunk: float = 600.0
    transcode: Literal["auto", "flac", "opus", "off"] = "auto"
    opus_bitrate: int = 32000
    channels: Literal["mix", "split"] = "mix"
    prep_workers: int | None = None
    pack: bool = False
    pack_max_item: float = 120.0
    pack_seconds: float = 590.0
    max_cost: float | None = None
    price_per_hour: float | None = None
    max_audio_hours: float | None = None
    metrics_file: str | None = None
    job_name: str | None = None
    status_file: bool = True
    command: Sequence[str] = ()

    @property
    def prep_policy(self) -> PrepPolicy:
        """How local files are prepared (the audio stage's flags)."""
        from batchscribe.audio.probe import PrepPolicy  # deferred: a plain run imports no audio

        return PrepPolicy(
            max_chunk=self.max_chunk,
            transcode=self.transcode,
            channels=self.channels,
            opus_bitrate=self.opus_bitrate,
        )

    def validate(self, *, need_key: bool = True) -> None:
        """Raise ConfigError for options that cannot work, before anything is opened;
        ``need_key``: False for a dry run (it sends nothing, so needs no API key)."""
        if not self.sources:
            raise ConfigError("no SOURCE given: name a manifest, a directory or - for stdin")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            # (a worker task each: a billion would exhaust memory before the first request)
            flag = "--max-concurrency" if self.adaptive else "--concurrency"
            raise ConfigError(f"{flag} must be from 1 to {MAX_CONCURRENCY:,}")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError("--rate must be a positive number of requests per second")
        if self.rate_store is not None:
            from batchscribe.ratestore import check_url

            check_url(self.rate_store)
        if self.max_attempts < 1:
            raise ConfigError("--max-attempts must be at least 1")
        if not 0 < self.timeout < math.inf:
            raise ConfigError("--timeout must be a positive, finite number of seconds")
        if not 0 <= self.max_retry_wait < math.inf:
            raise ConfigError("--max-retry-wait must be a finite number of seconds >= 0")
        problem = max_items_problem(self.max_items)
        if problem:
            raise ConfigError(f"--max-items {problem}")
        if self.max_runtime is not None and not 0 < self.max_runtime < math.inf:
            raise ConfigError("--max-runtime must be positive and finite")
        if not self.emulate:
            _check_endpoint(self.endpoint)
        if not self.emulate and need_key:
            if not self.api_key:
                raise ConfigError(
                    "no API key: set SMALLEST_API_KEY (or pass --api-key-file PATH); "
                    "use --emulate to try batchscribe without one"
                )
            _check_key(self.api_key)
        problem = check_combination(self.params, url_input=False)
        if problem:
            raise ConfigError(problem)
        problem = audio_problem(self)
        if problem:
            raise ConfigError(problem)
        _check_unattended(self)


#: Bounds of the audio stage's values: a chunk from 10 s (shorter cuts would be mostly
#: overlap) to 24 h; Opus from 6 kb/s to 510 kb/s (libopus's range).
MIN_CHUNK, MAX_CHUNK = 10.0, 86400.0
MIN_OPUS, MAX_OPUS = 6000, 510000
MAX_PREP_WORKERS = 256


def audio_problem(options: RunOptions) -> str | None:
    """Why the audio stage's options cannot work (one line naming the flag), or None."""
    if not MIN_CHUNK <= options.max_chunk <= MAX_CHUNK:
        return f"--max-chunk must be from {MIN_CHUNK:g} s to {MAX_CHUNK:g} s (24h)"
    if options.transcode not in ("auto", "flac", "opus", "off"):
        return f"--transcode must be auto, flac, opus or off, not {options.transcode!r}"
    if options.channels not in ("mix", "split"):
        return f"--channels must be mix or split, not {options.channels!r}"
    if not MIN_OPUS <= options.opus_bitrate <= MAX_OPUS:
        return "--opus-bitrate must be from 6k to 510k bits per second"
    if options.prep_workers is not None and not 1 <= options.prep_workers <= MAX_PREP_WORKERS:
        return f"--prep-workers must be from 1 to {MAX_PREP_WORKERS}"
    return pack_problem(options)


#: Bounds of the packing values: a packed item from 1 s, a pack from 30 s to the session.
MIN_PACK_ITEM, MIN_PACK, MAX_PACK = 1.0, 30.0, 600.0


def pack_problem(options: RunOptions) -> str | None:
    """Why ``--pack``'s values cannot work (one line naming the flag), or None."""
    if not MIN_PACK <= options.pack_seconds <= MAX_PACK:
        return f"--pack-seconds must be from {MIN_PACK:g} s to {MAX_PACK:g} s (the session)"
    if not MIN_PACK_ITEM <= options.pack_max_item <= MAX_PACK:
        # (above --pack-seconds it is that: a longer item could never share a pack)
        return f"--pack-max-item must be from {MIN_PACK_ITEM:g} s to {MAX_PACK:g} s"
    return None


def _check_unattended(options: RunOptions) -> None:
    """ConfigError for a spend cap or a metrics file that cannot work (one line naming the
    flag), before anything is opened."""
    from batchscribe.run.unattended import SpendGate

    SpendGate.of(options)  # its SpendCap checks the values; the price is the model's or given
    if options.price_per_hour is not None and not 0 <= options.price_per_hour < math.inf:
        raise ConfigError("--price-per-hour must be a finite number >= 0")
    path = options.metrics_file
    if path is not None:
        folder = os.path.dirname(path) or "."
        if not path or path.endswith(os.sep) or os.path.isdir(path):
            raise ConfigError(f"--metrics-file {path!r}: name a file, not a folder")
        if not os.path.isdir(folder):
            raise ConfigError(f"--metrics-file {path!r}: no such folder {folder!r}")


def max_items_problem(max_items: int | None) -> str | None:
    """Why ``max_items`` cannot be a budget, or None: the one rule, read by :meth:`validate`
    and by the ``--max-items`` flag (a usage error like every other count)."""
    if max_items is not None and max_items < 0:
        return "must not be negative"
    return None


def _check_endpoint(endpoint: str) -> None:
    """ConfigError unless ``endpoint`` is an http(s) URL with a host (and a valid port) and
    without credentials; the message shows it without its query (it may hold a token)."""
    shown = public_url(endpoint)
    if not endpoint.startswith(("http://", "https://")) or not endpoint.isprintable():
        raise ConfigError(f"--endpoint must be an http(s) URL, not {shown!r}")
    try:
        parts = URL(endpoint)
        parts.port  # noqa: B018 (parsed lazily: an out-of-range port raises here)
    except ValueError as exc:
        raise ConfigError(f"--endpoint {shown!r} is not a valid URL: {exc}") from None
    if parts.user is not None or parts.password is not None:
        raise ConfigError(
            f"--endpoint {shown!r} must not carry a user name or password (user:password@): "
            "the API key goes in SMALLEST_API_KEY or --api-key-file"
        )
    if not parts.host:
        raise ConfigError(f"--endpoint {shown!r} has no host name")
    problem = endpoint_problem(endpoint)
    if problem:
        raise ConfigError(problem)


def _check_key(key: str) -> None:
    """ConfigError unless ``key`` can go in a header as it is (the CLI cleans it first)."""
    try:
        clean = clean_api_key(key)
    except ValueError as exc:
        raise ConfigError(f"the API key {exc}") from None
    if clean != key:
        raise ConfigError("the API key has surrounding whitespace or a BOM: strip it")
