"""The README's promises stay linked to their tests.

A promise in README.md carries an id in an HTML comment beside it, ``<!-- promise: ID -->``
(invisible when rendered); a test that proves it carries ``@pytest.mark.promise("ID")``
(several ids allowed). This file fails when a promise has no test, when a marker names an id
the README lacks (a promise removed or renamed), or when a marker is where it proves nothing
(not on a test function, or on an expected failure). To find the tests of a promise:
``pytest -m promise -k ...`` or ``grep -rn 'promise("ID"' tests``.

The markers are read from the test files' source (no collection), so the check is quick and
sees every file, whichever tests a run selects.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The id beside a promise in the README: lower case words joined by hyphens.
PROMISE_ID = re.compile(r"<!-- promise: ([a-z0-9]+(?:-[a-z0-9]+)*) -->")
#: Anything that looks like a promise comment, well formed or not.
PROMISE_COMMENT = re.compile(r"<!--\s*promise\b")
#: Any use of the marker in a test file, wherever it is.
MARKER_USE = re.compile(r"\bmark\.promise\(")


def readme_promises(readme: str) -> tuple[list[str], list[str]]:
    """The promise ids of the README in order, and problems with their comments."""
    ids = PROMISE_ID.findall(readme)
    problems = []
    if len(PROMISE_COMMENT.findall(readme)) != len(ids):
        problems.append("a promise comment is not of the form <!-- promise: some-id -->")
    problems += [f"promise {i!r} is marked twice in the README" for i in sorted(set(ids))
                 if ids.count(i) > 1]  # fmt: skip
    return ids, problems


def _is_marker(node: ast.expr, name: str) -> bool:
    """``node`` is ``pytest.mark.<name>`` (called or not)."""
    target = node.func if isinstance(node, ast.Call) else node
    return (
        isinstance(target, ast.Attribute)
        and target.attr == name
        and isinstance(target.value, ast.Attribute)
        and target.value.attr == "mark"
    )


def marked_tests(folder: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Each promise id named by a marker under ``folder``, with the tests that carry it, and
    problems: markers that name no id, sit where they prove nothing, or are not decorators."""
    tests: dict[str, list[str]] = defaultdict(list)
    problems = []
    for path in sorted(folder.rglob("*.py")):
        if path.resolve() == Path(__file__).resolve():
            continue  # this file names the marker in its text, not on tests
        source = path.read_text()
        where = path.relative_to(folder.parent)
        seen = 0
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            markers = [d for d in node.decorator_list if _is_marker(d, "promise")]
            seen += len(markers)
            if not markers:
                continue
            test = f"{where}::{node.name}"
            if not node.name.startswith("test_"):
                problems.append(f"{test}: a promise marker on a function that is not a test")
            if any(_is_marker(d, "xfail") or _is_marker(d, "skip") for d in node.decorator_list):
                problems.append(f"{test}: an expected failure or a skip proves no promise")
            for marker in markers:
                args = marker.args if isinstance(marker, ast.Call) else []
                ids = [a.value for a in args if isinstance(a, ast.Constant)]
                if not args or len(ids) != len(args) or not all(isinstance(i, str) for i in ids):
                    problems.append(f"{test}: the promise marker must name ids as strings")
                    continue
                for promise in ids:
                    tests[str(promise)].append(test)
        if len(MARKER_USE.findall(source)) != seen:
            problems.append(f"{where}: a promise marker that is not a test's decorator")
    return dict(tests), problems


def link_problems(readme: str, folder: Path) -> list[str]:
    """Everything that breaks the link between the README's promises and the tests."""
    ids, problems = readme_promises(readme)
    tests, marker_problems = marked_tests(folder)
    problems += marker_problems
    problems += [f"README promise {i!r} has no test marked promise({i!r})" for i in ids
                 if i not in tests]  # fmt: skip
    problems += [
        f"{', '.join(tests[i])}: marked promise({i!r}), which the README does not make"
        for i in sorted(set(tests) - set(ids))
    ]
    return problems


def test_every_readme_promise_has_a_test_and_every_marker_a_promise() -> None:
    """The README's promise ids and the tests' markers name the same set."""
    problems = link_problems((ROOT / "README.md").read_text(), ROOT / "tests")
    assert not problems, "\n".join(problems)


def test_the_readme_marks_its_promises() -> None:
    """The check above is not vacuous: the README marks promises, each with tests."""
    ids, _ = readme_promises((ROOT / "README.md").read_text())
    tests, _ = marked_tests(ROOT / "tests")
    assert len(ids) >= 40, ids
    assert sum(len(tests.get(i, [])) for i in ids) >= 100


def test_the_check_finds_each_kind_of_broken_link(tmp_path: Path) -> None:
    """A promise without a test, a marker without a promise, a marker that is no decorator,
    one on a helper, one on an expected failure, and a malformed or repeated comment: each
    is named."""
    folder = tmp_path / "tests"
    folder.mkdir()
    (folder / "test_x.py").write_text(
        "import pytest\n\n"
        '@pytest.mark.promise("kept")\ndef test_kept(): pass\n\n'
        '@pytest.mark.promise("gone")\ndef test_gone(): pass\n\n'
        '@pytest.mark.promise("kept")\ndef helper(): pass\n\n'
        '@pytest.mark.xfail(strict=True)\n@pytest.mark.promise("kept")\n'
        "def test_xfail(): pass\n\n"
        "@pytest.mark.promise(NAME)\ndef test_name(): pass\n\n"
        'CASES = [pytest.param(1, marks=pytest.mark.promise("kept"))]\n'
    )
    readme = (
        "A. <!-- promise: kept -->\nB. <!-- promise: untested -->\n"
        "C. <!-- promise: untested -->\nD. <!--promise:Bad_Id-->\n"
    )
    problems = "\n".join(link_problems(readme, folder))
    expected = [
        "a promise comment is not of the form",
        "promise 'untested' is marked twice",
        "README promise 'untested' has no test",
        "tests/test_x.py::test_gone: marked promise('gone'), which the README does not make",
        "tests/test_x.py::helper: a promise marker on a function that is not a test",
        "tests/test_x.py::test_xfail: an expected failure or a skip proves no promise",
        "tests/test_x.py::test_name: the promise marker must name ids as strings",
        "tests/test_x.py: a promise marker that is not a test's decorator",
    ]
    for line in expected:
        assert line in problems, f"not reported: {line}\n{problems}"
    assert "README promise 'kept'" not in problems, problems
