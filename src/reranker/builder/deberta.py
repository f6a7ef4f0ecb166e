"""DeBERTa-v2 exported to read only the relative positions a sequence can use.

Hugging Face's disentangled attention projects and multiplies every query against the whole
relative-position table (2 x ``position_buckets`` rows, 512 for the v3 checkpoints) and then
gathers the few columns a sequence needs: at 100 tokens, 2.4x the content-position work and
a 512-wide intermediate per head. A sequence of length L only reads the rows of relative
positions -(L-1) .. L-1 (after bucketing), so the exported graph slices the table to those
rows first. The arithmetic on the rows it keeps is unchanged, so scores match the full
computation to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def _relative_positions(
    self: Any, query_layer: torch.Tensor, key_layer: torch.Tensor, relative_pos: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The query-to-key relative positions (4-d, as DeBERTa-v2 builds them when not given)
    and the key-to-query ones."""
    from transformers.models.deberta_v2 import modeling_deberta_v2 as deberta

    if relative_pos is None:
        relative_pos = deberta.build_relative_position(
            query_layer,
            key_layer,
            bucket_size=self.position_buckets,
            max_position=self.max_relative_positions,
        )
    while relative_pos.dim() < 4:
        relative_pos = relative_pos.unsqueeze(-3)
    relative_pos = relative_pos.to(device=query_layer.device, dtype=torch.long)
    reverse_pos = deberta.build_rpos(
        query_layer,
        key_layer,
        relative_pos,
        self.max_relative_positions,
        self.position_buckets,
    )
    return relative_pos, reverse_pos


def _used_span_bias(
    self: Any,
    query_layer: torch.Tensor,
    key_layer: torch.Tensor,
    relative_pos: torch.Tensor | None,
    rel_embeddings: torch.Tensor,
    scale_factor: int,
) -> torch.Tensor:
    from transformers.models.deberta_v2 import modeling_deberta_v2 as deberta

    relative_pos, reverse_pos = _relative_positions(self, query_layer, key_layer, relative_pos)
    span = self.pos_ebd_size
    # Table row ``span + r`` holds relative position r; this sequence reads |r| < used.
    used = torch.clamp(
        torch.maximum(relative_pos.abs().max(), reverse_pos.abs().max()) + 1, max=span
    )
    rows = torch.arange(span - used, span + used, device=rel_embeddings.device)
    table = rel_embeddings.index_select(0, rows).unsqueeze(0)
    last = 2 * used - 1
    heads = self.num_attention_heads
    repeats = query_layer.size(0) // heads

    def positions(projection: torch.nn.Module) -> torch.Tensor:
        projected = self.transpose_for_scores(projection(table), heads)
        return projected.repeat(repeats, 1, 1)

    rows_q, length_q, length_k = query_layer.size(0), query_layer.size(1), key_layer.size(-2)
    score = torch.zeros((), dtype=query_layer.dtype, device=query_layer.device)
    if "c2p" in self.pos_att_type:
        pos_key = positions(self.key_proj if self.share_att_key else self.pos_key_proj)
        index = torch.minimum(torch.clamp(relative_pos + used, min=0), last)
        c2p = torch.bmm(query_layer, pos_key.transpose(-1, -2))
        c2p = torch.gather(
            c2p, -1, index.squeeze(0).expand([rows_q, length_q, relative_pos.size(-1)])
        )
        score = score + c2p / deberta.scaled_size_sqrt(pos_key, scale_factor).to(c2p.dtype)
    if "p2c" in self.pos_att_type:
        pos_query = positions(self.query_proj if self.share_att_key else self.pos_query_proj)
        index = torch.minimum(torch.clamp(-reverse_pos + used, min=0), last)
        p2c = torch.bmm(key_layer, pos_query.transpose(-1, -2))
        p2c = torch.gather(
            p2c, -1, index.squeeze(0).expand([rows_q, length_k, length_k])
        ).transpose(-1, -2)
        score = score + p2c / deberta.scaled_size_sqrt(pos_query, scale_factor).to(p2c.dtype)
    return score


@contextlib.contextmanager
def used_span_attention() -> Iterator[None]:
    """While open, DeBERTa-v2 attention (and anything traced from it) uses the sliced table."""
    from transformers.models.deberta_v2 import modeling_deberta_v2 as deberta

    attention = deberta.DisentangledSelfAttention
    original = attention.disentangled_attention_bias
    attention.disentangled_attention_bias = _used_span_bias  # type: ignore[method-assign]
    try:
        yield
    finally:
        attention.disentangled_attention_bias = original  # type: ignore[method-assign]
