"""The command line: argparse subcommands over the public API; exit codes; terminal concerns.

Exit codes (a contract; see README.md): 0 all ok, 1 some items failed or lines were invalid,
2 usage or configuration error, 3 aborted, 4 budget reached with work left, 75 results file busy,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
import traceback
from collections.abc import Sequence
from typing import BinaryIO

from batchscribe import __version__
from batchscribe.engine import RunOptions, run_batch
from batchscribe.errors import (
    EXIT_ABORTED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BatchscribeError,
    ConfigError,
)
from batchscribe.events import Subscriber
from batchscribe.plan import dry_run
from batchscribe.progress import Console, EventLog, Progress, Redactor
from batchscribe.pulse import BOOL_PARAMS, DEFAULT_ENDPOINT, PulseParams, coerce_param
from batchscribe.shard import Shard, ShardError, expand_path, parse_shard

KEY_ENV = "SMALLEST_API_KEY"
ENDPOINT_ENV = "BATCHSCRIBE_ENDPOINT"

EPILOG = """\
exit codes:
  0    all items ok
  1    some items failed (now or in an earlier run) or manifest lines were invalid
  2    usage or configuration error (bad flag, missing key, unreadable source)
  3    aborted: the run cannot go on (key rejected, wrong endpoint, disk full)
  4    budget reached with work left
  75   results file busy: another run holds it
  130  interrupted (SIGINT/SIGTERM); run again to resume
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``45s``, ``30m``, ``6h``, ``1h30m`` or ``2d``; ValueError otherwise."""
    text = text.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    total, number, seen = 0.0, "", False
    for char in text:
        if char.isdigit() or char == ".":
            number += char
        elif char in _UNITS and number:
            total += float(number) * _UNITS[char]
            number, seen = "", True
        else:
            raise ValueError(f"not a duration: {text!r} (try 90s, 30m, 6h or 1h30m)")
    if number or not seen:
        raise ValueError(f"not a duration: {text!r} (try 90s, 30m, 6h or 1h30m)")
    return total


def _duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _price(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def _param(name: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> object:
        try:
            return coerce_param(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``batchscribe`` argument parser (its help texts are the README's usage blocks)."""
    parser = argparse.ArgumentParser(
        prog="batchscribe",
        description="Bulk-transcribe audio archives through the Pulse speech-to-text API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"batchscribe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_run(sub)
    _add_emulate(sub)
    return parser


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run",
        help="transcribe every item of manifests or directories into a results file",
        description=(
            "Transcribe every item of the SOURCEs into RESULTS (JSONL). Running the same "
            "command again skips what is done: a crash, a kill or a nightly cron job just "
            "continues."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "sources", nargs="+", metavar="SOURCE",
        help="a JSONL, CSV or text-list manifest, an archive directory, or - for stdin",
    )  # fmt: skip
    run.add_argument(
        "--out", "-o", required=True, metavar="RESULTS",
        help="results JSONL file; {shard} and {shards} expand to the --shard index and count",
    )  # fmt: skip
    conn = run.add_argument_group("connection")
    conn.add_argument(
        "--endpoint", default=os.environ.get(ENDPOINT_ENV, DEFAULT_ENDPOINT), metavar="URL",
        help=f"Pulse URL (default: {DEFAULT_ENDPOINT}; env {ENDPOINT_ENV})",
    )  # fmt: skip
    conn.add_argument(
        "--api-key-file", metavar="PATH",
        help=f"read the API key from this file (default: env {KEY_ENV})",
    )  # fmt: skip
    conn.add_argument(
        "--emulate", action="store_true",
        help="run against the bundled Pulse emulator on loopback (offline, no key needed)",
    )  # fmt: skip
    pulse = run.add_argument_group("Pulse parameters (manifest fields override them per item)")
    pulse.add_argument("--model", type=_param("model"), default="pulse", help="pulse | pulse-pro")
    pulse.add_argument(
        "--language", type=_param("language"), default="en",
        help="en (default), hi, de, es, ..., or multi-eu | multi-asian | multi-indic",
    )  # fmt: skip
    pulse.add_argument(
        "--word-timestamps", action=argparse.BooleanOptionalAction, default=True,
        help="word timings in results (default: on)",
    )  # fmt: skip
    for name in BOOL_PARAMS:
        if name != "word_timestamps":
            flag = "--" + name.replace("_", "-")
            pulse.add_argument(flag, action="store_true", help=f"send {name}=true")
    pace = run.add_argument_group("pace and retries")
    pace.add_argument(
        "--concurrency", "-j", type=_positive_int, default=8, metavar="N",
        help="requests in flight never exceed N (default: 8)",
    )  # fmt: skip
    pace.add_argument(
        "--max-attempts", type=_positive_int, default=6, metavar="N",
        help="attempts per item, the first included (default: 6)",
    )  # fmt: skip
    pace.add_argument(
        "--timeout", type=_seconds, default=900.0, metavar="S",
        help="seconds per request, upload and response (default: 900)",
    )  # fmt: skip
    pace.add_argument(
        "--max-retry-wait", type=_seconds, default=300.0, metavar="S",
        help="a server delay longer than this fails the item instead of waiting (default: 300)",
    )  # fmt: skip
    pace.add_argument(
        "--retry-failed", action="store_true",
        help="also re-attempt items whose last record is failed",
    )  # fmt: skip
    jobs = run.add_argument_group("nightly jobs and budgets")
    jobs.add_argument(
        "--rescan-changed", action="store_true",
        help="re-transcribe ok files whose size or mtime changed since their record",
    )  # fmt: skip
    jobs.add_argument(
        "--max-items", type=int, metavar="N",
        help="send at most N items, then stop (exit 4 when work is left)",
    )  # fmt: skip
    jobs.add_argument(
        "--max-runtime", type=_duration, metavar="DURATION",
        help="stop taking items after DURATION (90s, 30m, 6h, 1h30m), finish those in flight "
        "(exit 4 when work is left)",
    )  # fmt: skip
    jobs.add_argument(
        "--dry-run", action="store_true",
        help="scan the sources and print what would be done: send nothing, write nothing",
    )  # fmt: skip
    jobs.add_argument(
        "--price-per-hour", type=_price, metavar="X",
        help="with --dry-run: the price of one audio hour, for a cost estimate",
    )  # fmt: skip
    out = run.add_argument_group("output")
    out.add_argument(
        "--no-progress", action="store_true",
        help="no progress bar or periodic progress lines",
    )  # fmt: skip
    out.add_argument(
        "--log-file", metavar="PATH",
        help="append a log of the run (bad lines, retries, failures, progress, summary) to PATH",
    )  # fmt: skip
    out.add_argument(
        "--log-format", choices=("text", "json"), default="text",
        help="log line format for --log-file (default: text); json: one object per line",
    )  # fmt: skip
    fleet = run.add_argument_group("beyond one machine")
    fleet.add_argument(
        "--shard", metavar="K/N",
        help="take only shard K of N (0 <= K < N; by a stable hash of the item id); "
        "auto/N or auto: K (and N) from JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID, "
        "AWS_BATCH_JOB_ARRAY_INDEX or PARALLEL_SEQ",
    )  # fmt: skip
    run.set_defaults(handler=_cmd_run)


def _add_emulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from batchscribe import emulator

    parser = sub.add_parser(
        "emulate",
        help="serve the bundled Pulse emulator (both endpoint paths) until stopped",
        description=(
            "Serve a faithful Pulse emulator on loopback: auth, parameter validation, "
            "transcripts, faults, rate limits and GET /_emulator/stats. Point "
            "`batchscribe run --endpoint URL` (or your own client) at the URL it prints."
        ),
    )
    emulator.add_arguments(parser)
    parser.set_defaults(handler=_cmd_emulate)


def read_api_key(path: str | None, console: Console) -> str | None:
    """The API key from ``--api-key-file`` or the environment (None when neither has one)."""
    if path is None:
        return os.environ.get(KEY_ENV) or None
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            key = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read API key file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: API key file is not UTF-8 text") from None
    if not key:
        raise ConfigError(f"{path}: API key file is empty")
    if st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        console.line(
            f"batchscribe: warning: {path} is readable by other users; "
            f"restrict it with: chmod 600 {path}"
        )
    return key


def _apply_shard(ns: argparse.Namespace, console: Console) -> Shard | None:
    """The ``--shard`` of this run; fills ``{shard}`` in ``--out`` and ``--log-file``."""
    try:
        shard = parse_shard(ns.shard, os.environ) if ns.shard is not None else None
        ns.out = expand_path(ns.out, shard)
        if ns.log_file:
            ns.log_file = expand_path(ns.log_file, shard, option="--log-file")
    except ShardError as exc:
        raise ConfigError(str(exc)) from None
    if shard is not None:
        origin = f" ({shard.origin})" if shard.origin else ""
        console.line(
            f"batchscribe: shard {shard.index} of {shard.count}{origin}: results in {ns.out}"
        )
    return shard


def _cmd_run(ns: argparse.Namespace, console: Console) -> int:
    stdin = sys.stdin.buffer if "-" in ns.sources else None
    if ns.max_items is not None and ns.max_items < 0:
        raise ConfigError("--max-items must not be negative")
    shard = _apply_shard(ns, console)
    if ns.dry_run:
        return _dry_run(ns, console, stdin, shard)
    if ns.price_per_hour is not None:
        raise ConfigError("--price-per-hour goes with --dry-run")
    log = _open_log(ns, console)
    try:
        key = None if ns.emulate else read_api_key(ns.api_key_file, console)
        console.redact.add(key)
        flags = {name: getattr(ns, name) for name in BOOL_PARAMS}
        options = RunOptions(
            sources=ns.sources,
            out=ns.out,
            api_key=key,
            endpoint=ns.endpoint,
            params=PulseParams(model=ns.model, language=ns.language, **flags),
            concurrency=ns.concurrency,
            max_attempts=ns.max_attempts,
            timeout=ns.timeout,
            max_retry_wait=ns.max_retry_wait,
            retry_failed=ns.retry_failed,
            emulate=ns.emulate,
            rescan_changed=ns.rescan_changed,
            max_items=ns.max_items,
            max_runtime=ns.max_runtime,
            shard=shard,
        )
        options.validate()
        progress = Progress(console, bar=False if ns.no_progress else None)
        if ns.no_progress:
            progress.interval = float("inf")
        subscribers: list[Subscriber] = [progress]
        if log is not None:
            subscribers.append(log)
        summary = run_batch(options, subscribers=subscribers, stdin=stdin)
    except BatchscribeError as exc:
        if log is not None:
            log.log("error", "error", str(exc), exit_code=exc.exit_code)
        raise
    finally:
        if log is not None:
            log.stream.close()
    out = Console(sys.stdout, console.redact)
    for line in summary.lines():
        out.line(line)
    return summary.exit_code


def _open_log(ns: argparse.Namespace, console: Console) -> EventLog | None:
    if not ns.log_file:
        return None
    try:
        stream = open(ns.log_file, "a", encoding="utf-8")  # noqa: SIM115 (closed by _cmd_run)
    except OSError as exc:
        raise ConfigError(f"{ns.log_file}: cannot open log file: {exc.strerror}") from None
    return EventLog(stream, console.redact, fmt=ns.log_format)


def _dry_run(
    ns: argparse.Namespace, console: Console, stdin: BinaryIO | None, shard: Shard | None
) -> int:
    plan = dry_run(
        ns.sources, ns.out, retry_failed=ns.retry_failed, rescan_changed=ns.rescan_changed,
        stdin=stdin, shard=shard,
    )  # fmt: skip
    for problem in plan.problems:
        console.line(problem)
    out = Console(sys.stdout, console.redact)
    for line in plan.lines(concurrency=ns.concurrency, price_per_hour=ns.price_per_hour):
        out.line(line)
    return EXIT_FAILED if plan.invalid else EXIT_OK


def _cmd_emulate(ns: argparse.Namespace, console: Console) -> int:
    from batchscribe import emulator

    config = emulator.config_from_args(ns)

    def ready(url: str) -> None:
        out = Console(sys.stdout, console.redact)
        out.line(f"Pulse emulator listening on {url}")
        out.line(f"  legacy endpoint:  {url}/api/v1/pulse/get_text")
        out.line(f"  current endpoint: {url}/waves/v1/stt/")
        out.line(f"  stats:            {url}/_emulator/stats")
        out.line("Press Ctrl-C to stop.")

    try:
        asyncio.run(emulator.serve_forever(config, ns.host, ns.port, on_ready=ready))
    except KeyboardInterrupt:
        return 0
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``batchscribe`` command; returns the exit code."""
    redact = Redactor([os.environ.get(KEY_ENV)])
    console = Console(sys.stderr, redact)
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        code: int = ns.handler(ns, console)
        return code
    except BatchscribeError as exc:
        console.line(f"batchscribe: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        console.line("batchscribe: interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: say so, without leaking anything
        if os.environ.get("BATCHSCRIBE_DEBUG"):
            console.line("".join(traceback.format_exception(exc)))
        console.line(
            f"batchscribe: internal error: {type(exc).__name__}: {exc} "
            "(set BATCHSCRIBE_DEBUG=1 for a traceback)"
        )
        return EXIT_ABORTED
