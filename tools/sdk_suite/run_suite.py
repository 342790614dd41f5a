"""Run google-genai's own batches and files tests against the emulator.

    python tools/sdk_suite/run_suite.py [-- PYTEST ARGS]     (or: nox -s sdk_tests)

The tests ship inside the google-genai wheel (``google/genai/tests``). They run
in API mode (``--mode api``: every call goes over HTTP, nothing is replayed)
against an emulator started here on 127.0.0.1, Gemini API variants only. What
they need besides: an API key, an empty replays folder, stand-ins for the
data files the wheel leaves out (``tests/data/...``, read relative to the
working folder), and the files with fixed names that Google's own test
project keeps, which are seeded here through ordinary uploads.

Exit status: 0 when every failure is one listed in ``EXPECTED_FAILURES`` (tests
that need resources only Google's test project has) and every listed test
still fails; 1 otherwise, naming the difference.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

from google import genai
from google.genai import types

from gembatch_async.emulator import EmulatorConfig, EmulatorThread, RunningEmulator

HERE = pathlib.Path(__file__).resolve().parent
API_KEY = "sdk-suite-key"
SUITES = ("batches", "files")

#: Files the tests name but never create (Google's test project keeps them).
GENERATE_LINE = {"key": "seed-1", "request": {"contents": [{"parts": [{"text": "Say hi."}]}]}}
EMBED_LINE = {"key": "seed-1", "request": {"content": {"parts": [{"text": "Embed me."}]}}}
SEEDED_FILES = {
    "files/vjvu9fwk2qj8": ("text/plain", b"a file for files.get\n"),
    "files/1g583ke2xdsn": ("text/plain", b"a file for files.delete\n"),
    "files/n1gls7dyh90q": ("text/plain", b"a file for the async files.delete\n"),
    "files/s0pa54alni6w": ("application/jsonl", json.dumps(GENERATE_LINE).encode() + b"\n"),
    "files/mq9e3mg3u2y5": ("application/jsonl", json.dumps(EMBED_LINE).encode() + b"\n"),
}

_FIXED_BATCH = "gets a batch by a fixed name that exists only in Google's test project"
_VIDEO = (
    "needs a downloadable video in the project; without one it calls models.generate_videos "
    "(Veo), which this SDK refuses for the Gemini Developer API"
)
_GCS = "registers gs://unified-genai-dev/image.jpg, an object in Google's own Cloud Storage"
_MOCKED = (
    "a unit test that mocks the SDK's transport and sends nothing; it fails the same with "
    "no server at all (the async mock returns a coroutine where a response is expected)"
)
#: test id (module::function) -> why it cannot pass against the emulator.
EXPECTED_FAILURES: dict[str, str] = {
    "batches.test_cancel::test_cancel_batch_operation": _FIXED_BATCH,
    "batches.test_cancel::test_async_cancel": _FIXED_BATCH,
    "batches.test_delete::test_delete_batch_operation": _FIXED_BATCH,
    "batches.test_delete::test_async_delete": _FIXED_BATCH,
    "batches.test_get::test_get_batch_operation": _FIXED_BATCH,
    "batches.test_get::test_async_get": _FIXED_BATCH,
    "batches.test_embedding::test_get_inline": _FIXED_BATCH,
    "batches.test_embedding::test_async_get_inline": _FIXED_BATCH,
    "batches.test_embedding::test_get_file": _FIXED_BATCH,
    "batches.test_embedding::test_async_get_file": _FIXED_BATCH,
    "files.test_download::test_name_transform_name": _VIDEO,
    "files.test_download::test_basic_download": _VIDEO,
    "files.test_download::test_basic_download_async": _VIDEO,
    "files.test_download::test_destination_download": _VIDEO,
    "files.test_download::test_async_destination_download": _VIDEO,
    "files.test_register_table::test_register": _GCS,
    "files.test_register_table::test_async": _GCS,
    "files.test_register::test_async_single": _MOCKED,
    "files.test_register::test_async_token_refresh": _MOCKED,
    "files.test_register::test_async_quota_project": _MOCKED,
    "files.test_register::test_async_multiple_uris": _MOCKED,
}

# Minimal but well-formed stand-ins for the wheel's missing tests/data files.
_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)
_JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")
_PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
_MP4 = bytes.fromhex("000000186674797069736f6d0000020069736f6d69736f32")
_M4A = bytes.fromhex("00000018667479704d344120000000004d34412069736f6d")
DATA_FILES = {
    "google.png": _PNG,
    "google.jpg": _JPEG,
    "story.pdf": _PDF,
    "animal.mp4": _MP4,
    "pixel.m4a": _M4A,
}
PYTEST_INI = """[pytest]
asyncio_mode = strict
consider_namespace_packages = true
"""


def _tests_folder() -> pathlib.Path:
    import google.genai

    return pathlib.Path(google.genai.__file__).parent / "tests"


def seed_files(emulator: RunningEmulator) -> None:
    """Upload the fixed-name files through the SDK, as any user would."""
    client = genai.Client(
        api_key=API_KEY, http_options=types.HttpOptions(base_url=emulator.base_url)
    )
    for name, (mime, data) in SEEDED_FILES.items():
        client.files.upload(file=io.BytesIO(data), config={"name": name, "mime_type": mime})


def write_data_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """The stand-ins that are missing in ``folder``; returns what it created."""
    created = []
    if not folder.exists():
        folder.mkdir(parents=True)
        created.append(folder)
    for name, content in DATA_FILES.items():
        path = folder / name
        if not path.exists():
            path.write_bytes(content)
            created.append(path)
    return created


@contextlib.contextmanager
def installed_data_stand_ins() -> Iterator[None]:
    """Some modules read ``tests/data`` beside themselves, inside the installed
    package: put stand-ins there for the run, and remove exactly what was added."""
    created = write_data_files(_tests_folder() / "data")
    try:
        yield
    finally:
        for path in reversed(created):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()


def make_workdir(root: pathlib.Path) -> None:
    """pytest.ini, tests/data stand-ins (read relative to the working folder) and
    an empty replays folder."""
    (root / "pytest.ini").write_text(PYTEST_INI)
    write_data_files(root / "tests" / "data")
    (root / "replays").mkdir()


def suite_env(root: pathlib.Path, emulator: RunningEmulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GEMINI_"))}
    env.update(
        GOOGLE_API_KEY=API_KEY,
        GOOGLE_GENAI_REPLAYS_DIRECTORY=str(root / "replays"),
        GOOGLE_GENAI_RUN_GEMINI_ONLY_IN_API_MODE="1",
        GEMBATCH_SDK_SUITE_BASE_URL=emulator.base_url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH", "")])),
    )
    return env


def read_results(junit: pathlib.Path) -> list[tuple[str, str]]:
    """(``batches.test_get::test_async_get``, passed | failed | skipped) per test run,
    from pytest's JUnit XML (parametrized runs share the id)."""
    outcomes = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{str(case.get('name')).split('[')[0]}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes.append((test_id, "failed"))
        elif (skipped := case.find("skipped")) is not None:
            # The suite also skips a test that meets a 429: only the Vertex skips are expected.
            vertex = "Vertex AI tests" in (skipped.get("message") or "")
            outcomes.append((test_id, "skipped" if vertex else "failed"))
        else:
            outcomes.append((test_id, "passed"))
    return outcomes


def report(outcomes: list[tuple[str, str]], elapsed: float) -> int:
    counts = {k: sum(1 for _, v in outcomes if v == k) for k in ("passed", "failed", "skipped")}
    failed = {t for t, v in outcomes if v == "failed"}
    passed = {t for t, v in outcomes if v == "passed"}
    unexpected = sorted(failed - set(EXPECTED_FAILURES))
    now_passing = sorted(t for t in EXPECTED_FAILURES if t in passed and t not in failed)
    for test_id in unexpected:
        print(f"UNEXPECTED FAILURE {test_id}")
    for test_id in now_passing:
        print(f"NOW PASSING (drop it from EXPECTED_FAILURES) {test_id}")
    print(
        f"sdk_tests: {counts['passed']} passed, {counts['failed']} failed "
        f"({len(failed & set(EXPECTED_FAILURES))} expected), {counts['skipped']} skipped "
        f"in {elapsed:.1f}s"
    )
    return 1 if unexpected or now_passing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    config = EmulatorConfig(host="127.0.0.1", port=0, processing_seconds=5.0)
    with (
        tempfile.TemporaryDirectory(prefix="gembatch-sdk-suite-") as tmp,
        installed_data_stand_ins(),
        EmulatorThread(config) as emulator,
    ):
        root = pathlib.Path(tmp)
        make_workdir(root)
        seed_files(emulator)
        junit = root / "junit.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            *(str(_tests_folder() / suite) for suite in SUITES),
            # The suite's conftest (which adds --mode) lies outside the work folder.
            f"--confcutdir={_tests_folder()}",
            "--mode",
            "api",
            "-p",
            "redirect_plugin",
            "-q",
            "--tb=line",  # the expected failures are listed below; one line each is enough
            # The installed tests live under this repository (its .venv or .nox), whose
            # pyproject would otherwise be taken as their configuration.
            "-c",
            str(root / "pytest.ini"),
            f"--rootdir={_tests_folder()}",  # test ids: batches/test_get.py::...
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            *args.pytest_args,
        ]
        subprocess.run(command, cwd=root, env=suite_env(root, emulator), check=False)
        outcomes = read_results(junit)
    return report(outcomes, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
