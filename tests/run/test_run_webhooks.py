"""run --webhook-url: the emulator's signed deliveries wake the watcher; a delivery is
a hint (the job's state is read from the service before anything is downloaded), so a
lost, duplicated or forged one never loses or doubles a result."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from gembatch_async.emulator import EmulatorConfig, EmulatorThread, RunningEmulator

from ..helpers import cli_env, make_inputs, read_journal, run_cli

INPUTS = 3
LINES = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(
    emulator: RunningEmulator, tmp_path: Path, interval: float
) -> tuple[Any, float, list[str]]:
    names = [p.name for p in make_inputs(tmp_path, INPUTS, lines=LINES)]
    port = _free_port()
    args = [
        "run",
        *names,
        "--interval",
        str(interval),
        "--retry-max-delay",
        "0.05",
        "--webhook-url",
        f"http://127.0.0.1:{port}/gemini",
        "--webhook-listen",
        f"127.0.0.1:{port}",
        "--webhook-jwks-url",
        f"{emulator.base_url}/.well-known/jwks.json",
    ]
    started = time.monotonic()
    result = run_cli(args, cwd=tmp_path, env=cli_env(emulator), timeout=120)
    return result, time.monotonic() - started, names


def _assert_results_whole(tmp_path: Path, emulator: RunningEmulator, names: list[str]) -> None:
    for name in names:
        lines = (tmp_path / "results" / name).read_text().splitlines()
        assert len(lines) == LINES, name
    assert len(emulator.state()["batches"]) == INPUTS, "one job per input, none doubled"
    assert len(read_journal(tmp_path / "job-info.jsonl")) == INPUTS


def _outcomes(emulator: RunningEmulator) -> list[Any]:
    return [w["outcome"] for w in emulator.state()["webhooks"]]


def _emulator(faults: str = "") -> EmulatorThread:
    return EmulatorThread(EmulatorConfig(port=0, processing_seconds=1.0, webhook_faults=faults))


def test_a_delivery_downloads_without_waiting_for_the_long_poll(tmp_path: Path) -> None:
    """The fallback poll is 10 minutes away; the deliveries finish the run in seconds."""
    with _emulator() as emulator:
        result, elapsed, names = _run(emulator, tmp_path, interval=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert elapsed < 60, f"took {elapsed:.1f}s: the watcher waited for the poll"
        _assert_results_whole(tmp_path, emulator, names)
        assert _outcomes(emulator) == [200] * INPUTS, "each job's end delivered and taken"


@pytest.mark.promise("webhook-only-a-hint")
def test_a_lost_webhook_is_caught_by_the_fallback_poll(tmp_path: Path) -> None:
    with _emulator("lost") as emulator:
        result, _, names = _run(emulator, tmp_path, interval=1.5)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        _assert_results_whole(tmp_path, emulator, names)
        assert _outcomes(emulator) == ["lost"] * INPUTS


@pytest.mark.promise("webhook-only-a-hint")
def test_a_duplicate_delivery_is_harmless(tmp_path: Path) -> None:
    with _emulator("duplicate") as emulator:
        result, elapsed, names = _run(emulator, tmp_path, interval=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert elapsed < 60
        _assert_results_whole(tmp_path, emulator, names)
        assert _outcomes(emulator) == [200] * (2 * INPUTS)
        saved = [line for line in result.stdout.splitlines() if line.startswith("results in-")]
        assert len(saved) == INPUTS, "each input's results written once"
        assert not any(" already in " in line for line in saved)


@pytest.mark.promise("webhook-only-a-hint")
def test_a_badly_signed_delivery_is_refused_and_polling_still_finishes(tmp_path: Path) -> None:
    """401 to every forged delivery (the emulator retries them); the fallback poll,
    not the forgery, brings the results."""
    with _emulator("bad-signature") as emulator:
        result, _, names = _run(emulator, tmp_path, interval=1.5)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        _assert_results_whole(tmp_path, emulator, names)
        outcomes = _outcomes(emulator)
        # After run ends, the emulator's retries find the port closed: no answer at all.
        answered = [o for o in outcomes if isinstance(o, int)]
        assert answered, outcomes
        assert set(answered) == {401}, outcomes


@pytest.mark.parametrize("flag", ["--webhook-url", "--webhook-listen"])
def test_bad_webhook_options_are_a_usage_error(flag: str, tmp_path: Path) -> None:
    names = [p.name for p in make_inputs(tmp_path, 1)]
    value = "ftp://x" if flag == "--webhook-url" else "nowhere"
    extra = [] if flag == "--webhook-url" else ["--webhook-url", "https://example.com/h"]
    result = run_cli(
        ["run", *names, flag, value, *extra], cwd=tmp_path, env=cli_env(None, GEMINI_API_KEY="k")
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_readme_offline_example_runs_on_the_emulator_key_set(tmp_path: Path) -> None:
    """README: `--emulator run --webhook-url ...`: the built-in emulator's deliveries
    verify against its own key set without naming it, and finish the run at once."""
    names = [p.name for p in make_inputs(tmp_path, 2, lines=LINES)]
    port = _free_port()
    args = [
        "--emulator",
        "--emulator-processing-seconds",
        "1",
        "run",
        "--interval",
        "600",
        "--webhook-url",
        f"http://127.0.0.1:{port}/",
        "--webhook-listen",
        f"127.0.0.1:{port}",
        *names,
    ]
    started = time.monotonic()
    result = run_cli(args, cwd=tmp_path, env=cli_env(None), timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert time.monotonic() - started < 60
    assert all(len((tmp_path / "results" / n).read_text().splitlines()) == LINES for n in names)


def test_webhooks_with_vertex_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    names = [p.name for p in make_inputs(tmp_path, 1)]
    result = run_cli(
        ["--backend", "vertex", "run", *names, "--webhook-url", "https://example.com/h"],
        cwd=tmp_path,
        env=cli_env(None, GOOGLE_CLOUD_PROJECT="p", GOOGLE_CLOUD_LOCATION="us-central1"),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "works with the Gemini Developer API, not Vertex AI" in result.stderr
    assert "Traceback" not in result.stderr
    assert (
        not (tmp_path / "job-info.jsonl").exists()
        or read_journal(tmp_path / "job-info.jsonl") == []
    )


def test_a_taken_listen_port_is_a_usage_error_before_any_upload(tmp_path: Path) -> None:
    with socket.socket() as taken, _emulator() as emulator:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        names = [p.name for p in make_inputs(tmp_path, 1)]
        result = run_cli(
            [
                "run",
                *names,
                "--webhook-url",
                "https://example.com/h",
                "--webhook-listen",
                f"127.0.0.1:{port}",
            ],
            cwd=tmp_path,
            env=cli_env(emulator),
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"cannot listen for webhooks on 127.0.0.1:{port}" in result.stderr
        assert emulator.state()["files"] == [], "nothing uploaded"
