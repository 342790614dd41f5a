"""Tokens used: the sum of the answers' usageMetadata, as download, status and run report it.

A real CLI subprocess against the emulator over HTTP; the expected sums are taken from
the service's own output lines (``--keep-raw``), independently of the code under test.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from gembatch_async import TokenUsage, price_tokens
from gembatch_async._results._usage import UsageTally
from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import cli_env, finish_jobs, run_cli, write_jsonl

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real-gemini-batch"
#: Some requests fail (error lines carry no usage); gemini-2.5-flash thinks.
WITH_ERRORS = pytest.mark.parametrize(
    "emulator_config",
    [
        pytest.param(
            EmulatorConfig(port=0, processing_seconds=1.0, request_errors=0.3, fault_seed=3),
            id="errors",
        )
    ],
)
FIELDS = {
    "prompt": "promptTokenCount",
    "cached": "cachedContentTokenCount",
    "output": "candidatesTokenCount",
    "thinking": "thoughtsTokenCount",
    "tool_use": "toolUsePromptTokenCount",
}


def summed(lines: list[dict[str, Any]]) -> dict[str, int]:
    """Each usageMetadata field summed over the answers, as a reader of the raw output would."""
    usages = [line["response"]["usageMetadata"] for line in lines if "response" in line]
    sums = {name: sum(u.get(field, 0) for u in usages) for name, field in FIELDS.items()}
    return {"requests": len(usages), **sums}


def raw_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_usage_of_the_real_outputs_is_their_sum() -> None:
    """The real service's outputs (fixtures) sum to what their usageMetadata says."""
    for name in ("basic", "structured-output"):
        lines = raw_lines(FIXTURES / f"output-{name}.jsonl")
        tally = UsageTally()
        for line in lines:
            tally.add_response(line["response"])
        tokens = tally.usage().tokens
        expected = summed(lines)
        assert {k: getattr(tokens, k) for k in expected} == expected
        assert tokens.total == sum(
            line["response"]["usageMetadata"]["totalTokenCount"] for line in lines
        )


@pytest.mark.promise("costs-unknown")
def test_embedding_answers_count_their_token_count_or_are_without_usage() -> None:
    """An embedding answer's tokenCount (the SDK's SingleEmbedContentResponse) is its
    prompt; one without it is counted as an answer without usage (priced unknown)."""
    tally = UsageTally()
    tally.add_response({"embedding": {"values": [0.1]}, "tokenCount": 7})
    tally.add_response({"embedding": {"values": [0.2]}, "tokenCount": "5"})
    tally.add_response({"embedding": {"values": [0.3]}})
    usage = tally.usage()
    assert (usage.tokens.requests, usage.tokens.prompt, usage.without_usage) == (2, 12, 1)
    assert price_tokens(usage, "gemini-embedding-2").batch_usd is None


@pytest.mark.skipif(
    importlib.util.find_spec("genai_prices") is None, reason="genai-prices needs Python 3.11+"
)
@WITH_ERRORS
def test_download_reports_the_sum_of_the_answers_usage(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """download --json carries each file's tokens, equal to the sum over its output lines;
    status shows the same from the journal; the text names the cost at batch prices."""
    names = [write_jsonl(tmp_path / f"q{i}.jsonl", 12, tag="x" * (i * 40)).name for i in range(2)]
    env = cli_env(emulator)
    submitted = run_cli(["submit", "-m", "gemini-2.5-flash", *names], cwd=tmp_path, env=env)
    assert submitted.returncode == 0, submitted.stderr
    finish_jobs(emulator, 1.0)
    done = run_cli(["download", "--json", "--keep-raw"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    thinking_seen = set()
    for result in results:
        raw = raw_lines(tmp_path / result["raw_path"])
        assert any("error" in line for line in raw), "the scenario has error lines"
        thinking_seen |= {
            line["response"]["usageMetadata"].get("thoughtsTokenCount", 0)
            for line in raw
            if "response" in line
        }
        expected = summed(raw)
        tokens = result["usage"]["tokens"]
        assert {k: tokens[k] for k in expected} == expected
        assert result["cost"]["batch_usd"] > 0
    assert len(thinking_seen) > 2, "the emulator's answers vary in thinking tokens"

    status = run_cli(["status", "--json"], cwd=tmp_path, env=env)
    by_file = {r["path"]: r["usage"] for r in results}
    for line in status.stdout.splitlines():
        job = json.loads(line)
        assert job["results"]["usage"] == by_file[job["path"]]
        assert job["cost"]["batch_usd"] == next(
            r["cost"]["batch_usd"] for r in results if r["path"] == job["path"]
        )

    text = run_cli(["download", "--force"], cwd=tmp_path, env=env)
    total = sum((TokenUsage.from_dict(r["usage"]) or TokenUsage() for r in results), TokenUsage())
    lines = text.stdout.splitlines()
    assert lines[-1].startswith("downloaded 2, skipped 0, errors 0"), "the summary stays last"
    last = lines[-2]
    assert last.startswith(f"tokens: {total.tokens.prompt:,} in, {total.tokens.output:,} out")
    assert "at batch prices (interactive $" in last
    assert "genai-prices" in last
