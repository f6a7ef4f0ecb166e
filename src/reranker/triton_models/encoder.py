"""Encoder model: runs the ONNX graph (ONNX Runtime or OpenVINO) on merged ragged requests.

The rows of all requests in the batch are pooled, run in the micro-batches of least padding
cost (bounded by ``max_rows_per_run`` and ``max_attention_cells``) and split back per request.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from reranker.inference import micro_batches, pad_batch, pool_rows, split_rows
from reranker.runtimes import Runtime, load_runner
from reranker.triton_models._config import ModelArgs


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        path = model.version_dir / model.parameter("onnx_file", "model.onnx")
        self._runner = load_runner(
            path,
            Runtime(model.parameter("runtime", Runtime.ONNXRUNTIME.value)),
            int(model.parameter("intra_op_threads", "0")),
            model.parameter("inference_precision", "f32"),
        )
        self._inputs = self._runner.input_names
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
                scores[rows] = self._runner.run(pad_batch(pooled, rows))
        except Exception as error:  # noqa: BLE001 - every request of the batch is told why
            failure = pb_utils.TritonError(f"inference failed: {error}")
            return [pb_utils.InferenceResponse(error=failure) for _ in requests]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(self._output, part.reshape(-1, 1))]
            )
            for part in split_rows(scores, pooled.counts)
        ]
