"""Exports Hugging Face checkpoints to the ONNX graphs the encoder model runs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reranker.contract import TOKEN_TENSORS
from reranker.deberta import used_span_attention
from reranker.inference import create_session
from reranker.tokenization import PairTokenizer

OPSET = 17


def _export(module: nn.Module, inputs: dict[str, torch.Tensor], output: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(inputs)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes[output] = {0: "batch"}
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


def export_module(
    module: nn.Module, inputs: dict[str, torch.Tensor], output: str, path: Path
) -> None:
    """Exports ``module`` (its ``forward`` takes ``inputs`` positionally, in their order) with
    dynamic batch and sequence axes and one output named ``output``."""
    _export(module, inputs, output, path)


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
        _export(_CrossEncoderLogits(model, list(inputs)).eval(), inputs, "logits", path)


class PairCosineScorer(nn.Module):
    """Scores a (query, document) pair by the cosine of their mean-pooled embeddings.

    Both texts travel in one sequence; ``token_type_ids`` tells which text a token belongs
    to. Attention stays inside each text and positions restart at the document, so each
    embedding equals what encoding the text alone gives, with one pass for the pair.
    """

    def __init__(self, bert: Any) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        is_document = token_type_ids.to(torch.float32) * mask
        is_query = mask - is_document
        query_length = is_query.sum(dim=1, keepdim=True)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        position_ids = (positions - query_length.to(torch.long) * token_type_ids).clamp(min=0)
        embeddings = self.bert.embeddings(
            input_ids=input_ids,
            token_type_ids=torch.zeros_like(input_ids),
            position_ids=position_ids,
        )
        same_text = token_type_ids.unsqueeze(2) == token_type_ids.unsqueeze(1)
        allowed = same_text & (attention_mask.unsqueeze(1) > 0)
        # In the weights' dtype: eager attention adds the bias to its scores as it is.
        dtype = embeddings.dtype
        bias = (~allowed).to(dtype) * torch.finfo(dtype).min
        hidden = self.bert.encoder(embeddings, attention_mask=bias.unsqueeze(1)).last_hidden_state
        query = _mean_pool(hidden, is_query)
        document = _mean_pool(hidden, is_document)
        cosine = nn.functional.cosine_similarity(query, document, dim=-1, eps=1e-12)
        return cosine.unsqueeze(-1)


def _mean_pool(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    summed = (hidden * weights.unsqueeze(-1)).sum(dim=1)
    return summed / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)


def export_pair_scorer(bert: Any, sample: dict[str, np.ndarray], path: Path) -> None:
    """Exports a bare encoder (``BertModel``) as a cosine pair scorer; output ``cosine``."""
    inputs = {name: torch.from_numpy(sample[name]) for name in TOKEN_TENSORS}
    _export(PairCosineScorer(bert).eval(), inputs, "cosine", path)


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
    """Largest absolute difference between the ONNX graph and the torch module on a batch."""
    session = create_session(path, 0)
    feeds = {i.name: batch[i.name] for i in session.get_inputs()}
    (onnx_out,) = session.run(None, feeds)
    with torch.no_grad():
        torch_out = reference({k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
    return float(np.abs(onnx_out - torch_out).max())
