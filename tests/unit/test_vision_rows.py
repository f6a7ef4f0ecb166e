"""A vision-language row's messages, as sentence-transformers builds them for CrossEncoder,
and its trip from the tokenizer model to the encoder."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image
from sentence_transformers.base.modality import InputFormatter

from reranker.backend.vision import VisionRow, pack_rows, pair_messages, score_rows, unpack_rows


def test_pair_messages_are_the_ones_cross_encoder_renders() -> None:
    formatter = InputFormatter(model_type="qwen3_vl", message_format="structured")
    image = Image.new("RGB", (8, 8))
    cases = [
        (("a query", None), ("a document", None), ("a query", "a document")),
        (("a query", None), ("", image), ("a query", image)),
        (("", image), ("a document", None), (image, "a document")),
        (("q", None), ("its caption", image), ("q", {"image": image, "text": "its caption"})),
        (
            ("q", image),
            ("d", image),
            ({"image": image, "text": "q"}, {"image": image, "text": "d"}),
        ),
    ]
    for query, document, pair in cases:
        assert pair_messages(query, document) == formatter.pair_to_messages(pair)
    # An image query with no text, and an instruction (CrossEncoder's prompt).
    expected = formatter.prepend_prompt_to_messages(
        [formatter.pair_to_messages((image, "a document"))], "Judge it"
    )[0]
    assert pair_messages(("", image), ("a document", None), "Judge it") == expected


def _row(length: int, images: list[tuple[int, int, int]], values: int, seed: int) -> VisionRow:
    rng = np.random.default_rng(seed)
    patches = sum(t * h * w for t, h, w in images)
    return VisionRow(
        input_ids=rng.integers(1, 100, length),
        mm_token_type_ids=rng.integers(0, 2, length),
        image_grid_thw=np.array(images, np.int64).reshape(-1, 3),
        pixel_values=rng.random((patches, values)).astype(np.float32),
    )


@pytest.mark.parametrize(
    "images",
    [
        [[], [(1, 2, 4)], [(1, 4, 4), (1, 2, 2)]],
        [[], []],  # a request of text rows only
    ],
)
def test_rows_survive_packing_whatever_their_images(
    images: list[list[tuple[int, int, int]]],
) -> None:
    rows = [_row(7 + 6 * i, grids, 12, i) for i, grids in enumerate(images)]
    unpacked = unpack_rows(pack_rows(rows), 12)
    assert len(unpacked) == len(rows)
    for row, back in zip(rows, unpacked, strict=True):
        np.testing.assert_array_equal(back.input_ids, row.input_ids)
        np.testing.assert_array_equal(back.mm_token_type_ids, row.mm_token_type_ids)
        np.testing.assert_array_equal(back.image_grid_thw, row.image_grid_thw)
        np.testing.assert_array_equal(back.pixel_values, row.pixel_values)


def test_score_rows_keeps_every_row_in_its_place_within_the_caps() -> None:
    rows = [_row(length, [], 3, i) for i, length in enumerate([30, 5, 12, 5, 40, 12, 7])]
    runs: list[list[int]] = []

    def run(batch: Sequence[VisionRow]) -> np.ndarray:
        runs.append([row.length for row in batch])
        return np.array([float(row.input_ids.sum()) for row in batch], np.float32)

    scores = score_rows(rows, run, max_rows=3, max_tokens=40)
    assert scores.tolist() == [float(row.input_ids.sum()) for row in rows]
    assert all(
        (len(lengths) <= 3 and max(lengths) * len(lengths) <= 40) or len(lengths) == 1
        for lengths in runs
    )
    assert sorted(length for lengths in runs for length in lengths) == sorted(
        r.length for r in rows
    )
