"""Triton entry point of the encoder model; the logic lives in reranker.backend.models.encoder."""

from reranker.backend.models.encoder import TritonPythonModel

__all__ = ["TritonPythonModel"]
