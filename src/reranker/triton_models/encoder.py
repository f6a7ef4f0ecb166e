"""Encoder model: runs the ONNX graph with ONNX Runtime on merged ragged requests.

Requests arrive with their own padded lengths (``allow_ragged_batch``); they are padded
once to the longest of the batch, run as one ONNX Runtime call and split back.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from reranker.inference import create_session, merge_ragged, split_rows
from reranker.triton_models._config import ModelArgs


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        path = model.version_dir / model.parameter("onnx_file", "model.onnx")
        self._session = create_session(path, int(model.parameter("intra_op_threads", "0")))
        self._inputs = [i.name for i in self._session.get_inputs()]
        (self._output,) = model.output_names()

    def execute(self, requests: list[object]) -> list[object]:
        batches = [
            {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in self._inputs
            }
            for request in requests
        ]
        counts = [batch[self._inputs[0]].shape[0] for batch in batches]
        try:
            (scores,) = self._session.run(None, merge_ragged(batches, self._inputs))
        except Exception as error:  # noqa: BLE001 - every request of the batch is told why
            failure = pb_utils.TritonError(f"inference failed: {error}")
            return [pb_utils.InferenceResponse(error=failure) for _ in requests]
        scores = scores.reshape(-1, 1).astype(np.float32, copy=False)
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self._output, part)])
            for part in split_rows(scores, counts)
        ]
