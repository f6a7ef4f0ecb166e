"""A late-interaction reranker's token vectors under PyTorch (the GPU path, and fp32 on CPU):
the backbone checkpoint through transformers, then its projection layers and, where the
pipeline has it, L2 normalization, as the ONNX graph of the CPU path computes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reranker.backend.torch_runtime import TORCH_DTYPES
from reranker.contract.model import Precision

# Beside the checkpoint: each projection layer's ``{i}.weight`` (and ``{i}.bias``), in order,
# and in its metadata whether the vectors are normalized after them.
PROJECTION_FILE = "projection.safetensors"
NORMALIZE_KEY = "normalize"


class TorchTokenVectors:
    """Padded ids and attention in, token vectors ``[rows, length, dim]`` (fp32) out."""

    def __init__(
        self,
        checkpoint: Path,
        projection: Path,
        device: str = "cpu",
        dtype: Precision = Precision.FP32,
        threads: int = 0,
    ) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file
        from transformers import AutoModel

        if threads > 0:
            torch.set_num_threads(threads)
        self._device, self._dtype = torch.device(device), TORCH_DTYPES[dtype]
        # Loaded in fp32 and cast after: the keyword for a load dtype differs between
        # transformers releases, ``Module.to`` does not.
        try:
            network = AutoModel.from_pretrained(checkpoint, attn_implementation="sdpa")
        except ValueError:  # an architecture without an SDPA implementation
            network = AutoModel.from_pretrained(checkpoint)
        self._network = network.eval().to(self._device, self._dtype)
        weights = load_file(str(projection))
        self._layers = [
            (
                weights[f"{i}.weight"].to(self._device, self._dtype),
                weights[f"{i}.bias"].to(self._device, self._dtype)
                if f"{i}.bias" in weights
                else None,
            )
            for i in range(sum(1 for key in weights if key.endswith(".weight")))
        ]
        with safe_open(str(projection), framework="pt") as stored:
            self._normalize = (stored.metadata() or {}).get(NORMALIZE_KEY) == "true"
        # One small run at load: a device that cannot run the model fails the load, not the
        # first call, and the first call does not pay the kernels' set-up.
        self(np.ones((1, 8), dtype=np.int64), np.ones((1, 8), dtype=np.int64))

    def __call__(self, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            states = self._network(
                input_ids=torch.from_numpy(ids).to(self._device),
                attention_mask=torch.from_numpy(attention).to(self._device),
            ).last_hidden_state
            for weight, bias in self._layers:
                states = F.linear(states, weight, bias)
            states = states.float()
            if self._normalize:
                states = F.normalize(states, p=2, dim=-1)
            return states.cpu().numpy()


def save_projection(
    path: Path, layers: list[tuple[torch.Tensor, torch.Tensor | None]], normalize: bool
) -> None:
    """Writes what :class:`TorchTokenVectors` reads back: the layers, then normalization."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for i, (weight, bias) in enumerate(layers):
        tensors[f"{i}.weight"] = weight.detach().float().contiguous()
        if bias is not None:
            tensors[f"{i}.bias"] = bias.detach().float().contiguous()
    save_file(tensors, str(path), metadata={NORMALIZE_KEY: "true" if normalize else "false"})
