"""A call's results: the model's activation applied, documents ordered best first and cut
to ``top_k``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reranker.contract.model import Activation
from reranker.service.images import CallImage


@dataclass(frozen=True)
class RankedDocument:
    index: int
    score: float
    text: str | None
    # The document's image as it was sent, when documents are returned and it had one.
    image: CallImage | None = None


def activate(raw: np.ndarray, activation: Activation, raw_scores: bool) -> np.ndarray:
    """Applies the model's activation to its raw outputs unless raw scores were asked for."""
    values = raw.astype(np.float64)
    if raw_scores or activation is Activation.NONE:
        return values
    return 1.0 / (1.0 + np.exp(-values))


def assemble(
    scores: np.ndarray,
    documents: Sequence[str],
    top_k: int | None,
    return_documents: bool,
    images: Sequence[CallImage | None] = (),
) -> list[RankedDocument]:
    """Orders documents best first (ties keep input order) and keeps the best ``top_k``."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if top_k is not None:
        order = order[:top_k]
    return [
        RankedDocument(
            index=i,
            score=float(scores[i]),
            text=documents[i] if return_documents else None,
            image=images[i] if return_documents and images else None,
        )
        for i in order
    ]
