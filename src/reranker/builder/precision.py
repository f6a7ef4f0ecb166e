"""Reduced-precision variants of an exported graph, and how far their scores drift.

int8 is ONNX Runtime dynamic quantization (for CPU): weights of the matrix products are
quantized per output channel ahead of time, activations per batch at run time; embeddings,
normalisation and attention softmax stay fp32. bf16 (for CPUs with AMX or AVX512_BF16) serves
the fp32 graph itself through OpenVINO with its bf16 inference-precision hint: OpenVINO runs
the matrix products in bf16 and keeps fp32 where accuracy needs it. fp16 (for GPU profiles)
converts the graph's weights and arithmetic, keeping fp32 inputs and outputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reranker.backend.runtimes import GraphRunner, cpu_runtime, load_runner
from reranker.backend.tokenization import PairTokenizer
from reranker.builder.evaluation import EvalPair, accuracy_report, eval_pairs
from reranker.contract.model import Precision

REPORT_FILE = "accuracy.json"


def reduce_precision(source: Path, target: Path, precision: Precision) -> None:
    """Writes ``source`` (an fp32 graph) converted to ``precision`` to ``target``."""
    if precision is Precision.INT8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
        )
    elif precision is Precision.FP16:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        graph = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        onnx.save(graph, str(target))
    else:
        raise ValueError(f"{precision} is not a reduced precision")


def runner_for(path: Path, precision: Precision, threads: int = 0) -> GraphRunner:
    """What serves ``path`` (a graph of ``precision``) on CPU."""
    runtime, hint = cpu_runtime(precision)
    return load_runner(path, runtime, threads, hint)


def score_graph(
    runner: GraphRunner, tokenizer: PairTokenizer, pairs: Sequence[EvalPair], batch_size: int = 32
) -> np.ndarray:
    """Scores pairs with a graph in length-sorted batches."""
    names = runner.input_names
    rows = tokenizer.tokenize([p.query for p in pairs], [p.passage for p in pairs])
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
    scores = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        tensors = tokenizer.pad([rows[i] for i in chosen])
        scores[chosen] = runner.run({name: tensors[name] for name in names})
    return scores


def write_accuracy_report(
    fp32_graph: Path,
    reduced_graph: Path,
    tokenizer: PairTokenizer,
    precision: Precision,
    passages_per_query: int,
) -> dict[str, float | str]:
    """Compares the reduced graph, served as it will be, with the fp32 graph under ONNX
    Runtime on the fixed real-text pairs; writes the report beside the reduced graph and
    returns it."""
    pairs = eval_pairs(passages_per_query)
    runtime, _ = cpu_runtime(precision)
    report: dict[str, float | str] = {
        "precision": precision.value,
        "reference": "fp32",
        "runtime": runtime.value,
    }
    report.update(
        accuracy_report(
            score_graph(runner_for(fp32_graph, Precision.FP32), tokenizer, pairs),
            score_graph(runner_for(reduced_graph, precision), tokenizer, pairs),
            pairs,
        )
    )
    (reduced_graph.parent / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report
