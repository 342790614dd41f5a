"""Both backends behind one test face: how to reach each, and its server truth.

The ``service`` fixture (conftest) gives a :class:`Service` for the Gemini API
emulator or for the Vertex routes over the Cloud Storage emulator, so one test body
checks both: the same submit (library or CLI), the same convergence assertion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import google.auth.credentials
from google.cloud import storage

from gembatch_async import VertexTarget
from gembatch_async.emulator import RunningEmulator, RunningStorageEmulator

from .helpers import TEST_API_KEY, assert_converged, cli_env

GEMINI, VERTEX = "gemini", "vertex"
PROJECT = "gembatch-test-project"
LOCATION = "us-central1"
#: Where the Vertex backend stages inputs in tests (a prefix, as users may give one).
BUCKET_URI = "gs://gembatch-test/inputs"
#: Live states of a Vertex job (it exists, will or did produce results).
VERTEX_LIVE = {
    "JOB_STATE_QUEUED",
    "JOB_STATE_PENDING",
    "JOB_STATE_RUNNING",
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_PARTIALLY_SUCCEEDED",
}
#: Endpoints of a fault spec that hit Cloud Storage (the rest hit the Vertex routes).
_STORAGE_ENDPOINTS = {"upload", "download", "delete"}
_BOTH = {"get", "*"}


@dataclasses.dataclass
class Service:
    """One backend's emulators, and what tests need of them."""

    kind: str
    emulator: RunningEmulator
    storage: RunningStorageEmulator | None = None

    @property
    def vertex(self) -> VertexTarget | None:
        if self.storage is None:
            return None
        return VertexTarget(
            project=PROJECT,
            location=LOCATION,
            bucket=BUCKET_URI,
            base_url=self.emulator.base_url,
            storage_host=self.storage.url,
        )

    def submit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that point submit() / run() at this backend."""
        if self.vertex is not None:
            return {"vertex": self.vertex}
        return {"api_key": TEST_API_KEY, "base_url": self.emulator.base_url}

    def env(self, **extra: str) -> dict[str, str]:
        """A CLI subprocess environment selecting this backend (by the env, no flags)."""
        if self.storage is None:
            return cli_env(self.emulator, **extra)
        return cli_env(
            None,
            GEMBATCH_BACKEND=VERTEX,
            GOOGLE_CLOUD_PROJECT=PROJECT,
            GOOGLE_CLOUD_LOCATION=LOCATION,
            GEMBATCH_BUCKET=BUCKET_URI,
            GOOGLE_VERTEX_BASE_URL=self.emulator.base_url,
            STORAGE_EMULATOR_HOST=self.storage.url,
            **extra,
        )

    def set_faults(self, spec: str, seed: int | None = None) -> None:
        """Inject ``spec``: on Vertex, storage endpoints go to Cloud Storage."""
        if self.storage is None:
            self.emulator.set_faults(spec, seed=seed)
            return
        rules = [r for r in spec.split(",") if r]
        to_storage = [r for r in rules if r.split(":", 1)[0] in _STORAGE_ENDPOINTS | _BOTH]
        to_jobs = [r for r in rules if r.split(":", 1)[0] not in _STORAGE_ENDPOINTS]
        self.storage.set_faults(",".join(to_storage), seed=seed)
        self.emulator.set_faults(",".join(to_jobs), seed=seed)

    def creates(self) -> int:
        return int(self.emulator.state()["requests"]["create"]["count"])

    def jobs(self) -> list[dict[str, Any]]:
        """Every job: name, displayName, state and the input it reads."""
        state = self.emulator.state()
        if self.storage is None:
            return [{**b, "input": b["inputFile"]} for b in state["batches"] if "inputFile" in b]
        return [{**j, "input": j["inputUris"][0]} for j in state["batchPredictionJobs"]]

    def uploads(self) -> list[str]:
        """Every staged input (Files API uploads; objects under the bucket's prefix)."""
        if self.storage is None:
            return [f["name"] for f in self.emulator.state()["files"] if f["source"] == "UPLOADED"]
        bucket, prefix = BUCKET_URI.removeprefix("gs://").split("/", 1)
        names = [b.name for b in _gcs(self.storage).list_blobs(bucket, prefix=prefix + "/")]
        return [f"gs://{bucket}/{n}" for n in names if "/out/" not in f"/{n}"]

    def assert_converged(self, journal: list[dict[str, Any]], inputs: Sequence[str]) -> None:
        """One live job per input, no staged input without its job, journal = server."""
        if self.storage is None:
            assert_converged(self.emulator.state(), journal, inputs)
            return
        live = [j for j in self.jobs() if j["state"] in VERTEX_LIVE]
        by_input: dict[str, list[dict[str, Any]]] = {}
        for job in live:
            by_input.setdefault(job["displayName"].rsplit(" [gba-", 1)[0], []).append(job)
        duplicates = {k: [j["name"] for j in v] for k, v in by_input.items() if len(v) > 1}
        assert not duplicates, f"inputs with more than one live job: {duplicates}"
        assert sorted(by_input) == sorted(inputs), "every input has exactly one live job"
        used = {j["input"] for j in self.jobs()}
        stray = [u for u in self.uploads() if u not in used]
        assert not stray, f"staged inputs no job uses: {stray}"
        latest = {line["input_file"]: line["batch"]["name"] for line in journal}
        server = {path: found[0]["name"] for path, found in by_input.items()}
        assert latest == server, "the journal records exactly the server's jobs"
        assert {line.get("backend") for line in journal} == {VERTEX}


def _gcs(running: RunningStorageEmulator) -> Any:
    return storage.Client(
        project=PROJECT,
        credentials=google.auth.credentials.AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": running.url},
    )
