"""The structured overflow error survives the trip through Triton's error text."""

from __future__ import annotations

import pytest

from reranker.backend.tokenization import Overflow
from reranker.contract.tensors import OverflowReport


def test_an_overflow_round_trips_inside_tritons_error_text() -> None:
    report = OverflowReport(row=3, tokens=709, limit=512, clipped=False)
    message = f"in ensemble 'm', {Overflow(3, 709, 512, False)}"
    assert OverflowReport.decode(message) == report
    assert OverflowReport.decode(OverflowReport(0, 8192, 512, True).encode()) == OverflowReport(
        0, 8192, 512, True
    )


@pytest.mark.parametrize(
    "message",
    [
        "inference failed: out of memory",
        "row 3 has 709 tokens; the model reads at most 512",  # prose is not parsed
        'reranker.overflow {"row": 3, "tokens": 709',  # cut short
        'reranker.overflow {"row": 3}',  # fields missing
        "reranker.overflow [1, 2]",
    ],
)
def test_other_errors_carry_no_overflow(message: str) -> None:
    assert OverflowReport.decode(message) is None
