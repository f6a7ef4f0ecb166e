"""``bench/gpu_check --cpu --scale gpu``: the GPU check's every step (seeded checkpoints,
torch-runtime builds, Triton and the rank service, parity, the concurrency sweep up to 64
callers of 100 documents, the 1000-document call, Triton's statistics, targets, the report
files) on CPU with a one-layer model, run as on the lent GPU machine as far as this one allows:
under that image's package versions (``make gpu-emulation``: torch, transformers,
sentence-transformers and numpy 2 as the image has them) and through a kit laid out as it
travels, its numpy 1 for Triton's stubs alone. So the script cannot rot, nor send more than
the server it starts admits, on machines without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.generated

ROOT = Path(__file__).parents[2]
IMAGE_PYTHON = ROOT / "build" / "gpu-image-env" / "bin" / "python"
KIT = ROOT / "build" / "gpu-kit-here"


@pytest.fixture(scope="module")
def image_python() -> Path:
    """The image's package versions and the kit (made by ``make test`` before the tests; made
    here when the suite runs alone)."""
    subprocess.run(["make", "-s", "gpu-emulation"], cwd=ROOT, check=True, capture_output=True)
    return IMAGE_PYTHON


# A hang guard, not a judgment: the run's time follows the CPU's speed (the GPU's row counts
# on a CPU), and it is judged by every step completing.
HANG_GUARD_S = 1800


@pytest.mark.timeout(HANG_GUARD_S + 60)
def test_the_gpu_check_runs_under_the_images_versions_and_leaves_nothing_running(
    image_python: Path, tmp_path: Path
) -> None:
    """Every step at the GPU's call sizes on CPU, the check on the image's numpy 2 and the
    stubs on the kit's numpy 1; every result on disk."""
    output = tmp_path / "out"
    command = [str(image_python), str(ROOT / "bench" / "gpucheck"), str(output), "--cpu"]
    command += ["--scale", "gpu", "--wheels", str(KIT), "--workdir", str(tmp_path / "w")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((output / "results.json").read_text())
    assert all(step["ok"] for step in report["steps"].values()), report["steps"]
    assert report["compile"] == {"skipped": "on CPU"}
    found = report["preflight"]["found"]
    assert found["versions"]["numpy"].startswith("2.") and found["stub_numpy"] == "1.26.4"
    assert found["versions"]["torch"].startswith("2.11.") and report["kit"]["python"]
    table = (output / "results.md").read_text()
    # The servers' logs end with the run's work folder: their tails are kept beside it.
    assert "SERVING" in (output / "reranker.tail.log").read_text()
    assert (output / "tritonserver.tail.log").stat().st_size > 0
    assert report["device"]["device"].startswith("CPU")
    for model in ("minilm-l6",):
        parity = report["models"][model]["parity"]["fp32 reference"]
        # fp32 on CPU: the served scores are CrossEncoder's.
        assert parity["max_abs_diff"] <= 1e-5 and parity["order_kept"], parity
        assert parity["passed"] and parity["finite"]
        stages = report["models"][model]["stages_workload_a"]
        # Concurrent callers' requests merged into shared encoder executions.
        assert stages["encoder"]["rows_per_execution"] > 20, stages
        assert stages["tokenizer"]["compute_us_per_row"] > 0
        # The server alone on the 1000-document call: its one encoder instance's idle time.
        encoder = report["models"][model]["stages_large_call"]["encoder"]
        assert encoder["instances"] == 1 and 0 <= encoder["idle_fraction"] < 1, encoder
        rows = [r for r in report["rows"] if r["model"] == model]
        assert {(r["engine"], r["case"], r["concurrency"]) for r in rows} >= {
            ("CrossEncoder.rank bs=32", "a", 1),
            ("CrossEncoder.rank bs=128", "a", 1),
            ("this server", "a", 1),
            ("this server", "a", 16),
            ("this server", "a", 64),  # 6,400 rows in flight
            ("this server", "large", 1),  # 1,000 documents in one call
            ("this server", "small", 64),
        }
        assert all(r["pairs_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)
        assert f"| this server | {model} | a | 64 |" in table
    # The same model with the other instance count (2 on CPU, where 1 is the default).
    encoder = report["models"]["minilm-l6-2x"]["stages_large_call"]["encoder"]
    assert encoder["instances"] == 2 and 0 <= encoder["idle_fraction"] < 1, encoder
    assert ("this server", "minilm-l6-2x", "large") in {
        (r["engine"], r["model"], r["case"]) for r in report["rows"]
    }
    causal = {(r["engine"], r["concurrency"]): r for r in report["rows"] if r["case"] == "causal"}
    assert set(causal) == {
        ("CrossEncoder.rank", 1),
        ("this server, rows whole", 4),
        ("this server", 4),
    }
    assert causal[("this server", 4)]["paired_ratio"] > 0
    pages = {(r["engine"], r["concurrency"]) for r in report["rows"] if r["case"] == "pages"}
    assert pages == {("CrossEncoder.rank", 1), ("this server", 1), ("this server", 4)}
    late = {(r["engine"], r["concurrency"]) for r in report["rows"] if r["case"] == "late"}
    assert late == {("MultiVectorEncoder", 1), ("this server", 1), ("this server", 4)}
    parity = report["models"]["colbert-small"]["parity"]["fp32 reference"]
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4, parity
    assert {t["target"].split(":")[0] for t in report["targets"]} == {
        "minilm-l6",
        "qwen3",
        "qwen3-vl",
        "colbert-small",
    }
    assert all(t["met"] for t in report["targets"] if "parity" in t["target"])
    # A CPU build: one instance of each encoder; the figures say so.
    assert report["encoder_instances"]["minilm-l6"] == 1
    assert "- encoder instances (the figures above are with these): minilm-l6 1" in table
    assert report["gemm_tflops"] > 0
    # Everything it started stopped with it: no Triton, stub or rank service of its run.
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []


# The check at its small CPU scale with two models: a vision-language model whose build
# fails, and MiniLM's shape.
FAILING_VISION_BUILD = """
import sys
sys.path.insert(0, {bench!r})
from gpucheck import cli, models

def build_vision(scale, work):
    raise RuntimeError("the processor cannot be made under this transformers")

def builders(scale):
    # The failing build first: the ones after it still build.
    return {{"qwen3-vl": build_vision,
             "minilm-l6": lambda s, w: models.build_shape(s.shapes[0], s, w)}}

models.builders = builders
sys.exit(cli.main({argv!r}))
"""


@pytest.mark.timeout(HANG_GUARD_S + 60)
def test_a_model_that_fails_to_build_costs_its_own_rows_alone(tmp_path: Path) -> None:
    output = tmp_path / "out"
    argv = [str(output), "--cpu", "--workdir", str(tmp_path / "w")]
    script = FAILING_VISION_BUILD.format(bench=str(ROOT / "bench"), argv=argv)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((output / "results.json").read_text())
    steps = report["steps"]
    failed = {name: step["error"] for name, step in steps.items() if not step["ok"]}
    assert "the processor cannot be made" in failed.pop("build qwen3-vl")
    assert failed.pop("qwen3-vl: pages") == "skipped: qwen3-vl did not build"
    # The rest that was built ran whole: the server, and every step of MiniLM's shape.
    assert all(step["ok"] for name, step in steps.items() if name.startswith("minilm-l6:"))
    assert steps["server"]["ok"] and steps["targets"]["ok"]
    cases = {(r["engine"], r["case"]) for r in report["rows"] if r["model"] == "minilm-l6"}
    assert {("this server", "a"), ("this server", "large"), ("this server", "small")} <= cases
    assert (
        "- step 'qwen3-vl: pages' skipped: qwen3-vl did not build"
        in (output / "results.md").read_text()
    )
