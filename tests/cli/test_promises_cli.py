"""README promises about the command line, each with a test that fails when it is broken.

The CLI runs as a real subprocess against the emulator on 127.0.0.1, as in
test_cli.py. The library side of the same promises is in test_promises.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import (
    cli_env,
    creates_reached,
    finish_jobs,
    make_inputs,
    read_journal,
    request_total,
    run_cli,
    wait_until,
    write_jsonl,
)
from ..zygote import cli_popen

FAST = ["--retry-max-delay", "0.05"]
PROGRESS = re.compile(r"^\[(\d+)/(\d+)\] (submitted|skipped|error) (\S+)")


def names_of(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


# -- "The first Ctrl-C (or SIGTERM) starts no new file and gives those in flight 15 s ..." --


@pytest.mark.slow
@pytest.mark.parametrize(
    "emulator_config",
    [
        pytest.param(
            EmulatorConfig(port=0, latency_ms=50, max_unfinished_batches=10_000), id="latency"
        )
    ],
)
@pytest.mark.promise("submit-stop-bound")
def test_sigterm_stops_like_ctrl_c_within_the_stated_bound(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """SIGTERM while uploads hang: exit 130 after the 15 s grace (not when they would end),
    every batch created recorded, no upload left behind, nothing new started."""
    names = names_of(make_inputs(tmp_path, 40))
    process = cli_popen(
        ["submit", "-c", "4", *FAST, *names],
        cwd=tmp_path,
        env=cli_env(emulator),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(creates_reached(emulator, 2))
        before = emulator.state()["requests"]["upload"]["count"]
        emulator.stall("upload", 120)  # uploads from now on hang far past the grace period
        # Every worker ends up waiting on a hung upload (each can send only one more).
        wait_until(lambda: emulator.state()["requests"]["upload"]["count"] >= before + 4)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=45)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert "stopping: no new files" in stderr
    assert "Traceback" not in stderr
    # In-flight files had their 15 s, then cleanup (quick here: deletes do not hang).
    assert 14.5 <= elapsed < 30, f"exited {elapsed:.1f}s after SIGTERM"
    assert "interrupted" in stdout.splitlines()[-1]
    state = emulator.state()
    journal = read_journal(tmp_path / "job-info.jsonl")
    assert {line["batch"]["name"] for line in journal} == {b["name"] for b in state["batches"]}
    used = {b["inputFile"] for b in state["batches"]}
    assert {f["name"] for f in state["files"]} == used
    assert 2 <= len(journal) < 40


# -- "n counts completions in the order they happen" --------------------------------------


@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, latency_ms=50), id="latency")]
)
@pytest.mark.promise("numbered-in-completion-order")
def test_progress_is_numbered_in_the_order_printed(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The recorded file listed last finishes first: printed [1/4] first, then 2, 3, 4."""
    names = names_of(make_inputs(tmp_path, 4))
    env = cli_env(emulator)
    assert run_cli(["submit", names[-1]], cwd=tmp_path, env=env).returncode == 0
    result = run_cli(["submit", "-c", "4", *names], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    printed = [m.groups() for m in map(PROGRESS.match, result.stdout.splitlines()) if m]
    assert [int(n) for n, _, _, _ in printed] == [1, 2, 3, 4]
    assert printed[0][2:] == ("skipped", names[-1])
    assert [name for *_, name in printed] != names


# -- "--dry-run: run every pre-flight check (including the model check)" ------------------


def test_dry_run_checks_the_model(emulator: RunningEmulator, tmp_path: Path) -> None:
    """--dry-run sends one models.get and nothing else; an unknown model exits 2."""
    names = names_of(make_inputs(tmp_path, 2))
    env = cli_env(emulator)
    ok = run_cli(["submit", "--dry-run", *names], cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("would submit") == 2
    assert emulator.state()["requests"]["get"]["count"] == 1
    assert request_total(emulator.state()) == 1
    unknown = run_cli(["submit", "--dry-run", "-m", "gemini-0-nope", *names], cwd=tmp_path, env=env)
    assert unknown.returncode == 2
    assert "model not found" in unknown.stderr
    assert "would submit" not in unknown.stdout
    assert emulator.state()["requests"]["upload"]["count"] == 0


# -- "a run whose files are all recorded sends nothing" -----------------------------------


@pytest.mark.promise("recorded-skipped")
def test_rerun_of_recorded_files_sends_no_request(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Everything already recorded: exit 0, every file skipped, no request at all."""
    names = names_of(make_inputs(tmp_path, 3))
    env = cli_env(emulator)
    assert run_cli(["submit", *names], cwd=tmp_path, env=env).returncode == 0
    before = emulator.state()["requests"]
    again = run_cli(["submit", *names], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert "submitted 0, skipped 3, failed 0" in again.stdout
    assert emulator.state()["requests"] == before


# -- "Retries and warnings go to stderr" ---------------------------------------------------


@pytest.mark.promise("retries-on-stderr")
def test_retries_and_warnings_go_to_stderr(emulator: RunningEmulator, tmp_path: Path) -> None:
    """stdout holds only progress and the summary; retries and warnings are on stderr."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    (tmp_path / "job-info.jsonl").write_text('{"input_file": "torn.js')  # a crash's torn line
    emulator.set_faults("create:1:400,delete:1:503")
    result = run_cli(
        ["submit", "--retry-attempts", "2", *FAST, "a.jsonl"], cwd=tmp_path, env=cli_env(emulator)
    )
    assert result.returncode == 1
    *progress, summary = result.stdout.splitlines()
    assert all(PROGRESS.match(line) for line in progress), result.stdout
    assert summary.startswith("submitted 0, skipped 0, failed 1")
    assert "warning: job-info.jsonl:1: removed an unfinished last line" in result.stderr
    assert "retrying cleanup of a.jsonl in " in result.stderr
    assert "warning: could not delete files/gba-" in result.stderr
    for word in ("retrying", "warning"):
        assert word not in result.stdout


# -- "cleanup: a file the service will not delete is reported and the rest carries on" ----


@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=0.5), id="fast")]
)
@pytest.mark.promise("cleanup-only-recorded")
def test_cleanup_reports_a_refused_delete_and_goes_on(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """One delete refused: its error line, the other uploads deleted, exit 1."""
    names = names_of(make_inputs(tmp_path, 3))
    env = cli_env(emulator)
    assert run_cli(["submit", *names], cwd=tmp_path, env=env).returncode == 0
    finish_jobs(emulator, 0.5)
    refused = read_journal(tmp_path / "job-info.jsonl")[0]["uploaded_file_name"]
    emulator.refuse_delete(refused)
    result = run_cli(["cleanup"], cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert f"error {refused} (" in result.stdout
    assert result.stdout.count("deleted files/") == 2
    uploads = [f["name"] for f in emulator.state()["files"] if f["source"] == "UPLOADED"]
    assert uploads == [refused]


# -- "--mime-type: sent with uploads; default application/jsonl" --------------------------


def test_mime_type_default_and_option(emulator: RunningEmulator, tmp_path: Path) -> None:
    """The emulator records what each upload declared: the default, then --mime-type's."""
    write_jsonl(tmp_path / "a.jsonl", 1)
    write_jsonl(tmp_path / "b.jsonl", 1)
    env = cli_env(emulator)
    assert run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    assert (
        run_cli(
            ["submit", "--mime-type", "text/plain", "b.jsonl"], cwd=tmp_path, env=env
        ).returncode
        == 0
    )
    # Uploads only: a job that already ended has its output file listed too.
    files = [f for f in emulator.state()["files"] if f["source"] == "UPLOADED"]
    declared = {f["displayName"]: f["mimeType"] for f in files}
    assert declared == {"a.jsonl": "application/jsonl", "b.jsonl": "text/plain"}


# -- "--retry-max-delay: longest single wait (server-requested delays included)" ----------


@pytest.mark.promise("retry-after-capped")
def test_retry_max_delay_caps_what_the_server_asks(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The emulator's 429 asks for 1 s; with --retry-max-delay 0.2 each wait is 0.2 s at most."""
    write_jsonl(tmp_path / "a.jsonl", 1)
    emulator.set_faults("upload:1:429")
    result = run_cli(
        ["submit", "--json", "--retry-attempts", "3", "--retry-max-delay", "0.2", "a.jsonl"],
        cwd=tmp_path,
        env=cli_env(emulator),
    )
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stdout.splitlines()]
    delays = [e["delay"] for e in events if e["event"] == "retrying"]
    assert len(delays) == 2
    assert max(delays) <= 0.2


# -- `--help` ------------------------------------------------------------------------------

HELP_MENTIONS = {
    (): ["--job-info", "--emulator", "--version", "submit", "status", "download", "cancel",
         "cleanup", "emulator", "show"],
    ("show",): ["--csv", "RESULTS_FILE"],
    ("submit",): ["--model", "--concurrency", "--force", "--retry-failed", "--dry-run", "--json",
                  "--mime-type", "--retry-attempts", "--retry-max-delay", "--retry-seconds",
                  "application/jsonl", "FILE"],
    ("status",): ["--watch", "--interval", "--json", "FILE"],
    ("download",): ["--out", "--force", "--json", "FILE"],
    ("cancel",): ["--json", "FILE"],
    ("cleanup",): ["--outputs", "--dry-run", "--json"],
    ("emulator",): ["--host", "--port", "--state-dir", "--latency-ms", "--processing-seconds",
                    "--faults", "--fault-seed", "--max-unfinished-batches",
                    "--storage-quota-bytes", "--expire-after", "--answer-invalid-lines",
                    "--refuse-field"],
}  # fmt: skip


@pytest.mark.parametrize(
    ("command", "mentions"),
    [pytest.param(c, m, id=" ".join(c) or "top") for c, m in HELP_MENTIONS.items()],
)
def test_help_of_every_command(
    tmp_path: Path, command: tuple[str, ...], mentions: list[str]
) -> None:
    """``--help`` exits 0 and lists the options the README documents."""
    result = run_cli([*command, "--help"], cwd=tmp_path, env=cli_env(None))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: gembatch-async")
    missing = [word for word in mentions if word not in result.stdout]
    assert not missing, f"--help of {command or 'gembatch-async'} does not mention {missing}"


GLOBAL_OPTIONS = ["--job-info", "--emulator", "--backend", "--project", "--location", "--bucket"]
JOURNAL_COMMANDS = ["submit", "run", "status", "download", "cancel", "cleanup"]


@pytest.mark.parametrize("command", JOURNAL_COMMANDS)
def test_help_of_each_command_lists_the_global_options(tmp_path: Path, command: str) -> None:
    """A command's --help names the global options (accepted after the command too), and
    every metavar is short: one word in capitals, no argparse-made ``RETRY_ATTEMPTS``."""
    result = run_cli([command, "--help"], cwd=tmp_path, env=cli_env(None))
    assert result.returncode == 0, result.stderr
    assert "global options (before or after the command)" in result.stdout
    missing = [option for option in GLOBAL_OPTIONS if option not in result.stdout]
    assert not missing, f"{command} --help does not mention {missing}"
    metavars = set(re.findall(r"--[a-z-]+ ([A-Z][A-Z_]*)\b", result.stdout))
    long = sorted(m for m in metavars if "_" in m or len(m) > 6)
    assert not long, f"{command} --help has long metavars {long}"


def test_help_shows_defaults_and_explains_host(tmp_path: Path) -> None:
    """--interval's default is shown by run and status; emulator's --host says what it is."""
    for command in ("run", "status"):
        text = " ".join(
            run_cli([command, "--help"], cwd=tmp_path, env=cli_env(None)).stdout.split()
        )
        assert re.search(r"--interval S .*?\(default: 30\)", text), text
    emulator = " ".join(
        run_cli(["emulator", "--help"], cwd=tmp_path, env=cli_env(None)).stdout.split()
    )
    assert re.search(r"--host HOST \w+.*?\(default: 127\.0\.0\.1\)", emulator), emulator


# -- "Files are read once, streaming ...: memory does not grow with file size" ------------


def _big_jsonl(path: Path, size: int) -> Path:
    request = json.dumps({"contents": [{"parts": [{"text": "x" * 1000}]}]})
    with path.open("w") as handle:
        for i in range(size // 1060 + 1):
            handle.write(f'{{"key": "k{i}", "request": {request}}}\n')
    return path


def _peak_rss_kib(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, int]:
    """(exit code, peak RSS in KiB) of the CLI, from the kernel's own accounting (wait4)."""
    with (cwd / "out.txt").open("w") as out:
        process = subprocess.Popen(  # a fresh interpreter: its memory is the measure
            [sys.executable, "-m", "gembatch_async", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss


@pytest.mark.promise("memory-flat")
@pytest.mark.slow
def test_cli_memory_does_not_grow_with_input_size(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """submit of a 72 MiB file peaks within 32 MiB of an 8 MiB one: validated, hashed and
    uploaded streaming, never held whole (holding the big file whole, even as bytes,
    would grow the peak by over 60 MiB). Measures the tool's process, not the emulator."""
    env = cli_env(emulator)
    _big_jsonl(tmp_path / "small.jsonl", 8 * 2**20)
    _big_jsonl(tmp_path / "big.jsonl", 72 * 2**20)
    small_code, small = _peak_rss_kib(["submit", "small.jsonl"], tmp_path, env)
    big_code, big = _peak_rss_kib(["submit", "big.jsonl"], tmp_path, env)
    assert (small_code, big_code) == (0, 0), (tmp_path / "out.txt").read_text()
    sizes = {f["displayName"]: f["sizeBytes"] for f in emulator.state()["files"]}
    assert sizes["big.jsonl"] == (tmp_path / "big.jsonl").stat().st_size  # really uploaded
    growth_mib = (big - small) / 1024
    print(f"CLI peak RSS: {small / 1024:.1f} MiB (8 MiB input), {big / 1024:.1f} MiB (72 MiB)")
    assert growth_mib < 32, f"peak RSS grew by {growth_mib:.1f} MiB for 64 MiB more input"
