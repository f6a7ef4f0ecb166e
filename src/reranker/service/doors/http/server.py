"""uvicorn serving the HTTP app behind its gate, in the rank service's own event loop beside
gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from opentelemetry import trace

from reranker.service.callers import KeyRing
from reranker.service.core import RankCore
from reranker.service.doors.http.app import create_app
from reranker.service.doors.http.gate import Gate
from reranker.service.doors.security import uvicorn_tls
from reranker.service.health import HealthMonitor
from reranker.service.metrics import ServiceMetrics
from reranker.settings import Settings


class _Server(uvicorn.Server):
    # The rank service handles SIGINT and SIGTERM itself and stops this server in turn.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """uvicorn serving :func:`create_app` on a socket bound up front (so the port is known
    before it starts), with the rank service's TLS files."""

    def __init__(
        self,
        settings: Settings,
        core: RankCore,
        metrics: ServiceMetrics,
        monitor: HealthMonitor,
        keys: KeyRing,
        tracer: trace.Tracer,
    ) -> None:
        self._settings = settings
        routes = create_app(core, monitor, metrics)
        app = Gate(routes, metrics, settings.max_request_bytes, keys, tracer)
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_level="warning",
            log_config=None,
            # The C parser: h11's pure-Python one costs CPU the encoder needs on a small machine.
            http="httptools",
            ws="none",
            **uvicorn_tls(settings),
        )
        self._server = _Server(self._config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    def bind(self) -> int:
        host, port = self._settings.host, self._settings.http_port
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.set_inheritable(True)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        return self.port

    async def start(self) -> None:
        if self._socket is None:
            self.bind()
        assert self._socket is not None
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self, grace_s: float) -> None:
        """Refuses new connections and gives calls in flight ``grace_s`` to finish."""
        if self._task is None:
            if self._socket is not None:
                self._socket.close()
            return
        # Annotated as int by uvicorn; it is only passed on to asyncio.wait_for.
        self._config.timeout_graceful_shutdown = max(grace_s, 0.001)  # type: ignore[assignment]
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
