"""The HTTP front door over the core with a fake scorer: the gate's key, body limit,
deadline header and error answers, and routes' shapes, with no Triton."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from opentelemetry import trace

from reranker.service.callers import KeyRing
from reranker.service.core import RankCore
from reranker.service.doors.http.app import create_app
from reranker.service.doors.http.gate import Gate
from reranker.service.health import HealthMonitor
from reranker.service.metrics import ServiceMetrics
from reranker.service.scoring import ScoreCall, Scores
from reranker.settings import Settings
from tests.http_errors import error_message
from tests.unit.test_core import FakeScorer

KEY = "secret-key"


class BrokenScorer(FakeScorer):
    async def score(self, call: ScoreCall) -> Scores:
        if call.query == "break":
            raise RuntimeError("a bug")
        return await super().score(call)


def client(metrics: ServiceMetrics | None = None, **settings: Any) -> httpx.AsyncClient:
    config = Settings(**{"default_model": "cross", **settings})
    metrics = metrics or ServiceMetrics()
    scorer = BrokenScorer()
    core = RankCore(config, scorer, metrics)
    monitor = HealthMonitor(scorer, config.health_interval_s, metrics)
    monitor.serving.set()
    gate = Gate(
        create_app(core, monitor, metrics),
        metrics,
        config.max_request_bytes,
        KeyRing(config.resolved_api_key()),
        trace.NoOpTracer(),
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://gate")


async def test_the_key_is_checked_on_every_route_but_health() -> None:
    async with client(api_key=KEY) as http:
        body = {"query": "q", "documents": ["abc"]}
        assert (await http.post("/v2/rerank", json=body)).status_code == 401
        assert (await http.get("/v1/models")).status_code == 401
        assert (await http.get("/health")).status_code == 200
        auth = {"authorization": f"Bearer {KEY}"}
        answer = await http.post("/v2/rerank", json=body, headers=auth)
        assert answer.status_code == 200 and answer.json()["results"][0]["index"] == 0


async def test_bodies_over_the_limit_are_refused_with_413() -> None:
    async with client(max_request_bytes=100) as http:
        refused = await http.post("/v2/rerank", json={"query": "q", "documents": ["x" * 200]})
        assert refused.status_code == 413
        assert "max_request_bytes=100" in error_message("/v2/rerank", refused.json())
        assert (await http.post("/v2/rerank", json={"query": "q", "documents": ["x"]})).is_success


@pytest.mark.parametrize("value", ["soon", "0", "-2", "nan", "inf"])
async def test_a_bad_timeout_header_is_refused(value: str) -> None:
    async with client() as http:
        answer = await http.post(
            "/rerank", json={"query": "q", "texts": ["a"]}, headers={"x-request-timeout": value}
        )
        assert answer.status_code == 400 and "x-request-timeout" in answer.json()["error"]


async def test_an_unexpected_error_is_a_json_500_and_the_next_call_is_served() -> None:
    metrics = ServiceMetrics()
    async with client(metrics) as http:
        broken = await http.post("/v2/rerank", json={"query": "break", "documents": ["a"]})
        assert broken.status_code == 500
        assert broken.json() == {"message": "internal error"}  # Cohere's error shape
        assert (await http.post("/v2/rerank", json={"query": "q", "documents": ["a"]})).is_success
    sample = metrics.registry.get_sample_value
    labels: Mapping[str, str] = {"method": "POST /v2/rerank", "code": "INTERNAL"}
    assert sample("reranker_calls_total", dict(labels)) == 1
    assert sample("reranker_calls_total", {"method": "POST /v2/rerank", "code": "OK"}) == 1


async def test_tei_returns_a_bare_array_best_first() -> None:
    async with client() as http:
        ranks = (
            await http.post(
                "/rerank",
                json={
                    "query": "q",
                    "texts": ["ab", "abcdefg"],
                    "raw_scores": True,
                    "return_text": True,
                },
            )
        ).json()
    assert ranks == [
        {"index": 1, "score": 2.0, "text": "abcdefg"},
        {"index": 0, "score": -3.0, "text": "ab"},
    ]


async def test_cohere_v2_results_carry_index_and_score_only() -> None:
    async with client() as http:
        body = (
            await http.post("/v2/rerank", json={"query": "q", "documents": ["ab", "abc"]})
        ).json()
    assert [set(r) for r in body["results"]] == [{"index", "relevance_score"}] * 2
    assert body["model"] == "cross"
    # Cohere bills a search unit per 100 documents; the fake scorer counts characters.
    assert body["meta"] == {
        "api_version": {"version": "2"},
        "billed_units": {"search_units": 1},
        "tokens": {"input_tokens": 7, "output_tokens": 0},
    }
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}


async def test_a_storm_of_distinct_unknown_paths_adds_no_metric_series() -> None:
    metrics = ServiceMetrics()

    def series() -> set[tuple[str, ...]]:
        (family,) = (f for f in metrics.registry.collect() if f.name == "reranker_calls")
        return {tuple(f"{k}={v}" for k, v in sorted(s.labels.items())) for s in family.samples}

    async with client(metrics) as http:
        assert (await http.get("/scan/first")).status_code == 404
        before = series()
        for n in range(1000):
            assert (await http.get(f"/scan/{n}/wp-login.php")).status_code == 404
        assert series() == before
        sample = metrics.registry.get_sample_value
        labels = {"method": "GET <unmatched>", "code": "UNIMPLEMENTED"}
        assert sample("reranker_calls_total", labels) == 1001
        # A route with a path parameter would be counted by its template, not each path.
        assert (await http.post("/v2/rerank", json={"query": "q", "documents": ["a"]})).is_success
        assert sample("reranker_calls_total", {"method": "POST /v2/rerank", "code": "OK"}) == 1


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_api_docs_load_every_asset_from_this_server_behind_the_key(page: str) -> None:
    import re
    from html.parser import HTMLParser
    from urllib.parse import urlsplit

    class Assets(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.urls: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found = dict(attrs)
            url = found.get("src") if tag == "script" else None
            if tag == "link" and found.get("rel") in ("stylesheet", "shortcut icon", "icon"):
                url = found.get("href")
            if url:
                self.urls.append(url)

    auth = {"authorization": f"Bearer {KEY}"}
    async with client(api_key=KEY) as http:
        assert (await http.get(page)).status_code == 401
        html = (await http.get(page, headers=auth)).text
        assets = Assets()
        assets.feed(html)
        # Inline script may name more files (Swagger UI's spec URL): all of this server.
        named = re.findall(r"""(?:url|href|src)\s*[:=]\s*['"]([^'"]+)['"]""", html)
        assert assets.urls, html
        for url in {*assets.urls, *named}:
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc, f"{url} is not on this server"
        for url in assets.urls:
            answer = await http.get(url, headers=auth)
            assert answer.status_code == 200, url
            assert answer.headers["content-type"].split(";")[0] in (
                "text/javascript",
                "application/javascript",
                "text/css",
                "image/png",
            ), url
