"""One real Triton + rank service for the whole test session, started by the real launcher
(``python -m reranker serve``) on loopback, serving every model of ``ALL_MODELS``, each built
by the real builder."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from reranker.backend.cpu import cpu_flags, has_native_bf16
from reranker.builder.builder import DEFAULT_MODEL_NAME, BuildOptions
from reranker.contract.model import ENCODER_SUFFIX, ONNX_FILE, Precision, Runtime
from reranker.service.server import RankServer
from tests.checkpoints import (
    deberta_v2_cross_encoder,
    jina_bert_like_onnx,
    minilm_cross_encoder,
)
from tests.launcher import Server as Server
from tests.launcher import free_port as free_port
from tests.launcher import start_server as start_server
from tests.launcher import stop_server as stop_server
from tests.model_cache import cached_build

CROSS_ENCODER = "minilm-cross-encoder"
CROSS_ENCODER_FROM_ONNX = "minilm-cross-encoder-onnx"
# The same checkpoints served by the PyTorch runtime (on CPU, fp32).
CROSS_ENCODER_TORCH = "minilm-cross-encoder-torch"
DEFAULT_TORCH = DEFAULT_MODEL_NAME + "-torch"
DEBERTA = "deberta-v2-cross-encoder"
JINA = "jina-bert-like"
DEFAULT_INT8 = DEFAULT_MODEL_NAME + "-int8"
DEFAULT_BF16 = DEFAULT_MODEL_NAME + "-bf16"
# bf16 is built only where the CPU has native BF16 arithmetic (the builder refuses it elsewhere).
NATIVE_BF16 = has_native_bf16(cpu_flags())
ALL_MODELS = (
    DEFAULT_MODEL_NAME,
    DEFAULT_INT8,
    *((DEFAULT_BF16,) if NATIVE_BF16 else ()),
    CROSS_ENCODER,
    CROSS_ENCODER_FROM_ONNX,
    CROSS_ENCODER_TORCH,
    DEFAULT_TORCH,
    DEBERTA,
    JINA,
)
# Passages per query of the int8 and bf16 accuracy reports: half the builder's default (the
# reports' top-10 overlap still ranks 20 passages a query).
ACCURACY_PASSAGES = 20
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no AMX or AVX512_BF16")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MiniLM cross-encoder checkpoint: real encoder weights, seeded head."""
    return minilm_cross_encoder(tmp_path_factory.mktemp("checkpoint") / "minilm-cross-encoder")


@pytest.fixture(scope="session")
def deberta_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeBERTa-v2 with mxbai-rerank-xsmall-v1's shape (2 layers), seeded."""
    return deberta_v2_cross_encoder(tmp_path_factory.mktemp("checkpoint") / "deberta-v2")


@pytest.fixture(scope="session")
def jina_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A JinaBERT-like reranker published as an ONNX directory, and its torch model."""
    target = tmp_path_factory.mktemp("onnx-export") / "jina-bert-like"
    return target, jina_bert_like_onnx(target)


@pytest.fixture(scope="session")
def repository(
    tmp_path_factory: pytest.TempPathFactory,
    checkpoint: Path,
    deberta_checkpoint: Path,
    jina_export: tuple[Path, Any],
) -> Path:
    """A model repository of nine models: the offline default (fp32, int8, bf16, and fp32
    through the PyTorch runtime); a MiniLM cross-encoder from a checkpoint (source a, through
    ONNX and through PyTorch) and from an ONNX export directory (source b); a DeBERTa-v2
    cross-encoder (source a); a JinaBERT-like one with 8192 tokens (source b)."""
    root = tmp_path_factory.mktemp("model_repository")
    cached_build(None, BuildOptions(name=DEFAULT_MODEL_NAME), root)
    for name, precision in ((DEFAULT_INT8, Precision.INT8), (DEFAULT_BF16, Precision.BF16)):
        if precision is Precision.INT8 or NATIVE_BF16:
            options = BuildOptions(name, precision=precision, accuracy_passages=ACCURACY_PASSAGES)
            cached_build(None, options, root)
    cached_build(deberta_checkpoint, BuildOptions(name=DEBERTA), root)
    cached_build(jina_export[0], BuildOptions(name=JINA), root)
    cached_build(checkpoint, BuildOptions(name=CROSS_ENCODER), root)
    torch_runtime = Runtime.TORCH
    cached_build(checkpoint, BuildOptions(name=CROSS_ENCODER_TORCH, runtime=torch_runtime), root)
    cached_build(None, BuildOptions(name=DEFAULT_TORCH, runtime=torch_runtime), root)
    # Lay the export out as the seed rerankers publish it on the hub: onnx/model.onnx beside
    # config and tokenizer files.
    exported = tmp_path_factory.mktemp("onnx-export")
    (exported / "onnx").mkdir()
    # The weights beside the graph travel with it, as a publisher's external data does.
    for graph_file in (ONNX_FILE, ONNX_FILE + "_data"):
        served = root / (CROSS_ENCODER + ENCODER_SUFFIX) / "1" / graph_file
        if served.is_file():
            shutil.copyfile(served, exported / "onnx" / graph_file)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(checkpoint / name, exported / name)
    cached_build(exported, BuildOptions(name=CROSS_ENCODER_FROM_ONNX), root)
    return root


@pytest.fixture(scope="session")
def default_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of the default model alone, for servers that tests stop or break."""
    root = tmp_path_factory.mktemp("default_repository")
    cached_build(None, BuildOptions(name=DEFAULT_MODEL_NAME), root)
    return root


_SERVER: Server | None = None


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    global _SERVER
    _SERVER = start_server(repository, tmp_path_factory.mktemp("server"), DEFAULT_MODEL_NAME)
    try:
        yield _SERVER
    finally:
        stop_server(_SERVER)
        _SERVER = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and _SERVER is not None:
        report.sections.append(("server logs", _SERVER.tail()))
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.nodeid:
            item.add_marker(pytest.mark.integration)


@contextlib.asynccontextmanager
async def rank_server(
    triton_url: str,
    metrics: Any = None,
    grace_s: float = 0.0,
    tracer_provider: Any = None,
    **settings: Any,
) -> AsyncIterator[RankServer]:
    """A rank service in this process, with its own settings, over a running Triton; yields
    it once it is SERVING, and gives calls in flight ``grace_s`` when it stops."""
    from reranker.service.engine import TritonEngine
    from reranker.service.server import create_server
    from reranker.service.tracing import tracer_from
    from reranker.settings import Settings

    # Over a Triton it did not launch, as `serve --triton-url` runs.
    defaults = {"grpc_port": 0, "http_port": 0, "health_interval_s": 0.5, "triton_url": triton_url}
    config = Settings(**{**defaults, **settings})
    engine = TritonEngine(
        triton_url,
        config.max_rows_per_request,
        config.requests_in_flight_per_model,
        tracer_from(tracer_provider),
    )
    server = await create_server(config, engine, metrics=metrics, tracer_provider=tracer_provider)
    await server.start()
    try:
        await asyncio.wait_for(server.monitor.serving.wait(), 60)
        yield server
    finally:
        await server.stop(grace_s)
        await engine.close()


@contextlib.asynccontextmanager
async def rank_service(
    triton_url: str, metrics: Any = None, grace_s: float = 0.0, **settings: Any
) -> AsyncIterator[str]:
    """:func:`rank_server`, yielding its gRPC address."""
    async with rank_server(triton_url, metrics, grace_s, **settings) as server:
        yield f"127.0.0.1:{server.grpc_port}"


def children(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie awaiting its parent counts)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def triton_pid(server: Server) -> int:
    (pid,) = [p for p in children(server.process.pid) if "tritonserver" in cmdline(p)]
    return pid


# An fp32 row is the same computation alone and merged, but a batch of another size runs
# GEMM kernels that block its sums differently, so they add in another order; the kernels
# differ by ISA too (an AVX2-only EPYC moved a raw logit between 8 and 16 by 2 ulps, 1.9e-6).
# Each such sum is exact to a few ulps of its terms' magnitude, which is at least about 1
# (the scores are read from layer-normed states): 8 ulps of max(|score|, 1) bounds them.
FP32_MERGED_ULPS = 8


def fp32_reordering_bound(score: float) -> float:
    return FP32_MERGED_ULPS * float(np.spacing(np.float32(max(abs(score), 1.0))))


async def alone_and_merged(server: Server, model: str) -> tuple[float, list[float]]:
    """One pair's raw score scored alone, and inside each of five concurrent calls that hold
    rows of other lengths (Triton merges them into the same executions): where left or right
    padding bugs and batch-dependent kernels show."""
    from reranker_client import AsyncRerankClient

    from tests.texts import varied_pairs

    pair = ("where do rivers end", "Rivers flow downhill until they reach a lake or the sea.")
    others = [d for _, d in varied_pairs(40)]
    async with AsyncRerankClient(server.address, timeout=120) as client:
        (alone,) = await client.rank(pair[0], [pair[1]], model=model, raw_scores=True)
        results = await asyncio.gather(
            *(
                client.rank(pair[0], [pair[1], *others[i : i + 8]], model=model, raw_scores=True)
                for i in range(0, 40, 8)
            )
        )
    merged = [next(r for r in result if r["corpus_id"] == 0)["score"] for result in results]
    return alone["score"], merged
