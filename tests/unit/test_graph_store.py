"""How the builder stores a graph in the repository: small self-contained graphs as they
are, larger ones with their weights in a file beside the graph, which ONNX Runtime maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from reranker.builder.install import INLINE_WEIGHTS_MIN_BYTES, store_graph


def _graph(path: Path, columns: int, **save: object) -> np.ndarray:
    """A MatMul graph whose weight holds ``64 * columns`` floats; returns the weight."""
    weight = np.random.default_rng(columns).standard_normal((64, columns)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, columns])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), **save)  # type: ignore[arg-type]
    return weight


def _run(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.linspace(-1, 1, 2 * 64, dtype=np.float32).reshape(2, 64)
    return np.asarray(session.run(None, {"x": x})[0])


def test_a_small_self_contained_graph_is_copied_byte_for_byte(tmp_path: Path) -> None:
    _graph(tmp_path / "src" / "model.onnx", columns=16)
    (tmp_path / "repo").mkdir()
    store_graph(tmp_path / "src" / "model.onnx", tmp_path / "repo" / "model.onnx")
    assert (tmp_path / "repo" / "model.onnx").read_bytes() == (
        tmp_path / "src" / "model.onnx"
    ).read_bytes()
    assert not (tmp_path / "repo" / "model.onnx_data").exists()


def test_inline_weights_move_beside_the_graph_and_score_the_same(tmp_path: Path) -> None:
    columns = INLINE_WEIGHTS_MIN_BYTES // (64 * 4) + 1024
    weight = _graph(tmp_path / "src" / "model.onnx", columns)
    target = tmp_path / "repo" / "model.onnx"
    target.parent.mkdir()
    store_graph(tmp_path / "src" / "model.onnx", target)
    assert target.stat().st_size < 64 << 10
    assert (tmp_path / "repo" / "model.onnx_data").stat().st_size == weight.nbytes
    data_mode = (tmp_path / "repo" / "model.onnx_data").stat().st_mode
    assert data_mode & 0o777 == target.stat().st_mode & 0o777
    x = np.linspace(-1, 1, 2 * 64, dtype=np.float32).reshape(2, 64)
    np.testing.assert_array_equal(_run(target), _run(tmp_path / "src" / "model.onnx"))
    np.testing.assert_allclose(_run(target), x @ weight, rtol=1e-5, atol=1e-4)
    # Stored again in place (a reduced graph is): the data file is written once, not appended.
    store_graph(target, target)
    assert (tmp_path / "repo" / "model.onnx_data").stat().st_size == weight.nbytes
    np.testing.assert_array_equal(_run(target), _run(tmp_path / "src" / "model.onnx"))


def test_weights_a_publisher_kept_under_another_name_travel_with_the_graph(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src" / "model.onnx"
    _graph(source, columns=16, save_as_external_data=True, location="weights.bin", size_threshold=0)
    target = tmp_path / "repo" / "model.onnx"
    target.parent.mkdir()
    store_graph(source, target)
    assert (tmp_path / "repo" / "model.onnx_data").is_file()
    np.testing.assert_array_equal(_run(target), _run(source))
