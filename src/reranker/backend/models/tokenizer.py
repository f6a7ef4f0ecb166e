"""Tokenizer model: (QUERY, DOCUMENT) string rows in, padded token tensors out.

Each request's rows are tokenized with that request's truncation options (request
parameters ``max_document_tokens`` and ``truncation``) and padded to one length bucket.
A request that cannot be served gets its own error; the others in the batch go on.
"""

from __future__ import annotations

import json
from typing import Any

from reranker.backend.models._config import ModelArgs
from reranker.backend.models._responses import (
    request_pairs,
    respond_each,
    tensor_response,
    with_token_counts,
)
from reranker.backend.tokenization import PairTokenizer, PairTokenizerConfig, PromptTemplate
from reranker.contract.parameters import TokenizerParameters


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        parameters = model.parameters(TokenizerParameters)
        prompt = None
        if parameters.prompt_file:
            prompt_path = model.version_dir / parameters.prompt_file
            prompt = PromptTemplate.from_json(json.loads(prompt_path.read_text()))
        config = PairTokenizerConfig(
            max_length=parameters.max_length,
            pair_mode=parameters.pair_mode,
            max_chars=parameters.max_chars,
            length_buckets=parameters.length_buckets,
            prompt=prompt,
        )
        path = model.version_dir / parameters.tokenizer_file
        self._tokenizer = PairTokenizer.from_file(str(path), config)
        self._outputs = model.output_names()

    def _respond(self, request: Any) -> Any:
        queries, documents, options = request_pairs(request)
        tensors = self._tokenizer.pad(self._tokenizer.tokenize(queries, documents, options))
        return tensor_response(with_token_counts(tensors), self._outputs)

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(requests, self._respond)
