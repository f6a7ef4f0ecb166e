"""The FLOP model of the encoders and this machine's measured GEMM rates (the bound)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def bert_flops(length: float, hidden: int, layers: int, intermediate: int) -> float:
    """Multiply-add FLOPs of one sequence through a BERT-style encoder."""
    projections = 2 * length * hidden * hidden * 4
    feed_forward = 2 * length * hidden * intermediate * 2
    attention = 2 * length * length * hidden * 2
    return layers * (projections + feed_forward + attention)


def deberta_flops(length: float, hidden: int, layers: int, intermediate: int) -> float:
    """BERT's FLOPs plus disentangled attention over the relative positions a sequence of
    this length can use (2 x length, not the 512 Hugging Face's code computes against)."""
    relative = min(2 * length, 512)
    extra = 2 * (2 * length * relative * hidden) + 2 * (2 * relative * hidden * hidden)
    return bert_flops(length, hidden, layers, intermediate) + layers * extra


def _gemm_rates(square: Any, size: int, repeats: int) -> tuple[float, float]:
    """Median and best GFLOP/s of ``square @ square`` (``size`` x ``size``)."""
    return _rates(lambda: square @ square, size, repeats)


def _rates(product: Callable[[], object], size: int, repeats: int) -> tuple[float, float]:
    """Median and best rate (billions of operations a second) of ``product``, one product
    of two ``size`` x ``size`` matrices, after a warm-up."""
    product()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates), max(rates)


def gemm_peak_gflops(size: int = 1024, repeats: int = 10) -> tuple[float, float]:
    """Median and best fp32 GEMM rate of this machine (all cores): the faster of numpy's
    BLAS and ONNX Runtime's MatMul (its MLAS kernels can be twice OpenBLAS's)."""
    square = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    return max(_gemm_rates(square, size, repeats), _onnxruntime_rates("MatMul", size, repeats))


def bf16_gemm_gflops(size: int = 2048, repeats: int = 10) -> tuple[float, float]:
    """Median and best bf16 GEMM rate (torch, all cores): the bound of bf16 rows."""
    import torch

    return _gemm_rates(torch.randn(size, size, dtype=torch.bfloat16), size, repeats)


def int8_gemm_gops(size: int = 2048, repeats: int = 10) -> tuple[float, float]:
    """Median and best int8 GEMM rate (8-bit inputs, 32-bit sums; VNNI or AMX-INT8 where the
    CPU has them; all cores): the faster of torch's oneDNN kernels and ONNX Runtime's
    MatMulInteger, the bound of int8 rows."""
    import torch

    square = torch.randint(-128, 128, (size, size), dtype=torch.int8)
    ours = _rates(lambda: torch._int_mm(square, square), size, repeats)
    return max(ours, _onnxruntime_rates("MatMulInteger", size, repeats))


def _onnxruntime_rates(op: str, size: int, repeats: int) -> tuple[float, float]:
    """Median and best rate of ONNX Runtime's ``op`` (MatMul in fp32, or MatMulInteger of
    uint8 by int8) on ``size`` x ``size`` matrices, the right one a constant as weights are."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if op == "MatMul":
        left: np.ndarray = rng.standard_normal((size, size), dtype=np.float32)
        right: np.ndarray = rng.standard_normal((size, size), dtype=np.float32)
        types = (TensorProto.FLOAT, TensorProto.FLOAT)
    else:
        left = rng.integers(0, 256, (size, size), dtype=np.uint8)
        right = rng.integers(-128, 128, (size, size), dtype=np.int8)
        types = (TensorProto.UINT8, TensorProto.INT32)
    graph = helper.make_graph(
        [helper.make_node(op, ["left", "right"], ["out"])],
        "gemm",
        [helper.make_tensor_value_info("left", types[0], [size, size])],
        [helper.make_tensor_value_info("out", types[1], [size, size])],
        [numpy_helper.from_array(right, "right")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return _rates(lambda: session.run(None, {"left": left}), size, repeats)


class GemmRates:
    """This machine's GEMM rates, sampled at the start and after each measured workload (the
    machine's speed drifts over a run): the medians are the bounds results are held to."""

    def __init__(self, bf16: bool) -> None:
        self._bf16 = bf16
        self.fp32: list[tuple[float, float]] = []
        self.int8: list[tuple[float, float]] = []
        self.bf16: list[tuple[float, float]] = []
        self.sample()

    def sample(self) -> None:
        self.fp32.append(gemm_peak_gflops())
        self.int8.append(int8_gemm_gops())
        if self._bf16:
            self.bf16.append(bf16_gemm_gflops())

    def print_first(self) -> None:
        rate, best = self.int8[0]
        print(f"int8 GEMM: median {rate:.0f} GOP/s, best {best:.0f}", flush=True)
        rate, best = self.fp32[0]
        print(f"fp32 GEMM: median {rate:.0f} GFLOP/s, best {best:.0f}", flush=True)
        if self.bf16:
            rate, best = self.bf16[0]
            print(f"bf16 GEMM: median {rate:.0f} GFLOP/s, best {best:.0f}", flush=True)

    @staticmethod
    def _median(samples: list[tuple[float, float]]) -> float:
        return statistics.median(rate for rate, _ in samples) if samples else 0.0

    @property
    def median_fp32(self) -> float:
        return self._median(self.fp32)

    @property
    def best_fp32(self) -> float:
        return max(best for _, best in self.fp32)

    @property
    def median_int8(self) -> float:
        return self._median(self.int8)

    @property
    def median_bf16(self) -> float:
        return self._median(self.bf16)

    def report(self) -> dict[str, Any]:
        return {
            "gemm_gflops": {"median": self.median_fp32, "best": self.best_fp32},
            "int8_gemm_gops": {"median": self.median_int8, "best": max(b for _, b in self.int8)},
            "bf16_gemm_gflops": {
                "median": self.median_bf16,
                "best": max((best for _, best in self.bf16), default=0.0),
            },
        }


def flops_per_pair(key: str, mean_length: float) -> float:
    """FLOPs of one pair of the benchmark's ``model/workload`` at its mean length (the MiniLM
    shape, 6 layers; DeBERTa of mxbai-rerank-xsmall-v1's, 12)."""
    deberta = key.startswith("deberta")
    count = deberta_flops if deberta else bert_flops
    return count(mean_length, 384, 12 if deberta else 6, 1536)
