"""The PyTorch modules that turn a checkpoint into one raw score per row: what the build
exports to ONNX and what the PyTorch runtime runs, so both score with the same code."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


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


class AfterPrefix(nn.Module):
    """A causal-LM relevance scorer as the graph that takes the rows' shared prefix apart:
    ``forward(prefix_ids, input_ids, attention_mask)`` is its ``after_prefix``."""

    def __init__(self, scorer: nn.Module) -> None:
        super().__init__()
        self.scorer = scorer

    def forward(
        self, prefix_ids: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.scorer.after_prefix(prefix_ids, input_ids, attention_mask)  # type: ignore[operator]


def relevance_scorer(network: Any, true_id: int, false_id: int) -> nn.Module:
    """A module of ``input_ids, attention_mask`` (right-padded) returning, per row, the
    logit of ``true_id`` less that of ``false_id`` at the row's last real token, ``[rows,
    1]``: the body runs once, and of the vocabulary head only the difference of two rows."""
    return RelevanceScorer(network, true_id, false_id).eval()


class RelevanceScorer(nn.Module):
    """See :func:`relevance_scorer`."""

    direction: torch.Tensor
    offset: torch.Tensor

    def __init__(self, network: Any, true_id: int, false_id: int) -> None:
        super().__init__()
        self.body = network.get_decoder()
        head = network.get_output_embeddings()
        self.register_buffer("direction", (head.weight[true_id] - head.weight[false_id]).detach())
        bias = head.bias
        offset = (bias[true_id] - bias[false_id]).detach() if bias is not None else torch.zeros(())
        self.register_buffer("offset", offset)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        return self._score(hidden, attention_mask.sum(dim=1) - 1)

    def after_prefix(
        self, prefix_ids: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The scores of rows that begin with ``prefix_ids`` (``[1, prefix]``: the prefix
        they share, run once; or ``[rows, prefix]``: each row's own) and go on with
        ``input_ids``; ``attention_mask`` covers the whole rows. Each row's rest attends
        to the prefix's keys and values at the positions it has in the whole row. A row
        may end inside the prefix: under causal attention its last token's state is the
        prefix's state there, and what follows it (padding) is never read."""
        rows, prefix = input_ids.shape[0], prefix_ids.shape[1]
        head = self.body(
            input_ids=prefix_ids, attention_mask=torch.ones_like(prefix_ids), use_cache=True
        )
        cache = head.past_key_values
        # A view, not copies (nothing to expand for rows' own prefixes): the rest's pass
        # appends its own keys and values to it.
        for layer in cache.layers:
            layer.keys = layer.keys.expand(rows, -1, -1, -1)
            layer.values = layer.values.expand(rows, -1, -1, -1)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device) + prefix
        rest = self.body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions.unsqueeze(0).expand(rows, -1),
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        hidden = torch.cat([head.last_hidden_state.expand(rows, -1, -1), rest], dim=1)
        return self._score(hidden, attention_mask.sum(dim=1) - 1)

    def _score(self, hidden: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        final = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return (final @ self.direction + self.offset).unsqueeze(-1)
