"""Encoder model: runs the ONNX graph (ONNX Runtime or OpenVINO) or the checkpoint itself
(PyTorch, on CPU or a GPU) on merged ragged requests.

The rows of all requests in the batch are pooled, run in the micro-batches of least padding
cost (bounded by ``max_rows_per_run``, ``max_attention_cells`` and ``max_tokens_per_run``)
and split back per request.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from reranker.inference import RunCost, micro_batches, pad_batch, pool_rows, split_rows
from reranker.runtimes import GraphRunner, Runtime, load_runner
from reranker.triton_models._config import ModelArgs


def _runner(model: ModelArgs, args: dict[str, str]) -> GraphRunner:
    runtime = Runtime(model.parameter("runtime", Runtime.ONNXRUNTIME.value))
    threads = int(model.parameter("intra_op_threads", "0"))
    if runtime is Runtime.TORCH:
        from reranker.torch_runner import Compile, TorchDtype, TorchRunner, instance_device

        return TorchRunner(
            model.version_dir / model.parameter("checkpoint_dir"),
            bi_encoder=model.parameter("scorer") == "bi-encoder",
            input_names=model.input_names(),
            device=instance_device(args["model_instance_kind"], args["model_instance_device_id"]),
            dtype=TorchDtype(model.parameter("torch_dtype")),
            threads=threads,
            compile_mode=Compile(model.parameter("torch_compile", Compile.EAGER.value)),
            relevance=_relevance(model.parameter("relevance_tokens", "")),
        )
    return load_runner(
        model.version_dir / model.parameter("onnx_file", "model.onnx"),
        runtime,
        threads,
        model.parameter("inference_precision", "f32"),
    )


def _relevance(text: str) -> tuple[int, int] | None:
    """A causal LM's (relevant, irrelevant) token ids, as ``"6000,555"``; '' for others."""
    if not text:
        return None
    relevant, irrelevant = (int(part) for part in text.split(","))
    return relevant, irrelevant


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        self._runner = _runner(model, args)
        self._inputs = self._runner.input_names
        self._max_cells = int(model.parameter("max_attention_cells"))
        self._max_rows = int(model.parameter("max_rows_per_run"))
        self._max_tokens = int(model.parameter("max_tokens_per_run", "0"))
        self._cost = RunCost(overhead_tokens=float(model.parameter("run_overhead_tokens", "16")))
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
            for rows in micro_batches(
                pooled.lengths, self._max_cells, self._max_rows, self._cost, self._max_tokens
            ):
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
