"""The command handlers: one function per subcommand, from parsed flags to the public API, its
summary on the terminal and an exit code. Also where the API key comes from.

Each handler takes the parsed ``argparse.Namespace`` and the stderr :class:`Console`, and
returns the exit code (errors are raised as :class:`BatchscribeError`, whose exit code ``main``
returns). Everything they print passes through the Console (so through the Redactor).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import stat
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, BinaryIO

from batchscribe import RunOptions, dry_run, run_batch
from batchscribe.console import Console, EventLog, Progress, TerminalStream
from batchscribe.errors import EXIT_FAILED, EXIT_OK, BatchscribeError, ConfigError
from batchscribe.events import Subscriber, Summary
from batchscribe.pulse import (
    BOOL_PARAMS,
    PulseParams,
    clean_api_key,
    url_secrets,
)
from batchscribe.run.dry_run import learned_rate
from batchscribe.shard import Shard, expand_path, parse_shard

if TYPE_CHECKING:
    from batchscribe.results import ReadCounts

KEY_ENV = "SMALLEST_API_KEY"
#: ``--max-concurrency``'s default: the ceiling of ``--concurrency auto``.
DEFAULT_MAX_CONCURRENCY = 256
#: ``--concurrency`` when not given; with ``--pack``, whose requests (up to ten minutes of
#: audio each) take the service longer: 25 a minute at ~30 s an answer needs 13 in flight.
DEFAULT_CONCURRENCY, PACK_CONCURRENCY = 8, 16


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


def cmd_run(ns: argparse.Namespace, console: Console) -> int:
    """``batchscribe run`` (and its ``--dry-run``)."""
    # A private stream on fd 0, not sys.stdin.buffer: a stop may leave the reader thread blocked
    # in it, and the interpreter closes sys.stdin at exit, which aborts the process if a thread
    # is still inside it ("could not acquire lock ... at interpreter shutdown").
    stdin = _open_stdin() if "-" in ns.sources else None
    shard = _apply_shard(ns, console)
    if ns.dry_run:
        return _dry_run(ns, console, stdin, shard)
    _check_unattended(ns, console)
    log = _open_log(ns, console)
    try:
        key = None if ns.emulate else read_api_key(ns.api_key_file, console)
        console.redact.add(key)
        for secret in url_secrets(ns.endpoint):  # a token in the endpoint's query
            console.redact.add(secret)
        # (validated by the run, before anything is opened)
        options = _run_options(ns, key, shard)
        progress = Progress(console, bar=False if ns.no_progress else None)
        if ns.no_progress:
            progress.interval = float("inf")
        subscribers: list[Subscriber] = [progress]
        if log is not None:
            subscribers.append(log)
        summary = run_batch(options, subscribers=subscribers, stdin=stdin)
        _after_run(ns, options, summary, console, log)
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


def _check_unattended(ns: argparse.Namespace, console: Console) -> None:
    """Refuse ``--notify`` URLs Apprise cannot use and a ``--metrics-push`` that is not an
    http(s) URL (exit 2, naming the flag, never the URL); their secrets join the redactor."""
    urls = [*(ns.notify or []), *([ns.metrics_push] if ns.metrics_push else [])]
    for url in urls:  # a URL whole, its password and token-like query values
        for secret in (url, *url_secrets(url)):
            console.redact.add(secret)
    if ns.notify:
        from batchscribe.notify import invalid_urls  # (Apprise: only a run that notifies)

        problems = invalid_urls(ns.notify)
        if problems:
            raise ConfigError(problems[0])
    if ns.metrics_push is not None and not ns.metrics_push.startswith(("http://", "https://")):
        raise ConfigError("--metrics-push must be the http(s) URL of a Pushgateway")


def _after_run(
    ns: argparse.Namespace,
    options: RunOptions,
    summary: Summary,
    console: Console,
    log: EventLog | None,
) -> None:
    """The end of a run for those not watching: the metrics pushed, the notification sent
    (each a warning when it fails, never a change of the exit code)."""
    from batchscribe.notify import compose, deliver, wanted
    from batchscribe.run.unattended import job_name, snapshot

    warnings: list[str] = []
    job = job_name(options)
    if ns.metrics_push is not None:
        from batchscribe.metrics import push

        shard = str(options.shard) if options.shard is not None else ""
        snap = snapshot(summary, summary.wall_seconds, finished=True)
        problem = push(ns.metrics_push, snap, job, shard)
        if problem is not None:
            warnings.append(problem)
    if ns.notify and wanted(ns.notify_on, summary.exit_code):
        note = compose(
            summary, results=options.out, exit_code=summary.exit_code, job=job,
            cost=summary.cost, redact=console.redact,
        )  # fmt: skip
        warnings.extend(deliver(ns.notify, note))
    for warning in warnings:
        console.line(f"batchscribe: warning: {warning}")
        if log is not None:
            log.log("warning", "warning", warning)


def _run_options(ns: argparse.Namespace, key: str | None, shard: Shard | None) -> RunOptions:
    """The run's options from its flags (a new run flag: its line here)."""
    return RunOptions(
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
        max_chunk=ns.max_chunk,
        transcode=ns.transcode,
        opus_bitrate=ns.opus_bitrate,
        channels=ns.channels,
        prep_workers=ns.prep_workers,
        pack=ns.pack,
        pack_max_item=ns.pack_max_item,
        pack_seconds=ns.pack_seconds,
        max_cost=ns.max_cost,
        price_per_hour=ns.price_per_hour,
        max_audio_hours=ns.max_audio_hours,
        metrics_file=ns.metrics_file,
        job_name=ns.job_name,
        command=["batchscribe", *getattr(ns, "argv", sys.argv[1:])],
    )


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
    if ns.concurrency is None:
        return PACK_CONCURRENCY if getattr(ns, "pack", False) else DEFAULT_CONCURRENCY
    return int(ns.concurrency)


def _open_log(ns: argparse.Namespace, console: Console) -> EventLog | None:
    if not ns.log_file:
        return None
    try:
        stream = open(ns.log_file, "a", encoding="utf-8")  # noqa: SIM115 (closed by cmd_run)
    except OSError as exc:
        raise ConfigError(f"{ns.log_file}: cannot open log file: {exc.strerror}") from None
    return EventLog(stream, console.redact, fmt=ns.log_format)


def _dry_run(
    ns: argparse.Namespace, console: Console, stdin: BinaryIO | None, shard: Shard | None
) -> int:
    options = _run_options(ns, None, shard)
    options.validate(need_key=False)  # (what a run would refuse is not predicted)
    params = options.params
    packer = None
    if options.pack:
        from batchscribe.audio.pack import Packer

        packer = Packer(pack_seconds=options.pack_seconds, max_item=options.pack_max_item)
    plan = dry_run(
        ns.sources, ns.out, retry_failed=ns.retry_failed, rescan_changed=ns.rescan_changed,
        stdin=stdin, shard=shard, params=params, policy=options.prep_policy, packer=packer,
    )  # fmt: skip
    for problem in plan.problems:
        console.line(problem)
    out = Console(sys.stdout, console.redact)
    # The rate the next run starts from: the one the last run learnt, unless --rate is lower.
    rate = hint = None if ns.emulate else learned_rate(ns.out, ns.endpoint, params.model)
    if ns.rate is not None and (hint is None or ns.rate < hint):
        rate = ns.rate
    lines = plan.lines(
        concurrency=_concurrency_ceiling(ns), price_per_hour=ns.price_per_hour, rate=rate,
        learned=rate is not None and rate == hint,
    )  # fmt: skip
    for line in lines:
        out.line(line)
    return EXIT_FAILED if plan.invalid or plan.unfit else EXIT_OK


def cmd_status(ns: argparse.Namespace, console: Console) -> int:
    """``batchscribe status``: the state of a run on a results file."""
    import orjson

    from batchscribe.status import format_status, read_status, status_json

    report = read_status(ns.results)
    out = Console(sys.stdout, console.redact)
    if ns.json:
        out.line(orjson.dumps(status_json(report), option=orjson.OPT_INDENT_2).decode())
    else:
        out.line(format_status(report))
    return EXIT_OK


def cmd_emulate(ns: argparse.Namespace, console: Console) -> int:
    """``batchscribe emulate``: serve the emulator until Ctrl-C."""
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


def _pipe_safe(
    handler: Callable[[argparse.Namespace, Console], int],
) -> Callable[[argparse.Namespace, Console], int]:
    """A reader closing stdout early (``batchscribe failed r.jsonl | head``) is not an error."""

    @functools.wraps(handler)
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


@_pipe_safe
def cmd_report(ns: argparse.Namespace, console: Console) -> int:
    """``batchscribe report``: text, ``--json`` or ``--html``."""
    import orjson

    from batchscribe import build_report, render_html
    from batchscribe.clock import utc_now
    from batchscribe.export import write_if_changed

    paths = _expand(ns.results)
    report = build_report(
        paths, top=ns.top, charts=ns.html is not None, price_per_hour=ns.price_per_hour
    )
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


@_pipe_safe
def cmd_failed(ns: argparse.Namespace, console: Console) -> int:
    """``batchscribe failed``: the failed items as a manifest for ``run``."""
    import orjson

    from batchscribe import failed_items
    from batchscribe.report import parse_causes, write_lines
    from batchscribe.results import ReadCounts

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


def cmd_export(ns: argparse.Namespace, console: Console) -> int:
    """``batchscribe export``: one file per ok transcript."""
    from batchscribe import export_transcripts

    paths = _expand(ns.results)
    summary = export_transcripts(
        paths, ns.format, out_dir=ns.dir, beside_audio=ns.beside_audio,
        on_problem=lambda message: console.line(f"batchscribe: {message}"),
    )  # fmt: skip
    _warn_unreadable(console, summary.counts)
    Console(sys.stdout, console.redact).line(summary.line())
    return EXIT_FAILED if summary.errors else EXIT_OK


def cmd_merge(ns: argparse.Namespace, console: Console) -> int:
    """``batchscribe merge``: results files into one."""
    from batchscribe import merge_results

    paths = _expand(ns.results)
    summary = merge_results(paths, ns.out)
    _warn_unreadable(console, summary.counts)
    Console(sys.stdout, console.redact).line(summary.line())
    return EXIT_OK
