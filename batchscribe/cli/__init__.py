"""The command line: argparse subcommands over the public API; exit codes; terminal concerns.

Exit codes (a contract; see README.md): 0 all ok, 1 some items failed or lines were invalid,
2 usage or configuration error, 3 aborted, 4 budget reached with work left, 75 results file busy,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import stat
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import BinaryIO

from batchscribe import __version__
from batchscribe.console import Console, EventLog, Progress, Redactor, TerminalStream
from batchscribe.errors import (
    EXIT_ABORTED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BatchscribeError,
    ConfigError,
)
from batchscribe.events import Subscriber
from batchscribe.pulse import (
    BOOL_PARAMS,
    DEFAULT_ENDPOINT,
    LEGACY_ENDPOINT,
    PulseParams,
    check_combination,
    clean_api_key,
    coerce_param,
    endpoint_problem,
    url_secrets,
)
from batchscribe.results import ReadCounts
from batchscribe.run.dry_run import dry_run
from batchscribe.run.engine import run_batch
from batchscribe.run.options import RunOptions, max_items_problem
from batchscribe.shard import Shard, expand_path, parse_shard

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
  130  interrupted (SIGINT/SIGTERM/SIGHUP); run again to resume
"""


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def _whole(text: str, least: int) -> int:
    value = _integer(text)
    if value < least:
        need = "must not be negative" if least == 0 else f"must be at least {least}"
        raise argparse.ArgumentTypeError(f"{need}, not {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole(text, 1)


def _count(text: str) -> int:
    """A whole number that may be 0 (``--runs``), refused like the others."""
    return _whole(text, 0)


def _max_items(text: str) -> int:
    """``--max-items``: refused, like the other counts, by the rule RunOptions checks."""
    value = _integer(text)
    problem = max_items_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}, not {value}")
    return value


def _finite(text: str, expected: str) -> float:
    """A float from ``text``; NaN and infinities are refused (a comparison with NaN is always
    false, so a NaN would slip past every range check)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}")
    return value


def _concurrency(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    return _positive_int(text)


_RATE_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_rate(text: str) -> float:
    """Requests per second from ``25/min``, ``0.5/s``, ``1000/h`` or a bare number (per
    second, as ``--rate`` always read it); ValueError otherwise."""
    number, _, unit = text.strip().lower().partition("/")
    seconds = _RATE_UNITS.get(unit.strip() or "s")
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if seconds is None or not math.isfinite(value):
        raise ValueError(f"expected a rate like 25/min, 0.5/s or 1000/h, not {text!r}")
    if not value > 0:
        raise ValueError(f"must be a positive rate, not {text}")
    return value / seconds


def _per_second(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


DEFAULT_MAX_CONCURRENCY = 256
#: ``--emulate-plan`` choices: batchscribe.emulator.PLANS (not imported here: the emulator loads
#: aiohttp.web; tests/test_emulator.py checks the two agree).
EMULATOR_PLANS = ("unlimited", "standard")


def _seconds(text: str) -> float:
    value = _finite(text, "seconds")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = _finite(text, "seconds")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
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
    if not 0 < value < math.inf:  # (NaN too)
        raise argparse.ArgumentTypeError(f"must be a positive duration, not {text}")
    return value


def _price(text: str) -> float:
    value = _finite(text, "a number")
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


def build_parser(*, emulate_flags: bool = True) -> argparse.ArgumentParser:
    """The ``batchscribe`` argument parser (its help texts are the README's usage blocks).

    ``emulate_flags=False`` leaves out ``emulate``'s own flags, and so the import of the
    emulator (aiohttp.web and all): ``main`` does that when the command line is not for it,
    which saves every ``run`` a tenth of a second of start-up.
    """
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
    _add_emulate(sub, flags=emulate_flags)
    _add_results_commands(sub)
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
        help="a JSONL, CSV or text-list manifest, an archive directory, an s3://BUCKET/PREFIX "
        "or gs://BUCKET/PREFIX, or - for stdin",
    )  # fmt: skip
    run.add_argument(
        "--out", "-o", required=True, metavar="RESULTS",
        help="results JSONL file; {shard} and {shards} expand to the --shard index and count",
    )  # fmt: skip
    _add_connection_flags(run)
    _add_pulse_flags(run)
    _add_pace_flags(run)
    _add_jobs_flags(run)
    _add_output_flags(run)
    _add_fleet_flags(run)
    run.set_defaults(handler=_cmd_run)


def _add_connection_flags(run: argparse.ArgumentParser) -> None:
    """``run``'s flags: where requests go and with what key."""
    conn = run.add_argument_group("connection")
    conn.add_argument(
        "--endpoint", default=os.environ.get(ENDPOINT_ENV, DEFAULT_ENDPOINT), metavar="URL",
        help=f"Pulse URL (default: the unified {DEFAULT_ENDPOINT}; env {ENDPOINT_ENV}); the "
        f"legacy {LEGACY_ENDPOINT} works too; a query of its own (?token=...) is sent too, "
        "and never printed",
    )  # fmt: skip
    conn.add_argument(
        "--api-key-file", metavar="PATH",
        help=f"read the API key from this file (default: env {KEY_ENV})",
    )  # fmt: skip
    conn.add_argument(
        "--emulate", action="store_true",
        help="run against the bundled Pulse emulator on loopback (offline, no key needed)",
    )  # fmt: skip
    conn.add_argument(
        "--emulate-plan", choices=EMULATOR_PLANS, default="unlimited", metavar="PLAN",
        help="with --emulate: the emulator's plan, unlimited (default) or standard "
        "(25 requests/min per model, 429s with no delay header)",
    )  # fmt: skip
    conn.add_argument(
        "--via-client", action="store_true",
        help="stream s3:// and gs:// objects through this machine instead of sending the API "
        "presigned URLs (always so for pulse-pro)",
    )  # fmt: skip


def _add_pulse_flags(run: argparse.ArgumentParser) -> None:
    """``run``'s flags: the Pulse parameters sent with every item."""
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


def _add_pace_flags(run: argparse.ArgumentParser) -> None:
    """``run``'s flags: how fast requests start and how failures are retried."""
    pace = run.add_argument_group("pace and retries")
    pace.add_argument(
        "--concurrency", "-j", type=_concurrency, default=8, metavar="N|auto",
        help="requests in flight never exceed N (default: 8); auto: learn the limit from the "
        "server, growing while answers are healthy and cutting on 429/503",
    )  # fmt: skip
    pace.add_argument(
        "--max-concurrency", type=_positive_int, metavar="N",
        help=f"with --concurrency auto: never more than N in flight "
        f"(default: {DEFAULT_MAX_CONCURRENCY})",
    )  # fmt: skip
    pace.add_argument(
        "--rate", type=_per_second, metavar="R",
        help="at most R request starts, spaced evenly: 25/min, 0.5/s, 1000/h (a bare number "
        "is per second; default: no fixed rate, the rate limit is learnt from 429s)",
    )  # fmt: skip
    pace.add_argument(
        "--max-attempts", type=_positive_int, default=6, metavar="N",
        help="attempts per item, the first included (default: 6)",
    )  # fmt: skip
    pace.add_argument(
        "--timeout", type=_positive_seconds, default=900.0, metavar="S",
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


def _add_jobs_flags(run: argparse.ArgumentParser) -> None:
    """``run``'s flags: what a scheduled job may skip, spend and preview."""
    jobs = run.add_argument_group("nightly jobs and budgets")
    jobs.add_argument(
        "--rescan-changed", action="store_true",
        help="re-transcribe ok files whose size or mtime changed since their record",
    )  # fmt: skip
    jobs.add_argument(
        "--max-items", type=_max_items, metavar="N",
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


def _add_output_flags(run: argparse.ArgumentParser) -> None:
    """``run``'s flags: what the run prints and logs."""
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


def _add_fleet_flags(run: argparse.ArgumentParser) -> None:
    """``run``'s flags: shards and a rate shared between processes."""
    fleet = run.add_argument_group("beyond one machine")
    fleet.add_argument(
        "--shard", metavar="K/N",
        help="take only shard K of N (0 <= K < N; by a stable hash of the item id); "
        "auto/N or auto: K (and N) from JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID, "
        "AWS_BATCH_JOB_ARRAY_INDEX or PARALLEL_SEQ",
    )  # fmt: skip
    fleet.add_argument(
        "--rate-store", metavar="URL",
        help="share one learned rate and one evenly spaced start schedule with every process "
        "using this Redis (redis://HOST[:PORT][/DB]), API key, endpoint and model; with "
        "--rate R, R starts per second for all of them together; needs the redis extra",
    )  # fmt: skip


def _add_emulate(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], *, flags: bool = True
) -> None:
    parser = sub.add_parser(
        "emulate",
        help="serve the bundled Pulse emulator (the unified and legacy paths) until stopped",
        description=(
            "Serve a faithful Pulse emulator on loopback: auth, parameter validation, the "
            "documented limits (mono only, the 10-minute session, 250 MB, a plan's requests "
            "per minute), transcripts derived from the decoded audio, faults, and "
            "GET /_emulator/stats. Point "
            "`batchscribe run --endpoint URL` (or your own client) at the URL it prints."
        ),
    )
    if flags:
        from batchscribe import emulator

        emulator.add_arguments(parser)
    parser.set_defaults(handler=_cmd_emulate)


_KEY_FILE_LIMIT = 64 * 1024  # far above any key; a bound so /dev/zero cannot fill memory


def read_api_key(path: str | None, console: Console) -> str | None:
    """The API key from ``--api-key-file`` or the environment (None when neither has one),
    without surrounding whitespace or a BOM; ConfigError when it cannot be a key."""
    if path is None:
        return _clean_key(os.environ.get(KEY_ENV) or "", KEY_ENV) or None
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            raw = handle.read(_KEY_FILE_LIMIT + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read API key file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: API key file is not UTF-8 text") from None
    if len(raw) > _KEY_FILE_LIMIT:
        raise ConfigError(f"{path}: API key file is over {_KEY_FILE_LIMIT // 1024} KiB: not a key")
    key = _clean_key(raw, path)
    if not key:
        raise ConfigError(f"{path}: API key file is empty")
    if st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        console.line(
            f"batchscribe: warning: {path} is readable by other users; "
            f"restrict it with: chmod 600 {path}"
        )
    return key


def _clean_key(raw: str, origin: str) -> str:
    """:func:`clean_api_key`, its refusal a ConfigError naming where the key came from."""
    try:
        return clean_api_key(raw)
    except ValueError as exc:
        raise ConfigError(f"{origin}: the API key {exc}") from None


def _apply_shard(ns: argparse.Namespace, console: Console) -> Shard | None:
    """The ``--shard`` of this run; fills ``{shard}`` in ``--out`` and ``--log-file``."""
    # ShardError is a ConfigError (exit 2).
    shard = parse_shard(ns.shard, os.environ) if ns.shard is not None else None
    ns.out = expand_path(ns.out, shard)
    if ns.log_file:
        ns.log_file = expand_path(ns.log_file, shard, option="--log-file")
    if shard is not None:
        origin = f" ({shard.origin})" if shard.origin else ""
        console.line(
            f"batchscribe: shard {shard.index} of {shard.count}{origin}: results in {ns.out}"
        )
    return shard


def _open_stdin() -> BinaryIO:
    try:
        return os.fdopen(os.dup(0), "rb")
    except OSError as exc:
        raise ConfigError(f"- (stdin): cannot read: {exc.strerror}") from None


def _cmd_run(ns: argparse.Namespace, console: Console) -> int:
    # A private stream on fd 0, not sys.stdin.buffer: a stop may leave the reader thread blocked
    # in it, and the interpreter closes sys.stdin at exit, which aborts the process if a thread
    # is still inside it ("could not acquire lock ... at interpreter shutdown").
    stdin = _open_stdin() if "-" in ns.sources else None
    shard = _apply_shard(ns, console)
    if ns.dry_run:
        return _dry_run(ns, console, stdin, shard)
    if ns.price_per_hour is not None:
        raise ConfigError("--price-per-hour goes with --dry-run")
    log = _open_log(ns, console)
    try:
        key = None if ns.emulate else read_api_key(ns.api_key_file, console)
        console.redact.add(key)
        for secret in url_secrets(ns.endpoint):  # a token in the endpoint's query
            console.redact.add(secret)
        options = RunOptions(
            sources=ns.sources,
            out=ns.out,
            api_key=key,
            endpoint=ns.endpoint,
            params=_params(ns),
            concurrency=_concurrency_ceiling(ns),
            adaptive=ns.concurrency == "auto",
            rate=ns.rate,
            max_attempts=ns.max_attempts,
            timeout=ns.timeout,
            max_retry_wait=ns.max_retry_wait,
            retry_failed=ns.retry_failed,
            emulate=ns.emulate,
            emulate_plan=ns.emulate_plan,
            rescan_changed=ns.rescan_changed,
            max_items=ns.max_items,
            max_runtime=ns.max_runtime,
            shard=shard,
            rate_store=ns.rate_store,
            via_client=ns.via_client,
        )  # (validated by the run, before anything is opened)
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
    out = Console(TerminalStream.wrap(sys.stdout), console.redact)
    for line in summary.lines():
        out.line(line)
    return summary.exit_code


def _params(ns: argparse.Namespace) -> PulseParams:
    """The run's Pulse parameters, from its flags."""
    flags = {name: getattr(ns, name) for name in BOOL_PARAMS}
    return PulseParams(model=ns.model, language=ns.language, **flags)


def _concurrency_ceiling(ns: argparse.Namespace) -> int:
    """``--concurrency N``, or with ``auto`` the ceiling ``--max-concurrency`` (ConfigError)."""
    if ns.concurrency == "auto":
        return int(ns.max_concurrency or DEFAULT_MAX_CONCURRENCY)
    if ns.max_concurrency is not None:
        raise ConfigError(
            "--max-concurrency goes with --concurrency auto; "
            "a fixed --concurrency N is already the ceiling"
        )
    return int(ns.concurrency)


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
    params = _params(ns)
    problem = check_combination(params, url_input=False)
    if problem is None and not ns.emulate:
        problem = endpoint_problem(ns.endpoint)  # (a run refuses it too, with its other checks)
    if problem:
        raise ConfigError(problem)
    plan = dry_run(
        ns.sources, ns.out, retry_failed=ns.retry_failed, rescan_changed=ns.rescan_changed,
        stdin=stdin, shard=shard, params=params,
    )  # fmt: skip
    for problem in plan.problems:
        console.line(problem)
    out = Console(sys.stdout, console.redact)
    lines = plan.lines(
        concurrency=_concurrency_ceiling(ns), price_per_hour=ns.price_per_hour, rate=ns.rate
    )
    for line in lines:
        out.line(line)
    return EXIT_FAILED if plan.invalid or plan.unfit else EXIT_OK


def _cmd_emulate(ns: argparse.Namespace, console: Console) -> int:
    from batchscribe import emulator

    config = emulator.config_from_args(ns)

    def ready(url: str) -> None:
        out = Console(sys.stdout, console.redact)
        out.line(f"Pulse emulator listening on {url}")
        out.line(f"  current endpoint: {url}/waves/v1/stt/")
        out.line(f"  legacy endpoints: {url}/waves/v1/pulse/get_text, {url}/api/v1/pulse/get_text")
        out.line(f"  stats:            {url}/_emulator/stats")
        out.line("Press Ctrl-C to stop.")

    try:
        asyncio.run(emulator.serve_forever(config, ns.host, ns.port, on_ready=ready))
    except KeyboardInterrupt:
        return 0
    return 0


# ------------------------------------------------------------------ commands that read results
# report, failed, export, merge: thin shells over the public API (batchscribe.build_report, ...).
# Everything they print passes through the Console (so through the Redactor).

_RESULTS_HELP = "results JSONL file(s) or globs, read in order (a later record of an id wins)"


def _add_results_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser(
        "report",
        help="totals, failure causes, runs and the slowest items of results files",
        description=(
            "Report on the final state of every item in the RESULTS files: ok, failed by "
            "cause and HTTP status, retries, audio hours, the runs recorded and the slowest "
            "items. Streams: a million-line file takes seconds."
        ),
    )
    report.add_argument("results", nargs="+", metavar="RESULTS", help=_RESULTS_HELP)
    report.add_argument("--json", action="store_true", help="one JSON document on stdout")
    report.add_argument(
        "--html", metavar="FILE",
        help="also write a self-contained HTML page with charts to FILE",
    )  # fmt: skip
    report.add_argument(
        "--top", type=_positive_int, default=10, metavar="N",
        help="slowest / most-attempted items and common errors listed (default: 10)",
    )  # fmt: skip
    report.add_argument(
        "--runs", type=_count, default=10, metavar="N",
        help="latest runs listed in the text report (default: 10; 0: all)",
    )  # fmt: skip
    report.set_defaults(handler=_pipe_safe(_cmd_report))

    failed = sub.add_parser(
        "failed",
        help="list the items whose final state is failed, as a manifest for `run`",
        description=(
            "Write the items whose final state is failed as a JSONL manifest (id, path or url, "
            "the manifest's extra fields) that `batchscribe run` accepts. Rerun them with: "
            "batchscribe failed r.jsonl > again.jsonl && "
            "batchscribe run again.jsonl --out r.jsonl --retry-failed"
        ),
    )
    failed.add_argument("results", nargs="+", metavar="RESULTS", help=_RESULTS_HELP)
    failed.add_argument(
        "--cause", action="append", metavar="CAUSE",
        help="only these causes (repeatable or a comma list): 4xx, 429, 5xx, network, timeout, "
        "missing, invalid, too_large, file_changed, language",
    )  # fmt: skip
    failed.add_argument("--out", "-o", metavar="FILE", help="write to FILE instead of stdout")
    failed.set_defaults(handler=_pipe_safe(_cmd_failed))

    export = sub.add_parser(
        "export",
        help="write each ok transcript as txt, srt, vtt or json, mirroring the archive",
        description=(
            "Write one file per item whose final state is ok, at its id as a relative path "
            "under --dir (the audio extension replaced), or next to its audio file. Files "
            "already up to date are left alone; each write is atomic."
        ),
    )
    export.add_argument("results", nargs="+", metavar="RESULTS", help=_RESULTS_HELP)
    export.add_argument(
        "--format", "-f", required=True, choices=("txt", "srt", "vtt", "json"),
        help="txt: the transcript; srt / vtt: subtitles (speaker labels when diarized); "
        "json: the API's answer",
    )  # fmt: skip
    where = export.add_mutually_exclusive_group(required=True)
    where.add_argument("--dir", "-d", metavar="OUT", help="the folder to write into")
    where.add_argument(
        "--beside-audio", action="store_true",
        help="write next to each local audio file instead (URL items are skipped)",
    )  # fmt: skip
    export.set_defaults(handler=_cmd_export)
    _add_merge_command(sub)


def _add_merge_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    merge = sub.add_parser(
        "merge",
        help="merge results files into one: each id's last state, never losing an ok",
        description=(
            "Write each id's final record across the RESULTS files (in order) and every run "
            "record once into --out. An ok is never lost: if an id's last record is failed but "
            "an earlier one is ok, the ok is kept. An existing --out is read first (merging "
            "adds to it). --out is locked like a run's results file and replaced atomically."
        ),
    )
    merge.add_argument("results", nargs="+", metavar="RESULTS", help=_RESULTS_HELP)
    merge.add_argument("--out", "-o", required=True, metavar="ALL", help="the merged file")
    merge.set_defaults(handler=_cmd_merge)


def _pipe_safe(
    handler: Callable[[argparse.Namespace, Console], int],
) -> Callable[[argparse.Namespace, Console], int]:
    """A reader closing stdout early (``batchscribe failed r.jsonl | head``) is not an error."""

    def run(ns: argparse.Namespace, console: Console) -> int:
        try:
            return handler(ns, console)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the exit-time flush cannot fail again
            os.close(devnull)
            return EXIT_OK

    return run


def _expand(patterns: Sequence[str]) -> list[str]:
    from batchscribe.results import expand_paths

    return expand_paths(patterns)


def _warn_unreadable(console: Console, counts: ReadCounts) -> None:
    """One warning line per damaged line (``FILE:LINE: damaged record``) or unfinished tail."""
    for line in counts.problems():
        console.line(f"batchscribe: warning: {line}")


def _cmd_report(ns: argparse.Namespace, console: Console) -> int:
    import orjson

    from batchscribe import build_report, render_html
    from batchscribe.clock import utc_now
    from batchscribe.export import write_if_changed

    paths = _expand(ns.results)
    report = build_report(paths, top=ns.top, charts=ns.html is not None)
    _warn_unreadable(console, report.counts)
    out = Console(sys.stdout, console.redact)
    if ns.json:
        out.line(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in report.lines(runs=ns.runs):
            out.line(line)
    if ns.html is not None:
        page = console.redact(render_html(report, generated=utc_now()))
        try:
            write_if_changed(ns.html, page.encode("utf-8"))
        except OSError as exc:
            raise ConfigError(f"{ns.html}: cannot write HTML report: {exc.strerror}") from None
        console.line(f"batchscribe: wrote {ns.html}")
    return EXIT_OK


def _cmd_failed(ns: argparse.Namespace, console: Console) -> int:
    import orjson

    from batchscribe import failed_items
    from batchscribe.report import parse_causes, write_lines

    paths = _expand(ns.results)
    causes = parse_causes(ns.cause)
    if ns.out is not None and any(os.path.realpath(ns.out) == os.path.realpath(p) for p in paths):
        raise ConfigError(f"{ns.out}: is one of the results files; write the list elsewhere")
    counts = ReadCounts()
    # A manifest for `run` must carry each item's real id and URL: a presigned URL's signature
    # is kept, except on a terminal (a terminal line never shows one); the key never is.
    on_terminal = ns.out is None and sys.stdout.isatty()
    hidden = 0

    def shown(entry: dict[str, object]) -> str:
        nonlocal hidden
        text = console.redact.keys(orjson.dumps(entry).decode())
        if on_terminal:
            scrubbed = console.redact(text)
            hidden += scrubbed != text
            return scrubbed
        return text

    lines = map(shown, failed_items(paths, causes=causes, counts=counts))
    count = write_lines(lines, ns.out, sys.stdout)  # (redacted above)
    _warn_unreadable(console, counts)
    where = f" to {ns.out}" if ns.out else ""
    console.line(f"batchscribe: {count:,} failed item(s) listed{where}")
    if hidden:
        console.line(
            f"batchscribe: {hidden:,} presigned URL(s) shown without their signature on a "
            "terminal; redirect the list to a file (or --out FILE) for a manifest run can send"
        )
    return EXIT_OK


def _cmd_export(ns: argparse.Namespace, console: Console) -> int:
    from batchscribe import export_transcripts

    paths = _expand(ns.results)
    summary = export_transcripts(
        paths, ns.format, out_dir=ns.dir, beside_audio=ns.beside_audio,
        on_problem=lambda message: console.line(f"batchscribe: {message}"),
    )  # fmt: skip
    _warn_unreadable(console, summary.counts)
    Console(sys.stdout, console.redact).line(summary.line())
    return EXIT_FAILED if summary.errors else EXIT_OK


def _cmd_merge(ns: argparse.Namespace, console: Console) -> int:
    from batchscribe import merge_results

    paths = _expand(ns.results)
    summary = merge_results(paths, ns.out)
    _warn_unreadable(console, summary.counts)
    Console(sys.stdout, console.redact).line(summary.line())
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``batchscribe`` command; returns the exit code."""
    redact = Redactor([os.environ.get(KEY_ENV)])
    # Errors and a run's progress go to a stderr that may lose its terminal mid-run.
    console = Console(TerminalStream.wrap(sys.stderr), redact)
    args = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(emulate_flags="emulate" in args)
    ns = parser.parse_args(args)
    if argv is None:
        # The command's own process (not a caller's): what is imported by now lives until
        # exit, so the collector can leave it out of every later pass, the one at exit
        # included, which otherwise walks all of it (60-90 ms of every run's wall time here).
        gc.freeze()
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
