"""Launches the ``tritonserver`` binary that the nvidia-pytriton wheel ships.

The wheel is used as a plain binary: the model repository is ours, and so is the backend
directory, assembled in a temporary folder from links to the wheel's Python backend and
the stub built for the running interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import psutil
import tritonclient.grpc as triton_grpc

from reranker.contract.model import ServedModel
from reranker.service.catalog import PIN_ALL, parse_pins
from reranker.service.metrics import ServiceMetrics
from reranker.service.tracing import otlp_traces_url
from reranker.settings import ENV_PREFIX, Settings

log = logging.getLogger(__name__)


def triton_home() -> Path:
    """The wheel's ``tritonserver`` folder, found without importing ``pytriton`` (whose own
    Python API needs packages this server does not)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the nvidia-pytriton wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def stub_path() -> Path:
    """The wheel's Python-backend stub for this interpreter's Python version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return triton_home() / "python_backend_stubs" / version / "triton_python_backend_stub"


def assemble_backends(target: Path) -> Path:
    """Creates ``target/python`` with the Python backend and the stub for this interpreter."""
    home = triton_home()
    python_backend = target / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    sources = [
        home / "backends" / "python" / "libtriton_python.so",
        home / "backends" / "python" / "triton_python_backend_utils.py",
        stub_path(),
    ]
    for source in sources:
        if not source.exists():
            raise FileNotFoundError(f"the Triton wheel lacks {source}")
        link = python_backend / source.name
        if not link.exists():
            link.symlink_to(source)
    return target


def dies_with_parent(command: list[str]) -> list[str]:
    """``command``, made to get SIGTERM when the process that starts it dies, even if that
    process is killed outright, so no child outlives it.

    ``setpriv`` asks the kernel for the signal between fork and exec. A ``preexec_fn`` would
    run Python in the forked child of a process where gRPC's threads run, and such children
    crash now and then (gRPC's fork handlers); without one, ``subprocess`` can use vfork.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning("setpriv (util-linux) not found: %s may outlive this process", command[0])
        return command
    return [setpriv, "--pdeathsig", "TERM", "--", *command]


class TritonServer:
    """One ``tritonserver`` process bound to loopback."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._shm_prefix = f"reranker{os.getpid()}_{id(self) & 0xFFFF:x}_"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self._settings.triton_grpc_port}"

    def command(self, backend_directory: Path) -> list[str]:
        s = self._settings
        return [
            str(triton_home() / "bin" / "tritonserver"),
            f"--model-repository={s.model_repository.resolve()}",
            f"--backend-directory={backend_directory}",
            # Explicit control loads the pinned models at start and the others when the
            # catalog asks; the control API is on loopback only, like every endpoint here.
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in self.models_at_start()),
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            "--exit-timeout-secs=5",
            "--http-address=127.0.0.1",
            f"--http-port={s.triton_http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={s.triton_grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={s.triton_metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=true",
            "--log-verbose=0",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=4194304",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            *self._trace_flags(),
        ]

    def resident_bytes(self) -> int:
        """Resident memory of Triton and its model processes (0 while it is not running)."""
        if self._process is None:
            return 0
        try:
            triton = psutil.Process(self._process.pid)
            processes = [triton, *triton.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += process.memory_info().rss
        return total

    def models_at_start(self) -> list[str]:
        """The pinned models and the default (``*``: every model when none is named)."""
        pins = parse_pins(self._settings.pin, self._settings.default_model)
        return ["*"] if not pins or PIN_ALL in pins else sorted(pins)

    def _trace_flags(self) -> list[str]:
        """Triton's own OpenTelemetry spans, joined to the rank service's trace through the
        ``traceparent`` each inference request carries."""
        endpoint = self._settings.otlp_endpoint
        if not endpoint:
            return []
        return [
            "--trace-config=mode=opentelemetry",
            "--trace-config=level=TIMESTAMPS",
            "--trace-config=rate=1",
            "--trace-config=count=-1",
            f"--trace-config=opentelemetry,url={otlp_traces_url(endpoint)}",
            "--trace-config=opentelemetry,resource=service.name=triton",
        ]

    @staticmethod
    def environment(python: str = "") -> dict[str, str]:
        """The stub embeds the system libpython: it needs the base interpreter's LIBDIR on the
        library path, and finds its virtual environment (``python``'s, else this one's)
        through ``PATH``."""
        # Triton and its stubs need none of the rank service's settings (an API key among them).
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        interpreter = Path(python or sys.executable)
        env["PATH"] = os.pathsep.join([str(interpreter.parent), env.get("PATH", "")])
        libdir = sysconfig.get_config_var("LIBDIR")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in [libdir, env.get("LD_LIBRARY_PATH", "")] if p
        )
        return env

    def start(self) -> None:
        """Starts Triton and waits until it and every model in the repository are ready."""
        self._workdir = Path(tempfile.mkdtemp(prefix="reranker-triton-"))
        backends = assemble_backends(self._workdir / "backends")
        log_path = self._settings.triton_log
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                dies_with_parent(self.command(backends)),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.environment(self._settings.triton_python),
                # Its own process group: a Ctrl-C reaches the launcher, which stops the rank
                # service first and Triton after it, so in-flight calls can drain.
                start_new_session=True,
            )
        log.info("tritonserver started (pid %d), log %s", self._process.pid, log_path)
        try:
            self._wait_ready(self._settings.triton_startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        client = triton_grpc.InferenceServerClient(self.grpc_url)
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"tritonserver exited with code {self._process.returncode}; "
                        f"see {self._settings.triton_log}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(Exception):
                    if client.is_server_ready():
                        return
                time.sleep(0.2)
        finally:
            client.close()
        raise TimeoutError(
            f"tritonserver not ready after {timeout_s:.0f}s; see {self._settings.triton_log}"
        )

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def exit_code(self) -> int | None:
        """The exit code of a Triton that exited by itself (None if never started)."""
        return None if self._process is None else self._process.poll()

    def kill(self) -> None:
        """Kills Triton outright (a graceful stop waits on requests a dead stub holds)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """Kills whatever Triton left running in its process group (its Python-backend stubs).
        Stubs normally exit within seconds of their Triton; this is the safeguard for one
        that does not, which would hold its memory for good."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # Triton leads its own process group (start_new_session): the group is its pid.
            os.killpg(self._process.pid, signal.SIGKILL)

    def restart(self) -> None:
        """Cleans up after an exited Triton and starts a new one on the same ports."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self._settings.triton_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stops Triton with SIGTERM (SIGKILL if it hangs) and removes what it left behind."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver ignored SIGTERM for %.0fs; killing it", timeout_s)
                process.kill()
                process.wait()
        self._kill_leftovers()
        self._process = None
        for region in Path("/dev/shm").glob(self._shm_prefix + "*"):
            with contextlib.suppress(OSError):
                region.unlink()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


# A failed restart is tried again after a back-off that doubles up to its ceiling.
_RESTART_BACKOFF_S = 1.0
_MAX_RESTART_BACKOFF_S = 30.0


class TritonSupervisor:
    """Keeps a Triton this process launched running: restarts it when it exits by itself, and
    kills it (so it is restarted) when one of its model processes died. Meanwhile calls fail
    fast with UNAVAILABLE; the engine's channel reconnects once Triton is back."""

    def __init__(self, triton: TritonServer, metrics: ServiceMetrics, poll_s: float = 0.1) -> None:
        self._triton = triton
        self._metrics = metrics
        self._poll_s = poll_s

    async def model_died(self, model: ServedModel) -> None:
        log.error("a process of model %s died: restarting tritonserver", model.name)
        await asyncio.to_thread(self._triton.kill)  # supervise() starts a new one

    async def supervise(self) -> None:
        triton = self._triton
        backoff = _RESTART_BACKOFF_S
        while True:
            await asyncio.sleep(self._poll_s)
            if triton.running():
                continue
            log.error(
                "tritonserver is not running (exit code %s); restarting it\n%s",
                triton.exit_code(),
                triton.log_tail(10),
            )
            started = time.monotonic()
            try:
                await asyncio.to_thread(triton.restart)
            except (OSError, RuntimeError, TimeoutError) as error:
                log.error("restarting tritonserver failed: %s; next try in %.0fs", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_RESTART_BACKOFF_S)
                continue
            self._metrics.backend_restarts.inc()
            log.info("tritonserver restarted in %.1fs", time.monotonic() - started)
            backoff = _RESTART_BACKOFF_S
