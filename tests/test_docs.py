"""Docs that cannot drift: README flags exist, the README's commands parse, --help is complete."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from batchscribe.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

#: Flags the README shows that belong to other programs (Slurm, systemctl, ruff).
FOREIGN = {
    "--array", "--check", "--cpus-per-task", "--job-name", "--mem", "--now", "--output",
    "--soak", "--time",
}  # fmt: skip


def _code_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced code block in README.md."""
    blocks: list[tuple[str, str]] = []
    lang: str | None = None
    body: list[str] = []
    for line in README.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                blocks.append((lang, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def _all_flags() -> set[str]:
    flags = {o for a in build_parser()._actions for o in a.option_strings}
    for sub in _subparsers().values():
        flags.update(o for a in sub._actions for o in a.option_strings)
    return flags


def test_every_flag_the_readme_names_exists() -> None:
    """A flag documented in README.md is a flag of some batchscribe command."""
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", README)) - FOREIGN
    missing = sorted(named - _all_flags())
    assert not missing, f"README.md names flags no command has: {missing}"


def test_every_run_flag_is_documented_in_the_readme() -> None:
    """Every `run` flag appears in README.md, so users can find it."""
    run = _subparsers()["run"]
    flags = {o for a in run._actions for o in a.option_strings if o.startswith("--")}
    flags -= {"--help"}
    undocumented = sorted(f for f in flags if f not in README)
    assert not undocumented, f"run flags missing from README.md: {undocumented}"


def test_readme_batchscribe_commands_parse() -> None:
    """Every `batchscribe ...` command line in README code blocks parses with the real parser."""
    parser = build_parser()
    commands = 0
    for lang, block in _code_blocks():
        if lang not in {"", "sh", "console", "cron", "bash"}:
            continue
        for raw in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|\||;", raw):
                words = part.split()
                at = [i for i, w in enumerate(words) if Path(w).name == "batchscribe"]
                if not at:
                    continue
                args = []
                for word in words[at[0] + 1 :]:
                    if word in {"&", ":::"} or word.startswith((">", "2>", "#")):  # (#: comment)
                        break
                    args.append(word.strip("'\""))
                if not args or args[0] in {"--help", "--version"} or "[options]" in args:
                    continue
                try:
                    parser.parse_args(args)
                except SystemExit as exc:  # argparse exits 2 on a bad command line
                    raise AssertionError(f"README command does not parse: {part.strip()}") from exc
                commands += 1
    assert commands >= 10, commands


def test_help_of_every_command_prints_and_lists_exit_codes() -> None:
    """`batchscribe --help` and each command's --help work; the exit codes are in the help."""
    out = subprocess.run([sys.executable, "-m", "batchscribe", "--help"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "75 ", "130 "):
        assert f"\n  {code}" in out
    for name in _subparsers():
        proc = subprocess.run([sys.executable, "-m", "batchscribe", name, "--help"],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert proc.returncode == 0, (name, proc.stderr)
        assert f"batchscribe {name}" in proc.stdout


def test_readme_exit_code_table_matches_the_code() -> None:
    """The README's exit-code table lists exactly the codes batchscribe.errors defines."""
    from batchscribe import errors

    defined = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    table = re.search(r"### Exit codes\n(.*?)\n## ", README, re.S)
    assert table
    documented = {int(c) for c in re.findall(r"^\| (\d+) \|", table.group(1), re.M)}
    assert documented == defined
