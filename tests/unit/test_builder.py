from __future__ import annotations

import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import BertConfig, BertForSequenceClassification

from reranker.builder.builder import BuildError, BuildOptions, build
from reranker.builder.fingerprint import build_fingerprint
from reranker.contract.model import Runtime


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


def _tiny_bert() -> BertConfig:
    """A one-layer BERT whose vocabulary holds the test tokenizers' 31 words."""
    return BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )


def test_checkpoint_with_several_labels_is_refused(tmp_path: Path) -> None:
    config = _tiny_bert()
    config.num_labels = 3
    BertForSequenceClassification(config).save_pretrained(tmp_path / "ckpt")
    with pytest.raises(BuildError, match="3 labels"):
        build(str(tmp_path / "ckpt"), BuildOptions(name="m"), tmp_path / "repo")


def _tiny_checkpoint(directory: Path) -> Path:
    from transformers import BertTokenizer

    config = _tiny_bert()
    config.num_labels = 1
    BertForSequenceClassification(config).save_pretrained(directory)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(directory / "vocab.txt")).save_pretrained(directory)
    return directory


def test_torch_runtime_serves_the_checkpoint_itself_and_it_scores_as_transformers(
    tmp_path: Path,
) -> None:
    import numpy as np
    import torch

    from reranker.backend.torch_runtime import TorchRunner
    from reranker.contract.model import Runtime, checkpoint_path, onnx_path

    source = _tiny_checkpoint(tmp_path / "ckpt")
    options = BuildOptions(name="m", runtime=Runtime.TORCH)
    model = build(str(source), options, tmp_path / "repo")
    served = checkpoint_path(model, tmp_path / "repo")
    assert sorted(p.name for p in served.iterdir()) == ["config.json", "model.safetensors"]
    assert not onnx_path(model, tmp_path / "repo").exists()
    assert model.runtime is Runtime.TORCH and model.precision == "fp32"
    rows = {
        "input_ids": np.array([[2, 7, 8, 3, 9, 3], [2, 10, 3, 11, 3, 0]]),
        "attention_mask": np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]),
        "token_type_ids": np.array([[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0]]),
    }
    reference = BertForSequenceClassification.from_pretrained(source).eval()
    with torch.no_grad():
        expected = reference(**{k: torch.from_numpy(v) for k, v in rows.items()}).logits
    runner = TorchRunner(served, bi_encoder=False, input_names=list(model.token_inputs))
    assert np.abs(runner.run(rows) - expected.reshape(-1).numpy()).max() <= 1e-6


def test_torch_runtime_refuses_reduced_precision_on_cpu_and_onnx_sources(tmp_path: Path) -> None:
    from reranker.contract.model import Device, Precision, Runtime

    source = _tiny_checkpoint(tmp_path / "ckpt")
    torch_cpu = BuildOptions(name="m", runtime=Runtime.TORCH)
    for precision in (Precision.INT8, Precision.BF16, Precision.FP16):
        with pytest.raises(BuildError, match="fp32 on CPU"):
            build(str(source), replace(torch_cpu, precision=precision), tmp_path / "repo")
    with pytest.raises(BuildError, match="not int8"):
        gpu_int8 = replace(torch_cpu, device=Device.GPU, precision=Precision.INT8)
        build(str(source), gpu_int8, tmp_path / "repo")
    (tmp_path / "onnx-only").mkdir()
    (tmp_path / "onnx-only" / "model.onnx").write_bytes(b"")
    with pytest.raises(BuildError, match="torch runtime serves a checkpoint"):
        build(str(tmp_path / "onnx-only"), torch_cpu, tmp_path / "repo")


def test_device_auto_serves_on_cpu_with_onnx_where_torch_sees_no_gpu() -> None:
    import torch

    def target(device: str, runtime: str | None = None) -> tuple[str, str, str, bool]:
        options = BuildOptions.for_target("m", device, runtime)
        return options.device, options.runtime, options.precision, options.precision_chosen

    if torch.cuda.is_available():
        assert target("auto") == ("gpu", "torch", "fp16", False)
    else:
        assert target("auto") == ("cpu", "onnx", "fp32", False)
    assert target("gpu") == ("gpu", "onnx", "fp32", False)  # the NGC Triton's own backend
    assert target("gpu", "torch") == ("gpu", "torch", "fp16", False)
    assert target("cpu", "torch") == ("cpu", "torch", "fp32", False)
    chosen = BuildOptions.for_target("m", "gpu", "torch", "bf16", max_batch_size=8)
    assert (chosen.precision, chosen.precision_chosen, chosen.max_batch_size) == ("bf16", True, 8)


def test_the_build_commands_choices_and_defaults_are_the_options_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from reranker.cli import main

    with pytest.raises(SystemExit):
        main(["build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--precision {fp32,fp16,int8,bf16}" in text
    assert "--device {cpu,gpu,auto}" in text
    assert "--runtime {onnx,torch}" in text


def test_a_head_that_does_not_score_pairs_is_refused_by_name(tmp_path: Path) -> None:
    from transformers import BertForTokenClassification, LlamaConfig, LlamaForCausalLM

    config = _tiny_bert()
    BertForTokenClassification(config).save_pretrained(tmp_path / "tokens")
    with pytest.raises(BuildError, match="BertForTokenClassification checkpoint"):
        build(str(tmp_path / "tokens"), BuildOptions(name="m"), tmp_path / "repo")
    llama = LlamaConfig(
        vocab_size=100,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    # A causal LM whose vocabulary has no "yes"/"no" and no LogitScore module naming others.
    causal = _tiny_checkpoint(tmp_path / "causal")
    (causal / "model.safetensors").unlink()
    LlamaForCausalLM(llama).save_pretrained(causal)
    with pytest.raises(BuildError, match=r"no 'yes' token.*LogitScore"):
        build(str(causal), BuildOptions(name="m"), tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_a_chat_template_that_cannot_carry_a_pair_is_refused() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from reranker.builder.causal import prompt_template

    words = Tokenizer(models.WordLevel({"?": 0, "q": 1}, unk_token="?"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="?")
    assert prompt_template(tokenizer) is None  # a text pair, as CrossEncoder reads it
    query = "{{ (messages | selectattr('role', 'eq', 'query') | first).content }}"
    document = "{{ (messages | selectattr('role', 'eq', 'document') | first).content }}"
    tokenizer.chat_template = f"Q: {query} D: {document} again {query}"
    with pytest.raises(BuildError, match="render the query exactly once; it renders it 2 times"):
        prompt_template(tokenizer)
    tokenizer.chat_template = f"Q: {query} D: {document} end"
    template = prompt_template(tokenizer)
    assert template is not None and template.instructed is None
    assert (template.default.slots, template.default.texts) == (
        ("query", "document"),
        ("Q: ", " D: ", " end"),
    )


def _fetched(
    files: set[str], onnx: bool = False, onnx_file: str = "model.onnx", late: bool = False
) -> set[str]:
    from fnmatch import fnmatch

    from reranker.builder.builder import hub_patterns

    patterns = hub_patterns("org/m", files, onnx, onnx_file, late)
    return {f for f in files if any(fnmatch(f, pattern) for pattern in patterns)}


def test_hub_downloads_sharded_and_pickled_checkpoints_whole() -> None:
    metadata = {"config.json", "tokenizer.json", "tokenizer_config.json", "README.md"}
    sharded = {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    }
    assert _fetched(metadata | sharded) == (metadata - {"README.md"}) | sharded
    pickled = {"pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"}
    pickled |= {"pytorch_model.bin.index.json", "vocab.txt"}
    assert _fetched(metadata | pickled) == (metadata - {"README.md"}) | pickled
    # Both published: safetensors only, not the same weights twice.
    both = _fetched(metadata | sharded | pickled)
    assert sharded <= both and not both & {f for f in pickled if f.endswith(".bin")}
    exported = metadata | sharded | {"onnx/model.onnx", "onnx/model_quantized.onnx"}
    assert _fetched(exported, onnx=True) == (metadata - {"README.md"}) | {"onnx/model.onnx"}
    with pytest.raises(BuildError, match="neither an ONNX export nor weights"):
        _fetched(metadata)


def test_a_causal_lm_on_a_gpu_defaults_to_bf16_and_keeps_a_chosen_precision(
    tmp_path: Path,
) -> None:
    from reranker.contract.model import Device, Precision, Runtime
    from tests.checkpoints import qwen3_reranker

    source = qwen3_reranker(tmp_path / "qwen3", layers=1)
    gpu = BuildOptions(
        name="q",
        device=Device.GPU,
        runtime=Runtime.TORCH,
        precision=Precision.FP16,  # what the command line fills in when none is given
        precision_chosen=False,
    )
    assert build(str(source), gpu, tmp_path / "repo").precision is Precision.BF16
    chosen = replace(gpu, precision_chosen=True)
    assert build(str(source), chosen, tmp_path / "repo").precision is Precision.FP16


def test_the_torch_runtime_runs_the_model_once_at_load(tmp_path: Path) -> None:
    """A model that cannot run fails where it is loaded, not on its first request."""
    from reranker.backend.torch_runtime import TorchRunner

    config = _tiny_bert()
    config.num_labels = 1
    config.max_position_embeddings = 4  # fewer positions than the warm-up's tokens
    BertForSequenceClassification(config).save_pretrained(tmp_path / "short")
    with pytest.raises((IndexError, RuntimeError)):
        TorchRunner(tmp_path / "short", bi_encoder=False, input_names=["input_ids"])


def test_a_causal_lm_with_logit_softcapping_is_refused_by_name(tmp_path: Path) -> None:
    """Gemma-2 caps its logits: the capped difference of two logits is not a difference of
    two rows of the head, so the one-float graph cannot score it."""
    import json

    source = tmp_path / "gemma2"
    source.mkdir()
    config = {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "final_logit_softcapping": 30.0,
    }
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(BuildError, match="final_logit_softcapping"):
        build(str(source), BuildOptions(name="g"), tmp_path / "repo")


def test_options_a_build_cannot_take_are_refused_by_name() -> None:
    with pytest.raises(BuildError, match="a build serves runtime onnx, torch, not openvino"):
        BuildOptions(name="m", runtime=Runtime.OPENVINO)
    with pytest.raises(BuildError, match="accuracy passages must be at least 1, got 0"):
        BuildOptions(name="m", accuracy_passages=0)


def test_a_build_fingerprint_follows_the_options_and_every_byte_and_name_of_the_source(
    tmp_path: Path,
) -> None:
    source = tmp_path / "checkpoint"
    (source / "onnx").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    graph = source / "onnx" / "model.onnx"
    graph.write_bytes(bytes(10))
    options = BuildOptions(name="m")
    first = build_fingerprint(options, source)
    assert build_fingerprint(options, source) == first
    assert build_fingerprint(replace(options, max_batch_size=8), source) != first
    assert build_fingerprint(options) != first
    graph.write_bytes(bytes(9) + b"\1")
    changed = build_fingerprint(options, source)
    assert changed != first
    (source / "config.json").rename(source / "configs.json")  # the same bytes, in order
    assert build_fingerprint(options, source) not in (first, changed)


def test_hub_downloads_a_colbert_s_weights_and_module_folders_not_its_onnx_export() -> None:
    metadata = {"config.json", "tokenizer.json", "modules.json", "README.md"}
    pylate = {
        "config_sentence_transformers.json",
        "sentence_bert_config.json",
        "1_Dense/config.json",
        "1_Dense/model.safetensors",
        "model.safetensors",
    }
    published = {"onnx/model.onnx"}
    fetched = _fetched(metadata | pylate | published, onnx=True, late=True)
    assert fetched == (metadata - {"README.md"}) | pylate
    stanford = {"artifact.metadata", "model.safetensors", "vocab.txt"}
    assert (
        _fetched(metadata | stanford, onnx=True, late=True) == (metadata - {"README.md"}) | stanford
    )
    # A bi-encoder with a Dense module (LaBSE's layout) keeps its published export.
    assert _fetched(metadata | pylate | published, onnx=True) == (
        (metadata - {"README.md"})
        | {"config_sentence_transformers.json", "sentence_bert_config.json", *published}
    )
