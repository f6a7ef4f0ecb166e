"""Reduced-precision variants of an exported graph, and how far their scores drift.

int8 is ONNX Runtime dynamic quantization (for CPU): weights of the matrix products are
quantized per output channel ahead of time, activations per batch at run time; embeddings,
normalisation and attention softmax stay fp32. fp16 (for GPU profiles) converts the graph's
weights and arithmetic, keeping fp32 inputs and outputs.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reranker.evaluation import EvalPair, accuracy_report, eval_pairs
from reranker.inference import create_session
from reranker.tokenization import PairTokenizer


class Precision(enum.StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


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


def score_graph(
    path: Path, tokenizer: PairTokenizer, pairs: Sequence[EvalPair], batch_size: int = 32
) -> np.ndarray:
    """Scores pairs with an ONNX graph in length-sorted batches."""
    session = create_session(path, 0)
    names = [i.name for i in session.get_inputs()]
    rows = tokenizer.tokenize([p.query for p in pairs], [p.passage for p in pairs])
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
    scores = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        tensors = tokenizer.pad([rows[i] for i in chosen])
        (out,) = session.run(None, {name: tensors[name] for name in names})
        scores[chosen] = out.reshape(-1)
    return scores


def write_accuracy_report(
    fp32_graph: Path, reduced_graph: Path, tokenizer: PairTokenizer, precision: Precision
) -> dict[str, float | str]:
    """Compares the reduced graph with fp32 on the fixed real-text pairs; writes the report
    beside the reduced graph and returns it."""
    pairs = eval_pairs()
    report: dict[str, float | str] = {"precision": precision.value, "reference": "fp32"}
    report.update(
        accuracy_report(
            score_graph(fp32_graph, tokenizer, pairs),
            score_graph(reduced_graph, tokenizer, pairs),
            pairs,
        )
    )
    (reduced_graph.parent / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report
