"""Pure logic of the encoder model: merging ragged requests into one batch, and back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort


def merge_ragged(
    requests: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Stacks requests of ``[rows_i, length_i]`` tensors into one ``[sum rows, max length]``.

    Padding is zeros: every model input here is masked by ``attention_mask``, so padded
    positions never reach a score.
    """
    length = max(request[names[0]].shape[1] for request in requests)
    rows = sum(request[names[0]].shape[0] for request in requests)
    merged = {}
    for name in names:
        batch = np.zeros((rows, length), dtype=np.int64)
        start = 0
        for request in requests:
            tensor = request[name]
            batch[start : start + tensor.shape[0], : tensor.shape[1]] = tensor
            start += tensor.shape[0]
        merged[name] = batch
    return merged


def split_rows(values: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """Splits a ``[sum counts, ...]`` array back into one array per request."""
    return np.split(values, np.cumsum(counts)[:-1])


def create_session(path: Path, intra_op_threads: int) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with all graph optimizations and a fixed thread count."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
