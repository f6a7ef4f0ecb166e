"""Triton entry point of the tokenizer model; the logic lives in reranker.triton_models.tokenizer."""

from reranker.triton_models.tokenizer import TritonPythonModel

__all__ = ["TritonPythonModel"]
