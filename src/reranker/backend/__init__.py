"""The Triton side: code that runs inside Triton's Python-backend stubs (the tokenizer and
encoder models, the runtimes that run a micro-batch, and their pure batching logic).

Imports only :mod:`reranker.contract` and its runtime packages (numpy, tokenizers,
onnxruntime, openvino, torch, transformers); never the build or the service.
"""
