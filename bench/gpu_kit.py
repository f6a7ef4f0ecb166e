"""Downloads the wheels ``bench/gpu_check`` installs on a GPU machine with no network: what
such a machine (CUDA PyTorch, transformers, tokenizers, sentence-transformers, grpcio,
protobuf) lacks, for CPython 3.12 on x86-64 Linux, at the versions this project is tested
with (those installed here). At most 60 MiB in all (``make gpu-kit``)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

# The Triton binary and its client (with the two compiled modules the client imports); the
# rest are the rank service's small pure-Python dependencies.
PACKAGES = (
    "nvidia-pytriton",
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
PLATFORMS = (
    "manylinux_2_35_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
LIMIT_BYTES = 60 * 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--python-version", default="3.12", help="of the GPU machine")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in PACKAGES]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(args.output)]
    command += ["--python-version", args.python_version, "--only-binary=:all:"]
    command += [f"--platform={p}" for p in PLATFORMS] + ["--platform=any", *pins]
    subprocess.run(command, check=True)
    expected = {name.replace("-", "_").lower() for name in PACKAGES}
    wheels = sorted(args.output.glob("*.whl"))
    strays = [w.name for w in wheels if w.name.split("-")[0].lower() not in expected]
    if strays:
        print(f"error: {args.output} holds other wheels too: {strays}", file=sys.stderr)
        return 1
    size = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"  {wheel.stat().st_size / 2**20:6.2f} MiB  {wheel.name}")
    print(f"  {size / 2**20:6.2f} MiB  in all ({len(wheels)} wheels) in {args.output}")
    if size > LIMIT_BYTES:
        print("error: over the 60 MiB the GPU check accepts", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
