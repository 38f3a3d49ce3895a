"""Shards: --shard parsing for every scheduler, the partition's properties, real sharded runs,
and the README's Kubernetes, Slurm and GNU parallel snippets."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from conftest import REPO, cli_env, read_results
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscribe.cli import build_parser
from batchscribe.emulator import content_key
from batchscribe.items import LOCAL_FILE, Item, Problem
from batchscribe.run.dry_run import dry_run
from batchscribe.shard import (
    Shard,
    ShardError,
    ShardFilter,
    expand_path,
    in_shard,
    parse_shard,
    shard_of,
)

# --------------------------------------------------------------------------- --shard K/N


@pytest.mark.parametrize(
    ("text", "index", "count"),
    [("0/1", 0, 1), ("3/8", 3, 8), (" 2/4 ", 2, 4), ("0/1000", 0, 1000)],
)
def test_explicit_shard_parses(text: str, index: int, count: int) -> None:
    """--shard K/N names shard K of N, counted from 0."""
    assert parse_shard(text, {}) == Shard(index, count)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("4/4", "counted from 0, so the index must be 0 to 3"),
        ("9/4", "counted from 0"),
        ("-1/4", "whole number"),
        ("a/4", "whole number"),
        ("1/0", "at least 1"),
        ("1/x", "whole number"),
        ("1/2/3", "whole number"),
        ("3", "use --shard K/N"),
        ("", "use --shard K/N"),
        ("１/4", "whole number"),  # a full-width digit is not an index
    ],
)
def test_bad_explicit_shard_is_an_error_with_the_fix(text: str, message: str) -> None:
    """A malformed or out-of-range --shard fails with a message saying what to write."""
    with pytest.raises(ShardError, match=re.escape(message)):
        parse_shard(text, {})


def test_shard_rejects_an_impossible_index() -> None:
    """A Shard cannot be built with an index outside 0..count-1."""
    with pytest.raises(ShardError, match="out of range"):
        Shard(5, 5)


# --------------------------------------------------------------------------- --shard auto


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        # Kubernetes Indexed Job: the index only; the count comes from auto/N.
        ("auto/8", {"JOB_COMPLETION_INDEX": "3"}, Shard(3, 8)),
        ("auto/8", {"JOB_COMPLETION_INDEX": "0"}, Shard(0, 8)),
        # Slurm: numbered from 0 whatever the array's first id and step.
        ("auto", {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "0",
                  "SLURM_ARRAY_TASK_MAX": "7", "SLURM_ARRAY_TASK_COUNT": "8"}, Shard(5, 8)),
        ("auto/8", {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "0",
                    "SLURM_ARRAY_TASK_MAX": "7", "SLURM_ARRAY_TASK_COUNT": "8"}, Shard(5, 8)),
        ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1",
                  "SLURM_ARRAY_TASK_MAX": "8", "SLURM_ARRAY_TASK_COUNT": "8"}, Shard(2, 8)),
        ("auto", {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0",
                  "SLURM_ARRAY_TASK_MAX": "14", "SLURM_ARRAY_TASK_STEP": "2",
                  "SLURM_ARRAY_TASK_COUNT": "8"}, Shard(2, 8)),
        ("auto/4", {"SLURM_ARRAY_TASK_ID": "2"}, Shard(2, 4)),  # an old Slurm: no COUNT
        # AWS Batch: index and size.
        ("auto", {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AWS_BATCH_JOB_ARRAY_SIZE": "10"},
         Shard(0, 10)),
        ("auto/10", {"AWS_BATCH_JOB_ARRAY_INDEX": "9", "AWS_BATCH_JOB_ARRAY_SIZE": "10"},
         Shard(9, 10)),
        # GNU parallel: PARALLEL_SEQ counts from 1.
        ("auto/4", {"PARALLEL_SEQ": "1"}, Shard(0, 4)),
        ("auto/4", {"PARALLEL_SEQ": "4"}, Shard(3, 4)),
        ("AUTO/4", {"PARALLEL_SEQ": "2", "PARALLEL_JOBSLOT": "7"}, Shard(1, 4)),
    ],
)  # fmt: skip
def test_auto_shard_reads_each_scheduler(text: str, env: dict[str, str], expected: Shard) -> None:
    """--shard auto turns each scheduler's task index (and count) into a shard from 0."""
    shard = parse_shard(text, env)
    assert shard == expected
    assert "=" in shard.origin  # says which variable it came from


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("auto", {}, "no scheduler index in the environment"),
        ("auto/4", {"HOSTNAME": "x"}, "looked for JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID"),
        ("auto", {"JOB_COMPLETION_INDEX": "3"}, "pass it as --shard auto/N"),
        ("auto", {"PARALLEL_SEQ": "1"}, "pass it as --shard auto/N"),
        ("auto/8", {"JOB_COMPLETION_INDEX": "8"}, "out of range"),
        ("auto/4", {"PARALLEL_SEQ": "5"}, "PARALLEL_SEQ 1 to 4"),
        ("auto/4", {"PARALLEL_SEQ": "0"}, "out of range"),
        ("auto", {"AWS_BATCH_JOB_ARRAY_INDEX": "10", "AWS_BATCH_JOB_ARRAY_SIZE": "10"},
         "out of range"),
        ("auto/4", {"AWS_BATCH_JOB_ARRAY_INDEX": "1", "AWS_BATCH_JOB_ARRAY_SIZE": "10"},
         "the shard counts must agree"),
        ("auto/4", {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "8"},
         "the shard counts must agree"),
        ("auto", {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1",
                  "SLURM_ARRAY_TASK_MAX": "7", "SLURM_ARRAY_TASK_COUNT": "3"},
         "not evenly spaced"),
        ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0",
                  "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "4"},
         "not evenly spaced"),
        ("auto/4", {"JOB_COMPLETION_INDEX": "1", "PARALLEL_SEQ": "2"}, "ambiguous"),
        ("auto/4", {"JOB_COMPLETION_INDEX": "one"}, "JOB_COMPLETION_INDEX must be a whole number"),
        ("auto/0", {"JOB_COMPLETION_INDEX": "0"}, "at least 1"),
    ],
)  # fmt: skip
def test_auto_shard_errors_say_what_is_wrong(text: str, env: dict[str, str], message: str) -> None:
    """--shard auto fails clearly when no index is set, N is missing, or the index is off."""
    with pytest.raises(ShardError, match=re.escape(message)):
        parse_shard(text, env)


def test_empty_scheduler_variable_counts_as_unset() -> None:
    """An exported but empty index variable does not make --shard auto ambiguous."""
    env = {"JOB_COMPLETION_INDEX": "", "PARALLEL_SEQ": "2"}
    assert parse_shard("auto/2", env) == Shard(1, 2)


# --------------------------------------------------------------------------- paths


def test_expand_path_fills_shard_and_count() -> None:
    """{shard} becomes K and {shards} becomes N; other braces are left alone."""
    shard = Shard(3, 8)
    assert expand_path("r.{shard}-of-{shards}.jsonl", shard) == "r.3-of-8.jsonl"
    assert expand_path("/x/{other}/r.jsonl", shard) == "/x/{other}/r.jsonl"
    assert expand_path("r.jsonl", None) == "r.jsonl"


def test_expand_path_without_a_shard_is_an_error() -> None:
    """A path naming {shard} without --shard is an error, not a file literally named {shard}."""
    with pytest.raises(ShardError, match=re.escape("--log-file 'r.{shard}.log' names {shard}")):
        expand_path("r.{shard}.log", None, option="--log-file")


# --------------------------------------------------------------------------- the partition

ids = st.lists(st.text(min_size=0, max_size=40), unique=True, max_size=60)


@settings(max_examples=200, deadline=None)
@given(ids=ids, count=st.integers(1, 17))
def test_shards_are_disjoint_and_cover_every_id(ids: list[str], count: int) -> None:
    """Every id belongs to exactly one of the N shards."""
    for item_id in ids:
        owners = [k for k in range(count) if in_shard(item_id, Shard(k, count))]
        assert owners == [shard_of(item_id, count)]


@settings(max_examples=100, deadline=None)
@given(ids=ids, count=st.integers(1, 9), data=st.data())
def test_partition_is_stable_under_reordering(ids: list[str], count: int, data: Any) -> None:
    """A shard takes the same items from a manifest in any order."""
    reordered = data.draw(st.permutations(ids))
    for k in range(count):
        shard = Shard(k, count)
        first = {e.id for e in ShardFilter(map(_item, ids), shard) if isinstance(e, Item)}
        second = {e.id for e in ShardFilter(map(_item, reordered), shard) if isinstance(e, Item)}
        assert first == second


def test_partition_is_pinned_across_versions() -> None:
    """The hash never changes between versions: a changed one would re-send finished items."""
    expected = {"clip-000": [1, 2, 3, 7, 888], "2019-weather": [1, 1, 2, 4, 558],
                "héllo": [0, 0, 0, 0, 75], "": [1, 2, 3, 7, 893]}  # fmt: skip
    for item_id, shards in expected.items():
        assert [shard_of(item_id, n) for n in (2, 3, 4, 8, 1000)] == shards


def test_partition_is_balanced() -> None:
    """Similar ids spread evenly: no shard gets much more than its share."""
    counts = Counter(shard_of(f"archive/2019/clip-{i:05d}.wav", 8) for i in range(8000))
    assert sorted(counts) == list(range(8))
    assert max(counts.values()) < 1000 * 1.15
    assert min(counts.values()) > 1000 * 0.85


def _item(item_id: str) -> Item:
    return Item(item_id, f"/a/{item_id}.wav", LOCAL_FILE, {}, None, "m.jsonl:1")


def test_filter_reports_bad_lines_in_shard_zero_only() -> None:
    """Shard 0 passes bad lines on; the others hide them and count how many."""
    entries: list[Item | Problem] = [_item(f"c{i}") for i in range(20)]
    entries.insert(5, Problem("m.jsonl", 6, "not JSON"))
    zero = list(ShardFilter(entries, Shard(0, 3)))
    assert [e for e in zero if isinstance(e, Problem)] == [entries[5]]
    for k in (1, 2):
        shard_filter = ShardFilter(entries, Shard(k, 3))
        assert not [e for e in shard_filter if isinstance(e, Problem)]
        assert shard_filter.hidden_problems == 1


def test_filter_close_closes_the_reader() -> None:
    """Closing the filter closes the manifest reader under it (its open files)."""
    closed = []

    def reader() -> Any:
        try:
            yield from (_item(f"c{i}") for i in range(100))
        finally:
            closed.append(True)

    shard_filter = ShardFilter(reader(), Shard(0, 2))
    next(iter(shard_filter))
    shard_filter.close()
    assert closed == [True]


# --------------------------------------------------------------------------- real runs


def _shard_ids(out: Path) -> list[str]:
    items, _ = read_results(out)
    return [r["id"] for r in items]


def test_four_shards_send_every_item_exactly_once(
    tmp_path: Path,
    emulator: Callable[..., Any],
    make_archive: Callable[..., Any],
    spawn_cli: Callable[..., subprocess.Popen[str]],
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """Four concurrent shard processes send each item once; their merged results hold each once."""
    emu = emulator(latency_ms=20)
    archive = make_archive(tmp_path, 40)
    with archive.manifest.open("ab") as stream:
        stream.write(b"{not json\n")
    out = "results.{shard}.jsonl"
    procs = [
        spawn_cli("run", archive.manifest, "--out", out, "--shard", f"{k}/4", "-j", "4",
                  "--endpoint", emu.endpoint(), "--no-progress")
        for k in range(4)
    ]  # fmt: skip
    outputs = [proc.communicate(timeout=60) for proc in procs]
    codes = [proc.returncode for proc in procs]
    assert codes == [1, 0, 0, 0], outputs  # only shard 0 reports (and counts) the bad line
    assert "manifest.jsonl:41:" in outputs[0][1]
    for _, stderr in outputs[1:]:
        assert "manifest.jsonl:41:" not in stderr
        assert "1 bad manifest line(s) skipped; shard 0 reports them" in stderr

    per_shard = [_shard_ids(tmp_path / f"results.{k}.jsonl") for k in range(4)]
    merged = Counter(i for ids in per_shard for i in ids)
    assert merged == Counter(archive.ids)  # every result present, once
    assert all(per_shard), "a shard got no items: the partition is degenerate"
    for k, ids in enumerate(per_shard):
        assert all(shard_of(i, 4) == k for i in ids)
    by_content = emu.stats()["by_content"]
    sent = {i: by_content.get(content_key(p.read_bytes()), 0) for i, p in archive.paths.items()}
    assert set(sent.values()) == {1}, sent  # every item sent exactly once over the fleet
    merge = run_cli("merge", "results.*.jsonl", "--out", "all.jsonl")
    assert merge.returncode == 0, merge.stderr
    merged_items, merged_runs = read_results(tmp_path / "all.jsonl")
    assert sorted(r["id"] for r in merged_items) == sorted(archive.ids)
    assert len(merged_runs) == 4

    # The same shards over the manifest in reverse order: each finds all its items done.
    lines = archive.manifest.read_bytes().splitlines(keepends=True)
    reordered = tmp_path / "reordered.jsonl"
    reordered.write_bytes(b"".join(reversed(lines[:-1])))
    procs = [
        spawn_cli("run", reordered, "--out", out, "--shard", f"{k}/4",
                  "--endpoint", emu.endpoint(), "--no-progress")
        for k in range(4)
    ]  # fmt: skip
    for k, proc in enumerate(procs):
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert f"skipped (done earlier): {len(per_shard[k])} " in stdout
    assert emu.stats()["requests"] == len(archive.ids)  # nothing sent twice


def test_auto_shard_from_the_environment_names_the_results_file(
    tmp_path: Path,
    emulator: Callable[..., Any],
    make_archive: Callable[..., Any],
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """--shard auto/N reads the Indexed Job's index and fills {shard} in --out and --log-file."""
    emu = emulator()
    archive = make_archive(tmp_path, 6)
    proc = run_cli(
        "run", archive.manifest, "--out", "r.{shard}.jsonl", "--shard", "auto/2",
        "--log-file", "log.{shard}-of-{shards}.txt", "--endpoint", emu.endpoint(),
        "--no-progress", env={"JOB_COMPLETION_INDEX": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "shard 1 of 2 (JOB_COMPLETION_INDEX=1): results in r.1.jsonl" in proc.stderr
    ids = _shard_ids(tmp_path / "r.1.jsonl")
    assert sorted(ids) == sorted(i for i in archive.ids if shard_of(i, 2) == 1)
    assert (tmp_path / "log.1-of-2.txt").stat().st_size > 0
    assert not (tmp_path / "r.{shard}.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--shard", "auto"], {}, "no scheduler index in the environment"),
        (["--shard", "auto"], {"JOB_COMPLETION_INDEX": "0"}, "pass it as --shard auto/N"),
        (["--shard", "4/4"], {}, "must be 0 to 3"),
        ([], {}, "names {shard}, which only --shard fills in"),
    ],
)
def test_shard_errors_exit_2_before_anything_is_written(
    tmp_path: Path,
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
    make_archive: Callable[..., Any],
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    """A --shard that names no shard, or {shard} without --shard, exits 2 and writes nothing."""
    archive = make_archive(tmp_path, 2)
    proc = run_cli(
        "run", archive.manifest, "--out", "r.{shard}.jsonl", *args,
        "--endpoint", "http://127.0.0.1:9/", env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not list(tmp_path.glob("r.*"))


def test_dry_run_counts_only_the_shards_items(
    tmp_path: Path,
    make_archive: Callable[..., Any],
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """A sharded --dry-run counts that shard's items; the shards' counts add up to the total."""
    archive = make_archive(tmp_path, 30)
    with archive.manifest.open("ab") as stream:
        stream.write(b"[]\n")
    expected = Counter(shard_of(i, 3) for i in archive.ids)
    plans = [
        dry_run([str(archive.manifest)], str(tmp_path / f"r.{k}.jsonl"), retry_failed=False,
                rescan_changed=False, shard=Shard(k, 3))
        for k in range(3)
    ]  # fmt: skip
    assert [sum(p.actions.values()) for p in plans] == [expected[k] for k in range(3)]
    assert [p.invalid for p in plans] == [1, 0, 0]  # bad lines: shard 0 only, as in a run
    proc = run_cli("run", archive.manifest, "--out", "r.{shard}.jsonl", "--shard", "2/3",
                   "--dry-run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"items: {expected[2]} " in proc.stdout


# --------------------------------------------------------------------------- README snippets


def _readme_section() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"\n## Beyond one machine\n(.*?)\n## ", text, re.S)
    assert match, "README has no 'Beyond one machine' section"
    return match.group(1)


def _block(lang: str) -> str:
    blocks = re.findall(r"```" + lang + r"\n(.*?)```", _readme_section(), re.S)
    assert len(blocks) == 1, f"expected one {lang} block, found {len(blocks)}"
    return str(blocks[0])


def _check_run_flags(args: list[str]) -> Any:
    ns = build_parser().parse_args(["run", *args])
    assert "{shard}" in ns.out, "each shard must write its own results file"
    return ns


def test_readme_kubernetes_job_is_an_indexed_job_running_a_sharded_batchscribe() -> None:
    """The README's Indexed Job parses, matches N to --shard auto/N and keys from a Secret."""
    job = yaml.safe_load(_block("yaml"))
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    count = spec["completions"]
    assert isinstance(count, int) and spec["parallelism"] <= count
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    (container,) = pod["containers"]
    rules = spec["podFailurePolicy"]["rules"]
    for rule in rules:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == container["name"]
    assert any(rule["action"] == "FailIndex" for rule in rules) == ("backoffLimitPerIndex" in spec)
    # configuration errors (2) and aborts (3) do not fix themselves: their index fails at once
    failing = {c for r in rules if r["action"] == "FailIndex" for c in r["onExitCodes"]["values"]}
    assert {2, 3} <= failing and not failing & {4, 75, 130}  # (those resume when retried)
    assert isinstance(spec["backoffLimitPerIndex"], int) and spec["backoffLimitPerIndex"] > 0
    command = container["command"]
    assert command[:2] == ["batchscribe", "run"]
    ns = _check_run_flags(command[2:])
    assert ns.shard == f"auto/{count}"
    last = parse_shard(ns.shard, {"JOB_COMPLETION_INDEX": str(count - 1)})
    assert last == Shard(count - 1, count)
    key = {e["name"]: e for e in container["env"]}["SMALLEST_API_KEY"]
    assert set(key["valueFrom"]) == {"secretKeyRef"}
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert mounts <= {v["name"] for v in pod["volumes"]}
    results_mount = next(m for m in container["volumeMounts"] if ns.out.startswith(m["mountPath"]))
    assert not results_mount.get("readOnly")


def _script_commands(script: str) -> list[list[str]]:
    """The batchscribe command lines of a shell script (continuations joined)."""
    joined = script.replace("\\\n", " ")
    return [
        shlex.split(line)
        for line in joined.splitlines()
        if line.strip().startswith(("batchscribe ", "parallel "))
    ]


def test_readme_slurm_script_is_valid_bash_and_shards_by_the_array() -> None:
    """The README's sbatch script passes bash -n and its array tasks map onto all N shards."""
    script = _block("bash")
    assert script.startswith("#!/bin/bash\n")
    proc = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"^#SBATCH --array=(\d+)-(\d+)$", script, re.M)
    assert match, "the script needs a plain --array=A-B range"
    first, last = int(match.group(1)), int(match.group(2))
    ((program, *args),) = _script_commands(script)
    assert program == "batchscribe"
    ns = _check_run_flags(args)
    count = last - first + 1
    shards = set()
    for task in range(first, last + 1):
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(first),
               "SLURM_ARRAY_TASK_MAX": str(last), "SLURM_ARRAY_TASK_COUNT": str(count)}  # fmt: skip
        shards.add(parse_shard(ns.shard, env))
    assert shards == {Shard(k, count) for k in range(count)}


def _parallel_line() -> tuple[str, list[str], list[str], list[str]]:
    line = _block("sh").strip()
    assert "\n" not in line
    words = shlex.split(line)
    assert words[0] == "parallel"
    start = words.index("batchscribe")
    end = words.index(":::")
    return line, words[1:start], words[start:end], words[end + 1 :]


def test_readme_parallel_line_runs_each_shard_once() -> None:
    """The README's GNU parallel line is valid shell and its N jobs map onto shards 0..N-1."""
    line, options, command, arguments = _parallel_line()
    proc = subprocess.run(["bash", "-n", "-c", line], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "-N0" in options  # the ::: arguments only count the jobs: none is added to the command
    ns = _check_run_flags(command[2:])
    count = len(arguments)
    shards = {parse_shard(ns.shard, {"PARALLEL_SEQ": str(seq)}) for seq in range(1, count + 1)}
    assert shards == {Shard(k, count) for k in range(count)}


@pytest.mark.skipif(shutil.which("parallel") is None, reason="GNU parallel is not installed")
def test_readme_parallel_line_really_runs(
    tmp_path: Path,
    emulator: Callable[..., Any],
    make_archive: Callable[..., Any],
) -> None:
    """Run as written (with our manifest and emulator), the parallel line fills every shard."""
    batchscribe = Path(sys.executable).with_name("batchscribe")
    if not batchscribe.exists():
        pytest.skip(f"no batchscribe script beside {sys.executable}")
    emu = emulator()
    archive = make_archive(tmp_path, 12)
    line, *_ = _parallel_line()
    line = line.replace(" archive.jsonl ", f" {shlex.quote(str(archive.manifest))} ")
    line = line.replace("batchscribe run", f"batchscribe run --endpoint {emu.endpoint()}")
    env = cli_env({"PATH": f"{batchscribe.parent}:/usr/bin:/bin", "HOME": str(tmp_path)})
    proc = subprocess.run(
        ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    files = sorted(tmp_path.glob("results.*.jsonl"))
    assert [f.name for f in files] == [f"results.{k}.jsonl" for k in range(4)]
    merged = Counter(i for f in files for i in _shard_ids(f))
    assert merged == Counter(archive.ids)


def test_readme_documents_the_shard_flag_in_the_command_table() -> None:
    """The command-line table lists --shard, and the section names every scheduler variable."""
    text = (REPO / "README.md").read_text()
    assert "| `--shard K/N` |" in text
    section = _readme_section()
    for var in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID", "AWS_BATCH_JOB_ARRAY_INDEX",
                "AWS_BATCH_JOB_ARRAY_SIZE", "PARALLEL_SEQ"):  # fmt: skip
        assert var in section
