"""``nox -s tests`` finds each Python it names, also where pyenv holds them (issue 19, item 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"

# What nox does for a session's python="3.10": look up python3.10 on the PATH it runs with.
FIND = """
import json, runpy, shutil, subprocess, sys
noxfile = runpy.run_path(sys.argv[1])
found = {}
for version in noxfile["PYTHONS"]:
    path = shutil.which("python" + version)
    answer = subprocess.run([path, "-c", "import sys; print(sys.version)"], capture_output=True,
                            text=True, check=False) if path else None
    found[version] = answer.stdout.split()[0] if answer and answer.returncode == 0 else None
print(json.dumps(found))
"""


def test_sessions_find_the_pyenv_interpreters() -> None:
    """Each version pyenv has installed is found by name after the noxfile is loaded, and
    runs: pyenv's shim for an unselected version would answer "command not found"."""
    pytest.importorskip("nox")
    installed = {p.name.rsplit(".", 1)[0] for p in PYENV_VERSIONS.glob("3.*")}
    result = subprocess.run(
        [sys.executable, "-c", FIND, str(ROOT / "noxfile.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, str | None] = json.loads(result.stdout)
    expected = [v for v in found if v in installed]
    if not expected:
        pytest.skip("pyenv has none of the noxfile's Pythons here")
    for version in expected:
        runs = found[version]
        assert runs is not None, f"python{version} is not found or does not run"
        assert runs.startswith(version + "."), found
