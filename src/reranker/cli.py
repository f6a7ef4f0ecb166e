"""Command line: ``reranker serve`` runs the server, ``reranker build`` fills the repository."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from reranker.settings import Settings, add_arguments, settings_from

log = logging.getLogger("reranker")


async def serve(settings: Settings) -> None:
    """Runs Triton (unless one is given) and the rank service until SIGINT or SIGTERM."""
    from reranker.engine import TritonEngine
    from reranker.service import create_server
    from reranker.triton_server import TritonServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    triton = None
    if not settings.triton_url:
        triton = TritonServer(settings)
        log.info("starting tritonserver on %s (log: %s)", triton.grpc_url, settings.triton_log)
        await asyncio.to_thread(triton.start)
    url = settings.triton_url or (triton.grpc_url if triton else "")
    engine = TritonEngine(url, settings.max_rows_per_request)
    server, port, monitor = await create_server(settings, engine)
    try:
        await server.start()
        monitor.start()
        starting = asyncio.create_task(monitor.serving.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            models = ", ".join(sorted(engine.models))
            print(
                f"reranker: SERVING on {settings.host}:{port} (gRPC reranker.v1.Rank); "
                f"Triton gRPC on {url}; models: {models}",
                flush=True,
            )
        await stopping
        starting.cancel()
    finally:
        log.info("shutting down")
        await monitor.stop()
        await server.stop(settings.shutdown_grace_s)
        await engine.close()
        if triton is not None:
            await asyncio.to_thread(triton.stop)


def _build(args: argparse.Namespace) -> int:
    from reranker.builder import DEFAULT_MODEL_NAME, BuildError, BuildOptions, build, build_default
    from reranker.precision import Precision

    name = args.name or (DEFAULT_MODEL_NAME if args.default else _name_from(args.source))
    options = BuildOptions(
        name=name,
        max_length=args.max_length,
        max_batch_size=args.max_batch_size,
        precision=Precision(args.precision),
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
        f"max length {model.max_length}, {model.precision}",
        file=sys.stderr,
    )
    return 0


def _name_from(source: str | None) -> str:
    if not source:
        raise SystemExit("error: give a SOURCE or --default")
    return Path(source.rstrip("/")).name.lower()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reranker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run Triton and the rank service")
    add_arguments(serve_parser)
    build_parser = commands.add_parser(
        "build",
        help="add a model to the repository",
        description="SOURCE is a checkpoint directory, a directory with model.onnx (or "
        "onnx/model.onnx) and tokenizer.json, or a Hugging Face hub id.",
    )
    build_parser.add_argument("source", nargs="?", help="checkpoint dir, ONNX dir or hub id")
    build_parser.add_argument("--default", action="store_true", help="build the offline default")
    build_parser.add_argument("--name", help="served model name (default: from the source)")
    build_parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    build_parser.add_argument("--max-length", type=int, help="max tokens (default: the model's)")
    build_parser.add_argument("--max-batch-size", type=int, default=64)
    build_parser.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="fp32 (default); int8: dynamic quantization for CPU; fp16: for GPU profiles. "
        "A reduced precision writes accuracy.json (vs fp32) beside the graph",
    )
    args = parser.parse_args(argv)

    if args.command == "build":
        return _build(args)
    settings = settings_from(args, os.environ)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
