"""What runs one padded micro-batch of the encoder: ONNX Runtime, OpenVINO or PyTorch.

The encoder model plans length-sorted micro-batches the same way whatever runs them
(:mod:`reranker.backend.batching`); a runtime only loads its artifact and runs a batch. ONNX
Runtime serves fp32 and int8 graphs; OpenVINO serves the same fp32 graph in bf16 on CPUs with
native BF16 arithmetic (AMX or AVX512_BF16), converting weights and activations itself.
PyTorch serves the checkpoint itself through transformers, in fp16 or bf16 on a GPU (the
Triton of the nvidia-pytriton wheel has no backend of its own for ONNX or TensorRT) and in
fp32 on CPU (:mod:`reranker.backend.torch_runtime`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from reranker.contract.model import Precision, Runtime
from reranker.contract.parameters import INTRA_OP_SPIN_US, PrecisionHint

if TYPE_CHECKING:
    import onnxruntime as ort


class GraphRunner(Protocol):
    """Runs the encoder graph on one padded batch; returns one raw score per row."""

    @property
    def input_names(self) -> list[str]: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray: ...


class OnnxRuntimeRunner:
    def __init__(self, path: Path, threads: int, spin_us: int = INTRA_OP_SPIN_US) -> None:
        self._session = create_session(path, threads, spin_us)
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

    def __init__(self, path: Path, threads: int, precision_hint: PrecisionHint) -> None:
        import openvino as ov

        config: dict[str, str] = {
            "INFERENCE_PRECISION_HINT": precision_hint.value,
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


def cpu_runtime(precision: Precision) -> tuple[Runtime, PrecisionHint]:
    """The runtime that serves a CPU graph of ``precision`` (fp32, int8 or bf16), and the
    inference-precision hint it runs with."""
    if precision is Precision.BF16:
        return Runtime.OPENVINO, PrecisionHint.BF16
    return Runtime.ONNX, PrecisionHint.F32


def load_runner(
    path: Path,
    runtime: Runtime,
    threads: int,
    precision_hint: PrecisionHint,
    spin_us: int = INTRA_OP_SPIN_US,
) -> GraphRunner:
    if runtime is Runtime.OPENVINO:
        return OpenVinoRunner(path, threads, precision_hint)
    return OnnxRuntimeRunner(path, threads, spin_us)


def create_session(
    path: Path, intra_op_threads: int, spin_us: int = INTRA_OP_SPIN_US
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session: all graph optimizations, a fixed thread count; its idle
    worker threads busy-wait ``spin_us`` microseconds for more work, then sleep (0: at once)."""
    # Imported here: the PyTorch runtime's encoder runs on machines without ONNX Runtime.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_us else "0")
    if spin_us:
        # Unbounded, ONNX Runtime's workers spin on for about 45 ms of a core after every
        # run (measured), taking it from the tokenizer and the service.
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    # Without the arena, memory a long-context batch needed goes back to the system when the
    # batch is done instead of staying reserved by the session for its lifetime.
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
