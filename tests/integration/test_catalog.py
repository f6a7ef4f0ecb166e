"""The model catalog through a real Triton: only the default model is loaded at start, any
other loads on its first call (once for many callers), the least recently used one is
unloaded past ``max_loaded_models`` with its stubs and shared memory gone, a broken folder
fails its own calls only, and a model built into the live repository is served without a
restart."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import text_format
from reranker_client import AsyncRerankClient, UnavailableError
from tritonclient.grpc import model_config_pb2 as mc

from reranker.builder.builder import BuildOptions
from reranker.builder.sharing import share_tokenizer
from reranker.contract.model import SHARED_PREFIX
from reranker.service.triton_models import describe
from tests.integration.conftest import Server, children, cmdline, start_server, stop_server
from tests.integration.test_metrics import scrape, value
from tests.launcher import triton_resident_bytes
from tests.model_cache import cached_build

PINNED, HOT, COLD, LATE = "catalog-a", "catalog-b", "catalog-c", "catalog-late"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("catalog_repository")
    for name in (PINNED, HOT, COLD):
        cached_build(None, BuildOptions(name=name), root)
    # A folder Triton cannot load: its encoder is missing.
    shutil.copytree(root / HOT, root / "broken")
    config = (root / "broken" / "config.pbtxt").read_text()
    (root / "broken" / "config.pbtxt").write_text(
        config.replace(f'name: "{HOT}"', 'name: "broken"').replace(HOT + "__", "broken__")
    )
    return root


@pytest.fixture(scope="module")
def catalog_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        repository,
        tmp_path_factory.mktemp("catalog_server"),
        PINNED,
        pin="",
        max_loaded_models="2",
        model_load_retry_s="600",
    )
    try:
        yield server
    finally:
        stop_server(server)


def ready(server: Server) -> set[str]:
    with triton_grpc.InferenceServerClient(server.triton_grpc) as triton:
        index = triton.get_model_repository_index(as_json=True)["models"]
    return {entry["name"] for entry in index if entry.get("state") == "READY"}


def stubs_of(server: Server, model: str) -> list[int]:
    triton = next(p for p in children(server.process.pid) if "tritonserver" in cmdline(p))
    return [p for p in children(triton) if f"/{model}__" in cmdline(p)]


def shared_memory(server: Server) -> list[str]:
    prefix = f"reranker{server.process.pid}_"
    return [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]


async def rank(server: Server, model: str) -> str:
    async with AsyncRerankClient(server.address, timeout=120) as client:
        results = await client.rank("where do rivers go", ["the sea", "a hill"], model=model)
    assert [r["corpus_id"] for r in results] in ([0, 1], [1, 0])
    return model


def model_enums(node: object) -> list[list[str]]:
    """The ``enum`` of every ``model`` property in an OpenAPI description."""
    if isinstance(node, list):
        return [enum for item in node for enum in model_enums(item)]
    if not isinstance(node, dict):
        return []
    model = node.get("properties", {}).get("model", {})
    found = [model["enum"]] if "enum" in model else []
    return found + [enum for value in node.values() for enum in model_enums(value)]


async def listing(server: Server) -> dict[str, str]:
    """The states ListModels gives, checked against /v1/models and TEI's /info; an unloaded
    model is still described (read from the repository)."""
    async with AsyncRerankClient(server.address, timeout=30) as client:
        models = await client.models()
    async with httpx.AsyncClient(base_url=server.http_url, timeout=30) as http:
        cards = (await http.get("/v1/models")).json()["data"]
        info = (await http.get("/info")).json()
        schema = (await http.get("/openapi.json")).json()
    states = {m.name: m.state for m in models}
    assert {card["id"]: card["state"] for card in cards} == states
    assert {entry["model_id"]: entry["state"] for entry in info["models"]} == states
    enums = model_enums(schema)
    assert enums and all(enum == ["", *sorted(states)] for enum in enums), enums
    for model in models:
        assert (model.kind, model.architecture) == ("bi-encoder", "BertModel"), model
    return {m.name: m.state for m in models}


async def test_models_load_on_first_call_and_the_least_recent_makes_room(
    catalog_server: Server,
) -> None:
    models = {PINNED, PINNED + "__tokenizer", PINNED + "__encoder"}
    assert ready(catalog_server) == models, "only the default model at start"
    assert await listing(catalog_server) == {
        PINNED: "loaded",
        HOT: "unloaded",
        COLD: "unloaded",
        "broken": "unloaded",
    }

    assert await asyncio.gather(*(rank(catalog_server, HOT) for _ in range(8))) == [HOT] * 8
    samples = scrape(catalog_server.metrics_url)
    assert value(samples, "reranker_model_loads_total", model=HOT, outcome="loaded") == 1
    assert value(samples, "reranker_models_loaded") == 2
    assert HOT in ready(catalog_server)
    assert len(stubs_of(catalog_server, HOT)) == 2, "tokenizer and encoder stubs"
    memory_with_two = len(shared_memory(catalog_server))

    await rank(catalog_server, COLD)  # past the bound of 2: HOT, unpinned and idle, goes
    assert HOT not in ready(catalog_server) and {PINNED, COLD} <= ready(catalog_server)
    deadline = time.monotonic() + 30
    while stubs_of(catalog_server, HOT) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert stubs_of(catalog_server, HOT) == [], "the unloaded model's stubs exited"
    assert len(shared_memory(catalog_server)) == memory_with_two, "its shared memory freed"
    samples = scrape(catalog_server.metrics_url)
    assert value(samples, "reranker_model_unloads_total", model=HOT, reason="budget") == 1

    await rank(catalog_server, HOT)  # COLD is now the least recent; the pinned one stays
    assert {PINNED, HOT} <= ready(catalog_server) and COLD not in ready(catalog_server)
    listed = await listing(catalog_server)
    assert (listed[PINNED], listed[HOT], listed[COLD]) == ("loaded", "loaded", "unloaded")


async def test_a_broken_folder_fails_its_calls_and_the_others_serve(
    catalog_server: Server,
) -> None:
    for _ in range(2):
        with pytest.raises(UnavailableError, match="'broken' could not be loaded"):
            await rank(catalog_server, "broken")
    samples = scrape(catalog_server.metrics_url)
    assert value(samples, "reranker_model_loads_total", model="broken", outcome="failed") == 1
    assert (await listing(catalog_server))["broken"] == "failed"
    assert await rank(catalog_server, PINNED) == PINNED


async def test_a_model_built_into_the_live_repository_is_served(
    catalog_server: Server, repository: Path
) -> None:
    await asyncio.to_thread(cached_build, None, BuildOptions(name=LATE), repository)
    assert await rank(catalog_server, LATE) == LATE


async def test_a_model_removed_from_the_repository_is_unloaded_and_leaves_the_catalog(
    catalog_server: Server, repository: Path, tmp_path: Path
) -> None:
    await rank(catalog_server, LATE)
    shutil.move(repository / LATE, tmp_path / LATE)
    assert len(stubs_of(catalog_server, LATE)) == 2
    deadline = time.monotonic() + 30
    while stubs_of(catalog_server, LATE) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert stubs_of(catalog_server, LATE) == [], "unloaded: its stubs exited"
    assert LATE not in await listing(catalog_server)
    samples = scrape(catalog_server.metrics_url)
    assert value(samples, "reranker_model_unloads_total", model=LATE, reason="removed") == 1


def resident(server: Server) -> int:
    total = triton_resident_bytes(server)
    assert total > 0, "Triton runs"
    return total


async def test_the_memory_budget_unloads_the_least_recent_model_to_fit_another(
    repository: Path, tmp_path: Path
) -> None:
    # What one model adds, measured on a server of its own, sets a budget of 1.5 models
    # over the pinned one.
    server = start_server(repository, tmp_path / "measured", PINNED, pin="")
    try:
        alone = resident(server)
        await rank(server, HOT)
        one_more = resident(server) - alone
    finally:
        stop_server(server)
    assert one_more > 20 << 20, "a model's two stubs"
    budget_mb = (alone + one_more * 3 // 2) >> 20
    server = start_server(
        repository, tmp_path / "budget", PINNED, pin="", memory_budget_mb=str(budget_mb)
    )
    try:
        await rank(server, HOT)  # fits
        await rank(server, COLD)  # would not beside HOT: HOT goes
        assert {PINNED, COLD} <= ready(server) and HOT not in ready(server)
        samples = scrape(server.metrics_url)
        assert value(samples, "reranker_model_unloads_total", model=HOT, reason="budget") == 1
        assert resident(server) <= budget_mb << 20
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def shared_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two models of one tokenization: the second build shares the first's tokenizer."""
    root = tmp_path_factory.mktemp("shared_repository")
    for name in ("share-x", "share-y"):
        cached_build(None, BuildOptions(name=name), root)
        config = text_format.Parse((root / name / "config.pbtxt").read_text(), mc.ModelConfig())
        model = describe(config)
        assert model is not None
        share_tokenizer(model, root)
    return root


def unload(server: Server, model: str) -> None:
    """What the catalog's unload asks of Triton."""
    with triton_grpc.InferenceServerClient(server.triton_grpc) as triton:
        triton.unload_model(model, unload_dependents=True)
    deadline = time.monotonic() + 30
    while model in ready(server) and time.monotonic() < deadline:
        time.sleep(0.1)


async def test_two_models_share_one_tokenizer_that_stays_while_either_is_loaded(
    shared_repository: Path, tmp_path: Path
) -> None:
    (tokenizer,) = [p.name for p in shared_repository.glob("*__tokenizer")]
    assert tokenizer.startswith(SHARED_PREFIX)
    server = start_server(shared_repository, tmp_path, "share-x", pin="")
    try:
        alone = resident(server)
        await rank(server, "share-y")
        added = resident(server) - alone
        print(f"resident: {alone >> 20} MB with one model, +{added >> 20} MB for a second")
        assert {"share-x", "share-y", tokenizer} <= ready(server)
        assert len(stubs_of(server, tokenizer.removesuffix("__tokenizer"))) == 1

        unload(server, "share-y")
        assert tokenizer in ready(server), "share-x still uses it"
        assert await rank(server, "share-x") == "share-x"
        await rank(server, "share-y")
        unload(server, "share-x")
        assert tokenizer in ready(server), "share-y still uses it"
        assert await rank(server, "share-y") == "share-y"
        unload(server, "share-y")
        assert tokenizer not in ready(server), "no model uses it"
    finally:
        stop_server(server)
