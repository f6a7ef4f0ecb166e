"""``bench/gpu_check --cpu``: the GPU check's every step (seeded checkpoints, torch-runtime
builds, Triton and the rank service, parity, the concurrency sweep, Triton's statistics,
targets, the report files) on CPU at a small scale, so the script cannot rot on machines
without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).parents[2]


def test_the_gpu_check_runs_its_steps_on_cpu_and_leaves_nothing_running(tmp_path: Path) -> None:
    output = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    run = subprocess.run(
        [str(ROOT / "bench" / "gpu_check"), str(output), "--cpu", "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((output / "results.json").read_text())
    table = (output / "results.md").read_text()
    assert report["device"]["device"].startswith("CPU")
    for model in ("minilm-l6", "bert-base"):
        parity = report["models"][model]["parity"]["fp32 reference"]
        # fp32 on CPU: the served scores are CrossEncoder's.
        assert parity["max_abs_diff"] <= 1e-5 and parity["top10_identical"], parity
        stages = report["models"][model]["stages_workload_a"]
        # Concurrent callers' requests merged into shared encoder executions.
        assert stages["encoder"]["rows_per_execution"] > 20, stages
        assert stages["tokenizer"]["compute_us_per_row"] > 0
        rows = [r for r in report["rows"] if r["model"] == model]
        assert {(r["engine"], r["case"], r["concurrency"]) for r in rows} >= {
            ("CrossEncoder.rank bs=32", "a", 1),
            ("this server", "a", 1),
            ("this server", "a", 4),
            ("this server", "large", 1),
            ("this server", "small", 8),
        }
        assert all(r["pairs_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)
        assert f"| this server | {model} | a | 4 |" in table
    assert {t["target"].split(":")[0] for t in report["targets"]} == {"minilm-l6", "bert-base"}
    assert report["gemm_tflops"] > 0
    # Everything it started stopped with it: no Triton, stub or rank service of its run.
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []
