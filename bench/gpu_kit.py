"""Makes the kit ``bench/gpu_check`` brings to a GPU machine that reaches no package registry
(``make gpu-kit``): what such a machine's image (CUDA PyTorch, transformers, tokenizers,
sentence-transformers, numpy 2) lacks, for one CPython on x86-64 Linux, at the versions this
project is tested with (those installed here). It travels inside the working tree, so it is
kept small (at most 60 MiB):

- ``wheels/``: tritonclient and the rank service's small dependencies, installed with
  ``--no-deps``;
- ``fallback/``: grpcio and protobuf, installed only where the machine's own are older than
  the generated gRPC code needs;
- ``triton.tar.xz``: nvidia-pytriton unpacked (the Triton binary and its Python backend),
  with the target Python's Python-backend stub alone (the wheel carries six, and a
  libpython of its own for one of them);
- ``stub-numpy.tar.xz``: numpy 1.26.4 unpacked, for the stubs alone: they are built against
  numpy 1 and misread every tensor under numpy 2, while the check itself runs on the
  machine's numpy;
- ``kit.json``: what is where.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Literal, cast

WHEELS = (
    "tritonclient",
    "ml-dtypes",
    "python-rapidjson",
    "grpcio-health-checking",
    "grpcio-reflection",
    "prometheus-client",
    "opentelemetry-api",
    "importlib-metadata",
    "zipp",
)
FALLBACK = ("grpcio", "protobuf")
TRITON = "nvidia-pytriton"
STUB_NUMPY = "1.26.4"
PLATFORMS = (
    "manylinux_2_35_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
LIMIT_BYTES = 60 * 1024 * 1024
XzPreset = Literal[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
MANIFEST = "kit.json"
TRITON_ARCHIVE = "triton.tar.xz"
STUB_NUMPY_ARCHIVE = "stub-numpy.tar.xz"
STUBS = "pytriton/tritonserver/python_backend_stubs"
# The wheel's own libpython (auditwheel names it libpython3-<hash>.<minor>.so.1.0), which
# only the stub of that minor version links.
_BUNDLED_LIBPYTHON = re.compile(r"libpython3-[0-9a-f]+\.(\d+)\.so")


def download(pins: list[str], folder: Path, python_version: str) -> list[Path]:
    """Binary wheels of ``pins`` for ``python_version`` on x86-64 Linux, without their
    dependencies."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder)]
    command += ["--python-version", python_version, "--only-binary=:all:"]
    command += [f"--platform={p}" for p in PLATFORMS] + ["--platform=any", *pins]
    subprocess.run(command, check=True)
    return sorted(folder.glob("*.whl"))


def slim_triton(unpacked: Path, python_version: str) -> None:
    """Removes the other Pythons' stubs and the libpython only one of them links."""
    for stub in sorted((unpacked / STUBS).iterdir()):
        if stub.name != python_version:
            shutil.rmtree(stub)
    minor = python_version.split(".")[1]
    for library in sorted(unpacked.glob("nvidia_pytriton.libs/libpython3-*")):
        match = _BUNDLED_LIBPYTHON.match(library.name)
        if match is not None and match.group(1) != minor:
            library.unlink()


def slim_numpy(unpacked: Path) -> None:
    """numpy's own test suites: nothing the stubs import."""
    for tests in sorted(unpacked.glob("numpy/**/tests"), reverse=True):
        if tests.is_dir():
            shutil.rmtree(tests)


def unzip(wheel: Path, folder: Path) -> None:
    """``wheel`` unpacked with its files' modes (``extractall`` drops them, and the Triton
    binary and the stub must stay executable)."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            path = Path(archive.extract(member, folder))
            mode = member.external_attr >> 16
            if mode and not member.is_dir():
                path.chmod(mode & 0o777)


def pack(wheel: Path, archive: Path, slim: Callable[[Path], object], preset: XzPreset = 6) -> None:
    """``wheel`` unpacked, slimmed by ``slim``, as an xz tarball (at preset 6, about two
    thirds of the wheel's zip size)."""
    with tempfile.TemporaryDirectory() as scratch:
        unpacked = Path(scratch)
        unzip(wheel, unpacked)
        slim(unpacked)
        with tarfile.open(archive, "w:xz", preset=preset) as tar:
            for path in sorted(unpacked.iterdir()):
                tar.add(path, arcname=path.name)


def make_kit(output: Path, python_version: str, preset: XzPreset = 6) -> dict[str, object]:
    """The kit for ``python_version`` in ``output`` (emptied first); returns its manifest."""
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)

    def pinned(names: tuple[str, ...]) -> list[str]:
        return [f"{name}=={version(name)}" for name in names]

    wheels = download(pinned(WHEELS), output / "wheels", python_version)
    fallback = download(pinned(FALLBACK), output / "fallback", python_version)
    with tempfile.TemporaryDirectory() as scratch:
        (triton,) = download(pinned((TRITON,)), Path(scratch) / "t", python_version)
        pack(
            triton,
            output / TRITON_ARCHIVE,
            lambda folder: slim_triton(folder, python_version),
            preset,
        )
        (numpy,) = download([f"numpy=={STUB_NUMPY}"], Path(scratch) / "n", python_version)
        pack(numpy, output / STUB_NUMPY_ARCHIVE, slim_numpy, preset)
    manifest: dict[str, object] = {
        "python": python_version,
        "wheels": [w.name for w in wheels],
        "fallback": {name: version(name) for name in FALLBACK},
        "fallback_wheels": [w.name for w in fallback],
        "triton": {"archive": TRITON_ARCHIVE, "version": version(TRITON)},
        "stub_numpy": {"archive": STUB_NUMPY_ARCHIVE, "version": STUB_NUMPY},
    }
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def kit_size(kit: Path) -> int:
    return sum(p.stat().st_size for p in kit.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--python-version", default="3.12", help="of the GPU machine")
    parser.add_argument(
        "--preset",
        type=int,
        default=6,
        choices=range(10),
        help="xz preset (lower: faster, larger; 6 travels)",
    )
    args = parser.parse_args()
    make_kit(args.output, args.python_version, cast(XzPreset, args.preset))
    for path in sorted(p for p in args.output.rglob("*") if p.is_file()):
        print(f"  {path.stat().st_size / 2**20:6.2f} MiB  {path.relative_to(args.output)}")
    size = kit_size(args.output)
    print(f"  {size / 2**20:6.2f} MiB  in all in {args.output}")
    if size > LIMIT_BYTES:
        print("error: over the 60 MiB the GPU check accepts", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
