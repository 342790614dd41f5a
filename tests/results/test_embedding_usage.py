"""Tokens and cost of a batch embedding run (issue 20): each answer's ``tokenCount``
(the SDK's ``SingleEmbedContentResponse``) is summed and priced with genai-prices when
it has batch rates for the model; otherwise the cost is "unknown" with the reason.

The real CLI against the emulator; the expected total is read from the output file the
emulator wrote (its stored copy, ``state_dir/blobs/<file id>``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from gembatch_async.emulator import EmulatorConfig, EmulatorThread

from ..helpers import cli_env, run_cli

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("genai_prices") is None, reason="genai-prices needs Python 3.11+"
)
RUN = ["run", "--interval", "0.2", "--retry-max-delay", "0.05"]


def write_embed_requests(path: Path, count: int) -> None:
    lines = [
        json.dumps(
            {
                "key": f"doc-{i}",
                "request": {
                    "content": {"parts": [{"text": f"document number {i} " + "word " * i}]},
                    "output_dimensionality": 4,
                },
            }
        )
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")


def output_token_total(state_dir: Path, output_file: str) -> int:
    """The sum of the tokenCount of every answer in the emulator's output file."""
    blob = state_dir / "blobs" / output_file.removeprefix("files/")
    rows = [json.loads(line) for line in blob.read_text().splitlines()]
    assert all("response" in row for row in rows)
    return sum(int(row["response"]["tokenCount"]) for row in rows)


@pytest.mark.parametrize(
    ("model", "priced"),
    [
        pytest.param("gemini-embedding-2", True, id="batch-rates"),
        pytest.param("gemini-embedding-001", False, id="no-batch-rates"),
    ],
)
def test_an_embedding_run_prints_the_tokens_of_its_answers(
    tmp_path: Path, model: str, priced: bool
) -> None:
    state_dir = tmp_path / "emulator"
    work = tmp_path / "work"
    work.mkdir()
    write_embed_requests(work / "docs.jsonl", 6)
    config = EmulatorConfig(port=0, processing_seconds=0.3, state_dir=state_dir)
    with EmulatorThread(config) as emulator:
        result = run_cli([*RUN, "-m", model, "docs.jsonl"], cwd=work, env=cli_env(emulator))
        assert result.returncode == 0, result.stdout + result.stderr
        (batch,) = emulator.state()["batches"]
    total = output_token_total(state_dir, str(batch["outputFile"]))
    assert total > 6
    spent = next(line for line in result.stdout.splitlines() if line.startswith("tokens: "))
    assert spent.startswith(f"tokens: {total:,} in, 0 out; cost "), spent
    assert "answers reported no tokens" not in spent
    if priced:
        assert spent.startswith(f"tokens: {total:,} in, 0 out; cost $"), spent
    else:  # genai-prices knows the model, but not at batch rates: unknown, and why
        assert "cost unknown at batch prices" in spent, spent
        assert f"has no batch rate for {model}" in spent, spent
