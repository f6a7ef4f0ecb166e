"""The rank service: one core (validation, limits, row budget, scoring through the engine,
assembly) behind its doors (reranker.v1 and tei.v1 gRPC, the HTTP shapes), with health,
metrics, tracing and the launcher of Triton.

May import :mod:`reranker.contract`, :mod:`reranker.settings` and the Triton side's pure
tokenization (chunking reads a model's own tokenizer); never the build.
"""
