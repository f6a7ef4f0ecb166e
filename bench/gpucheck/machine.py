"""What the machine holds and does: the kit's environment, the versions the generated code
needs, the device, GPU memory and the GEMM rate; the signals that stop a run."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpucheck.scale import ROOT, SOURCES, Scale


class Stopped(BaseException):
    """SIGTERM or SIGINT: unwinds through every ``finally`` so nothing is left running. A
    ``BaseException``, so no library's ``except Exception`` (torch's compiler wraps what it
    catches, model loaders retry) swallows it and the run overruns its limit."""


def ignore_further_signals() -> None:
    """One stop: a second signal (a process group's, then a parent's) must not cut short the
    cleanup that the first starts."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _stop(signum: int, _frame: Any) -> None:
    ignore_further_signals()
    raise Stopped(f"signal {signum}")


_PRINT_PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"


def _venv(folder: Path) -> Path:
    """A virtual environment of this interpreter, without pip; its package folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    return Path(
        subprocess.run(
            [str(folder / "bin" / "python"), "-c", _PRINT_PURELIB],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )


def _unpack(archive: Path, folder: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="tar")


def _visible_folders() -> list[str]:
    """The project's tree, then this interpreter's package folders (PyTorch and the rest)."""
    import site
    import sysconfig

    # In this interpreter's order, so the environments import what it imports.
    here = [*sys.path, *site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    return [str(p) for p in SOURCES] + [
        p for p in dict.fromkeys(here) if p and Path(p).is_dir() and "-packages" in p
    ]


@dataclass(frozen=True)
class KitEnvironment:
    """The check's interpreter, and the one Triton's Python-backend stubs run in."""

    python: Path
    stub_python: Path


def kit_environment(kit: Path, work: Path) -> KitEnvironment:
    """Two virtual environments that see this interpreter's packages and the project's tree
    through a ``.pth`` file. The check's holds the kit's wheels (unpacked), Triton
    unpacked, and the kit's grpcio and protobuf where this machine's are older than the
    generated code needs. The stubs' holds, in front of all that, the kit's numpy 1, which
    they are built against; the check itself keeps this machine's numpy. The check runs again
    under the first, so the rank service and Triton see the same packages; Triton's stubs,
    which find their environment through ``PATH`` (they ignore ``PYTHONPATH``), get the
    second through the rank service's ``triton_python``."""
    from gpu_kit import LIMIT_BYTES, MANIFEST, kit_size, unzip

    if not (kit / MANIFEST).is_file():
        raise SystemExit(f"error: {kit} holds no {MANIFEST} (make gpu-kit makes the kit)")
    manifest = json.loads((kit / MANIFEST).read_text())
    if manifest["python"] != f"{sys.version_info.major}.{sys.version_info.minor}":
        raise SystemExit(
            f"error: the kit is for Python {manifest['python']}, this is "
            f"{platform.python_version()} (make gpu-kit GPU_PYTHON=...)"
        )
    size = kit_size(kit)
    if size > LIMIT_BYTES:
        raise SystemExit(f"error: the kit is {size / 2**20:.1f} MiB, over 60 MiB")
    purelib = _venv(work / "venv")
    wheels = [kit / "wheels" / name for name in manifest["wheels"]]
    older = outdated(kit)
    wheels += [
        wheel
        for wheel in (kit / "fallback" / name for name in manifest["fallback_wheels"])
        if any(wheel.name.startswith(package.replace("-", "_")) for package in older)
    ]
    # A wheel unpacked is a wheel installed, short of scripts (none here): no pip needed.
    for wheel in wheels:
        unzip(wheel, purelib)
    _unpack(kit / manifest["triton"]["archive"], purelib)
    folders = _visible_folders()
    (purelib / "reranker-gpu-check.pth").write_text("\n".join(folders) + "\n")
    stub_purelib = _venv(work / "stub-venv")
    _unpack(kit / manifest["stub_numpy"]["archive"], stub_purelib)
    (stub_purelib / "reranker-gpu-check.pth").write_text("\n".join([str(purelib), *folders]) + "\n")
    installed = ", ".join(sorted(older)) or "none"
    print(
        f"kit ({size / 2**20:.1f} MiB): {len(wheels)} wheels and Triton into {purelib} "
        f"(from the kit, as this machine's are older: {installed}); numpy "
        f"{manifest['stub_numpy']['version']} for the stubs into {stub_purelib}"
    )
    return KitEnvironment(work / "venv" / "bin" / "python", work / "stub-venv" / "bin" / "python")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in (
        "numpy",
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


def check_numpy(kit: Path | None) -> None:
    """Triton's Python-backend stubs in the nvidia-pytriton wheel are built against numpy 1:
    under numpy 2 they misread every input tensor and crash. The kit brings them numpy 1 of
    their own; without it they run on this interpreter's."""
    import numpy

    if kit is None and int(numpy.__version__.split(".")[0]) >= 2:
        raise SystemExit(
            f"error: numpy {numpy.__version__} and no kit: the Triton of nvidia-pytriton 0.7.0 "
            "needs numpy < 2 for its Python-backend stubs (--wheels KIT brings them 1.26.4)"
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
    wheel = next(iter(sorted(kit.glob("wheels/tritonclient-*.whl"))), None) if kit else None
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


def outdated(kit: Path | None) -> dict[str, str]:
    """protobuf or grpcio, where this machine's is missing or older than the generated code
    needs (it checks at import), with what is wrong."""
    from importlib.metadata import PackageNotFoundError, version

    problems = {}
    for package, least in needed_versions(_generated_texts(kit)).items():
        needed = ".".join(map(str, least))
        try:
            have = version(package)
        except PackageNotFoundError:
            problems[package] = f"{package} is not installed (>= {needed} needed)"
            continue
        if _release(have) < least:
            problems[package] = f"{package} {have} is older than {needed}"
    return problems


def check_versions(kit: Path | None) -> None:
    """Refuses, before installing anything, a machine whose protobuf or grpcio is older than
    the generated code needs, where the kit does not bring a newer one."""
    from gpu_kit import MANIFEST

    problems = outdated(kit)
    if kit is not None:
        carried = json.loads((kit / MANIFEST).read_text()).get("fallback", {})
        problems = {name: problem for name, problem in problems.items() if name not in carried}
    if problems:
        raise SystemExit(
            "error: " + "; ".join(problems.values()) + ": the generated gRPC code of this "
            "project and of tritonclient checks this at import; install a newer one first"
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
