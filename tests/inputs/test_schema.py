"""Pre-flight checks every request against the API's request schema."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gembatch_async import _schema_tables
from gembatch_async._inputs import scan_file
from gembatch_async._schema import GENERATE, check_request
from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import cli_env, finish_jobs, read_journal, request_total, run_cli

REPO = Path(__file__).resolve().parents[2]
TEXT = [{"parts": [{"text": "hi"}]}]


def line(key: str = "k", **request: Any) -> str:
    return json.dumps({"key": key, "request": {"contents": TEXT, **request}})


def problems_of(tmp_path: Path, *lines: str, schema_check: bool = True) -> list[str]:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(text + "\n" for text in lines))
    _, problems = scan_file(str(path), schema_check=schema_check)
    return [str(p) for p in problems]


def test_misspelled_field(tmp_path: Path) -> None:
    """A misspelled field is named with file, line and path, and a likely fix."""
    found = problems_of(tmp_path, line(), line("b", generationConfig={"temprature": 0.2}))
    assert found == [
        f"{tmp_path / 'in.jsonl'}:2: request.generationConfig.temprature: unknown field; "
        'did you mean "temperature"?'
    ]


@pytest.mark.parametrize(
    ("request_fields", "path", "hint"),
    [
        pytest.param(
            {"generationConfig": {"safetySettings": []}},
            "request.generationConfig.safetySettings",
            '"safetySettings" belongs at the top level of the request, not inside generationConfig',
            id="safety-settings-in-config",
        ),
        pytest.param(
            {"generation_config": {"tools": [{"googleSearch": {}}]}},
            "request.generation_config.tools",
            '"tools" belongs at the top level',
            id="tools-in-config",
        ),
        pytest.param(
            {"thinking_config": {"thinking_budget": 0}},
            "request.thinking_config",
            '"thinking_config" belongs inside generationConfig',
            id="thinking-config-at-top",
        ),
        pytest.param(
            {"systemInstruction": {"parts": [{"text": "x"}]}, "temperature": 0.1},
            "request.temperature",
            '"temperature" belongs inside generationConfig',
            id="temperature-at-top",
        ),
    ],
)
def test_misplaced_field(
    tmp_path: Path, request_fields: dict[str, Any], path: str, hint: str
) -> None:
    """A field at the wrong level (python-genai#1451, #1273, #1103) says where it belongs."""
    (found,) = problems_of(tmp_path, line(**request_fields))
    assert f":1: {path}: unknown field; {hint}" in found


def test_both_spellings_accepted(tmp_path: Path) -> None:
    """camelCase and snake_case are both proto JSON, at every level, even mixed."""
    lines = [
        line("a", generationConfig={"maxOutputTokens": 8, "thinkingConfig": {"thinkingBudget": 0}}),
        line(
            "b",
            generation_config={"max_output_tokens": 8, "thinking_config": {"thinking_budget": 0}},
        ),
        line("c", generationConfig={"max_output_tokens": 8, "responseMimeType": "text/plain"}),
        line(
            "d",
            system_instruction={"parts": [{"text": "terse"}]},
            safetySettings=[{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
            tool_config={"function_calling_config": {"mode": "AUTO"}},
        ),
        json.dumps(
            {
                "key": "e",
                "request": {
                    "contents": [
                        {
                            "role": "user",
                            "parts": [{"inline_data": {"mime_type": "image/png", "data": "AA=="}}],
                        },
                        {"parts": [{"fileData": {"fileUri": "files/x", "mimeType": "image/png"}}]},
                    ]
                },
            }
        ),
    ]
    assert problems_of(tmp_path, *lines) == []


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        pytest.param(
            {"contents": [{"parts": [{"txt": "hi"}]}]},
            'request.contents[0].parts[0].txt: unknown field; did you mean "text"?',
            id="part",
        ),
        pytest.param(
            {
                "tools": [
                    {
                        "functionDeclarations": [
                            {
                                "name": "f",
                                "parameters": {
                                    "type": "OBJECT",
                                    "properties": {"x": {"type": "STRING", "descripton": "d"}},
                                },
                            }
                        ]
                    }
                ]
            },
            "request.tools[0].functionDeclarations[0].parameters.properties.x.descripton: "
            'unknown field; did you mean "description"?',
            id="schema-in-tool",
        ),
        pytest.param(
            {"generationConfig": {"thinkingConfig": {"thinkingBudgett": 0}}},
            "request.generationConfig.thinkingConfig.thinkingBudgett: unknown field",
            id="thinking-config",
        ),
        pytest.param(
            {
                "safety_settings": [
                    {"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_SOME"}
                ]
            },
            'request.safety_settings[0].threshold: "BLOCK_SOME" is not a HarmBlockThreshold',
            id="enum",
        ),
        pytest.param(
            {"generationConfig": {"temperature": "hot"}},
            "request.generationConfig.temperature: expected a number, got a string",
            id="number",
        ),
        pytest.param(
            {"generationConfig": {"stopSequences": "END"}},
            "request.generationConfig.stopSequences: expected a list of strings, got a string",
            id="list",
        ),
        pytest.param(
            {"contents": {"parts": []}},
            "request.contents: expected a list of objects, got an object",
            id="contents-not-a-list",
        ),
    ],
)
def test_nested_levels(tmp_path: Path, request_fields: dict[str, Any], expected: str) -> None:
    """Unknown names and wrong values are found at any depth, with their full path."""
    (found,) = problems_of(tmp_path, line(**request_fields))
    assert f"in.jsonl:1: {expected}" in found


def test_kind_problems(tmp_path: Path) -> None:
    """A request of neither kind, and generate and embed requests mixed in one file."""
    embed = json.dumps({"key": "e", "request": {"content": {"parts": [{"text": "x"}]}}})
    neither = json.dumps({"key": "n", "request": {"generationConfig": {}}})
    found = problems_of(tmp_path, line("g"), embed, neither)
    assert found[0].endswith(
        ':2: request: a embed request (it has "content"), but line 1 is a generate request: '
        "a batch holds one kind"
    )
    assert found[1].endswith(':3: request: needs "contents" (to generate) or "content" (to embed)')
    assert len(found) == 2


def test_embed_requests_checked_against_their_own_schema(tmp_path: Path) -> None:
    """Embed lines: taskType and outputDimensionality belong; generationConfig does not."""
    good = {
        "content": {"parts": [{"text": "x"}]},
        "taskType": "RETRIEVAL_DOCUMENT",
        "output_dimensionality": 8,
    }
    bad = {"content": {"parts": [{"text": "x"}]}, "generationConfig": {}}
    found = problems_of(
        tmp_path,
        json.dumps({"key": "a", "request": good}),
        json.dumps({"key": "b", "request": bad}),
    )
    assert len(found) == 1
    assert found[0].endswith(":2: request.generationConfig: unknown field")
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"key": "a", "request": good}) + "\n")
    item, _ = scan_file(str(path))
    assert item is not None
    assert item.kind == "embed"


def test_schema_check_can_be_skipped(tmp_path: Path) -> None:
    """schema_check=False keeps only the structural checks (for fields newer than the tool)."""
    assert (
        problems_of(tmp_path, line(generationConfig={"brandNewKnob": 1}), schema_check=False) == []
    )


def test_examples_pass() -> None:
    """The README's example inputs are valid requests."""
    for path in sorted((REPO / "examples").rglob("*.jsonl")):
        item, problems = scan_file(str(path))
        assert problems == [], path
        assert item is not None


@pytest.mark.promise("bad-input-uploads-nothing")
def test_cli_reports_every_problem_and_sends_nothing(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Schema problems in several files: all listed as FILE:LINE: path: reason, exit 2,
    not one request sent, no journal line."""
    (tmp_path / "a.jsonl").write_text(
        line("1") + "\n" + line("2", generationConfig={"topk": 3}) + "\n"
    )
    (tmp_path / "b.jsonl").write_text(line("1", safetySettings={"category": "x"}) + "\n")
    result = run_cli(["submit", "a.jsonl", "b.jsonl"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 2
    assert (
        'a.jsonl:2: request.generationConfig.topk: unknown field; did you mean "topK"?'
        in result.stderr
    )
    assert (
        "b.jsonl:1: request.safetySettings: expected a list of objects, got an object"
        in result.stderr
    )
    assert "2 problems found, nothing was submitted" in result.stderr
    assert "Traceback" not in result.stderr
    assert request_total(emulator.state()) == 0
    assert read_journal(tmp_path / "job-info.jsonl") == []


@pytest.mark.parametrize(
    "emulator_config",
    [
        pytest.param(
            EmulatorConfig(port=0, processing_seconds=1.0, answer_invalid_lines=True), id="fast"
        )
    ],
)
def test_no_schema_check_submits_and_the_service_answers_per_request(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """--no-schema-check uploads anyway; a service that answers that line with its own
    error (the emulator's kinder --answer-invalid-lines; by default the whole create is
    refused, see test_service_refusals) has it counted by download."""
    (tmp_path / "a.jsonl").write_text(
        line("ok") + "\n" + line("new", generationConfig={"brandNewKnob": 1}) + "\n"
    )
    refused = run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=cli_env(emulator))
    assert refused.returncode == 2
    result = run_cli(
        ["submit", "--no-schema-check", "a.jsonl"], cwd=tmp_path, env=cli_env(emulator)
    )
    assert result.returncode == 0, result.stderr
    finish_jobs(emulator, 1.0)
    assert len(emulator.state()["batches"]) == 1
    download = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert download.returncode == 0, download.stderr
    assert "2 requests, 1 answered, 1 failed (1 × 400 INVALID_ARGUMENT)" in download.stdout
    rows = {
        row["key"]: row
        for row in map(json.loads, (tmp_path / "results" / "a.jsonl").read_text().splitlines())
    }
    assert rows["new"]["error"]["status"] == "INVALID_ARGUMENT"
    assert 'Unknown name "brandNewKnob"' in rows["new"]["error"]["message"]


def test_tables_match_the_installed_sdk() -> None:
    """The committed tables are what tools/gen_schema.py makes from the installed SDK."""
    from google.genai import version

    if version.__version__ != _schema_tables.SDK_VERSION:
        pytest.skip(f"tables are from google-genai {_schema_tables.SDK_VERSION}")
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gen_schema.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# -- a property: any unknown key, anywhere, is found at its path ---------------------------

RICH_REQUEST: dict[str, Any] = {
    "contents": [
        {"role": "user", "parts": [{"text": "hi"}, {"inlineData": {"mimeType": "a/b", "data": ""}}]}
    ],
    "systemInstruction": {"parts": [{"text": "terse"}]},
    "generationConfig": {
        "temperature": 0.5,
        "thinkingConfig": {"thinkingBudget": 0},
        "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}},
    },
    "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
    "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "OBJECT"}}]}],
    "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
}


def _objects(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Paths of every message object in the request (map values of a schema's
    properties are Schema objects too)."""
    found: list[tuple[str | int, ...]] = []
    if isinstance(value, dict):
        found.append(path)
        for key, inner in value.items():
            found.extend(_objects(inner, (*path, key)))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found.extend(_objects(inner, (*path, index)))
    # "properties" itself is a map, not a message: a key there is a property name.
    return [p for p in found if not (p and p[-1] == "properties")]


def test_an_unknown_key_anywhere_is_found() -> None:
    """Inserting an unknown key into any object of a valid request gives exactly one
    problem, at that object's path."""
    # hypothesis is imported here, not at the top: only the worker running this test
    # pays for its import (every xdist worker collects every module).
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @given(
        where=st.sampled_from(_objects(RICH_REQUEST)),
        name=st.from_regex(r"zz[a-z]{1,8}", fullmatch=True),
    )
    @settings(max_examples=60, deadline=None)
    def check(where: tuple[str | int, ...], name: str) -> None:
        assert check_request(RICH_REQUEST, GENERATE) == []
        request = copy.deepcopy(RICH_REQUEST)
        target: Any = request
        for step in where:
            target = target[step]
        target[name] = 1
        (issue,) = check_request(request, GENERATE)
        expected = "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in (*where, name))
        assert issue.written_path() == expected.lstrip(".")
        assert issue.problem == "unknown"

    check()
