"""Emulator behaviour that needs a restart or another process: persistence, memory, no aiohttp."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import psutil
import pytest
from google.genai import types

from gembatch_async.emulator import EmulatorConfig, EmulatorThread, RunningEmulator
from tests.emulator.test_emulator_support import (
    MODEL,
    jsonl_lines,
    state_file,
    sync_client,
    wait_state,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    """Subprocess environment that can import this checkout's package."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GEMINI_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def test_state_dir_survives_restart(tmp_path: pathlib.Path) -> None:
    """With state_dir, files and batches (and batch progress) survive a restart."""
    config = EmulatorConfig(port=0, processing_seconds=1.0, state_dir=tmp_path / "state")
    with EmulatorThread(config) as emu:
        client = sync_client(emu)
        uploaded = client.files.upload(
            file=io.BytesIO(jsonl_lines(3)), config={"mime_type": "jsonl", "name": "keep-me"}
        )
        job = client.batches.create(model=MODEL, src="files/keep-me")
        assert job.name is not None
        assert job.state == types.JobState.JOB_STATE_PENDING
        before = state_file(emu, "files/keep-me")
    assert not any((tmp_path / "state").glob("**/*.tmp"))
    with EmulatorThread(config) as emu:
        client = sync_client(emu)
        again = client.files.get(name="files/keep-me")
        assert again.sha256_hash == uploaded.sha256_hash
        assert again.create_time == uploaded.create_time
        assert state_file(emu, "files/keep-me") == before
        done = wait_state(client, emu, job.name, "JOB_STATE_SUCCEEDED")
        assert done.create_time == job.create_time
        assert done.dest is not None
        assert done.dest.file_name is not None
        output = client.files.download(file=done.dest.file_name)
        assert len(output.splitlines()) == 3
    with EmulatorThread(config) as emu:
        names = {f["name"] for f in emu.state()["files"]}
        assert names == {"files/keep-me", done.dest.file_name}


def _temp_dirs() -> set[pathlib.Path]:
    return set(pathlib.Path(tempfile.gettempdir()).glob("gembatch-emulator-*"))


def test_memory_mode_cleans_up(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """Memory mode keeps blobs in a temp dir that is removed on shutdown."""
    # A temp folder of this test's own: other workers' emulators make theirs meanwhile.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = _temp_dirs()
    with EmulatorThread(EmulatorConfig(port=0)) as emu:
        client = sync_client(emu)
        client.files.upload(file=io.BytesIO(b"abc"), config={"mime_type": "text/plain"})
        ours = _temp_dirs() - before
        assert len(ours) == 1
        assert any(p.is_file() for p in next(iter(ours)).rglob("*"))
    assert not ours & _temp_dirs()


_SERVER_SCRIPT = textwrap.dedent(
    """
    import anyio
    from gembatch_async.emulator import EmulatorConfig, serve_emulator

    async def main() -> None:
        async with serve_emulator(EmulatorConfig(port=0)) as emu:
            print(emu.base_url, flush=True)
            await anyio.sleep_forever()

    anyio.run(main)
    """
)


def _sample_peak_rss(proc: psutil.Process, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.01)


def test_large_upload_memory_stays_flat(tmp_path: pathlib.Path) -> None:
    """A 128 MiB upload streams through the emulator process without its RSS growing
    (by under 64 MiB: holding the file whole would grow it by 128 MiB or more).

    This measures the emulator; the tool's own memory is measured in
    test_promises_cli.py (test_cli_memory_does_not_grow_with_input_size).
    """
    size = 128 * 1024 * 1024
    path = tmp_path / "big.bin"
    with path.open("wb") as fh:
        fh.truncate(size)  # sparse zeros: cheap to create, still 128 MiB on the wire
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER_SCRIPT], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        emu = RunningEmulator("127.0.0.1", int(base_url.rsplit(":", 1)[1]), base_url)
        client = sync_client(emu)
        # Warm up every code path first, so imports and caches do not count as growth.
        client.files.upload(
            file=io.BytesIO(b"x" * (9 * 1024 * 1024)), config={"mime_type": "text/plain"}
        )
        process = psutil.Process(server.pid)
        baseline = process.memory_info().rss
        peak = [baseline]
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_peak_rss, args=(process, stop, peak))
        sampler.start()
        try:
            uploaded = client.files.upload(
                file=path, config={"mime_type": "application/octet-stream"}
            )
        finally:
            stop.set()
            sampler.join()
        assert uploaded.size_bytes == size
        digest = hashlib.sha256(bytes(size)).hexdigest()
        wire = base64.b64encode(digest.encode()).decode()
        assert uploaded.name is not None
        assert state_file(emu, uploaded.name)["sha256Hash"] == wire  # what it stored
        assert uploaded.sha256_hash == wire  # what it answered
        growth = peak[0] - baseline
        print(f"emulator RSS growth during 128 MiB upload: {growth / 2**20:.1f} MiB")
        assert growth < 64 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB"
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()


_NO_AIOHTTP_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["aiohttp"] = None  # makes `import aiohttp` fail, as if not installed
    import asyncio, io, json
    from google import genai
    from google.genai import _api_client, types

    async def main() -> None:
        options = types.HttpOptions(base_url=sys.argv[1])
        client = genai.Client(api_key="k", http_options=options)
        data = b'{"key": "a", "request": {"contents": [{"parts": [{"text": "hi"}]}]}}\\n'
        uploaded = await client.aio.files.upload(
            file=io.BytesIO(data), config={"mime_type": "jsonl"}
        )
        job = await client.aio.batches.create(model="gemini-3.5-flash", src=uploaded.name)
        got = await client.aio.batches.get(name=job.name)
        await client.aio.aclose()
        print(json.dumps({
            "has_aiohttp": _api_client.has_aiohttp,
            "file": uploaded.name,
            "size": uploaded.size_bytes,
            "batch": got.name,
            "state": got.state.name,
        }))

    asyncio.run(main())
    """
)


# 60 s jobs: the job is still pending when the state is read, however long the child
# takes to exit (with 2 s jobs a loaded machine once let it end and write its output file).
@pytest.mark.parametrize("emulator_config", [EmulatorConfig(port=0, processing_seconds=60)])
def test_aio_without_aiohttp(emulator: RunningEmulator) -> None:
    """With aiohttp unimportable the SDK's httpx async path uploads, creates and gets."""
    result = subprocess.run(
        [sys.executable, "-c", _NO_AIOHTTP_SCRIPT, emulator.base_url],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["has_aiohttp"] is False
    assert report["size"] == 69
    assert report["state"] == "JOB_STATE_PENDING"
    state = emulator.state()
    assert [f["name"] for f in state["files"]] == [report["file"]]
    assert [b["name"] for b in state["batches"]] == [report["batch"]]


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(port=0, processing_seconds=60)])
def test_admin_state_shape(emulator: RunningEmulator) -> None:
    """/_emulator/state lists files and batches with the documented keys."""
    client = sync_client(emulator)
    uploaded = client.files.upload(file=io.BytesIO(jsonl_lines(1)), config={"mime_type": "jsonl"})
    assert uploaded.name is not None
    client.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "shape"})
    state = emulator.state()
    file = state["files"][0]
    assert {"name", "displayName", "sizeBytes", "sha256Hash", "source"} <= set(file)
    batch = state["batches"][0]
    assert batch["displayName"] == "shape"
    assert batch["model"] == f"models/{MODEL}"
    assert batch["state"] == "BATCH_STATE_PENDING"
    assert batch["inputFile"] == uploaded.name
    assert batch["outputFile"] is None
    assert set(state["requests"]) == {
        "upload",
        "create",
        "get",
        "list",
        "delete",
        "cancel",
        "download",
    }
