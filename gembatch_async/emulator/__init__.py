"""A local emulator of the Gemini Developer API's Files, Batches and Models services.

The unmodified google-genai SDK talks to it over real HTTP (uvicorn + starlette):
point `HttpOptions(base_url=...)` at `RunningEmulator.base_url`. See PROTOCOL.md for the
wire details it imitates.
"""

from __future__ import annotations

from gembatch_async.emulator._config import EmulatorConfig
from gembatch_async.emulator._faults import ENDPOINTS, FaultRule, FaultSpecError, parse_fault_spec
from gembatch_async.emulator._models import DEFAULT_MODELS, ModelSpec, model_spec
from gembatch_async.emulator._serve import EmulatorThread, RunningEmulator, serve_emulator

__all__ = [
    "DEFAULT_MODELS",
    "ENDPOINTS",
    "EmulatorConfig",
    "EmulatorThread",
    "FaultRule",
    "FaultSpecError",
    "ModelSpec",
    "RunningEmulator",
    "model_spec",
    "parse_fault_spec",
    "serve_emulator",
]
