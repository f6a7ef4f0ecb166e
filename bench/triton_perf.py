"""``perf_analyzer`` (the tritonclient 2.41.1 wheel's binary) against the Triton ensemble alone."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from workloads import QUERY


def perf_analyzer(
    binary: Path, triton: str, documents: list[str], workdir: Path
) -> dict[str, float]:
    """Rows/s Triton's ensemble sustains alone (perf_analyzer, requests of 25 rows)."""
    rows = 25
    data = {"data": [{"QUERY": [QUERY], "DOCUMENT": [document]} for document in documents]}
    (workdir / "pa-input.json").write_text(json.dumps(data))
    libs = workdir / "pa-libs"
    libs.mkdir(exist_ok=True)
    import pytriton

    # The nvidia-pytriton wheel's bundled libraries include the two perf_analyzer needs.
    shipped = Path(pytriton.__file__).parents[1] / "nvidia_pytriton.libs"
    for pattern, name in (
        ("libb64-*.so.0d", "libb64.so.0d"),
        ("libcudart-*.so.12*", "libcudart.so.12"),
    ):
        link = libs / name
        if not link.exists():
            link.symlink_to(next(shipped.glob(pattern)))
    completed = subprocess.run(
        [
            str(binary),
            "-m",
            "minilm",
            "-u",
            triton,
            "-i",
            "grpc",
            "--input-data",
            str(workdir / "pa-input.json"),
            "-b",
            str(rows),
            "--concurrency-range",
            "4",
            "--measurement-interval",
            "5000",
            # A shared 2-core machine drifts: accept a looser stability band, more trials.
            "--stability-percentage",
            "25",
            "--max-trials",
            "10",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, LD_LIBRARY_PATH=str(libs)),
        check=False,
    )
    output = completed.stdout + completed.stderr
    for line in output.splitlines():
        if "Throughput:" in line:
            # "infer/sec" counts batch rows (requests x batch size), i.e. pairs.
            pairs = float(line.split("Throughput:")[1].split()[0])
            return {"requests_per_s": pairs / rows, "pairs_per_s": pairs}
    raise RuntimeError(f"perf_analyzer printed no throughput:\n{output[-2000:]}")
