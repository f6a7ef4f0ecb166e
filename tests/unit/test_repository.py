from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from reranker.builder import DEFAULT_MODEL_NAME, BuildOptions, default_model
from reranker.repository import (
    ModelKind,
    ServedModel,
    describe,
    encoder_config,
    ensemble_config,
    tokenizer_config,
    write_configs,
)

ROOT = Path(__file__).parents[2]
MODEL = ServedModel(
    name="m",
    kind=ModelKind.CROSS_ENCODER,
    architecture="DebertaV2ForSequenceClassification",
    max_length=512,
    activation="sigmoid",
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
    assert [o.name for o in tokenizer_config(MODEL).output] == ["input_ids", "attention_mask"]


def test_ensemble_wires_tokenizer_into_encoder() -> None:
    config = ensemble_config(MODEL)
    tokenize, encode = config.ensemble_scheduling.step
    assert tokenize.model_name == "m__tokenizer"
    assert encode.model_name == "m__encoder"
    assert dict(tokenize.output_map) == dict(encode.input_map)
    assert dict(encode.output_map) == {"SCORE": "SCORE"}


def test_describe_round_trips_the_served_model() -> None:
    described = describe(ensemble_config(MODEL))
    assert described is not None
    assert (described.name, described.kind, described.max_length, described.activation) == (
        "m",
        ModelKind.CROSS_ENCODER,
        512,
        "sigmoid",
    )
    assert described.architecture == MODEL.architecture
    assert describe(encoder_config(MODEL)) is None


def test_committed_default_model_configs_are_what_the_builder_writes(tmp_path: Path) -> None:
    write_configs(default_model(BuildOptions(name=DEFAULT_MODEL_NAME)), tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written
    for relative in written:
        committed = ROOT / "model_repository" / relative
        assert committed.read_text() == (tmp_path / relative).read_text(), relative
