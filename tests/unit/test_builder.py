from __future__ import annotations

import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import BertConfig, BertForSequenceClassification

from reranker.builder import BuildError, BuildOptions, build


def test_unreachable_hub_fails_at_once_and_names_the_offline_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # The hub is a closed loopback port here, whether or not this machine has a network.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(BuildError) as raised:
        build("mixedbread-ai/mxbai-rerank-xsmall-v1", BuildOptions(name="m"), tmp_path)
    assert time.monotonic() - start < 10
    message = str(raised.value)
    assert "hub" in message and "(a)" in message and "(b)" in message


def test_missing_local_source_is_reported(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="neither a local directory nor a hub id"):
        build(str(tmp_path / "missing" / "dir"), BuildOptions(name="m"), tmp_path)


def test_directory_without_a_model_is_reported(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match="neither a checkpoint"):
        build(str(tmp_path / "empty"), BuildOptions(name="m"), tmp_path / "repo")


def test_onnx_export_without_tokenizer_is_reported(tmp_path: Path) -> None:
    (tmp_path / "src" / "onnx").mkdir(parents=True)
    (tmp_path / "src" / "onnx" / "model.onnx").write_bytes(b"")
    with pytest.raises(BuildError, match=r"no tokenizer\.json"):
        build(str(tmp_path / "src"), BuildOptions(name="m"), tmp_path / "repo")


def test_checkpoint_with_several_labels_is_refused(tmp_path: Path) -> None:
    config = BertConfig(
        vocab_size=100,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
    )
    config.num_labels = 3
    BertForSequenceClassification(config).save_pretrained(tmp_path / "ckpt")
    with pytest.raises(BuildError, match="3 labels"):
        build(str(tmp_path / "ckpt"), BuildOptions(name="m"), tmp_path / "repo")


def test_gpu_build_serves_the_fp32_graph_to_tensorrt_and_refuses_int8(tmp_path: Path) -> None:
    import onnx
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from reranker.builder import DEFAULT_MODEL_NAME, build_default
    from reranker.precision import Precision
    from reranker.repository import Device, onnx_path

    options = BuildOptions(name=DEFAULT_MODEL_NAME, precision=Precision.FP16, device=Device.GPU)
    model = build_default(options, tmp_path)
    graph = onnx.load(str(onnx_path(model, tmp_path)))
    assert graph.graph.initializer[0].data_type == onnx.TensorProto.FLOAT
    config = text_format.Parse(
        (tmp_path / model.encoder_model / "config.pbtxt").read_text(), mc.ModelConfig()
    )
    assert config.platform == "onnxruntime_onnx"
    assert [o.name for o in config.output] == [graph.graph.output[0].name]
    with pytest.raises(BuildError, match="int8"):
        build_default(replace(options, precision=Precision.INT8), tmp_path / "int8")
