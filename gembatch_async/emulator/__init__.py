"""A local emulator of the Gemini Developer API's Files, Batches and Models services,
and of Vertex AI batch prediction (see _vertex.py for its routes and client recipe).

The unmodified google-genai SDK talks to it over real HTTP (uvicorn + starlette):
point `HttpOptions(base_url=...)` at `RunningEmulator.base_url`. See PROTOCOL.md for the
wire details it imitates. The Vertex routes read and write Cloud Storage through a Cloud
Storage emulator: `serve_storage_emulator()` starts one in-process (the `vertex` extra).
"""

from __future__ import annotations

from gembatch_async.emulator._config import EmulatorConfig
from gembatch_async.emulator._faults import ENDPOINTS, FaultRule, FaultSpecError, parse_fault_spec
from gembatch_async.emulator._models import DEFAULT_MODELS, ModelSpec, model_spec
from gembatch_async.emulator._serve import EmulatorThread, RunningEmulator, serve_emulator
from gembatch_async.emulator._storage_server import RunningStorageEmulator, serve_storage_emulator

__all__ = [
    "DEFAULT_MODELS",
    "ENDPOINTS",
    "EmulatorConfig",
    "EmulatorThread",
    "FaultRule",
    "FaultSpecError",
    "ModelSpec",
    "RunningEmulator",
    "RunningStorageEmulator",
    "model_spec",
    "parse_fault_spec",
    "serve_emulator",
    "serve_storage_emulator",
]
