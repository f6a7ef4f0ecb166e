"""One real Triton + rank service for the whole test session, started by the real launcher
(``python -m reranker serve``) on loopback, with three models built by the real builder."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reranker.builder import DEFAULT_MODEL_NAME, BuildOptions, build, build_default
from reranker.checkpoints import (
    deberta_v2_cross_encoder,
    jina_bert_like_onnx,
    minilm_cross_encoder,
)
from reranker.precision import Precision
from reranker.runtimes import cpu_flags, has_native_bf16
from reranker.service import RankServer
from reranker.triton_server import dies_with_parent

CROSS_ENCODER = "minilm-cross-encoder"
CROSS_ENCODER_FROM_ONNX = "minilm-cross-encoder-onnx"
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
    DEBERTA,
    JINA,
)
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no AMX or AVX512_BF16")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    address: str
    http_url: str
    triton_grpc: str
    log: Path
    triton_log: Path
    metrics_url: str
    triton_metrics_url: str
    triton_http_url: str

    def tail(self, lines: int = 60) -> str:
        parts = []
        for path in (self.log, self.triton_log):
            text = path.read_text(errors="replace") if path.exists() else "(none)"
            parts.append(f"--- {path.name} ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)


def wait_serving(server: Server, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.tail()}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise TimeoutError(f"server not SERVING after {timeout_s}s:\n{server.tail()}")


def start_server(repository: Path, workdir: Path, default_model: str, **settings: str) -> Server:
    """``reranker serve`` on free loopback ports; ``settings`` are more ``RERANKER_*``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, http_port, triton_port, metrics_port, triton_metrics_port, triton_http_port = (
        free_port() for _ in range(6)
    )
    env = dict(
        os.environ,
        RERANKER_GRPC_PORT=str(port),
        RERANKER_HTTP_PORT=str(http_port),
        RERANKER_METRICS_PORT=str(metrics_port),
        RERANKER_MODEL_REPOSITORY=str(repository),
        RERANKER_DEFAULT_MODEL=default_model,
        RERANKER_TRITON_GRPC_PORT=str(triton_port),
        RERANKER_TRITON_HTTP_PORT=str(triton_http_port),
        RERANKER_TRITON_METRICS_PORT=str(triton_metrics_port),
        RERANKER_TRITON_LOG=str(workdir / "tritonserver.log"),
        **{"RERANKER_" + name.upper(): value for name, value in settings.items()},
    )
    log = workdir / "reranker.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            # No server outlives a killed test run.
            dies_with_parent([sys.executable, "-m", "reranker", "serve"]),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Server(
        process,
        f"127.0.0.1:{port}",
        f"http://127.0.0.1:{http_port}",
        f"127.0.0.1:{triton_port}",
        log,
        workdir / "tritonserver.log",
        f"http://127.0.0.1:{metrics_port}/metrics",
        f"http://127.0.0.1:{triton_metrics_port}/metrics",
        f"http://127.0.0.1:{triton_http_port}",
    )
    try:
        wait_serving(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: Server, timeout_s: float = 30.0) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


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
    """A model repository of seven models: the offline default (fp32, int8, bf16); a MiniLM
    cross-encoder from a checkpoint (source a) and from an ONNX export directory (source b);
    a DeBERTa-v2 cross-encoder (source a); a JinaBERT-like one with 8192 tokens (source b)."""
    root = tmp_path_factory.mktemp("model_repository")
    build_default(BuildOptions(name=DEFAULT_MODEL_NAME), root)
    build_default(BuildOptions(name=DEFAULT_INT8, precision=Precision.INT8), root)
    if NATIVE_BF16:
        build_default(BuildOptions(name=DEFAULT_BF16, precision=Precision.BF16), root)
    build(str(deberta_checkpoint), BuildOptions(name=DEBERTA), root)
    build(str(jina_export[0]), BuildOptions(name=JINA), root)
    model = build(str(checkpoint), BuildOptions(name=CROSS_ENCODER), root)
    # Lay the export out as the seed rerankers publish it on the hub: onnx/model.onnx beside
    # config and tokenizer files.
    exported = tmp_path_factory.mktemp("onnx-export")
    (exported / "onnx").mkdir()
    shutil.copyfile(
        root / model.encoder_model / "1" / "model.onnx", exported / "onnx" / "model.onnx"
    )
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(checkpoint / name, exported / name)
    build(str(exported), BuildOptions(name=CROSS_ENCODER_FROM_ONNX), root)
    return root


@pytest.fixture(scope="session")
def default_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of the default model alone, for servers that tests stop or break."""
    root = tmp_path_factory.mktemp("default_repository")
    build_default(BuildOptions(name=DEFAULT_MODEL_NAME), root)
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
    from reranker.engine import TritonEngine
    from reranker.service import create_server
    from reranker.settings import Settings
    from reranker.tracing import tracer_from

    config = Settings(**{"grpc_port": 0, "http_port": 0, "health_interval_s": 0.5, **settings})
    engine = TritonEngine(triton_url, config.max_rows_per_request, tracer_from(tracer_provider))
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
