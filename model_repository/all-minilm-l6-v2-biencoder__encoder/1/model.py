"""Triton entry point of the encoder model; the logic lives in reranker.triton_models.encoder."""

from reranker.triton_models.encoder import TritonPythonModel

__all__ = ["TritonPythonModel"]
