"""Late-interaction (ColBERT) checkpoints made locally, in the two layouts sentence-transformers'
``MultiVectorEncoder`` loads: PyLate's (a sentence-transformers folder: Transformer with query
and document lengths and [MASK] expansion, a bias-free Dense projection, the punctuation
skiplist, Normalize; ``[Q] ``/``[D] `` prompts) and Stanford ColBERT's (``HF_ColBERT``: BERT
weights beside ``linear.weight``, ``artifact.metadata``, ``[unused0]``/``[unused1]``
markers). Weights are seeded; the tokenizers are trained here on real English text."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from tests.checkpoints import modernbert_config, modernbert_tokenizer, wordpiece_tokenizer

MARKERS = ["[unused0]", "[unused1]", "[Q]", "[D]"]


def _wordpiece(directory: Path) -> Any:
    """A BERT WordPiece tokenizer whose vocabulary holds ColBERT's marker tokens as ordinary
    entries, saved to ``directory``."""
    return wordpiece_tokenizer(directory, vocab_size=6000, entries=tuple(MARKERS))


def _bert(tokenizer: Any, hidden: int, layers: int, seed: int) -> Any:
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        intermediate_size=hidden * 4,
        max_position_embeddings=512,
        initializer_range=0.05,
    )
    torch.manual_seed(seed)
    return BertModel(config).eval()


def pylate_colbert(
    target: Path,
    hidden: int = 64,
    layers: int = 2,
    dim: int = 32,
    query_length: int = 16,
    document_length: int = 48,
    attend_to_expansion: bool = False,
    modernbert: bool = False,
    expansion: str | None = "fixed",
    expansion_length: int | None = None,
    skiplist_tasks: tuple[str, ...] = ("document",),
    similarity: str = "maxsim",
    seed: int = 0,
) -> Path:
    """A sentence-transformers / PyLate ColBERT (answerai-colbert-small's layout, smaller; with
    ``modernbert``, GTE-ModernColBERT's backbone: byte-level BPE, RoPE, local attention)."""
    import torch
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    backbone = target.parent / (target.name + "-backbone")
    if modernbert:
        from transformers import ModernBertModel

        tokenizer = modernbert_tokenizer()
        torch.manual_seed(seed)
        network = ModernBertModel(modernbert_config(tokenizer, layers)).eval()
        hidden = network.config.hidden_size
        tokenizer.save_pretrained(backbone)
    else:
        tokenizer = _wordpiece(backbone)
        network = _bert(tokenizer, hidden, layers, seed)
    network.save_pretrained(backbone)
    transformer = Transformer(
        str(backbone),
        query_length=query_length,
        document_length=document_length,
        query_expansion=None
        if expansion is None
        else {
            "strategy": expansion,
            "attend": attend_to_expansion,
            "length": expansion_length or query_length,
        },
    )
    torch.manual_seed(seed + 1)
    projection = Dense(
        hidden,
        dim,
        bias=False,
        activation_function=torch.nn.Identity(),
        module_input_name="token_embeddings",
    )
    modules = [
        transformer,
        projection,
        MultiVectorMask(
            skiplist_words=list(string.punctuation), skiplist_tasks=list(skiplist_tasks)
        ),
        Normalize(module_input_name="token_embeddings"),
    ]
    model = MultiVectorEncoder(
        modules=modules,
        prompts={"query": "[Q] ", "document": "[D] "},
        device="cpu",
        similarity_fn_name=similarity,
    )
    model.save(str(target))
    return target


def stanford_colbert(
    target: Path,
    hidden: int = 64,
    layers: int = 2,
    dim: int = 32,
    query_maxlen: int = 16,
    doc_maxlen: int = 40,
    seed: int = 0,
) -> Path:
    """A Stanford ColBERT checkpoint (colbertv2.0's layout, smaller): ``HF_ColBERT``."""
    import torch
    from safetensors.torch import save_file

    tokenizer = _wordpiece(target)
    bert = _bert(tokenizer, hidden, layers, seed)
    torch.manual_seed(seed + 1)
    weights = {f"bert.{name}": tensor.contiguous() for name, tensor in bert.state_dict().items()}
    weights["linear.weight"] = torch.randn(dim, hidden) / hidden**0.5
    save_file(weights, str(target / "model.safetensors"))
    config = bert.config.to_dict()
    config["architectures"] = ["HF_ColBERT"]
    (target / "config.json").write_text(json.dumps(config, indent=1))
    metadata = {
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_maxlen": query_maxlen,
        "doc_maxlen": doc_maxlen,
        "mask_punctuation": True,
        "attend_to_mask_tokens": False,
        "dim": dim,
    }
    (target / "artifact.metadata").write_text(json.dumps(metadata, indent=1))
    return target
