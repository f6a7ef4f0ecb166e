"""Late-interaction encoder model: the merged rows of every request, each distinct query and
document encoded once into token vectors (backbone, projection, normalization: the ONNX graph
under ONNX Runtime, or the checkpoint under PyTorch), a document seen before taken from the
bounded cache when it is on, and one MaxSim score per row (``backend.late_interaction``).

The document cache lives in this process (each encoder instance holds its own), bounded by
``document_cache_bytes``; its hits and misses are counted on Triton's metrics endpoint as
``reranker_document_cache_hits_total`` and ``reranker_document_cache_misses_total``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from reranker.backend.batching import RunCost
from reranker.backend.heap import HeapTrimmer
from reranker.backend.late_interaction import (
    LateScorer,
    OnnxTokenVectors,
    VectorCache,
    VectorRun,
)
from reranker.backend.models._config import ModelArgs, runtime_threads
from reranker.backend.models._responses import score_responses
from reranker.backend.runtimes import create_session
from reranker.contract.model import ENCODER_SUFFIX, Runtime
from reranker.contract.parameters import LateEncoderParameters


def _vectors(
    model: ModelArgs, parameters: LateEncoderParameters, args: dict[str, str]
) -> VectorRun:
    """The token vectors' runner: ONNX Runtime on the graph, or PyTorch on the checkpoint
    (on the instance's GPU, or on CPU)."""
    if parameters.runtime is not Runtime.TORCH:
        session = create_session(
            model.version_dir / parameters.onnx_file,
            runtime_threads(model, parameters.intra_op_threads),
            parameters.intra_op_spin_us,
        )
        return OnnxTokenVectors(session)
    from reranker.backend.late_torch import PROJECTION_FILE, TorchTokenVectors
    from reranker.backend.torch_runtime import instance_device

    on_gpu = args["model_instance_kind"] == "GPU"
    return TorchTokenVectors(
        model.version_dir / parameters.checkpoint_dir,
        model.version_dir / PROJECTION_FILE,
        device=instance_device(args["model_instance_kind"], args["model_instance_device_id"]),
        dtype=parameters.torch_dtype,
        threads=0 if on_gpu else runtime_threads(model, parameters.intra_op_threads),
    )


class _Counter:
    """A counter on Triton's metrics endpoint, labelled with the served model. Its family
    lives as long as its metric: Triton refuses a metric whose family is gone."""

    def __init__(self, name: str, description: str, model: str) -> None:
        self._family = pb_utils.MetricFamily(
            name=name, description=description, kind=pb_utils.MetricFamily.COUNTER
        )
        self._metric = self._family.Metric(labels={"model": model})

    def increment(self, by: int) -> None:
        if by:
            self._metric.increment(by)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        parameters = model.parameters(LateEncoderParameters)
        cache = parameters.document_cache_bytes
        self._scorer = LateScorer(
            _vectors(model, parameters, args),
            parameters.max_attention_cells,
            parameters.max_rows_per_run,
            RunCost(overhead_tokens=parameters.run_overhead_tokens),
            mean=parameters.mean_maxsim,
            document_cache=VectorCache(cache) if cache else None,
            query_cache=VectorCache(parameters.query_cache_bytes),
            max_tokens=parameters.max_tokens_per_run,
        )
        self._inputs = model.input_names()
        (self._output,) = model.output_names()
        self._trim_heap = HeapTrimmer()
        served = model.name.removesuffix(ENCODER_SUFFIX)
        self._hits = _Counter(
            "reranker_document_cache_hits_total", "documents whose vectors were cached", served
        )
        self._misses = _Counter(
            "reranker_document_cache_misses_total",
            "documents not found in the cache (each distinct one is encoded once)",
            served,
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        tensors = [
            {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self._inputs}
            for r in requests
        ]
        before = (self._scorer.counts.hits, self._scorer.counts.misses)

        def score() -> tuple[np.ndarray, list[int]]:
            return self._scorer.score(tensors)

        responses = score_responses(requests, self._output, score, self._trim_heap)
        self._hits.increment(self._scorer.counts.hits - before[0])
        self._misses.increment(self._scorer.counts.misses - before[1])
        return responses
