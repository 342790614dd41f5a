"""Capacity without quota names (issue 16): the service's refusal of a create is generic,
so the tool counts the job window (and a token quota the user gives) ahead, and takes
any unnamed 429 on create as capacity: deferred in submit, waited out in run.

The emulator answers, by default, the body the real service sends (captured in
langchain4j/langchain4j#3942): no quota name, no retry delay.
"""

from __future__ import annotations

import io
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from google.genai import errors

from gembatch_async import SubmitSettings, UsageError
from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..emulator.test_emulator_support import MODEL, inline_src, no_retry, sync_client
from ..helpers import (
    assert_converged,
    cli_env,
    creates_reached,
    make_inputs,
    read_journal,
    run_cli,
    wait_until,
    write_jsonl,
)
from ..zygote import cli_popen

REFUSED = (
    "the service refused new jobs (429 without a reason; 4 of the project's jobs are unfinished)"
)
#: Retries end within a second: the jobs (processing_seconds) outlast them.
SHORT_RETRIES = ["--retry-max-delay", "0.05", "--retry-seconds", "1"]
RUN = ["run", "--interval", "0.2", "--capacity-probe", "0.2", *SHORT_RETRIES]


def _window(size: int, seconds: float) -> pytest.MarkDecorator:
    config = EmulatorConfig(port=0, max_unfinished_batches=size, processing_seconds=seconds)
    return pytest.mark.parametrize("emulator_config", [pytest.param(config, id=f"w{size}")])


def _uploads(emulator: RunningEmulator) -> list[dict[str, Any]]:
    return [f for f in emulator.state()["files"] if f["source"] == "UPLOADED"]


def _results(folder: Path) -> list[Path]:
    found = (folder / "results").glob("*.jsonl")
    return sorted(p for p in found if not p.name.endswith((".failed.jsonl", ".raw.jsonl")))


# -- the emulator says what the service says ---------------------------------------------


@_window(1, 300)
def test_window_refusal_is_the_captured_generic_body(emulator: RunningEmulator) -> None:
    """At the job window create answers 429 with a Help link only: no QuotaFailure, no
    RetryInfo, no Retry-After (langchain4j/langchain4j#3942)."""
    client = sync_client(emulator, retry_options=no_retry())
    client.batches.create(model=MODEL, src=inline_src())
    with pytest.raises(errors.ClientError) as info:
        client.batches.create(model=MODEL, src=inline_src())
    assert info.value.code == 429
    body = info.value.details
    assert body["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert body["error"]["message"].startswith("You exceeded your current quota")
    types = [d["@type"] for d in body["error"]["details"]]
    assert types == ["type.googleapis.com/google.rpc.Help"]
    assert info.value.response.headers.get("retry-after") is None


@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, storage_quota_bytes=10), id="s10")]
)
def test_storage_refusal_names_its_quota(emulator: RunningEmulator) -> None:
    """Only storage names itself: QuotaFailure file_storage_bytes, and a retry delay of
    int64-max seconds (alphaXiv/feedback#16, googleapis/python-genai#1172)."""
    client = sync_client(emulator, retry_options=no_retry())
    with pytest.raises(errors.ClientError) as info:
        client.files.upload(file=io.BytesIO(b"x" * 100), config={"mime_type": "text/plain"})
    details = {d["@type"].rsplit(".", 1)[-1]: d for d in info.value.details["error"]["details"]}
    violation = details["QuotaFailure"]["violations"][0]
    assert violation["quotaMetric"] == "generativelanguage.googleapis.com/file_storage_bytes"
    assert details["RetryInfo"]["retryDelay"] == "9223372036854775807s"


def test_injected_generic_429(emulator: RunningEmulator) -> None:
    """`429=generic` injects the generic body; a plain `429` keeps its Retry-After."""
    emulator.set_faults("create:1:429=generic")
    client = sync_client(emulator, retry_options=no_retry())
    with pytest.raises(errors.ClientError) as info:
        client.batches.create(model=MODEL, src=inline_src())
    assert [d["@type"] for d in info.value.details["error"]["details"]] == [
        "type.googleapis.com/google.rpc.Help"
    ]
    assert info.value.response.headers.get("retry-after") is None


# -- the tool holds against it -------------------------------------------------------------


@_window(4, 300)
def test_generic_refusal_at_the_window_defers_in_submit(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """8 files into a window of 4 the tool was not told of: 4 submitted, 4 deferred with
    what is known (no guessed quota name), exit 3, no upload left for the deferred."""
    names = [p.name for p in make_inputs(tmp_path, 8)]
    result = run_cli(
        ["submit", "-c", "2", *SHORT_RETRIES, *names], cwd=tmp_path, env=cli_env(emulator)
    )
    assert result.returncode == 3, result.stdout + result.stderr
    deferred = [line for line in result.stdout.splitlines() if "] deferred " in line]
    assert len(deferred) == 4, result.stdout
    assert all(REFUSED in line for line in deferred), result.stdout
    assert "] error " not in result.stdout
    assert "retrying create" not in result.stderr, "a refusal is capacity, not retried"
    # The refused files (at most 2 in flight) sent one create each; the gate then closed.
    assert emulator.state()["requests"]["create"]["count"] <= 6
    assert len(emulator.state()["batches"]) == 4
    used = {b["inputFile"] for b in emulator.state()["batches"]}
    assert {f["name"] for f in _uploads(emulator)} == used, "no upload left for deferred files"
    assert len(read_journal(tmp_path / "job-info.jsonl")) == 4


@_window(4, 300)
def test_a_counted_window_defers_before_any_upload(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """With --job-window 4 the tool counts the project's unfinished jobs (one listing) and
    starts no upload that cannot fit: 4 uploads, 4 creates, never a refused create."""
    names = [p.name for p in make_inputs(tmp_path, 8)]
    env = cli_env(emulator)
    result = run_cli(["submit", "--job-window", "4", *names], cwd=tmp_path, env=env)
    assert result.returncode == 3, result.stdout + result.stderr
    deferred = [line for line in result.stdout.splitlines() if "] deferred " in line]
    assert len(deferred) == 4
    assert all(
        "the job window is full: 4 of 4 jobs unfinished or starting" in line for line in deferred
    ), deferred
    requests = emulator.state()["requests"]
    assert requests["create"]["count"] == 4
    assert len(_uploads(emulator)) == 4
    again = run_cli(
        ["submit", *names], cwd=tmp_path, env=cli_env(emulator, GEMBATCH_JOB_WINDOW="4")
    )
    assert again.returncode == 3
    assert emulator.state()["requests"]["create"]["count"] == 4, "the window is still full"


@pytest.mark.promise("window-waits")
@_window(4, 2)
def test_generic_refusal_at_the_window_waits_in_run(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """run, with jobs that outlast the retry budget (2 s against 1 s): the refused files
    wait, every file ends with results, one batch each, no upload left."""
    names = [p.name for p in make_inputs(tmp_path, 8, lines=2)]
    result = run_cli([*RUN, "-c", "4", *names], cwd=tmp_path, env=cli_env(emulator), timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "] error " not in result.stdout
    assert "the service refused new jobs (429 without a reason" in result.stderr
    assert len(_results(tmp_path)) == 8
    assert len(emulator.state()["batches"]) == 8
    assert _uploads(emulator) == []


@pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, processing_seconds=0.5, fault_seed=5), id="storm")],
)
@pytest.mark.promise("create-429-never-fails")
def test_a_storm_of_generic_429s_on_create_ends_with_every_result(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """30% of creates refused with the generic body: run ends with every result and no
    duplicate batch; the journal records exactly the server's batches."""
    emulator.set_faults("create:0.3:429=generic", seed=5)
    paths = make_inputs(tmp_path, 10, lines=2)
    names = [p.name for p in paths]
    result = run_cli(
        # One attempt per step: a refused create is not retried as a rate limit, it waits.
        [*RUN, "--capacity-probe", "0.05", "--retry-attempts", "1", *names],
        cwd=tmp_path,
        env=cli_env(emulator),
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(_results(tmp_path)) == 10
    state = emulator.state()
    assert state["requests"]["create"]["count"] > 10, "some creates were refused"
    journal = read_journal(tmp_path / "job-info.jsonl")
    assert_converged(state, journal, names)


@pytest.mark.parametrize(
    "emulator_config",
    [
        pytest.param(
            EmulatorConfig(port=0, processing_seconds=0.3, enqueued_token_quota=100), id="t100"
        )
    ],
)
def test_a_file_larger_than_the_token_quota_fails_plainly(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Issue 17 item 10: a file that can never fit the quota the user gave fails at once
    (exit 1, nothing uploaded for it) instead of waiting forever; the others finish."""
    big = write_jsonl(tmp_path / "big.jsonl", 8)  # ~650 bytes: ~163 tokens
    small = write_jsonl(tmp_path / "small.jsonl", 1)
    args = [*RUN, "--enqueued-token-quota", "100", big.name, small.name]
    result = run_cli(args, cwd=tmp_path, env=cli_env(emulator), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if "] error big.jsonl" in line]
    assert len(failed) == 1, result.stdout
    assert "can never fit the enqueued-token quota" in failed[0]
    assert [p.name for p in _results(tmp_path)] == ["small.jsonl"]
    assert emulator.state()["requests"]["upload"]["count"] > 0
    assert all(f["displayName"] != "big.jsonl" for f in emulator.state()["files"])
    assert "Traceback" not in result.stdout + result.stderr


@_window(2, 300)
def test_run_probes_a_window_full_of_other_jobs_with_a_doubling_wait(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The window is full of jobs we do not own (another journal's), and the tool was told
    a larger window: run waits, saying how many of the project's jobs are unfinished, and
    one file probes after 0.2 s, 0.4 s, 0.8 s, ... (not every 0.2 s); it never fails."""
    others = [p.name for p in make_inputs(tmp_path / "other", 2)]
    env = cli_env(emulator)
    filled = run_cli(["submit", *others], cwd=tmp_path / "other", env=env)
    assert filled.returncode == 0, filled.stdout + filled.stderr
    name = make_inputs(tmp_path, 1)[0].name
    args = [*RUN, "--grace", "1", "--job-window", "1000", name]
    process = cli_popen(
        args,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(creates_reached(emulator, 3), timeout=60)  # our first create, refused
    time.sleep(5)
    creates = emulator.state()["requests"]["create"]["count"] - 3
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, out + err
    assert "] error " not in out
    assert "2 of the project's jobs are unfinished" in err, err
    # Probes 0.2, 0.6, 1.4, 3.0 s after the refusal: a fixed 0.2 s wait would make ~25.
    assert 2 <= creates <= 5, creates


def test_a_generic_429_on_upload_is_a_rate_limit_retried(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Off create, a 429 without a name is a rate limit: retried, every file submitted
    (exit 0), nothing deferred."""
    emulator.set_faults("upload:0.3:429=generic", seed=3)
    names = [p.name for p in make_inputs(tmp_path, 6)]
    args = ["submit", "--retry-max-delay", "0.05", "--retry-attempts", "20", *names]
    result = run_cli(args, cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "retrying upload" in result.stderr
    assert_converged(emulator.state(), read_journal(tmp_path / "job-info.jsonl"), names)


@_window(4, 0.5)
def test_run_counts_the_window_and_never_sends_a_create_that_cannot_fit(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """run --job-window 4 into a window of 4: files wait without uploading; each job of
    ours that ends frees its place at once (no listing needed: the probe wait is 60 s);
    exactly 8 creates, none refused, every result in."""
    names = [p.name for p in make_inputs(tmp_path, 8, lines=2)]
    args = ["run", "--interval", "0.2", "--job-window", "4", "--capacity-probe", "60", *names]
    result = run_cli(args, cwd=tmp_path, env=cli_env(emulator), timeout=50)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "the job window is full: 4 of 4 jobs unfinished or starting" in result.stderr
    assert emulator.state()["requests"]["create"]["count"] == 8, "no create was refused"
    assert len(_results(tmp_path)) == 8
    assert _uploads(emulator) == []


@pytest.mark.promise("create-429-never-fails")
def test_a_create_rate_limited_past_its_retries_is_deferred_not_failed(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Every create answers a 429 that says when to retry (a rate limit): retried, and
    when the retries run out the file is deferred (exit 3, upload deleted), never failed."""
    emulator.set_faults("create:1:429")
    names = [p.name for p in make_inputs(tmp_path, 2)]
    args = ["submit", "--retry-attempts", "2", "--retry-max-delay", "0.05", *names]
    result = run_cli(args, cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.count("] deferred ") == 2, result.stdout
    assert "retrying create" in result.stderr
    assert _uploads(emulator) == []
    assert emulator.state()["batches"] == []


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["--job-window", "0"], {}, id="window-0"),
        pytest.param([], {"GEMBATCH_JOB_WINDOW": "many"}, id="window-env"),
        pytest.param(["--enqueued-token-quota", "-5"], {}, id="quota-negative"),
        pytest.param([], {"GEMBATCH_ENQUEUED_TOKEN_QUOTA": "1e6"}, id="quota-env"),
    ],
)
def test_capacity_options_are_checked(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    """A bad window or quota (flag or environment) is a usage error, exit 2, one line."""
    name = make_inputs(tmp_path, 1)[0].name
    result = run_cli(["submit", *args, name], cwd=tmp_path, env=cli_env(None, **env))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_capacity_settings_are_checked() -> None:
    """The library refuses the same with a GembatchError."""
    for bad in ({"job_window": 0}, {"enqueued_token_quota": 0}, {"capacity_probe_seconds": 0}):
        with pytest.raises(UsageError):
            SubmitSettings(**bad)  # type: ignore[arg-type]
    assert SubmitSettings().job_window == 100
    assert SubmitSettings(job_window=None).job_window is None
