"""The PyTorch encoder runtime: the checkpoint itself, run by transformers in the Triton
Python backend, on ``cuda:<id>`` in fp16 or bf16 from a ``KIND_GPU`` instance, or on CPU in
fp32. It is what serves on a GPU machine that has PyTorch and the nvidia-pytriton wheel but
no container runtime for the NGC Triton and its onnxruntime/TensorRT backend.

A runner takes one padded micro-batch (numpy, as :func:`reranker.backend.batching.pad_batch`
makes it) and returns one raw score per row, as the ONNX graph of the same model would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reranker.backend.prefix import PrefixGroup, prefix_groups, run_groups, split_prefix
from reranker.backend.scorers import PairCosineScorer, relevance_scorer
from reranker.contract.model import Precision
from reranker.contract.parameters import TorchCompile

# Served shapes (rows, length) a compiled model runs at load: the second differs from the
# first in both, so the one recompilation with symbolic shapes happens then; a single row
# (torch specializes a dimension of 1) gets its own graph at load too.
_COMPILE_WARM_UP_SHAPES = ((16, 128), (32, 64), (1, 64))

# The precisions the PyTorch runtime serves (contract.parameters.TORCH_PRECISIONS).
TORCH_DTYPES = {
    Precision.FP32: torch.float32,
    Precision.FP16: torch.float16,
    Precision.BF16: torch.bfloat16,
}


def load_scorer(
    checkpoint: Path,
    bi_encoder: bool,
    dtype: torch.dtype,
    relevance: tuple[int, int] | None = None,
) -> torch.nn.Module:
    """The module that maps token tensors to one raw score per row ``[rows, 1]``: the
    sequence-classification head of a cross-encoder, the cosine pair scorer of a bare
    encoder, or a causal LM's logit of ``relevance[0]`` less that of ``relevance[1]`` at each
    row's last real token. Attention is PyTorch's scaled-dot-product kernel where the
    architecture has it."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    # Loaded in fp32 and cast after: the keyword for a load dtype differs between
    # transformers releases, ``Module.to`` does not.
    if bi_encoder:
        # The pair scorer builds its own block-diagonal attention mask: eager attention.
        bert = AutoModel.from_pretrained(checkpoint, attn_implementation="eager")
        return PairCosineScorer(bert).eval().to(dtype)
    if relevance is not None:
        network = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="sdpa")
        return relevance_scorer(network.eval().to(dtype), *relevance)
    try:
        network = AutoModelForSequenceClassification.from_pretrained(
            checkpoint, attn_implementation="sdpa"
        )
    except ValueError:  # an architecture without an SDPA implementation
        network = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    return _Logits(network.eval().to(dtype))


class _Logits(torch.nn.Module):
    def __init__(self, network: Any) -> None:
        super().__init__()
        self.network = network

    def forward(self, **tensors: torch.Tensor) -> torch.Tensor:
        return self.network(**tensors).logits


class TorchRunner:
    """Runs batches on one device. On CUDA the token tensors go through pinned host buffers
    (an asynchronous copy each way) and the scores come back in one; the buffers grow to the
    largest batch seen and are reused."""

    def __init__(
        self,
        checkpoint: Path,
        *,
        bi_encoder: bool,
        input_names: list[str],
        device: str = "cpu",
        dtype: Precision = Precision.FP32,
        threads: int = 0,
        compile_mode: TorchCompile = TorchCompile.EAGER,
        relevance: tuple[int, int] | None = None,
        shared_prefix: bool = True,
    ) -> None:
        if threads > 0 and device == "cpu":
            torch.set_num_threads(threads)
        self._device = torch.device(device)
        self._inputs = list(input_names)
        scorer = load_scorer(checkpoint, bi_encoder, TORCH_DTYPES[dtype], relevance).to(
            self._device
        )
        # A causal LM scores rows that begin with one prompt: that prefix can run once.
        self._after_prefix: Callable[..., torch.Tensor] | None = (
            getattr(scorer, "after_prefix", None) if shared_prefix else None
        )
        # Compiled with automatic dynamic shapes: the first shape compiles static, the next
        # one that differs recompiles once with symbolic rows and length, which then serves
        # every ragged batch (static shapes would recompile for each new (rows, length)).
        self._compiled = compile_mode is not TorchCompile.EAGER
        self._forward = (
            torch.compile(scorer, mode=compile_mode.value, dynamic=None)
            if self._compiled
            else scorer
        )
        self._pinned = self._device.type == "cuda"
        self._staging: dict[str, torch.Tensor] = {}
        self._scores = torch.empty(0)
        self._warm_up()

    def _prefix_groups(self, feeds: Mapping[str, np.ndarray]) -> list[PrefixGroup]:
        """The batch's rows as groups that each run in one pass (``prefix.prefix_groups``);
        one group of whole rows where the scorer cannot share a prefix."""
        rows = feeds["input_ids"].shape[0]
        if self._after_prefix is None or rows < 2:
            return [PrefixGroup(np.arange(rows), 0)]
        return prefix_groups(feeds["input_ids"], feeds["attention_mask"])

    def _warm_up(self) -> None:
        """One small forward at load: a CUDA setup that cannot run the model (a runtime the
        driver does not support, say) fails the model's load instead of its first request.
        A compiled model also runs served shapes, so its compilations (static, then dynamic,
        and a single row's) happen at load rather than in the first calls."""
        shapes = [(1, 8), *(_COMPILE_WARM_UP_SHAPES if self._compiled else [])]
        for rows, length in shapes:
            feeds = {name: np.zeros((rows, length), dtype=np.int64) for name in self._inputs}
            for name in ("input_ids", "attention_mask"):
                if name in feeds:
                    feeds[name][:] = 1
            # Rows that differ from their first token run whole through the compiled
            # forward (rows sharing a prompt would take the shared-prefix path instead).
            feeds["input_ids"][:, 0] = np.arange(1, rows + 1)
            self.run(feeds)

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    def _host(self, key: str, values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """``values`` as a host tensor: a view of a pinned buffer on CUDA, else zero-copy."""
        source = torch.from_numpy(np.ascontiguousarray(values))
        if not self._pinned:
            return source
        buffer = self._staging.get(key)
        if buffer is None or buffer.numel() < source.numel():
            buffer = torch.empty(source.numel(), dtype=dtype, pin_memory=True)
            self._staging[key] = buffer
        view = buffer[: source.numel()].view(source.shape)
        view.copy_(source)
        return view

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        inputs = {name: feeds[name] for name in self._inputs}
        return run_groups(inputs, self._prefix_groups(feeds), self._run_group)

    def _run_group(self, feeds: Mapping[str, np.ndarray], prefix: int) -> np.ndarray:
        score: Callable[..., torch.Tensor] = self._forward
        if prefix and self._after_prefix is not None:
            feeds, score = split_prefix(feeds, prefix), self._after_prefix
        with torch.inference_mode():
            tensors = {
                name: self._host(name, values, torch.int64).to(self._device, non_blocking=True)
                for name, values in feeds.items()
            }
            scores = score(**tensors)
            scores = scores.reshape(-1).float()
            if not self._pinned:
                return scores.numpy().copy()
            rows = scores.numel()
            if self._scores.numel() < rows:
                self._scores = torch.empty(max(rows, 256), dtype=torch.float32, pin_memory=True)
            out = self._scores[:rows]
            out.copy_(scores, non_blocking=True)
            torch.cuda.current_stream(self._device).synchronize()
            return out.numpy().copy()


def instance_device(kind: str, device_id: str) -> str:
    """The torch device of a Triton model instance, from the ``model_instance_kind`` and
    ``model_instance_device_id`` the Python backend passes to ``initialize``."""
    return f"cuda:{device_id}" if kind == "GPU" else "cpu"
