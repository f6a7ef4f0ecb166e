"""Schemathesis hooks for the OpenAPI contract test (tests/integration/test_openapi.py).

A JSON schema cannot state three documented rules of the rank core that depend on the model
or on token counts, so schema-valid requests that could break them are not generated as
"positive" cases (they get a clear 400, tested in tests/integration/test_http.py,
test_truncation.py and test_causal.py):
- an instruction is refused by a model without a slot for one (no model the contract test
  serves has one);
- a pair longer than the model reads is refused when the call asks not to truncate (NIM's
  ``truncate: NONE``, TEI's ``truncate: false``, Voyage's ``truncation: false``);
- a query too long to leave a chunk window is refused when chunking is asked for;
- an image is refused by a text-only model (the contract test serves no vision-language
  model), and no schema can say that a string must encode a PNG, JPEG or WebP image.
Negative cases are untouched.
"""

from __future__ import annotations

from typing import Any

import schemathesis

# Characters below which no generated pair can exceed the smallest max length served (256
# tokens), even at several tokens a character.
SHORT = 40


def _texts(body: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    for value in body.values():
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            texts += _texts(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    texts.append(item)
                elif isinstance(item, dict):
                    texts += _texts(item)
    return texts


def _refuses_overflow(body: dict[str, Any], path: str) -> bool:
    if path == "/v1/ranking":
        return body.get("truncate", "NONE") == "NONE"
    if path == "/rerank":
        return body.get("truncate") is False
    if path == "/voyage/v1/rerank":
        return body.get("truncation") is False
    return False


def _has_image(body: dict[str, Any]) -> bool:
    items = [
        item
        for key in ("documents", "passages", "input")
        if isinstance(body.get(key), list)
        for item in body[key]
    ]
    return any(isinstance(item, dict) and "image" in item for item in items)


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return True
    body = case.body if isinstance(case.body, dict) else {}
    if body.get("instruction") is not None or body.get("instruct") is not None:
        return False
    if _has_image(body):
        return False
    long_texts = any(len(text) > SHORT for text in _texts(body))
    path = case.operation.path
    if _refuses_overflow(body, path) and long_texts:
        return False
    return not (body.get("max_chunks_per_doc") is not None and long_texts)
