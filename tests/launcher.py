"""Starts ``reranker serve`` (the real launcher: Triton and the rank service) on free
loopback ports and stops it: one way, shared by the test suite and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reranker.service.triton_server import dies_with_parent

# Ports handed out in this process: never twice, though the first server has not bound its
# port yet when the next is chosen.
_HANDED_OUT: set[int] = set()


def _ephemeral_start() -> int:
    """The first port of the kernel's range for outgoing connections (32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nothing listens on, chosen below the kernel's ephemeral range: an
    outgoing connection (a client of a server already up) takes its local port from that
    range, and could take a port chosen there before the new server binds it."""
    top = max(_ephemeral_start(), 20000)
    chooser = random.Random()
    for _ in range(1000):
        port = chooser.randrange(10000, top)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


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


def wait_serving(server: Server, timeout_s: float = 300.0) -> None:
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


# Triton's start-up (a stub per model, each importing its runtime) takes a time that follows
# the CPU's speed and the model count: a hang guard, not the serving default of 120 s.
STARTUP_TIMEOUT_S = 600


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
        RERANKER_TRITON_STARTUP_TIMEOUT_S=str(STARTUP_TIMEOUT_S),
        # Every model resident from the start, so what a test or benchmark measures is never
        # a first call's load (the catalog's tests pin fewer).
        RERANKER_PIN="*",
    )
    # After the defaults, so a setting may replace one of them (http_port="-1": no HTTP).
    env.update({"RERANKER_" + name.upper(): value for name, value in settings.items()})
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
        # Triton gets its own start-up timeout; the rank service a minute more after it.
        startup_s = float(settings.get("triton_startup_timeout_s", STARTUP_TIMEOUT_S))
        wait_serving(server, startup_s + 60)
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


def triton_resident_bytes(server: Server, proportional: bool = False) -> int:
    """Resident memory of the server's Triton and all its model processes (0: none runs):
    RSS, or with ``proportional`` PSS (a page shared by several processes counted once in
    all, split among them)."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        children = psutil.Process(server.process.pid).children()
        tritons = [p for p in children if p.name().startswith("tritonserver")]
        if tritons:
            total = 0
            for process in [tritons[0], *tritons[0].children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += (
                        process.memory_full_info().pss
                        if proportional
                        else process.memory_info().rss
                    )
            return total
    return 0
