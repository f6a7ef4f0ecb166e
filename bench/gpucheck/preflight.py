"""Before anything starts: what this machine holds, and which parts of the check it cannot run,
each with the reason, so that a lease is spent on the parts that can."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from gpucheck.machine import versions
from gpucheck.scale import VISION, Scale

# Bytes of pixel values per image pixel as Qwen3-VL's processor hands them to the encoder:
# float32, 3 channels, two frames per patch (the temporal patch).
_PIXEL_VALUE_BYTES = 4 * 3 * 2


def vision_shm_bytes(scale: Scale) -> int:
    """The shared memory the multimodal row's one call needs at Triton: its pages' pixel
    values, once as the processor's output and once as the encoder's input."""
    width, height = scale.vision_page_size
    return 2 * scale.vision_pages * width * height * _PIXEL_VALUE_BYTES


def unresolved_libraries(binary: Path, environment: dict[str, str]) -> list[str]:
    """The shared libraries ``binary`` links that the loader cannot find under
    ``environment`` (``ldd``'s "not found" lines)."""
    run = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, env=environment, timeout=30
    )
    return [line.split()[0] for line in run.stdout.splitlines() if "not found" in line]


def stub_numpy(stub_python: str) -> str:
    """The numpy the stubs import, as their environment's interpreter finds it."""
    run = subprocess.run(
        [stub_python or sys.executable, "-c", "import numpy; print(numpy.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return run.stdout.strip() if run.returncode == 0 else f"none ({run.stderr.strip()[-200:]})"


def preflight(scale: Scale, stub_python: str) -> dict[str, Any]:
    """What was found, and ``cannot_run``: step or model name -> why not."""
    from reranker.service.triton_server import TritonServer, stub_path

    found: dict[str, Any] = {"versions": versions(), "stub_numpy": stub_numpy(stub_python)}
    cannot_run: dict[str, str] = {}
    stub = stub_path()
    if not stub.is_file():
        cannot_run["server"] = f"Triton has no Python-backend stub for this Python ({stub})"
    elif shutil.which("ldd") is not None:
        missing = unresolved_libraries(stub, TritonServer.environment(stub_python))
        found["stub_libraries_missing"] = missing
        if missing:
            cannot_run["server"] = f"the stub's libraries are not found: {', '.join(missing)}"
    major = found["stub_numpy"].split(".")[0]
    if not major.isdigit() or int(major) >= 2:
        cannot_run["server"] = (
            f"the stubs' numpy is {found['stub_numpy']}: they need numpy 1 (the kit's)"
        )
    if Path("/dev/shm").is_dir():
        free = shutil.disk_usage("/dev/shm").free
        needed = vision_shm_bytes(scale)
        found["shm_free_mib"] = round(free / 2**20)
        found["shm_needed_by_vision_mib"] = round(needed / 2**20)
        if free < needed:
            cannot_run[VISION] = (
                f"/dev/shm has {free / 2**20:.0f} MiB free; its pages need {needed / 2**20:.0f}"
            )
    return {"found": found, "cannot_run": cannot_run}
