"""The accuracy report's statistics against independent values: scipy and hand-computed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from reranker.builder.evaluation import EvalPair, accuracy_report, spearman


def test_spearman_matches_scipy_on_scores_without_ties() -> None:
    rng = np.random.default_rng(7)
    a = rng.standard_normal(500)
    b = a + rng.standard_normal(500) * 0.5
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def test_spearman_by_hand() -> None:
    # Rank differences 1, 1, 1, 1, 0: rho = 1 - 6 * 4 / (5 * (25 - 1)) = 0.8.
    assert spearman(np.array([1.0, 2, 3, 4, 5]), np.array([2.0, 1, 4, 3, 5])) == pytest.approx(0.8)
    assert spearman(np.arange(6.0), -np.arange(6.0)) == pytest.approx(-1.0)


def test_accuracy_report_by_hand() -> None:
    pairs = [EvalPair(q, f"query {q}", f"passage {i}") for q in (0, 1) for i in range(3)]
    reference = np.array([3.0, 2.0, 1.0, 1.0, 2.0, 3.0])
    candidate = np.array([3.0, 1.0, 2.0, 3.0, 2.0, 1.0])
    report = accuracy_report(reference, candidate, pairs, k=2)
    # Query 0: best two {0, 1} against {0, 2}; query 1: {5, 4} against {3, 4}.
    assert report["top2_overlap_mean"] == 1.0 and report["top2_overlap_min"] == 1.0
    assert report["max_abs_delta"] == 2.0
    assert report["pairs"] == 6.0
    assert report["spearman"] == pytest.approx(spearmanr(reference, candidate).statistic)


def test_tied_scores_share_their_mean_rank() -> None:
    a = np.array([1.0, 1.0, 2.0, 3.0, 3.0, 3.0])
    b = np.array([0.5, 0.7, 0.7, 0.9, 1.0, 1.0])
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
