"""Start-up: ``--version``, ``--help`` and ``show`` need no service, so they start
without importing google-genai (about a second of imports on a quiet machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ..helpers import cli_env

#: Runs the CLI's main() in a fresh interpreter for each argv in turn and prints, after
#: each, the SDK modules loaded so far (as one JSON line per argv).
PROBE = """
import contextlib, io, json, sys
from gembatch_async.cli import main

for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    loaded = sorted(m for m in sys.modules if m == "google.genai" or m.startswith("google.genai."))
    print(json.dumps({"argv": argv, "code": code, "out": out.getvalue(), "sdk": loaded}))
"""


def test_version_help_and_show_start_without_the_sdk(tmp_path: Path) -> None:
    results = tmp_path / "r.results.jsonl"
    answer = {"candidates": [{"content": {"parts": [{"text": "hello"}]}}]}
    results.write_text(json.dumps({"key": "a", "response": answer}) + "\n")
    runs = [["--version"], ["--help"], ["show", str(results)]]
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(runs)],
        cwd=tmp_path,
        env=cli_env(None),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    reports = [json.loads(line) for line in probe.stdout.splitlines()]
    assert [r["code"] for r in reports] == [0, 0, 0], probe.stderr
    assert reports[0]["out"].startswith("gembatch-async ")
    assert "usage:" in reports[1]["out"]
    assert reports[2]["out"] == "a\thello\n"
    assert [r["sdk"] for r in reports] == [[], [], []]
