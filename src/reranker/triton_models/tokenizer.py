"""Tokenizer model: (QUERY, DOCUMENT) string rows in, padded token tensors out.

All requests of one ``execute`` are tokenized together; each request's rows are then
padded to one length bucket of their own.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from reranker.tokenization import (
    PairMode,
    PairTokenizer,
    PairTokenizerConfig,
    parse_buckets,
)
from reranker.triton_models._config import ModelArgs


def _texts(request: object, name: str) -> list[str]:
    array = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
    texts = []
    for row, value in enumerate(array):
        try:
            texts.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        except UnicodeDecodeError as error:
            raise ValueError(f"{name} row {row} is not valid UTF-8") from error
    return texts


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        max_length = int(model.parameter("max_length"))
        config = PairTokenizerConfig(
            max_length=max_length,
            pair_mode=PairMode(model.parameter("pair_mode")),
            max_chars=int(model.parameter("max_chars", str(max_length * 16))),
            length_buckets=parse_buckets(model.parameter("length_buckets", "")),
        )
        path = model.version_dir / model.parameter("tokenizer_file", "tokenizer.json")
        self._tokenizer = PairTokenizer.from_file(str(path), config)
        self._outputs = model.output_names()

    def execute(self, requests: list[object]) -> list[object]:
        responses: list[object] = [None] * len(requests)
        queries: list[str] = []
        documents: list[str] = []
        spans: list[tuple[int, int, int]] = []
        for index, request in enumerate(requests):
            try:
                request_queries = _texts(request, "QUERY")
                request_documents = _texts(request, "DOCUMENT")
                if len(request_queries) != len(request_documents):
                    raise ValueError("QUERY and DOCUMENT must hold the same number of rows")
            except ValueError as error:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(error))
                )
                continue
            spans.append((index, len(queries), len(queries) + len(request_queries)))
            queries.extend(request_queries)
            documents.extend(request_documents)
        rows = self._tokenizer.tokenize(queries, documents) if queries else []
        for index, start, end in spans:
            tensors = self._tokenizer.pad(rows[start:end])
            responses[index] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(tensors[name]))
                    for name in self._outputs
                ]
            )
        return responses
