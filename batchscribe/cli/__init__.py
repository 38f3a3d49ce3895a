"""The command line: argparse subcommands over the public API; exit codes; terminal concerns.

Exit codes (a contract; see README.md): 0 all ok, 1 some items failed or lines were invalid,
2 usage or configuration error, 3 aborted, 4 budget reached with work left, 75 results file busy,
130 interrupted.

- :mod:`~batchscribe.cli.values`: the flags' value parsers (counts, seconds, rates, durations);
- :mod:`~batchscribe.cli.parser`: the subcommands and their flag groups (the ``--help`` texts);
- :mod:`~batchscribe.cli.commands`: one handler per subcommand, the API key's reading;
- here: :func:`main`, which parses, dispatches and turns errors into exit codes.
"""

from __future__ import annotations

import gc
import os
import sys
import traceback
from collections.abc import Sequence

from batchscribe.cli.commands import DEFAULT_MAX_CONCURRENCY, KEY_ENV, read_api_key
from batchscribe.cli.parser import EMULATOR_PLANS, ENDPOINT_ENV, EPILOG, build_parser
from batchscribe.cli.values import parse_duration, parse_rate
from batchscribe.console import Console, Redactor, TerminalStream
from batchscribe.errors import EXIT_ABORTED, EXIT_INTERRUPTED, BatchscribeError

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "EMULATOR_PLANS",
    "ENDPOINT_ENV",
    "EPILOG",
    "KEY_ENV",
    "build_parser",
    "main",
    "parse_duration",
    "parse_rate",
    "read_api_key",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``batchscribe`` command; returns the exit code."""
    redact = Redactor([os.environ.get(KEY_ENV)])
    # Errors and a run's progress go to a stderr that may lose its terminal mid-run.
    console = Console(TerminalStream.wrap(sys.stderr), redact)
    args = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(emulate_flags="emulate" in args)
    ns = parser.parse_args(args)
    ns.argv = args  # (the status file's command line, without its secrets)
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
