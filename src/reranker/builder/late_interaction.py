"""Builds a late-interaction (ColBERT) reranker from what sentence-transformers'
``MultiVectorEncoder`` loads: a PyLate / sentence-transformers folder
(``config_sentence_transformers.json`` of model type ``MultiVectorEncoder`` or ``ColBERT``)
or a Stanford ColBERT checkpoint (``HF_ColBERT``).

``MultiVectorEncoder`` itself reads the checkpoint (its legacy fix-ups included), and the build
takes from it what serving needs: the tokenizer as it tokenizes (prefix tokens registered),
the query and document prefixes and lengths, the query expansion, the skiplist, and one ONNX
graph of its modules from the backbone to the token vectors (projection and normalization
included), checked against the modules themselves.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from tritonclient.grpc import model_config_pb2 as mc

from reranker.backend.late_interaction import LateTokenizer, VectorRun
from reranker.backend.late_torch import PROJECTION_FILE
from reranker.backend.runtimes import create_session
from reranker.builder.common import BuildError, BuildOptions, architecture, read_json, step
from reranker.builder.install import (
    EXPORT_TOLERANCE,
    check_precision,
    store_graph,
    write_tokenizer,
)
from reranker.builder.repository import (
    LATE_ENCODER_MODULE,
    LATE_TOKENIZER_MODULE,
    write_models,
)
from reranker.builder.triton_configs import (
    TritonTuning,
    device_encoder,
    dynamic_batching,
    ensemble_config,
    set_parameters,
    string_inputs,
)
from reranker.contract.model import (
    Activation,
    Device,
    ModelKind,
    Precision,
    Runtime,
    ServedModel,
    checkpoint_path,
    onnx_path,
)
from reranker.contract.parameters import (
    LateEncoderParameters,
    LateTokenizerParameters,
    QueryExpansion,
)
from reranker.contract.tensors import LATE_TOKEN_TENSORS, TOKENS, max_chars

_VECTORS = "token_vectors"


def _check_options(options: BuildOptions) -> None:
    if options.runtime is Runtime.TORCH:
        check_precision(options)  # fp32 on CPU; fp16, bf16 or fp32 on a GPU
        return
    if options.device is not Device.CPU:
        raise BuildError(
            "on a GPU a late-interaction reranker is served by the PyTorch runtime "
            "(--runtime torch): Triton's onnxruntime backend does not compute MaxSim"
        )
    if options.precision is not Precision.FP32:
        raise BuildError(
            "a late-interaction reranker is served in fp32 on CPU "
            f"(asked: {options.precision.value})"
        )


def _modules(encoder: Any) -> tuple[Any, list[nn.Module], Any]:
    """The backbone, the modules between it and the scoring mask, and the mask; refuses a
    pipeline it cannot serve, naming the module."""
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    modules = list(encoder)
    backbone, rest = modules[0], modules[1:]
    if not isinstance(backbone, Transformer):
        raise BuildError(f"the first module is a {type(backbone).__name__}, not a Transformer")
    if "message" in backbone.modality_config or "image" in backbone.modality_config:
        raise BuildError(
            "image or chat-template late-interaction models (ColPali, ColQwen) are not served; "
            "text ColBERT models are"
        )
    masks = [m for m in rest if isinstance(m, MultiVectorMask)]
    if len(masks) != 1:
        raise BuildError(f"expected one MultiVectorMask module, found {len(masks)}")
    (mask,) = masks
    if mask.keep_only_token_ids:
        raise BuildError("keep_only_token_ids (image-patch documents) is not served")
    projections = [m for m in rest if m is not mask]
    for module in projections:
        if not isinstance(module, Dense | Normalize):
            raise BuildError(
                f"module {type(module).__name__} is not served: a late-interaction pipeline "
                "here is Transformer, Dense projections, Normalize and MultiVectorMask"
            )
    return backbone, projections, mask


class _TokenVectors(nn.Module):
    """The modules from the backbone to the token vectors, as one function of the ids."""

    def __init__(self, backbone: nn.Module, projections: list[nn.Module]) -> None:
        super().__init__()
        self.stack = nn.ModuleList([backbone, *projections])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "modality": "text",
        }
        for module in self.stack:
            features = module(features)
        return features["token_embeddings"]


def _prefix(encoder: Any, role: str) -> str:
    """The prompt ``encode_query`` / ``encode_document`` put before the text (their role's
    prompt: they never fall back to another)."""
    return str((encoder.prompts or {}).get(role) or "")


# Beyond this, a tokenizer states no limit of its own (transformers' VERY_LARGE_INTEGER).
_UNBOUNDED_LENGTH = 1_000_000


def _check_tokenization(encoder: Any, backbone: Any) -> None:
    """Refuses what the tokenizer model does not reproduce, naming it."""
    tokenizer = encoder.tokenizer
    for side in ("padding_side", "truncation_side"):
        if getattr(tokenizer, side, "right") != "right":
            raise BuildError(
                f"the tokenizer's {side} is {getattr(tokenizer, side)!r}; late-interaction "
                "rows are served padded and cut on the right"
            )
    kwargs = backbone.processing_kwargs or {}
    if kwargs.get("text") or kwargs.get("common"):
        raise BuildError(
            f"the Transformer module's processing_kwargs {kwargs} change how texts are "
            "tokenized, which is not served"
        )
    if int(backbone.max_seq_length or _UNBOUNDED_LENGTH) >= _UNBOUNDED_LENGTH:
        raise BuildError("the backbone states no max sequence length; give --max-length")


def tokenizer_parameters(encoder: Any, options: BuildOptions) -> LateTokenizerParameters:
    """What the tokenizer model needs to tokenize as ``encoder`` does."""
    backbone, _, mask = _modules(encoder)
    _check_tokenization(encoder, backbone)
    ceiling = int(backbone.max_seq_length)
    expansion = backbone.query_expansion
    document_length = options.max_length or int(backbone.document_length or ceiling)
    query_length = int(backbone.query_length or ceiling)
    token_id = 0
    if expansion is not None:
        tokenizer = encoder.tokenizer
        if expansion.get("token") is not None:
            token_id = tokenizer.convert_tokens_to_ids(expansion["token"])
        else:
            token_id = tokenizer.mask_token_id
            if token_id is None:
                token_id = tokenizer.eos_token_id
        if token_id is None:
            raise BuildError("query expansion is on, but the tokenizer has no [MASK] or EOS token")
        if expansion["strategy"] == "fixed":
            query_length = int(expansion["length"])
        else:
            query_length = max(query_length, int(expansion["length"]))
    skiplist = mask._skiplist_ids
    tasks = set(mask.skiplist_tasks)
    return LateTokenizerParameters(
        query_length=query_length,
        document_length=document_length,
        max_chars=max_chars(max(query_length, document_length)),
        query_prefix=_prefix(encoder, "query"),
        document_prefix=_prefix(encoder, "document"),
        expansion=QueryExpansion(expansion["strategy"]) if expansion else QueryExpansion.NONE,
        expansion_length=int(expansion["length"]) if expansion else 0,
        expansion_token_id=int(token_id),
        attend_to_expansion=bool(expansion and expansion["attend"]),
        skiplist_ids=tuple(int(i) for i in skiplist.tolist()) if skiplist is not None else (),
        skiplist_documents="document" in tasks,
        skiplist_queries="query" in tasks,
        length_buckets=options.tuning.length_buckets,
    )


def build_late_interaction(source: Path, options: BuildOptions, repository: Path) -> ServedModel:
    """Exports what ``MultiVectorEncoder`` loads from ``source`` and installs it."""
    from sentence_transformers import MultiVectorEncoder

    _check_options(options)
    with step(f"loading {source} as sentence-transformers' MultiVectorEncoder"):
        encoder = MultiVectorEncoder(
            str(source), device="cpu", model_kwargs={"attn_implementation": "eager"}
        ).eval()
    backbone, projections, _ = _modules(encoder)
    parameters = tokenizer_parameters(encoder, options)
    tokenizer = Tokenizer.from_str(encoder.tokenizer.backend_tokenizer.to_str())
    network = backbone.auto_model
    config = read_json(source / "config.json") if (source / "config.json").is_file() else {}
    model = ServedModel(
        name=options.name,
        kind=ModelKind.LATE_INTERACTION,
        architecture=architecture(config, type(network).__name__),
        max_length=parameters.document_length,
        activation=Activation.NONE,
        token_inputs=LATE_TOKEN_TENSORS,
        max_batch_size=options.max_batch_size,
        family=str(network.config.model_type),
        mean_maxsim=encoder.similarity_fn_name == "meanmaxsim",
    )
    vectors = _TokenVectors(backbone, projections).eval()
    late = LateTokenizer(Tokenizer.from_str(tokenizer.to_str()), parameters)
    sample = late.documents(
        ["A reranker orders documents by relevance.", "The Nile is about 6,650 km long. " * 3]
    )
    model = replace(
        model, runtime=options.runtime, precision=options.precision, device=options.device
    )
    target = onnx_path(model, repository)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in (target, target.with_name(target.name + "_data"), target.parent / PROJECTION_FILE):
        stale.unlink(missing_ok=True)
    shutil.rmtree(checkpoint_path(model, repository), ignore_errors=True)
    if options.runtime is Runtime.TORCH:
        _install_checkpoint(model, backbone, projections, vectors, sample, repository)
    else:
        _install_graph(model, vectors, sample, target)
    write_tokenizer(model, tokenizer, None, repository)
    write_late_configs(model, parameters, repository, options.tuning)
    return model


def _install_graph(
    model: ServedModel, vectors: nn.Module, sample: dict[str, np.ndarray], target: Path
) -> None:
    from reranker.builder.onnx_export import export_module

    inputs = {name: torch.from_numpy(sample[name]) for name in ("input_ids", "attention_mask")}
    with tempfile.TemporaryDirectory() as scratch:
        graph = Path(scratch) / "model.onnx"
        with step(f"exporting {model.architecture} and its projection to ONNX"), torch.no_grad():
            export_module(vectors, inputs, _VECTORS, graph, output_axes={0: "batch", 1: "sequence"})
        session = create_session(graph, 0)
        _check_vectors(
            "export",
            lambda ids, attention: session.run(
                None, {"input_ids": ids, "attention_mask": attention}
            )[0],
            vectors,
            sample,
        )
        store_graph(graph, target)


def _install_checkpoint(
    model: ServedModel,
    backbone: Any,
    projections: list[nn.Module],
    vectors: nn.Module,
    sample: dict[str, np.ndarray],
    repository: Path,
) -> None:
    """The backbone's checkpoint and the projection beside the PyTorch encoder, checked to
    give the token vectors the modules give."""
    from sentence_transformers.base.modules import Dense, Normalize

    from reranker.backend.late_torch import TorchTokenVectors, save_projection

    layers: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    normalize = False
    for module in projections:
        if normalize:
            raise BuildError("the torch runtime serves Normalize only after every Dense")
        if isinstance(module, Normalize):
            normalize = True
        elif isinstance(module, Dense):
            if not isinstance(module.activation_function, nn.Identity) or module.use_residual:
                raise BuildError(
                    "the torch runtime serves linear projections (Dense with an identity "
                    "activation, no residual); use --runtime onnx"
                )
            layers.append((module.linear.weight, module.linear.bias))
    checkpoint = checkpoint_path(model, repository)
    with step(f"saving the backbone to {checkpoint}"):
        backbone.auto_model.save_pretrained(checkpoint)
        projection = checkpoint.parent / PROJECTION_FILE
        save_projection(projection, layers, normalize)
    _check_vectors("load", TorchTokenVectors(checkpoint, projection), vectors, sample)


def _check_vectors(
    what: str, served: VectorRun, vectors: nn.Module, sample: dict[str, np.ndarray]
) -> None:
    """Refuses a served runner whose token vectors differ from the modules' on ``sample``."""
    ids, attention = sample["input_ids"], sample["attention_mask"]
    with torch.no_grad():
        expected = vectors(torch.from_numpy(ids), torch.from_numpy(attention)).numpy()
    real = attention.astype(bool)
    error = float(np.abs(served(ids, attention) - expected)[real].max())
    print(
        f"  {what} check: max |served - modules| over token vectors = {error:.2e}", file=sys.stderr
    )
    if error > EXPORT_TOLERANCE:
        raise BuildError(f"the served token vectors differ from the modules by {error:.2e}")


def write_late_configs(
    model: ServedModel,
    parameters: LateTokenizerParameters,
    repository: Path,
    tuning: TritonTuning,
) -> None:
    """The ensemble, the late-interaction tokenizer and its encoder."""
    tokenizer = _tokenizer_config(model, parameters, tuning)
    # On a GPU, several callers' requests merge into large executions, as the PyTorch
    # encoders of the other kinds do.
    encoder, limits = device_encoder(model, tuning)
    set_parameters(
        encoder,
        LateEncoderParameters(
            runtime=model.runtime,
            **limits,
            torch_dtype=model.precision if model.runtime is Runtime.TORCH else Precision.FP32,
            mean_maxsim=model.mean_maxsim,
            document_cache_bytes=tuning.document_cache_mb << 20,
            intra_op_spin_us=tuning.intra_op_spin_us,
        ),
    )
    write_models(
        repository,
        [
            (model.name, ensemble_config(model), None),
            (model.tokenizer_model, tokenizer, LATE_TOKENIZER_MODULE),
            (model.encoder_model, encoder, LATE_ENCODER_MODULE),
        ],
    )


def _tokenizer_config(
    model: ServedModel, parameters: LateTokenizerParameters, tuning: TritonTuning
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=model.tokenizer_model, backend="python")
    config.max_batch_size = model.max_batch_size
    string_inputs(config, model)
    for name in LATE_TOKEN_TENSORS:
        config.output.add(name=name, data_type=mc.TYPE_INT64, dims=[-1])
    config.output.add(name=TOKENS, data_type=mc.TYPE_INT32, dims=[1])
    # Tokenizing runs on CPU beside a GPU encoder: more instances keep it fed.
    gpu = model.device is Device.GPU
    instances = tuning.gpu_tokenizer_instances if gpu else tuning.tokenizer_instances
    config.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    dynamic_batching(config, tuning.tokenizer_queue_delay_us)
    set_parameters(config, parameters)
    return config
