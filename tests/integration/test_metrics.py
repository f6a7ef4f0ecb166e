"""Prometheus metrics of the rank service, and the Grafana dashboard over them and Triton's."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from reranker_client import InvalidArgumentError, RerankClient

from reranker.builder.builder import DEFAULT_MODEL_NAME
from tests.integration.conftest import Server

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "reranker-dashboard.json"
RANK = "/reranker.v1.Rank/Rank"
# Triton exports these only where it sees a GPU.
GPU_ONLY = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes"}


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def exported_names(url: str) -> set[str]:
    """Metric names exactly as exposed (the parser would add ``_total`` to counters)."""
    return set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", fetch(url), flags=re.MULTILINE))


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = fetch(url)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_calls_rows_and_stages_are_counted(server: Server) -> None:
    before = scrape(server.metrics_url)
    with RerankClient(server.address, timeout=60) as client:
        client.rank("where do rivers go", ["the sea", "the delta", "tax forms"])
        with pytest.raises(InvalidArgumentError):
            client.rank("", ["a"])
    after = scrape(server.metrics_url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("reranker_calls_total", method=RANK, code="OK") == 1
    assert grew("reranker_calls_total", method=RANK, code="INVALID_ARGUMENT") == 1
    assert grew("reranker_rows_total", model=DEFAULT_MODEL_NAME, team="default") == 3
    assert grew("reranker_tokens_total", model=DEFAULT_MODEL_NAME, team="default") > 3
    assert grew("reranker_stage_seconds_count", stage="total") == 1
    assert grew("reranker_stage_seconds_count", stage="inference") == 1
    assert value(after, "reranker_serving") == 1
    assert value(after, "reranker_rows_in_flight") == 0


def test_every_metric_on_the_dashboard_exists(server: Server) -> None:
    with RerankClient(server.address, timeout=60) as client:
        client.rank("where do rivers go", ["the sea"])
    exported = exported_names(server.metrics_url) | exported_names(server.triton_metrics_url)
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(expressions) >= 10
    used = {
        name for expr in expressions for name in re.findall(r"\b((?:reranker|nv)_[a-z0-9_]+)", expr)
    }
    assert {n for n in used if n.startswith("reranker_")} and {
        n for n in used if n.startswith("nv_")
    }
    missing = used - exported - GPU_ONLY
    assert not missing, f"the dashboard reads metrics nobody exports: {sorted(missing)}"
