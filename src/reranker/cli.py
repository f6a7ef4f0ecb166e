"""Command line: ``reranker serve`` runs the server, ``reranker build`` fills the repository."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import os
import signal
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reranker.settings import SETTINGS, OptionSource, Settings

if TYPE_CHECKING:
    from reranker.builder.triton_configs import TritonTuning
    from reranker.contract.model import ServedModel
    from reranker.service.engine import TritonEngine
    from reranker.service.metrics import ServiceMetrics
    from reranker.service.server import RankServer
    from reranker.service.triton_server import TritonServer, TritonSupervisor

log = logging.getLogger("reranker")


async def _serve_until(
    stop: asyncio.Event,
    settings: Settings,
    server: RankServer,
    engine: TritonEngine,
    metrics: ServiceMetrics,
    url: str,
) -> None:
    """Starts serving, announces the endpoints once the models are ready, and returns when
    ``stop`` is set."""
    metrics_note = ""
    if settings.metrics_port >= 0:
        metrics_port = metrics.serve(settings.host, settings.metrics_port)
        metrics_note = f"; metrics on http://{settings.host}:{metrics_port}/metrics"
    await server.start()
    starting = asyncio.create_task(server.monitor.serving.wait())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        endpoints = f"{settings.host}:{server.grpc_port}", server.http_port, url
        _announce(settings, endpoints, engine.models.values(), metrics_note)
    await stopping
    starting.cancel()


async def serve(settings: Settings) -> None:
    """Runs Triton (unless one is given) and the rank service until SIGINT or SIGTERM."""
    from reranker.service.engine import TritonEngine
    from reranker.service.metrics import ServiceMetrics
    from reranker.service.server import create_server
    from reranker.service.tracing import provider_for, tracer_from

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    metrics = ServiceMetrics()
    triton, supervisor = await _launch_triton(settings, metrics)
    url = settings.triton_url or (triton.grpc_url if triton else "")
    tracer_provider = provider_for(settings.otlp_endpoint)
    engine = TritonEngine(
        url,
        settings.max_rows_per_request,
        settings.requests_in_flight_per_model,
        tracer_from(tracer_provider),
        # Describing unloaded models from files is right only for the Triton launched here.
        None if settings.triton_url else settings.model_repository,
    )
    server = await create_server(
        settings,
        engine,
        supervisor.model_died if supervisor else None,
        metrics,
        tracer_provider,
        triton.resident_bytes if triton else None,
    )
    loop.add_signal_handler(signal.SIGHUP, server.keys.reload)
    supervising = asyncio.create_task(supervisor.supervise()) if supervisor else None
    _warn_about(settings, launched=triton is not None)
    try:
        await _serve_until(stop, settings, server, engine, metrics, url)
    finally:
        log.info(
            "shutting down: draining in-flight calls for up to %.1fs", settings.shutdown_grace_s
        )
        if supervising is not None:
            supervising.cancel()
        await server.stop(settings.shutdown_grace_s)
        await engine.close()
        if triton is not None:
            await asyncio.to_thread(triton.stop)
        if tracer_provider is not None:
            tracer_provider.shutdown()


async def _launch_triton(
    settings: Settings, metrics: ServiceMetrics
) -> tuple[TritonServer | None, TritonSupervisor | None]:
    """A Triton of its own and the supervisor that restarts it (none with ``triton_url``)."""
    from reranker.service.triton_server import TritonServer, TritonSupervisor

    if settings.triton_url:
        return None, None
    triton = TritonServer(settings)
    log.info("starting tritonserver on %s (log: %s)", triton.grpc_url, settings.triton_log)
    await asyncio.to_thread(triton.start)
    return triton, TritonSupervisor(triton, metrics)


def _announce(
    settings: Settings,
    endpoints: tuple[str, int | None, str],
    models: Iterable[ServedModel],
    metrics_note: str,
) -> None:
    """The SERVING line (where each API listens, the models), and the bf16 hint where this
    CPU would serve its fp32 models faster in bf16."""
    from reranker.backend.cpu import bf16_hint, cpu_flags
    from reranker.contract.model import Device, Precision

    grpc_address, http_port, triton_url = endpoints
    served = list(models)
    http_note = ""
    if http_port is not None:
        scheme = "https" if settings.tls_cert_file else "http"
        http_note = f"; HTTP on {scheme}://{settings.host}:{http_port}"
    names = ", ".join(sorted(m.name for m in served))
    print(
        f"reranker: SERVING on {grpc_address} (gRPC reranker.v1.Rank, tei.v1){http_note}; "
        f"Triton gRPC on {triton_url}; models: {names}{metrics_note}",
        flush=True,
    )
    fp32_on_cpu = (
        m.name for m in served if m.precision is Precision.FP32 and m.device is Device.CPU
    )
    hint = bf16_hint(cpu_flags(), fp32_on_cpu)
    if hint is not None:
        print(hint, flush=True)


def _warn_about(settings: Settings, launched: bool) -> None:
    """Settings that do not do what they say here: a memory budget without a launched Triton
    to measure, and a server reachable beyond loopback without TLS or a key."""
    if settings.memory_budget_mb and not launched:
        log.warning("memory_budget_mb bounds a launched Triton's memory: not kept with triton_url")
    if settings.host in ("127.0.0.1", "::1", "localhost"):
        return
    if not settings.tls_cert_file:
        log.warning("serving on %s without TLS: traffic is plaintext", settings.host)
    if not settings.resolved_api_key() and not settings.api_keys_file:
        log.warning("serving on %s without an API key: any caller is admitted", settings.host)


def _build(args: argparse.Namespace) -> int:
    from reranker.builder.builder import DEFAULT_MODEL_NAME, BuildError, build, build_default
    from reranker.builder.common import BuildOptions

    name = args.name or (DEFAULT_MODEL_NAME if args.default else _name_from(args.source))
    options = BuildOptions.for_target(
        name,
        args.device,
        args.runtime,
        args.precision,
        max_length=args.max_length,
        max_batch_size=args.max_batch_size,
        onnx_file=args.onnx_file,
        accuracy_passages=args.accuracy_passages,
        share_tokenizer=args.share_tokenizer,
        tuning=_tuning().resolve(args, os.environ),
    )
    print(f"building {name} into {args.repository}", file=sys.stderr)
    try:
        if args.default:
            model = build_default(options, args.repository)
        else:
            model = build(args.source, options, args.repository)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"built {model.name}: {model.kind.value}, {model.architecture}, "
        f"max length {model.max_length}, {model.precision}, "
        f"{model.runtime.value} on {model.device.value}",
        file=sys.stderr,
    )
    return 0


def _tuning() -> OptionSource[TritonTuning]:
    from reranker.builder.triton_configs import TritonTuning

    return OptionSource(
        TritonTuning,
        "tuning",
        "TOML file of Triton tuning levers (instances, threads, batching, queue delays)",
    )


def _name_from(source: str | None) -> str:
    if not source:
        raise SystemExit("error: give a SOURCE or --default")
    return Path(source.rstrip("/")).name.lower()


def _values(kind: type[enum.Enum]) -> list[str]:
    return [str(member.value) for member in kind]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reranker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run Triton and the rank service")
    SETTINGS.add_arguments(serve_parser)
    build_parser = commands.add_parser(
        "build",
        help="add a model to the repository",
        description="SOURCE is a checkpoint directory, a directory with model.onnx (or "
        "onnx/model.onnx) and tokenizer.json, or a Hugging Face hub id.",
    )
    _add_build_arguments(build_parser)
    health_parser = commands.add_parser(
        "health",
        help="exit 0 if a rank service reports SERVING (for container health checks)",
    )
    health_parser.add_argument("--address", default="127.0.0.1:50051")
    health_parser.add_argument("--timeout-s", type=float, default=3.0)
    health_parser.add_argument("--tls-ca-file", help="PEM CA to verify a TLS rank service")
    return parser


def _add_build_arguments(build_parser: argparse.ArgumentParser) -> None:
    """``reranker build``'s flags: their choices and defaults are its options' own
    (:class:`BuildOptions` and its enums)."""
    from reranker.builder.common import AUTO_DEVICE, BUILT_PRECISIONS, BuildOptions
    from reranker.contract.model import BUILT_RUNTIMES, Device

    defaults = BuildOptions(name="")
    build_parser.add_argument("source", nargs="?", help="checkpoint dir, ONNX dir or hub id")
    build_parser.add_argument("--default", action="store_true", help="build the offline default")
    build_parser.add_argument("--name", help="served model name (default: from the source)")
    build_parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    build_parser.add_argument("--max-length", type=int, help="max tokens (default: the model's)")
    build_parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    build_parser.add_argument(
        "--precision",
        choices=[p.value for p in BUILT_PRECISIONS],
        help="fp32 (the default, exact; on a GPU with the torch runtime fp16, and bf16 for "
        "causal LMs, whose activations can overflow fp16); bf16: OpenVINO "
        "on CPUs with AMX or AVX512_BF16, or torch on a GPU; int8: dynamic quantization for "
        "CPU; fp16: for GPUs. A reduced precision on CPU writes accuracy.json (vs fp32) "
        "beside the graph",
    )
    build_parser.add_argument(
        "--accuracy-passages",
        type=int,
        default=defaults.accuracy_passages,
        help="passages per query (20 queries) of that accuracy report",
    )
    build_parser.add_argument(
        "--device",
        choices=[*_values(Device), AUTO_DEVICE],
        default=defaults.device.value,
        help="cpu (default): a Python-backend encoder, ragged batching; gpu: Triton's "
        "onnxruntime_onnx platform with TensorRT (NGC Triton; fp16 with --precision fp16, "
        "length buckets), or with --runtime torch the checkpoint under PyTorch on the GPU; "
        "auto: gpu with the torch runtime when PyTorch sees a GPU, else cpu",
    )
    build_parser.add_argument(
        "--onnx-file",
        default=defaults.onnx_file,
        help="which ONNX export of the source to serve, where it publishes several "
        "(onnx/model_fp16.onnx, onnx/model_quantized.onnx, ...); served as it is",
    )
    build_parser.add_argument(
        "--runtime",
        choices=[runtime.value for runtime in BUILT_RUNTIMES],
        help="onnx (default): serve the ONNX export; torch: serve the checkpoint itself with "
        "PyTorch (fp32 on CPU; fp16 or bf16 on a GPU, no container needed)",
    )
    build_parser.add_argument(
        "--no-share-tokenizer",
        dest="share_tokenizer",
        action="store_false",
        default=defaults.share_tokenizer,
        help="give the model its own tokenizer model even where the repository holds one of "
        "the same tokenization (shared by default)",
    )
    _tuning().add_arguments(build_parser)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    if args.command == "build":
        return _build(args)
    if args.command == "health":
        from reranker.service.probe import probe_health

        return probe_health(args.address, args.timeout_s, args.tls_ca_file)
    settings = SETTINGS.resolve(args, os.environ)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
