"""Reading an error answer of the HTTP door as each vendor's clients read it."""

from __future__ import annotations

from typing import Any

COHERE = frozenset({"/v1/rerank", "/v2/rerank"})
OPENAI = frozenset({"/reranking", "/v1/reranking", "/score", "/v1/score"})
VOYAGE = frozenset({"/voyage/v1/rerank"})


def error_message(path: str, body: Any) -> str:
    """The message of an error body, checking it has the shape the route's vendor uses:
    Cohere's ``{"message"}``, Voyage's ``{"detail"}``, OpenAI's ``{"error": {"message",
    "type", "code"}}`` (vLLM, llama.cpp, Mixedbread), else TEI's ``{"error", "error_type"}``."""
    if path in COHERE:
        assert set(body) == {"message"}, body
        return str(body["message"])
    if path in VOYAGE:
        assert set(body) == {"detail"}, body
        return str(body["detail"])
    if path in OPENAI:
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code"}, body
        return str(body["error"]["message"])
    assert set(body) == {"error", "error_type"}, body
    return str(body["error"])
