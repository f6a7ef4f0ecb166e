"""The code Triton's Python backend runs (the tokenizer and encoder models and what they
import) needs no more than its runtime packages: the Triton image installs this project with
``--no-deps`` beside numpy and tokenizers. The encoder imports its runtime (ONNX Runtime,
OpenVINO or PyTorch) only when it loads, so an image needs only the one it serves."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import reranker

SRC = Path(reranker.__file__).parents[1]
PROBE = """
import os, sys, sysconfig
sys.path[:0] = {paths!r}
import {module}
allowed = [os.path.abspath(p) for p in (*{paths!r}, sysconfig.get_paths()["stdlib"])]
for name, loaded in sorted(sys.modules.items()):
    file = getattr(loaded, "__file__", None)
    if not file:
        continue  # built into the interpreter
    path = os.path.abspath(file)
    if not any(path.startswith(root) for root in allowed):
        print("outside", name, path)
    else:
        print("package", name.split(".")[0])
"""


def _site(tmp_path: Path, packages: tuple[str, ...]) -> Path:
    """A site directory holding only ``packages`` (and their bundled libraries)."""
    site = tmp_path / "site"
    site.mkdir()
    distributions = importlib.metadata.packages_distributions()
    for name in packages:
        package = Path(importlib.import_module(name).__file__ or "").parent
        (site / name).symlink_to(package)
        # Bundled libraries sit beside the package, named after it or its distribution (PIL's
        # in pillow.libs).
        for owner in {name, *distributions.get(name, [])}:
            libs = package.with_name(owner + ".libs")
            if libs.is_dir():
                (site / libs.name).symlink_to(libs)
    from reranker.service.triton_server import triton_home

    utils = triton_home() / "backends" / "python" / "triton_python_backend_utils.py"
    (site / utils.name).symlink_to(utils)
    return site


@pytest.mark.parametrize(
    ("module", "packages"),
    [
        ("reranker.backend.models.tokenizer", ("numpy", "tokenizers")),
        ("reranker.backend.models.encoder", ("numpy",)),
        # A vision-language reranker's tokenizer model: the processor itself is imported at
        # load, from the image that serves it.
        ("reranker.backend.models.processor", ("numpy", "PIL")),
        # A late-interaction reranker's: its encoder imports ONNX Runtime at load.
        ("reranker.backend.models.late_tokenizer", ("numpy", "tokenizers")),
        ("reranker.backend.models.late_encoder", ("numpy", "tokenizers")),
    ],
)
def test_a_triton_model_imports_with_only_its_runtime_packages(
    tmp_path: Path, module: str, packages: tuple[str, ...]
) -> None:
    site = _site(tmp_path, packages)
    # -S: no site-packages; the interpreter sees the standard library, the site and src only.
    probe = PROBE.format(paths=[str(site), str(SRC)], module=module)
    run = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "outside" not in run.stdout, run.stdout
    loaded = {line.split()[1] for line in run.stdout.splitlines()}
    expected = {*packages, "reranker", "triton_python_backend_utils"}
    assert expected <= loaded, loaded
    others = {name for name in loaded - expected if not name.startswith("_sysconfigdata")}
    assert others <= set(sys.stdlib_module_names), others
