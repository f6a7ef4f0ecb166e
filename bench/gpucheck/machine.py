"""What the machine holds and does: the kit's environment, the versions the generated code
needs, the device, GPU memory and the GEMM rate; the signals that stop a run."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from gpucheck.scale import ROOT, SOURCES, Scale


class Stopped(Exception):
    """SIGTERM or SIGINT: unwinds through every ``finally`` so nothing is left running."""


def _stop(signum: int, _frame: Any) -> None:
    raise Stopped(f"signal {signum}")


def kit_environment(kit: Path, work: Path) -> Path:
    """A virtual environment holding the kit's wheels (installed with ``--no-deps``) that
    sees this interpreter's packages and the project's tree through a ``.pth`` file; returns
    its interpreter. The check runs again under it, so that the rank service and Triton's
    Python-backend stubs, which find their packages through the interpreter on ``PATH``
    (they ignore ``PYTHONPATH``), all see the same packages."""
    import site
    import sysconfig

    from gpu_kit import LIMIT_BYTES

    wheels = sorted(kit.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"error: {kit} holds no wheels (make gpu-kit makes them)")
    size = sum(w.stat().st_size for w in wheels)
    if size > LIMIT_BYTES:
        raise SystemExit(f"error: the kit is {size / 2**20:.1f} MiB, over 60 MiB")
    environment = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True)
    python = environment / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    command += ["--disable-pip-version-check", "--target", purelib, *map(str, wheels)]
    subprocess.run(command, check=True)
    # The project's tree, then this interpreter's package folders (PyTorch and the rest).
    here = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], *sys.path]
    folders = [str(p) for p in SOURCES] + [
        p for p in dict.fromkeys(here) if p and Path(p).is_dir() and "-packages" in p
    ]
    (Path(purelib) / "reranker-gpu-check.pth").write_text("\n".join(folders) + "\n")
    print(f"installed {len(wheels)} wheels ({size / 2**20:.1f} MiB) into {environment}")
    return python


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "tokenizers",
        "sentence-transformers",
        "grpcio",
        "protobuf",
        "nvidia-pytriton",
        "tritonclient",
    ):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def check_numpy() -> None:
    """Triton's Python-backend stubs in the nvidia-pytriton wheel are built against numpy 1:
    under numpy 2 they misread every input tensor and crash."""
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise SystemExit(
            f"error: numpy {numpy.__version__}: the Triton of nvidia-pytriton 0.7.0 needs "
            "numpy < 2 (its Python-backend stubs crash under numpy 2; 1.26.4 is tested)"
        )


_PROTOBUF_GENCODE = re.compile(
    r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+)"
)
_GRPC_GENCODE = re.compile(r"GRPC_GENERATED_VERSION = '([\d.]+)'")


def needed_versions(generated: list[str]) -> dict[str, tuple[int, ...]]:
    """The least protobuf and grpcio that generated modules (their texts) load under: each
    checks at import that the runtime is at least the version that generated it."""
    needed: dict[str, tuple[int, ...]] = {}
    for text in generated:
        for match in _PROTOBUF_GENCODE.finditer(text):
            found = tuple(int(part) for part in match.groups())
            needed["protobuf"] = max(needed.get("protobuf", ()), found)
        for match in _GRPC_GENCODE.finditer(text):
            found = tuple(int(part) for part in match.group(1).split("."))
            needed["grpcio"] = max(needed.get("grpcio", ()), found)
    return needed


def _generated_texts(kit: Path | None) -> list[str]:
    """The generated gRPC and protobuf modules the check will import: the project's, and
    tritonclient's from the kit's wheel (or as installed)."""
    texts = [p.read_text() for p in (ROOT / "api").rglob("*_pb2*.py")]
    wheel = next(iter(sorted(kit.glob("tritonclient-*.whl"))), None) if kit else None
    if wheel is not None:
        with zipfile.ZipFile(wheel) as archive:
            texts += [
                archive.read(name).decode()
                for name in archive.namelist()
                if name.startswith("tritonclient/grpc/") and "_pb2" in name
            ]
    else:
        spec = importlib.util.find_spec("tritonclient")
        if spec is not None and spec.submodule_search_locations:
            package = Path(next(iter(spec.submodule_search_locations)))
            texts += [p.read_text() for p in (package / "grpc").glob("*_pb2*.py")]
    return texts


def check_versions(kit: Path | None) -> None:
    """Refuses, before installing anything, a machine whose protobuf or grpcio is older than
    the generated code needs (it would fail at import, after the environment is built)."""
    from importlib.metadata import PackageNotFoundError, version

    problems = []
    for package, least in needed_versions(_generated_texts(kit)).items():
        try:
            have = version(package)
        except PackageNotFoundError:
            problems.append(f"{package} is not installed (>= {'.'.join(map(str, least))} needed)")
            continue
        if _release(have) < least:
            problems.append(f"{package} {have} is older than {'.'.join(map(str, least))}")
    if problems:
        raise SystemExit(
            "error: " + "; ".join(problems) + ": the generated gRPC code of this project and "
            "of tritonclient checks this at import; install a newer one first"
        )


def _release(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def device_facts(scale: Scale) -> dict[str, Any]:
    import torch

    if scale.device == "cpu":
        return {"device": f"CPU ({os.cpu_count()} cores)", "cuda": None}
    if not torch.cuda.is_available():
        raise SystemExit("error: PyTorch sees no GPU (run with --cpu for the CPU check)")
    properties = torch.cuda.get_device_properties(0)
    return {
        "device": torch.cuda.get_device_name(0),
        "memory_gib": round(properties.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "driver": _nvidia_smi("driver_version"),
    }


def _nvidia_smi(query: str) -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    run = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-i", "0"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return run.stdout.strip()


class MemorySampler:
    """GPU memory in use, sampled from nvidia-smi in the background; its peak in MiB."""

    def __init__(self, period_s: float = 0.25) -> None:
        self.peak_mib = 0.0
        self.baseline_mib = self._used()
        self._period = period_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _used() -> float:
        with contextlib.suppress(ValueError, OSError, subprocess.SubprocessError):
            return float(_nvidia_smi("memory.used") or "nan")
        return float("nan")

    def _sample(self) -> None:
        while not self._done.wait(self._period):
            used = self._used()
            if used == used:  # not NaN
                self.peak_mib = max(self.peak_mib, used)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(5)


def memory_by_model(used_mib: dict[int, float], cmdlines: dict[int, list[str]]) -> dict[str, float]:
    """GPU memory (MiB) by Triton model, from what each process holds (``used_mib`` by pid)
    and the processes' command lines: a Python-backend stub runs ``<model>/<version>/model.py``;
    any other process (Triton itself, its own backends) counts under its program's name."""
    by_model: dict[str, float] = {}
    for pid, mib in used_mib.items():
        argv = cmdlines.get(pid) or [f"pid {pid}"]
        if argv[0].endswith("triton_python_backend_stub") and len(argv) > 1:
            name = Path(argv[1]).parents[1].name
        else:
            name = Path(argv[0]).name
        by_model[name] = by_model.get(name, 0.0) + mib
    return by_model


def gpu_memory_by_model() -> dict[str, float]:
    """What each loaded model holds on the GPU, its process's CUDA context included: what a
    card must hold per model. Empty without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        run = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        used: dict[int, float] = {}
        for line in run.stdout.splitlines():
            field, _, mib = line.partition(",")
            with contextlib.suppress(ValueError):
                used[int(field)] = float(mib)
        cmdlines: dict[int, list[str]] = {}
        for pid in used:
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                cmdlines[pid] = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
        return memory_by_model(used, cmdlines)
    return {}


def gemm_tflops(scale: Scale) -> float:
    """The median fp16 (GPU) or fp32 (CPU) GEMM rate of one square product, in TFLOP/s."""
    import torch

    size = scale.gemm_size
    cuda = scale.device == "gpu"
    dtype = torch.float16 if cuda else torch.float32
    square = torch.randn(size, size, dtype=dtype, device="cuda" if cuda else "cpu")
    rates = []
    for _ in range(12):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        square @ square
        if cuda:
            torch.cuda.synchronize()
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e12)
    return statistics.median(rates[2:])
