"""Vision-language rerankers (Qwen3-VL-Reranker, the jina-reranker-m0 lineage): causal
vision-language models that score a pair, text or images on either side, by the logit of
their relevance token less that of their irrelevance token at the last position, as
sentence-transformers' ``CrossEncoder`` does with its ``LogitScore`` module.

The tokenizer model runs the checkpoint's own processor on each row (:class:`PairProcessor`):
the chat template with the ``query`` and ``document`` roles, and for each image the resize to
multiples of patch x merge within the processor's pixel bounds, normalisation, patching and
the expansion of its placeholder into its grid's token count. Rows travel to the encoder one
per tensor row (:func:`pack_rows`); the encoder pools the rows of every request Triton merged,
left-pads each micro-batch as ``CrossEncoder`` does and runs the model on it
(:class:`VisionLanguageRunner`), so only one float per row leaves it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reranker.contract.tensors import (
    IMAGE_GRID_THW,
    MM_TOKEN_TYPE_IDS,
    PIXEL_VALUES,
    OverflowReport,
)

# The images' side of a row goes before its text in the message, as a
# ``{"image": ..., "text": ...}`` input does in ``CrossEncoder``.
_ROLES = ("query", "document")


@dataclass(frozen=True)
class VisionRow:
    """One row as the processor made it: its tokens, and its images' grids and patches."""

    input_ids: np.ndarray  # [tokens]
    mm_token_type_ids: np.ndarray  # [tokens]
    image_grid_thw: np.ndarray  # [images, 3]
    pixel_values: np.ndarray  # [patches, patch values]

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


def content(text: str, image: Any | None) -> list[dict[str, Any]]:
    """One side of a pair as message content: its image, then its text (either may be absent)."""
    parts: list[dict[str, Any]] = []
    if image is not None:
        parts.append({"type": "image", "image": image})
    if text or image is None:
        parts.append({"type": "text", "text": text})
    return parts


def pair_messages(
    query: tuple[str, Any | None],
    document: tuple[str, Any | None],
    instruction: str | None = None,
) -> list[dict[str, Any]]:
    """The messages ``CrossEncoder`` renders for a pair, with an instruction (its ``prompt``)
    as a system message first."""
    messages = [
        {"role": role, "content": content(text, image)}
        for role, (text, image) in zip(_ROLES, (query, document), strict=True)
    ]
    if instruction:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": instruction}]})
    return messages


class PairProcessor:
    """The checkpoint's processor, run one row at a time (a row's tokens and pixels never
    depend on the rows beside it)."""

    def __init__(self, directory: Path, max_length: int, threads: int = 0) -> None:
        from transformers import AutoProcessor

        if threads > 0:
            # The processor's resizing runs on torch: beside an encoder that uses every core,
            # it takes one instead of contending for all of them.
            import torch

            torch.set_num_threads(threads)
        self._processor = AutoProcessor.from_pretrained(str(directory))
        self._max_length = max_length

    def row(self, messages: list[dict[str, Any]], index: int = 0) -> VisionRow:
        features = self._processor.apply_chat_template(
            [messages],
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"text_kwargs": {"padding": False, "truncation": False}},
        )
        ids = features["input_ids"][0].numpy().astype(np.int64)
        if ids.shape[0] > self._max_length:
            # An image's tokens cannot be cut: a row that does not fit is refused.
            report = OverflowReport(int(index), int(ids.shape[0]), self._max_length, False)
            raise ValueError(report.encode())
        types = features.get(MM_TOKEN_TYPE_IDS)
        grid = features.get(IMAGE_GRID_THW)
        pixels = features.get(PIXEL_VALUES)
        return VisionRow(
            input_ids=ids,
            mm_token_type_ids=np.zeros_like(ids)
            if types is None
            else types[0].numpy().astype(np.int64),
            image_grid_thw=np.zeros((0, 3), np.int64)
            if grid is None
            else grid.numpy().astype(np.int64),
            pixel_values=np.zeros((0, 1), np.float32)
            if pixels is None
            else pixels.numpy().astype(np.float32),
        )


def pack_rows(rows: Sequence[VisionRow]) -> dict[str, np.ndarray]:
    """A request's rows as tensors of one row each: tokens right-padded (mask 0), each row's
    grids (3 per image) and its patches flattened, both zero-padded."""
    width = max(row.length for row in rows)
    grids = max(3, max(row.image_grid_thw.size for row in rows))
    pixels = max(1, max(row.pixel_values.size for row in rows))
    packed: dict[str, np.ndarray] = {
        "input_ids": np.zeros((len(rows), width), np.int64),
        "attention_mask": np.zeros((len(rows), width), np.int64),
        MM_TOKEN_TYPE_IDS: np.zeros((len(rows), width), np.int64),
        IMAGE_GRID_THW: np.zeros((len(rows), grids), np.int64),
        PIXEL_VALUES: np.zeros((len(rows), pixels), np.float32),
    }
    for index, row in enumerate(rows):
        packed["input_ids"][index, : row.length] = row.input_ids
        packed["attention_mask"][index, : row.length] = 1
        packed[MM_TOKEN_TYPE_IDS][index, : row.length] = row.mm_token_type_ids
        packed[IMAGE_GRID_THW][index, : row.image_grid_thw.size] = row.image_grid_thw.reshape(-1)
        packed[PIXEL_VALUES][index, : row.pixel_values.size] = row.pixel_values.reshape(-1)
    return packed


def unpack_rows(tensors: Mapping[str, np.ndarray], patch_values: int) -> list[VisionRow]:
    """The rows :func:`pack_rows` packed; ``patch_values`` is the numbers one patch holds."""
    rows = []
    for index, mask in enumerate(tensors["attention_mask"]):
        length = int(mask.sum())
        grid = tensors[IMAGE_GRID_THW][index].reshape(-1, 3)
        grid = grid[grid.prod(axis=1) > 0]
        patches = int(grid.prod(axis=1).sum())
        rows.append(
            VisionRow(
                input_ids=tensors["input_ids"][index, :length],
                mm_token_type_ids=tensors[MM_TOKEN_TYPE_IDS][index, :length],
                image_grid_thw=grid,
                pixel_values=tensors[PIXEL_VALUES][index, : patches * patch_values].reshape(
                    patches, patch_values
                ),
            )
        )
    return rows


class VisionLanguageRunner:
    """The checkpoint under PyTorch: a micro-batch of rows, left-padded as ``CrossEncoder``
    pads them, in; the relevance logit difference at each row's last token out."""

    def __init__(
        self,
        checkpoint: Path,
        relevance: tuple[int, int],
        device: str = "cpu",
        dtype: Any = None,
        threads: int = 0,
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText

        if threads > 0 and device == "cpu":
            torch.set_num_threads(threads)
        self._torch = torch
        self._device = torch.device(device)
        config = AutoConfig.from_pretrained(str(checkpoint))
        vision = config.vision_config
        self.patch_values = int(
            vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        )
        text = getattr(config, "text_config", config)
        self._pad_id = int(getattr(text, "pad_token_id", None) or 0)
        self._dtype = dtype or torch.float32
        # Loaded in its serving precision, as CrossEncoder's ``model_kwargs={"dtype": ...}``
        # loads it: the rotary frequencies stay fp32 (a cast after loading would round them).
        network = AutoModelForImageTextToText.from_pretrained(
            str(checkpoint), attn_implementation="sdpa", dtype=self._dtype
        )
        self._network = network.eval().to(self._device)
        self._relevant, self._irrelevant = relevance
        self._warm_up()

    def _warm_up(self) -> None:
        """One short text row at load, as the text runner does: a device that cannot run the
        model fails the load, not a first call, and the first call does not pay CUDA's setup."""
        tokens = np.ones(8, np.int64)
        self.run(
            [
                VisionRow(
                    tokens,
                    np.zeros(8, np.int64),
                    np.zeros((0, 3), np.int64),
                    np.zeros((0, self.patch_values), np.float32),
                )
            ]
        )

    def run(self, rows: Sequence[VisionRow]) -> np.ndarray:
        torch = self._torch
        width = max(row.length for row in rows)
        ids = np.full((len(rows), width), self._pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        types = np.zeros((len(rows), width), np.int64)
        for index, row in enumerate(rows):
            ids[index, width - row.length :] = row.input_ids
            mask[index, width - row.length :] = 1
            types[index, width - row.length :] = row.mm_token_type_ids
        feeds: dict[str, Any] = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            MM_TOKEN_TYPE_IDS: torch.from_numpy(types),
        }
        with_images = [row for row in rows if row.image_grid_thw.shape[0]]
        if with_images:
            feeds[PIXEL_VALUES] = torch.from_numpy(
                np.concatenate([row.pixel_values for row in with_images])
            ).to(self._dtype)
            feeds[IMAGE_GRID_THW] = torch.from_numpy(
                np.concatenate([row.image_grid_thw for row in with_images])
            )
        with torch.inference_mode():
            tensors = {name: value.to(self._device) for name, value in feeds.items()}
            logits = self._network(**tensors, use_cache=False, logits_to_keep=1).logits[:, -1]
            scores = logits[:, self._relevant] - logits[:, self._irrelevant]
        return scores.float().cpu().numpy()


def score_rows(
    rows: Sequence[VisionRow],
    run: Callable[[Sequence[VisionRow]], np.ndarray],
    max_rows: int,
    max_tokens: int,
) -> np.ndarray:
    """Every row's score, run in micro-batches of rows of similar length: at most
    ``max_rows`` rows, and at most ``max_tokens`` padded tokens unless a row is longer alone."""
    order = sorted(range(len(rows)), key=lambda index: rows[index].length)
    scores = np.empty(len(rows), np.float32)
    start = 0
    while start < len(order):
        end = start + 1
        while (
            end < len(order)
            and end - start < max_rows
            and rows[order[end]].length * (end - start + 1) <= max_tokens
        ):
            end += 1
        batch = order[start:end]
        scores[batch] = run([rows[index] for index in batch])
        start = end
    return scores
