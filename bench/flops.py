"""The FLOP model of the encoders and this machine's measured GEMM rates (the bound)."""

from __future__ import annotations

import statistics
import time
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
    square @ square  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        square @ square
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates), max(rates)


def gemm_peak_gflops(size: int = 1024, repeats: int = 10) -> tuple[float, float]:
    """Median and best fp32 GEMM rate of this machine (numpy, all cores)."""
    square = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    return _gemm_rates(square, size, repeats)


def bf16_gemm_gflops(size: int = 2048, repeats: int = 10) -> tuple[float, float]:
    """Median and best bf16 GEMM rate (torch, all cores): the bound of bf16 rows."""
    import torch

    return _gemm_rates(torch.randn(size, size, dtype=torch.bfloat16), size, repeats)


def int8_gemm_gops(size: int = 2048, repeats: int = 10) -> tuple[float, float]:
    """Median and best int8 GEMM rate (int8 x int8 -> int32, torch's oneDNN kernels, VNNI or
    AMX-INT8 where the CPU has them; all cores): the bound of int8 rows."""
    import torch

    square = torch.randint(-128, 128, (size, size), dtype=torch.int8)
    torch._int_mm(square, square)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch._int_mm(square, square)
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates), max(rates)
