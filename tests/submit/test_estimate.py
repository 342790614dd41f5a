"""Before submitting: a dry run prints each file's estimated input tokens and what they
cost at batch prices, "unknown" (never $0) for a model the price source does not know,
and the figure --price gives. A real CLI subprocess against the emulator over HTTP."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from gembatch_async._submit._estimate import estimate_range
from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import cli_env, run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real-gemini-batch"
UNKNOWN_MODEL = "gemini-emulated-nobody-prices"
WITH_UNKNOWN_MODEL = pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, extra_models=(UNKNOWN_MODEL,)), id="unknown-model")],
)


#: genai-prices needs Python 3.11+; without it every figure is "unknown" (or --price's).
NEEDS_PRICES = pytest.mark.skipif(
    importlib.util.find_spec("genai_prices") is None, reason="genai-prices needs Python 3.11+"
)


def write_prompts(path: Path, texts: list[str]) -> Path:
    lines = [
        json.dumps({"key": f"k{i}", "request": {"contents": [{"parts": [{"text": text}]}]}})
        for i, text in enumerate(texts)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def estimate_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("estimate:"))


def genai_prices_batch_input_rate(model: str) -> Decimal:
    """The batch input rate genai-prices gives today, read through its own API."""
    genai_prices = importlib.import_module("genai_prices")  # optional on Python 3.10
    return Decimal(
        genai_prices.calc_price(
            genai_prices.Usage(input_tokens=1_000_000),
            model,
            provider_id="google",
            price_context={"processing": "batch"},
        ).total_price
    )


@NEEDS_PRICES
@pytest.mark.parametrize("command", ["submit", "run"])
def test_dry_run_prints_the_estimated_cost(
    emulator: RunningEmulator, tmp_path: Path, command: str
) -> None:
    """Each file's line and the total name the requests, ~tokens (characters / 4) and
    the input cost at the default model's batch rate; nothing is sent but the model check."""
    write_prompts(tmp_path / "a.jsonl", ["x" * 400, "y" * 40])  # 100 + 10 tokens
    write_prompts(tmp_path / "b.jsonl", ["z" * 4000])  # 1000 tokens
    result = run_cli(
        [command, "--dry-run", "a.jsonl", "b.jsonl"], cwd=tmp_path, env=cli_env(emulator)
    )
    assert result.returncode == 0, result.stderr
    assert "would submit a.jsonl (2 requests, " in result.stdout
    assert "; ~110 input tokens, input $" in result.stdout
    assert "; ~1,000 input tokens, input $" in result.stdout
    rate = genai_prices_batch_input_rate("gemini-3.1-flash-lite")
    expected = f"{float(rate * 1110 / 1_000_000):.6f}".rstrip("0")
    line = estimate_line(result.stdout)
    assert line.startswith(f"estimate: ~1,110 input tokens, input ${expected} at batch prices")
    assert "genai-prices" in line
    assert "characters / 4" in line
    assert emulator.state()["requests"]["create"]["count"] == 0
    assert not (tmp_path / "job-info.jsonl").exists()


@pytest.mark.promise("costs-unknown")
@NEEDS_PRICES
@WITH_UNKNOWN_MODEL
def test_an_unknown_model_costs_unknown_not_zero(emulator: RunningEmulator, tmp_path: Path) -> None:
    """A model genai-prices does not know is priced "unknown", with the reason; never $0."""
    write_prompts(tmp_path / "a.jsonl", ["x" * 400])
    result = run_cli(
        ["submit", "--dry-run", "-m", UNKNOWN_MODEL, "a.jsonl"], cwd=tmp_path, env=cli_env(emulator)
    )
    assert result.returncode == 0, result.stderr
    assert "~100 input tokens, input unknown at batch prices" in result.stdout
    line = estimate_line(result.stdout)
    assert "input unknown at batch prices (interactive unknown" in line
    assert f"does not know {UNKNOWN_MODEL}" in line
    assert not re.search(r"\$0(\.0*)?\b", result.stdout)
    as_json = run_cli(
        ["submit", "--dry-run", "--json", "-m", UNKNOWN_MODEL, "a.jsonl"],
        cwd=tmp_path,
        env=cli_env(emulator),
    )
    summary = json.loads(as_json.stdout.splitlines()[-1])
    assert summary["cost"]["batch_usd"] is None
    assert summary["input_tokens"] == 100


@WITH_UNKNOWN_MODEL
def test_a_price_override_changes_the_figure(emulator: RunningEmulator, tmp_path: Path) -> None:
    """--price gives the batch rates: 1,000 tokens at $2.5 per million is $0.0025, for a
    model the source knows and for one it does not; the line says the rates are given."""
    write_prompts(tmp_path / "a.jsonl", ["z" * 4000])
    for model in ("gemini-3.1-flash-lite", UNKNOWN_MODEL):
        result = run_cli(
            ["submit", "--dry-run", "-m", model, "a.jsonl", "--price", "input=2.5,output=10"],
            cwd=tmp_path,
            env=cli_env(emulator),
        )
        assert result.returncode == 0, result.stderr
        line = estimate_line(result.stdout)
        assert line.startswith("estimate: ~1,000 input tokens, input $0.0025 at batch prices")
        assert "batch rates from --price" in line
    bad = run_cli(
        ["submit", "--dry-run", "a.jsonl", "--price", "input=cheap"],
        cwd=tmp_path,
        env=cli_env(emulator),
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert "input=cheap: not a price" in bad.stderr


@NEEDS_PRICES
@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=1.0), id="fast")]
)
def test_count_tokens_counts_what_the_answers_then_report(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """--count-tokens asks countTokens once per request (nothing is created), and its
    total is the prompt tokens the answers report after the run."""
    write_prompts(tmp_path / "a.jsonl", ["x" * 401, "y" * 43, "z" * 7])
    write_prompts(tmp_path / "b.jsonl", ["w" * 999])
    env = cli_env(emulator)
    dry = run_cli(
        ["submit", "--dry-run", "--count-tokens", "a.jsonl", "b.jsonl"], cwd=tmp_path, env=env
    )
    assert dry.returncode == 0, dry.stderr
    counted = int(
        re.findall(r"^estimate: ([\d,]+) input tokens", dry.stdout, re.M)[0].replace(",", "")
    )
    assert "countTokens" in estimate_line(dry.stdout)
    state = emulator.state()
    assert state["requests"]["count"]["count"] == 4
    assert state["requests"]["create"]["count"] == 0
    ran = run_cli(
        ["run", "--json", "--interval", "0.3", "a.jsonl", "b.jsonl"], cwd=tmp_path, env=env
    )
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout.splitlines()[-1])
    assert summary["usage"]["tokens"]["prompt"] == counted


def test_count_tokens_refuses_more_calls_than_it_allows(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Past 10,000 requests, --count-tokens is a usage error (exit 2), nothing counted."""
    write_prompts(tmp_path / "big.jsonl", ["q"] * 10_001)
    result = run_cli(
        ["submit", "--dry-run", "--count-tokens", "big.jsonl"], cwd=tmp_path, env=cli_env(emulator)
    )
    assert result.returncode == 2, result.stderr
    assert "10,001 requests would take 10,001 countTokens calls" in result.stderr
    assert emulator.state()["requests"].get("count", {"count": 0})["count"] == 0


def test_the_estimate_is_within_30_percent_of_real_counts() -> None:
    """characters / 4 against the real service's promptTokenCount (fixtures): +29% on
    short questions, -18% on requests with a response schema; the README says so."""
    for name, low, high in (("basic", 1.0, 1.3), ("structured-output", 0.7, 1.0)):
        real = sum(
            json.loads(line)["response"]["usageMetadata"]["promptTokenCount"]
            for line in (FIXTURES / f"output-{name}.jsonl").read_text().splitlines()
        )
        estimate = estimate_range(str(FIXTURES / f"input-{name}.jsonl"))
        assert estimate.requests == 5
        assert low <= estimate.prompt_tokens / real <= high, (name, estimate.prompt_tokens, real)
