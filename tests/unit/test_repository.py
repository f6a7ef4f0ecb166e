from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from reranker.builder.builder import DEFAULT_MODEL_NAME, BuildOptions, default_model
from reranker.builder.repository import write_configs
from reranker.builder.triton_configs import encoder_config, ensemble_config, tokenizer_config
from reranker.contract.model import (
    Activation,
    Device,
    ModelKind,
    Precision,
    Runtime,
    ServedModel,
)
from reranker.service.triton_models import describe

ROOT = Path(__file__).parents[2]
MODEL = ServedModel(
    name="m",
    kind=ModelKind.CROSS_ENCODER,
    architecture="DebertaV2ForSequenceClassification",
    max_length=512,
    activation=Activation.SIGMOID,
    token_inputs=("input_ids", "attention_mask"),
    max_batch_size=16,
)


def test_configs_parse_as_triton_model_configs() -> None:
    for config in (tokenizer_config(MODEL), encoder_config(MODEL), ensemble_config(MODEL)):
        parsed = text_format.Parse(text_format.MessageToString(config), mc.ModelConfig())
        assert parsed == config
        assert parsed.max_batch_size == 16


def test_encoder_reads_only_the_graph_inputs_ragged() -> None:
    config = encoder_config(MODEL)
    assert [i.name for i in config.input] == ["input_ids", "attention_mask"]
    assert all(i.allow_ragged_batch for i in config.input)
    assert config.HasField("dynamic_batching")
    assert config.backend == "python"
    outputs = [o.name for o in tokenizer_config(MODEL).output]
    assert outputs == ["input_ids", "attention_mask", "TOKENS"]


def test_ensemble_wires_tokenizer_into_encoder() -> None:
    config = ensemble_config(MODEL)
    tokenize, encode = config.ensemble_scheduling.step
    assert tokenize.model_name == "m__tokenizer"
    assert encode.model_name == "m__encoder"
    assert dict(tokenize.output_map) == dict(encode.input_map) | {"TOKENS": "TOKENS"}
    assert [o.name for o in config.output] == ["SCORE", "TOKENS"]
    assert dict(encode.output_map) == {"SCORE": "SCORE"}


def test_describe_round_trips_the_served_model() -> None:
    for model in (
        MODEL,
        GPU_MODEL,
        replace(MODEL, precision=Precision.BF16, kind=ModelKind.BI_ENCODER),
    ):
        assert describe(_parsed(ensemble_config(model))) == model
    assert describe(encoder_config(MODEL)) is None


def test_committed_default_model_configs_are_what_the_builder_writes(tmp_path: Path) -> None:
    write_configs(default_model(BuildOptions(name=DEFAULT_MODEL_NAME)), tmp_path)
    written = sorted(
        p.relative_to(tmp_path)
        for p in tmp_path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts  # compiled, and git-ignored
    )
    assert written
    for relative in written:
        committed = ROOT / "model_repository" / relative
        assert committed.read_text() == (tmp_path / relative).read_text(), relative


GPU_MODEL = replace(MODEL, device=Device.GPU, precision=Precision.FP16, graph_output="logits")


def _parsed(config: mc.ModelConfig) -> mc.ModelConfig:
    return text_format.Parse(text_format.MessageToString(config), mc.ModelConfig())


def test_gpu_encoder_is_onnx_runtime_with_tensorrt_fp16_and_a_cached_engine() -> None:
    config = _parsed(encoder_config(GPU_MODEL))
    assert config.platform == "onnxruntime_onnx" and not config.backend
    assert config.default_model_filename == "model.onnx"
    assert [(g.kind, list(g.gpus)) for g in config.instance_group] == [
        (mc.ModelInstanceGroup.KIND_GPU, [0])
    ]
    # Native backends cannot pad: no ragged inputs; the output is the graph's own.
    assert not any(i.allow_ragged_batch for i in config.input)
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [1])]
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [8, 16]
    assert batching.max_queue_delay_microseconds == 1000
    # A queue policy made Triton's batcher hold requests (see _dynamic_batching).
    assert not batching.HasField("default_queue_policy")
    (tensorrt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert tensorrt.name == "tensorrt"
    parameters = dict(tensorrt.parameters)
    assert parameters["precision_mode"] == "FP16"
    assert parameters["trt_layer_norm_fp32_fallback"] == "true"
    assert parameters["trt_engine_cache_enable"] == "true"
    assert parameters["trt_engine_cache_path"] == "/engine_cache"
    # One profile over what the tokenizer produces: buckets 64..512, up to 16 rows.
    assert parameters["trt_profile_min_shapes"] == "input_ids:1x64,attention_mask:1x64"
    assert parameters["trt_profile_opt_shapes"] == "input_ids:8x128,attention_mask:8x128"
    assert parameters["trt_profile_max_shapes"] == "input_ids:16x512,attention_mask:16x512"
    fp32 = _parsed(encoder_config(replace(GPU_MODEL, precision=Precision.FP32)))
    (fp32_tensorrt,) = fp32.optimization.execution_accelerators.gpu_execution_accelerator
    assert fp32_tensorrt.parameters["precision_mode"] == "FP32"
    assert "trt_layer_norm_fp32_fallback" not in fp32_tensorrt.parameters


def test_gpu_tokenizer_runs_on_cpu_and_pads_to_buckets() -> None:
    config = _parsed(tokenizer_config(GPU_MODEL))
    assert config.backend == "python"
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (mc.ModelInstanceGroup.KIND_CPU, 4)
    ]
    assert config.parameters["length_buckets"].string_value == "64,128,256,512"
    assert tokenizer_config(MODEL).parameters["length_buckets"].string_value == ""


def test_gpu_ensemble_maps_the_graph_output_to_score_and_says_where_it_runs() -> None:
    config = _parsed(ensemble_config(GPU_MODEL))
    _, encode = config.ensemble_scheduling.step
    assert dict(encode.output_map) == {"logits": "SCORE"}
    described = describe(config)
    assert described is not None and described.device is Device.GPU


def test_gpu_repository_has_no_python_entry_point_for_the_encoder(tmp_path: Path) -> None:
    write_configs(MODEL, tmp_path)
    assert (tmp_path / "m__encoder" / "1" / "model.py").exists()
    write_configs(GPU_MODEL, tmp_path)
    assert not (tmp_path / "m__encoder" / "1" / "model.py").exists()
    assert (tmp_path / "m__tokenizer" / "1" / "model.py").exists()


TORCH_GPU_MODEL = replace(MODEL, device=Device.GPU, precision=Precision.FP16, runtime=Runtime.TORCH)


def test_torch_gpu_encoder_is_a_python_model_on_a_gpu_instance_merging_ragged_batches() -> None:
    config = _parsed(encoder_config(TORCH_GPU_MODEL))
    assert config.backend == "python" and not config.platform
    # Two instances: one plans and pads on CPU while the other runs on the GPU.
    assert [(g.kind, list(g.gpus), g.count) for g in config.instance_group] == [
        (mc.ModelInstanceGroup.KIND_GPU, [0], 2)
    ]
    assert all(i.allow_ragged_batch for i in config.input)
    assert [(o.name, list(o.dims)) for o in config.output] == [("SCORE", [1])]
    # Several callers' requests merge into one execution larger than one request.
    assert config.max_batch_size == 512 > TORCH_GPU_MODEL.max_batch_size
    assert list(config.dynamic_batching.preferred_batch_size) == [64, 128, 256, 512]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    assert parameters["runtime"] == "torch"
    assert parameters["checkpoint_dir"] == "checkpoint"
    assert parameters["torch_dtype"] == "fp16"
    assert parameters["scorer"] == "cross-encoder"
    assert parameters["max_tokens_per_run"] == str(1 << 16)
    assert "onnx_file" not in parameters
    # The tokenizer hands ragged rows to it: no length buckets.
    tokenizer = _parsed(tokenizer_config(TORCH_GPU_MODEL))
    assert tokenizer.parameters["length_buckets"].string_value == ""
    assert [g.count for g in tokenizer.instance_group] == [4]
    _, encode = _parsed(ensemble_config(TORCH_GPU_MODEL)).ensemble_scheduling.step
    assert dict(encode.output_map) == {"SCORE": "SCORE"}


def test_torch_cpu_encoder_keeps_the_cpu_batching_in_fp32(tmp_path: Path) -> None:
    model = replace(MODEL, runtime=Runtime.TORCH)
    config = _parsed(encoder_config(model))
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert config.max_batch_size == MODEL.max_batch_size
    assert not config.dynamic_batching.preferred_batch_size
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    assert (parameters["runtime"], parameters["torch_dtype"]) == ("torch", "fp32")
    assert parameters["max_tokens_per_run"] == "0"
    write_configs(TORCH_GPU_MODEL, tmp_path)
    assert (tmp_path / "m__encoder" / "1" / "model.py").exists()


def test_describe_round_trips_the_runtime_and_family() -> None:
    models = (TORCH_GPU_MODEL, replace(MODEL, runtime=Runtime.TORCH, family="deberta-v2"))
    for model in models:
        described = describe(_parsed(ensemble_config(model)))
        assert described == model and described.runtime is Runtime.TORCH


def test_scoring_names_how_the_default_score_is_made() -> None:
    assert MODEL.scoring == "sigmoid"
    assert replace(MODEL, activation=Activation.NONE).scoring == "logit"
    assert replace(MODEL, kind=ModelKind.BI_ENCODER, activation=Activation.NONE).scoring == "cosine"


def test_a_gpu_late_interaction_model_merges_callers_and_feeds_its_encoder(
    tmp_path: Path,
) -> None:
    from reranker.builder.late_interaction import write_late_configs
    from reranker.builder.triton_configs import TritonTuning
    from reranker.contract.model import ModelKind, Runtime
    from reranker.contract.parameters import LateTokenizerParameters
    from reranker.contract.tensors import LATE_TOKEN_TENSORS

    tuning = TritonTuning()
    late = replace(
        GPU_MODEL,
        name="colbert",
        kind=ModelKind.LATE_INTERACTION,
        runtime=Runtime.TORCH,
        token_inputs=LATE_TOKEN_TENSORS,
    )
    tokenizer = LateTokenizerParameters(query_length=32, document_length=180, max_chars=2880)
    write_late_configs(late, tokenizer, tmp_path, tuning)
    encoder = text_format.Parse(
        (tmp_path / late.encoder_model / "config.pbtxt").read_text(), mc.ModelConfig()
    )
    tokenizer_model = text_format.Parse(
        (tmp_path / late.tokenizer_model / "config.pbtxt").read_text(), mc.ModelConfig()
    )
    assert encoder.max_batch_size == tuning.torch_gpu_max_batch_size
    assert list(encoder.dynamic_batching.preferred_batch_size) == [64, 128, 256, 512]
    (group,) = encoder.instance_group
    assert (group.kind, group.count) == (
        mc.ModelInstanceGroup.KIND_GPU,
        tuning.torch_gpu_encoder_instances,
    )
    assert encoder.parameters["runtime"].string_value == "torch"
    assert encoder.parameters["torch_dtype"].string_value == late.precision.value
    assert tokenizer_model.instance_group[0].count == tuning.gpu_tokenizer_instances
