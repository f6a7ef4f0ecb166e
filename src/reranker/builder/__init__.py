"""The build: a checkpoint, an ONNX export or a hub id in, a model repository out
(``reranker build``), with the heavy tools that takes (torch export, onnx, quantization).

May import :mod:`reranker.contract` and the Triton side (:mod:`reranker.backend`), to check an
export with the runner that will serve it; never the service.
"""
