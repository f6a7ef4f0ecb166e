"""What runs one padded micro-batch of the encoder: ONNX Runtime, OpenVINO or PyTorch.

The encoder model plans length-sorted micro-batches the same way whatever runs them
(:mod:`reranker.inference`); a runtime only loads its artifact and runs a batch. ONNX
Runtime serves fp32 and int8 graphs; OpenVINO serves the same fp32 graph in bf16 on CPUs with
native BF16 arithmetic (AMX or AVX512_BF16), converting weights and activations itself.
PyTorch serves the checkpoint itself through transformers, in fp16 or bf16 on a GPU (the
Triton of the nvidia-pytriton wheel has no backend of its own for ONNX or TensorRT) and in
fp32 on CPU (:mod:`reranker.torch_runner`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

# CPU features with native BF16 matrix arithmetic; without one, OpenVINO emulates bf16 (slow).
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
AMX_FLAGS = frozenset({"amx_bf16", "amx_int8", "amx_tile"})


class Runtime(enum.StrEnum):
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    TORCH = "torch"


class GraphRunner(Protocol):
    """Runs the encoder graph on one padded batch; returns one raw score per row."""

    @property
    def input_names(self) -> list[str]: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray: ...


class OnnxRuntimeRunner:
    def __init__(self, path: Path, threads: int) -> None:
        from reranker.inference import create_session

        self._session = create_session(path, threads)
        self._output = self._session.get_outputs()[0].name
        self._inputs = [i.name for i in self._session.get_inputs()]

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        (out,) = self._session.run([self._output], dict(feeds))
        return np.asarray(out, dtype=np.float32).reshape(-1)


class OpenVinoRunner:
    """OpenVINO on CPU with an inference-precision hint (``bf16`` or ``f32``). No model cache
    directory: with dynamic shapes in bf16 one aborted (``double free or corruption``)."""

    def __init__(self, path: Path, threads: int, precision_hint: str) -> None:
        import openvino as ov

        config: dict[str, str] = {
            "INFERENCE_PRECISION_HINT": precision_hint,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._output = self._compiled.outputs[0]
        self._inputs = [port.get_any_name() for port in self._compiled.inputs]

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        results = self._request.infer(dict(feeds))
        # The request reuses its output buffer on the next call: copy the scores out.
        return np.array(results[self._output], dtype=np.float32).reshape(-1)


def cpu_runtime(precision: str) -> tuple[Runtime, str]:
    """The runtime that serves a CPU encoder of ``precision`` ("fp32", "int8", "bf16"), and
    the inference-precision hint it runs with."""
    if precision == "bf16":
        return Runtime.OPENVINO, "bf16"
    return Runtime.ONNXRUNTIME, "f32"


def load_runner(path: Path, runtime: Runtime, threads: int, precision_hint: str) -> GraphRunner:
    if runtime is Runtime.OPENVINO:
        return OpenVinoRunner(path, threads, precision_hint)
    return OnnxRuntimeRunner(path, threads)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of this machine's CPU (empty where /proc/cpuinfo is unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_native_bf16(flags: Iterable[str]) -> bool:
    return bool(BF16_CPU_FLAGS & set(flags))


def has_amx(flags: Iterable[str]) -> bool:
    return bool(AMX_FLAGS & set(flags))


def bf16_hint(flags: Iterable[str], fp32_models: Iterable[str]) -> str | None:
    """A one-line hint for an operator serving fp32 CPU models on a CPU with AMX."""
    names = sorted(fp32_models)
    if not names or not has_amx(flags):
        return None
    return (
        f"reranker: this CPU has AMX; {', '.join(names)} "
        f"{'is' if len(names) == 1 else 'are'} served in fp32. "
        "`reranker build SOURCE --precision bf16` serves a model in bf16 through OpenVINO, "
        "several times faster at near-fp32 accuracy (README: Precision)"
    )
