"""Late-interaction tokenizer model: (QUERY, DOCUMENT) string rows in; each row's document
and query tokenized apart (``backend.late_interaction``), with the positions MaxSim scores.

A request's query is tokenized once however many rows repeat it. A request that cannot be
served gets its own error; the others in the batch go on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reranker.backend.late_interaction import LateTokenizer
from reranker.backend.models._config import ModelArgs
from reranker.backend.models._responses import request_pairs, respond_each, tensor_response
from reranker.contract.parameters import LateTokenizerParameters
from reranker.contract.tensors import (
    TOKENS,
)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        parameters = model.parameters(LateTokenizerParameters)
        path = model.version_dir / parameters.tokenizer_file
        self._tokenizer = LateTokenizer.from_file(str(path), parameters)
        self._outputs = model.output_names()

    def _respond(self, request: Any) -> Any:
        queries, documents, options = request_pairs(request)
        distinct = list(dict.fromkeys(queries))
        position = {query: index for index, query in enumerate(distinct)}
        rows = np.array([position[query] for query in queries])
        query_tensors, query_tokens = self._tokenizer.queries(distinct, options)
        tensors = {name: values[rows] for name, values in query_tensors.items()}
        tensors.update(self._tokenizer.documents(documents, options))
        # The tokens of each row's query and document, the query's expansion not counted.
        counts = query_tokens[rows] + tensors["attention_mask"].sum(axis=1)
        tensors[TOKENS] = counts.astype(np.int32).reshape(-1, 1)
        return tensor_response(tensors, self._outputs)

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(requests, self._respond)
