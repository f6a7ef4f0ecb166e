"""Reranking server: a typed gRPC API in front of Triton Inference Server."""
