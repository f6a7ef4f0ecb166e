"""The responses every one of our Python-backend models builds the same way."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from reranker.backend.batching import split_rows
from reranker.contract.tensors import DOCUMENT, QUERY, TOKENS, TruncationOptions


def request_texts(request: Any, name: str) -> list[str]:
    array = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
    texts = []
    for row, value in enumerate(array):
        try:
            texts.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        except UnicodeDecodeError as error:
            raise ValueError(f"{name} row {row} is not valid UTF-8") from error
    return texts


def request_pairs(request: Any) -> tuple[list[str], list[str], TruncationOptions]:
    """A request's (QUERY, DOCUMENT) rows and its truncation options."""
    queries = request_texts(request, QUERY)
    documents = request_texts(request, DOCUMENT)
    if len(queries) != len(documents):
        raise ValueError("QUERY and DOCUMENT must hold the same number of rows")
    options = TruncationOptions.from_parameters(json.loads(request.parameters() or "{}"))
    return queries, documents, options


def with_token_counts(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tokenizer's tensors and each row's token count (its ``attention_mask`` covers the
    whole row, a shared prompt prefix included)."""
    counts = tensors["attention_mask"].sum(axis=1, dtype=np.int32).reshape(-1, 1)
    return {**tensors, TOKENS: counts}


def tensor_response(tensors: Mapping[str, np.ndarray], names: Sequence[str]) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor(name, np.ascontiguousarray(tensors[name])) for name in names
        ]
    )


def respond_each(requests: list[Any], respond: Callable[[Any], Any]) -> list[Any]:
    """One response per request; a request that cannot be served (a ValueError: bad input or
    a refused row) gets its own error and the others go on."""
    responses = []
    for request in requests:
        try:
            responses.append(respond(request))
        except ValueError as error:
            responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))))
    return responses


def score_responses(
    requests: list[Any],
    output: str,
    score: Callable[[], tuple[np.ndarray, Sequence[int]]],
    after: Callable[[], object],
) -> list[Any]:
    """Each request's share of the scores ``score`` returns (every row of the batch, and the
    row count of each request); if it fails, every request of the batch is told why.
    ``after`` runs either way."""
    try:
        scores, counts = score()
    except Exception as error:  # noqa: BLE001 - every request of the batch is told why
        failure = pb_utils.TritonError(f"inference failed: {error}")
        return [pb_utils.InferenceResponse(error=failure) for _ in requests]
    finally:
        after()
    return [
        pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(output, part.reshape(-1, 1))])
        for part in split_rows(scores, counts)
    ]
