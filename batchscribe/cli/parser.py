"""The ``batchscribe`` argument parser: the subcommands and their flags, whose help texts are
the README's usage blocks (tests/test_docs.py checks every flag the README names exists).

``run``'s flags come in groups (``--help`` shows one heading per group); a group is one
``_add_*_flags`` function, listed in :data:`RUN_FLAG_GROUPS` in the order ``--help`` shows
them. A new flag goes into the group that owns its concern, with its value parser from
:mod:`batchscribe.cli.values`; its value reaches the run through ``commands._run_options``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from batchscribe import __version__
from batchscribe.cli import commands, values
from batchscribe.cli.commands import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_CONCURRENCY,
    KEY_ENV,
    PACK_CONCURRENCY,
)
from batchscribe.pulse import BOOL_PARAMS, DEFAULT_ENDPOINT, LEGACY_ENDPOINT
from batchscribe.spend import PRICE_PER_HOUR

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

#: ``--emulate-plan`` choices: batchscribe.emulator.PLANS (not imported here: the emulator loads
#: aiohttp.web; tests/test_emulator.py checks the two agree).
EMULATOR_PLANS = ("unlimited", "standard")


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
    for add_flags in RUN_FLAG_GROUPS:
        add_flags(run)
    run.set_defaults(handler=commands.cmd_run)


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
        help="pass URLs and s3:// and gs:// objects through this machine (downloaded, and "
        "prepared like local files) instead of sending the API URLs (always so for pulse-pro)",
    )  # fmt: skip


def _add_pulse_flags(run: argparse.ArgumentParser) -> None:
    """``run``'s flags: the Pulse parameters sent with every item."""
    pulse = run.add_argument_group("Pulse parameters (manifest fields override them per item)")
    pulse.add_argument(
        "--model", type=values.param("model"), default="pulse", help="pulse | pulse-pro"
    )
    pulse.add_argument(
        "--language", type=values.param("language"), default="en",
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
        "--concurrency", "-j", type=values.concurrency, metavar="N|auto",
        help=f"requests in flight never exceed N (default: {DEFAULT_CONCURRENCY}; "
        f"{PACK_CONCURRENCY} with --pack, whose requests take longer); auto: learn the limit "
        "from the server, growing while answers are healthy and cutting on 429/503",
    )  # fmt: skip
    pace.add_argument(
        "--max-concurrency", type=values.positive_int, metavar="N",
        help=f"with --concurrency auto: never more than N in flight "
        f"(default: {DEFAULT_MAX_CONCURRENCY})",
    )  # fmt: skip
    pace.add_argument(
        "--rate", type=values.per_second, metavar="R",
        help="at most R request starts, spaced evenly: 25/min, 0.5/s, 1000/h (a bare number "
        "is per second; default: no fixed rate, the rate limit is learnt from 429s)",
    )  # fmt: skip
    pace.add_argument(
        "--max-attempts", type=values.positive_int, default=6, metavar="N",
        help="attempts per item, the first included (default: 6)",
    )  # fmt: skip
    pace.add_argument(
        "--timeout", type=values.positive_seconds, default=900.0, metavar="S",
        help="seconds per request, upload and response (default: 900)",
    )  # fmt: skip
    pace.add_argument(
        "--max-retry-wait", type=values.seconds, default=300.0, metavar="S",
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
        "--max-items", type=values.max_items, metavar="N",
        help="send at most N items, then stop (exit 4 when work is left)",
    )  # fmt: skip
    jobs.add_argument(
        "--max-runtime", type=values.duration, metavar="DURATION",
        help="stop taking items after DURATION (90s, 30m, 6h, 1h30m), finish those in flight "
        "(exit 4 when work is left)",
    )  # fmt: skip
    jobs.add_argument(
        "--dry-run", action="store_true",
        help="scan the sources and print what would be done: send nothing, write nothing",
    )  # fmt: skip
    jobs.add_argument(
        "--max-cost", type=values.price, metavar="X",
        help="stop taking items once the audio answered plus the audio in flight would cost "
        "more than X at --price-per-hour; those in flight finish (exit 4 when work is left)",
    )  # fmt: skip
    jobs.add_argument(
        "--max-audio-hours", type=values.price, metavar="H",
        help="the same cap on audio hours (with --max-cost: the tighter one wins)",
    )  # fmt: skip
    prices = ", ".join(f"{model} {cost:g}" for model, cost in PRICE_PER_HOUR.items())
    jobs.add_argument(
        "--price-per-hour", type=values.price, metavar="X",
        help=f"the price of one audio hour, for --max-cost, the summary's spend and the "
        f"--dry-run estimate (default for --max-cost: the model's, US$ {prices})",
    )  # fmt: skip


def _add_unattended_flags(run: argparse.ArgumentParser) -> None:
    """``run``'s flags: what an unattended run tells when it ends and while it works."""
    unattended = run.add_argument_group("notifications and metrics")
    unattended.add_argument(
        "--notify", action="append", metavar="URL",
        help="at the end, send a summary to this Apprise URL (repeatable): slack://, "
        "msteams://, discord://, ntfy://, mailto://, json://HOST/PATH, ...; never printed",
    )  # fmt: skip
    unattended.add_argument(
        "--notify-on", choices=("always", "failure", "never"), default="failure",
        help="when to send --notify: failure (default: any exit code but 0), always, never",
    )  # fmt: skip
    unattended.add_argument(
        "--metrics-file", metavar="PATH",
        help="write Prometheus text format to PATH (name it *.prom) every 30 s and at the "
        "end, atomically: for node_exporter's textfile collector",
    )  # fmt: skip
    unattended.add_argument(
        "--metrics-push", metavar="URL",
        help="at the end, push the metrics to the Pushgateway at URL (user:password@ is "
        "sent as basic auth); never printed",
    )  # fmt: skip
    unattended.add_argument(
        "--job-name", metavar="NAME",
        help="the job label of the metrics and the notification's title (default: the "
        "results file's name without its extension)",
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


def _add_audio_flags(run: argparse.ArgumentParser) -> None:
    """``run``'s flags: how local files are prepared (downmix, chunks, transcoding)."""
    audio = run.add_argument_group("audio preparation (local files)")
    audio.add_argument(
        "--max-chunk", type=values.chunk_length, default=600.0, metavar="DURATION",
        help="cut recordings longer than DURATION into chunks at silences, sent in parallel "
        "and stitched into one record (default: 10m, the service's session)",
    )  # fmt: skip
    audio.add_argument(
        "--transcode", choices=("auto", "flac", "opus", "off"), default="auto",
        help="auto: re-encode as 16 kHz mono FLAC what is bigger than needed or not taken "
        "as is; flac/opus: every local file; off: send originals, fail what the service "
        "cannot take (default: auto)",
    )  # fmt: skip
    audio.add_argument(
        "--opus-bitrate", type=values.bitrate, default=32000, metavar="BITS",
        help="bits per second of --transcode opus (32k or 32000; default: 32k)",
    )  # fmt: skip
    audio.add_argument(
        "--channels", choices=("mix", "split"), default="mix",
        help="mix: downmix to mono; split: transcribe each channel apart, every word "
        "labelled with its channel (default: mix)",
    )  # fmt: skip
    audio.add_argument(
        "--prep-workers", type=values.prep_workers, metavar="N",
        help="processes that decode and encode audio (default: the CPU count)",
    )  # fmt: skip
    audio.add_argument(
        "--pack", action="store_true",
        help="send short files with equal parameters several to a request (silence between "
        "them) and split the answer back into one record each: many more files a minute "
        "under a requests-per-minute limit; word times are always asked for",
    )  # fmt: skip
    audio.add_argument(
        "--pack-max-item", type=values.chunk_length, default=120.0, metavar="DURATION",
        help="with --pack: pack only files shorter than DURATION (default: 2m)",
    )  # fmt: skip
    audio.add_argument(
        "--pack-seconds", type=values.chunk_length, default=590.0, metavar="DURATION",
        help="with --pack: audio per packed request at most, gaps included (default: 590s, "
        "just under the 10-minute session)",
    )  # fmt: skip


#: ``run``'s flag groups, in ``--help`` order: a new group is a function above and a line here.
RUN_FLAG_GROUPS: tuple[Callable[[argparse.ArgumentParser], None], ...] = (
    _add_connection_flags,
    _add_pulse_flags,
    _add_pace_flags,
    _add_audio_flags,
    _add_jobs_flags,
    _add_output_flags,
    _add_unattended_flags,
    _add_fleet_flags,
)


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
    parser.set_defaults(handler=commands.cmd_emulate)


# ------------------------------------------------------------------ commands that read results

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
        "--top", type=values.positive_int, default=10, metavar="N",
        help="slowest / most-attempted items and common errors listed (default: 10)",
    )  # fmt: skip
    report.add_argument(
        "--runs", type=values.count, default=10, metavar="N",
        help="latest runs listed in the text report (default: 10; 0: all)",
    )  # fmt: skip
    report.add_argument(
        "--price-per-hour", type=values.price, metavar="PRICE",
        help="also price the audio transcribed at PRICE an audio hour (the spend the runs "
        "recorded is shown either way)",
    )  # fmt: skip
    report.set_defaults(handler=commands.cmd_report)

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
    failed.set_defaults(handler=commands.cmd_failed)

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
    export.set_defaults(handler=commands.cmd_export)
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
    merge.set_defaults(handler=commands.cmd_merge)

    status = sub.add_parser(
        "status",
        help="is a run working on a results file, and how far is it?",
        description=(
            "Tell whether a run holds RESULTS (its pid, host, start time and command line "
            "without secrets) and how far it is (done of total, ok, failed, items/s, ETA, "
            "the learned rate limit), from the status file the run rewrites beside it every "
            "few seconds. A run that was killed is reported as stale: run it again to resume."
        ),
    )
    status.add_argument("results", metavar="RESULTS", help="the results JSONL file of a run")
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")
    status.set_defaults(handler=commands.cmd_status)
