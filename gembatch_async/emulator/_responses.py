"""Plausible model output for batch requests (no model runs; text is derived from the prompt)."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from gembatch_async._schema import EMBED, GENERATE
from gembatch_async.emulator._validation import request_error

#: gemini-embedding-001's default vector size.
DEFAULT_DIMENSIONS = 3072


def _prompt_text(request: dict[str, Any]) -> str:
    """All text parts of the request's contents, joined."""
    texts: list[str] = []
    contents = request.get("contents")
    if isinstance(contents, list):
        for content in contents:
            parts = content.get("parts") if isinstance(content, dict) else None
            if isinstance(parts, list):
                texts.extend(str(p["text"]) for p in parts if isinstance(p, dict) and "text" in p)
    return "\n".join(texts)


def _wants_json(request: dict[str, Any]) -> bool:
    """True when the request asks for JSON output (either spelling of the fields)."""
    config = request.get("generationConfig", request.get("generation_config"))
    if not isinstance(config, dict):
        return False
    mime = config.get("responseMimeType", config.get("response_mime_type"))
    return mime == "application/json"


def _tokens(text: str) -> int:
    """A rough token count (about four characters per token)."""
    return max(1, len(text) // 4)


def _thinks(model: str) -> bool:
    """Models that think by default: "Thinking is on by default" for the 2.5 series
    (ai.google.dev/gemini-api/docs/thinking) and the 3 series after it; 2.0 does not."""
    name = model.rsplit("/", 1)[-1]
    return name.startswith(("gemini-2.5", "gemini-3")) and "image" not in name


def _thought_tokens(model: str, seed: str, answer_tokens: int) -> int:
    """Thinking tokens, varied per answer (0 to 3x the answer), 0 for models that do not think."""
    if not _thinks(model):
        return 0
    spread = (
        int.from_bytes(hashlib.sha256(seed.encode("utf-8", "surrogatepass")).digest()[:2], "big")
        % 4
    )
    return spread * answer_tokens


def usage_metadata(prompt_count: int, answer_tokens: int, thought_tokens: int) -> dict[str, Any]:
    """A usageMetadata in the service's shape. Thinking is counted apart from the
    candidates and inside the total: a captured gemini-2.5-flash answer reads
    promptTokenCount 282, candidatesTokenCount 2, thoughtsTokenCount 44,
    totalTokenCount 328 (valentinfrlch/ha-llmvision#609), as the SDK's
    GenerateContentResponseUsageMetadata documents the total (google-genai 3.6.1);
    ``thoughtsTokenCount`` is left out when 0, as in the captured 2.5-flash-lite
    outputs (tests/fixtures/real-gemini-batch)."""
    usage: dict[str, Any] = {
        "promptTokenCount": prompt_count,
        "candidatesTokenCount": answer_tokens,
        "totalTokenCount": prompt_count + answer_tokens + thought_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_count}],
    }
    if thought_tokens:
        usage["thoughtsTokenCount"] = thought_tokens
    return usage


def prompt_tokens(request: dict[str, Any]) -> int:
    """The prompt tokens an answer to ``request`` reports (and countTokens counts)."""
    return _tokens(_prompt_text(request))


def fake_response(
    request: dict[str, Any], batch_id: str, model: str, position: int
) -> dict[str, Any]:
    """A GenerateContentResponse in camelCase, deterministic per batch and line."""
    prompt = _prompt_text(request)
    if _wants_json(request):
        text = json.dumps({"emulated": True, "prompt": prompt[:200]})
    else:
        text = f"Emulated answer from {model} to: {prompt[:200]}"
    prompt_count = _tokens(prompt)
    answer_tokens = _tokens(text)
    response_id = hashlib.sha256(f"{batch_id}/{position}".encode()).hexdigest()[:22]
    return {
        "candidates": [
            {
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": usage_metadata(
            prompt_count,
            answer_tokens,
            # By the prompt, not the random batch id: a seeded demo's costs repeat.
            _thought_tokens(model, f"{position}/{prompt}", answer_tokens),
        ),
        "modelVersion": model,
        "responseId": response_id,
    }


def _dimensions(request: dict[str, Any]) -> int:
    """outputDimensionality when it is a sensible int, else the model's default."""
    wanted = request.get("outputDimensionality", request.get("output_dimensionality"))
    if (
        isinstance(wanted, int)
        and not isinstance(wanted, bool)
        and 0 < wanted <= DEFAULT_DIMENSIONS
    ):
        return wanted
    return DEFAULT_DIMENSIONS


def fake_embedding(request: dict[str, Any]) -> dict[str, Any]:
    """A batch embedding answer, ``{"embedding": {"values": [...]}, "tokenCount": "N"}``,
    the same for the same text.

    Its shape is the SDK's ``SingleEmbedContentResponse`` (google-genai 3.6.1
    ``types.py``; the response of an ``InlinedEmbedContentResponse``): ``embedding`` and
    ``tokenCount``, the latter a ``Long`` in the Java and Kotlin SDKs (java-genai
    ``SingleEmbedContentResponse.tokenCount()``), i.e. an int64, which proto3 JSON writes
    as a string. No captured output shows the service filling it; the tool reads a
    number or a string, and an answer without it prices as "unknown". N is the
    content's tokens by the emulator's one rule (about four characters a token)."""
    content = request.get("content")
    text = _prompt_text({"contents": [content]}) if isinstance(content, dict) else ""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    values = [round(rng.uniform(-0.1, 0.1), 7) for _ in range(_dimensions(request))]
    return {"embedding": {"values": values}, "tokenCount": str(_tokens(text))}


def request_response(
    request: dict[str, Any], kind: str, batch_id: str, model: str, position: int
) -> dict[str, Any]:
    """The response to one valid request of ``kind``."""
    if kind == EMBED:
        return fake_embedding(request)
    return fake_response(request, batch_id, model, position)


def request_failure(message: str) -> dict[str, Any]:
    """A per-request error, shaped as the service writes it in an output line."""
    return {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}


def parse_line(raw: bytes) -> tuple[Any, dict[str, Any] | None, str | None]:
    """(key or None, request or None, error message or None) for one input line."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None, None, "Invalid JSON payload: the line is not valid JSON."
    if not isinstance(obj, dict):
        return None, None, "Invalid request: each line must be a JSON object."
    key = obj.get("key")
    request = obj.get("request")
    if not isinstance(request, dict):
        return key, None, "Invalid request: the line has no `request` object."
    return key, request, None


def line_error(raw: bytes, kind: str) -> str | None:
    """Why the service would answer this input line with an error, or None."""
    _, request, error = parse_line(raw)
    return error if request is None else request_error(request, kind)


def line_result(
    raw: bytes, batch_id: str, model: str, position: int, kind: str = GENERATE
) -> dict[str, Any]:
    """The output line for one input line: `{"key"?, "response"}` or `{"key"?, "error"}`.

    A line whose request the service would not parse (a field the API does not
    have, a value of the wrong type) gets its error, as every other line of the
    batch still gets its answer.
    """
    key, request, error = parse_line(raw)
    if request is not None:
        error = request_error(request, kind)
    result: dict[str, Any] = {}
    if request is None or error is not None:
        result["error"] = request_failure(error or "Invalid request.")
    else:
        result["response"] = request_response(request, kind, batch_id, model, position)
    # Lines without a key get none back, as on the real service.
    if key is not None:
        result["key"] = key
    return result
