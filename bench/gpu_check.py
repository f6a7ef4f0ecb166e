"""GPU check: this server (Triton + the rank service, PyTorch encoders on the GPU) against
sentence-transformers' ``CrossEncoder`` on the same GPU, in one self-contained run.

Runs on an x86-64 Linux machine with an NVIDIA GPU, Python 3.12 and CUDA PyTorch,
transformers, tokenizers, sentence-transformers, grpcio and protobuf, with no network. What
such a machine lacks comes as a folder of wheels (``make gpu-kit``, at most 60 MiB), installed
with ``--no-deps`` into a private folder. The checkpoints are seeded, built here: a MiniLM-L6
shape and a BERT-base shape (the size of bge-reranker-base).

Measures: fp16 parity with CrossEncoder; workload (a), 100 documents a call, at concurrency
1, 4, 16 and 64 against ``CrossEncoder.rank`` with batch size 32 (as shipped) and the best of
32, 64 and 128; a 1000-document call; 64 callers x 10 documents; GPU memory peak; the
tokenizer's CPU time and Triton's queue and compute time per model; the FLOP bound from a
measured fp16 GEMM rate; eager against ``torch.compile`` (CUDA graphs) in-process; a
causal-LM reranker of Qwen3-Reranker-0.6B's shape (8 layers, bf16) behind its default prompt,
each call's shared prompt run once against the same model run whole, paired. Writes
``results.json`` and ``results.md`` into the output folder and stops every process it
started. ``--cpu`` runs the same steps on CPU at a small scale (fp32).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import traceback
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The project's own packages, importable from the tree without installing it.
SOURCES = [ROOT, ROOT / "src", ROOT / "api", ROOT / "client", ROOT / "bench"]
QUERY = "how does the interpreter handle an exception raised inside a loop"
# Every call's deadline, the largest sweep's last caller included.
CALL_TIMEOUT_S = 600


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int


@dataclass(frozen=True)
class Scale:
    device: str
    precision: str
    shapes: tuple[Shape, ...]
    documents: int
    concurrency: tuple[int, ...]
    rounds: int
    large_call: int
    small_callers: int
    small_documents: int
    batch_sizes: tuple[int, ...]
    shipped_batch_size: int = 32
    gemm_size: int = 8192
    # Layers of the causal row's Qwen3-Reranker-0.6B shape (28 in the real model), and the
    # documents of its calls.
    causal_layers: int = 8
    causal_documents: int = 100
    # The multimodal row: a vision-language reranker of Qwen3-VL-2B's shape (or a small one)
    # with these text and vision layers (28 and 24 in the real model), one text query against
    # this many page-like images of this size (width, height).
    vision_full_shape: bool = True
    vision_layers: tuple[int, int] = (4, 4)
    vision_pages: int = 20
    vision_page_size: tuple[int, int] = (768, 1024)


GPU = Scale(
    device="gpu",
    precision="fp16",
    shapes=(Shape("minilm-l6", 384, 6, 12, 1536), Shape("bert-base", 768, 12, 12, 3072)),
    documents=100,
    concurrency=(1, 4, 16, 64),
    rounds=5,
    large_call=1000,
    small_callers=64,
    small_documents=10,
    batch_sizes=(32, 64, 128),
)
# The GPU's call sizes, concurrency and row counts, run on CPU with a one-layer model: what
# the GPU run sends (the row budget, the sweep, the report) is exercised without a GPU.
# (Narrower models score a pair differently alone and in a batch by more than the fp32
# parity bound, CrossEncoder itself included: 1.6e-5 at hidden 64, 3.7e-6 at 384.)
DRY_RUN = Scale(
    device="cpu",
    precision="fp32",
    shapes=(Shape("minilm-l6", 384, 1, 12, 1536),),
    documents=GPU.documents,
    concurrency=GPU.concurrency,
    rounds=1,
    large_call=GPU.large_call,
    small_callers=GPU.small_callers,
    small_documents=GPU.small_documents,
    batch_sizes=GPU.batch_sizes,
    gemm_size=1024,
    causal_layers=1,
    causal_documents=16,
    vision_full_shape=False,
    vision_layers=(1, 1),
    vision_pages=4,
    vision_page_size=(160, 200),
)
CPU = Scale(
    device="cpu",
    precision="fp32",
    shapes=(Shape("minilm-l6", 384, 1, 12, 1536), Shape("bert-base", 768, 1, 12, 3072)),
    documents=20,
    concurrency=(1, 4),
    rounds=2,
    large_call=100,
    small_callers=8,
    small_documents=5,
    batch_sizes=(32, 64),
    gemm_size=1024,
    causal_layers=1,
    causal_documents=16,
    vision_full_shape=False,
    vision_layers=(1, 1),
    vision_pages=4,
    vision_page_size=(160, 200),
)


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


def build_models(scale: Scale, work: Path) -> dict[str, Path]:
    """Seeded checkpoints, each built into one repository for the torch runtime; the causal
    one twice, as built (each call's shared prompt runs once) and with rows run whole."""
    from reranker.builder.builder import BuildOptions, build
    from reranker.builder.triton_configs import TritonTuning
    from reranker.contract.model import Device, EncoderRuntime, Precision
    from tests.checkpoints import (
        QWEN3_0_6B,
        QWEN3_VL_2B,
        QWEN3_VL_PIXELS,
        QWEN3_VL_SMALL,
        bert_cross_encoder,
        qwen3_reranker,
        qwen3_vl_reranker,
    )

    checkpoints = {}
    for shape in scale.shapes:
        checkpoint = bert_cross_encoder(
            work / "checkpoints" / shape.name,
            shape.hidden,
            shape.layers,
            shape.heads,
            shape.intermediate,
        )
        options = BuildOptions(
            name=shape.name,
            precision=Precision(scale.precision),
            device=Device(scale.device),
            runtime=EncoderRuntime.TORCH,
        )
        build(str(checkpoint), options, work / "model_repository")
        checkpoints[shape.name] = checkpoint
    causal = qwen3_reranker(
        work / "checkpoints" / CAUSAL, layers=scale.causal_layers, shape=QWEN3_0_6B
    )
    for name, shared in ((CAUSAL, True), (f"{CAUSAL}-whole", False)):
        options = BuildOptions(
            name=name,
            device=Device(scale.device),
            runtime=EncoderRuntime.TORCH,
            precision_chosen=False,
            tuning=TritonTuning(shared_prefix=shared),
        )
        build(str(causal), options, work / "model_repository")
    checkpoints[CAUSAL] = causal
    vision = qwen3_vl_reranker(
        work / "checkpoints" / VISION,
        shape=QWEN3_VL_2B if scale.vision_full_shape else QWEN3_VL_SMALL,
        layers=scale.vision_layers,
        pixels=QWEN3_VL_PIXELS,
    )
    options = BuildOptions(
        name=VISION,
        device=Device(scale.device),
        runtime=EncoderRuntime.TORCH,
        precision_chosen=False,
    )
    build(str(vision), options, work / "model_repository")
    checkpoints[VISION] = vision
    return checkpoints


# The multimodal row's model.
VISION = "qwen3-vl"
# The causal-LM row: its model, and the instruction its calls carry (Qwen3-Reranker's own).
CAUSAL = "qwen3"
CAUSAL_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


@dataclass
class Row:
    engine: str
    model: str
    case: str
    concurrency: int
    pairs_per_s: float
    p50_ms: float
    p99_ms: float
    flop_fraction: float = 0.0
    run_pairs_per_s: list[float] = field(default_factory=list)
    paired_ratio: float = 0.0


def _row(result: Any, case: str) -> Row:
    return Row(
        result.engine,
        result.model,
        case,
        result.concurrency,
        result.pairs_per_s,
        result.p50_ms,
        result.p99_ms,
        run_pairs_per_s=result.run_pairs_per_s,
    )


def triton_statistics(triton_address: str) -> dict[str, dict[str, float]]:
    """Cumulative per-model counts and times (ns) from Triton's statistics API."""
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(triton_address)
    try:
        stats = client.get_inference_statistics(as_json=True)
    finally:
        client.close()
    out = {}
    for model in stats.get("model_stats", []):
        inference = model.get("inference_stats", {})
        out[model["name"]] = {
            "inferences": float(model.get("inference_count", 0)),
            "executions": float(model.get("execution_count", 0)),
            "requests": float(inference.get("success", {}).get("count", 0)),
            "queue_ns": float(inference.get("queue", {}).get("ns", 0)),
            "compute_ns": float(inference.get("compute_infer", {}).get("ns", 0)),
        }
    return out


def stage_times(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], model: str
) -> dict[str, dict[str, float]]:
    """What the tokenizer and encoder of ``model`` did between two snapshots: rows per
    execution (how well requests merged), queue time per request, compute per execution
    and per row."""
    times = {}
    for stage in ("tokenizer", "encoder"):
        name = f"{model}__{stage}"
        delta = {k: after[name][k] - before.get(name, {}).get(k, 0.0) for k in after[name]}
        requests, executions = max(delta["requests"], 1), max(delta["executions"], 1)
        rows = max(delta["inferences"], 1)
        times[stage] = {
            "rows_per_execution": delta["inferences"] / executions,
            "queue_ms_per_request": delta["queue_ns"] / requests / 1e6,
            "compute_ms_per_execution": delta["compute_ns"] / executions / 1e6,
            "compute_us_per_row": delta["compute_ns"] / rows / 1e3,
        }
    return times


# Largest |served - reference| of sigmoid scores a parity check accepts: fp32 serving is
# CrossEncoder's arithmetic; fp16 or bf16 serving differs by its rounding.
PARITY_BOUND = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 5e-3}


def parity(
    client: Any, cross_encoder: Any, model: str, documents: list[Any], bound: float
) -> dict[str, Any]:
    """Served scores against CrossEncoder's on the same documents: passed when every score
    is finite, within ``bound`` and the top ten are the same documents in the same order."""
    served = client.rank(QUERY, documents, model=model)
    served_scores = [math.nan] * len(documents)
    for result in served:
        served_scores[result["corpus_id"]] = result["score"]
    reference = [float(s) for s in cross_encoder.predict([(QUERY, d) for d in documents])]

    def top(scores: list[float]) -> list[int]:
        return sorted(range(len(scores)), key=lambda i: -scores[i])[:10]

    finite = all(math.isfinite(v) for v in (*served_scores, *reference))
    # A NaN makes every comparison false: it must fail the check, not hide inside max().
    worst = (
        max(abs(a - b) for a, b in zip(served_scores, reference, strict=True)) if finite else None
    )
    top10 = top(served_scores) == top(reference)
    return {
        "pairs": len(documents),
        "finite": finite,
        "max_abs_diff": worst,
        "bound": bound,
        "top10_identical": top10,
        "passed": finite and worst is not None and worst <= bound and top10,
    }


def flops_per_pair(shape: Shape, mean_length: float) -> float:
    from flops import bert_flops

    return bert_flops(mean_length, shape.hidden, shape.layers, shape.intermediate)


def compile_check(checkpoint: Path, scale: Scale, budget_s: float) -> dict[str, Any]:
    """In-process, one GPU: the PyTorch runner eager and under ``torch.compile`` (default
    mode, and reduce-overhead: CUDA graphs), on padded batches of two lengths."""
    import numpy as np

    from reranker.backend.torch_runtime import TorchRunner
    from reranker.contract.model import Precision
    from reranker.contract.parameters import TorchCompile as Compile

    if scale.device != "gpu":
        return {"skipped": "on CPU"}
    shapes = [(64, 128), (32, 256)]
    results: dict[str, Any] = {}
    started = time.monotonic()
    for mode in (Compile.EAGER, Compile.DEFAULT, Compile.REDUCE_OVERHEAD):
        if time.monotonic() - started > budget_s:
            results[mode.value] = "skipped: over the time budget"
            continue
        runner = TorchRunner(
            checkpoint,
            bi_encoder=False,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            device="cuda:0",
            dtype=Precision(scale.precision),
            compile_mode=mode,
        )
        rates = []
        for rows, length in shapes:
            feeds = {
                "input_ids": np.full((rows, length), 1000, dtype=np.int64),
                "attention_mask": np.ones((rows, length), dtype=np.int64),
                "token_type_ids": np.zeros((rows, length), dtype=np.int64),
            }
            for _ in range(3):  # compiles, captures graphs
                runner.run(feeds)
            start = time.perf_counter()
            for _ in range(20):
                runner.run(feeds)
            rates.append(20 * rows / (time.perf_counter() - start))
        results[mode.value] = {f"{r}x{n}": rate for (r, n), rate in zip(shapes, rates, strict=True)}
        del runner
    return results


class Results:
    """The report, written to the output folder after every step, each step guarded: a step
    that fails records its error and the run goes on with what does not depend on it, so a
    late failure (a compile error, say) loses none of the earlier measurements."""

    def __init__(self, output: Path, report: dict[str, Any], started: float) -> None:
        self.output = output
        self.report = report
        self.report.setdefault("steps", {})
        self.rows: list[Row] = []
        self._started = started

    def elapsed(self) -> str:
        return f"[{time.monotonic() - self._started:5.0f} s]"

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        entry: dict[str, Any] = {"ok": True}
        try:
            yield
        except Stopped:
            raise
        except Exception as error:  # noqa: BLE001 - recorded, and the run goes on
            entry = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            print(f"{self.elapsed()} step {name!r} failed:", file=sys.stderr)
            traceback.print_exc()
        finally:
            entry["seconds"] = round(time.monotonic() - started, 1)
            self.report["steps"][name] = entry
            self.write()

    def skip(self, name: str, reason: str) -> None:
        self.report["steps"][name] = {"ok": False, "error": f"skipped: {reason}", "seconds": 0.0}
        self.write()

    @property
    def failed(self) -> list[str]:
        return [name for name, entry in self.report["steps"].items() if not entry["ok"]]

    def write(self) -> None:
        self.report["rows"] = [asdict(r) for r in self.rows]
        self.report["wall_s"] = time.monotonic() - self._started
        (self.output / "results.json").write_text(json.dumps(self.report, indent=2) + "\n")
        (self.output / "results.md").write_text(markdown(self.report))


def server_settings(scale: Scale) -> dict[str, str]:
    """The rank service sized for the load the check sends: every row of the largest sweep in
    flight at once (twice over, for the canaries and a margin), the 1000-document call."""
    in_flight = max(
        max(scale.concurrency) * scale.documents,
        scale.small_callers * scale.small_documents,
        scale.large_call,
    )
    settings = {
        "http_port": "-1",
        "max_documents_per_call": str(max(scale.large_call, scale.documents)),
        "max_rows_in_flight": str(2 * in_flight),
    }
    if scale.device == "cpu":
        # On CPU the sweep's last callers wait for every row ahead of them (6,400 at the
        # GPU's sizes), a time that follows the CPU's speed: the dry run judges that each call
        # completes, so a call is bounded by the client's deadline alone, not the 60 s default.
        settings["inference_timeout_s"] = str(CALL_TIMEOUT_S)
    if scale.device == "gpu":
        # The GPU launch profile's, for a first CUDA load of the checkpoints.
        with open(ROOT / "server_config" / "gpu-pip.toml", "rb") as profile:
            timeout_s = tomllib.load(profile)["triton_startup_timeout_s"]
        settings["triton_startup_timeout_s"] = str(timeout_s)
    return settings


def measure(scale: Scale, work: Path, results: Results) -> None:
    import torch
    from harness import Case, interleave
    from reranker_client import RerankClient
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer
    from workloads import workload

    from tests.launcher import start_server, stop_server

    report, elapsed = results.report, results.elapsed
    checkpoints: dict[str, Path] = {}
    with results.step("build"):
        checkpoints = build_models(scale, work)
        print(f"{elapsed()} built {', '.join(checkpoints)}", flush=True)
    tflops = 0.0
    with results.step("gemm"):
        tflops = report["gemm_tflops"] = gemm_tflops(scale)
        print(f"{elapsed()} GEMM {tflops:.1f} TFLOP/s ({scale.precision})", flush=True)
    all_documents = workload("a") * (scale.large_call // 100 + 1)
    documents = all_documents[: scale.documents]
    large = all_documents[: scale.large_call]
    small = documents[: scale.small_documents]
    report.setdefault("models", {})
    torch_device = "cuda" if scale.device == "gpu" else "cpu"
    sampler = MemorySampler() if scale.device == "gpu" else None
    bound = PARITY_BOUND[scale.precision]
    with contextlib.ExitStack() as stack:
        if sampler is not None:
            stack.enter_context(sampler)
        client = server = None
        if checkpoints:
            with results.step("server"):
                server = start_server(
                    work / "model_repository",
                    work / "server",
                    scale.shapes[0].name,
                    **server_settings(scale),
                )
                stack.callback(stop_server, server, 60)
                print(f"{elapsed()} server up at {server.address}", flush=True)
                client = stack.enter_context(RerankClient(server.address, timeout=CALL_TIMEOUT_S))
        for shape in scale.shapes:
            model = shape.name
            if client is None or server is None or model not in checkpoints:
                results.skip(model, "no server or no checkpoint")
                continue
            checkpoint = checkpoints[model]
            facts: dict[str, Any] = report["models"].setdefault(model, {"shape": asdict(shape)})
            cross_encoder: Any = None
            with results.step(f"{model}: parity"):
                tokenizer = AutoTokenizer.from_pretrained(checkpoint)
                encoded = tokenizer([QUERY] * len(documents), documents, truncation=True)
                mean_length = statistics.fmean(len(ids) for ids in encoded["input_ids"])
                facts["mean_tokens"] = mean_length
                facts["flops_per_pair"] = per_pair = flops_per_pair(shape, mean_length)
                if tflops:
                    facts["bound_pairs_per_s"] = tflops * 1e12 / per_pair
                cross_encoder = CrossEncoder(str(checkpoint), device=torch_device)
                checks = facts["parity"] = {
                    "fp32 reference": parity(client, cross_encoder, model, documents, bound)
                }
                if scale.precision != "fp32":
                    # A torch module itself from sentence-transformers 4 on; a wrapper before.
                    is_module = isinstance(cross_encoder, torch.nn.Module)
                    half = cross_encoder if is_module else cross_encoder.model
                    half.to(torch.float16 if scale.precision == "fp16" else torch.bfloat16)
                    checks[f"{scale.precision} reference"] = parity(
                        client, cross_encoder, model, documents, bound
                    )
                print(f"{elapsed()} {model} parity {json.dumps(checks)}", flush=True)

            def served(docs: list[str], name: str = model) -> Callable[[], object]:
                return lambda: client.rank(QUERY, docs, model=name)

            n = len(documents)
            with results.step(f"{model}: workload a"):
                cases = [
                    Case(
                        f"CrossEncoder.rank bs={b}",
                        model,
                        "a",
                        1,
                        _ranks(cross_encoder, documents, b),
                        n,
                    )
                    for b in scale.batch_sizes
                    if cross_encoder is not None
                ]
                cases += [
                    Case("this server", model, "a", c, served(documents), n)
                    for c in scale.concurrency
                ]
                before = triton_statistics(server.triton_grpc)
                found = [_row(r, "a") for r in interleave(cases, scale.rounds)]
                after = triton_statistics(server.triton_grpc)
                per_pair = facts.get("flops_per_pair", 0.0)
                for row in found:
                    if tflops:
                        row.flop_fraction = row.pairs_per_s * per_pair / (tflops * 1e12)
                results.rows += found
                facts["stages_workload_a"] = stage_times(before, after, model)
            with results.step(f"{model}: large call"):
                case = Case("this server", model, "large", 1, served(large), len(large))
                results.rows += [_row(r, "large") for r in interleave([case], scale.rounds)]
            with results.step(f"{model}: small callers"):
                case = Case(
                    "this server", model, "small", scale.small_callers, served(small), len(small)
                )
                results.rows += [_row(r, "small") for r in interleave([case], scale.rounds * 2)]
            del cross_encoder
            if scale.device == "gpu":
                torch.cuda.empty_cache()
        if client is not None and CAUSAL in checkpoints:
            with results.step(f"{CAUSAL}: shared prompt"):
                results.rows += causal_rows(
                    client, checkpoints[CAUSAL], all_documents[: scale.causal_documents], scale
                )
        if client is not None and VISION in checkpoints:
            with results.step(f"{VISION}: pages"):
                rows, checks = vision_rows(client, checkpoints[VISION], scale)
                results.rows += rows
                report["models"][VISION] = {"parity": checks}
    if sampler is not None:
        report["gpu_memory_peak_mib"] = sampler.peak_mib
        report["gpu_memory_baseline_mib"] = sampler.baseline_mib
    first = scale.shapes[0].name
    if first in checkpoints:
        with results.step("compile"):
            print(f"{elapsed()} torch.compile check", flush=True)
            report["compile"] = compile_check(checkpoints[first], scale, budget_s=150)
    with results.step("targets"):
        report["targets"] = targets(results.rows, scale, report)


def causal_rows(client: Any, checkpoint: Path, documents: list[str], scale: Scale) -> list[Row]:
    """A causal-LM reranker (Qwen3-Reranker-0.6B shape) behind its default prompt at
    concurrency 4: the server with each group's shared prompt run once, paired round by
    round with the same model built to run rows whole, and ``CrossEncoder.rank`` on the
    same device and precision."""
    from functools import partial

    import torch
    from harness import Case, interleave
    from sentence_transformers import CrossEncoder

    device = "cuda" if scale.device == "gpu" else "cpu"
    cross_encoder = CrossEncoder(str(checkpoint), device=device)
    if scale.device == "gpu":
        is_module = isinstance(cross_encoder, torch.nn.Module)
        (cross_encoder if is_module else cross_encoder.model).to(torch.bfloat16)
    n = len(documents)

    def served(model: str) -> Callable[[], object]:
        return partial(client.rank, QUERY, documents, model=model, instruction=CAUSAL_INSTRUCTION)

    whole = Case("this server, rows whole", CAUSAL, "causal", 4, served(f"{CAUSAL}-whole"), n)
    cases = [
        Case(
            "CrossEncoder.rank",
            CAUSAL,
            "causal",
            1,
            lambda: cross_encoder.rank(QUERY, documents, prompt=CAUSAL_INSTRUCTION),
            n,
        ),
        whole,
        Case("this server", CAUSAL, "causal", 4, served(CAUSAL), n, partner=whole),
    ]
    rows = []
    for result in interleave(cases, scale.rounds):
        row = _row(result, "causal")
        row.paired_ratio = result.paired_ratio
        rows.append(row)
    return rows


def vision_rows(client: Any, checkpoint: Path, scale: Scale) -> tuple[list[Row], dict[str, Any]]:
    """A vision-language reranker (Qwen3-VL-2B shape) ranking page-like images against a text
    query: ``CrossEncoder.rank`` on the same device and precision, and this server at
    concurrency 1 and 4; and its scores against CrossEncoder's."""
    import io
    from functools import partial

    import torch
    from harness import Case, interleave
    from PIL import Image
    from sentence_transformers import CrossEncoder
    from vision import page_images

    gpu = scale.device == "gpu"
    # Loaded in the served precision (bf16 on a GPU) as the server loads it: its rotary
    # frequencies stay fp32.
    cross_encoder = CrossEncoder(
        str(checkpoint),
        device="cuda" if gpu else "cpu",
        model_kwargs={"dtype": torch.bfloat16 if gpu else torch.float32},
    )
    pages = page_images(scale.vision_pages, scale.vision_page_size)
    images = [Image.open(io.BytesIO(page)).convert("RGB") for page in pages]
    bound = PARITY_BOUND["bf16" if gpu else "fp32"]
    checks = {"reference": parity(client, cross_encoder, VISION, images, bound)}
    print(f"{VISION} parity {json.dumps(checks)}", flush=True)
    n = len(pages)
    served = partial(client.rank, QUERY, pages, model=VISION)
    cases = [
        Case(
            "CrossEncoder.rank", VISION, "pages", 1, partial(cross_encoder.rank, QUERY, images), n
        ),
        Case("this server", VISION, "pages", 1, served, n),
        Case("this server", VISION, "pages", 4, served, n),
    ]
    rows = [_row(result, "pages") for result in interleave(cases, scale.rounds)]
    return rows, checks


def _ranks(cross_encoder: Any, documents: list[str], batch_size: int) -> Callable[[], object]:
    return lambda: cross_encoder.rank(QUERY, documents, batch_size=batch_size)


def targets(rows: list[Row], scale: Scale, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPU targets, as ratios within this run, per model, and each parity check."""

    def find(engine: str, model: str, case: str, concurrency: int) -> Row | None:
        key = (engine, model, case, concurrency)
        return next((r for r in rows if (r.engine, r.model, r.case, r.concurrency) == key), None)

    checks = []
    for model, facts in sorted(report.get("models", {}).items()):
        for reference, check in facts.get("parity", {}).items():
            checks.append(
                {
                    "target": f"{model}: parity with CrossEncoder ({reference}), max |diff|",
                    "measured": check["max_abs_diff"],
                    "goal": f"<= {check['bound']:g}, finite, same top 10",
                    "met": check["passed"],
                }
            )
    shared = find("this server", CAUSAL, "causal", 4)
    if shared:
        checks.append(
            {
                "target": f"{CAUSAL}: shared prompt c=4 / rows whole c=4, paired",
                "measured": shared.paired_ratio,
                "goal": ">= 1.3",
                "met": shared.paired_ratio >= 1.3,
            }
        )
    pages, reference = (
        find("this server", VISION, "pages", 4),
        find("CrossEncoder.rank", VISION, "pages", 1),
    )
    if pages and reference:
        checks.append(
            {
                "target": f"{VISION}: pages c=4 / CrossEncoder.rank",
                "measured": pages.pairs_per_s / reference.pairs_per_s,
                "goal": ">= 1.2",
                "met": pages.pairs_per_s >= 1.2 * reference.pairs_per_s,
            }
        )
    level = 16 if 16 in scale.concurrency else max(scale.concurrency)
    for model in sorted({r.model for r in rows if r.case not in ("causal", "pages")}):
        ours = find("this server", model, "a", level)
        shipped = find(f"CrossEncoder.rank bs={scale.shipped_batch_size}", model, "a", 1)
        best = max(
            (r for r in rows if r.model == model and r.engine.startswith("CrossEncoder")),
            key=lambda r: r.pairs_per_s,
            default=None,
        )
        small = find("this server", model, "small", scale.small_callers)
        for name, value, goal in (
            (
                f"{model}: server c={level} / CrossEncoder bs={scale.shipped_batch_size}",
                ours.pairs_per_s / shipped.pairs_per_s if ours and shipped else None,
                2.0,
            ),
            (
                f"{model}: server c={level} / CrossEncoder best batch",
                ours.pairs_per_s / best.pairs_per_s if ours and best else None,
                1.2,
            ),
        ):
            checks.append(
                {
                    "target": name,
                    "measured": value,
                    "goal": f">= {goal}",
                    "met": bool(value and value >= goal),
                }
            )
        ratio = small.p99_ms / small.p50_ms if small and small.p50_ms else None
        checks.append(
            {
                "target": f"{model}: {scale.small_callers} callers x "
                f"{scale.small_documents} docs, p99 / p50",
                "measured": ratio,
                "goal": "<= 3.0",
                "met": bool(ratio is not None and ratio <= 3.0),
            }
        )
        if ours:
            checks.append(
                {
                    "target": f"{model}: server c={level}, fraction of the FLOP bound",
                    "measured": ours.flop_fraction,
                    "goal": "reported",
                    "met": True,
                }
            )
    return checks


def markdown(report: dict[str, Any]) -> str:
    """The report as a table; a run cut short shows what it has, and each failed step."""
    facts = report.get("device", {})
    lines = [
        f"GPU check, {report.get('date', '')}, {facts.get('device', '')}"
        + (
            f", CUDA {facts['cuda']}, driver {facts.get('driver', '')}" if facts.get("cuda") else ""
        ),
        "",
        "versions: " + ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items()),
        "",
        "| engine | model | case | c | pairs/s | p50 ms | p99 ms | FLOP bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report.get("rows", []):
        fraction = f"{r['flop_fraction']:.2f}" if r["flop_fraction"] else ""
        lines.append(
            f"| {r['engine']} | {r['model']} | {r['case']} | {r['concurrency']} | "
            f"{r['pairs_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {fraction} |"
        )
    lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    for check in report.get("targets", []):
        value = "n/a" if check["measured"] is None else f"{check['measured']:.3g}"
        lines.append(f"| {check['target']} | {value} | {check['goal']} | {check['met']} |")
    lines.append("")
    for model, facts_of in report.get("models", {}).items():
        lines.append(f"- {model}: parity {json.dumps(facts_of.get('parity', {}))}")
        for stage, times in facts_of.get("stages_workload_a", {}).items():
            cells = ", ".join(f"{k} {v:.2f}" for k, v in times.items())
            lines.append(f"  - {stage}: {cells}")
    if "gpu_memory_peak_mib" in report:
        lines.append(
            f"- GPU memory: peak {report['gpu_memory_peak_mib']:.0f} MiB "
            f"(baseline {report['gpu_memory_baseline_mib']:.0f} MiB)"
        )
    if "gemm_tflops" in report:
        lines.append(f"- GEMM: {report['gemm_tflops']:.1f} TFLOP/s")
    if "compile" in report:
        lines.append(f"- torch.compile: {json.dumps(report['compile'])}")
    for name, step in report.get("steps", {}).items():
        if not step["ok"]:
            lines.append(f"- step {name!r} failed: {step['error']}")
    lines.append(f"- wall time: {report.get('wall_s', 0.0):.0f} s")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="folder for results.json and results.md")
    parser.add_argument("--wheels", type=Path, help="folder of wheels (make gpu-kit)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU (fp32)")
    parser.add_argument(
        "--scale",
        choices=["small", "gpu"],
        help="small: a few calls of 1-layer models (the default on CPU); gpu: the GPU run's "
        "call sizes, concurrency and row counts (the default on a GPU; with --cpu, a dry run "
        "with a tiny model)",
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--in-kit-environment", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    scale = {(False, "gpu"): GPU, (True, "gpu"): DRY_RUN}.get((args.cpu, args.scale), GPU)
    if args.cpu and args.scale != "gpu":
        scale = CPU
    args.output.mkdir(parents=True, exist_ok=True)
    # Before anything is installed: what the project's and the kit's generated code needs.
    check_numpy()
    check_versions(args.wheels)
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        if args.wheels and not args.in_kit_environment:
            python = kit_environment(args.wheels, work)
            again = [str(python), __file__, *(sys.argv[1:] if argv is None else argv)]
            again += ["--in-kit-environment", "--workdir", str(work)]
            child = subprocess.Popen(again)
            try:
                return child.wait()
            except Stopped:  # passed on, so the child's own cleanup runs
                child.terminate()
                child.wait(120)
                return 143
        sys.path[:0] = [str(p) for p in SOURCES]
        report: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d"),
            "scale": asdict(scale),
            "versions": versions(),
            "kit": sorted(w.name for w in args.wheels.glob("*.whl")) if args.wheels else [],
            "device": device_facts(scale),
        }
        print(f"GPU check on {report['device']['device']}: {json.dumps(report['versions'])}")
        results = Results(args.output, report, started)
        try:
            measure(scale, work, results)
        except Stopped as stopped:
            print(f"stopped ({stopped}); every process it started is stopped", file=sys.stderr)
            return 143
        finally:
            results.write()
    print(markdown(report))
    print(f"wrote {args.output / 'results.json'} and {args.output / 'results.md'}")
    if results.failed:
        print(f"failed steps: {', '.join(results.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
