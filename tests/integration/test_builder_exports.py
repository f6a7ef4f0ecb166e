"""The builder's exports: each of these builds (exports and checks) an ONNX graph, so they
run with the integration tests, after the unit tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from reranker.builder.builder import BuildError, BuildOptions, build
from tests.unit.test_builder import _tiny_checkpoint


def test_gpu_build_serves_the_fp32_graph_to_tensorrt_and_refuses_int8(tmp_path: Path) -> None:
    import onnx
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from reranker.builder.builder import DEFAULT_MODEL_NAME, build_default
    from reranker.contract.model import Device, Precision, onnx_path

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


def test_onnx_file_picks_one_of_the_exports_a_source_publishes(tmp_path: Path) -> None:
    import shutil

    from reranker.builder.precision import Precision, reduce_precision
    from reranker.contract.model import onnx_path

    checkpoint = _tiny_checkpoint(tmp_path / "ckpt")
    exported = build(str(checkpoint), BuildOptions(name="m"), tmp_path / "first")
    graph = onnx_path(exported, tmp_path / "first")
    # Laid out as a hub repository publishing an fp32 and a quantized export.
    source = tmp_path / "published"
    (source / "onnx").mkdir(parents=True)
    shutil.copyfile(graph, source / "onnx" / "model.onnx")
    reduce_precision(graph, source / "onnx" / "model_quantized.onnx", Precision.INT8)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(checkpoint / name, source / name)

    chosen = BuildOptions(name="q", onnx_file="model_quantized.onnx")
    quantized = build(str(source), chosen, tmp_path / "repo")
    served = onnx_path(quantized, tmp_path / "repo").read_bytes()
    assert served == (source / "onnx" / "model_quantized.onnx").read_bytes()
    assert quantized.precision == "int8"
    default = build(str(source), BuildOptions(name="d"), tmp_path / "repo")
    assert onnx_path(default, tmp_path / "repo").read_bytes() == graph.read_bytes()
    assert default.precision == "fp32"
    with pytest.raises(
        BuildError, match=r"no model_fp16\.onnx; it has \['model\.onnx', 'model_quantized"
    ):
        build(str(source), BuildOptions(name="x", onnx_file="model_fp16.onnx"), tmp_path / "repo")
    with pytest.raises(BuildError, match=r"already reduced \(int8\)"):
        build(str(source), replace(chosen, precision=Precision.INT8), tmp_path / "repo")


def test_triton_tuning_reaches_the_configurations_from_flags_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from reranker import cli

    source = _tiny_checkpoint(tmp_path / "ckpt")
    tuning = tmp_path / "tuning.toml"
    tuning.write_text("encoder_instances = 3\nintra_op_threads = 1\nlength_buckets = [32, 64]\n")
    monkeypatch.setenv("RERANKER_INTRA_OP_THREADS", "4")  # beats the file
    repository = tmp_path / "repo"
    arguments = ["build", str(source), "--name", "m", "--repository", str(repository)]
    flags = ["--tuning", str(tuning), "--encoder-queue-delay-us", "100"]
    assert cli.main([*arguments, *flags, "--intra-op-spin-us", "0"]) == 0

    def config(model: str) -> mc.ModelConfig:
        text = (repository / model / "config.pbtxt").read_text()
        return text_format.Parse(text, mc.ModelConfig())

    encoder, tokenizer = config("m__encoder"), config("m__tokenizer")
    assert [group.count for group in encoder.instance_group] == [3]
    assert encoder.dynamic_batching.max_queue_delay_microseconds == 100
    assert encoder.parameters["intra_op_threads"].string_value == "4"
    assert tokenizer.parameters["length_buckets"].string_value == "32,64"
    assert encoder.parameters["intra_op_spin_us"].string_value == "0"  # default: 500
    with pytest.raises(ValueError, match="shared_prefix: cannot read 'sometimes'"):
        cli.main([*arguments, "--shared-prefix", "sometimes"])
    monkeypatch.setenv("RERANKER_ENCODER_INSTANCES", "many")
    with pytest.raises(ValueError, match="encoder_instances"):
        cli.main(arguments)
