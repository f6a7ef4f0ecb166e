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

from reranker.backend.batching import RunCost, micro_batches, pad_batch, pool_rows
from reranker.backend.heap import HeapTrimmer
from reranker.backend.models._config import ModelArgs, runtime_threads
from reranker.backend.models._responses import score_responses
from reranker.backend.runtimes import GraphRunner, load_runner
from reranker.contract.model import ModelKind, Runtime
from reranker.contract.parameters import (
    EncoderParameters,
    GraphEncoderParameters,
    TorchEncoderParameters,
)


def _runner(model: ModelArgs, args: dict[str, str]) -> tuple[GraphRunner, EncoderParameters]:
    if model.parameters(EncoderParameters).runtime is not Runtime.TORCH:
        graph = model.parameters(GraphEncoderParameters)
        runner = load_runner(
            model.version_dir / graph.onnx_file,
            graph.runtime,
            runtime_threads(model, graph.intra_op_threads),
            graph.inference_precision,
            graph.intra_op_spin_us,
        )
        if graph.shared_prefix:
            from reranker.backend.prefix import SharedPrefixGraph

            return SharedPrefixGraph(runner), graph
        return runner, graph
    from reranker.backend.torch_runtime import TorchRunner, instance_device

    torch = model.parameters(TorchEncoderParameters)
    on_gpu = args["model_instance_kind"] == "GPU"
    relevance = torch.relevance_tokens
    runner = TorchRunner(
        model.version_dir / torch.checkpoint_dir,
        bi_encoder=torch.scorer is ModelKind.BI_ENCODER,
        input_names=model.input_names(),
        device=instance_device(args["model_instance_kind"], args["model_instance_device_id"]),
        dtype=torch.torch_dtype,
        threads=0 if on_gpu else runtime_threads(model, torch.intra_op_threads),
        compile_mode=torch.torch_compile,
        relevance=(relevance[0], relevance[1]) if relevance else None,
        shared_prefix=torch.shared_prefix,
    )
    return runner, torch


class _VisionLanguageEncoder:
    """A vision-language reranker's encoder: the rows of every merged request, images and
    all, scored in micro-batches of similar length (``backend.vision``)."""

    def __init__(self, model: ModelArgs, args: dict[str, str]) -> None:
        from reranker.backend.torch_runtime import TORCH_DTYPES, instance_device
        from reranker.backend.vision import VisionLanguageRunner

        torch = model.parameters(TorchEncoderParameters)
        on_gpu = args["model_instance_kind"] == "GPU"
        relevant, irrelevant = torch.relevance_tokens
        self._runner = VisionLanguageRunner(
            model.version_dir / torch.checkpoint_dir,
            (relevant, irrelevant),
            device=instance_device(args["model_instance_kind"], args["model_instance_device_id"]),
            dtype=TORCH_DTYPES[torch.torch_dtype],
            threads=0 if on_gpu else runtime_threads(model, torch.intra_op_threads),
        )
        self._inputs = model.input_names()
        self._max_rows = torch.max_rows_per_run
        self._max_tokens = torch.max_tokens_per_run or torch.max_attention_cells
        (self._output,) = model.output_names()
        self._trim_heap = HeapTrimmer()

    def execute(self, requests: list[Any]) -> list[Any]:
        from reranker.backend.vision import score_rows, unpack_rows

        def score() -> tuple[np.ndarray, list[int]]:
            rows, counts = [], []
            for request in requests:
                tensors = {
                    name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    for name in self._inputs
                }
                part = unpack_rows(tensors, self._runner.patch_values)
                rows.extend(part)
                counts.append(len(part))
            scores = score_rows(rows, self._runner.run, self._max_rows, self._max_tokens)
            return scores, counts

        return score_responses(requests, self._output, score, self._trim_heap)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        parameters = model.parameters(EncoderParameters)
        self._vision: _VisionLanguageEncoder | None = None
        if parameters.runtime is Runtime.TORCH and (
            model.parameters(TorchEncoderParameters).vision_language
        ):
            self._vision = _VisionLanguageEncoder(model, args)
            return
        self._runner, parameters = _runner(model, args)
        self._inputs = self._runner.input_names
        self._max_cells = parameters.max_attention_cells
        self._max_rows = parameters.max_rows_per_run
        self._max_tokens = parameters.max_tokens_per_run
        self._cost = RunCost(overhead_tokens=parameters.run_overhead_tokens)
        (self._output,) = model.output_names()
        self._trim_heap = HeapTrimmer()

    def execute(self, requests: list[Any]) -> list[Any]:
        if self._vision is not None:
            return self._vision.execute(requests)
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

        def score() -> tuple[np.ndarray, list[int]]:
            scores = np.empty(len(pooled.lengths), dtype=np.float32)
            for rows in micro_batches(
                pooled.lengths, self._max_cells, self._max_rows, self._cost, self._max_tokens
            ):
                scores[rows] = self._runner.run(pad_batch(pooled, rows))
            return scores, pooled.counts

        return score_responses(requests, self._output, score, self._trim_heap)
