"""Exports Hugging Face checkpoints to the ONNX graphs the encoder model runs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reranker.backend.runtimes import create_session
from reranker.backend.scorers import PairCosineScorer
from reranker.backend.tokenization import PairTokenizer
from reranker.builder.deberta import used_span_attention
from reranker.contract.tensors import TOKEN_TENSORS

OPSET = 17


def export_module(
    module: nn.Module,
    inputs: dict[str, torch.Tensor],
    output: str,
    path: Path,
    axes: dict[str, dict[int, str]] | None = None,
    output_axes: dict[int, str] | None = None,
) -> None:
    """Exports ``module`` (its ``forward`` takes ``inputs`` positionally, in their order) with
    one output named ``output``, by default ``[batch, 1]``. Every input's axes are dynamic:
    ``axes`` names them, by default batch and sequence; ``output_axes`` the output's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(inputs)
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | (axes or {})
    axes[output] = output_axes or {0: "batch"}
    # The legacy exporter: its graphs quantize with ONNX Runtime; the dynamo one's do not.
    torch.onnx.export(
        module,
        tuple(inputs[name] for name in names),
        str(path),
        input_names=names,
        output_names=[output],
        dynamic_axes=axes,
        opset_version=OPSET,
        dynamo=False,
    )


def graph_inputs(model: nn.Module, provided: Sequence[str] = TOKEN_TENSORS) -> tuple[str, ...]:
    """The token tensors a Hugging Face model's ``forward`` accepts and its tokenizer
    ``provided`` (its ``model_input_names``: ``CrossEncoder`` feeds the model no others), in
    canonical order."""
    accepted = inspect.signature(model.forward).parameters
    return tuple(name for name in TOKEN_TENSORS if name in accepted and name in provided)


class _CrossEncoderLogits(nn.Module):
    def __init__(self, model: nn.Module, inputs: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.inputs = tuple(inputs)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.inputs, tensors, strict=True))).logits


def export_cross_encoder(
    model: nn.Module,
    sample: dict[str, np.ndarray],
    path: Path,
    provided: Sequence[str] = TOKEN_TENSORS,
) -> None:
    """Exports a ``*ForSequenceClassification`` model with one label; output ``logits``."""
    inputs = {name: torch.from_numpy(sample[name]) for name in graph_inputs(model, provided)}
    with used_span_attention():  # DeBERTa-v2: only the relative positions a sequence uses
        export_module(_CrossEncoderLogits(model, list(inputs)).eval(), inputs, "logits", path)


def export_pair_scorer(bert: Any, sample: dict[str, np.ndarray], path: Path) -> None:
    """Exports a bare encoder (``BertModel``) as a cosine pair scorer; output ``cosine``."""
    inputs = {name: torch.from_numpy(sample[name]) for name in TOKEN_TENSORS}
    export_module(PairCosineScorer(bert).eval(), inputs, "cosine", path)


def sample_batch(tokenizer: PairTokenizer) -> dict[str, np.ndarray]:
    """A small batch of uneven rows to trace the graph and check the export with."""
    queries = ["what is a reranker?", "how long is the river nile in kilometres"]
    documents = [
        "A reranker orders candidate documents by their relevance to a query.",
        "The Nile is about 6,650 km long. " * 3,
    ]
    return tokenizer.pad(tokenizer.tokenize(queries, documents))


def max_export_error(
    path: Path, reference: Callable[[dict[str, torch.Tensor]], Any], batch: dict[str, np.ndarray]
) -> float:
    """Largest difference between the ONNX graph and the torch module on a batch, relative
    to the module's largest output (absolute below 1): two fp32 engines sum in different
    orders, and their difference grows with the magnitude of what they sum, so a head that
    scales its logits up (a calibrated or fine-tuned one) scales it up too."""
    session = create_session(path, 0)
    feeds = {i.name: batch[i.name] for i in session.get_inputs()}
    (onnx_out,) = session.run(None, feeds)
    with torch.no_grad():
        torch_out = reference({k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
    magnitude = max(1.0, float(np.abs(torch_out).max()))
    return float(np.abs(onnx_out - torch_out).max()) / magnitude
