"""The CLI as a user runs it: a real subprocess, real files, the emulator over HTTP."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import (
    TEST_API_KEY,
    assert_converged,
    cli_env,
    make_inputs,
    read_journal,
    request_total,
    run_cli,
    run_cli_process,
    write_jsonl,
)
from ..zygote import cli_run

FAST = ["--retry-max-delay", "0.05"]


def test_version_and_help(tmp_path: Path) -> None:
    """--version prints the version; --help exits 0; python -m works.

    Every command's --help is checked in test_promises_cli.py.
    """
    # The entry point itself (python -m gembatch_async), in a real process.
    result = run_cli_process(["--version"], cwd=tmp_path, env=cli_env(None), fresh=True)
    assert result.returncode == 0
    assert re.match(r"gembatch-async \d+\.\d+\.\d+", result.stdout)
    usage = run_cli(["--help"], cwd=tmp_path, env=cli_env(None))
    assert usage.returncode == 0
    assert usage.stdout.startswith("usage: gembatch-async")


@pytest.mark.promise("journal-synced", "submit-exit-codes")
def test_submit_prints_progress_and_summary(emulator: RunningEmulator, tmp_path: Path) -> None:
    """[n/total] lines for each file, a summary, exit 0, and a journal equal to the server."""
    paths = make_inputs(tmp_path, 6)
    result = run_cli(  # a smoke test of a whole submit in a real process
        ["submit", "-c", "3", *[p.name for p in paths]],
        cwd=tmp_path,
        env=cli_env(emulator),
        process=True,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    progress = [line for line in lines if line.startswith("[")]
    counts = sorted(int(line[1:].split("/", 1)[0]) for line in progress)
    assert counts == list(range(1, 7))
    assert all(re.match(r"\[\d+/6\] ", line) for line in progress)
    assert all(" submitted " in line and "-> batches/" in line for line in progress)
    assert lines[-1].startswith("submitted 6, skipped 0, failed 0 in ")
    assert_converged(
        emulator.state(), read_journal(tmp_path / "job-info.jsonl"), [p.name for p in paths]
    )

    again = run_cli(["submit", *[p.name for p in paths]], cwd=tmp_path, env=cli_env(emulator))
    assert again.returncode == 0
    assert again.stdout.count("skipped") == 7  # six lines and the summary
    assert "(already submitted as batches/" in again.stdout


def test_journal_line_shape(emulator: RunningEmulator, tmp_path: Path) -> None:
    """Each job line carries the original tool's fields plus ours."""
    write_jsonl(tmp_path / "a.jsonl", 4)
    assert run_cli(["submit", "./a.jsonl"], cwd=tmp_path, env=cli_env(emulator)).returncode == 0
    (line,) = read_journal(tmp_path / "job-info.jsonl")
    assert line["input_file"] == "a.jsonl"
    assert line["count"] == 4
    assert line["uploaded_file_name"].startswith("files/")
    assert len(line["sha256"]) == 64
    assert line["size_bytes"] == (tmp_path / "a.jsonl").stat().st_size
    assert line["model"] == "models/gemini-3.1-flash-lite"
    assert line["batch"]["name"].startswith("batches/")
    assert line["batch"]["state"] == "JOB_STATE_PENDING"
    assert line["batch"]["model"] == "models/gemini-3.1-flash-lite"
    assert {"display_name", "create_time", "update_time"} <= set(line["batch"])
    assert "submitted_at" in line


def test_json_output(emulator: RunningEmulator, tmp_path: Path) -> None:
    """--json prints one parseable event per line, the summary last."""
    paths = make_inputs(tmp_path, 3)
    result = run_cli(
        ["submit", "--json", *[p.name for p in paths]], cwd=tmp_path, env=cli_env(emulator)
    )
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events] == ["submitted"] * 3 + ["summary"]
    assert events[-1]["submitted"] == 3


@pytest.mark.promise("failed-create-deletes-upload", "submit-exit-codes")
def test_failed_file_exits_1(emulator: RunningEmulator, tmp_path: Path) -> None:
    """A 400 on create: error line, upload deleted, exit 1."""
    emulator.set_faults("create:1:400")
    write_jsonl(tmp_path / "a.jsonl", 2)
    result = run_cli(["submit", "a.jsonl", *FAST], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 1
    assert "[1/1] error a.jsonl: 400 INVALID_ARGUMENT" in result.stdout
    assert emulator.state()["files"] == []


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param(lambda d: None, "missing.jsonl: no such file", id="missing"),
        pytest.param(lambda d: (d / "missing.jsonl").mkdir(), "is a directory", id="directory"),
        pytest.param(lambda d: (d / "missing.jsonl").write_text("\n\n"), "is empty", id="empty"),
        pytest.param(
            lambda d: (d / "missing.jsonl").write_text('{"request": {}}\n{"request": {}}\n{oops\n'),
            "missing.jsonl:3: not valid JSON",
            id="bad-json",
        ),
        pytest.param(
            lambda d: (d / "missing.jsonl").write_text('{"key": "a", "req": {}}\n'),
            'missing.jsonl:1: missing "request" object',
            id="no-request",
        ),
        pytest.param(
            lambda d: (d / "missing.jsonl").write_text(
                "".join(
                    json.dumps({"key": k, "request": {"contents": [{"parts": [{"text": "q"}]}]}})
                    + "\n"
                    for k in "aba"
                )
            ),
            "missing.jsonl:3: duplicate key 'a' (first on line 1)",
            id="duplicate-key",
        ),
    ],
)
@pytest.mark.promise("bad-input-uploads-nothing", "submit-exit-codes")
def test_preflight_errors_send_nothing(
    emulator: RunningEmulator, tmp_path: Path, setup: object, expected: str
) -> None:
    """Each kind of bad input: its message, exit 2, zero requests reach the emulator."""
    write_jsonl(tmp_path / "good.jsonl", 2)
    setup(tmp_path)  # type: ignore[operator]
    result = run_cli(["submit", "good.jsonl", "missing.jsonl"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "nothing was submitted" in result.stderr
    assert request_total(emulator.state()) == 0
    assert (
        not (tmp_path / "job-info.jsonl").exists()
        or read_journal(tmp_path / "job-info.jsonl") == []
    )


@pytest.mark.promise("bad-input-uploads-nothing")
def test_every_problem_reported_at_once(emulator: RunningEmulator, tmp_path: Path) -> None:
    """Problems in several files are all listed, with file and line."""
    (tmp_path / "a.jsonl").write_text('{"request": {}}\n[1]\n')
    (tmp_path / "b.jsonl").write_text('{"request": 3}\n')
    result = run_cli(
        ["submit", "a.jsonl", "b.jsonl", "c.jsonl"], cwd=tmp_path, env=cli_env(emulator)
    )
    assert result.returncode == 2
    for text in (
        "a.jsonl:2: expected a JSON object",
        'b.jsonl:1: "request" must be',
        "c.jsonl: no such file",
    ):
        assert text in result.stderr


def test_missing_api_key(emulator: RunningEmulator, tmp_path: Path) -> None:
    """No GEMINI_API_KEY: exit 2, a clear message, nothing sent."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    env = cli_env(None, GOOGLE_GEMINI_BASE_URL=emulator.base_url)
    result = run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "GEMINI_API_KEY" in result.stderr
    assert request_total(emulator.state()) == 0


def test_retired_model_and_concurrency_usage(emulator: RunningEmulator, tmp_path: Path) -> None:
    """A retired model fails pre-flight (exit 2); --concurrency 0 is a usage error (exit 2)."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    env = cli_env(emulator)
    retired = run_cli(
        ["submit", "-m", "gemini-2.5-flash-lite-preview-06-17", "a.jsonl"], cwd=tmp_path, env=env
    )
    assert retired.returncode == 2
    assert "model not found" in retired.stderr
    zero = run_cli(["submit", "-c", "0", "a.jsonl"], cwd=tmp_path, env=env)
    assert zero.returncode == 2
    assert "--concurrency: must be at least 1" in zero.stderr
    assert emulator.state()["requests"]["upload"]["count"] == 0


def test_model_from_environment(emulator: RunningEmulator, tmp_path: Path) -> None:
    """GEMBATCH_MODEL sets the default model."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    env = cli_env(emulator, GEMBATCH_MODEL="gemini-3.5-flash")
    assert run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    assert emulator.state()["batches"][0]["model"] == "models/gemini-3.5-flash"


@pytest.mark.promise("dry-run-writes-nothing")
def test_dry_run_sends_no_upload(emulator: RunningEmulator, tmp_path: Path) -> None:
    """--dry-run checks and lists, uploads nothing."""
    paths = make_inputs(tmp_path, 2, lines=5)
    result = run_cli(
        ["submit", "--dry-run", *[p.name for p in paths]], cwd=tmp_path, env=cli_env(emulator)
    )
    assert result.returncode == 0
    assert result.stdout.count("would submit") == 2
    assert "(5 requests," in result.stdout
    assert emulator.state()["requests"]["upload"]["count"] == 0


@pytest.mark.parametrize(
    "emulator_config",
    [
        pytest.param(
            EmulatorConfig(port=0, faults="*:0.3:500,upload:0.2:429", fault_seed=3), id="faults"
        )
    ],
)
@pytest.mark.promise("key-never-shown")
def test_api_key_never_printed(emulator: RunningEmulator, tmp_path: Path) -> None:
    """The API key appears nowhere: stdout, stderr, journal, even with errors."""
    paths = make_inputs(tmp_path, 5)
    result = run_cli(
        ["submit", "--retry-attempts", "2", *FAST, *[p.name for p in paths]],
        cwd=tmp_path,
        env=cli_env(emulator),
    )
    (tmp_path / "bad.jsonl").write_text("nope\n")
    bad = run_cli(["submit", "bad.jsonl"], cwd=tmp_path, env=cli_env(emulator))
    invalid = run_cli(
        ["submit", "--force", paths[0].name],
        cwd=tmp_path,
        env=cli_env(emulator, GEMINI_API_KEY="invalid"),
    )
    journal = (
        (tmp_path / "job-info.jsonl").read_text() if (tmp_path / "job-info.jsonl").exists() else ""
    )
    for text in (result.stdout, result.stderr, bad.stdout, bad.stderr, invalid.stderr, journal):
        assert TEST_API_KEY not in text
    assert invalid.returncode == 2
    assert "API key not valid" in invalid.stderr


def test_emulator_quick_start(tmp_path: Path) -> None:
    """--emulator runs the whole job offline, with no API key, state beside the journal."""
    paths = make_inputs(tmp_path, 3)
    result = run_cli(
        ["--emulator", "submit", *[p.name for p in paths]], cwd=tmp_path, env=cli_env(None)
    )
    assert result.returncode == 0, result.stderr
    assert "submitted 3, skipped 0, failed 0" in result.stdout
    assert (tmp_path / ".gembatch-emulator").is_dir()
    again = run_cli(
        ["--emulator", "submit", *[p.name for p in paths]], cwd=tmp_path, env=cli_env(None)
    )
    assert "skipped 3" in again.stdout


def test_journal_is_never_an_input(emulator: RunningEmulator, tmp_path: Path) -> None:
    """``*.jsonl`` matches job-info.jsonl itself; it is left out, not submitted."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    env = cli_env(emulator)
    assert run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    result = run_cli(["submit", "a.jsonl", "job-info.jsonl"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "[1/1] skipped a.jsonl" in result.stdout


def test_closed_stdout_does_not_stop_the_run(emulator: RunningEmulator, tmp_path: Path) -> None:
    """``submit --json | head -1``: the reader leaves, the run still finishes and records."""
    names = [p.name for p in make_inputs(tmp_path, 8)]
    env = cli_env(emulator)
    command = f"{sys.executable} -m gembatch_async submit --json {' '.join(names)} | head -1"
    result = subprocess.run(
        command,
        shell=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(result.stdout)["event"] == "submitted"
    assert len(read_journal(tmp_path / "job-info.jsonl")) == 8
    assert "Traceback" not in result.stderr


def test_global_options_after_the_command(emulator: RunningEmulator, tmp_path: Path) -> None:
    """``submit --job-info other.jsonl a.jsonl`` records in other.jsonl; a global option given
    both before and after the command takes the one after; before alone still works."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    write_jsonl(tmp_path / "b.jsonl", 2)
    env = cli_env(emulator)
    after = run_cli(["submit", "--job-info", "other.jsonl", "a.jsonl"], cwd=tmp_path, env=env)
    assert after.returncode == 0, after.stderr
    assert [line["input_file"] for line in read_journal(tmp_path / "other.jsonl")] == ["a.jsonl"]
    assert not (tmp_path / "job-info.jsonl").exists()

    before = run_cli(["--job-info", "first.jsonl", "submit", "b.jsonl"], cwd=tmp_path, env=env)
    assert before.returncode == 0, before.stderr
    assert [line["input_file"] for line in read_journal(tmp_path / "first.jsonl")] == ["b.jsonl"]

    both = run_cli(
        ["--job-info", "first.jsonl", "status", "--json", "--job-info", "other.jsonl"],
        cwd=tmp_path,
        env=env,
    )
    assert both.returncode == 0, both.stderr
    assert [json.loads(line)["path"] for line in both.stdout.splitlines()] == ["a.jsonl"]
    assert not (tmp_path / "job-info.jsonl").exists()


def test_emulator_flag_after_the_command(tmp_path: Path) -> None:
    """``submit --emulator FILE`` runs offline, as ``--emulator submit FILE`` does."""
    write_jsonl(tmp_path / "a.jsonl", 1)
    result = run_cli(["submit", "--emulator", "a.jsonl"], cwd=tmp_path, env=cli_env(None))
    assert result.returncode == 0, result.stderr
    assert "using the built-in Gemini API emulator" in result.stderr
    assert (tmp_path / ".gembatch-emulator").is_dir()


REAL = Path(__file__).parents[1] / "fixtures" / "real-gemini-batch"


def _sdk_texts(path: Path) -> list[tuple[str, str]]:
    """(key, text) of each line as google-genai's own ``response.text`` reads it: the oracle."""
    from google.genai import types

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        (line["key"], types.GenerateContentResponse.model_validate(line["response"]).text or "")
        for line in lines
    ]


@pytest.mark.parametrize("name", ["output-basic.jsonl", "output-structured-output.jsonl"])
def test_show_prints_key_and_text_of_real_output(tmp_path: Path, name: str) -> None:
    """``show`` on the service's real output: one line per answer, in the file's order, the
    key, a tab and the same text the SDK's ``response.text`` gives, newlines as ``\\n``."""
    result = run_cli(["show", str(REAL / name)], cwd=tmp_path, env=cli_env(None))
    assert result.returncode == 0, result.stderr
    expected = _sdk_texts(REAL / name)
    assert any("\n" in text for _, text in expected)  # the escape is exercised
    escaped = [
        f"{key}\t" + text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
        for key, text in expected
    ]
    assert result.stdout.splitlines() == escaped


def test_show_csv_of_real_output(tmp_path: Path) -> None:
    """``show --csv``: a header, then key,text,error rows a CSV reader reads back exactly."""
    result = run_cli(
        ["show", "--csv", str(REAL / "output-basic.jsonl")], cwd=tmp_path, env=cli_env(None)
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout, newline="")))
    assert rows[0] == ["key", "text", "error"]
    assert rows[1:] == [[key, text, ""] for key, text in _sdk_texts(REAL / "output-basic.jsonl")]


def test_show_errors_embeddings_and_hostile_text(tmp_path: Path) -> None:
    """Errors show their code and message; an embedding its length and first values;
    thoughts are left out; control characters, line separators and a key with a newline
    never break one answer per line; a line that is no results line is named (exit 1)."""
    lines = [
        {"key": "a", "error": {"code": 13, "message": "An internal error has occurred."}},
        {"response": {"embedding": {"values": [0.5, -0.25, 0.125, 1.0]}}, "key": "b"},
        {
            "key": "c\nd",
            "response": {
                "candidates": [
                    {
                        "content": {
                            "parts": [
                                {"text": "thinking...", "thought": True},
                                {"text": "x\ty\r\u2028\x1b[31mz\\"},
                                {"text": "!"},
                            ]
                        },
                        "finishReason": "STOP",
                    }
                ]
            },
        },
        {"key": 7, "response": {"candidates": [{"finishReason": "SAFETY"}]}},
    ]
    path = tmp_path / "q.jsonl"
    text = "".join(json.dumps(line) + "\n" for line in lines) + "not json\n"
    path.write_text(text)
    result = run_cli(["show", "q.jsonl"], cwd=tmp_path, env=cli_env(None))
    assert result.returncode == 1
    assert result.stdout.split("\n") == [
        "a\t[error 13 INTERNAL: An internal error has occurred.]",
        "b\t[embedding of 4 values: 0.5, -0.25, 0.125, ...]",
        "c\\nd\tx\\ty\\r\\u2028\\x1b[31mz\\\\!",
        "7\t[no text: finish reason SAFETY]",
        "",
    ]
    assert result.stderr == "error: q.jsonl:5: not a results line: not valid JSON\n"

    # Bytes, not run_cli's text mode, whose universal newlines would turn the \r into \n.
    as_csv = cli_run(
        ["show", "--csv", "q.jsonl"], cwd=tmp_path, env=cli_env(None), capture_output=True
    )
    rows = list(csv.reader(io.StringIO(as_csv.stdout.decode("utf-8"), newline="")))
    assert rows[1] == ["a", "", "13 INTERNAL: An internal error has occurred."]
    assert rows[3] == ["c\nd", "x\ty\r\u2028\x1b[31mz\\!", ""]
    assert len(rows) == 5


def test_show_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(["show", "nothing.jsonl"], cwd=tmp_path, env=cli_env(None))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: nothing.jsonl: No such file or directory\n"
