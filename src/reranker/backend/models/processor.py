"""Tokenizer model of a vision-language reranker: (QUERY, DOCUMENT) string rows and their
images (QUERY_IMAGE, DOCUMENT_IMAGE: encoded bytes, empty for none) in, one row each of
tokens, image grids and patches out, made by the checkpoint's own processor.

The rank service checked every image before it sent it. A request that cannot be served
(a row longer than the model reads) gets its own error; the others in the batch go on.
"""

from __future__ import annotations

import json
from typing import Any

import triton_python_backend_utils as pb_utils

from reranker.backend.images import decode
from reranker.backend.models._config import ModelArgs
from reranker.backend.models._responses import respond_each, tensor_response, with_token_counts
from reranker.backend.vision import PairProcessor, pack_rows, pair_messages
from reranker.contract.parameters import ProcessorParameters
from reranker.contract.tensors import (
    DOCUMENT,
    DOCUMENT_IMAGE,
    QUERY,
    QUERY_IMAGE,
    TruncationOptions,
)


def _column(request: Any, name: str) -> list[bytes]:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return [bytes(value) for value in tensor.as_numpy().reshape(-1)]


def _side(text: bytes, image: bytes | None) -> tuple[str, Any]:
    return text.decode("utf-8"), decode(image) if image else None


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        parameters = model.parameters(ProcessorParameters)
        self._processor = PairProcessor(
            model.version_dir / parameters.processor_dir,
            parameters.max_length,
            parameters.intra_op_threads,
        )
        self._outputs = model.output_names()

    def _respond(self, request: Any) -> Any:
        queries, documents = _column(request, QUERY), _column(request, DOCUMENT)
        if len(queries) != len(documents):
            raise ValueError("QUERY and DOCUMENT must hold the same number of rows")
        query_images = _column(request, QUERY_IMAGE)
        document_images = _column(request, DOCUMENT_IMAGE)
        if not len(query_images) == len(document_images) == len(queries):
            raise ValueError("QUERY_IMAGE and DOCUMENT_IMAGE must hold one entry per row")
        options = TruncationOptions.from_parameters(json.loads(request.parameters() or "{}"))
        rows = [
            self._processor.row(
                pair_messages(
                    _side(query, query_image),
                    _side(document, document_image),
                    options.instruction,
                ),
                index,
            )
            for index, (query, query_image, document, document_image) in enumerate(
                zip(queries, query_images, documents, document_images, strict=True)
            )
        ]
        return tensor_response(with_token_counts(pack_rows(rows)), self._outputs)

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(requests, self._respond)
