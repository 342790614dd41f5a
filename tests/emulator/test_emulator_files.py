"""Files API against the emulator, through the real google-genai SDK."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import pathlib
import re

import pytest
from google.genai import errors, types
from google.genai import version as genai_version

from gembatch_async.emulator import EmulatorConfig, RunningEmulator
from tests.emulator.test_emulator_support import (
    AIO_TRANSPORTS,
    AIOHTTP_LARGE_BODY_WARNING,
    AIOHTTP_SUBCLASS_WARNING,
    API_KEY,
    aio_client,
    raw_get,
    state_file,
    sync_client,
    write,
)

SDK_MAJOR = int(genai_version.__version__.split(".")[0])

pytestmark = [
    pytest.mark.filterwarnings(AIOHTTP_SUBCLASS_WARNING),
    pytest.mark.filterwarnings(AIOHTTP_LARGE_BODY_WARNING),
]


def _wire_sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode()


def test_upload_small_file_sync(emulator: RunningEmulator, tmp_path: pathlib.Path) -> None:
    """A small upload returns an ACTIVE UPLOADED file whose hash matches the content."""
    data = b"hello, world\n"
    client = sync_client(emulator)
    path = write(tmp_path, "small.txt", data)
    uploaded = client.files.upload(file=path, config={"display_name": "Small"})
    assert uploaded.name is not None
    assert uploaded.name.startswith("files/")
    assert len(uploaded.name.removeprefix("files/")) == 12
    assert uploaded.size_bytes == len(data)
    assert uploaded.mime_type == "text/plain"
    assert uploaded.display_name == "Small"
    assert uploaded.state == types.FileState.ACTIVE
    assert uploaded.source == types.FileSource.UPLOADED
    assert uploaded.sha256_hash == _wire_sha(data)
    assert re.fullmatch(
        rf"https://generativelanguage.googleapis.com/v1\w*/{uploaded.name}", uploaded.uri or ""
    )
    assert uploaded.create_time is not None
    assert uploaded.expiration_time is not None
    assert (uploaded.expiration_time - uploaded.create_time).total_seconds() == 48 * 3600
    entry = state_file(emulator, uploaded.name)
    assert entry["sizeBytes"] == len(data)
    assert entry["sha256Hash"] == _wire_sha(data)


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", AIO_TRANSPORTS)
async def test_upload_20mib_in_chunks_aio(
    emulator: RunningEmulator, tmp_path: pathlib.Path, transport: str
) -> None:
    """A 20 MiB upload arrives as 3 chunks and is stored byte-exact (sha256 checked)."""
    data = os.urandom(20 * 1024 * 1024 + 5)
    path = write(tmp_path, "big.bin", data)
    client = aio_client(emulator, transport)
    try:
        uploaded = await client.aio.files.upload(file=path)
    finally:
        await client.aio.aclose()
    assert uploaded.name is not None
    assert uploaded.size_bytes == len(data)
    assert uploaded.sha256_hash == _wire_sha(data)
    state = emulator.state()
    assert state_file(emulator, uploaded.name)["sha256Hash"] == _wire_sha(data)
    assert state["requests"]["upload"]["count"] == 4  # start + 3 chunks


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", AIO_TRANSPORTS)
async def test_aio_upload_get_list_delete(emulator: RunningEmulator, transport: str) -> None:
    """The aio surface uploads (named), gets, lists and deletes a file on both transports."""
    client = aio_client(emulator, transport)
    try:
        uploaded = await client.aio.files.upload(
            file=io.BytesIO(b'{"a": 1}\n'),
            config={"mime_type": "jsonl", "name": "my-named-file"},
        )
        assert uploaded.name == "files/my-named-file"
        got = await client.aio.files.get(name="my-named-file")
        assert got.size_bytes == 9
        assert got.mime_type == "jsonl"
        names = [f.name async for f in await client.aio.files.list()]
        assert names == ["files/my-named-file"]
        await client.aio.files.delete(name="files/my-named-file")
        with pytest.raises(errors.ClientError) as info:
            await client.aio.files.get(name="my-named-file")
        assert info.value.code == 403
    finally:
        await client.aio.aclose()
    assert emulator.state()["files"] == []


def test_list_files_paging(emulator: RunningEmulator) -> None:
    """files.list with page_size=2 pages through 5 files (3 pages) and sees each once."""
    client = sync_client(emulator)
    names = {
        client.files.upload(file=io.BytesIO(b"x" * i), config={"mime_type": "text/plain"}).name
        for i in range(1, 6)
    }
    pager = client.files.list(config={"page_size": 2})
    assert len(pager.page) == 2
    assert {f.name for f in pager} == names
    assert emulator.state()["requests"]["list"]["count"] == 3
    key = {"x-goog-api-key": API_KEY}
    first = raw_get(emulator, "/v1/files?pageSize=4", **key).json()
    assert len(first["files"]) == 4
    # A file deleted between pages must not make the pager skip a survivor.
    client.files.delete(name=first["files"][0]["name"])
    last = raw_get(emulator, f"/v1/files?pageSize=4&pageToken={first['nextPageToken']}", **key)
    assert len(last.json()["files"]) == 1
    assert "nextPageToken" not in last.json()
    assert last.json()["files"][0]["name"] not in {f["name"] for f in first["files"]}


def test_get_and_delete_file(emulator: RunningEmulator) -> None:
    """get returns the stored metadata; delete removes it from get and from the state."""
    client = sync_client(emulator)
    uploaded = client.files.upload(file=io.BytesIO(b"abc"), config={"mime_type": "text/plain"})
    assert uploaded.name is not None
    got = client.files.get(name=uploaded.name)
    assert got.sha256_hash == uploaded.sha256_hash
    assert got.size_bytes == 3
    client.files.delete(name=uploaded.name)
    assert emulator.state()["files"] == []
    with pytest.raises(errors.ClientError) as info:
        client.files.get(name=uploaded.name)
    assert info.value.code == 403
    assert info.value.status == "PERMISSION_DENIED"


def test_versions_and_path_prefix(emulator: RunningEmulator) -> None:
    """v1beta/v1alpha and a base URL with a path prefix are routed like v1."""
    for version in ("v1beta", "v1alpha"):
        client = sync_client(emulator, api_version=version)
        uploaded = client.files.upload(file=io.BytesIO(b"v"), config={"mime_type": "text/plain"})
        assert uploaded.uri is not None
        if SDK_MAJOR >= 3:  # google-genai 2.x (Python 3.10) always uploads under v1beta
            assert f"/{version}/files/" in uploaded.uri
    prefixed = types.HttpOptions(base_url=emulator.base_url + "/proxy/")
    from google import genai

    client = genai.Client(api_key=API_KEY, http_options=prefixed)
    uploaded = client.files.upload(file=io.BytesIO(b"p"), config={"mime_type": "text/plain"})
    assert uploaded.name is not None
    assert client.files.get(name=uploaded.name).size_bytes == 1
    assert len(emulator.state()["files"]) == 3


@pytest.mark.parametrize("mime", ["jsonl", "application/jsonl", "text/plain", "application/json"])
def test_jsonl_mime_types_accepted(emulator: RunningEmulator, mime: str) -> None:
    """The MIME types the real service takes for JSONL are accepted and echoed."""
    client = sync_client(emulator)
    uploaded = client.files.upload(file=io.BytesIO(b"{}\n"), config={"mime_type": mime})
    assert uploaded.mime_type == mime


def test_bad_mime_type_rejected(emulator: RunningEmulator) -> None:
    """A nonsense MIME type gives 400 'Unsupported MIME type: ...' and stores nothing."""
    client = sync_client(emulator)
    with pytest.raises(errors.ClientError) as info:
        client.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "bad/mime_type"})
    assert info.value.code == 400
    assert info.value.status == "INVALID_ARGUMENT"
    assert info.value.message == "Unsupported MIME type: bad/mime_type"
    assert emulator.state()["files"] == []


def test_missing_api_key(emulator: RunningEmulator) -> None:
    """No x-goog-api-key: 403 PERMISSION_DENIED JSON, as the real service answers."""
    response = raw_get(emulator, "/v1/files")
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == "PERMISSION_DENIED"
    assert error["code"] == 403
    assert "unregistered callers" in error["message"]


def test_invalid_api_key(emulator: RunningEmulator) -> None:
    """The key `invalid` gives 400 INVALID_ARGUMENT 'API key not valid'."""
    client = sync_client(emulator, api_key="invalid")
    with pytest.raises(errors.ClientError) as info:
        client.files.list()
    assert info.value.code == 400
    assert info.value.status == "INVALID_ARGUMENT"
    assert info.value.message == "API key not valid. Please pass a valid API key."


def test_unknown_file_is_permission_denied(emulator: RunningEmulator) -> None:
    """get, delete and download of a missing file all give 403 PERMISSION_DENIED."""
    client = sync_client(emulator)
    for call in (
        lambda: client.files.get(name="files/nosuchfile"),
        lambda: client.files.delete(name="files/nosuchfile"),
        lambda: client.files.download(file="files/nosuchfile"),
    ):
        with pytest.raises(errors.ClientError) as info:
            call()
        assert info.value.code == 403
        assert info.value.status == "PERMISSION_DENIED"


def test_uploaded_file_not_downloadable(emulator: RunningEmulator) -> None:
    """Downloading an uploaded (not generated) file is refused with 400."""
    client = sync_client(emulator)
    uploaded = client.files.upload(file=io.BytesIO(b"abc"), config={"mime_type": "text/plain"})
    assert uploaded.name is not None
    assert uploaded.download_uri is None
    with pytest.raises(errors.ClientError) as info:
        client.files.download(file=uploaded.name)
    assert info.value.code == 400
    assert info.value.status == "FAILED_PRECONDITION"


def test_client_chosen_names_validated(emulator: RunningEmulator) -> None:
    """An invalid file id gives 400; an id already in use gives 409 ALREADY_EXISTS."""
    client = sync_client(emulator)
    config = types.UploadFileConfig(mime_type="text/plain", name="dup-name")
    client.files.upload(file=io.BytesIO(b"1"), config=config)
    with pytest.raises(errors.ClientError) as info:
        client.files.upload(file=io.BytesIO(b"2"), config=config)
    assert info.value.code == 409
    assert info.value.status == "ALREADY_EXISTS"
    for bad in ("-starts-with-dash", "Upper", "x" * 41):
        with pytest.raises(errors.ClientError) as info:
            client.files.upload(
                file=io.BytesIO(b"3"), config={"mime_type": "text/plain", "name": bad}
            )
        assert info.value.code == 400
    assert [f["name"] for f in emulator.state()["files"]] == ["files/dup-name"]


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(port=0, max_file_bytes=1000)])
def test_file_over_max_size_rejected(emulator: RunningEmulator) -> None:
    """A file over max_file_bytes is refused with 400 before any byte is sent."""
    client = sync_client(emulator)
    client.files.upload(file=io.BytesIO(b"x" * 1000), config={"mime_type": "text/plain"})
    with pytest.raises(errors.ClientError) as info:
        client.files.upload(file=io.BytesIO(b"x" * 1001), config={"mime_type": "text/plain"})
    assert info.value.code == 400
    assert info.value.status == "INVALID_ARGUMENT"
    assert emulator.state()["requests"]["upload"]["count"] == 3  # no chunk after the refusal


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(port=0, storage_quota_bytes=1000)])
def test_storage_quota_exhausted(emulator: RunningEmulator) -> None:
    """Uploads beyond the storage quota give 429 RESOURCE_EXHAUSTED; deleting frees room."""
    client = sync_client(emulator)
    first = client.files.upload(file=io.BytesIO(b"x" * 600), config={"mime_type": "text/plain"})
    with pytest.raises(errors.ClientError) as info:
        client.files.upload(file=io.BytesIO(b"y" * 600), config={"mime_type": "text/plain"})
    assert info.value.code == 429
    assert info.value.status == "RESOURCE_EXHAUSTED"
    assert first.name is not None
    client.files.delete(name=first.name)
    client.files.upload(file=io.BytesIO(b"y" * 600), config={"mime_type": "text/plain"})
    assert [f["sizeBytes"] for f in emulator.state()["files"]] == [600]
