"""The typed contract between the build and its readers: every parameter set survives its
trip through Triton's strings, and a bad value fails where it is read, naming model and key."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reranker.contract.model import (
    Activation,
    Device,
    ModelKind,
    PairMode,
    Precision,
    Runtime,
    ServedModel,
)
from reranker.contract.parameters import (
    EnsembleParameters,
    GraphEncoderParameters,
    ParameterError,
    PrecisionHint,
    TokenizerParameters,
    TorchCompile,
    TorchEncoderParameters,
    from_parameters,
    to_parameters,
)

TOKENIZER = TokenizerParameters(max_length=512, pair_mode=PairMode.JOINT, max_chars=8192)
GRAPH = GraphEncoderParameters(
    runtime=Runtime.OPENVINO,
    max_attention_cells=1 << 22,
    max_rows_per_run=16,
    intra_op_threads=2,
    inference_precision=PrecisionHint.BF16,
)
TORCH = TorchEncoderParameters(
    runtime=Runtime.TORCH,
    max_attention_cells=1 << 28,
    max_rows_per_run=256,
    max_tokens_per_run=65536,
    run_overhead_tokens=1024.0,
    scorer=ModelKind.CAUSAL_LM,
    torch_dtype=Precision.BF16,
    torch_compile=TorchCompile.REDUCE_OVERHEAD,
    relevance_tokens=(9693, 2152),
)
MODEL = ServedModel(
    name="m",
    kind=ModelKind.CAUSAL_LM,
    architecture="Qwen3ForCausalLM",
    max_length=1024,
    activation=Activation.SIGMOID,
    token_inputs=("input_ids", "attention_mask"),
    max_batch_size=32,
    precision=Precision.FP16,
    device=Device.GPU,
    runtime=Runtime.TORCH,
    family="qwen3",
    takes_instruction=True,
)


@pytest.mark.parametrize(
    "values",
    [
        TOKENIZER,
        replace(TOKENIZER, length_buckets=(64, 128), pair_mode=PairMode.SEPARATE),
        replace(TOKENIZER, pair_mode=PairMode.PROMPT, prompt_file="prompt.json"),
        GRAPH,
        TORCH,
        EnsembleParameters.of(MODEL),
    ],
)
def test_every_parameter_set_survives_the_trip_through_strings(values: object) -> None:
    raw = to_parameters(values)
    assert all(isinstance(v, str) for v in raw.values())
    assert from_parameters(type(values), raw, "m") == values


def test_values_are_written_as_triton_shows_them() -> None:
    raw = to_parameters(TORCH)
    assert raw["relevance_tokens"] == "9693,2152"
    assert raw["torch_dtype"] == "bf16" and raw["scorer"] == "causal-lm"
    assert to_parameters(EnsembleParameters.of(MODEL))["takes_instruction"] == "true"
    assert to_parameters(TOKENIZER)["length_buckets"] == ""


def test_the_ensemble_describes_the_served_model() -> None:
    parameters = from_parameters(
        EnsembleParameters, to_parameters(EnsembleParameters.of(MODEL)), "m"
    )
    outputs = ["attention_mask", "TOKENS", "input_ids"]  # Triton's map: any order
    assert parameters.served_model("m", 32, outputs) == MODEL
    # A repository built before token counts still serves, its usage counted as 0.
    earlier = parameters.served_model("m", 32, ["attention_mask", "input_ids"])
    assert earlier.counts_tokens is False


@pytest.mark.parametrize(
    ("kind", "key", "value", "message"),
    [
        (EnsembleParameters, "takes_instruction", "True", "expected true or false"),
        (EnsembleParameters, "activation", "softmax", "expected one of sigmoid, none"),
        (EnsembleParameters, "max_length", "long", "invalid literal"),
        (TokenizerParameters, "length_buckets", "0,8", "must be positive"),
        (TokenizerParameters, "pair_mode", "prompt", "prompt_file"),
        (GraphEncoderParameters, "runtime", "torch", "not torch"),
        (GraphEncoderParameters, "inference_precision", "f16", "expected one of f32, bf16"),
        (TorchEncoderParameters, "torch_dtype", "int8", "fp32, fp16 or bf16"),
        (TorchEncoderParameters, "relevance_tokens", "9693", "two token ids"),
        (TorchEncoderParameters, "max_rows_per_run", "0", ">= 1"),
    ],
)
def test_a_bad_value_fails_where_it_is_read_naming_model_and_key(
    kind: type, key: str, value: str, message: str
) -> None:
    valid = {TokenizerParameters: TOKENIZER, GraphEncoderParameters: GRAPH}.get(
        kind, TORCH if kind is TorchEncoderParameters else EnsembleParameters.of(MODEL)
    )
    raw = {**to_parameters(valid), key: value}
    with pytest.raises(ParameterError, match=message) as caught:
        from_parameters(kind, raw, "m__x")
    assert "m__x" in str(caught.value)


def test_a_missing_required_key_is_named_and_defaults_fill_the_rest() -> None:
    with pytest.raises(ParameterError, match="'max_chars' is required"):
        from_parameters(TokenizerParameters, {"max_length": "8", "pair_mode": "joint"}, "m")
    parsed = from_parameters(
        TokenizerParameters,
        {"max_length": "8", "pair_mode": "joint", "max_chars": "128", "EXECUTION_ENV_PATH": "x"},
        "m",
    )
    assert parsed.length_buckets == () and parsed.tokenizer_file == "tokenizer.json"


def test_buckets_are_read_sorted() -> None:
    raw = {**to_parameters(TOKENIZER), "length_buckets": "128, 16,64"}
    assert from_parameters(TokenizerParameters, raw, "m").length_buckets == (16, 64, 128)


def test_a_served_model_refuses_an_unknown_value_where_it_is_made() -> None:
    with pytest.raises(ValueError, match="activation must be one of sigmoid, none"):
        replace(MODEL, activation="tanh")  # type: ignore[arg-type]
    assert replace(MODEL, precision="int8").precision is Precision.INT8  # type: ignore[arg-type]
