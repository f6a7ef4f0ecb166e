"""The whole suite's: the CPU it runs on, named in the header, since which precisions are
built and which numerics apply follow that CPU's kind."""

from __future__ import annotations

import pytest

from reranker.backend.cpu import MATRIX_FEATURES, cpu_flags, cpu_kind


def pytest_report_header(config: pytest.Config) -> str:
    flags = cpu_flags()
    features = ", ".join(sorted(flags & MATRIX_FEATURES)) or "none"
    return f"CPU kind: {cpu_kind(flags)} (matrix features: {features})"
