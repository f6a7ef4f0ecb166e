"""Encoder model: runs the ONNX graph with ONNX Runtime on merged ragged requests.

The rows of all requests in the batch are pooled, run in the micro-batches of least padding
cost (bounded by ``max_rows_per_run`` and ``max_attention_cells``) and split back per request.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from reranker.inference import create_session, micro_batches, pad_batch, pool_rows, split_rows
from reranker.triton_models._config import ModelArgs


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        path = model.version_dir / model.parameter("onnx_file", "model.onnx")
        self._session = create_session(path, int(model.parameter("intra_op_threads", "0")))
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._graph_output = self._session.get_outputs()[0].name
        self._max_cells = int(model.parameter("max_attention_cells"))
        self._max_rows = int(model.parameter("max_rows_per_run"))
        (self._output,) = model.output_names()

    def execute(self, requests: list[Any]) -> list[Any]:
        pooled = pool_rows(
            [
                {
                    name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    for name in self._inputs
                }
                for request in requests
            ],
            self._inputs,
        )
        scores = np.empty(len(pooled.lengths), dtype=np.float32)
        try:
            for rows in micro_batches(pooled.lengths, self._max_cells, self._max_rows):
                (out,) = self._session.run([self._graph_output], pad_batch(pooled, rows))
                scores[rows] = out.reshape(-1)
        except Exception as error:  # noqa: BLE001 - every request of the batch is told why
            failure = pb_utils.TritonError(f"inference failed: {error}")
            return [pb_utils.InferenceResponse(error=failure) for _ in requests]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(self._output, part.reshape(-1, 1))]
            )
            for part in split_rows(scores, pooled.counts)
        ]
