"""The model catalogue: which models the emulator serves, and what each supports.

Entries and their ``supportedGenerationMethods`` follow a real ``GET /v1/models``
answer of the Gemini API (2026); the two preview models the emulator served
before are kept. A name outside the catalogue (``--model NAME``) is served as
an embedding model when its name says "embedding", else as a generation model
that supports batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any

GENERATE_METHODS = ("generateContent", "countTokens", "createCachedContent", "batchGenerateContent")
EMBED_METHODS = ("embedContent", "countTextTokens", "countTokens", "asyncBatchEmbedContent")
#: The methods a batch create needs, by route.
BATCH_GENERATE = "batchGenerateContent"
BATCH_EMBED = "asyncBatchEmbedContent"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model as models.get describes it."""

    name: str  # bare id, e.g. "gemini-2.5-flash"
    display_name: str
    description: str
    version: str = "001"
    input_token_limit: int = 1048576
    output_token_limit: int = 65536
    methods: tuple[str, ...] = GENERATE_METHODS
    thinking: bool = True

    @property
    def is_embedding(self) -> bool:
        return BATCH_EMBED in self.methods or "embedContent" in self.methods

    def to_json(self) -> dict[str, Any]:
        """The Model resource, camelCase, as the service sends it."""
        body: dict[str, Any] = {
            "name": f"models/{self.name}",
            "version": self.version,
            "displayName": self.display_name,
            "description": self.description,
            "inputTokenLimit": self.input_token_limit,
            "outputTokenLimit": self.output_token_limit,
            "supportedGenerationMethods": list(self.methods),
        }
        if not self.is_embedding:  # embedding models list no sampling parameters
            body.update({"temperature": 1, "topP": 0.95, "topK": 64, "maxTemperature": 2})
            if self.thinking:
                body["thinking"] = True
        return body


def _embedding(name: str, display: str, description: str, version: str, limit: int) -> ModelSpec:
    return ModelSpec(
        name,
        display,
        description,
        version=version,
        input_token_limit=limit,
        output_token_limit=1,
        methods=EMBED_METHODS,
        thinking=False,
    )


CATALOGUE: tuple[ModelSpec, ...] = (
    ModelSpec("gemini-3.1-flash-lite", "Gemini 3.1 Flash Lite", "Gemini 3.1 Flash Lite", "3.1"),
    ModelSpec("gemini-3.5-flash", "Gemini 3.5 Flash", "Gemini 3.5 Flash", "3.5"),
    ModelSpec("gemini-3-flash-preview", "Gemini 3 Flash Preview", "Gemini 3 Flash Preview", "3"),
    ModelSpec("gemini-3.1-pro-preview", "Gemini 3.1 Pro Preview", "Gemini 3.1 Pro Preview", "3.1"),
    ModelSpec(
        "gemini-2.5-flash",
        "Gemini 2.5 Flash",
        "Stable version of Gemini 2.5 Flash, our mid-size multimodal model that supports "
        "up to 1 million tokens, released in June of 2025.",
    ),
    ModelSpec(
        "gemini-2.5-pro",
        "Gemini 2.5 Pro",
        "Stable release (June 17th, 2025) of Gemini 2.5 Pro",
        "2.5",
    ),
    ModelSpec(
        "gemini-2.5-flash-lite",
        "Gemini 2.5 Flash-Lite",
        "Stable version of Gemini 2.5 Flash-Lite, released in July of 2025",
    ),
    ModelSpec(
        "gemini-2.0-flash",
        "Gemini 2.0 Flash",
        "Gemini 2.0 Flash",
        "2.0",
        output_token_limit=8192,
        thinking=False,
    ),
    ModelSpec(
        "gemini-2.5-flash-image",
        "Nano Banana",
        "Gemini 2.5 Flash Preview Image",
        "2.0",
        input_token_limit=32768,
        output_token_limit=32768,
        methods=("generateContent", "countTokens", "batchGenerateContent"),
        thinking=False,
    ),
    # Served, but not for batches: a create with it answers 404 as on the service.
    ModelSpec(
        "gemma-4-31b-it",
        "Gemma 4 31B IT",
        "Gemma 4 31B IT",
        input_token_limit=262144,
        output_token_limit=32768,
        methods=("generateContent", "countTokens"),
    ),
    _embedding(
        "gemini-embedding-001",
        "Gemini Embedding 001",
        "Obtain a distributed representation of a text.",
        "001",
        2048,
    ),
    _embedding(
        "gemini-embedding-2",
        "Gemini Embedding 2",
        "Obtain a distributed representation of multimodal content.",
        "2",
        8192,
    ),
)
_BY_NAME = {spec.name: spec for spec in CATALOGUE}
#: Bare ids served by default, in the order models.list returns them.
DEFAULT_MODELS: tuple[str, ...] = tuple(spec.name for spec in CATALOGUE)


def model_spec(name: str) -> ModelSpec:
    """The catalogue entry, or a plausible one for a name added with --model."""
    bare = name.removeprefix("models/")
    known = _BY_NAME.get(bare)
    if known is not None:
        return known
    pretty = " ".join(part.capitalize() for part in bare.split("-"))
    description = f"{pretty} (added to the local gembatch-async emulator)."
    if "embedding" in bare:
        return _embedding(bare, pretty, description, "001", 2048)
    return ModelSpec(bare, pretty, description)
