"""Triton entry point of the tokenizer model; the logic lives in reranker.backend.models.tokenizer."""

from reranker.backend.models.tokenizer import TritonPythonModel

__all__ = ["TritonPythonModel"]
